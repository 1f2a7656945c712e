//! MIPROv2 (Opsahl-Ong et al. 2024, "Optimizing Instructions and
//! Demonstrations for Multi-Stage Language Model Programs"): propose
//! instruction candidates and demo-set candidates per predictor, then search
//! their combinations with a Tree-structured Parzen Estimator, each trial
//! scored on a minibatch of dev, the most promising combination scored on all
//! of dev every few trials.
//!
//! Instruction candidates: production's, the declared one, drafts written
//! from the training data ([`super::propose::data_drafts`]) and, unless
//! turned off, proposals by the proposer LM with a varied tip. Demo-set
//! candidates: production's, and the label-covering and bootstrapped sets of
//! the demo search. The first trial is production itself.

use super::slices::examples_for;
use std::collections::HashMap;

use async_trait::async_trait;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::bootstrap::BootstrapSettings;
use super::propose::{Draft, TIPS, data_drafts, lm_proposal};
use super::random_search::demo_candidates;
use super::tpe::{Space, Tpe, TpeSettings};
use super::{OptimizeContext, Optimizer, ProposalRecord, Scorer, SearchNotes, Start};
use crate::config::{MiproAuto, MiproConfig, OptimizerConfig, OptimizerKind};
use crate::dataset::{Example, Train};
use crate::lm::LmError;
use crate::lm::budget::LmRole;
use crate::program::Program;
use crate::program::predictor::Demo;

pub struct MiproV2 {
    settings: BootstrapSettings,
    config: MiproConfig,
    num_candidates: usize,
}

/// The numbers a run uses, after `auto`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MiproPlan {
    pub instructions: usize,
    pub demo_sets: usize,
    pub trials: usize,
    pub minibatch: usize,
    pub full_eval_steps: usize,
}

impl MiproPlan {
    /// About how many of its demo sets are bootstrapped (each a teacher bootstrap).
    fn bootstraps(&self) -> u64 {
        (self.demo_sets.saturating_sub(1) / 3).max(1) as u64
    }
}

impl MiproV2 {
    pub fn new(config: &OptimizerConfig) -> Self {
        Self {
            settings: BootstrapSettings::from_config(config),
            config: config.mipro_v2.clone(),
            num_candidates: config.num_candidates,
        }
    }

    /// The candidates and trials for a program of `predictors` predictors:
    /// `auto` sets the candidates per predictor (light 6, medium 12, heavy 18)
    /// and the trials follow from the number of choices, as in the paper's
    /// reference implementation: enough for every choice to be tried about
    /// twice. Explicit settings win.
    pub fn plan(&self, predictors: usize, dev_len: usize) -> MiproPlan {
        let n = match self.config.auto {
            MiproAuto::Light => 6,
            MiproAuto::Medium => 12,
            MiproAuto::Heavy => 18,
        };
        let instructions = self.config.num_instructions.unwrap_or(n);
        let demo_sets = if self.num_candidates > 0 { self.num_candidates.max(2) } else { n };
        let vars = 2 * predictors.max(1);
        let choices = instructions.max(demo_sets) as f64;
        let auto_trials = ((2.0 * vars as f64 * choices.log2()).ceil() as usize).max((1.5 * choices).ceil() as usize);
        MiproPlan {
            instructions,
            demo_sets,
            trials: self.config.num_trials.unwrap_or(auto_trials),
            minibatch: self.config.minibatch_size.min(dev_len.max(1)),
            full_eval_steps: self.config.full_eval_steps,
        }
    }
}

/// Per predictor: its instruction candidates and demo-set candidates.
struct Choices {
    instructions: Vec<Vec<Draft>>,
    demos: Vec<Vec<(String, Vec<Demo>)>>,
}

impl Choices {
    fn program(&self, base: &Program, point: &[usize]) -> Program {
        let mut program = base.clone();
        for (i, p) in program.predictors.iter_mut().enumerate() {
            p.instructions = self.instructions[i][point[2 * i]].instruction.clone();
            p.demos = self.demos[i][point[2 * i + 1]].1.clone();
        }
        program
    }

