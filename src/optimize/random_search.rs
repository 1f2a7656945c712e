//! Random search over demo sets, raced on dev.
//!
//! Candidates, all on production's instructions: the declared zero-shot
//! program; production's demos with the labels they lack added;
//! `num_candidates` label-covering sets of several sizes (one, two, ... demos
//! per label, as `max_labeled_demos` allows), each drawn and ordered anew; and
//! bootstrapped sets. They are raced by successive halving on growing prefixes
//! of a seeded shuffle of dev — every survivor scored on the same examples,
//! the lower half dropped at each rung — so a small dev set picks by evidence
//! rather than by one noisy pass, and the calls go to the contenders. The
//! survivors end scored on all of dev.

use super::slices::examples_for;
use async_trait::async_trait;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::bootstrap::{BootstrapSettings, bootstrap_few_shot};
use super::demos::{cover_labels, label_count, stratified, with_demos};
use super::{OptimizeContext, Optimizer, Scorer, SearchNotes, Start};
use crate::config::{OptimizerConfig, OptimizerKind};
use crate::dataset::Train;
use crate::lm::LmError;
use crate::lm::budget::LmRole;
use crate::program::Program;

pub struct RandomSearch {
    settings: BootstrapSettings,
    num_candidates: usize,
}

impl RandomSearch {
    /// How many bootstrapped demo sets it draws (each a teacher bootstrap).
    fn bootstraps(&self) -> u64 {
        (self.num_candidates / 3).max(usize::from(self.num_candidates > 0)) as u64
    }

    pub fn new(config: &OptimizerConfig) -> Self {
        Self { settings: BootstrapSettings::from_config(config), num_candidates: config.num_candidates }
    }
}

/// The demo-set candidates every demo search starts from (production itself
/// excluded): named programs on `base`'s instructions.
pub async fn demo_candidates(
    start: &Start,
    base: &Program,
    train: &Train,
    ctx: &OptimizeContext,
    settings: &BootstrapSettings,
    num_candidates: usize,
) -> Result<Vec<(String, Program)>, LmError> {
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed.wrapping_add(0xde_0005));
    let mut out: Vec<(String, Program)> = Vec::new();
    let push = |name: String, program: Program, out: &mut Vec<(String, Program)>| {
        if program != start.production && !out.iter().any(|(_, p)| *p == program) {
            out.push((name, program));
        }
    };
    push("zero-shot".into(), with_demos(base, vec![Vec::new(); base.predictors.len()]), &mut out);
    let max = settings.max_labeled_demos.max(1);
    let covered: Option<Vec<_>> = start
        .production
        .predictors
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let pool = examples_for(&start.production, i, train);
            cover_labels(p, &p.demos, &pool, max.max(p.demos.len()), &mut rng).or_else(|| Some(p.demos.clone()))
        })
        .collect();
    if let Some(covered) = covered {
        let mut program = start.production.clone();
        for (p, d) in program.predictors.iter_mut().zip(covered) {
            p.demos = d;
        }
        push("production + missing labels".into(), program, &mut out);
    }
    let labels = label_count(base);
    let max_per_label = (max / labels).max(1);
    let bootstrapped = (num_candidates / 3).max(usize::from(num_candidates > 0));
    let stratified_n = num_candidates.saturating_sub(bootstrapped);
    for i in 0..stratified_n {
        // Sizes cycle from the largest down, so a short search still tries the fullest sets.
        let per_label = max_per_label - (i % max_per_label);
        let demos = base
            .predictors
            .iter()
            .enumerate()
            .map(|(i, p)| stratified(p, &examples_for(base, i, train), per_label, max, &mut rng))
            .collect();
        push(format!("covering-{}x{}", i + 1, per_label), with_demos(base, demos), &mut out);
    }
    for i in 0..bootstrapped {
        let mut local_rng = ChaCha8Rng::seed_from_u64(ctx.seed.wrapping_add(1 + i as u64));
        let mut order = train.examples().to_vec();
        order.shuffle(&mut local_rng);
        let size = local_rng.random_range(1..=settings.max_bootstrapped_demos.max(1));
        let local = BootstrapSettings { max_bootstrapped_demos: size, ..*settings };
        let (program, _) = bootstrap_few_shot(base, &order, ctx, &local, &mut local_rng).await?;
        push(format!("bootstrapped-{}", i + 1), program, &mut out);
    }
    Ok(out)
}

