//! `weighted`: the weighted mean of other metrics, with each part's feedback.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::{Metric, MetricError, Score};
use crate::dataset::Example;

pub struct WeightedPart {
    pub name: String,
    pub weight: f64,
    pub metric: Arc<dyn Metric>,
}

pub struct Weighted {
    pub parts: Vec<WeightedPart>,
}

#[async_trait]
impl Metric for Weighted {
    fn name(&self) -> String {
        let parts: Vec<String> = self.parts.iter().map(|p| format!("{} × {}", p.weight, p.name)).collect();
        format!("weighted({})", parts.join(", "))
    }

    fn is_binary(&self) -> bool {
        self.parts.len() == 1 && self.parts[0].metric.is_binary()
    }

    async fn score(&self, example: &Example, prediction: &Map<String, Value>) -> Result<Score, MetricError> {
        let scores = futures::future::join_all(self.parts.iter().map(|p| p.metric.score(example, prediction))).await;
        let total_weight: f64 = self.parts.iter().map(|p| p.weight).sum();
        let mut value = 0.0;
        let mut lines = Vec::new();
        for (part, score) in self.parts.iter().zip(scores) {
            let score = score.map_err(|e| MetricError(format!("{}: {e}", part.name)))?;
            value += part.weight * score.value;
            lines.push(format!("- {} (weight {}): {:.2} — {}", part.name, part.weight, score.value, score.feedback));
        }
        let value = if total_weight > 0.0 { (value / total_weight).clamp(0.0, 1.0) } else { 0.0 };
        Ok(Score { value, feedback: lines.join("\n") })
    }
}
