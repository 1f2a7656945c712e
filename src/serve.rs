//! `promptloop lm serve`: an OpenAI-compatible HTTP API over the embedded model,
//! so any OpenAI client (DSPy through litellm included) can use it.
//!
//! Routes: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions`
//! (also without the `/v1` prefix) and `GET /health`. Errors come back in
//! OpenAI's shape, `{"error":{"message","type","param","code"}}`. A request
//! asking for something the engine cannot honour (`n` > 1, log-probabilities,
//! tools, nucleus sampling, penalties) is refused with a 400 naming the
//! parameter rather than quietly answered without it.
//!
//! Defaults follow OpenAI's: `temperature` 1, and without a `seed` sampled
//! replies vary from call to call (with one they reproduce). `max_tokens`
//! defaults to [`ServeOptions::default_max_tokens`] and is capped by what the
//! context window leaves after the prompt; a prompt that fills the window is a
//! 400 `context_length_exceeded`.
//!
//! The engine generates one reply at a time: requests queue for their turn.
//! Work is bounded before a request joins the queue: at most
//! [`ServeOptions::max_queue`] requests wait (beyond that, 503 with
//! Retry-After), a body is read only once admitted and only up to
//! [`ServeOptions::max_body_bytes`] (413), and the messages' text may not
//! exceed [`ServeOptions::max_prompt_bytes`] (400); the prompt is tokenized
//! only when its turn comes. A client that disconnects leaves the queue, or,
//! if its reply is being generated, stops the generation at the next token. A
//! streamed request is generated whole first, then sent as Server-Sent Events
//! in OpenAI's chunk shape. Each request is logged at info level (method,
//! path, status, tokens, milliseconds); message contents never are.
//!
//! There is no authentication: bind a loopback address (see [`bind_address`]).
//! Against DNS rebinding (a web page whose name resolves to 127.0.0.1), the
//! `Host` header must name the server: `localhost`, a loopback address or the
//! address it listens on, with its port, or one of
//! [`ServeOptions::allowed_hosts`]; any other is refused with a 403.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HOST, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::lm::local::constrain::validate_schema;
use crate::lm::local::{Cancel, LocalEngine};
use crate::lm::{ChatMessage, LanguageModel, LmError, LmRequest, LmResponse, OutputTemplate, Role, Segment};

/// How the server answers.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The model's name in `/v1/models` and in every reply. Requests may name
    /// any model: there is only this one.
    pub model_id: String,
    /// Reply budget when a request gives neither `max_tokens` nor
    /// `max_completion_tokens`. Any budget is capped by what the context leaves.
    pub default_max_tokens: u32,
    /// Largest request body accepted (larger ones get 413).
    pub max_body_bytes: usize,
    /// Most bytes of text the messages of one request may hold together,
    /// checked before the prompt is tokenized (more gets 400).
    pub max_prompt_bytes: usize,
    /// Most requests waiting for their turn while the model generates another
    /// reply; one more is refused with 503 and a Retry-After.
    pub max_queue: usize,
    /// Host names accepted in the `Host` header, with any port, besides
    /// `localhost`, loopback addresses and the address listened on (e.g. the
    /// machine's name when listening beyond loopback, or behind a proxy).
    pub allowed_hosts: Vec<String>,
}

impl Default for ServeOptions {
    /// The model's 8,192-token context holds far less than 256 KiB of text,
    /// and a request carrying that much fits in 1 MiB of JSON.
    fn default() -> Self {
        Self {
            model_id: "smollm2".into(),
            default_max_tokens: 256,
            max_body_bytes: 1024 * 1024,
            max_prompt_bytes: 256 * 1024,
            max_queue: 32,
            allowed_hosts: Vec::new(),
        }
    }
}

/// Most stop sequences a request may give (OpenAI's limit).
const MAX_STOP_SEQUENCES: usize = 4;

/// Checks where the server may listen: an IP address or `localhost`, and a
/// loopback one unless `allow_remote` (the server has no authentication).
pub fn bind_address(host: &str, port: u16, allow_remote: bool) -> Result<SocketAddr> {
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        match host.trim_start_matches('[').trim_end_matches(']').parse() {
            Ok(ip) => ip,
            Err(_) => bail!("--host must be an IP address or `localhost`, got {host:?}"),
        }
    };
    if !ip.is_loopback() && !allow_remote {
        bail!(
            "refusing to listen on {ip}: the server has no authentication, so anyone who can reach that address \
             could use it. Listen on a loopback address such as 127.0.0.1, or pass --allow-remote if that is what you want"
        );
    }
    Ok(SocketAddr::new(ip, port))
}

/// Serves until Ctrl-C or SIGTERM, then finishes the requests in flight.
pub async fn serve(listener: tokio::net::TcpListener, engine: Arc<LocalEngine>, options: ServeOptions) -> Result<()> {
    serve_with_shutdown(listener, engine, options, shutdown_signal()).await
}

