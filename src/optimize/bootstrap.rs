//! BootstrapFewShot: a teacher (the program with labeled demos, optionally on
//! another LM) answers training examples; the traces the metric accepts become
//! demos, and labeled examples covering the labels not yet shown fill the
//! remaining slots.

use std::collections::HashSet;

use async_trait::async_trait;
use rand::SeedableRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;

use super::demos::{cover_labels, interleave, labeled_demo, stratified};
use super::slices::examples_for;
use super::{OptimizeContext, Optimizer, Scorer, SearchNotes, Start};
use crate::config::{OptimizerConfig, OptimizerKind};
use crate::dataset::{Example, Train};
use crate::lm::LmError;
use crate::lm::budget::LmRole;
use crate::program::Program;
use crate::program::predictor::{Demo, DemoSource};

#[derive(Debug, Clone, Copy)]
pub struct BootstrapSettings {
    pub max_bootstrapped_demos: usize,
    pub max_labeled_demos: usize,
    pub max_rounds: usize,
    pub metric_threshold: f64,
}

impl BootstrapSettings {
    pub fn from_config(config: &OptimizerConfig) -> Self {
        BootstrapSettings {
            max_bootstrapped_demos: config.max_bootstrapped_demos,
            max_labeled_demos: config.max_labeled_demos,
            max_rounds: config.max_rounds,
            metric_threshold: config.metric_threshold,
        }
    }

    /// About how many teacher runs one bootstrap of `program` takes: enough
    /// attempts for its demos if about a third of the traces pass (a small
    /// model's rate on the worked example), all rounds each, and that for
    /// every branch of a router, since each example reaches one branch.
    pub fn teacher_calls(&self, program: &Program, train: usize) -> u64 {
        let rounds = self.max_rounds.max(1);
        let groups = program.graph.demo_groups();
        (3 * self.max_bootstrapped_demos * rounds * groups).min(train * rounds) as u64
    }

    /// The most teacher runs one bootstrap can take: every train example, every round.
    pub fn teacher_runs_at_most(&self, train: usize) -> u64 {
        if self.max_bootstrapped_demos == 0 { 0 } else { (train * self.max_rounds.max(1)) as u64 }
    }
}

#[derive(Debug, Clone, Default)]
pub struct BootstrapStats {
    /// Teacher runs attempted.
    pub attempts: usize,
    /// Traces accepted as demos.
    pub bootstrapped: usize,
}

/// The program with `k` labeled demos per predictor, drawn at random.
pub fn labeled_few_shot(student: &Program, train: &[Example], k: usize, rng: &mut ChaCha8Rng) -> Program {
    let mut program = student.clone();
    if student.graph.routers().is_empty() {
        let chosen: Vec<&Example> = train.choose_multiple(rng, k.min(train.len())).collect();
        for predictor in &mut program.predictors {
            predictor.demos = chosen.iter().filter_map(|e| labeled_demo(predictor, e)).collect();
        }
        return program;
    }
    // Behind a router, each handler draws from the examples routed to it.
    for (i, predictor) in program.predictors.iter_mut().enumerate() {
        let pool = examples_for(student, i, train);
        let chosen: Vec<&Example> = pool.choose_multiple(rng, k.min(pool.len())).collect();
        predictor.demos = chosen.iter().filter_map(|e| labeled_demo(predictor, e)).collect();
    }
    program
}

