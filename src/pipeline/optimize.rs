//! The optimizing stage shared by `compile` and `run`: the LMs in their roles
//! behind one meter, the budget checked and projected before any call, the
//! search from production's program, and the record of what it used.

use std::sync::Arc;

use anyhow::{Result, bail};

use super::{build_lm, predict_settings};
use crate::config::{LmConfig, PipelineConfig};
use crate::dataset::Dataset;
use crate::eval::EvalContext;
use crate::lm::budget::{Budget, Limits, LmRole, Meter, Prices, UsageByRole};
use crate::lm::{Lm, LmError};
use crate::optimize::checkpoint::{Checkpoint, Identity};
use crate::optimize::{OptimizeContext, Optimized, Optimizer, Start};
use crate::program::Program;
use crate::report::{RoleUse, SearchSummary};

/// The run's LMs, each in its role, all recording into one meter.
pub struct Models {
    pub task: Lm,
    pub meter: Arc<Meter>,
    pub eval: EvalContext,
    pub optimize: OptimizeContext,
}

fn prices(config: &LmConfig) -> Prices {
    Prices { input: config.input_price, output: config.output_price }
}

/// Builds the task LM and the teacher and proposer (their own tables, or the
/// task LM in their role), sharing one meter.
pub fn models(config: &PipelineConfig, use_cache: bool, progress: bool) -> Result<Models> {
    let meter = Arc::new(Meter::new());
    let state = config.state_dir();
    let task = build_lm(&config.lm, &state, use_cache)?.metered(meter.clone(), LmRole::Task, prices(&config.lm));
    let eval = super::eval_context(config, task.clone(), use_cache, progress)?;
    let role = |table: &'_ Option<LmConfig>, role: LmRole| -> Result<(Lm, LmConfig)> {
        Ok(match table {
            Some(lm_config) => (
                build_lm(lm_config, &state, use_cache)?.metered(meter.clone(), role, prices(lm_config)),
                lm_config.clone(),
            ),
            None => (task.in_role(role), config.lm.clone()),
        })
    };
    let (teacher_lm, teacher_config) = role(&config.optimizer.teacher, LmRole::Teacher)?;
    let mut teacher = predict_settings(&teacher_config, teacher_lm, config.adapter);
    teacher.tools = eval.settings.tools.clone();
    let (proposer_lm, proposer_config) = role(&config.optimizer.proposer, LmRole::Proposer)?;
    let mut proposer = predict_settings(&proposer_config, proposer_lm, config.adapter);
    // An instruction is longer than a typical answer.
    proposer.max_tokens = proposer.max_tokens.max(384);
    let optimize = OptimizeContext {
        student: eval.clone(),
        teacher,
        proposer,
        seed: config.seed,
        checkpoint: None,
        min_slice_examples: config.optimizer.min_slice_examples,
        composition_reserve: Vec::new(),
    };
    Ok(Models { task, meter, eval, optimize })
}

/// Calls the run needs besides the optimizer's search: production on all of
/// dev (the score to beat), a router program's per-slice composition on dev,
/// and both programs on test; each run of the program takes its own calls
/// and, with a judge metric, the judges' calls that score it.
pub struct Reserve {
    /// Task calls one run of the program makes (its costliest path).
    pub calls_per_run: u64,
    /// Judge calls scoring one run takes (one per judge of the metric).
    pub judges_per_run: u64,
    /// Production on dev: the least any search needs.
    pub dev_runs: u64,
    /// The per-slice composition on dev, after the search (routers only).
    pub composition_runs: u64,
    /// Both programs on test, after the search.
    pub test_runs: u64,
}

impl Reserve {
    /// Every call of `runs`, the judges' included.
    pub fn calls(&self, runs: u64) -> u64 {
        runs * (self.calls_per_run + self.judges_per_run)
    }

