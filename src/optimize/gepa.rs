//! GEPA (Agrawal et al. 2025, "GEPA: Reflective Prompt Evolution Can
//! Outperform Reinforcement Learning"): a pool of candidate programs, each
//! scored on every dev example; parents drawn from the per-example Pareto
//! front; a child made by reflecting on a parent's failures on a minibatch of
//! train, kept if it does better on that minibatch, then scored on all of dev
//! and added to the front; candidates that improved different predictors merged.
//!
//! A candidate is instructions and demo sets per predictor. Mutations take
//! turns: the proposer LM reads the minibatch's traces with the metric's
//! feedback and writes a new instruction; a reflection written from the
//! failures' data adds, for each label the program missed, the words of the
//! messages it missed it on; and the failing training examples are swapped in
//! as demos. Every reflection is recorded (what failed, what was concluded,
//! the instruction written, the scores reached) for the report.

use super::slices::examples_for;
use std::collections::HashSet;

use async_trait::async_trait;
use rand::SeedableRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};

use super::bootstrap::BootstrapSettings;
use super::demos::{interleave, label_field, label_of, labeled_demo, stratified};
use super::pareto::{ParetoFront, merge_components};
use super::propose::plain;
use super::{OptimizeContext, Optimizer, ReflectionRecord, Scorer, SearchNotes, Start};
use crate::config::{GepaConfig, Module, OptimizerConfig, OptimizerKind};
use crate::dataset::{Example, Train};
use crate::eval::{ExampleResult, evaluate};
use crate::lm::LmError;
use crate::lm::budget::LmRole;
use crate::program::Program;
use crate::program::predictor::{Demo, Predictor};
use crate::program::signature::{Field, FieldType, Signature};

pub struct Gepa {
    config: GepaConfig,
    settings: BootstrapSettings,
}

impl Gepa {
    pub fn new(config: &OptimizerConfig) -> Self {
        Self { config: config.gepa.clone(), settings: BootstrapSettings::from_config(config) }
    }
}

/// The kinds of mutation, in the order they take turns.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mutation {
    LmReflection,
    DataReflection,
    DemoSwap,
}

impl Mutation {
    fn name(self) -> &'static str {
        match self {
            Mutation::LmReflection => "reflection by the proposer LM",
            Mutation::DataReflection => "reflection from the failures' data",
            Mutation::DemoSwap => "failing examples as demos",
        }
    }
}

struct Member {
    name: String,
    program: Program,
    parent: Option<usize>,
}

/// The nearest common ancestor of `a` and `b` in the pool.
fn common_ancestor(pool: &[Member], a: usize, b: usize) -> Option<usize> {
    let mut seen = HashSet::new();
    let mut at = Some(a);
    while let Some(i) = at {
        seen.insert(i);
        at = pool[i].parent;
    }
    let mut at = Some(b);
    while let Some(i) = at {
        if seen.contains(&i) {
            return Some(i);
        }
        at = pool[i].parent;
    }
    None
}

#[async_trait]
impl Optimizer for Gepa {
    fn kind(&self) -> OptimizerKind {
        OptimizerKind::Gepa
    }

    fn describe(&self) -> String {
        let rounds = match (self.config.iterations, self.config.max_metric_calls) {
            (None, Some(calls)) => format!("reflective mutations until {calls} example evaluations"),
            _ => format!("{} reflective mutations", self.config.iterations()),
        };
        format!(
            "`gepa` ({rounds} of instructions and demo sets on train minibatches of {}, a Pareto front per dev example{})",
            self.config.minibatch_size,
            if self.config.merge { ", merges" } else { "" }
        )
    }

