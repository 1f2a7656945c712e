//! The LM layer: one trait every model speaks, and the handle the rest of the
//! program calls through (response cache, concurrency limit, usage accounting).
//!
//! Only this module (and, later, `publish/`) touches the network.

pub mod budget;
pub mod cache;
pub mod local;
pub mod openai;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Who said a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

/// One piece of the reply shape an engine may enforce while decoding.
///
/// The adapter describes the reply it will parse as a sequence of segments; an
/// engine that can constrain decoding (the embedded model) produces only text of
/// that shape, an engine that cannot (a remote endpoint) ignores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Segment {
    /// Text that must appear verbatim.
    Literal { text: String },
    /// Exactly one of these strings.
    Choice { options: Vec<String> },
    /// A decimal number: `-?[0-9]+` and, unless `integer`, an optional `.[0-9]+`.
    Number { integer: bool },
    /// Free text, ended by the model (end of turn), by `max_tokens`, or as soon
    /// as the text produced contains `until` (which is cut off: the next segment
    /// usually starts with it).
    Text { until: String },
    /// One JSON value (no surrounding whitespace) that the JSON Schema accepts.
    /// `{}` accepts any JSON value.
    Json { schema: serde_json::Value },
}

/// The whole reply shape: segments in order. After the last one, decoding stops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct OutputTemplate {
    pub segments: Vec<Segment>,
}

/// One chat-completion request, provider-neutral. Serialized (canonically) to
/// key the response cache, so everything that changes the reply belongs here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmRequest {
    pub messages: Vec<ChatMessage>,
    pub temperature: f32,
    pub max_tokens: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// A JSON Schema the reply must satisfy (sent as `response_format` where the
    /// endpoint supports it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<serde_json::Value>,
    /// The reply shape, for engines that constrain decoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<OutputTemplate>,
    /// Distinguishes otherwise identical requests that must not share a cached
    /// reply (e.g. bootstrap rounds sampling at temperature > 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<u32>,
}

impl LmRequest {
    pub fn new(messages: Vec<ChatMessage>) -> Self {
        Self {
            messages,
            temperature: 0.0,
            max_tokens: 256,
            stop: Vec::new(),
            json_schema: None,
            template: None,
            rollout: None,
        }
    }
}

/// Tokens one call consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmResponse {
    pub text: String,
    pub usage: TokenUsage,
    /// Why generation ended: "stop", "length", ... as the provider says.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// What went wrong in an LM call. Callers branch on `is_retryable`.
#[derive(Debug, thiserror::Error)]
pub enum LmError {
    #[error("rate limited by {endpoint} (HTTP 429){}", retry_after_note(*.retry_after_secs))]
    RateLimited { endpoint: String, retry_after_secs: Option<f64> },
    #[error("{endpoint} answered HTTP {status}: {body}")]
    Http { endpoint: String, status: u16, body: String, retry_after_secs: Option<f64> },
    #[error("{endpoint} did not answer within {secs:.1}s")]
    Timeout { endpoint: String, secs: f64 },
    #[error("cannot reach {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    #[error("{endpoint} sent a reply that is not a chat completion: {message}")]
    BadResponse { endpoint: String, message: String },
    #[error(
        "prompt of {prompt_tokens} tokens plus {max_tokens} to generate exceeds the model's context window of {context} tokens"
    )]
    ContextOverflow { prompt_tokens: usize, max_tokens: usize, context: usize },
    #[error("{0}")]
    Engine(String),
    #[error("the LM budget of {scope} is spent ({limit})")]
    BudgetExhausted { scope: String, limit: String },
}

fn retry_after_note(secs: Option<f64>) -> String {
    secs.map(|s| format!(", retry after {s:.0}s")).unwrap_or_default()
}

impl LmError {
    /// 429, 5xx, time-outs and dropped connections are worth another try.
    pub fn is_retryable(&self) -> bool {
        match self {
            LmError::RateLimited { .. } | LmError::Timeout { .. } | LmError::Connect { .. } => true,
            LmError::Http { status, .. } => *status >= 500,
            // A body that is not a chat completion is often a proxy's error page mid-restart.
            LmError::BadResponse { .. } => true,
            LmError::ContextOverflow { .. } | LmError::Engine(_) | LmError::BudgetExhausted { .. } => false,
        }
    }

    /// The server's Retry-After, when it gave one.
    pub fn retry_after_secs(&self) -> Option<f64> {
        match self {
            LmError::RateLimited { retry_after_secs, .. } | LmError::Http { retry_after_secs, .. } => *retry_after_secs,
            _ => None,
        }
    }
}

/// A model that completes chats. Implementations: [`openai::OpenAiClient`]
/// (any OpenAI-compatible endpoint) and [`local::LocalEngine`] (the embedded model).
#[async_trait]
pub trait LanguageModel: Send + Sync {
    /// Everything that identifies this model's replies besides the request:
    /// part of the cache key, written into the artifact. Never holds secrets.
    fn describe(&self) -> LmDescription;