/// Serves until `shutdown` completes, then finishes the requests in flight.
pub async fn serve_with_shutdown(
    listener: tokio::net::TcpListener,
    engine: Arc<LocalEngine>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if !engine.describe().constrained_decoding {
        tracing::warn!("constrained decoding is off: JSON response formats are accepted but not enforced");
    }
    let local = listener.local_addr()?;
    axum::serve(listener, router(engine, options, local)).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

/// Completes on Ctrl-C or (on Unix) SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down: finishing the requests in flight");
}

struct AppState {
    engine: Arc<LocalEngine>,
    options: ServeOptions,
    /// When the server started: the model's `created` time.
    started: u64,
    /// One generation at a time. Waiting here (not in the engine's lock) lets
    /// a request whose client went away leave the queue; the permit then goes
    /// with the generation, so the next request starts when the model is free.
    turn: Arc<tokio::sync::Semaphore>,
    /// Chat requests admitted and not yet answered: the one generating and
    /// those waiting.
    admitted: AtomicUsize,
    /// How long recent generations took, in milliseconds (a moving average):
    /// what a refused client is told to wait.
    recent_ms: AtomicU64,
}

/// The HTTP application: routes, body limit, `Host` check, request log,
/// OpenAI-shaped 404 and 405. `local` is the address the server listens on.
pub fn router(engine: Arc<LocalEngine>, options: ServeOptions, local: SocketAddr) -> Router {
    let limit = options.max_body_bytes;
    let hosts = Arc::new(HostCheck::new(local, &options.allowed_hosts));
    let state = Arc::new(AppState {
        engine,
        options,
        started: unix_now(),
        turn: Arc::new(tokio::sync::Semaphore::new(1)),
        admitted: AtomicUsize::new(0),
        recent_ms: AtomicU64::new(0),
    });
    let chat = post(chat_completions).layer(middleware::from_fn_with_state(state.clone(), admit));
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(list_models))
        .route("/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route("/models/{id}", get(get_model))
        .route("/v1/chat/completions", chat.clone())
        .route("/chat/completions", chat)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(hosts, check_host))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Errors

/// An error reply in OpenAI's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// `invalid_request_error` or `server_error`.
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    fn unsupported(param: &str, what: &str) -> Self {
        Self::invalid(format!("`{param}`: {what}"), Some(param)).with_code("unsupported_parameter")
    }

    fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    fn server(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    fn context_overflow(message: String) -> Self {
        Self::invalid(message, Some("messages")).with_code("context_length_exceeded")
    }
}

// ---------------------------------------------------------------------------
// Host check

/// Which `Host` headers name this server (against DNS rebinding: a page on
/// another name whose address moved to ours carries that name).
#[derive(Debug)]
struct HostCheck {
    local: SocketAddr,
    /// Further names, lowercase.
    names: Vec<String>,
}

impl HostCheck {
    fn new(local: SocketAddr, names: &[String]) -> Self {
        Self { local, names: names.iter().map(|n| n.trim().to_ascii_lowercase()).collect() }
    }

    /// Whether `host` (a `Host` header's value) names this server: an allowed
    /// name, with any port (a proxy or a port mapping may stand in front), or
    /// `localhost`, a loopback address or the address listened on (any
    /// address when listening on all of them), with the server's port (which
    /// may be left out only when it is 80).
    fn allows(&self, host: &str) -> bool {
        let Some((name, port)) = split_host(host) else { return false };
        let name = name.to_ascii_lowercase();
        if self.names.contains(&name) {
            return true;
        }
        if port.unwrap_or(80) != self.local.port() {
            return false;
        }
        if name == "localhost" {
            return true;
        }
        match name.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || ip == self.local.ip() || self.local.ip().is_unspecified(),
            Err(_) => false,
        }
    }
}

/// A `Host` value's name (brackets removed from an IPv6 address) and port.
fn split_host(host: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (name, after) = rest.split_once(']')?;
        match after {
            "" => (name, None),
            _ => (name, Some(after.strip_prefix(':')?)),
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if name.is_empty() {
        return None;
    }
    let port = match port {
        Some(port) => Some(port.parse::<u16>().ok()?),
        None => None,
    };
    Some((name, port))
}

async fn check_host(State(hosts): State<Arc<HostCheck>>, request: Request, next: Next) -> Response {
    // HTTP/1.0 may leave it out; a browser never does.
    let Some(host) = request.headers().get(HOST) else { return next.run(request).await };
    match host.to_str() {
        Ok(value) if hosts.allows(value) => next.run(request).await,
        value => {
            let shown = value.map(|v| format!("`{v}`")).unwrap_or_else(|_| "not text".to_string());
            ApiError::invalid(
                format!(
                    "The Host header {shown} does not name this server, so the request is refused (a web page \
                     could otherwise reach it through a name that resolves to this machine). Use \
                     http://localhost:{port} or http://{local}",
                    port = hosts.local.port(),
                    local = hosts.local,
                ),
                None,
            )
            .with_status(StatusCode::FORBIDDEN)
            .with_code("host_not_allowed")
            .into_response()
        }
    }
}

// ---------------------------------------------------------------------------
// Admission

/// A chat request's place among those admitted; given back when dropped.
struct Admitted<'a>(&'a AtomicUsize);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Admits a chat request before its body is read, or refuses it with 503 when
/// `max_queue` requests already wait behind the one generating.
async fn admit(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let limit = state.options.max_queue.saturating_add(1);
    let before = state.admitted.fetch_add(1, Ordering::SeqCst);
    let _admitted = Admitted(&state.admitted);
    if before >= limit {
        let retry_after = state.recent_ms.load(Ordering::Relaxed).div_ceil(1000).clamp(1, 60);
        let mut response = ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: match state.options.max_queue {
                1 => format!("The server is busy: a request already waits for the model, its limit. Retry after {retry_after} s"),
                n => format!("The server is busy: {n} requests already wait for the model, its limit. Retry after {retry_after} s"),
            },
            kind: "server_error",
            param: None,
            code: Some("server_overloaded"),
        }
        .into_response();
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after));
        return response;
    }
    next.run(request).await
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        response.extensions_mut().insert(Logged { tokens: None, error: Some(self.code.unwrap_or(self.kind)) });
        response
    }
}