    /// The composition's calls per role, released to the search's limits after it.
    pub fn composition(&self) -> Vec<(LmRole, u64)> {
        let mut calls = vec![(LmRole::Task, self.composition_runs * self.calls_per_run)];
        if self.judges_per_run > 0 {
            calls.push((LmRole::Judge, self.composition_runs * self.judges_per_run));
        }
        calls.retain(|(_, n)| *n > 0);
        calls
    }
}

pub fn reserve(program: &Program, dataset: &Dataset, metric: &crate::config::MetricConfig) -> Reserve {
    let dev_runs = dataset.dev().len() as u64;
    Reserve {
        calls_per_run: program.calls_per_run() as u64,
        judges_per_run: metric.judge_lms().len() as u64,
        dev_runs,
        composition_runs: if program.graph.routers().is_empty() { 0 } else { dev_runs },
        test_runs: 2 * dataset.test().len() as u64,
    }
}

/// The optimizer's limits: the run's `[budget]` less the test scoring and the
/// composition set aside. Errors, before any call, when the budget cannot
/// cover production's dev score, the composition and the test scoring.
pub fn optimizer_limits(config: &PipelineConfig, reserve: &Reserve) -> Result<Option<Limits>> {
    let budget = &config.budget;
    if budget.is_unlimited() {
        return Ok(None);
    }
    let file = config.file.display();
    // The run's limit counts every role's calls; the task role's only its own.
    let check = |b: &Budget, key: &str, per_run: u64| -> Result<()> {
        let calls = |runs: u64| runs * per_run;
        let minimum = calls(reserve.dev_runs + reserve.composition_runs + reserve.test_runs);
        if let Some(max) = b.max_calls
            && max < minimum + 1
        {
            let judged = if per_run > reserve.calls_per_run { " (the judge's included)" } else { "" };
            let composition = if reserve.composition_runs > 0 {
                format!(", scoring the per-slice composition on dev {} more", calls(reserve.composition_runs))
            } else {
                String::new()
            };
            bail!(
                "{file}: [{key}] max_calls = {max} is too small for even one full evaluation: production on dev takes {} calls{judged}{composition} and scoring both programs on test {} more; set max_calls to at least {} (more leaves the optimizer room to search)",
                calls(reserve.dev_runs),
                calls(reserve.test_runs),
                minimum + 1
            );
        }
        Ok(())
    };
    check(&budget.total(), "budget", reserve.calls_per_run + reserve.judges_per_run)?;
    if let Some(task) = &budget.task {
        check(task, "budget.task", reserve.calls_per_run)?;
    }
    // Tokens and dollars of the test scoring are not known before it runs; the
    // calls are set aside here, tokens and dollars are checked as they are used.
    // The composition's calls are released to the optimizer after its search
    // (`OptimizeContext::composition_reserve`).
    let after = reserve.composition_runs + reserve.test_runs;
    let less = |b: Budget, per_run: u64| Budget { max_calls: b.max_calls.map(|m| m - after * per_run), ..b };
    let mut roles = std::collections::BTreeMap::new();
    for (role, b) in budget.roles() {
        roles.insert(role, if role == LmRole::Task { less(b, reserve.calls_per_run) } else { b });
    }
    Ok(Some(Limits { total: less(budget.total(), reserve.calls_per_run + reserve.judges_per_run), roles }))
}

/// `.promptloop/checkpoints/<name>.json`: where a pipeline's search saves its progress.
pub fn checkpoint_path(config: &PipelineConfig) -> std::path::PathBuf {
    config.state_dir().join("checkpoints").join(format!("{}.json", config.name))
}

/// What the search ran: the optimized program, its record, and the
/// checkpoint to remove once the stage's files are written.
pub struct OptimizerRun {
    pub optimized: Optimized,
    pub search: SearchSummary,
    pub checkpoint: Arc<Checkpoint>,
}

