//! Shared test fixtures: a scripted LM and small pipelines.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use promptloop::lm::{LanguageModel, LmDescription, LmError, LmRequest, LmResponse, TokenUsage};

type Script = dyn Fn(&LmRequest) -> String + Send + Sync;

/// An LM whose reply is computed from the request; records every request.
pub struct ScriptedLm {
    script: Box<Script>,
    pub requests: Mutex<Vec<LmRequest>>,
}

impl ScriptedLm {
    pub fn new(script: impl Fn(&LmRequest) -> String + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self { script: Box::new(script), requests: Mutex::new(Vec::new()) })
    }

    pub fn calls(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

#[async_trait]
impl LanguageModel for ScriptedLm {
    fn describe(&self) -> LmDescription {
        LmDescription {
            provider: "scripted".into(),
            model: "test".into(),
            endpoint: None,
            constrained_decoding: false,
            response_format: None,
        }
    }

    async fn complete(&self, request: &LmRequest) -> Result<LmResponse, LmError> {
        self.requests.lock().unwrap().push(request.clone());
        let text = (self.script)(request);
        Ok(LmResponse {
            text,
            usage: TokenUsage { prompt_tokens: 10, completion_tokens: 3 },
            finish_reason: Some("stop".into()),
        })
    }
}

/// The value under `[[ ## field ## ]]` in the last user message.
pub fn last_input(request: &LmRequest, field: &str) -> String {
    let last = request.messages.iter().rev().find(|m| m.role == promptloop::lm::Role::User).unwrap();
    let marker = format!("[[ ## {field} ## ]]\n");
    let start = last.content.find(&marker).unwrap() + marker.len();
    let rest = &last.content[start..];
    let end = rest.find("\n\n").unwrap_or(rest.len());
    rest[..end].to_string()
}

/// Whether the reply should be JSON (the adapter asks for a JSON object).
pub fn wants_json(request: &LmRequest) -> bool {
    request.json_schema.is_some()
}

pub fn reply(request: &LmRequest, field: &str, value: &str) -> String {
    if wants_json(request) {
        format!("{{\"{field}\": \"{value}\"}}")
    } else {
        format!("[[ ## {field} ## ]]\n{value}\n\n[[ ## completed ## ]]")
    }
}

/// A three-queue triage pipeline over `dataset` (relative to the file's directory).
pub fn triage_toml(dataset: &str, lm_table: &str, optimizer: &str) -> String {
    format!(
        r#"name = "mini-triage"
seed = 3

[lm]
{lm_table}

[dataset]
path = "{dataset}"

[signatures.triage]
instructions = "Route the customer's message to the queue that handles it."

[signatures.triage.inputs]
message = {{ type = "string", description = "the customer's message" }}

[signatures.triage.outputs]
queue = {{ type = "enum", values = ["cards", "transfers", "top_ups"], description = "the queue" }}

[[program.predictors]]
name = "route"
signature = "triage"

[metric]
kind = "exact_match"
fields = ["queue"]

[optimizer]
{optimizer}
"#
    )
}

/// An optimizer's context on one LM handle in every role (task, teacher,
/// proposer), chat format at temperature 0, scoring with `metric`.
pub fn optimize_context(
    lm: promptloop::lm::Lm,
    metric: Arc<dyn promptloop::metric::Metric>,
    max_tokens: u32,
    concurrency: usize,
) -> promptloop::optimize::OptimizeContext {
    use promptloop::lm::budget::LmRole;
    let settings = |lm: promptloop::lm::Lm| promptloop::program::predictor::PredictSettings {
        lm,
        format: promptloop::config::AdapterFormat::Chat,
        temperature: 0.0,
        max_tokens,
        tools: None,
    };
    promptloop::optimize::OptimizeContext {
        student: promptloop::eval::EvalContext {
            settings: settings(lm.in_role(LmRole::Task)),
            metric,
            concurrency,
            progress: false,
        },
        teacher: settings(lm.in_role(LmRole::Teacher)),
        proposer: settings(lm.in_role(LmRole::Proposer)),
        seed: 5,
        checkpoint: None,
        min_slice_examples: 10,
        composition_reserve: Vec::new(),
    }
}