    async fn complete(&self, request: &LmRequest) -> Result<LmResponse, LmError>;
}

/// The model as the artifact and the cache key see it. No secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmDescription {
    /// "embedded" or "openai".
    pub provider: String,
    pub model: String,
    /// The endpoint for remote models; the weights file for the embedded one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Whether decoding is constrained to the reply template.
    pub constrained_decoding: bool,
    /// How a JSON Schema is sent to a remote endpoint (`json_schema`,
    /// `json_object`, `none`): it changes the replies, so it keys the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageSummary {
    /// Completions asked for (cache hits included).
    pub calls: u64,
    /// Completions the model actually computed.
    pub provider_calls: u64,
    pub cache_hits: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl UsageSummary {
    pub fn since(&self, earlier: &UsageSummary) -> UsageSummary {
        UsageSummary {
            calls: self.calls - earlier.calls,
            provider_calls: self.provider_calls - earlier.provider_calls,
            cache_hits: self.cache_hits - earlier.cache_hits,
            prompt_tokens: self.prompt_tokens - earlier.prompt_tokens,
            completion_tokens: self.completion_tokens - earlier.completion_tokens,
        }
    }
}

impl From<budget::RoleUsage> for UsageSummary {
    fn from(u: budget::RoleUsage) -> Self {
        UsageSummary {
            calls: u.calls,
            provider_calls: u.provider_calls,
            cache_hits: u.cache_hits,
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        }
    }
}

/// What the program calls: the model behind a response cache, a concurrency
/// limit and the run's usage meter, in one role. Cheap to clone.
#[derive(Clone)]
pub struct Lm {
    model: Arc<dyn LanguageModel>,
    description: LmDescription,
    cache: Option<Arc<cache::ResponseCache>>,
    permits: Arc<tokio::sync::Semaphore>,
    meter: Arc<budget::Meter>,
    role: budget::LmRole,
    prices: budget::Prices,
}

/// The outcome of one call through [`Lm`].
#[derive(Debug, Clone)]
pub struct Completion {
    pub response: LmResponse,
    pub cache_hit: bool,
}

impl Lm {
    pub fn new(model: Arc<dyn LanguageModel>, cache: Option<Arc<cache::ResponseCache>>, concurrency: usize) -> Self {
        let description = model.describe();
        Self {
            model,
            description,
            cache,
            permits: Arc::new(tokio::sync::Semaphore::new(concurrency.max(1))),
            meter: Arc::new(budget::Meter::new()),
            role: budget::LmRole::Task,
            prices: budget::Prices::default(),
        }
    }

    /// This handle, recording into `meter` as `role` at `prices`.
    pub fn metered(mut self, meter: Arc<budget::Meter>, role: budget::LmRole, prices: budget::Prices) -> Self {
        self.meter = meter;
        self.role = role;
        self.prices = prices;
        self
    }

    /// The same model, cache and concurrency limit, recorded as another role.
    pub fn in_role(&self, role: budget::LmRole) -> Self {
        let mut lm = self.clone();
        lm.role = role;
        lm
    }

    pub fn role(&self) -> budget::LmRole {
        self.role
    }

    pub fn meter(&self) -> &Arc<budget::Meter> {
        &self.meter
    }

    pub fn description(&self) -> &LmDescription {
        &self.description
    }

    /// What every role of the run has used so far, in all.
    pub fn usage(&self) -> UsageSummary {
        self.meter.usage().total().into()
    }

    /// Counts `calls` that a checkpoint restored as if they were made again
    /// from the cache (`usage` on the first), so a resumed search meets its
    /// budget exactly where an uninterrupted one did.
    pub fn replay(&self, calls: u32, usage: TokenUsage) -> Result<(), LmError> {
        for i in 0..calls {
            self.meter.admit(self.role)?;
            let tokens = if i == 0 { usage } else { TokenUsage::default() };
            self.meter.record(self.role, &self.prices, Some((tokens, true)));
        }
        Ok(())
    }

    pub async fn complete(&self, request: &LmRequest) -> Result<Completion, LmError> {
        self.meter.admit(self.role)?;
        let result = self.complete_unmetered(request).await;
        let recorded = result.as_ref().ok().map(|c| (c.response.usage, c.cache_hit));
        self.meter.record(self.role, &self.prices, recorded);
        result
    }

    async fn complete_unmetered(&self, request: &LmRequest) -> Result<Completion, LmError> {
        let key = self.cache.as_ref().map(|_| cache::request_key(&self.description, request));
        if let (Some(cache), Some(key)) = (&self.cache, &key)
            && let Some(response) = cache.get(key)
        {
            return Ok(Completion { response, cache_hit: true });
        }
        let response = {
            let _permit = self.permits.acquire().await.expect("semaphore never closed");
            self.model.complete(request).await?
        };
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            cache.put(key, &response);
        }
        Ok(Completion { response, cache_hit: false })
    }
}