// ---------------------------------------------------------------------------
// Request log

/// What the log line of a request reports besides method, path and status.
#[derive(Debug, Clone, Copy)]
struct Logged {
    tokens: Option<(u64, u64)>,
    error: Option<&'static str>,
}

/// Logs a request whose client went away before the reply (its future is
/// dropped then, and with it anything still queued for the model).
struct InFlight {
    method: Method,
    path: String,
    start: Instant,
    answered: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.answered {
            let ms = self.start.elapsed().as_millis() as u64;
            tracing::info!(method = %self.method, path = self.path, ms, "request abandoned: the client went away");
        }
    }
}

async fn log_request(request: Request, next: Next) -> Response {
    let mut in_flight = InFlight {
        method: request.method().clone(),
        path: request.uri().path().to_string(),
        start: Instant::now(),
        answered: false,
    };
    let response = next.run(request).await;
    in_flight.answered = true;
    let (method, path) = (&in_flight.method, in_flight.path.as_str());
    let ms = in_flight.start.elapsed().as_millis() as u64;
    let logged = response.extensions().get::<Logged>().copied();
    let (prompt_tokens, completion_tokens) = logged.and_then(|l| l.tokens).unwrap_or((0, 0));
    let status = response.status().as_u16();
    match logged.and_then(|l| l.error) {
        Some(error) => tracing::info!(%method, path, status, error, ms, "request"),
        None => tracing::info!(%method, path, status, prompt_tokens, completion_tokens, ms, "request"),
    }
    response
}

// ---------------------------------------------------------------------------
// Small routes

/// `requests`: chat requests admitted and not yet answered (generating or waiting).
async fn health(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({"status": "ok", "requests": state.admitted.load(Ordering::SeqCst)})).into_response()
}

fn model_object(state: &AppState) -> Value {
    json!({"id": state.options.model_id, "object": "model", "created": state.started, "owned_by": "promptloop"})
}

async fn list_models(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({"object": "list", "data": [model_object(&state)]})).into_response()
}

async fn get_model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if id == state.options.model_id {
        axum::Json(model_object(&state)).into_response()
    } else {
        ApiError::invalid(
            format!("The model `{id}` does not exist; this server has `{}`", state.options.model_id),
            Some("model"),
        )
        .with_status(StatusCode::NOT_FOUND)
        .with_code("model_not_found")
        .into_response()
    }
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::invalid(
        format!("Invalid URL ({method} {}): this server has /v1/chat/completions, /v1/models and /health", uri.path()),
        None,
    )
    .with_status(StatusCode::NOT_FOUND)
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let allowed = if uri.path().ends_with("/chat/completions") { "POST" } else { "GET, HEAD" };
    let mut response = ApiError::invalid(format!("{method} is not allowed on {}; use {allowed}", uri.path()), None)
        .with_status(StatusCode::METHOD_NOT_ALLOWED)
        .into_response();
    response.headers_mut().insert(ALLOW, HeaderValue::from_static(allowed));
    response
}

// ---------------------------------------------------------------------------
// Chat completions: the request

/// The body of `POST /v1/chat/completions`, as far as it is read. Fields not
/// listed (user, metadata, store, service_tier, ...) are accepted and ignored.
#[derive(Debug, Deserialize)]
struct ChatCompletionBody {
    #[serde(default)]
    #[allow(dead_code)]
    model: Option<String>,
    #[serde(default)]
    messages: Option<Vec<WireMessage>>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    max_completion_tokens: Option<i64>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<i64>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<i64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    frequency_penalty: Option<f64>,
    #[serde(default)]
    presence_penalty: Option<f64>,
    #[serde(default)]
    logit_bias: Option<Map<String, Value>>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    functions: Option<Vec<Value>>,
    #[serde(default)]
    function_call: Option<Value>,
    #[serde(default)]
    modalities: Option<Vec<String>>,
    #[serde(default)]
    audio: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    role: String,
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    tool_calls: Option<Vec<Value>>,
    #[serde(default)]
    function_call: Option<Value>,
}

