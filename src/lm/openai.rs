//! A client for any OpenAI-compatible `/v1/chat/completions` endpoint.
//!
//! One [`OpenAiClient::complete`] call is one logical completion: transient
//! failures (429, 5xx, time-outs, dropped connections, garbled bodies) are
//! retried with capped exponential backoff and full jitter, honouring the
//! server's Retry-After. Every attempt is bounded by `timeout_secs`.
//!
//! The API key is a secret: it is sent only in the `Authorization` header and
//! never appears in `Debug` output, in [`LanguageModel::describe`], or in error
//! messages (a server echoing it back gets it redacted).
//!
//! The waits between attempts and each attempt's time limit go through a
//! [`Sleeper`](crate::clock::Sleeper): tokio's timer, unless a test hands in one that records them.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rand::Rng;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{LanguageModel, LmDescription, LmError, LmRequest, LmResponse, TokenUsage};
use crate::clock::Sleeper;

/// The longest Retry-After we are willing to wait, whatever the server asks.
const MAX_RETRY_AFTER_SECS: f64 = 60.0;
/// How much of an error body ends up in an error message.
const MAX_ERROR_BODY_CHARS: usize = 500;
/// What replaces the API key wherever it would otherwise be shown.
const REDACTED: &str = "[redacted]";

/// How a request's JSON Schema is passed to the endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchemaStyle {
    /// OpenAI structured outputs:
    /// `{"type":"json_schema","json_schema":{"name":"reply","schema":...,"strict":true}}`.
    #[default]
    #[serde(rename = "openai")]
    OpenAi,
    /// The llama.cpp server: `{"type":"json_object","schema":...}`.
    #[serde(rename = "json_object")]
    JsonObject,
    /// No `response_format` at all.
    #[serde(rename = "none")]
    None,
}

/// Where and how to reach an OpenAI-compatible endpoint.
#[derive(Clone)]
pub struct OpenAiConfig {
    /// The API root, e.g. `http://127.0.0.1:8081/v1` or `https://api.openai.com/v1`;
    /// requests go to `{base_url}/chat/completions`.
    pub base_url: String,
    pub model: String,
    /// The secret itself (the config layer reads it from an environment variable).
    pub api_key: Option<String>,
    /// Bound on one attempt, from connecting to the last byte of the body.
    pub timeout_secs: f64,
    /// Further attempts after the first one fails with a retryable error.
    pub max_retries: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub schema_style: SchemaStyle,
}

impl OpenAiConfig {
    /// A config with the usual defaults: 120 s per attempt, 4 retries, backoff
    /// from 500 ms up to 30 s, OpenAI-style structured outputs, no key.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            timeout_secs: 120.0,
            max_retries: 4,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
            schema_style: SchemaStyle::OpenAi,
        }
    }
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &shown_url(&self.base_url))
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| REDACTED))
            .field("timeout_secs", &self.timeout_secs)
            .field("max_retries", &self.max_retries)
            .field("initial_backoff_ms", &self.initial_backoff_ms)
            .field("max_backoff_ms", &self.max_backoff_ms)
            .field("schema_style", &self.schema_style)
            .finish()
    }
}

/// A [`LanguageModel`] served by an OpenAI-compatible endpoint.
pub struct OpenAiClient {
    config: OpenAiConfig,
    http: reqwest::Client,
    /// `{base_url}/chat/completions`, as requested.
    url: String,
    /// The base URL without credentials: what error messages and `describe` show.
    endpoint: String,
    timeout: Duration,
    sleeper: Sleeper,
}

impl fmt::Debug for OpenAiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiClient").field("config", &self.config).finish_non_exhaustive()
    }
}

