//! Optimizers: `(production's program, train, dev, metric, LMs, budget) -> program`.
//!
//! Every optimizer implements [`Optimizer`]: it searches, learning from
//! [`Train`] and selecting on [`Dev`] through a [`Scorer`]. [`optimize`] wraps
//! the search with what holds for all of them:
//!
//! - **Warm start.** Production's program is scored on all of dev first; it is
//!   a candidate of every search and a starting point of it.
//! - **No regressions.** The result is proposed only when it beats
//!   production's dev score; otherwise [`Proposal::NoBetter`] says what was tried.
//! - **Budgets.** A search stopped by the LM budget returns the best program
//!   fully scored so far, saying it stopped early.
//!
//! Architecture invariant: nothing in this module is handed the test split.
//! Every entry point takes [`Train`] and [`Dev`], which the test split's type,
//! [`crate::dataset::Test`], is not.

pub mod bootstrap;
pub mod checkpoint;
pub mod demos;
pub mod gepa;
pub mod mipro;
pub mod pareto;
pub mod propose;
pub mod random_search;
pub mod scorer;
pub mod slices;
pub mod tpe;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::{OptimizerConfig, OptimizerKind};
use crate::dataset::{Dev, Train};
use crate::eval::EvalContext;
use crate::lm::LmError;
use crate::lm::budget::LmRole;
use crate::program::Program;
use crate::program::artifact::CandidateScore;
use crate::program::predictor::PredictSettings;
pub use scorer::Scorer;

/// The models and metric an optimizer works with.
#[derive(Clone)]
pub struct OptimizeContext {
    /// How the program is run and scored: the task LM and the metric.
    pub student: EvalContext,
    /// How the teacher predicts while bootstrapping: `[optimizer.teacher]`, else the task LM.
    pub teacher: PredictSettings,
    /// Who writes instructions: `[optimizer.proposer]`, else the task LM.
    pub proposer: PredictSettings,
    pub seed: u64,
    /// Where the search saves its progress and resumes from, if anywhere.
    pub checkpoint: Option<std::sync::Arc<checkpoint::Checkpoint>>,
    /// `[optimizer] min_slice_examples`: a handler with fewer train examples is kept as it is.
    pub min_slice_examples: usize,
    /// Calls per role the run's limits set aside for scoring a router
    /// program's per-slice composition on dev (none without routers or
    /// limits): released after the search, so a search that spends its
    /// budget still composes.
    pub composition_reserve: Vec<(crate::lm::budget::LmRole, u64)>,
}

/// Where a search starts.
#[derive(Debug, Clone)]
pub struct Start {
    /// The program in production (the declared one when nothing is yet).
    pub production: Program,
    /// The program as the pipeline file declares it (instructions, no demos).
    pub declared: Program,
}

/// What a search leaves besides the programs it scored (which the scorer keeps).
#[derive(Debug, Clone, Default)]
pub struct SearchNotes {
    /// Things worth a reviewer's eye: proposals dropped and why, and the like.
    pub notes: Vec<String>,
    /// Instruction proposals, with where they came from and what they scored.
    pub proposals: Vec<ProposalRecord>,
    /// Reflective mutations (GEPA), in order.
    pub reflections: Vec<ReflectionRecord>,
}

/// One reflective mutation: what failed, what was concluded, what was
/// written, and how it scored. Users debug a search with these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReflectionRecord {
    pub iteration: usize,
    pub predictor: String,
    /// The candidate mutated (or the two merged).
    pub parent: String,
    /// What kind of mutation: a reflection by the proposer LM, from the data, a demo swap, a merge.
    pub kind: String,
    /// The minibatch examples the parent got wrong, with the metric's feedback.
    pub failures: Vec<String>,
    /// What the proposer LM concluded, when it reflected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conclusion: Option<String>,
    /// The instruction written, when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
    /// Parent's and child's mean on the minibatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minibatch: Option<(f64, f64)>,
    /// Kept: it did better on the minibatch and was scored on all of dev.
    pub accepted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_score: Option<f64>,
}

