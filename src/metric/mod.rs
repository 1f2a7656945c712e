//! Metrics: `(example, prediction) -> Score` in 0..=1, with feedback text.

pub use crate::program::signature::{normalize_value, value_text};
use serde_json::{Map, Value};

mod command;
mod json_match;
mod judge;
mod weighted;

pub use command::CommandMetric;
pub use json_match::{JsonMatch, assign, normalize_date};
pub use judge::Judge;
pub use weighted::{Weighted, WeightedPart};

use crate::config::{LmConfig, MetricConfig};
use crate::dataset::Example;
use crate::lm::Lm;

use std::sync::Arc;

use async_trait::async_trait;

/// A score in 0..=1 and the feedback that explains it: what reflective
/// optimizers read, and what a reviewer sees next to a failed example.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub value: f64,
    pub feedback: String,
}

/// A metric that could not score a prediction (a judge that failed, a command
/// that crashed). Evaluation scores the example 0 with this reason, and counts it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct MetricError(pub String);

/// `(example, prediction) -> Score`. Async and fallible, so a metric may ask a
/// judge model or run a command.
#[async_trait]
pub trait Metric: Send + Sync {
    /// The metric as reports name it, e.g. `exact_match(queue)`.
    fn name(&self) -> String;

    /// Whether every score is 0 or 1 (pass/fail), which the paired statistics use.
    fn is_binary(&self) -> bool;

    async fn score(&self, example: &Example, prediction: &Map<String, Value>) -> Result<Score, MetricError>;
}

/// Builds the LM a judge asks, from its `[metric.lm]` table.
pub type JudgeLms<'a> = &'a dyn Fn(&LmConfig) -> anyhow::Result<Lm>;

/// The metric a pipeline declares. A judge built here has no LM and fails
/// every example; [`build_with`] gives it one.
pub fn build(config: &MetricConfig) -> Arc<dyn Metric> {
    make(config, None).expect("only building a judge's LM can fail")
}

/// The metric a pipeline declares, its judges asking the LMs `judge_lm` builds.
pub fn build_with(config: &MetricConfig, judge_lm: JudgeLms<'_>) -> anyhow::Result<Arc<dyn Metric>> {
    make(config, Some(judge_lm))
}

fn make(config: &MetricConfig, judge_lm: Option<JudgeLms<'_>>) -> anyhow::Result<Arc<dyn Metric>> {
    Ok(match config {
        MetricConfig::ExactMatch { fields } => Arc::new(ExactMatch { fields: fields.clone() }),
        MetricConfig::TokenF1 { field } => Arc::new(TokenF1 { field: field.clone() }),
        MetricConfig::JsonMatch { field, schema, weights } => {
            Arc::new(JsonMatch::new(field.clone(), schema.clone(), weights.clone()))
        }
        MetricConfig::Judge { field, rubric, scale, lm } => Arc::new(Judge {
            field: field.clone(),
            rubric: rubric.clone(),
            scale: *scale,
            lm: match judge_lm {
                Some(build) => Ok(build(lm)?),
                None => Err("the judge was built without its LM".to_string()),
            },
            max_tokens: lm.max_tokens,
        }),
        MetricConfig::Command { field, command, dir, timeout_secs } => Arc::new(CommandMetric {
            field: field.clone(),
            command: command.clone(),
            dir: dir.clone(),
            timeout: std::time::Duration::from_secs_f64(*timeout_secs),
        }),
        MetricConfig::Weighted { parts } => {
            let mut built = Vec::new();
            for part in parts {
                let metric = make(&part.metric, judge_lm)?;
                let name = part.name.clone().unwrap_or_else(|| metric.name());
                built.push(WeightedPart { name, weight: part.weight, metric });
            }
            Arc::new(Weighted { parts: built })
        }
    })
}

/// The name of the metric a pipeline declares, for reports.
pub fn name(config: &MetricConfig) -> String {
    build(config).name()
}

/// Mean over `fields` of normalized exact match.
pub struct ExactMatch {
    pub fields: Vec<String>,
}

#[async_trait]
impl Metric for ExactMatch {
    fn name(&self) -> String {
        format!("exact_match({})", self.fields.join(", "))
    }

    fn is_binary(&self) -> bool {
        self.fields.len() <= 1
    }

    async fn score(&self, example: &Example, prediction: &Map<String, Value>) -> Result<Score, MetricError> {
        let mut hits = 0usize;
        let mut misses = Vec::new();
        for field in &self.fields {
            let want = example.outputs.get(field).map(normalize_value).unwrap_or_default();
            let got = prediction.get(field).map(normalize_value).unwrap_or_default();
            if !want.is_empty() && want == got {
                hits += 1;
            } else {
                misses.push(format!("`{field}`: expected {:?}, got {:?}", want, got));
            }
        }
        let value = hits as f64 / self.fields.len().max(1) as f64;
        let feedback = if misses.is_empty() { "correct".into() } else { misses.join("; ") };
        Ok(Score { value, feedback })
    }
}

/// SQuAD-style token F1 on one free-text field.
pub struct TokenF1 {
    pub field: String,
}

#[async_trait]
impl Metric for TokenF1 {
    fn name(&self) -> String {
        format!("token_f1({})", self.field)
    }

    fn is_binary(&self) -> bool {
        false
    }

    async fn score(&self, example: &Example, prediction: &Map<String, Value>) -> Result<Score, MetricError> {
        let want = example.outputs.get(&self.field).map(value_text).unwrap_or_default();
        let got = prediction.get(&self.field).map(value_text).unwrap_or_default();
        let value = token_f1(&want, &got);
        let feedback = if value >= 1.0 {
            "correct".to_string()
        } else {
            format!("token F1 {value:.2} on `{}`: expected {:?}, got {:?}", self.field, want, got)
        };
        Ok(Score { value, feedback })
    }
}

fn f1_tokens(text: &str) -> Vec<String> {
    let lowered: String =
        text.to_lowercase().chars().map(|c| if c.is_alphanumeric() || c.is_whitespace() { c } else { ' ' }).collect();
    lowered.split_whitespace().filter(|w| !matches!(*w, "a" | "an" | "the")).map(str::to_string).collect()
}

/// SQuAD-style token F1: overlap of the bags of normalized tokens.
pub fn token_f1(reference: &str, prediction: &str) -> f64 {
    let want = f1_tokens(reference);
    let got = f1_tokens(prediction);
    if want.is_empty() || got.is_empty() {
        return f64::from(u8::from(want == got));
    }
    let mut counts = std::collections::HashMap::<&str, i64>::new();
    for w in &want {
        *counts.entry(w).or_default() += 1;
    }
    let mut common = 0i64;
    for g in &got {
        if let Some(c) = counts.get_mut(g.as_str()) {
            if *c > 0 {
                *c -= 1;
                common += 1;
            }
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / got.len() as f64;
    let recall = common as f64 / want.len() as f64;
    2.0 * precision * recall / (precision + recall)
}