/// Runs the optimizer from `start`, within the budget, resuming from the
/// pipeline's checkpoint unless `fresh`, and records the search.
pub async fn run_optimizer(
    config: &PipelineConfig,
    dataset: &Dataset,
    start: &Start,
    optimizer: &dyn Optimizer,
    models: &Models,
    fresh: bool,
) -> Result<OptimizerRun> {
    if dataset.dev().is_empty() && optimizer.kind() != crate::config::OptimizerKind::None {
        bail!(
            "{}: the dev split is empty, and the optimizer selects on dev; give dev a share in [dataset] split (e.g. dev = 0.15)",
            config.dataset.path.display()
        );
    }
    let reserve = reserve(&start.production, dataset, &config.metric);
    let limits = optimizer_limits(config, &reserve)?;
    let identity = Identity {
        pipeline: config.name.clone(),
        dataset: dataset.content_hash.clone(),
        seed: config.seed,
        optimizer: serde_json::to_value(&config.optimizer).expect("optimizer settings serialize"),
        production: crate::optimize::scorer::program_key(&start.production),
        model: serde_json::to_value(models.task.description()).expect("an LM description serializes"),
    };
    let checkpoint = Arc::new(Checkpoint::open(&checkpoint_path(config), identity, fresh)?);
    if checkpoint.restored_len() > 0 {
        eprintln!(
            "resuming from {}: {} programs' dev scores restored (--fresh starts over)",
            checkpoint.path().display(),
            checkpoint.restored_len()
        );
    }
    let mut ctx = models.optimize.clone();
    ctx.checkpoint = Some(checkpoint.clone());
    if limits.is_some() {
        ctx.composition_reserve = reserve.composition();
    }
    let projected =
        with_judge(optimizer.project(&start.production, dataset.train().len(), dataset.dev().len()), &reserve);
    let projected_total: u64 = projected.iter().map(|(_, c)| c).sum();
    tracing::info!(
        optimizer = optimizer.kind().name(),
        projected_calls = projected_total,
        scoring_calls = reserve.calls(reserve.test_runs),
        "optimizing"
    );
    let teacher_at_most = optimizer.teacher_at_most(&start.production, dataset.train().len());
    eprintln!("{}", projection_line(optimizer, &projected, teacher_at_most, &reserve, config, limits.as_ref()));
    let before = models.meter.usage();
    if let Some(limits) = &limits {
        models.meter.set_limits(limits.clone());
    }
    let result = crate::optimize::optimize(optimizer, start, dataset.train(), dataset.dev(), &ctx).await;
    models.meter.clear_limits();
    let optimized = match result {
        Ok(o) => o,
        Err(e @ LmError::BudgetExhausted { .. }) => {
            bail!("{e} before production was scored on dev; raise [budget] so one full evaluation fits")
        }
        Err(e) => return Err(anyhow::Error::new(e).context("optimizing stopped: the LM failed")),
    };
    let used = models.meter.usage().since(&before);
    let summary = SearchSummary {
        improved: optimized.improved(),
        production_dev: optimized.production_dev.unwrap_or(0.0),
        candidate_dev: optimized.dev_score.unwrap_or(0.0),
        chosen: match &optimized.proposal {
            crate::optimize::Proposal::Better { name } => name.clone(),
            crate::optimize::Proposal::NoBetter { .. } => "production".into(),
        },
        candidates: optimized.candidates.clone(),
        stopped_early: optimized.stopped_early.clone(),
        evaluations: optimized.evaluations,
        notes: optimized.notes.notes.clone(),
        proposals: optimized.notes.proposals.clone(),
        reflections: optimized.notes.reflections.clone(),
        usage: role_uses(&used, limits.as_ref(), &projected),
        slices: optimized.slices.clone(),
    };
    Ok(OptimizerRun { optimized, search: summary, checkpoint })
}