    fn project(&self, program: &Program, _train: usize, dev: usize) -> Vec<(LmRole, u64)> {
        let p = program.calls_per_run() as u64;
        let (dev, minibatch) = (dev as u64, self.config.minibatch_size as u64);
        // Production and one covering seed in full, then each mutation on its minibatch
        // twice and, when kept (about a third), on all of dev.
        let per_round = 2 * minibatch + dev / 3;
        let iterations = match self.config.max_metric_calls {
            Some(calls) => (self.config.iterations() as u64).min(calls.saturating_sub(2 * dev) / per_round.max(1)),
            None => self.config.iterations() as u64,
        };
        let mut task = 2 * dev + iterations * per_round + dev;
        if let Some(calls) = self.config.max_metric_calls {
            task = task.min(calls);
        }
        let proposer = if self.config.lm_reflection { iterations.div_ceil(3) } else { 0 };
        vec![(LmRole::Task, task * p), (LmRole::Proposer, proposer * program.predictors.len() as u64)]
    }

    async fn search(
        &self,
        start: &Start,
        train: &Train,
        scorer: &Scorer,
        ctx: &OptimizeContext,
        notes: &mut SearchNotes,
    ) -> Result<(), LmError> {
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed.wrapping_add(0x6e9a));
        let mut front = ParetoFront::new(scorer.dev_len());
        let mut pool: Vec<Member> = Vec::new();
        let mut train_evaluations: u64 = 0;
        let over_budget = |scorer: &Scorer, train_evaluations: u64| {
            self.config.max_metric_calls.is_some_and(|max| scorer.evaluations() + train_evaluations >= max)
        };

        // Seeds: production, and production's instructions with label-covering demos.
        let production = scorer.full("production", &start.production).await?;
        front.add(production.results.iter().map(|r| r.score).collect()).expect("one score per dev example");
        pool.push(Member { name: "production".into(), program: start.production.clone(), parent: None });
        let mut covering = start.production.clone();
        let max = self.settings.max_labeled_demos.max(1);
        let per_label = (max / super::demos::label_count(&covering)).max(1);
        for (i, p) in covering.predictors.iter_mut().enumerate() {
            p.demos = stratified(p, &examples_for(&start.production, i, train), per_label, max, &mut rng);
        }
        if covering != start.production && !over_budget(scorer, 0) {
            let full = scorer.full("gepa seed: covering demos", &covering).await?;
            front.add(full.results.iter().map(|r| r.score).collect()).expect("one score per dev example");
            pool.push(Member { name: full.name, program: covering, parent: Some(0) });
        }

