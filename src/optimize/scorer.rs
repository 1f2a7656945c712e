//! Scoring candidates on dev, for selection: on minibatches or on all of it,
//! each (program, example) scored once, every candidate recorded.
//!
//! The scorer owns the dev split, so an optimizer selects on dev through it
//! and learns from train; the best fully scored candidate is always at hand,
//! which is what a search stopped by its budget returns.

use std::sync::{Arc, Mutex};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::dataset::{Dev, Example};
use crate::eval::{EvalContext, ExampleResult, evaluate};
use crate::lm::LmError;
use crate::program::Program;
use crate::program::artifact::CandidateScore;

/// A program's identity for memoization: each predictor's module, signature,
/// instructions and demos.
pub fn program_key(program: &Program) -> String {
    let mut hasher = Sha256::new();
    for p in &program.predictors {
        hasher.update(p.name.as_bytes());
        hasher.update([0]);
        hasher.update(serde_json::to_vec(&p.module).expect("a module serializes"));
        hasher.update(serde_json::to_vec(&p.signature).expect("a signature serializes"));
        hasher.update([0]);
        hasher.update(p.instructions.as_bytes());
        hasher.update([0]);
        hasher.update(serde_json::to_vec(&p.demos).expect("demos serialize"));
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..12])
}

struct Entry {
    name: String,
    key: String,
    program: Program,
    /// Per dev example (in dev order), once scored.
    results: Vec<Option<ExampleResult>>,
}

impl Entry {
    fn scored(&self) -> impl Iterator<Item = &ExampleResult> {
        self.results.iter().flatten()
    }
    fn mean(&self) -> Option<f64> {
        let (sum, n) = self.scored().fold((0.0, 0usize), |(s, n), r| (s + r.score, n + 1));
        (n > 0).then(|| sum / n as f64)
    }
    fn complete(&self) -> bool {
        self.results.iter().all(Option::is_some)
    }
}

/// A candidate scored on all of dev.
#[derive(Debug, Clone)]
pub struct FullScore {
    pub name: String,
    pub program: Program,
    pub mean: f64,
    pub results: Vec<ExampleResult>,
}

pub struct Scorer {
    ctx: EvalContext,
    dev: Vec<Example>,
    /// Dev indices in a seeded order: rungs and minibatches are prefixes or draws of it.
    order: Vec<usize>,
    entries: Mutex<Vec<Entry>>,
    /// Example evaluations run (memoized repeats not counted): the "metric calls" budgets compare on.
    evaluations: Mutex<u64>,
    checkpoint: Option<Arc<super::checkpoint::Checkpoint>>,
}