/// A validated chat request: what to ask the engine and how to answer.
#[derive(Debug)]
struct ChatCall {
    messages: Vec<ChatMessage>,
    temperature: f32,
    /// The budget asked for, before the context caps it.
    max_tokens: Option<u32>,
    stop: Vec<String>,
    seed: Option<i64>,
    schema: Option<Value>,
    stream: bool,
    include_usage: bool,
}

/// Reads and checks the body of a chat-completions request.
fn parse_chat_request(headers: &HeaderMap, body: &[u8]) -> Result<ChatCall, ApiError> {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        let got = if content_type.is_empty() { "none".to_string() } else { format!("`{content_type}`") };
        return Err(ApiError::invalid(
            format!(
                "The request body must be JSON sent with `Content-Type: application/json`; the Content-Type was {got}"
            ),
            None,
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(format!("The request body is not valid JSON: {e}"), None).with_code("invalid_json")
    })?;
    if !value.is_object() {
        return Err(ApiError::invalid("The request body must be a JSON object", None).with_code("invalid_json"));
    }
    let body: ChatCompletionBody = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ApiError::invalid(format!("Invalid value for `{path}`: {}", e.inner()), Some(&path)).with_code("invalid_type")
    })?;
    check_unsupported(&body)?;

    let wire = body.messages.ok_or_else(|| {
        ApiError::invalid("`messages` is required: a list of chat messages", Some("messages"))
            .with_code("missing_required_parameter")
    })?;
    if wire.is_empty() {
        return Err(ApiError::invalid("`messages` must contain at least one message", Some("messages")));
    }
    let messages = wire.iter().enumerate().map(|(i, m)| convert_message(i, m)).collect::<Result<Vec<_>, _>>()?;

    let temperature = body.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            format!("`temperature` must be between 0 and 2, got {temperature}"),
            Some("temperature"),
        ));
    }
    let budget = |name: &str, value: Option<i64>| -> Result<Option<u32>, ApiError> {
        match value {
            None => Ok(None),
            Some(n) if n >= 1 => Ok(Some(u32::try_from(n).unwrap_or(u32::MAX))),
            Some(n) => Err(ApiError::invalid(format!("`{name}` must be at least 1, got {n}"), Some(name))),
        }
    };
    let max_tokens = budget("max_tokens", body.max_tokens)?;
    let max_completion_tokens = budget("max_completion_tokens", body.max_completion_tokens)?;
    // Both given: the newer name wins, as with OpenAI.
    let max_tokens = max_completion_tokens.or(max_tokens);

    let stop = parse_stop(body.stop)?;
    let schema = parse_response_format(body.response_format)?;
    let stream = body.stream.unwrap_or(false);
    let include_usage = body.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
    Ok(ChatCall {
        messages,
        temperature: temperature as f32,
        max_tokens,
        stop,
        seed: body.seed,
        schema,
        stream,
        include_usage,
    })
}

/// Refuses what the engine cannot honour.
fn check_unsupported(body: &ChatCompletionBody) -> Result<(), ApiError> {
    if let Some(n) = body.n.filter(|&n| n != 1) {
        return Err(ApiError::unsupported("n", &format!("only one choice per request is supported, got {n}")));
    }
    if body.logprobs == Some(true) || body.top_logprobs.is_some_and(|n| n > 0) {
        let param = if body.logprobs == Some(true) { "logprobs" } else { "top_logprobs" };
        return Err(ApiError::unsupported(param, "log-probabilities are not supported"));
    }
    if body.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::unsupported("tools", "tool calling is not supported"));
    }
    if body.tool_choice.as_ref().is_some_and(|c| !c.is_null() && c != "none") {
        return Err(ApiError::unsupported("tool_choice", "tool calling is not supported"));
    }
    if body.functions.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(ApiError::unsupported("functions", "function calling is not supported"));
    }
    if body.function_call.as_ref().is_some_and(|c| !c.is_null() && c != "none") {
        return Err(ApiError::unsupported("function_call", "function calling is not supported"));
    }
    if let Some(p) = body.top_p.filter(|&p| p != 1.0) {
        return Err(ApiError::unsupported("top_p", &format!("only 1 is supported (the full distribution), got {p}")));
    }
    for (name, value) in [("frequency_penalty", body.frequency_penalty), ("presence_penalty", body.presence_penalty)] {
        if let Some(v) = value.filter(|&v| v != 0.0) {
            return Err(ApiError::unsupported(name, &format!("only 0 is supported, got {v}")));
        }
    }
    if body.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
        return Err(ApiError::unsupported("logit_bias", "biasing tokens is not supported"));
    }
    if body.modalities.as_ref().is_some_and(|m| m.iter().any(|m| m != "text")) {
        return Err(ApiError::unsupported("modalities", "only text output is supported"));
    }
    if body.audio.as_ref().is_some_and(|a| !a.is_null()) {
        return Err(ApiError::unsupported("audio", "audio output is not supported"));
    }
    Ok(())
}