impl OpenAiClient {
    pub fn new(config: OpenAiConfig) -> anyhow::Result<Self> {
        // A query (`?api-version=…`, or a key some gateways take there) stays on
        // the request but is never shown: the endpoint is the URL without it.
        let trimmed = config.base_url.trim();
        let (base, query) = trimmed.split_at(trimmed.find(['?', '#']).unwrap_or(trimmed.len()));
        let base = base.trim_end_matches('/');
        let endpoint = shown_url(base);
        let url = format!("{base}/chat/completions{query}");
        let parsed = reqwest::Url::parse(&url).map_err(|e| anyhow::anyhow!("invalid LM base URL {endpoint:?}: {e}"))?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "http" | "https"),
            "invalid LM base URL {endpoint:?}: the scheme must be http or https"
        );
        anyhow::ensure!(!config.model.trim().is_empty(), "no model name given for {endpoint}");
        anyhow::ensure!(
            config.timeout_secs.is_finite() && config.timeout_secs > 0.0,
            "the LM timeout must be a positive number of seconds, got {}",
            config.timeout_secs
        );
        if let Some(key) = &config.api_key {
            anyhow::ensure!(
                HeaderValue::from_str(&format!("Bearer {key}")).is_ok(),
                "the API key for {endpoint} contains characters not allowed in an HTTP header"
            );
        }
        let timeout = Duration::from_secs_f64(config.timeout_secs);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot set up the HTTP client: {e}"))?;
        Ok(Self { config, http, url, endpoint, timeout, sleeper: Sleeper::default() })
    }

    /// The same client, waiting (between attempts, and for an attempt's time
    /// limit) with `sleeper`.
    pub fn with_sleeper(mut self, sleeper: Sleeper) -> Self {
        self.sleeper = sleeper;
        self
    }

    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    /// The JSON body of a chat-completions request.
    fn request_body(&self, request: &LmRequest) -> Value {
        let mut body = Map::new();
        body.insert("model".into(), json!(self.config.model));
        body.insert(
            "messages".into(),
            Value::Array(request.messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect()),
        );
        body.insert("temperature".into(), json!(f32_to_f64(request.temperature)));
        body.insert("max_tokens".into(), json!(request.max_tokens));
        if !request.stop.is_empty() {
            body.insert("stop".into(), json!(request.stop));
        }
        if let Some(schema) = &request.json_schema {
            match self.config.schema_style {
                SchemaStyle::OpenAi => {
                    body.insert(
                        "response_format".into(),
                        json!({
                            "type": "json_schema",
                            "json_schema": {"name": "reply", "schema": schema, "strict": true},
                        }),
                    );
                }
                SchemaStyle::JsonObject => {
                    body.insert("response_format".into(), json!({"type": "json_object", "schema": schema}));
                }
                SchemaStyle::None => {}
            }
        }
        if let Some(rollout) = request.rollout {
            body.insert("seed".into(), json!(rollout));
        }
        Value::Object(body)
    }

    /// One HTTP exchange, bounded by the timeout.
    async fn attempt(&self, body: &Value) -> Result<LmResponse, LmError> {
        tokio::select! {
            result = self.exchange(body) => result,
            () = self.sleeper.sleep(self.timeout) => Err(self.timeout_error()),
        }
    }

    async fn exchange(&self, body: &Value) -> Result<LmResponse, LmError> {
        let mut request = self
            .http
            .post(&self.url)
            .header(CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body).expect("a JSON value always serializes"));
        if let Some(key) = &self.config.api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).expect("checked in OpenAiClient::new");
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let retry_after = retry_after_secs(response.headers(), SystemTime::now());
        let bytes = response.bytes().await.map_err(|e| self.transport_error(e))?;
        if status.as_u16() == 429 {
            return Err(LmError::RateLimited { endpoint: self.endpoint.clone(), retry_after_secs: retry_after });
        }
        if !status.is_success() {
            return Err(LmError::Http {
                endpoint: self.endpoint.clone(),
                status: status.as_u16(),
                body: self.excerpt(&bytes),
                retry_after_secs: retry_after,
            });
        }
        parse_completion(&bytes).map_err(|problem| LmError::BadResponse {
            endpoint: self.endpoint.clone(),
            message: format!("{problem}; body: {}", self.excerpt(&bytes)),
        })
    }

    fn timeout_error(&self) -> LmError {
        LmError::Timeout { endpoint: self.endpoint.clone(), secs: self.config.timeout_secs }
    }

    fn transport_error(&self, error: reqwest::Error) -> LmError {
        if error.is_timeout() {
            return self.timeout_error();
        }
        // The URL may carry credentials: describe the failure without it.
        let error = error.without_url();
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        LmError::Connect { endpoint: self.endpoint.clone(), message: self.redact(&message) }
    }

    /// A body as it may appear in an error message: lossy UTF-8, truncated, key redacted.
    fn excerpt(&self, bytes: &[u8]) -> String {
        let text = String::from_utf8_lossy(bytes);
        let text = self.redact(text.trim());
        match text.char_indices().nth(MAX_ERROR_BODY_CHARS) {
            Some((cut, _)) => format!("{}… ({} bytes in all)", &text[..cut], bytes.len()),
            None => text,
        }
    }

    fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        if let Some(key) = self.config.api_key.as_deref().filter(|k| !k.is_empty()) {
            text = text.replace(key, REDACTED);
        }
        if let Some(password) = url_password(&self.config.base_url) {
            text = text.replace(&password, REDACTED);
        }
        // Values in the base URL's query may be keys.
        if let Some((_, query)) = self.config.base_url.split_once('?') {
            for value in query.split(['&', '#']).filter_map(|pair| pair.split_once('=').map(|(_, v)| v)) {
                if value.len() >= 4 {
                    text = text.replace(value, REDACTED);
                }
            }
        }
        text
    }

    /// How long to wait before attempt `attempt + 1`, having failed `attempt` times.
    fn backoff(&self, attempt: u32, retry_after: Option<f64>) -> Duration {
        let ceiling = self
            .config
            .initial_backoff_ms
            .saturating_mul(1u64.checked_shl(attempt.saturating_sub(1)).unwrap_or(u64::MAX))
            .min(self.config.max_backoff_ms);
        let jitter = Duration::from_millis(rand::rng().random_range(0..=ceiling));
        match retry_after {
            Some(secs) => {
                let secs = if secs > MAX_RETRY_AFTER_SECS {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        "the server asks to retry after {secs:.0}s; waiting {MAX_RETRY_AFTER_SECS:.0}s instead"
                    );
                    MAX_RETRY_AFTER_SECS
                } else {
                    secs.max(0.0)
                };
                Duration::from_secs_f64(secs).max(jitter)
            }
            None => jitter,
        }
    }
}

