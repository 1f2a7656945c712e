//! Metrics: `(example, prediction) -> Score` in 0..=1, with feedback text.

use serde_json::{Map, Value};

use crate::config::MetricConfig;
use crate::dataset::Example;

#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub value: f64,
    pub feedback: String,
}

pub fn score(metric: &MetricConfig, example: &Example, prediction: &Map<String, Value>) -> Score {
    match metric {
        MetricConfig::ExactMatch { fields } => {
            let mut hits = 0usize;
            let mut misses = Vec::new();
            for field in fields {
                let want = example.outputs.get(field).map(normalize_value).unwrap_or_default();
                let got = prediction.get(field).map(normalize_value).unwrap_or_default();
                if !want.is_empty() && want == got {
                    hits += 1;
                } else {
                    misses.push(format!("`{field}`: expected {:?}, got {:?}", want, got));
                }
            }
            let value = hits as f64 / fields.len().max(1) as f64;
            let feedback = if misses.is_empty() { "correct".into() } else { misses.join("; ") };
            Score { value, feedback }
        }
        MetricConfig::TokenF1 { field } => {
            let want = example.outputs.get(field).map(value_text).unwrap_or_default();
            let got = prediction.get(field).map(value_text).unwrap_or_default();
            let value = token_f1(&want, &got);
            Score { value, feedback: format!("token F1 {value:.2} on `{field}`") }
        }
    }
}

/// The name of the metric, for reports.
pub fn name(metric: &MetricConfig) -> String {
    match metric {
        MetricConfig::ExactMatch { fields } => format!("exact_match({})", fields.join(", ")),
        MetricConfig::TokenF1 { field } => format!("token_f1({field})"),
    }
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Lowercase, trimmed, inner whitespace collapsed, wrapping punctuation gone.
pub fn normalize_value(value: &Value) -> String {
    let text = value_text(value).to_lowercase();
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.trim_matches(|c: char| c.is_ascii_punctuation() && c != '_' && c != '-').trim().to_string()
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