/// Adds the judge's calls to an optimizer's projection: every run of the
/// program the search scores (the task's and the teacher's) is judged once
/// per judge of the metric; the proposer's drafts are not.
pub fn with_judge(mut projected: Vec<(LmRole, u64)>, reserve: &Reserve) -> Vec<(LmRole, u64)> {
    if reserve.judges_per_run == 0 {
        return projected;
    }
    let scored: u64 = projected
        .iter()
        .filter(|(role, _)| matches!(role, LmRole::Task | LmRole::Teacher))
        .map(|(_, calls)| calls)
        .sum();
    let runs = scored.div_ceil(reserve.calls_per_run.max(1));
    projected.push((LmRole::Judge, runs * reserve.judges_per_run));
    projected
}

/// Per role: the optimizer's budget, its projection and what it used.
fn role_uses(used: &UsageByRole, limits: Option<&Limits>, projected: &[(LmRole, u64)]) -> Vec<RoleUse> {
    LmRole::ALL
        .iter()
        .filter_map(|&role| {
            let projected_calls = projected.iter().find(|(r, _)| *r == role).map_or(0, |(_, c)| *c);
            let budget = limits.and_then(|l| l.roles.get(&role).copied()).unwrap_or_default();
            let used = used.role(role);
            (used.calls > 0 || projected_calls > 0 || !budget.is_unlimited()).then(|| RoleUse {
                role: role.name().to_string(),
                budget,
                projected_calls,
                used,
            })
        })
        .chain(limits.map(|l| RoleUse {
            role: "all roles".to_string(),
            budget: l.total,
            projected_calls: projected.iter().map(|(_, c)| c).sum(),
            used: used.total(),
        }))
        .collect()
}

/// `bootstrap_few_shot: about 21 LM calls (task 12, teacher 9) to optimize (the teacher's 9 if a third
/// of its traces pass the metric's threshold, up to 159 if few do), up to 42 to score production and a
/// candidate on test; the optimizer's budget: 2,000 calls`.
fn projection_line(
    optimizer: &dyn Optimizer,
    projected: &[(LmRole, u64)],
    teacher_at_most: u64,
    reserve: &Reserve,
    config: &PipelineConfig,
    limits: Option<&Limits>,
) -> String {
    use crate::report::thousands;
    let total: u64 = projected.iter().map(|(_, c)| c).sum();
    let roles: Vec<String> = projected.iter().map(|(r, c)| format!("{} {}", r.name(), thousands(*c))).collect();
    let teacher = projected.iter().find(|(r, _)| *r == LmRole::Teacher).map_or(0, |(_, c)| *c);
    let teacher_note = if teacher_at_most > teacher {
        format!(
            " (the teacher's {} if a third of its traces pass the metric's threshold, up to {} if few do)",
            thousands(teacher),
            thousands(teacher_at_most)
        )
    } else {
        String::new()
    };
    let mut line = format!(
        "{}: about {} LM calls ({}) to optimize{teacher_note}, up to {} to score production and a candidate on test",
        optimizer.kind().name(),
        thousands(total),
        roles.join(", "),
        thousands(reserve.calls(reserve.test_runs))
    );
    if reserve.composition_runs > 0 {
        line.push_str(&format!(
            ", {} to score the per-slice composition on dev",
            thousands(reserve.calls(reserve.composition_runs))
        ));
    }
    let tokens_per_call = 400.0;
    if config.lm.input_price.is_some() || config.lm.output_price.is_some() {
        let calls = (total + reserve.calls(reserve.test_runs + reserve.composition_runs)) as f64;
        let dollars = prices(&config.lm).dollars((calls * tokens_per_call) as u64, (calls * 16.0) as u64);
        line.push_str(&format!(", about ${dollars:.2} at {tokens_per_call:.0} prompt tokens a call"));
    }
    if let Some(limits) = limits
        && !limits.total.is_unlimited()
    {
        line.push_str(&format!("; the optimizer's budget: {}", crate::report::budget_text(&limits.total)));
    }
    line
}