#[async_trait]
impl LanguageModel for OpenAiClient {
    fn describe(&self) -> LmDescription {
        LmDescription {
            provider: "openai".into(),
            model: self.config.model.clone(),
            endpoint: Some(self.endpoint.clone()),
            constrained_decoding: false,
            response_format: Some(
                match self.config.schema_style {
                    SchemaStyle::OpenAi => "json_schema",
                    SchemaStyle::JsonObject => "json_object",
                    SchemaStyle::None => "none",
                }
                .into(),
            ),
        }
    }

    async fn complete(&self, request: &LmRequest) -> Result<LmResponse, LmError> {
        let body = self.request_body(request);
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            let error = match self.attempt(&body).await {
                Ok(response) => return Ok(response),
                Err(error) => error,
            };
            if !error.is_retryable() || attempts > self.config.max_retries {
                return Err(if attempts > 1 { with_attempts(error, attempts) } else { error });
            }
            let delay = self.backoff(attempts, error.retry_after_secs());
            tracing::warn!(
                attempt = attempts,
                max_attempts = self.config.max_retries.saturating_add(1),
                "{error}; retrying in {:.2}s",
                delay.as_secs_f64()
            );
            self.sleeper.sleep(delay).await;
        }
    }
}

/// Marks an error as the last of several attempts, so its message says how many.
fn with_attempts(error: LmError, attempts: u32) -> LmError {
    let note = |endpoint: String| format!("{endpoint} (gave up after {attempts} attempts)");
    match error {
        LmError::RateLimited { endpoint, retry_after_secs } => {
            LmError::RateLimited { endpoint: note(endpoint), retry_after_secs }
        }
        LmError::Http { endpoint, status, body, retry_after_secs } => {
            LmError::Http { endpoint: note(endpoint), status, body, retry_after_secs }
        }
        LmError::Timeout { endpoint, secs } => LmError::Timeout { endpoint: note(endpoint), secs },
        LmError::Connect { endpoint, message } => LmError::Connect { endpoint: note(endpoint), message },
        LmError::BadResponse { endpoint, message } => LmError::BadResponse { endpoint: note(endpoint), message },
        LmError::Engine(message) => LmError::Engine(format!("{message} (gave up after {attempts} attempts)")),
        other @ (LmError::ContextOverflow { .. } | LmError::BudgetExhausted { .. }) => other,
    }
}