        let mut mutations = vec![Mutation::DataReflection, Mutation::DemoSwap];
        if self.config.lm_reflection {
            mutations.insert(0, Mutation::LmReflection);
        }
        let mut merges = 0;
        let mut merged_pairs: HashSet<(usize, usize)> = HashSet::new();
        for iteration in 0..self.config.iterations() {
            if over_budget(scorer, train_evaluations) {
                notes.notes.push(format!(
                    "GEPA stopped after {iteration} mutations: {} example evaluations reached max_metric_calls",
                    scorer.evaluations() + train_evaluations
                ));
                break;
            }
            // Every fourth round, a merge when two candidates lead on different examples.
            if self.config.merge && iteration % 4 == 3 && merges < 3 {
                let pair = front.merge_pairs().into_iter().find(|pair| !merged_pairs.contains(pair));
                if let Some((a, b)) = pair {
                    merged_pairs.insert((a, b));
                    if let Some(child) = merge(&pool, &front, a, b) {
                        merges += 1;
                        let name = format!("gepa-{} (merge of {} and {})", pool.len(), pool[a].name, pool[b].name);
                        let full = scorer.full(&name, &child).await?;
                        let dev_score = full.mean;
                        front.add(full.results.iter().map(|r| r.score).collect()).expect("one score per dev example");
                        notes.reflections.push(ReflectionRecord {
                            iteration: iteration + 1,
                            predictor: "all".into(),
                            parent: format!("{} + {}", pool[a].name, pool[b].name),
                            kind: "merge".into(),
                            failures: Vec::new(),
                            conclusion: None,
                            instruction: None,
                            minibatch: None,
                            accepted: true,
                            dev_score: Some(dev_score),
                        });
                        pool.push(Member { name: full.name, program: child, parent: Some(a) });
                        continue;
                    }
                }
            }
            let Some(parent) = front.sample_parent(&mut rng) else { break };
            let predictor_index = iteration % start.production.predictors.len().max(1);
            let mutation = mutations[iteration % mutations.len()];
            // A handler behind a router reflects on the examples routed to it.
            let slice = examples_for(&start.production, predictor_index, train);
            let batch: Vec<Example> =
                slice.choose_multiple(&mut rng, self.config.minibatch_size.min(slice.len())).cloned().collect();
            if batch.is_empty() {
                continue;
            }
            let parent_program = pool[parent].program.clone();
            let before = evaluate(&parent_program, &batch, &ctx.student, "train: reflection minibatch").await?;
            train_evaluations += batch.len() as u64;
            let failures: Vec<(&Example, &ExampleResult)> =
                batch.iter().zip(&before.results).filter(|(_, r)| r.score < 1.0).collect();
            if failures.is_empty() {
                continue;
            }
            let predictor = &parent_program.predictors[predictor_index];
            let failure_lines: Vec<String> =
                failures.iter().map(|(e, r)| format!("{}: {}", e.id, one_line(&r.feedback))).collect();
            let (child, conclusion) = match mutation {
                Mutation::LmReflection => match reflect_with_lm(predictor, &failures, ctx).await? {
                    Ok((diagnosis, instruction)) => {
                        (with_instruction(&parent_program, predictor_index, instruction), Some(diagnosis))
                    }
                    Err(reason) => {
                        notes.notes.push(format!(
                            "`{}`: a reflection (round {}) was dropped: {reason}",
                            predictor.name,
                            iteration + 1
                        ));
                        continue;
                    }
                },
                Mutation::DataReflection => match reflect_on_data(predictor, &failures) {
                    Some(instruction) => (with_instruction(&parent_program, predictor_index, instruction), None),
                    None => continue,
                },
                Mutation::DemoSwap => {
                    let demos = swap_in_failures(predictor, &failures, max, &mut rng);
                    let mut child = parent_program.clone();
                    child.predictors[predictor_index].demos = demos;
                    (child, None)
                }
            };
            if child == parent_program {
                continue;
            }
            let after = evaluate(&child, &batch, &ctx.student, "train: reflection minibatch").await?;
            train_evaluations += batch.len() as u64;
            let (b, a) = (super::scorer::mean(&before.results), super::scorer::mean(&after.results));
            let accepted = a > b;
            let mut record = ReflectionRecord {
                iteration: iteration + 1,
                predictor: predictor.name.clone(),
                parent: pool[parent].name.clone(),
                kind: mutation.name().into(),
                failures: failure_lines,
                conclusion,
                instruction: (child.predictors[predictor_index].instructions != predictor.instructions)
                    .then(|| child.predictors[predictor_index].instructions.clone()),
                minibatch: Some((b, a)),
                accepted,
                dev_score: None,
            };
            if accepted {
                let name = format!("gepa-{} ({} of {})", pool.len(), short(mutation), pool[parent].name);
                let full = match scorer.full(&name, &child).await {
                    Ok(full) => full,
                    Err(e) => {
                        notes.reflections.push(record);
                        return Err(e);
                    }
                };
                record.dev_score = Some(full.mean);
                front.add(full.results.iter().map(|r| r.score).collect()).expect("one score per dev example");
                pool.push(Member { name: full.name, program: child, parent: Some(parent) });
            }
            notes.reflections.push(record);
        }
        notes.notes.push(format!(
            "GEPA: {} candidates in the pool, {} on the Pareto front; {} example evaluations on train minibatches",
            pool.len(),
            front.non_dominated().len(),
            train_evaluations
        ));
        Ok(())
    }
}

fn short(mutation: Mutation) -> &'static str {
    match mutation {
        Mutation::LmReflection => "LM reflection",
        Mutation::DataReflection => "data reflection",
        Mutation::DemoSwap => "demo swap",
    }
}