fn convert_message(index: usize, message: &WireMessage) -> Result<ChatMessage, ApiError> {
    let role_param = format!("messages[{index}].role");
    let role = match message.role.as_str() {
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" | "function" => {
            return Err(ApiError::unsupported(
                &role_param,
                "tool and function messages are not supported (no tool calling)",
            ));
        }
        other => {
            return Err(ApiError::invalid(
                format!("`{role_param}` must be one of system, developer, user, assistant; got {other:?}"),
                Some(&role_param),
            ));
        }
    };
    if message.tool_calls.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err(ApiError::unsupported(&format!("messages[{index}].tool_calls"), "tool calling is not supported"));
    }
    if message.function_call.as_ref().is_some_and(|c| !c.is_null()) {
        return Err(ApiError::unsupported(
            &format!("messages[{index}].function_call"),
            "function calling is not supported",
        ));
    }
    let param = format!("messages[{index}].content");
    let content = match &message.content {
        Some(Value::String(text)) => text.clone(),
        // An assistant turn may come without content (OpenAI allows it).
        None | Some(Value::Null) if role == Role::Assistant => String::new(),
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                format!("`{param}` is required for a {} message", message.role),
                Some(&param),
            )
            .with_code("missing_required_parameter"));
        }
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                texts.push(text_part(part, &format!("{param}[{j}]"))?);
            }
            texts.join("\n")
        }
        Some(other) => {
            return Err(ApiError::invalid(
                format!("`{param}` must be a string or an array of content parts, got {}", json_kind(other)),
                Some(&param),
            ));
        }
    };
    Ok(ChatMessage::new(role, content))
}

/// The text of one content part; only `{"type":"text","text":...}` parts are understood.
fn text_part(part: &Value, param: &str) -> Result<String, ApiError> {
    let Some(object) = part.as_object() else {
        return Err(ApiError::invalid(format!("`{param}` must be an object, got {}", json_kind(part)), Some(param)));
    };
    match object.get("type") {
        Some(Value::String(kind)) if kind == "text" => match object.get("text") {
            Some(Value::String(text)) => Ok(text.clone()),
            Some(other) => Err(ApiError::invalid(
                format!("`{param}.text` must be a string, got {}", json_kind(other)),
                Some(&format!("{param}.text")),
            )),
            None => Err(ApiError::invalid(format!("`{param}.text` is required"), Some(&format!("{param}.text")))),
        },
        Some(Value::String(kind)) => Err(ApiError::unsupported(
            &format!("{param}.type"),
            &format!("only text content parts are supported, got {kind:?}"),
        )),
        _ => Err(ApiError::invalid(
            format!("`{param}.type` is required and must be a string"),
            Some(&format!("{param}.type")),
        )),
    }
}