/// Reads a chat-completion body: `choices[0].message.content`, `finish_reason`, `usage`.
fn parse_completion(bytes: &[u8]) -> Result<LmResponse, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    let choice = value
        .get("choices")
        .and_then(Value::as_array)
        .ok_or("no `choices` array")?
        .first()
        .ok_or("`choices` is empty")?;
    let text = match choice.get("message").and_then(|m| m.get("content")) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) | None => return Err("`choices[0].message.content` is missing or null".into()),
        Some(_) => return Err("`choices[0].message.content` is not a string".into()),
    };
    let finish_reason = choice.get("finish_reason").and_then(Value::as_str).map(str::to_string);
    let usage = value.get("usage");
    let count = |field: &str| usage.and_then(|u| u.get(field)).and_then(Value::as_u64).unwrap_or(0);
    Ok(LmResponse {
        text,
        usage: TokenUsage { prompt_tokens: count("prompt_tokens"), completion_tokens: count("completion_tokens") },
        finish_reason,
    })
}

/// The wait the server asks for: `retry-after-ms` (milliseconds), else
/// `Retry-After` as delta-seconds or an HTTP date.
fn retry_after_secs(headers: &HeaderMap, now: SystemTime) -> Option<f64> {
    let header = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok()).map(str::trim);
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(ms / 1000.0);
        }
    }
    let value = header(RETRY_AFTER.as_str())?;
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then_some(secs);
    }
    let at = parse_http_date(value)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    Some((at as f64 - now).max(0.0))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) into Unix seconds.
