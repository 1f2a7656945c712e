//! A predictor: a signature plus what an optimizer learns for it — its
//! instructions and demos — and the call that runs it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::lm::{ChatMessage, Lm, LmError, LmRequest, TokenUsage};
use crate::program::adapter::AdapterFormat;
use crate::program::adapter::{self, Prompt};
use crate::program::module::Module;
use crate::program::signature::{Field, FieldType, Signature};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DemoSource {
    /// The program's own correct output on a training example.
    Bootstrapped,
    /// A training example's reference outputs as they are.
    Labeled,
}

/// One worked example shown to the model before the real input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Demo {
    /// The training example it came from.
    pub example_id: String,
    pub source: DemoSource,
    pub inputs: Map<String, Value>,
    pub outputs: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Predictor {
    /// A stable path (`route`, `handlers.escalating`): the key in the artifact.
    pub name: String,
    pub module: Module,
    pub signature: Signature,
    pub instructions: String,
    pub demos: Vec<Demo>,
}

/// How predictions are made: the model, the reply format, sampling.
#[derive(Clone)]
pub struct PredictSettings {
    pub lm: Lm,
    pub format: AdapterFormat,
    pub temperature: f32,
    pub max_tokens: u32,
    /// What react stages call (`[tools.*]`, with the run's tool cache), if the program has any.
    pub tools: Option<std::sync::Arc<crate::program::tool::Tools>>,
}

/// The result of one predictor call.
#[derive(Debug, Clone, Default)]
pub struct PredictorCall {
    pub outputs: Option<Map<String, Value>>,
    /// Why there are no outputs: the LM failed, or no reply could be parsed.
    pub error: Option<String>,
    /// The reply could not be parsed (as opposed to the LM failing).
    pub format_error: bool,
    /// The reply was cut by `max_tokens` before it was complete.
    pub cut: bool,
    /// The first reply did not parse and the other format was tried.
    pub format_retried: bool,
    pub usage: TokenUsage,
    pub lm_calls: u32,
    pub cache_hits: u32,
    /// The messages of the last request sent (empty when none was).
    pub messages: Vec<ChatMessage>,
    /// The last reply, as the model wrote it.
    pub reply: Option<String>,
}

pub const REASONING: &str = "reasoning";

impl Predictor {
    /// The fields the reply carries: chain of thought reasons first.
    pub fn reply_fields(&self) -> Vec<Field> {
        let mut fields = Vec::new();
        if self.module == Module::ChainOfThought {
            fields.push(Field::new(REASONING, FieldType::String, "think step by step to reach the answer"));
        }
        fields.extend(self.signature.outputs.iter().cloned());
        fields
    }

    /// Runs the predictor once. A reply that does not parse is retried once in
    /// the other format; if that fails too, the call fails with both reasons.
    /// A reply `max_tokens` cut before it was complete fails the call at once
    /// (`cut`), whatever of it parses.
    /// An LM that fails (after its retries) is an error for the whole run —
    /// scoring it as wrong answers would hide an outage — except a prompt too
    /// long for the model, which fails this prediction alone.
    pub async fn call(
        &self,
        settings: &PredictSettings,
        inputs: &Map<String, Value>,
        rollout: Option<u32>,
    ) -> Result<PredictorCall, LmError> {
        let reply_fields = self.reply_fields();
        let mut result = PredictorCall::default();
        let mut reasons = Vec::new();
        let other = match settings.format {
            AdapterFormat::Chat => AdapterFormat::Json,
            AdapterFormat::Json => AdapterFormat::Chat,
        };
        for format in [settings.format, other] {
            let prompt = Prompt {
                instructions: &self.instructions,
                inputs: &self.signature.inputs,
                outputs: &reply_fields,
                demos: self.demos.iter().map(|d| (&d.inputs, &d.outputs)).collect(),
                values: inputs,
            };
            let rendered = adapter::render(format, &prompt);
            result.messages = rendered.messages.clone();
            let request = LmRequest {
                messages: rendered.messages,
                temperature: settings.temperature,
                max_tokens: settings.max_tokens,
                stop: Vec::new(),
                json_schema: rendered.json_schema,
                template: rendered.template,
                rollout,
            };
            let completion = match settings.lm.complete(&request).await {
                Ok(c) => c,
                Err(e @ LmError::ContextOverflow { .. }) => {
                    result.error = Some(e.to_string());
                    return Ok(result);
                }
                Err(e) => return Err(e),
            };
            result.lm_calls += 1;
            result.cache_hits += u32::from(completion.cache_hit);
            result.usage.prompt_tokens += completion.response.usage.prompt_tokens;
            result.usage.completion_tokens += completion.response.usage.completion_tokens;
            // Stopped by the token budget before the reply was whole: not an
            // answer, and not a format problem another format would fix.
            let stopped = completion.response.finish_reason.as_deref() == Some("length");
            if stopped && !adapter::reply_complete(format, &reply_fields, &completion.response.text) {
                result.cut = true;
                result.error =
                    Some(adapter::cut_reason(format, &reply_fields, &completion.response.text, settings.max_tokens));
                result.reply = Some(completion.response.text);
                return Ok(result);
            }
            let parsed = adapter::parse(format, &reply_fields, &completion.response.text);
            result.reply = Some(completion.response.text);
            match parsed {
                Ok(outputs) => {
                    result.outputs = Some(outputs);
                    return Ok(result);
                }
                Err(reason) => {
                    reasons.push(format!("{} format: {reason}", format_name(format)));
                    result.format_retried = true;
                }
            }
        }
        result.format_error = true;
        result.error = Some(format!("unparseable reply ({})", reasons.join("; then ")));
        Ok(result)
    }
}

fn format_name(format: AdapterFormat) -> &'static str {
    match format {
        AdapterFormat::Chat => "chat",
        AdapterFormat::Json => "json",
    }
}
