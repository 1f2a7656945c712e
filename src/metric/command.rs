//! `command`: any program scores the prediction. It reads
//! `{"inputs": ..., "outputs": ..., "prediction": ...}` (the reference outputs
//! under `outputs`) on stdin and writes `{"score": x, "feedback": "..."}` on
//! stdout. It runs without a shell in the pipeline's root, in a process group
//! of its own that is killed when it overruns its time limit. A command that
//! fails scores its example 0 with the reason; the run goes on.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::{Metric, MetricError, Score};
use crate::child::{self, exit_text, stderr_tail};
use crate::dataset::Example;

/// The most stdout read from a command: a verdict is a line.
const MAX_STDOUT_BYTES: usize = 1024 * 1024;

pub struct CommandMetric {
    pub field: Option<String>,
    pub command: Vec<String>,
    pub dir: PathBuf,
    pub timeout: Duration,
}

impl CommandMetric {
    fn shown(&self) -> String {
        self.command.join(" ")
    }
}

#[async_trait]
impl Metric for CommandMetric {
    fn name(&self) -> String {
        match &self.field {
            Some(field) => format!("command({}; {field})", self.shown()),
            None => format!("command({})", self.shown()),
        }
    }

    fn is_binary(&self) -> bool {
        false
    }

    async fn score(&self, example: &Example, prediction: &Map<String, Value>) -> Result<Score, MetricError> {
        if let Some(field) = &self.field
            && !prediction.contains_key(field)
        {
            return Ok(Score { value: 0.0, feedback: format!("the prediction has no `{field}`") });
        }
        let mut input = json!({"inputs": example.inputs, "outputs": example.outputs, "prediction": prediction});
        if let Some(field) = &self.field {
            input["field"] = Value::String(field.clone());
        }
        let shown = self.shown();
        let body = serde_json::to_vec(&input).unwrap_or_default();
        let finished = match child::run(&self.command, &self.dir, body, self.timeout, MAX_STDOUT_BYTES).await {
            Ok(finished) => finished,
            Err(child::Failure::Start(reason) | child::Failure::Wait(reason)) => return Err(MetricError(reason)),
            Err(child::Failure::TimedOut) => {
                return Err(MetricError(format!(
                    "`{shown}` did not finish within its time limit of {}s and was killed",
                    self.timeout.as_secs_f64()
                )));
            }
        };
        let (stdout, stderr) = (finished.stdout, finished.stderr);
        if !finished.status.success() {
            return Err(MetricError(format!("`{shown}` {}{}", exit_text(&finished.status), stderr_tail(&stderr))));
        }
        let verdict =
            parse_verdict(&stdout).map_err(|e| MetricError(format!("`{shown}` {e}{}", stderr_tail(&stderr))))?;
        Ok(verdict)
    }
}

/// `{"score": x, "feedback": "..."}`: the whole of stdout, or its last
/// non-empty line (a command may log before its verdict). Never quotes
/// stdout, which may hold the example's content.
fn parse_verdict(stdout: &[u8]) -> Result<Score, String> {
    let text = String::from_utf8_lossy(stdout);
    if text.trim().is_empty() {
        return Err("printed nothing on stdout; it must print {\"score\": x, \"feedback\": \"...\"}".into());
    }
    let parsed: Result<Value, _> = serde_json::from_str(text.trim()).or_else(|first| {
        text.lines().rev().find(|l| !l.trim().is_empty()).map_or(Err(first), |l| serde_json::from_str(l.trim()))
    });
    let verdict = match parsed {
        Ok(Value::Object(verdict)) => verdict,
        Ok(_) => {
            return Err(
                "printed JSON that is not an object; it must print {\"score\": x, \"feedback\": \"...\"}".into()
            );
        }
        Err(e) => {
            return Err(format!(
                "printed {} bytes on stdout that are not a JSON verdict ({e}); it must print {{\"score\": x, \"feedback\": \"...\"}}",
                stdout.len()
            ));
        }
    };
    let score = match verdict.get("score") {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        Some(_) => return Err("printed a `score` that is not a number".into()),
        None => return Err("printed a verdict without `score`".into()),
    };
    if !(0.0..=1.0).contains(&score) {
        return Err(format!("printed score {score}, outside 0..=1"));
    }
    let feedback = match verdict.get("feedback") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    Ok(Score { value: score, feedback })
}