fn parse_stop(stop: Option<Value>) -> Result<Vec<String>, ApiError> {
    let list = match stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => {
            if items.len() > MAX_STOP_SEQUENCES {
                return Err(ApiError::invalid(
                    format!("`stop` may hold at most {MAX_STOP_SEQUENCES} sequences, got {}", items.len()),
                    Some("stop"),
                ));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s),
                    other => Err(ApiError::invalid(
                        format!("`stop[{i}]` must be a string, got {}", json_kind(&other)),
                        Some("stop"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        Some(other) => {
            return Err(ApiError::invalid(
                format!("`stop` must be a string or an array of strings, got {}", json_kind(&other)),
                Some("stop"),
            ));
        }
    };
    Ok(list.into_iter().filter(|s| !s.is_empty()).collect())
}

/// The JSON Schema a `response_format` asks the reply to satisfy, if any.
fn parse_response_format(format: Option<Value>) -> Result<Option<Value>, ApiError> {
    let param = Some("response_format");
    let format = match format {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(format)) => format,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("`response_format` must be an object, got {}", json_kind(&other)),
                param,
            ));
        }
    };
    let schema = match format.get("type").and_then(Value::as_str) {
        Some("text") => return Ok(None),
        // llama.cpp's server takes a schema here too.
        Some("json_object") => format.get("schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
        Some("json_schema") => {
            let spec = match format.get("json_schema") {
                Some(Value::Object(spec)) => Some(spec),
                None | Some(Value::Null) => None,
                Some(other) => {
                    return Err(ApiError::invalid(
                        format!("`response_format.json_schema` must be an object, got {}", json_kind(other)),
                        param,
                    ));
                }
            };
            spec.and_then(|s| s.get("schema"))
                .or_else(|| format.get("schema"))
                .cloned()
                .ok_or_else(|| ApiError::invalid("`response_format.json_schema.schema` is required", param))?
        }
        Some(other) => {
            return Err(ApiError::invalid(
                format!("`response_format.type` must be text, json_object or json_schema; got {other:?}"),
                param,
            ));
        }
        None => return Err(ApiError::invalid("`response_format.type` is required", param)),
    };
    if !(schema.is_object() || schema.is_boolean()) {
        return Err(ApiError::invalid(
            format!("the JSON Schema in `response_format` must be an object, got {}", json_kind(&schema)),
            param,
        ));
    }
    validate_schema(&schema).map_err(|e| {
        ApiError::invalid(format!("The JSON Schema in `response_format` cannot be enforced: {e}"), param)
    })?;
    Ok(Some(schema))
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The engine's `rollout` for a request. A seed reproduces a sampled reply; a
/// sampled request without one gets a fresh rollout, so replies vary as they
/// do with OpenAI (the engine is otherwise deterministic per request).
fn rollout(seed: Option<i64>, temperature: f32) -> Option<u32> {
    match seed {
        Some(seed) => {
            let bits = seed as u64;
            Some((bits ^ (bits >> 32)) as u32)
        }
        None if temperature > 0.0 => Some(rand::rng().random()),
        None => None,
    }
}

// ---------------------------------------------------------------------------
// Chat completions: the reply

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match complete_chat(&state, &headers, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn complete_chat(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::invalid(
                format!(
                    "The request body is larger than this server's limit of {} bytes",
                    state.options.max_body_bytes
                ),
                None,
            )
            .with_status(status)
            .with_code("request_too_large")
        } else {
            ApiError::invalid(format!("Could not read the request body: {}", rejection.body_text()), None)
                .with_status(status)
        }
    })?;
    let call = parse_chat_request(headers, &body)?;
    drop(body);
    let prompt_bytes: usize = call.messages.iter().map(|m| m.content.len()).sum();
    if prompt_bytes > state.options.max_prompt_bytes {
        return Err(ApiError::context_overflow(format!(
            "The messages hold {prompt_bytes} bytes of text, over this server's limit of {} bytes (the model's \
             context is {} tokens). Shorten the messages.",
            state.options.max_prompt_bytes,
            state.engine.context_size()
        )));
    }

    let mut request = LmRequest::new(call.messages);
    request.temperature = call.temperature;
    request.stop = call.stop;
    request.rollout = rollout(call.seed, call.temperature);
    if let Some(schema) = call.schema {
        request.template = Some(OutputTemplate { segments: vec![Segment::Json { schema: schema.clone() }] });
        request.json_schema = Some(schema);
    }
    let wanted = call.max_tokens.unwrap_or(state.options.default_max_tokens);

    // Should this future be dropped (the client went away), the guard stops
    // the generation at its next token, or before it starts.
    let cancel = Cancel::new();
    let guard = cancel.on_drop();
    let turn = state.turn.clone().acquire_owned().await.map_err(|_| ApiError::server("the server is shutting down"))?;
    let worker = state.clone();
    let reply = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let started = Instant::now();
        let reply = generate(&worker, request, wanted, &cancel);
        let ms = started.elapsed().as_millis() as u64;
        let recent = worker.recent_ms.load(Ordering::Relaxed);
        let average = if recent == 0 { ms } else { (recent * 3 + ms) / 4 };
        worker.recent_ms.store(average, Ordering::Relaxed);
        reply
    })
    .await
    .map_err(|e| ApiError::server(format!("The model's worker failed: {e}")))?;
    guard.disarm();
    let reply = reply?;

    let id = completion_id();
    let created = unix_now();
    let model = state.options.model_id.as_str();
    let mut response = if call.stream {
        stream_response(&reply, &id, created, model, call.include_usage)
    } else {
        axum::Json(completion_body(&reply, &id, created, model)).into_response()
    };
    response
        .extensions_mut()
        .insert(Logged { tokens: Some((reply.usage.prompt_tokens, reply.usage.completion_tokens)), error: None });
    Ok(response)
}

/// A request's turn with the model, on a blocking thread: the prompt is
/// tokenized and checked against the context, then the reply generated.
fn generate(state: &AppState, mut request: LmRequest, wanted: u32, cancel: &Cancel) -> Result<LmResponse, ApiError> {
    let gone = || ApiError::invalid("The client went away", None).with_code("cancelled");
    if cancel.is_cancelled() {
        return Err(gone());
    }
    let prompt_tokens = state.engine.prompt_tokens(&request.messages).0.len();
    let context = state.engine.context_size();
    if prompt_tokens >= context {
        return Err(ApiError::context_overflow(format!(
            "This model's maximum context length is {context} tokens, but the messages take {prompt_tokens} tokens, \
             which leaves no room for a reply. Shorten the messages."
        )));
    }
    let room = u32::try_from(context - prompt_tokens).unwrap_or(u32::MAX);
    request.max_tokens = wanted.min(room);
    state.engine.complete_blocking_cancellable(&request, cancel).map_err(|e| match e {
        _ if cancel.is_cancelled() => gone(),
        LmError::ContextOverflow { .. } => ApiError::context_overflow(e.to_string()),
        other => ApiError::server(format!("The model failed: {other}")),
    })
}

fn completion_id() -> String {
    let suffix: String = rand::rng().sample_iter(rand::distr::Alphanumeric).take(24).map(char::from).collect();
    format!("chatcmpl-{suffix}")
}

fn finish_reason(reply: &LmResponse) -> &str {
    match reply.finish_reason.as_deref() {
        Some("length") => "length",
        _ => "stop",
    }
}

