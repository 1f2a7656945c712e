//! A stand-in for Slack on 127.0.0.1: `POST /api/chat.postMessage` and one incoming webhook.
//!
//! Every request is checked against Slack's published description of `chat.postMessage`
//! (tests/data/slack-api/, from slackapi/slack-api-specs) and against the Block Kit limits in
//! Slack's documentation; whatever does not conform is recorded in [`SlackStub::violations`],
//! which a test asserts is empty. Accepted messages are kept ([`SlackStub::messages`]), and
//! faults can be queued ([`SlackStub::fail_next`]).
//!
//! The server runs on its own thread and runtime, so a test may block on a child process
//! (`promptloop run`) while the stub answers it. It stops when the stub is dropped.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// The bot token the stub accepts; any other gets `invalid_auth`, as from Slack.
pub const TOKEN: &str = "xoxb-0000000000-1111111111-StubBotTokenSeCrEt42";
/// The secret tail of the stub's webhook URL.
pub const WEBHOOK_SECRET: &str = "StubWebhookSeCrEtPath4242";
const WEBHOOK_PATH_PREFIX: &str = "/services/T00000000/B00000000/";

const SPEC: &str = include_str!("../data/slack-api/chat.postMessage.openapi.json");

/// Block Kit limits (Slack's documentation; tests/data/slack-api/README.md).
const MAX_BLOCKS: usize = 50;
const MAX_SECTION_TEXT: usize = 3000;
const MAX_HEADER_TEXT: usize = 150;
const MAX_FIELDS: usize = 10;
const MAX_FIELD_TEXT: usize = 2000;
const MAX_CONTEXT_ELEMENTS: usize = 10;
const MAX_ACTIONS_ELEMENTS: usize = 25;
const MAX_BUTTON_TEXT: usize = 75;
const MAX_URL: usize = 3000;
const MAX_BLOCK_ID: usize = 255;
const MAX_MESSAGE_TEXT: usize = 40_000;
const KNOWN_BLOCKS: &[&str] =
    &["section", "header", "context", "divider", "actions", "image", "rich_text", "markdown", "input", "file", "video"];

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