fn parse_http_date(text: &str) -> Option<i64> {
    let (_weekday, rest) = text.split_once(", ")?;
    let parts: Vec<&str> = rest.split_ascii_whitespace().collect();
    let [day, month, year, time, zone] = parts.as_slice() else { return None };
    if *zone != "GMT" {
        return None;
    }
    let day: u32 = day.parse().ok()?;
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .iter()
        .position(|m| m == month)? as u32
        + 1;
    let year: i64 = year.parse().ok()?;
    let clock: Vec<&str> = time.split(':').collect();
    let [h, m, s] = clock.as_slice() else { return None };
    let (h, m, s): (i64, i64, i64) = (h.parse().ok()?, m.parse().ok()?, s.parse().ok()?);
    if !(1..=31).contains(&day) || !(0..24).contains(&h) || !(0..60).contains(&m) || !(0..=60).contains(&s) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The authority part of a URL (`user:pass@host:port`), with its byte range.
fn authority(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://")? + 3;
    let len = url[start..].find(['/', '?', '#']).unwrap_or(url.len() - start);
    Some((start, start + len))
}

/// The URL without any `user:password@` part.
/// A URL as it may be shown: without userinfo, query or fragment, any of
/// which may carry a credential.
fn shown_url(url: &str) -> String {
    let url = url.trim();
    strip_userinfo(&url[..url.find(['?', '#']).unwrap_or(url.len())])
}

fn strip_userinfo(url: &str) -> String {
    match authority(url) {
        Some((start, end)) => match url[start..end].rfind('@') {
            Some(at) => format!("{}{}", &url[..start], &url[start + at + 1..]),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// The password in a URL's userinfo, if any.
fn url_password(url: &str) -> Option<String> {
    let (start, end) = authority(url)?;
    let auth = &url[start..end];
    let userinfo = &auth[..auth.rfind('@')?];
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then(|| password.to_string())
}

/// An `f32` as the `f64` its decimal form denotes (0.7, not 0.699999988079071).
fn f32_to_f64(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse() {
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("Tue, 29 Feb 2028 12:00:00 GMT"), Some(1_835_438_400));
        assert_eq!(parse_http_date("06 Nov 1994 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 PST"), None);
        assert_eq!(parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT"), None);
    }

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, HeaderValue::from_static(value));
            }
            map
        };
        assert_eq!(retry_after_secs(&headers(&[]), now), None);
        assert_eq!(retry_after_secs(&headers(&[("retry-after", "7")]), now), Some(7.0));
        assert_eq!(retry_after_secs(&headers(&[("retry-after", "1.5")]), now), Some(1.5));
        assert_eq!(retry_after_secs(&headers(&[("retry-after", "Sun, 06 Nov 1994 08:50:07 GMT")]), now), Some(30.0));
        assert_eq!(retry_after_secs(&headers(&[("retry-after", "Sun, 06 Nov 1994 08:00:00 GMT")]), now), Some(0.0));
        assert_eq!(retry_after_secs(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after_secs(&headers(&[("retry-after", "-3")]), now), None);
        assert_eq!(retry_after_secs(&headers(&[("retry-after-ms", "250"), ("retry-after", "9")]), now), Some(0.25));
    }

    #[test]
    fn userinfo_is_stripped() {
        assert_eq!(strip_userinfo("https://user:pw@example.com/v1"), "https://example.com/v1");
        assert_eq!(strip_userinfo("http://127.0.0.1:8081/v1"), "http://127.0.0.1:8081/v1");
        assert_eq!(strip_userinfo("http://a@b@host:1?x=@"), "http://host:1?x=@");
        assert_eq!(url_password("https://user:pw@example.com/v1").as_deref(), Some("pw"));
        assert_eq!(url_password("https://user@example.com/v1"), None);
    }

    #[test]
    fn completions_parse() {
        let ok = br#"{"choices":[{"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],
                      "usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        let r = parse_completion(ok).unwrap();
        assert_eq!((r.text.as_str(), r.finish_reason.as_deref()), ("hi", Some("stop")));
        assert_eq!(r.usage, TokenUsage { prompt_tokens: 3, completion_tokens: 1 });
        let no_usage = parse_completion(br#"{"choices":[{"message":{"content":""}}]}"#).unwrap();
        assert_eq!((no_usage.usage, no_usage.finish_reason), (TokenUsage::default(), None));
        assert!(parse_completion(b"<html>").is_err());
        assert!(parse_completion(br#"{"choices":[]}"#).is_err());
        assert!(parse_completion(br#"{"choices":[{"message":{"content":null}}]}"#).is_err());
        assert!(parse_completion(br#"{"error":"x"}"#).is_err());
    }

    #[test]
    fn backoff_is_capped_and_honours_retry_after() {
        let mut config = OpenAiConfig::new("http://127.0.0.1:1/v1", "m");
        config.initial_backoff_ms = 100;
        config.max_backoff_ms = 250;
        let client = OpenAiClient::new(config).unwrap();
        for attempt in 1..70 {
            assert!(client.backoff(attempt, None) <= Duration::from_millis(250));
        }
        assert!(client.backoff(1, Some(2.0)) >= Duration::from_secs(2));
        assert_eq!(client.backoff(1, Some(3600.0)), Duration::from_secs(60));
    }

    #[test]
    fn temperature_keeps_its_decimal_form() {
        assert_eq!(f32_to_f64(0.7), 0.7);
        assert_eq!(f32_to_f64(0.0), 0.0);
    }
}