impl Scorer {
    pub fn new(ctx: EvalContext, dev: &Dev, seed: u64) -> Self {
        let mut order: Vec<usize> = (0..dev.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5c0_4e5));
        Self {
            ctx,
            dev: dev.examples().to_vec(),
            order,
            entries: Mutex::new(Vec::new()),
            evaluations: Mutex::new(0),
            checkpoint: None,
        }
    }

    /// Takes results from `checkpoint` where it has them, and saves new ones to it.
    pub fn with_checkpoint(mut self, checkpoint: Option<Arc<super::checkpoint::Checkpoint>>) -> Self {
        self.checkpoint = checkpoint;
        self
    }

    pub fn dev_len(&self) -> usize {
        self.dev.len()
    }

    /// The first `size` dev indices of the scorer's seeded order.
    pub fn prefix(&self, size: usize) -> Vec<usize> {
        self.order[..size.min(self.order.len())].to_vec()
    }

    /// `size` dev indices drawn at random.
    pub fn minibatch(&self, size: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
        let mut all = self.order.clone();
        all.shuffle(rng);
        all.truncate(size.min(all.len()));
        all.sort_unstable();
        all
    }

    pub fn evaluations(&self) -> u64 {
        *self.evaluations.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a candidate under `name` (the first name a program gets sticks)
    /// and returns its index.
    fn register(&self, name: &str, program: &Program) -> usize {
        let key = program_key(program);
        let mut entries = self.entries();
        if let Some(i) = entries.iter().position(|e| e.key == key) {
            return i;
        }
        entries.push(Entry {
            name: name.to_string(),
            key,
            program: program.clone(),
            results: vec![None; self.dev.len()],
        });
        entries.len() - 1
    }

    /// Scores `program` on the dev examples at `indices` (each example once per
    /// program, whatever the calls), returning their results in that order.
    pub async fn score(&self, name: &str, program: &Program, indices: &[usize]) -> Result<Vec<ExampleResult>, LmError> {
        let entry = self.register(name, program);
        let missing: Vec<usize> = {
            let entries = self.entries();
            let mut m: Vec<usize> = indices.iter().copied().filter(|&i| entries[entry].results[i].is_none()).collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        // Results the checkpoint holds are taken from it, and counted as when first made.
        let mut missing = missing;
        if let Some(checkpoint) = &self.checkpoint
            && let Some(saved) = checkpoint.restored(&program_key(program))
        {
            let mut still = Vec::new();
            for i in missing {
                let id = &self.dev[i].id;
                match saved.iter().find(|r| r.example_id == *id) {
                    Some(result) => {
                        self.ctx.settings.lm.replay(result.stats.lm_calls, result.stats.usage)?;
                        *self.evaluations.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                        self.entries()[entry].results[i] = Some(result.clone());
                    }
                    None => still.push(i),
                }
            }
            missing = still;
        }
        if !missing.is_empty() {
            let examples: Vec<Example> = missing.iter().map(|&i| self.dev[i].clone()).collect();
            let label = format!("dev: {name}");
            let evaluation = evaluate(program, &examples, &self.ctx, &label).await?;
            *self.evaluations.lock().unwrap_or_else(|e| e.into_inner()) += missing.len() as u64;
            let mut entries = self.entries();
            for (i, result) in missing.iter().zip(evaluation.results) {
                entries[entry].results[*i] = Some(result);
            }
            if let Some(checkpoint) = &self.checkpoint {
                let done: Vec<ExampleResult> = entries[entry].scored().cloned().collect();
                let program = entries[entry].program.clone();
                drop(entries);
                checkpoint.save(&program, done);
            }
        }
        let entries = self.entries();
        Ok(indices.iter().map(|&i| entries[entry].results[i].clone().expect("scored above")).collect())
    }

    /// The mean of `program` on `indices`.
    pub async fn mean(&self, name: &str, program: &Program, indices: &[usize]) -> Result<f64, LmError> {
        let results = self.score(name, program, indices).await?;
        Ok(mean(&results))
    }

    /// Scores `program` on all of dev.
    pub async fn full(&self, name: &str, program: &Program) -> Result<FullScore, LmError> {
        let all: Vec<usize> = (0..self.dev.len()).collect();
        let results = self.score(name, program, &all).await?;
        let entry = self.register(name, program);
        let name = self.entries()[entry].name.clone();
        Ok(FullScore { name, program: program.clone(), mean: mean(&results), results })
    }

    /// Whether `program` has been scored on all of dev.
    pub fn is_fully_scored(&self, program: &Program) -> bool {
        let key = program_key(program);
        self.entries().iter().any(|e| e.key == key && e.complete())
    }

    /// The best candidate scored on all of dev; the earliest on a tie.
    pub fn best(&self) -> Option<FullScore> {
        let entries = self.entries();
        let mut best: Option<(f64, usize)> = None;
        for (i, e) in entries.iter().enumerate() {
            if !e.complete() {
                continue;
            }
            let m = e.mean().unwrap_or(0.0);
            if best.is_none_or(|(b, _)| m > b) {
                best = Some((m, i));
            }
        }
        best.map(|(mean, i)| {
            let e = &entries[i];
            FullScore { name: e.name.clone(), program: e.program.clone(), mean, results: e.scored().cloned().collect() }
        })
    }

    /// Every candidate scored on all of dev, in the order first scored.
    pub fn fully_scored(&self) -> Vec<FullScore> {
        self.entries()
            .iter()
            .filter(|e| e.complete())
            .map(|e| FullScore {
                name: e.name.clone(),
                program: e.program.clone(),
                mean: e.mean().unwrap_or(0.0),
                results: e.scored().cloned().collect(),
            })
            .collect()
    }

    /// Every candidate scored, in the order first scored.
    pub fn candidates(&self) -> Vec<CandidateScore> {
        let n = self.dev.len();
        self.entries()
            .iter()
            .filter_map(|e| {
                let scored = e.scored().count();
                e.mean().map(|m| CandidateScore {
                    name: e.name.clone(),
                    demos: e.program.demo_count(),
                    dev_score: m,
                    scored_on: (scored < n).then_some(scored),
                })
            })
            .collect()
    }

    /// The results `program` has so far, by dev index (for reflection and racing).
    pub fn results_of(&self, program: &Program) -> Vec<(usize, ExampleResult)> {
        let key = program_key(program);
        self.entries()
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.results.iter().enumerate().filter_map(|(i, r)| r.clone().map(|r| (i, r))).collect())
            .unwrap_or_default()
    }

    pub fn dev_example(&self, index: usize) -> &Example {
        &self.dev[index]
    }
}

pub fn mean(results: &[ExampleResult]) -> f64 {
    if results.is_empty() { 0.0 } else { results.iter().map(|r| r.score).sum::<f64>() / results.len() as f64 }
}