fn usage_json(reply: &LmResponse) -> Value {
    let (prompt, completion) = (reply.usage.prompt_tokens, reply.usage.completion_tokens);
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

fn completion_body(reply: &LmResponse, id: &str, created: u64, model: &str) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": reply.text, "refusal": null},
            "logprobs": null,
            "finish_reason": finish_reason(reply),
        }],
        "usage": usage_json(reply),
    })
}

/// The reply as OpenAI's stream: a role delta, content deltas, a closing chunk
/// with the finish reason, a usage chunk if asked for, then `[DONE]`.
fn stream_response(reply: &LmResponse, id: &str, created: u64, model: &str, include_usage: bool) -> Response {
    let chunk = |choices: Value, usage: Option<Value>| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        });
        if include_usage {
            chunk["usage"] = usage.unwrap_or(Value::Null);
        }
        chunk
    };
    let choice = |delta: Value, finish: Option<&str>| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
    let mut events = vec![chunk(choice(json!({"role": "assistant", "content": ""}), None), None)];
    for piece in stream_pieces(&reply.text) {
        events.push(chunk(choice(json!({"content": piece}), None), None));
    }
    events.push(chunk(choice(json!({}), Some(finish_reason(reply))), None));
    if include_usage {
        events.push(chunk(json!([]), Some(usage_json(reply))));
    }
    let mut body = String::new();
    for event in events {
        body.push_str("data: ");
        body.push_str(&event.to_string());
        body.push_str("\n\n");
    }
    body.push_str("data: [DONE]\n\n");
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "text/event-stream")
        .header(CACHE_CONTROL, "no-cache")
        .body(Body::from(body))
        .expect("a static header set is valid")
}