fn one_line(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > 200 { format!("{}…", line.chars().take(200).collect::<String>()) } else { line }
}

fn with_instruction(program: &Program, index: usize, instruction: String) -> Program {
    let mut child = program.clone();
    child.predictors[index].instructions = instruction;
    child
}

/// Merges candidates `a` and `b` per predictor against their common
/// ancestor: each predictor from the parent that changed it (the better
/// parent on dev when both did). `None` when that is one of the parents.
fn merge(pool: &[Member], front: &ParetoFront, a: usize, b: usize) -> Option<Program> {
    let ancestor = common_ancestor(pool, a, b)?;
    let parts = |p: &Program| -> Vec<(String, Vec<Demo>)> {
        p.predictors.iter().map(|q| (q.instructions.clone(), q.demos.clone())).collect()
    };
    let merged = merge_components(
        &parts(&pool[ancestor].program),
        &parts(&pool[a].program),
        &parts(&pool[b].program),
        front.mean(a)?,
        front.mean(b)?,
    )?;
    let mut child = pool[a].program.clone();
    for (p, (instructions, demos)) in child.predictors.iter_mut().zip(merged) {
        p.instructions = instructions;
        p.demos = demos;
    }
    Some(child)
}

const HINTS_HEADER: &str = "Hints from past mistakes:";