/// Successive halving on dev: every candidate on the first rung's examples,
/// the better half (and any within a standard error of the leader) on twice
/// as many, ... until the survivors are scored on all of dev. Returns the
/// survivors' names.
pub async fn race(
    scorer: &Scorer,
    candidates: &[(String, Program)],
    first_rung: usize,
) -> Result<Vec<String>, LmError> {
    let n = scorer.dev_len();
    let mut alive: Vec<usize> = (0..candidates.len()).collect();
    let mut size = first_rung.clamp(1, n.max(1)).min(n);
    loop {
        let examples = scorer.prefix(size);
        let mut means = Vec::new();
        for &i in &alive {
            let (name, program) = &candidates[i];
            means.push((scorer.mean(name, program, &examples).await?, i));
        }
        if size >= n {
            break;
        }
        // Stable: on a tie the earlier candidate stays.
        means.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        // The better half goes on, and so does any candidate the rung cannot
        // tell from the leader: within one standard error of its mean.
        let leader = means[0].0;
        let se = (leader * (1.0 - leader) / size as f64).sqrt().max(1.0 / size as f64);
        let keep = alive.len().div_ceil(2).max(1);
        alive = means
            .into_iter()
            .enumerate()
            .filter(|(rank, (mean, _))| *rank < keep || *mean >= leader - se)
            .map(|(_, (_, i))| i)
            .collect();
        alive.sort_unstable();
        size = (size * 2).min(n);
    }
    Ok(alive.into_iter().map(|i| candidates[i].0.clone()).collect())
}

/// Example evaluations a race of `candidates` on `dev` examples runs.
pub fn race_calls(candidates: usize, dev: usize) -> u64 {
    let mut alive = candidates;
    let mut size = first_rung(dev);
    let mut calls = 0;
    let mut scored = 0;
    while alive > 0 {
        calls += (alive * (size - scored.min(size))) as u64;
        if size >= dev {
            break;
        }
        scored = size;
        alive = alive.div_ceil(2);
        size = (size * 2).min(dev);
    }
    calls
}

/// The first rung of a race on `dev_len` examples: a quarter of dev, at least 8.
pub fn first_rung(dev_len: usize) -> usize {
    (dev_len / 4).max(8).min(dev_len)
}

#[async_trait]
impl Optimizer for RandomSearch {
    fn kind(&self) -> OptimizerKind {
        OptimizerKind::BootstrapRandomSearch
    }

    fn describe(&self) -> String {
        format!(
            "`bootstrap_random_search` ({} demo sets covering the labels or bootstrapped, up to {} demos, raced on dev from production's program)",
            self.num_candidates, self.settings.max_labeled_demos
        )
    }

    fn project(&self, program: &Program, train: usize, dev: usize) -> Vec<(LmRole, u64)> {
        let p = program.calls_per_run() as u64;
        let candidates = self.num_candidates + 2;
        vec![
            (LmRole::Task, (dev as u64 + race_calls(candidates, dev)) * p),
            (LmRole::Teacher, self.bootstraps() * self.settings.teacher_calls(program, train) * p),
        ]
    }

    fn teacher_at_most(&self, program: &Program, train: usize) -> u64 {
        self.bootstraps() * self.settings.teacher_runs_at_most(train) * program.calls_per_run() as u64
    }

    async fn search(
        &self,
        start: &Start,
        train: &Train,
        scorer: &Scorer,
        ctx: &OptimizeContext,
        notes: &mut SearchNotes,
    ) -> Result<(), LmError> {
        let candidates =
            demo_candidates(start, &start.production, train, ctx, &self.settings, self.num_candidates).await?;
        let survivors = race(scorer, &candidates, first_rung(scorer.dev_len())).await?;
        notes.notes.push(format!(
            "{} candidates raced on dev (first rung {} examples); scored on all of dev: {}",
            candidates.len(),
            first_rung(scorer.dev_len()),
            survivors.join(", ")
        ));
        Ok(())
    }
}