/// BootstrapFewShot over `train` in the order given.
pub async fn bootstrap_few_shot(
    student: &Program,
    train: &[Example],
    ctx: &OptimizeContext,
    settings: &BootstrapSettings,
    rng: &mut ChaCha8Rng,
) -> Result<(Program, BootstrapStats), LmError> {
    // The teacher shows every label it can: a lopsided teacher bootstraps lopsided traces.
    let mut teacher = student.clone();
    for (i, predictor) in teacher.predictors.iter_mut().enumerate() {
        predictor.demos = stratified(predictor, &examples_for(student, i, train), 1, settings.max_labeled_demos, rng);
    }
    let mut stats = BootstrapStats::default();
    let mut bootstrapped: Vec<Vec<Demo>> = vec![Vec::new(); student.predictors.len()];
    let mut used = HashSet::new();
    let max = settings.max_bootstrapped_demos;

    for example in train {
        // Done when every predictor has its demos; an example that reaches
        // only predictors that have theirs is not run.
        let room = |i: usize| bootstrapped[i].len() < max;
        if !(0..student.predictors.len()).any(room) {
            break;
        }
        if !(0..student.predictors.len()).any(|i| room(i) && student.graph.reaches(i, example)) {
            continue;
        }
        // The teacher must not see the example it is answering among its demos.
        let mut teacher_here = teacher.clone();
        for p in &mut teacher_here.predictors {
            p.demos.retain(|d| d.example_id != example.id);
        }
        for round in 0..settings.max_rounds.max(1) {
            let mut predict = ctx.teacher.clone();
            if round > 0 {
                predict.temperature = 0.7 + 0.1 * round as f32;
            }
            stats.attempts += 1;
            let run = teacher_here.run(&predict, &example.inputs, (round > 0).then_some(round as u32)).await?;
            let Some(prediction) = &run.prediction else {
                continue;
            };
            let score = match ctx.student.metric.score(example, prediction).await {
                Ok(s) => s.value,
                Err(e) => {
                    tracing::warn!(example = %example.id, error = %e, "the metric failed on a teacher trace; not a demo");
                    continue;
                }
            };
            if score < settings.metric_threshold {
                continue;
            }
            for step in &run.trace {
                let Some(index) = student.predictors.iter().position(|p| p.name == step.predictor) else {
                    continue;
                };
                if bootstrapped[index].len() >= max {
                    continue;
                }
                bootstrapped[index].push(Demo {
                    example_id: example.id.clone(),
                    source: DemoSource::Bootstrapped,
                    inputs: step.inputs.clone(),
                    outputs: step.outputs.clone(),
                });
            }
            stats.bootstrapped += 1;
            used.insert(example.id.clone());
            break;
        }
    }

    // Fill the remaining slots with labeled demos from examples not bootstrapped:
    // first the labels the bootstrapped demos lack, then at random.
    let rest: Vec<Example> = train.iter().filter(|e| !used.contains(&e.id)).cloned().collect();
    let mut program = student.clone();
    for (i, demos) in bootstrapped.into_iter().enumerate() {
        let predictor = &student.predictors[i];
        let rest = examples_for(student, i, &rest);
        let max = settings.max_labeled_demos.max(demos.len());
        let mut demos = cover_labels(predictor, &demos, &rest, max, rng).unwrap_or(demos);
        let room = max.saturating_sub(demos.len());
        let taken: HashSet<String> = demos.iter().map(|d| d.example_id.clone()).collect();
        let left: Vec<&Example> = rest.iter().filter(|e| !taken.contains(&e.id)).collect();
        demos.extend(left.choose_multiple(rng, room.min(left.len())).filter_map(|e| labeled_demo(predictor, e)));
        program.predictors[i].demos = order_labels(predictor, demos, rng);
    }
    Ok((program, stats))
}

/// Demos interleaved by label in a random label order.
fn order_labels(predictor: &crate::program::predictor::Predictor, demos: Vec<Demo>, rng: &mut ChaCha8Rng) -> Vec<Demo> {
    let Some((_, values)) = super::demos::label_field(predictor) else {
        return demos;
    };
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.shuffle(rng);
    interleave(demos, predictor, &order)
}

/// `kind = "bootstrap_few_shot"`: one bootstrap over the shuffled training set,
/// from production's instructions.
pub struct BootstrapFewShot {
    settings: BootstrapSettings,
}

impl BootstrapFewShot {
    pub fn new(config: &OptimizerConfig) -> Self {
        Self { settings: BootstrapSettings::from_config(config) }
    }
}

#[async_trait]
impl Optimizer for BootstrapFewShot {
    fn kind(&self) -> OptimizerKind {
        OptimizerKind::BootstrapFewShot
    }

    fn describe(&self) -> String {
        format!(
            "`bootstrap_few_shot` (up to {} bootstrapped and {} labeled demos)",
            self.settings.max_bootstrapped_demos, self.settings.max_labeled_demos
        )
    }

    fn project(&self, program: &Program, train: usize, dev: usize) -> Vec<(LmRole, u64)> {
        let p = program.calls_per_run() as u64;
        vec![(LmRole::Task, 2 * dev as u64 * p), (LmRole::Teacher, self.settings.teacher_calls(program, train) * p)]
    }

    fn teacher_at_most(&self, program: &Program, train: usize) -> u64 {
        self.settings.teacher_runs_at_most(train) * program.calls_per_run() as u64
    }

    async fn search(
        &self,
        start: &Start,
        train: &Train,
        scorer: &Scorer,
        ctx: &OptimizeContext,
        _notes: &mut SearchNotes,
    ) -> Result<(), LmError> {
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
        let mut order = train.examples().to_vec();
        order.shuffle(&mut rng);
        let (program, _) = bootstrap_few_shot(&start.production, &order, ctx, &self.settings, &mut rng).await?;
        scorer.full("bootstrapped", &program).await?;
        Ok(())
    }
}