/// One instruction the search considered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProposalRecord {
    pub predictor: String,
    /// `production`, `declared`, `data: ...` (drafted from train), `lm: <tip>`.
    pub origin: String,
    pub instruction: String,
    /// The best dev mean of a program using it, when one was fully scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_score: Option<f64>,
}

#[async_trait]
pub trait Optimizer: Send + Sync {
    /// The kind, as `[optimizer] kind` names it.
    fn kind(&self) -> OptimizerKind;

    /// One line on what it does with its settings, for reports.
    fn describe(&self) -> String;

    /// About how many LM calls the search makes per role for `program` with
    /// `train` and `dev` examples, production's dev score included: printed
    /// before it starts, reported beside what it used.
    fn project(&self, program: &Program, train: usize, dev: usize) -> Vec<(LmRole, u64)>;

    /// The most teacher calls its bootstraps can take: every train example
    /// traced in every round, when almost no trace passes the metric's
    /// threshold (the projection assumes about a third pass).
    fn teacher_at_most(&self, _program: &Program, _train: usize) -> u64 {
        0
    }

    /// Searches for a better program than `start.production`, scoring on dev
    /// through `scorer`, where production is already fully scored, and noting
    /// what a reviewer should know in `notes` as it goes. An `Err` from the LM
    /// ends the search; a spent budget keeps what was scored and noted.
    async fn search(
        &self,
        start: &Start,
        train: &Train,
        scorer: &Scorer,
        ctx: &OptimizeContext,
        notes: &mut SearchNotes,
    ) -> Result<(), LmError>;
}

/// The optimizer `[optimizer] kind` names, with its settings.
pub fn build(config: &OptimizerConfig) -> Box<dyn Optimizer> {
    match config.kind {
        OptimizerKind::None => Box::new(Keep),
        OptimizerKind::BootstrapFewShot => Box::new(bootstrap::BootstrapFewShot::new(config)),
        OptimizerKind::BootstrapRandomSearch => Box::new(random_search::RandomSearch::new(config)),
        OptimizerKind::MiproV2 => Box::new(mipro::MiproV2::new(config)),
        OptimizerKind::Gepa => Box::new(gepa::Gepa::new(config)),
    }
}

/// `kind = "none"`: production as it is.
struct Keep;

#[async_trait]
impl Optimizer for Keep {
    fn kind(&self) -> OptimizerKind {
        OptimizerKind::None
    }
    fn describe(&self) -> String {
        "`none` (production's program unchanged)".into()
    }
    fn project(&self, program: &Program, _: usize, dev: usize) -> Vec<(LmRole, u64)> {
        vec![(LmRole::Task, (dev * program.calls_per_run()) as u64)]
    }
    async fn search(
        &self,
        _: &Start,
        _: &Train,
        _: &Scorer,
        _: &OptimizeContext,
        _: &mut SearchNotes,
    ) -> Result<(), LmError> {
        Ok(())
    }
}

/// What the optimizer proposes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Proposal {
    /// A program that beats production on dev.
    Better { name: String },
    /// Nothing scored above production on dev: production stays.
    NoBetter {
        /// The best other candidate, and its dev score, when there was one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        best_other: Option<(String, f64)>,
    },
}

/// The outcome of an optimizer: the program and the record of how it was chosen.
#[derive(Debug, Clone)]
pub struct Optimized {
    /// The proposed program: the winner, or production when nothing beat it.
    pub program: Program,
    pub proposal: Proposal,
    /// Every candidate scored on dev, in the order tried (production first).
    pub candidates: Vec<CandidateScore>,
    /// The proposed program's dev score.
    pub dev_score: Option<f64>,
    /// Production's dev score, which the proposal had to beat.
    pub production_dev: Option<f64>,
    /// Why the search ended before it was done (the budget), if it did.
    pub stopped_early: Option<String>,
    /// Dev example evaluations the search ran (each program on each example once).
    pub evaluations: u64,
    pub notes: SearchNotes,
    /// Per router branch: the slice sizes and scores (empty without routers).
    pub slices: Vec<slices::Slice>,
}