struct Failure {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

struct Inner {
    spec: Value,
    violations: Vec<String>,
    messages: Vec<Value>,
    received: Vec<Received>,
    failures: VecDeque<Failure>,
    channel_ids: HashMap<String, String>,
    posted: u64,
}

type Shared = Arc<Mutex<Inner>>;

pub struct SlackStub {
    addr: SocketAddr,
    inner: Shared,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl SlackStub {
    /// Binds 127.0.0.1 on a free port and serves until dropped.
    pub fn start() -> SlackStub {
        let spec: Value = serde_json::from_str(SPEC).expect("the Slack API description parses");
        let inner = Arc::new(Mutex::new(Inner {
            spec,
            violations: Vec::new(),
            messages: Vec::new(),
            received: Vec::new(),
            failures: VecDeque::new(),
            channel_ids: HashMap::new(),
            posted: 0,
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let addr = listener.local_addr().expect("the stub's address");
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new().fallback(handle).with_state(inner.clone());
        std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("the stub's runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        SlackStub { addr, inner, shutdown: Some(shutdown) }
    }

    /// The Web API base, as `api_url` of a bot target.
    pub fn api_url(&self) -> String {
        format!("http://{}/api/", self.addr)
    }

    /// The incoming webhook's URL; its tail is [`WEBHOOK_SECRET`].
    pub fn webhook_url(&self) -> String {
        format!("http://{}{WEBHOOK_PATH_PREFIX}{WEBHOOK_SECRET}", self.addr)
    }

    pub fn token(&self) -> &'static str {
        TOKEN
    }

    /// Answers the next request (of any kind) with this instead of handling it; queued in order.
    /// A body that parses as JSON is sent as `application/json` unless `headers` say otherwise.
    pub fn fail_next(&self, status: u16, headers: &[(&str, &str)], body: &str) {
        let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        self.inner.lock().unwrap().failures.push_back(Failure { status, headers, body: body.to_string() });
    }

    /// Everything that did not conform to Slack's description or the Block Kit limits.
    pub fn violations(&self) -> Vec<String> {
        self.inner.lock().unwrap().violations.clone()
    }

    /// The messages Slack accepted, as JSON payloads (a form post's `blocks` parsed).
    pub fn messages(&self) -> Vec<Value> {
        self.inner.lock().unwrap().messages.clone()
    }

    /// Every request, answered or failed.
    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }
}

impl Drop for SlackStub {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

async fn handle(State(inner): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let mut inner = inner.lock().unwrap();
    let path = uri.path().to_string();
    let body_text = String::from_utf8_lossy(&body).into_owned();
    inner.received.push(Received {
        method: method.to_string(),
        path: path.clone(),
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("<not ASCII>").to_string()))
            .collect(),
        body: body_text.clone(),
    });
    let where_ = format!("{method} {path}");

    if let Some(api_method) = path.strip_prefix("/api/") {
        let checked = check_api(&inner.spec, api_method, &method, &headers, &body_text);
        inner.violations.extend(checked.violations.iter().map(|v| format!("{where_}: {v}")));
        if let Some(failure) = inner.failures.pop_front() {
            return failure_response(failure);
        }
        if !checked.known_method {
            return slack_json(json!({"ok": false, "error": "unknown_method"}));
        }
        match checked.token.as_deref() {
            None => return slack_json(json!({"ok": false, "error": "not_authed"})),
            Some(token) if token != TOKEN => return slack_json(json!({"ok": false, "error": "invalid_auth"})),
            Some(_) => {}
        }
        let Some(payload) = checked.payload else {
            return slack_json(json!({"ok": false, "error": "invalid_arguments"}));
        };
        let Some(channel) = payload.get("channel").and_then(Value::as_str).map(str::to_string) else {
            return slack_json(json!({"ok": false, "error": "channel_not_found"}));
        };
        let channel_id = inner.channel_id(&channel);
        inner.posted += 1;
        let ts = format!("1700000000.{:06}", inner.posted);
        let mut message =
            json!({"type": "message", "text": payload.get("text").cloned().unwrap_or(json!("")), "ts": ts});
        if let Some(blocks) = payload.get("blocks") {
            message["blocks"] = blocks.clone();
        }
        let answer = json!({"ok": true, "channel": channel_id, "ts": ts, "message": message});
        // The stub checks itself too: its answer must be what Slack documents.
        for problem in check_response(&inner.spec, api_method, &answer) {
            inner.violations.push(format!("{where_}: the stub's own answer {problem}"));
        }
        inner.messages.push(payload);
        return slack_json(answer);
    }

    if let Some(tail) = path.strip_prefix(WEBHOOK_PATH_PREFIX) {
        let (violations, payload) = check_webhook(&method, &headers, &body_text);
        inner.violations.extend(violations.iter().map(|v| format!("{where_}: {v}")));
        if let Some(failure) = inner.failures.pop_front() {
            return failure_response(failure);
        }
        if tail != WEBHOOK_SECRET {
            return plain(StatusCode::FORBIDDEN, "invalid_token");
        }
        return match payload {
            Some(payload) => {
                inner.messages.push(payload);
                plain(StatusCode::OK, "ok")
            }
            None => plain(StatusCode::BAD_REQUEST, "invalid_payload"),
        };
    }

    if path.starts_with("/services/") {
        // A webhook URL that Slack does not know.
        return plain(StatusCode::NOT_FOUND, "no_service");
    }
    inner.violations.push(format!("{where_}: not a Slack endpoint"));
    plain(StatusCode::NOT_FOUND, "not found")
}

impl Inner {
    /// A channel-like ID for a channel name, stable within the stub.
    fn channel_id(&mut self, channel: &str) -> String {
        if is_channel_id(channel) {
            return channel.to_string();
        }
        let next = self.channel_ids.len() + 1;
        self.channel_ids.entry(channel.to_string()).or_insert_with(|| format!("C{next:010}")).clone()
    }
}

fn is_channel_id(text: &str) -> bool {
    let mut chars = text.chars();
    matches!(chars.next(), Some('C' | 'G' | 'D'))
        && text.len() >= 9
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

fn slack_json(value: Value) -> Response {
    (StatusCode::OK, [("content-type", "application/json; charset=utf-8")], value.to_string()).into_response()
}

fn plain(status: StatusCode, body: &'static str) -> Response {
    (status, [("content-type", "text/html")], body).into_response()
}

fn failure_response(failure: Failure) -> Response {
    let mut response = Response::new(axum::body::Body::from(failure.body.clone()));
    *response.status_mut() = StatusCode::from_u16(failure.status).expect("a valid status");
    let content_type = if serde_json::from_str::<Value>(&failure.body).is_ok() {
        "application/json; charset=utf-8"
    } else {
        "text/plain"
    };
    response.headers_mut().insert("content-type", HeaderValue::from_static(content_type));
    for (name, value) in failure.headers {
        response
            .headers_mut()
            .insert(HeaderName::try_from(name).expect("a header name"), HeaderValue::try_from(value).expect("a value"));
    }
    response
}

struct ApiCheck {
    known_method: bool,
    violations: Vec<String>,
    /// The arguments as JSON, `blocks` parsed, when the body could be read.
    payload: Option<Value>,
    token: Option<String>,
}

/// A Web API call against the method's operation in Slack's description.
fn check_api(spec: &Value, api_method: &str, method: &Method, headers: &HeaderMap, body: &str) -> ApiCheck {
    let mut violations = Vec::new();
    let Some(operation) =
        spec["paths"].get(format!("/{api_method}")).and_then(|p| p.get(method.as_str().to_lowercase()))
    else {
        violations.push(format!("`{api_method}` with {method} is not a method in Slack's Web API description"));
        return ApiCheck { known_method: false, violations, payload: None, token: None };
    };

    let content_type = header(headers, "content-type").unwrap_or_default();
    let media_type = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let consumes: Vec<&str> =
        operation["consumes"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if !consumes.contains(&media_type.as_str()) {
        violations.push(format!("content type `{content_type}` is not one of {consumes:?}"));
    }

    let mut args: Map<String, Value> = match media_type.as_str() {
        "application/json" => match serde_json::from_str::<Value>(body) {
            Ok(Value::Object(map)) => map,
            Ok(_) | Err(_) => {
                violations.push("the body is not a JSON object".to_string());
                Map::new()
            }
        },
        _ => parse_form(body).into_iter().map(|(k, v)| (k, Value::String(v))).collect(),
    };

    // The description puts the token in a `token` header parameter; Slack reads it as
    // `Authorization: Bearer …` (or, in a form, a `token` argument).
    let mut token = None;
    match header(headers, "authorization") {
        Some(value) => match value.strip_prefix("Bearer ") {
            Some(bearer) => token = Some(bearer.trim().to_string()),
            None => violations.push("the Authorization header is not `Bearer <token>`".to_string()),
        },
        None => {
            if let Some(Value::String(form_token)) = args.get("token").filter(|_| media_type != "application/json") {
                token = Some(form_token.clone());
            }
        }
    }
    if args.remove("token").is_some() && media_type == "application/json" {
        violations.push("a JSON body carries `token`: Slack takes it only from the Authorization header".to_string());
    }

    let parameters: Vec<&Value> = operation["parameters"].as_array().into_iter().flatten().collect();
    for parameter in &parameters {
        let name = parameter["name"].as_str().unwrap_or_default();
        let required = parameter["required"].as_bool().unwrap_or(false);
        match parameter["in"].as_str() {
            Some("header") if name == "token" && required && token.is_none() => {
                violations.push("no token: Slack expects `Authorization: Bearer xoxb-…`".to_string());
            }
            Some("formData") => match args.get(name) {
                None if required => violations.push(format!("the required argument `{name}` is missing")),
                None => {}
                Some(value) => {
                    let fine = match parameter["type"].as_str() {
                        Some("boolean") => {
                            value.is_boolean() || matches!(value.as_str(), Some("true" | "false" | "1" | "0"))
                        }
                        // A JSON body carries `blocks` and `attachments` as arrays, not encoded strings.
                        Some("string") => {
                            value.is_string() || (matches!(name, "blocks" | "attachments") && value.is_array())
                        }
                        _ => true,
                    };
                    if !fine {
                        violations
                            .push(format!("`{name}` is {value} where the description says {}", parameter["type"]));
                    }
                    if required && value.as_str().is_some_and(|s| s.trim().is_empty()) {
                        violations.push(format!("the required argument `{name}` is empty"));
                    }
                }
            },
            _ => {}
        }
    }
    for name in args.keys() {
        let described = parameters.iter().any(|p| p["in"] == "formData" && p["name"] == name.as_str());
        if !described {
            violations.push(format!("the argument `{name}` is not in the method's description"));
        }
    }

    if let Some(blocks) = args.get("blocks").cloned() {
        let blocks = match blocks {
            Value::String(encoded) => serde_json::from_str::<Value>(&encoded).unwrap_or(Value::String(encoded)),
            other => other,
        };
        check_blocks(&blocks, &mut violations);
        args.insert("blocks".to_string(), blocks);
    }
    check_text(args.get("text"), &mut violations);

    ApiCheck { known_method: true, violations, payload: Some(Value::Object(args)), token }
}

/// What the stub would record against a message payload's `text` and `blocks` (Block Kit
/// limits and required keys), without sending it.
pub fn block_kit_violations(payload: &Value) -> Vec<String> {
    let mut violations = Vec::new();
    if let Some(blocks) = payload.get("blocks") {
        check_blocks(blocks, &mut violations);
    }
    check_text(payload.get("text"), &mut violations);
    violations
}

/// An incoming webhook takes a JSON message: `text`, `blocks`, and a few more.
fn check_webhook(method: &Method, headers: &HeaderMap, body: &str) -> (Vec<String>, Option<Value>) {
    let mut violations = Vec::new();
    if method != Method::POST {
        violations.push("an incoming webhook takes POST only".to_string());
    }
    let content_type = header(headers, "content-type").unwrap_or_default();
    if !content_type.to_ascii_lowercase().starts_with("application/json") {
        violations.push(format!("content type `{content_type}` is not application/json"));
    }
    let payload = match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(map)) => Some(Value::Object(map)),
        _ => {
            violations.push("the body is not a JSON object".to_string());
            None
        }
    };
    if let Some(payload) = &payload {
        const KNOWN: &[&str] = &[
            "text",
            "blocks",
            "attachments",
            "thread_ts",
            "mrkdwn",
            "unfurl_links",
            "unfurl_media",
            "replace_original",
            "delete_original",
        ];
        for key in payload.as_object().into_iter().flat_map(|m| m.keys()) {
            if !KNOWN.contains(&key.as_str()) {
                violations.push(format!("`{key}` is not something an incoming webhook takes"));
            }
        }
        if let Some(blocks) = payload.get("blocks") {
            check_blocks(blocks, &mut violations);
        }
        check_text(payload.get("text"), &mut violations);
    }
    (violations, payload)
}

/// The top-level `text`: the notification fallback, always set.
fn check_text(text: Option<&Value>, violations: &mut Vec<String>) {
    match text {
        Some(Value::String(text)) if text.trim().is_empty() => {
            violations.push("the top-level `text` (the notification fallback) is empty".to_string())
        }
        Some(Value::String(text)) if chars(text) > MAX_MESSAGE_TEXT => {
            violations.push(format!("the top-level `text` has {} characters, over {MAX_MESSAGE_TEXT}", chars(text)))
        }
        Some(Value::String(_)) => {}
        Some(other) => violations.push(format!("the top-level `text` is {other}, not a string")),
        None => violations.push("no top-level `text`: set it as the notification fallback".to_string()),
    }
}

fn check_blocks(blocks: &Value, violations: &mut Vec<String>) {
    let Some(blocks) = blocks.as_array() else {
        violations.push(format!("`blocks` is not a JSON array: {}", short(blocks)));
        return;
    };
    if blocks.len() > MAX_BLOCKS {
        violations.push(format!("{} blocks, over Slack's {MAX_BLOCKS}", blocks.len()));
    }
    for (i, block) in blocks.iter().enumerate() {
        let at = format!("blocks[{i}]");
        let Some(kind) = block.get("type").and_then(Value::as_str) else {
            violations.push(format!("{at} has no `type`"));
            continue;
        };
        if !KNOWN_BLOCKS.contains(&kind) {
            violations.push(format!("{at} has the unknown type `{kind}`"));
            continue;
        }
        if let Some(id) = block.get("block_id") {
            if id.as_str().is_none_or(|id| id.is_empty() || chars(id) > MAX_BLOCK_ID) {
                violations.push(format!("{at}.block_id is not a string of 1 to {MAX_BLOCK_ID} characters"));
            }
        }
        match kind {
            "section" => {
                let text = block.get("text");
                let fields = block.get("fields");
                if text.is_none() && fields.is_none() {
                    violations.push(format!("{at}: a section needs `text` or `fields`"));
                }
                if let Some(text) = text {
                    check_text_object(
                        text,
                        &format!("{at}.text"),
                        &["plain_text", "mrkdwn"],
                        MAX_SECTION_TEXT,
                        violations,
                    );
                }
                if let Some(fields) = fields {
                    match fields.as_array() {
                        Some(fields) => {
                            if fields.is_empty() || fields.len() > MAX_FIELDS {
                                violations
                                    .push(format!("{at}.fields has {} items, not 1 to {MAX_FIELDS}", fields.len()));
                            }
                            for (j, field) in fields.iter().enumerate() {
                                let where_ = format!("{at}.fields[{j}]");
                                check_text_object(
                                    field,
                                    &where_,
                                    &["plain_text", "mrkdwn"],
                                    MAX_FIELD_TEXT,
                                    violations,
                                );
                            }
                        }
                        None => violations.push(format!("{at}.fields is not an array")),
                    }
                }
            }
            "header" => match block.get("text") {
                Some(text) => {
                    check_text_object(text, &format!("{at}.text"), &["plain_text"], MAX_HEADER_TEXT, violations)
                }
                None => violations.push(format!("{at}: a header needs `text`")),
            },
            "context" => match block.get("elements").and_then(Value::as_array) {
                Some(elements) => {
                    if elements.is_empty() || elements.len() > MAX_CONTEXT_ELEMENTS {
                        violations.push(format!(
                            "{at}.elements has {} items, not 1 to {MAX_CONTEXT_ELEMENTS}",
                            elements.len()
                        ));
                    }
                    for (j, element) in elements.iter().enumerate() {
                        let where_ = format!("{at}.elements[{j}]");
                        match element.get("type").and_then(Value::as_str) {
                            Some("image") => {
                                if element.get("alt_text").is_none() {
                                    violations.push(format!("{where_}: an image needs `alt_text`"));
                                }
                            }
                            _ => check_text_object(
                                element,
                                &where_,
                                &["plain_text", "mrkdwn"],
                                MAX_SECTION_TEXT,
                                violations,
                            ),
                        }
                    }
                }
                None => violations.push(format!("{at}: a context block needs an `elements` array")),
            },
            "actions" => match block.get("elements").and_then(Value::as_array) {
                Some(elements) => {
                    if elements.is_empty() || elements.len() > MAX_ACTIONS_ELEMENTS {
                        violations.push(format!(
                            "{at}.elements has {} items, not 1 to {MAX_ACTIONS_ELEMENTS}",
                            elements.len()
                        ));
                    }
                    for (j, element) in elements.iter().enumerate() {
                        let where_ = format!("{at}.elements[{j}]");
                        if element.get("type").and_then(Value::as_str) != Some("button") {
                            continue;
                        }
                        match element.get("text") {
                            Some(text) => check_text_object(
                                text,
                                &format!("{where_}.text"),
                                &["plain_text"],
                                MAX_BUTTON_TEXT,
                                violations,
                            ),
                            None => violations.push(format!("{where_}: a button needs `text`")),
                        }
                        if let Some(url) = element.get("url") {
                            if url.as_str().is_none_or(|u| u.is_empty() || chars(u) > MAX_URL) {
                                violations.push(format!("{where_}.url is not a string of 1 to {MAX_URL} characters"));
                            }
                        }
                    }
                }
                None => violations.push(format!("{at}: an actions block needs an `elements` array")),
            },
            "image"
                if block.get("alt_text").is_none()
                    || (block.get("image_url").is_none() && block.get("slack_file").is_none()) =>
            {
                violations.push(format!("{at}: an image needs `alt_text` and `image_url` or `slack_file`"));
            }
            _ => {}
        }
    }
}

/// A text object: `{type, text}` with `emoji` only on plain_text and `verbatim` only on mrkdwn.
fn check_text_object(value: &Value, at: &str, types: &[&str], max: usize, violations: &mut Vec<String>) {
    let kind = value.get("type").and_then(Value::as_str);
    match kind {
        Some(kind) if types.contains(&kind) => {}
        _ => violations.push(format!("{at} is not a text object of type {types:?}: {}", short(value))),
    }
    match value.get("text").and_then(Value::as_str) {
        Some("") => violations.push(format!("{at}.text is empty")),
        Some(text) if chars(text) > max => {
            violations.push(format!("{at}.text has {} characters, over {max}", chars(text)))
        }
        Some(_) => {}
        None => violations.push(format!("{at} has no `text` string")),
    }
    if value.get("emoji").is_some() && kind != Some("plain_text") {
        violations.push(format!("{at}: `emoji` belongs to plain_text only"));
    }
    if value.get("verbatim").is_some() && kind != Some("mrkdwn") {
        violations.push(format!("{at}: `verbatim` belongs to mrkdwn only"));
    }
}

/// The stub's own answer against the operation's documented success response.
fn check_response(spec: &Value, api_method: &str, answer: &Value) -> Vec<String> {
    let Some(schema) = spec["paths"][format!("/{api_method}")]["post"]["responses"]["200"]["schema"].as_object() else {
        return vec!["has no documented success schema to check against".to_string()];
    };
    let mut schema = Value::Object(schema.clone());
    schema["definitions"] = spec["definitions"].clone();
    let validator = match jsonschema::draft4::new(&schema) {
        Ok(validator) => validator,
        Err(err) => return vec![format!("cannot be checked: the success schema does not compile: {err}")],
    };
    validator
        .iter_errors(answer)
        .map(|e| format!("does not match the description at {}: {e}", e.instance_path))
        .collect()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `application/x-www-form-urlencoded`, decoded by hand.
fn parse_form(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() && hex(bytes[i + 1]).is_some() && hex(bytes[i + 2]).is_some() => {
                out.push(hex(bytes[i + 1]).unwrap() * 16 + hex(bytes[i + 2]).unwrap());
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn chars(text: &str) -> usize {
    text.chars().count()
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 80 { text } else { format!("{}…", text.chars().take(80).collect::<String>()) }
}