/// The text cut before each word (a run of non-space characters after space),
/// so that the pieces concatenate back to the text.
fn stream_pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut previous_space = false;
    for (i, c) in text.char_indices() {
        let space = c.is_whitespace();
        if previous_space && !space && i > start {
            pieces.push(&text[start..i]);
            start = i;
        }
        previous_space = space;
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        h
    }

    fn parse(body: Value) -> Result<ChatCall, ApiError> {
        parse_chat_request(&json_headers(), body.to_string().as_bytes())
    }

    #[test]
    fn pieces_concatenate_to_the_text() {
        for text in ["", "one", "Hello, world! How are you?", "  lead\n\ntrail  ", "é ü 中文 ok"] {
            let pieces = stream_pieces(text);
            assert_eq!(pieces.concat(), text);
            assert!(pieces.iter().all(|p| !p.is_empty()));
        }
        assert_eq!(stream_pieces("a b  c"), vec!["a ", "b  ", "c"]);
    }

    #[test]
    fn only_loopback_unless_allowed() {
        assert_eq!(bind_address("127.0.0.1", 8080, false).unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(bind_address("localhost", 0, false).unwrap().to_string(), "127.0.0.1:0");
        assert_eq!(bind_address("::1", 1, false).unwrap().to_string(), "[::1]:1");
        assert_eq!(bind_address("[::1]", 1, false).unwrap().to_string(), "[::1]:1");
        let err = bind_address("0.0.0.0", 8080, false).unwrap_err().to_string();
        assert!(err.contains("--allow-remote"), "{err}");
        assert!(bind_address("0.0.0.0", 8080, true).is_ok());
        assert!(bind_address("example.com", 8080, true).is_err());
    }

    #[test]
    fn host_headers_must_name_the_server() {
        let loopback = HostCheck::new("127.0.0.1:8080".parse().unwrap(), &[]);
        for ok in ["localhost:8080", "LocalHost:8080", "127.0.0.1:8080", "[::1]:8080", "127.0.0.2:8080"] {
            assert!(loopback.allows(ok), "{ok}");
        }
        for refused in [
            "evil.example:8080",
            "localhost.evil.example:8080",
            "localhost:8081",
            "localhost",
            "127.0.0.1",
            "192.168.1.20:8080",
            "[::1",
            "[::1]8080",
            ":8080",
            "localhost:port",
            "",
        ] {
            assert!(!loopback.allows(refused), "{refused}");
        }
        assert!(HostCheck::new("127.0.0.1:80".parse().unwrap(), &[]).allows("localhost"));

        let everywhere = HostCheck::new("0.0.0.0:9000".parse().unwrap(), &["Box.lan".to_string()]);
        for ok in ["192.168.1.20:9000", "[fe80::1]:9000", "box.lan:9000", "box.lan:443", "BOX.LAN", "localhost:9000"] {
            assert!(everywhere.allows(ok), "{ok}");
        }
        assert!(!everywhere.allows("evil.example:9000"));
        let one = HostCheck::new("192.168.1.20:9000".parse().unwrap(), &[]);
        assert!(one.allows("192.168.1.20:9000") && !one.allows("192.168.1.21:9000"));
    }

    #[test]
    fn seeds_fix_the_rollout_and_sampling_without_one_varies() {
        assert_eq!(rollout(Some(7), 1.0), rollout(Some(7), 1.0));
        assert_ne!(rollout(Some(7), 1.0), rollout(Some(8), 1.0));
        assert_eq!(rollout(None, 0.0), None);
        let samples: std::collections::HashSet<_> = (0..8).map(|_| rollout(None, 0.7)).collect();
        assert!(samples.len() > 1);
    }

    #[test]
    fn request_fields_are_read() {
        let call = parse(json!({
            "model": "anything",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null},
                {"role": "user", "content": "c", "name": "me"},
            ],
            "temperature": 0.5,
            "max_tokens": 10,
            "max_completion_tokens": 20,
            "stop": "END",
            "seed": 3,
            "user": "u", "metadata": {"k": "v"}, "store": false, "top_p": 1, "frequency_penalty": 0,
            "presence_penalty": 0.0, "n": 1, "logprobs": false, "stream_options": {"include_usage": true},
            "tools": [], "parallel_tool_calls": true,
        }))
        .unwrap();
        assert_eq!(call.messages[0], ChatMessage::new(Role::System, "Be brief."));
        assert_eq!(call.messages[1].content, "a\nb");
        assert_eq!(call.messages[2], ChatMessage::new(Role::Assistant, ""));
        assert_eq!((call.temperature, call.max_tokens, call.seed), (0.5, Some(20), Some(3)));
        assert_eq!(call.stop, vec!["END".to_string()]);
        assert!(call.schema.is_none() && !call.stream && call.include_usage);
    }

    #[test]
    fn response_formats_become_schemas() {
        let schema =
            |format: Value| parse(json!({"messages": [{"role": "user", "content": "x"}], "response_format": format}));
        assert_eq!(schema(json!({"type": "text"})).unwrap().schema, None);
        assert_eq!(schema(json!({"type": "json_object"})).unwrap().schema, Some(json!({"type": "object"})));
        let s = json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]});
        assert_eq!(schema(json!({"type": "json_object", "schema": s})).unwrap().schema, Some(s.clone()));
        let openai = json!({"type": "json_schema", "json_schema": {"name": "r", "schema": s, "strict": true}});
        assert_eq!(schema(openai).unwrap().schema, Some(s));
        for bad in [
            json!("json"),
            json!({"type": "xml"}),
            json!({}),
            json!({"type": "json_schema", "json_schema": {"name": "r"}}),
        ] {
            let e = schema(bad).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("response_format"), "{}", e.message);
        }
    }

    #[test]
    fn bad_requests_name_their_parameter() {
        let user = json!([{"role": "user", "content": "x"}]);
        let cases = [
            (json!({}), Some("messages")),
            (json!({"messages": []}), Some("messages")),
            (json!({"messages": "hi"}), Some("messages")),
            (json!({"messages": [{"content": "x"}]}), Some("messages[0]")),
            (json!({"messages": [{"role": "robot", "content": "x"}]}), Some("messages[0].role")),
            (json!({"messages": [{"role": "tool", "content": "x"}]}), Some("messages[0].role")),
            (json!({"messages": [{"role": "user", "content": 5}]}), Some("messages[0].content")),
            (json!({"messages": [{"role": "user"}]}), Some("messages[0].content")),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
                Some("messages[0].content[0].type"),
            ),
            (json!({"messages": user, "temperature": "hot"}), Some("temperature")),
            (json!({"messages": user, "temperature": 2.5}), Some("temperature")),
            (json!({"messages": user, "max_tokens": 0}), Some("max_tokens")),
            (json!({"messages": user, "max_completion_tokens": -5}), Some("max_completion_tokens")),
            (json!({"messages": user, "max_tokens": 1.5}), Some("max_tokens")),
            (json!({"messages": user, "stop": ["a", "b", "c", "d", "e"]}), Some("stop")),
            (json!({"messages": user, "stop": 5}), Some("stop")),
            (json!({"messages": user, "seed": "x"}), Some("seed")),
            (json!({"messages": user, "stream": "yes"}), Some("stream")),
            (json!({"messages": user, "n": 2}), Some("n")),
            (json!({"messages": user, "logprobs": true}), Some("logprobs")),
            (json!({"messages": user, "tools": [{"type": "function"}]}), Some("tools")),
            (json!({"messages": user, "tool_choice": "auto"}), Some("tool_choice")),
            (json!({"messages": user, "functions": [{"name": "f"}]}), Some("functions")),
            (json!({"messages": user, "top_p": 0.9}), Some("top_p")),
            (json!({"messages": user, "presence_penalty": 0.5}), Some("presence_penalty")),
            (json!({"messages": user, "logit_bias": {"50256": -100}}), Some("logit_bias")),
        ];
        for (body, param) in cases {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.param.as_deref(), param, "{body}: {}", e.message);
        }
        let e = parse_chat_request(&HeaderMap::new(), b"{}").unwrap_err();
        assert!(e.message.contains("Content-Type"), "{}", e.message);
        let e = parse_chat_request(&json_headers(), b"{\"messages\": [").unwrap_err();
        assert_eq!(e.code, Some("invalid_json"));
        let e = parse_chat_request(&json_headers(), b"[1]").unwrap_err();
        assert_eq!(e.code, Some("invalid_json"));
    }
}
