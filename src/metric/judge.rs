//! `judge`: an LM grades the prediction against a rubric. Its reply is
//! constrained to `{"score": ..., "reason": "..."}` (the JSON response format
//! for a remote model, the decoding template for the embedded one), asked
//! again once when it does not parse; its calls are metered in the `judge` role.

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::{Metric, MetricError, Score};
use crate::config::JudgeScale;
use crate::dataset::Example;
use crate::lm::{ChatMessage, Lm, LmRequest, OutputTemplate, Role, Segment};

/// Reply text quoted in an error, at most.
const QUOTED_CHARS: usize = 120;

pub struct Judge {
    /// The output field judged; none: the whole prediction.
    pub field: Option<String>,
    pub rubric: String,
    pub scale: JudgeScale,
    /// The judge's LM, or why there is none.
    pub lm: Result<Lm, String>,
    pub max_tokens: u32,
}

impl Judge {
    /// The JSON Schema of a verdict on this judge's scale. Only keywords the
    /// embedded model's grammar enforces (no `minimum`/`maximum`): a 0-1 score's
    /// range is checked when the verdict is read, and a verdict out of it is
    /// asked for again.
    pub fn verdict_schema(&self) -> Value {
        let score = match self.scale {
            JudgeScale::Unit => json!({"type": "number"}),
            JudgeScale::FivePoint => json!({"enum": [1, 2, 3, 4, 5]}),
        };
        json!({
            "type": "object",
            "properties": {"score": score, "reason": {"type": "string"}},
            "required": ["score", "reason"],
            "additionalProperties": false,
        })
    }

    /// The request that asks for a verdict on `prediction`.
    pub fn request(&self, example: &Example, prediction: &Value) -> LmRequest {
        let scale = match self.scale {
            JudgeScale::Unit => "a number from 0 (fails the rubric) to 1 (meets it fully)",
            JudgeScale::FivePoint => "an integer from 1 (fails the rubric) to 5 (meets it fully)",
        };
        let system = format!(
            "You grade one output of a program against a rubric. Reply with a JSON object only: \
             {{\"score\": {scale}, \"reason\": \"one or two sentences saying what meets or misses the rubric\"}}.\n\n\
             Rubric:\n{}",
            self.rubric.trim()
        );
        let reference = match &self.field {
            Some(field) => example.outputs.get(field).cloned().unwrap_or(Value::Null),
            None => Value::Object(example.outputs.clone()),
        };
        let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
        let user = format!(
            "Inputs:\n{}\n\nReference output:\n{}\n\nOutput to grade:\n{}",
            pretty(&Value::Object(example.inputs.clone())),
            pretty(&reference),
            pretty(prediction)
        );
        let schema = self.verdict_schema();
        let mut request =
            LmRequest::new(vec![ChatMessage::new(Role::System, system), ChatMessage::new(Role::User, user)]);
        request.max_tokens = self.max_tokens;
        request.json_schema = Some(schema.clone());
        request.template = Some(OutputTemplate { segments: vec![Segment::Json { schema }] });
        request
    }

    /// A reply read as a verdict: the score in 0..=1 and the judge's reason.
    pub fn parse_verdict(&self, reply: &str) -> Result<(f64, String), String> {
        let text = reply.trim();
        let body = match (text.find('{'), text.rfind('}')) {
            (Some(start), Some(end)) if start < end => &text[start..=end],
            _ => return Err("no JSON object in it".into()),
        };
        let verdict: Map<String, Value> = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
        let score = verdict.get("score").and_then(Value::as_f64).ok_or("no numeric `score`")?;
        let reason = verdict.get("reason").and_then(Value::as_str).unwrap_or("").trim().to_string();
        let value = match self.scale {
            JudgeScale::Unit if (0.0..=1.0).contains(&score) => score,
            JudgeScale::Unit => return Err(format!("score {score} is outside 0..=1")),
            JudgeScale::FivePoint if score.fract() == 0.0 && (1.0..=5.0).contains(&score) => (score - 1.0) / 4.0,
            JudgeScale::FivePoint => return Err(format!("score {score} is not an integer from 1 to 5")),
        };
        Ok((value, reason))
    }
}

#[async_trait]
impl Metric for Judge {
    fn name(&self) -> String {
        match &self.field {
            Some(field) => format!("judge({field})"),
            None => "judge".into(),
        }
    }

    fn is_binary(&self) -> bool {
        false
    }

    async fn score(&self, example: &Example, prediction: &Map<String, Value>) -> Result<Score, MetricError> {
        let lm = self.lm.as_ref().map_err(|e| MetricError(e.clone()))?;
        let judged = match &self.field {
            Some(field) => match prediction.get(field) {
                Some(value) => value.clone(),
                None => return Ok(Score { value: 0.0, feedback: format!("the prediction has no `{field}`") }),
            },
            None => Value::Object(prediction.clone()),
        };
        let mut request = self.request(example, &judged);
        let mut why = String::new();
        for attempt in 0..2 {
            if attempt > 0 {
                // Another request, so a cached unparseable reply is not served again.
                request.rollout = Some(attempt);
            }
            let completion =
                lm.complete(&request).await.map_err(|e| MetricError(format!("the judge's LM failed: {e}")))?;
            let reply = completion.response.text;
            match self.parse_verdict(&reply) {
                Ok((value, reason)) => {
                    let reason = if reason.is_empty() { "no reason given".to_string() } else { reason };
                    return Ok(Score { value, feedback: format!("judge: {reason}") });
                }
                Err(e) => {
                    let quoted: String = reply.chars().take(QUOTED_CHARS).collect();
                    let more = if reply.chars().count() > QUOTED_CHARS { "…" } else { "" };
                    why = format!("{e} (reply: {quoted:?}{more})");
                }
            }
        }
        Err(MetricError(format!("the judge's verdict did not parse, asked twice: {why}")))
    }
}
