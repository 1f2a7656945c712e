//! The OpenAI-compatible client against a stub chat-completions server on
//! 127.0.0.1. The stub checks every request against the published request
//! shape and answers from a script, counting the requests it receives.
//!
//! No test waits on the clock: the client's waits go through a sleeper that
//! records them, and an attempt's time limit runs out exactly when the stub
//! holds a request unanswered.

#[path = "common/closing_port.rs"]
mod closing_port;
#[path = "common/waits.rs"]
mod waits;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use closing_port::ClosingPort;
use promptloop::clock::Sleeper;
use promptloop::lm::openai::{OpenAiClient, OpenAiConfig, SchemaStyle};
use promptloop::lm::{ChatMessage, LanguageModel, LmError, LmRequest, LmResponse, Role, TokenUsage};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use waits::Waits;

const KEY: &str = "sk-test-0123456789-SECRET";

/// What the stub does with one request.
#[derive(Clone)]
enum Reply {
    /// Answer with this status, extra headers and body.
    Send { status: u16, headers: Vec<(&'static str, String)>, body: String },
    /// Never answer; keep the connection open until the stub is dropped. The
    /// attempt's time limit then runs out (see [`client`]).
    Hang,
}

fn ok(text: &str) -> Reply {
    Reply::Send {
        status: 200,
        headers: vec![],
        body: json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "test-model",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
        })
        .to_string(),
    }
}

fn status(status: u16, body: &str) -> Reply {
    Reply::Send { status, headers: vec![], body: body.to_string() }
}

fn raw_200(body: &str) -> Reply {
    status(200, body)
}

struct Stub {
    base_url: String,
    hits: Arc<AtomicUsize>,
    violations: Arc<Mutex<Vec<String>>>,
    bodies: Arc<Mutex<Vec<Value>>>,
    /// A permit for each request held unanswered.
    hanging: Arc<Semaphore>,
    waits: Waits,
    shutdown: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Stub {
    /// Serves `script` (the last reply repeats once the script runs out),
    /// expecting `Authorization: Bearer <key>` exactly when `key` is given.
    async fn start(script: Vec<Reply>, key: Option<&str>) -> Stub {
        assert!(!script.is_empty());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let hanging = Arc::new(Semaphore::new(0));
        let (shutdown, _) = watch::channel(false);
        let expected_auth = key.map(|k| format!("Bearer {k}"));
        let accept = {
            let (hits, violations, bodies, hanging, shutdown) =
                (hits.clone(), violations.clone(), bodies.clone(), hanging.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else { return };
                    let conn = Conn {
                        script: script.clone(),
                        expected_auth: expected_auth.clone(),
                        hits: hits.clone(),
                        violations: violations.clone(),
                        bodies: bodies.clone(),
                        hanging: hanging.clone(),
                        shutdown: shutdown.subscribe(),
                    };
                    tokio::spawn(conn.serve(stream));
                }
            })
        };
        Stub {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            hits,
            violations,
            bodies,
            hanging,
            waits: Waits::new(),
            shutdown,
            accept,
        }
    }

    /// A client of this stub, its waits recorded in [`Stub::waits`].
    fn client(&self, config: OpenAiConfig) -> OpenAiClient {
        client(config, &self.waits, self.hanging.clone())
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }

    fn assert_well_formed(&self) {
        let violations = self.violations.lock().unwrap();
        assert!(violations.is_empty(), "requests broke the chat-completions shape: {violations:#?}");
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.accept.abort();
    }
}

