//! BootstrapFewShot and its random-search variant.
//!
//! Bootstrapping runs a teacher (the program with labeled demos, optionally on
//! another LM) over training examples and keeps the traces the metric accepts
//! as demos; labeled examples fill the remaining demo slots. Random search
//! builds several such programs from shuffled training sets and keeps the one
//! that scores best on dev. Nothing here ever receives the test split.

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};

use crate::dataset::Example;
use crate::lm::LmError;
use crate::metric;
use crate::optimize::evaluate::{EvalContext, evaluate};
use crate::program::Program;
use crate::program::artifact::CandidateScore;
use crate::program::predictor::{Demo, DemoSource, PredictSettings};

#[derive(Debug, Clone, Copy)]
pub struct BootstrapSettings {
    pub max_bootstrapped_demos: usize,
    pub max_labeled_demos: usize,
    pub max_rounds: usize,
    pub metric_threshold: f64,
}

/// The models and metric an optimizer works with.
#[derive(Clone)]
pub struct OptimizeContext {
    /// How the student is evaluated (on dev, for selection).
    pub student: EvalContext,
    /// How the teacher predicts while bootstrapping: the student's LM unless
    /// a teacher LM is configured.
    pub teacher: PredictSettings,
}

#[derive(Debug, Clone, Default)]
pub struct BootstrapStats {
    /// Teacher runs attempted.
    pub attempts: usize,
    /// Traces accepted as demos.
    pub bootstrapped: usize,
}

/// The outcome of an optimizer: the program and the record of how it was chosen.
#[derive(Debug, Clone)]
pub struct Optimized {
    pub program: Program,
    pub candidates: Vec<CandidateScore>,
    pub dev_score: Option<f64>,
}

/// A labeled demo for `predictor` from an example: the predictor's inputs and
/// outputs as far as the example has them.
fn labeled_demo(program: &Program, predictor: usize, example: &Example) -> Demo {
    let p = &program.predictors[predictor];
    let pick = |fields: &[crate::program::signature::Field]| -> Map<String, Value> {
        fields
            .iter()
            .filter_map(|f| {
                example
                    .inputs
                    .get(&f.name)
                    .or_else(|| example.outputs.get(&f.name))
                    .map(|v| (f.name.clone(), v.clone()))
            })
            .collect()
    };
    Demo {
        example_id: example.id.clone(),
        source: DemoSource::Labeled,
        inputs: pick(&p.signature.inputs),
        outputs: pick(&p.signature.outputs),
    }
}

/// The student with `k` labeled demos per predictor, drawn at random.
pub fn labeled_few_shot(student: &Program, train: &[Example], k: usize, rng: &mut ChaCha8Rng) -> Program {
    let mut program = student.clone();
    let chosen: Vec<&Example> = train.choose_multiple(rng, k.min(train.len())).collect();
    for i in 0..program.predictors.len() {
        let demos = chosen.iter().map(|e| labeled_demo(student, i, e)).collect();
        program.predictors[i].demos = demos;
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
    let teacher = labeled_few_shot(student, train, settings.max_labeled_demos, rng);
    let mut stats = BootstrapStats::default();
    let mut bootstrapped: Vec<Vec<Demo>> = vec![Vec::new(); student.predictors.len()];
    let mut used = std::collections::HashSet::new();

    for example in train {
        if stats.bootstrapped >= settings.max_bootstrapped_demos {
            break;
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
            if metric::score(&ctx.student.metric, example, prediction).value < settings.metric_threshold {
                continue;
            }
            for step in &run.trace {
                let index =
                    student.predictors.iter().position(|p| p.name == step.predictor).expect("trace names a predictor");
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

    // Fill the remaining slots with labeled demos from examples not bootstrapped.
    let rest: Vec<&Example> = train.iter().filter(|e| !used.contains(&e.id)).collect();
    let mut program = student.clone();
    for (i, demos) in bootstrapped.into_iter().enumerate() {
        let room = settings.max_labeled_demos.saturating_sub(demos.len());
        let extra: Vec<Demo> =
            rest.choose_multiple(rng, room.min(rest.len())).map(|e| labeled_demo(student, i, e)).collect();
        program.predictors[i].demos = demos.into_iter().chain(extra).collect();
    }
    Ok((program, stats))
}

/// BootstrapFewShot once, with the training set in a seeded random order.
pub async fn bootstrap_once(
    student: &Program,
    train: &[Example],
    ctx: &OptimizeContext,
    settings: &BootstrapSettings,
    seed: u64,
) -> Result<Optimized, LmError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order = train.to_vec();
    order.shuffle(&mut rng);
    let (program, _) = bootstrap_few_shot(student, &order, ctx, settings, &mut rng).await?;
    Ok(Optimized { program, candidates: Vec::new(), dev_score: None })
}

/// Random search over bootstrapped demo sets: the zero-shot program, labeled
/// demos only, bootstrapping in order, then `num_candidates` bootstraps of
/// shuffled training sets with a random number of demos; the best on dev wins
/// (the earliest on a tie).
pub async fn bootstrap_random_search(
    student: &Program,
    train: &[Example],
    dev: &[Example],
    ctx: &OptimizeContext,
    settings: &BootstrapSettings,
    num_candidates: usize,
    seed: u64,
) -> Result<Optimized, LmError> {
    let mut candidates: Vec<(String, Program)> = Vec::new();
    candidates.push(("zero-shot".into(), student.clone()));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    candidates.push(("labeled".into(), labeled_few_shot(student, train, settings.max_labeled_demos, &mut rng)));
    let (in_order, _) = bootstrap_few_shot(student, train, ctx, settings, &mut rng).await?;
    candidates.push(("bootstrapped".into(), in_order));
    for i in 0..num_candidates {
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(1 + i as u64));
        let mut order = train.to_vec();
        order.shuffle(&mut rng);
        let size = rng.random_range(1..=settings.max_bootstrapped_demos.max(1));
        let local = BootstrapSettings { max_bootstrapped_demos: size, ..*settings };
        let (program, _) = bootstrap_few_shot(student, &order, ctx, &local, &mut rng).await?;
        candidates.push((format!("random-{}", i + 1), program));
    }

    let mut scored = Vec::new();
    let mut best: Option<(f64, usize)> = None;
    for (index, (name, program)) in candidates.iter().enumerate() {
        let eval = evaluate(program, dev, &ctx.student, &format!("dev: {name}")).await?;
        let score = eval.summary.mean;
        tracing::info!(candidate = %name, demos = program.demo_count(), dev = score, "scored candidate on dev");
        scored.push(CandidateScore { name: name.clone(), demos: program.demo_count(), dev_score: score });
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, index));
        }
    }
    let (dev_score, index) = best.expect("at least the zero-shot candidate");
    Ok(Optimized { program: candidates.swap_remove(index).1, candidates: scored, dev_score: Some(dev_score) })
}