    fn name(point: &[usize]) -> String {
        let parts: Vec<String> = point.chunks(2).map(|c| format!("i{}d{}", c[0], c[1])).collect();
        format!("mipro {}", parts.join("+"))
    }
}

#[async_trait]
impl Optimizer for MiproV2 {
    fn kind(&self) -> OptimizerKind {
        OptimizerKind::MiproV2
    }

    fn describe(&self) -> String {
        let auto = serde_json::to_value(self.config.auto).ok().and_then(|v| v.as_str().map(str::to_string));
        format!(
            "`mipro_v2` (auto = {}: instructions from the data{} and demo sets, searched by TPE on dev minibatches of {})",
            auto.unwrap_or_default(),
            if self.config.lm_proposals { " and the proposer LM" } else { "" },
            self.config.minibatch_size
        )
    }

    fn project(&self, program: &Program, train: usize, dev: usize) -> Vec<(LmRole, u64)> {
        let p = program.calls_per_run() as u64;
        let plan = self.plan(program.predictors.len(), dev);
        let full = (plan.trials / plan.full_eval_steps + 1) as u64;
        let bootstraps = plan.bootstraps();
        let proposals = if self.config.lm_proposals { plan.instructions.saturating_sub(4) as u64 } else { 0 };
        vec![
            (LmRole::Task, (dev as u64 * (1 + full) + (plan.trials * plan.minibatch) as u64) * p),
            (LmRole::Teacher, bootstraps * self.settings.teacher_calls(program, train) * p),
            (LmRole::Proposer, proposals * program.predictors.len() as u64),
        ]
    }

    fn teacher_at_most(&self, program: &Program, train: usize) -> u64 {
        let bootstraps = self.plan(program.predictors.len(), 0).bootstraps();
        bootstraps * self.settings.teacher_runs_at_most(train) * program.calls_per_run() as u64
    }

    async fn search(
        &self,
        start: &Start,
        train: &Train,
        scorer: &Scorer,
        ctx: &OptimizeContext,
        notes: &mut SearchNotes,
    ) -> Result<(), LmError> {
        let production = &start.production;
        let plan = self.plan(production.predictors.len(), scorer.dev_len());
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed.wrapping_add(0x3319));

        // Instruction candidates, per predictor.
        let mut instructions: Vec<Vec<Draft>> = Vec::new();
        for (i, predictor) in production.predictors.iter().enumerate() {
            let mut drafts = vec![Draft { origin: "production".into(), instruction: predictor.instructions.clone() }];
            let declared = &start.declared.predictors[i].instructions;
            let add = |draft: Draft, drafts: &mut Vec<Draft>| {
                if drafts.len() < plan.instructions && !drafts.iter().any(|d| d.instruction == draft.instruction) {
                    drafts.push(draft);
                }
            };
            add(Draft { origin: "declared".into(), instruction: declared.clone() }, &mut drafts);
            // A handler behind a router is drafted for from the examples routed to it.
            let train = examples_for(production, i, train);
            let train: &[Example] = &train;
            for draft in data_drafts(predictor, declared, train) {
                add(draft, &mut drafts);
            }
            if self.config.lm_proposals {
                let mut tip = 0;
                while drafts.len() < plan.instructions && tip < plan.instructions * 2 {
                    let t = TIPS[tip % TIPS.len()];
                    match lm_proposal(predictor, train, &ctx.proposer, t, tip as u32).await? {
                        Ok(draft) => add(draft, &mut drafts),
                        Err(reason) => notes
                            .notes
                            .push(format!("`{}`: a proposal (tip: {t}) was dropped: {reason}", predictor.name)),
                    }
                    tip += 1;
                }
            }
            instructions.push(drafts);
        }