struct Conn {
    script: Vec<Reply>,
    expected_auth: Option<String>,
    hits: Arc<AtomicUsize>,
    violations: Arc<Mutex<Vec<String>>>,
    bodies: Arc<Mutex<Vec<Value>>>,
    hanging: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

impl Conn {
    async fn serve(mut self, stream: TcpStream) {
        let mut reader = BufReader::new(stream);
        // One request per connection: every reply says `Connection: close`.
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut headers: Vec<(String, String)> = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header line");
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let length: usize = header(&headers, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let n = self.hits.fetch_add(1, Ordering::SeqCst);

        let problems = check_request(&request_line, &headers, &body, self.expected_auth.as_deref());
        if let Ok(value) = serde_json::from_slice::<Value>(&body) {
            self.bodies.lock().unwrap().push(value);
        }
        let reply = if problems.is_empty() {
            self.script[n.min(self.script.len() - 1)].clone()
        } else {
            let reply = status(422, &format!("stub: malformed request: {problems:?}"));
            self.violations.lock().unwrap().extend(problems);
            reply
        };
        let mut stream = reader.into_inner();
        match reply {
            Reply::Hang => {
                self.hanging.add_permits(1);
                let _ = self.shutdown.wait_for(|stop| *stop).await;
            }
            Reply::Send { status, headers, body } => {
                let mut response = format!(
                    "HTTP/1.1 {status} Stub\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (name, value) in headers {
                    response.push_str(&format!("{name}: {value}\r\n"));
                }
                response.push_str("\r\n");
                response.push_str(&body);
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Everything wrong with a request, judged against the OpenAI chat-completions API.
fn check_request(request_line: &str, headers: &[(String, String)], body: &[u8], auth: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut bad = |p: String| problems.push(p);
    let parts: Vec<&str> = request_line.split_whitespace().collect();
    if parts.first() != Some(&"POST") {
        bad(format!("method is not POST: {request_line:?}"));
    }
    if parts.get(1).map(|target| target.split('?').next().unwrap_or(target)) != Some("/v1/chat/completions") {
        bad(format!("path is not /v1/chat/completions: {request_line:?}"));
    }
    if !header(headers, "content-type").is_some_and(|v| v.starts_with("application/json")) {
        bad(format!("content-type is not JSON: {:?}", header(headers, "content-type")));
    }
    let auths: Vec<&str> = headers.iter().filter(|(n, _)| n == "authorization").map(|(_, v)| v.as_str()).collect();
    match auth {
        Some(expected) if auths != [expected] => bad(format!("authorization is {auths:?}, not the bearer key")),
        None if !auths.is_empty() => bad("authorization sent without a key".into()),
        _ => {}
    }
    let body: Value = match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(other) => {
            bad(format!("body is not a JSON object: {other}"));
            return problems;
        }
        Err(e) => {
            bad(format!("body is not JSON: {e}"));
            return problems;
        }
    };
    let known = ["model", "messages", "temperature", "max_tokens", "stop", "response_format", "seed"];
    for key in body.as_object().unwrap().keys() {
        if !known.contains(&key.as_str()) {
            bad(format!("unexpected field {key:?}"));
        }
    }
    if body["model"].as_str().is_none_or(str::is_empty) {
        bad(format!("model is not a non-empty string: {}", body["model"]));
    }
    match body["messages"].as_array() {
        Some(messages) if !messages.is_empty() => {
            for m in messages {
                let role_ok = m["role"].as_str().is_some_and(|r| ["system", "user", "assistant"].contains(&r));
                let keys_ok = m.as_object().is_some_and(|o| o.len() == 2);
                if !role_ok || !m["content"].is_string() || !keys_ok {
                    bad(format!("malformed message: {m}"));
                }
            }
        }
        _ => bad(format!("messages is not a non-empty array: {}", body["messages"])),
    }
    if !body["temperature"].as_f64().is_some_and(|t| (0.0..=2.0).contains(&t)) {
        bad(format!("temperature is not a number in [0, 2]: {}", body["temperature"]));
    }
    if body["max_tokens"].as_u64().is_none_or(|n| n == 0) {
        bad(format!("max_tokens is not a positive integer: {}", body["max_tokens"]));
    }
    if let Some(stop) = body.get("stop") {
        let ok = stop.is_string()
            || stop.as_array().is_some_and(|a| !a.is_empty() && a.len() <= 4 && a.iter().all(Value::is_string));
        if !ok {
            bad(format!("malformed stop: {stop}"));
        }
    }
    if let Some(seed) = body.get("seed") {
        if !seed.is_i64() && !seed.is_u64() {
            bad(format!("seed is not an integer: {seed}"));
        }
    }
    if let Some(format) = body.get("response_format") {
        match format["type"].as_str() {
            Some("text") => {}
            Some("json_object") => {
                if format.get("schema").is_some_and(|s| !s.is_object()) {
                    bad(format!("json_object schema is not an object: {format}"));
                }
            }
            Some("json_schema") => {
                let spec = &format["json_schema"];
                let name_ok = spec["name"].as_str().is_some_and(|n| {
                    !n.is_empty()
                        && n.len() <= 64
                        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                });
                let strict_ok = spec.get("strict").is_none_or(Value::is_boolean);
                if !name_ok || !spec["schema"].is_object() || !strict_ok {
                    bad(format!("malformed json_schema response_format: {format}"));
                }
            }
            _ => bad(format!("unknown response_format: {format}")),
        }
    }
    problems
}

/// An attempt's time limit in these tests; a real one only should the stub fail.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(120);

fn config(base_url: &str) -> OpenAiConfig {
    OpenAiConfig {
        base_url: base_url.to_string(),
        model: "test-model".into(),
        api_key: Some(KEY.into()),
        timeout_secs: ATTEMPT_LIMIT.as_secs_f64(),
        max_retries: 3,
        initial_backoff_ms: 1,
        max_backoff_ms: 10,
        schema_style: SchemaStyle::OpenAi,
    }
}

fn request() -> LmRequest {
    let mut request = LmRequest::new(vec![
        ChatMessage::new(Role::System, "Answer briefly."),
        ChatMessage::new(Role::User, "What is 2 + 2?"),
        ChatMessage::new(Role::Assistant, "4"),
        ChatMessage::new(Role::User, "And 3 + 3?"),
    ]);
    request.temperature = 0.7;
    request.max_tokens = 64;
    request
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": false,
    })
}

/// A client whose waits between attempts are recorded in `waits` and return at
/// once, and whose attempts run out of time exactly when the stub holds a
/// request unanswered (a permit in `hanging`).
fn client(config: OpenAiConfig, waits: &Waits, hanging: Arc<Semaphore>) -> OpenAiClient {
    let limit = Duration::from_secs_f64(config.timeout_secs);
    let waits = waits.clone();
    let sleeper = Sleeper::new(move |wait| {
        let (waits, hanging) = (waits.clone(), hanging.clone());
        async move {
            if wait == limit {
                hanging.acquire().await.expect("the stub's semaphore stays open").forget();
            } else {
                waits.record(wait);
            }
        }
    });
    OpenAiClient::new(config).unwrap().with_sleeper(sleeper)
}

/// A client for an endpoint without a stub.
fn client_without_stub(config: OpenAiConfig) -> OpenAiClient {
    client(config, &Waits::new(), Arc::new(Semaphore::new(0)))
}

async fn call(client: &OpenAiClient, request: &LmRequest) -> Result<LmResponse, LmError> {
    client.complete(request).await
}

#[tokio::test]
async fn success_parses_text_usage_and_finish_reason() {
    let stub = Stub::start(vec![ok("6")], Some(KEY)).await;
    let client = stub.client(config(&stub.base_url));
    let mut req = request();
    req.stop = vec!["\n\n".into()];
    req.rollout = Some(3);
    req.template = Some(Default::default());
    let response = call(&client, &req).await.unwrap();
    assert_eq!(response.text, "6");
    assert_eq!(response.usage, TokenUsage { prompt_tokens: 12, completion_tokens: 5 });
    assert_eq!(response.finish_reason.as_deref(), Some("stop"));
    assert_eq!(stub.hits(), 1);
    stub.assert_well_formed();

    let body = &stub.bodies()[0];
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["messages"][0], json!({"role": "system", "content": "Answer briefly."}));
    assert_eq!(body["messages"][2], json!({"role": "assistant", "content": "4"}));
    assert_eq!(body["messages"].as_array().unwrap().len(), 4);
    assert_eq!(body["temperature"], json!(0.7));
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(body["stop"], json!(["\n\n"]));
    assert_eq!(body["seed"], 3);
    assert!(body.get("response_format").is_none());
}

#[tokio::test]
async fn usage_may_be_absent_and_no_key_means_no_authorization() {
    let body = json!({"choices": [{"message": {"role": "assistant", "content": "hi"}}]}).to_string();
    let stub = Stub::start(vec![raw_200(&body)], None).await;
    let client = stub.client(OpenAiConfig { api_key: None, ..config(&stub.base_url) });
    let response = call(&client, &request()).await.unwrap();
    assert_eq!(response.text, "hi");
    assert_eq!(response.usage, TokenUsage::default());
    assert_eq!(response.finish_reason, None);
    let body = &stub.bodies()[0];
    assert!(body.get("stop").is_none() && body.get("seed").is_none());
    stub.assert_well_formed();
}

#[tokio::test]
async fn rate_limit_is_retried_after_the_servers_retry_after() {
    let limited = Reply::Send {
        status: 429,
        headers: vec![("Retry-After", "1".into())],
        body: r#"{"error":{"message":"slow down"}}"#.into(),
    };
    let stub = Stub::start(vec![limited, ok("fine")], Some(KEY)).await;
    let client = stub.client(config(&stub.base_url));
    let response = call(&client, &request()).await.unwrap();
    assert_eq!(response.text, "fine");
    assert_eq!(stub.hits(), 2);
    // The backoff is at most 10 ms: the second's wait is the server's.
    assert_eq!(stub.waits.recorded(), [Duration::from_secs(1)]);
    stub.assert_well_formed();
}

#[tokio::test]
async fn persistent_rate_limit_gives_up_and_says_after_how_many_attempts() {
    let limited = Reply::Send { status: 429, headers: vec![("retry-after-ms", "5".into())], body: "{}".into() };
    let stub = Stub::start(vec![limited], Some(KEY)).await;
    let client = stub.client(OpenAiConfig { max_retries: 2, ..config(&stub.base_url) });
    let error = call(&client, &request()).await.unwrap_err();
    assert!(matches!(error, LmError::RateLimited { retry_after_secs: Some(s), .. } if (s - 0.005).abs() < 1e-9));
    let message = error.to_string();
    assert!(message.contains("429") && message.contains("after 3 attempts"), "{message}");
    assert_eq!(stub.hits(), 3);
    assert_eq!(stub.waits.recorded(), [Duration::from_millis(5); 2]);
}

#[tokio::test]
async fn server_errors_are_retried() {
    let stub = Stub::start(vec![status(500, "boom"), status(503, "overloaded"), ok("third time")], Some(KEY)).await;
    let client = stub.client(config(&stub.base_url));
    let response = call(&client, &request()).await.unwrap();
    assert_eq!(response.text, "third time");
    assert_eq!(stub.hits(), 3);
    stub.assert_well_formed();
}

#[tokio::test]
async fn bodies_that_are_not_completions_are_retried() {
    let script = vec![
        raw_200("<html>502 Bad Gateway</html>"),
        raw_200(r#"{"choices": []}"#),
        raw_200(r#"{"choices": [{"message": {"role": "assistant", "content": null}}]}"#),
        ok("at last"),
    ];
    let stub = Stub::start(script, Some(KEY)).await;
    let client = stub.client(config(&stub.base_url));
    let response = call(&client, &request()).await.unwrap();
    assert_eq!(response.text, "at last");
    assert_eq!(stub.hits(), 4);

    let stub = Stub::start(vec![raw_200("not json at all")], Some(KEY)).await;
    let client = stub.client(OpenAiConfig { max_retries: 1, ..config(&stub.base_url) });
    let error = call(&client, &request()).await.unwrap_err();
    assert!(matches!(error, LmError::BadResponse { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("not json at all") && message.contains("after 2 attempts"), "{message}");
    assert_eq!(stub.hits(), 2);
}

#[tokio::test]
async fn a_slow_reply_times_out_and_is_retried() {
    let stub = Stub::start(vec![Reply::Hang, ok("quick now")], Some(KEY)).await;
    let client = stub.client(config(&stub.base_url));
    let response = call(&client, &request()).await.unwrap();
    assert_eq!(response.text, "quick now");
    assert_eq!(stub.hits(), 2);
    assert_eq!(stub.waits.recorded().len(), 1, "one wait between the two attempts");

    let stub = Stub::start(vec![Reply::Hang], Some(KEY)).await;
    let client = stub.client(OpenAiConfig { max_retries: 1, ..config(&stub.base_url) });
    let error = call(&client, &request()).await.unwrap_err();
    assert!(matches!(error, LmError::Timeout { .. }), "{error:?}");
    assert!(error.to_string().contains("after 2 attempts"), "{error}");
    assert_eq!(stub.hits(), 2);
}

#[tokio::test]
async fn an_endpoint_that_is_down_fails_clearly_after_the_retries() {
    let down = ClosingPort::start();
    let base_url = format!("http://127.0.0.1:{}/v1", down.port());
    let client = client_without_stub(OpenAiConfig { max_retries: 2, ..config(&base_url) });
    let error = call(&client, &request()).await.unwrap_err();
    assert!(matches!(error, LmError::Connect { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&base_url) && message.contains("after 3 attempts"), "{message}");
}

#[tokio::test]
async fn a_client_error_is_not_retried_and_is_reported_with_its_body() {
    let stub = Stub::start(vec![status(400, r#"{"error":{"message":"max_tokens is too large"}}"#)], Some(KEY)).await;
    let client = stub.client(config(&stub.base_url));
    let error = call(&client, &request()).await.unwrap_err();
    assert!(matches!(error, LmError::Http { status: 400, .. }), "{error:?}");
    assert!(!error.is_retryable());
    let message = error.to_string();
    assert!(message.contains("400") && message.contains("max_tokens is too large"), "{message}");
    assert!(!message.contains("attempts"), "{message}");
    assert_eq!(stub.hits(), 1);
    stub.assert_well_formed();
}

#[tokio::test]
async fn long_error_bodies_are_truncated() {
    let stub = Stub::start(vec![status(400, &"x".repeat(5000))], Some(KEY)).await;
    let client = stub.client(config(&stub.base_url));
    let message = call(&client, &request()).await.unwrap_err().to_string();
    assert!(message.len() < 800, "{} chars", message.len());
    assert!(message.contains("5000 bytes"), "{message}");
}

#[tokio::test]
async fn the_api_key_never_shows() {
    let echo = format!(r#"{{"error":{{"message":"Incorrect API key provided: {KEY}"}}}}"#);
    let stub = Stub::start(vec![status(401, &echo)], Some(KEY)).await;
    let client = stub.client(config(&stub.base_url));
    let error = call(&client, &request()).await.unwrap_err();
    let shown = format!("{error} {error:?}");
    assert!(shown.contains("401") && shown.contains("[redacted]"), "{shown}");
    assert!(!shown.contains(KEY) && !shown.contains("0123456789-SECRET"), "{shown}");

    let stub = Stub::start(vec![status(502, &echo)], Some(KEY)).await;
    let client = stub.client(OpenAiConfig { max_retries: 1, ..config(&stub.base_url) });
    let error = call(&client, &request()).await.unwrap_err();
    assert!(!format!("{error} {error:?}").contains(KEY));
    assert_eq!(stub.hits(), 2);

    let cfg = config("https://user:url-password@api.example.com/v1");
    let client = OpenAiClient::new(cfg.clone()).unwrap();
    let description = serde_json::to_string(&client.describe()).unwrap();
    for shown in [format!("{cfg:?}"), format!("{client:?}"), description] {
        assert!(!shown.contains(KEY) && !shown.contains("url-password"), "{shown}");
    }
    assert_eq!(client.describe().endpoint.as_deref(), Some("https://api.example.com/v1"));
    assert_eq!(client.describe().provider, "openai");
    assert_eq!(client.describe().model, "test-model");
    assert!(!client.describe().constrained_decoding);
}

#[tokio::test]
async fn response_format_follows_the_schema_style() {
    let stub = Stub::start(vec![ok(r#"{"answer": 6}"#)], Some(KEY)).await;
    let mut req = request();
    req.json_schema = Some(schema());
    for style in [SchemaStyle::OpenAi, SchemaStyle::JsonObject, SchemaStyle::None] {
        let client = stub.client(OpenAiConfig { schema_style: style, ..config(&stub.base_url) });
        assert_eq!(call(&client, &req).await.unwrap().text, r#"{"answer": 6}"#);
    }
    stub.assert_well_formed();
    let bodies = stub.bodies();
    assert_eq!(
        bodies[0]["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "reply", "schema": schema(), "strict": true}})
    );
    assert_eq!(bodies[1]["response_format"], json!({"type": "json_object", "schema": schema()}));
    assert!(bodies[2].get("response_format").is_none());
}

#[test]
fn bad_configs_are_refused() {
    assert!(OpenAiClient::new(config("not a url")).is_err());
    assert!(OpenAiClient::new(config("ftp://example.com/v1")).is_err());
    assert!(OpenAiClient::new(OpenAiConfig { timeout_secs: 0.0, ..config("http://127.0.0.1:1/v1") }).is_err());
    assert!(OpenAiClient::new(OpenAiConfig { model: " ".into(), ..config("http://127.0.0.1:1/v1") }).is_err());
    // A trailing slash is tolerated.
    let client = OpenAiClient::new(config("http://127.0.0.1:1/v1/")).unwrap();
    assert_eq!(client.describe().endpoint.as_deref(), Some("http://127.0.0.1:1/v1"));
}

#[tokio::test]
async fn a_key_in_the_base_urls_query_is_sent_but_never_shown() {
    // The query stays on the request, after the path.
    let stub = Stub::start(vec![ok("cards")], Some(KEY)).await;
    let client = stub.client(config(&format!("{}?api-version=2024-10-21", stub.base_url)));
    call(&client, &request()).await.unwrap();
    stub.assert_well_formed();
    assert_eq!(client.describe().endpoint.as_deref(), Some(stub.base_url.as_str()));

    // Nobody answers: the connect error names the endpoint without the query.
    let down = ClosingPort::start();
    let port = down.port();
    let base_url = format!("http://127.0.0.1:{port}/v1?api_key=QUERY-SECRET-42");
    let client = client_without_stub(OpenAiConfig { max_retries: 0, ..config(&base_url) });
    let error = call(&client, &request()).await.unwrap_err();
    let shown = format!("{error} {error:?} {client:?} {}", serde_json::to_string(&client.describe()).unwrap());
    assert!(matches!(error, LmError::Connect { .. }), "{error:?}");
    assert!(shown.contains(&format!("http://127.0.0.1:{port}/v1")), "{shown}");
    assert!(!shown.contains("QUERY-SECRET-42"), "{shown}");
}