impl Optimized {
    pub fn improved(&self) -> bool {
        matches!(self.proposal, Proposal::Better { .. })
    }
}

/// Runs `optimizer` from production's program: scores production on all of
/// dev, searches, and proposes the best fully scored program only if it beats
/// production there.
pub async fn optimize(
    optimizer: &dyn Optimizer,
    start: &Start,
    train: &Train,
    dev: &Dev,
    ctx: &OptimizeContext,
) -> Result<Optimized, LmError> {
    let scorer = Scorer::new(ctx.student.clone(), dev, ctx.seed).with_checkpoint(ctx.checkpoint.clone());
    let production = scorer.full("production", &start.production).await?;
    let mut notes = SearchNotes::default();
    let stopped_early = match optimizer.search(start, train, &scorer, ctx, &mut notes).await {
        Ok(()) => None,
        Err(e @ LmError::BudgetExhausted { .. }) => {
            tracing::warn!(reason = %e, "the search stopped at its budget; keeping the best program scored so far");
            Some(e.to_string())
        }
        Err(e) => return Err(e),
    };
    let mut best = scorer.best().expect("production is fully scored");
    let mut slices = Vec::new();
    if !start.production.graph.routers().is_empty() {
        let candidates = scorer.fully_scored();
        let (program, composed_slices) =
            slices::compose(&production, &best, &candidates, train, ctx.min_slice_examples);
        slices = composed_slices;
        for s in slices.iter().filter(|s| !s.optimized) {
            notes.notes.push(format!(
                "`{}` kept as it is: {} train and {} dev examples routed to {} = {} (at least {} train examples and one dev example are needed to optimize it)",
                s.predictors.join("`, `"),
                s.train,
                s.dev,
                s.router,
                s.branch,
                ctx.min_slice_examples
            ));
        }
        for &(role, calls) in &ctx.composition_reserve {
            ctx.student.settings.lm.meter().allow_more_calls(role, calls);
        }
        if program != best.program {
            match scorer.full("per-slice best", &program).await {
                Ok(composed) => best = composed,
                Err(e @ LmError::BudgetExhausted { .. }) => {
                    notes.notes.push(format!(
                        "the per-slice composition was not scored ({e}); the best whole program is proposed"
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        for s in &mut slices {
            s.proposed_dev = slices::branch_mean(&best.results, &s.router, &s.branch).1;
        }
    }
    let candidates = scorer.candidates();
    let evaluations = scorer.evaluations();
    let beats = best.mean > production.mean && best.name != production.name;
    if beats {
        tracing::info!(candidate = %best.name, dev = best.mean, production = production.mean, "proposing");
        Ok(Optimized {
            program: best.program,
            proposal: Proposal::Better { name: best.name },
            candidates,
            dev_score: Some(best.mean),
            production_dev: Some(production.mean),
            stopped_early,
            evaluations,
            notes,
            slices,
        })
    } else {
        let best_other = candidates
            .iter()
            .skip(1)
            .filter(|c| c.scored_on.is_none())
            .max_by(|a, b| a.dev_score.total_cmp(&b.dev_score))
            .map(|c| (c.name.clone(), c.dev_score));
        tracing::info!(production = production.mean, tried = candidates.len(), "no better program found");
        Ok(Optimized {
            program: start.production.clone(),
            proposal: Proposal::NoBetter { best_other },
            candidates,
            dev_score: Some(production.mean),
            production_dev: Some(production.mean),
            stopped_early,
            evaluations,
            notes,
            slices,
        })
    }
}