        // Demo-set candidates, per predictor: production's first.
        let others =
            demo_candidates(start, production, train, ctx, &self.settings, plan.demo_sets.saturating_sub(1)).await?;
        let demos: Vec<Vec<(String, Vec<Demo>)>> = (0..production.predictors.len())
            .map(|i| {
                let mut sets = vec![("production".to_string(), production.predictors[i].demos.clone())];
                for (name, program) in &others {
                    let d = &program.predictors[i].demos;
                    if !sets.iter().any(|(_, s)| s == d) {
                        sets.push((name.clone(), d.clone()));
                    }
                }
                sets
            })
            .collect();
        let choices = Choices { instructions, demos };
        for (i, predictor) in production.predictors.iter().enumerate() {
            notes.notes.push(format!(
                "`{}`: {} instruction candidates and {} demo sets",
                predictor.name,
                choices.instructions[i].len(),
                choices.demos[i].len()
            ));
        }

        let dims: Vec<usize> = (0..production.predictors.len())
            .flat_map(|i| [choices.instructions[i].len(), choices.demos[i].len()])
            .collect();
        let mut tpe = Tpe::new(Space { dims: dims.clone() }, TpeSettings::default())
            .map_err(|e| LmError::Engine(format!("MIPROv2's search space: {e:?}")))?;
        // Minibatch scores of each point tried, for choosing what to score in full.
        let mut tried: Vec<(Vec<usize>, Vec<f64>)> = Vec::new();
        let record_proposals = |notes: &mut SearchNotes, choices: &Choices| {
            notes.proposals = proposal_records(production, choices, scorer);
        };
        for trial in 0..plan.trials {
            let point = if trial == 0 { vec![0; dims.len()] } else { tpe.suggest(&mut rng) };
            let program = choices.program(production, &point);
            let batch = scorer.minibatch(plan.minibatch, &mut rng);
            let score = match scorer.mean(&Choices::name(&point), &program, &batch).await {
                Ok(s) => s,
                Err(e) => {
                    record_proposals(notes, &choices);
                    return Err(e);
                }
            };
            tpe.observe(point.clone(), score).map_err(|e| LmError::Engine(format!("MIPROv2's search: {e:?}")))?;
            match tried.iter_mut().find(|(p, _)| *p == point) {
                Some((_, scores)) => scores.push(score),
                None => tried.push((point, vec![score])),
            }
            if (trial + 1) % plan.full_eval_steps == 0 || trial + 1 == plan.trials {
                // The best point by its mean minibatch score that is not yet scored in full.
                let mut ranked: Vec<(f64, usize)> =
                    tried.iter().enumerate().map(|(i, (_, s))| (s.iter().sum::<f64>() / s.len() as f64, i)).collect();
                ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                if let Some(&(_, i)) =
                    ranked.iter().find(|(_, i)| !scorer.is_fully_scored(&choices.program(production, &tried[*i].0)))
                {
                    let point = tried[i].0.clone();
                    let full = scorer.full(&Choices::name(&point), &choices.program(production, &point)).await;
                    if let Err(e) = full {
                        record_proposals(notes, &choices);
                        return Err(e);
                    }
                }
            }
        }
        record_proposals(notes, &choices);
        Ok(())
    }
}

/// Every instruction candidate with the best full dev score of a program using it.
fn proposal_records(production: &Program, choices: &Choices, scorer: &Scorer) -> Vec<ProposalRecord> {
    let full: HashMap<String, f64> =
        scorer.candidates().into_iter().filter(|c| c.scored_on.is_none()).map(|c| (c.name, c.dev_score)).collect();
    let mut out = Vec::new();
    for (i, drafts) in choices.instructions.iter().enumerate() {
        for (j, draft) in drafts.iter().enumerate() {
            let best = full
                .iter()
                .filter(|(name, _)| {
                    name.strip_prefix("mipro ")
                        .and_then(|rest| rest.split('+').nth(i))
                        .is_some_and(|part| part.starts_with(&format!("i{j}d")))
                        || (j == 0 && name.as_str() == "production")
                })
                .map(|(_, s)| *s)
                .fold(None, |acc: Option<f64>, s| Some(acc.map_or(s, |a| a.max(s))));
            out.push(ProposalRecord {
                predictor: production.predictors[i].name.clone(),
                origin: draft.origin.clone(),
                instruction: draft.instruction.clone(),
                dev_score: best,
            });
        }
    }
    out
}