/// For each label the program missed, the words of the messages it missed it
/// on, as a hint line (kept to six words a label, most recent first); `None`
/// without an enum output or anything new to say.
fn reflect_on_data(predictor: &Predictor, failures: &[(&Example, &ExampleResult)]) -> Option<String> {
    let (field, values) = label_field(predictor)?;
    let (body, hints) = match predictor.instructions.split_once(HINTS_HEADER) {
        Some((body, hints)) => (body.trim_end().to_string(), hints.to_string()),
        None => (predictor.instructions.trim_end().to_string(), String::new()),
    };
    let mut lines: Vec<(String, Vec<String>)> = hints
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter_map(|l| l.split_once(": messages about "))
        .map(|(label, words)| (label.to_string(), words.split(", ").map(str::to_string).collect()))
        .collect();
    let mut changed = false;
    for (example, _) in failures {
        let Some(label) = label_of(&example.outputs, field, values) else { continue };
        let text: String = predictor
            .signature
            .inputs
            .iter()
            .filter_map(|f| example.inputs.get(&f.name).and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        let words: Vec<String> = super::propose::content_words(&text).into_iter().take(3).collect();
        if words.is_empty() {
            continue;
        }
        let entry = match lines.iter().position(|(l, _)| *l == label) {
            Some(i) => &mut lines[i].1,
            None => {
                lines.push((label.clone(), Vec::new()));
                &mut lines.last_mut().expect("just pushed").1
            }
        };
        for w in words.into_iter().rev() {
            if !entry.contains(&w) {
                entry.insert(0, w);
                changed = true;
            }
        }
        entry.truncate(6);
    }
    if !changed {
        return None;
    }
    let hints: Vec<String> =
        lines.iter().map(|(label, words)| format!("- {label}: messages about {}", words.join(", "))).collect();
    Some(format!("{body}\n{HINTS_HEADER}\n{}", hints.join("\n")))
}

/// The predictor's demos with the failing examples swapped in: each replaces
/// a demo of the label shown most (or fills a free slot), interleaved again.
fn swap_in_failures(
    predictor: &Predictor,
    failures: &[(&Example, &ExampleResult)],
    max: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<Demo> {
    let mut demos = predictor.demos.clone();
    let labels = label_field(predictor);
    for (example, _) in failures {
        if demos.iter().any(|d| d.example_id == example.id) {
            continue;
        }
        let Some(demo) = labeled_demo(predictor, example) else { continue };
        if demos.len() >= max.max(predictor.demos.len()) {
            // Drop a demo of the most shown label (the first such, so the
            // newest failures survive).
            let drop = match labels {
                Some((field, values)) => {
                    let count = |d: &Demo| {
                        let l = label_of(&d.outputs, field, values);
                        demos.iter().filter(|o| label_of(&o.outputs, field, values) == l).count()
                    };
                    (0..demos.len()).max_by_key(|&i| (count(&demos[i]), std::cmp::Reverse(i)))
                }
                None => Some(0),
            };
            if let Some(i) = drop {
                demos.remove(i);
            }
        }
        demos.push(demo);
    }
    match labels {
        Some((_, values)) => {
            let mut order: Vec<usize> = (0..values.len()).collect();
            order.shuffle(rng);
            interleave(demos, predictor, &order)
        }
        None => demos,
    }
}

/// The predictor that reflects on a step's failures.
fn reflection_predictor() -> Predictor {
    let string = |name: &str, description: &str| Field::new(name, FieldType::String, description);
    Predictor {
        name: "reflect".into(),
        module: Module::Predict,
        signature: Signature {
            inputs: vec![
                string("current_instruction", "the instruction the step follows now"),
                string("step_description", "what the step takes and gives"),
                string("examples_with_feedback", "inputs, the step's outputs, and what was wrong with them"),
            ],
            outputs: vec![
                string("diagnosis", "what the failures have in common and why the instruction allows them"),
                string("new_instruction", "the improved instruction for the step, in full"),
            ],
        },
        instructions: "You improve the instruction of one step of a language-model program. Read the examples \
                       where the step went wrong and the feedback on each, say what went wrong, then write the \
                       whole improved instruction so the step gets such inputs right."
            .into(),
        demos: Vec::new(),
    }
}

/// Asks the proposer LM to reflect on `failures`. `Ok(Err(reason))` when the
/// reply is unusable.
async fn reflect_with_lm(
    predictor: &Predictor,
    failures: &[(&Example, &ExampleResult)],
    ctx: &OptimizeContext,
) -> Result<Result<(String, String), String>, LmError> {
    let mut examples = Vec::new();
    for (example, result) in failures {
        let inputs: Vec<String> = predictor
            .signature
            .inputs
            .iter()
            .filter_map(|f| example.inputs.get(&f.name).map(|v| format!("{}: {}", f.name, plain(v))))
            .collect();
        let output = match &result.prediction {
            Some(p) => p.iter().map(|(k, v)| format!("{k}: {}", plain(v))).collect::<Vec<_>>().join(", "),
            None => "no answer".to_string(),
        };
        examples.push(format!(
            "{}\nstep output: {output}\nfeedback: {}",
            inputs.join("\n"),
            one_line(&result.feedback)
        ));
    }
    let mut inputs = Map::new();
    inputs.insert("current_instruction".into(), predictor.instructions.clone().into());
    inputs.insert("step_description".into(), super::propose::describe_predictor(predictor).into());
    inputs.insert("examples_with_feedback".into(), examples.join("\n\n").into());
    // An unusable reply is asked again once, sampled (a greedy retry would repeat it).
    let mut reasons = Vec::new();
    for attempt in 0..2u32 {
        let mut settings = ctx.proposer.clone();
        if attempt > 0 {
            settings.temperature = settings.temperature.max(0.7);
        }
        let call = reflection_predictor().call(&settings, &inputs, (attempt > 0).then_some(attempt)).await?;
        let Some(outputs) = call.outputs else {
            reasons.push(call.error.unwrap_or_else(|| "no reply".into()));
            continue;
        };
        let diagnosis = outputs.get("diagnosis").map(plain).unwrap_or_default();
        let instruction = outputs.get("new_instruction").map(plain).unwrap_or_default();
        let instruction = instruction.trim();
        match super::propose::instruction_problem(instruction) {
            Some(problem) => reasons.push(format!("the new instruction {problem}")),
            None => return Ok(Ok((diagnosis.trim().to_string(), instruction.to_string()))),
        }
    }
    Ok(Err(format!("twice: {}", reasons.join("; then "))))
}
