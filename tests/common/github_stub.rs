//! A stand-in for api.github.com on 127.0.0.1 that holds pull requests in
//! memory and checks every request it receives against GitHub's published
//! REST description (the `@octokit/openapi` npm package, fetched by
//! scripts/test.sh into `$PROMPTLOOP_GITHUB_OPENAPI`): the operation exists,
//! the request is authenticated and carries GitHub's headers, the query names
//! only declared parameters, the JSON body matches the request schema. It also
//! checks its own responses against the response schema, so clients are tested
//! on realistic shapes. Whatever does not conform is a violation; tests assert
//! there are none.
//!
//! Include it with `#[path = "common/github_stub.rs"] mod github_stub;`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::{Value, json};

/// The environment variable scripts/test.sh sets to the description's path.
pub const OPENAPI_ENV: &str = "PROMPTLOOP_GITHUB_OPENAPI";
/// The API version clients must ask for (GitHub answers 400 to one it does not know).
pub const API_VERSION: &str = "2022-11-28";

/// The operations the stub serves: their full descriptions are kept, the rest only by method and path.
const SERVED_PATHS: &[&str] = &[
    "/repos/{owner}/{repo}",
    "/repos/{owner}/{repo}/pulls",
    "/repos/{owner}/{repo}/pulls/{pull_number}",
    "/repos/{owner}/{repo}/issues/{issue_number}/labels",
];
const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

// ---------------------------------------------------------------- the description

/// GitHub's REST description, reduced to what the stub checks.
struct Spec {
    /// Every operation GitHub has: method and templated path.
    known: Vec<(String, Vec<Segment>)>,
    /// The operations the stub serves, fully described.
    served: Vec<Operation>,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Param(String),
}

struct Operation {
    id: String,
    method: String,
    template: String,
    segments: Vec<Segment>,
    query: BTreeMap<String, jsonschema::Validator>,
    request_body: Option<(bool, jsonschema::Validator)>,
    responses: BTreeMap<u16, Option<jsonschema::Validator>>,
    examples: BTreeMap<u16, Value>,
}

fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = std::env::var(OPENAPI_ENV).unwrap_or_else(|_| {
            panic!(
                "{OPENAPI_ENV} is not set: the GitHub stub checks requests against GitHub's REST description. \
                 Run the tests through scripts/test.sh, which fetches it (npm pack @octokit/openapi@23.0.2) into \
                 .promptloop/test-data/github-openapi.json and sets the variable."
            )
        });
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {OPENAPI_ENV}={path}: {e}"));
        let document: Document =
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{path} is not GitHub's OpenAPI JSON: {e}"));
        let mut known = Vec::new();
        let mut served = Vec::new();
        for (template, item) in document.paths {
            let segments = segments(&template);
            match item {
                PathItem::Other(methods) => {
                    for method in methods.into_iter().filter(|m| METHODS.contains(&m.as_str())) {
                        known.push((method.to_uppercase(), segments.clone()));
                    }
                }
                PathItem::Served(item) => {
                    let shared = item.get("parameters").cloned().unwrap_or(json!([]));
                    for (method, op) in item.as_object().unwrap() {
                        if !METHODS.contains(&method.as_str()) {
                            continue;
                        }
                        known.push((method.to_uppercase(), segments.clone()));
                        served.push(operation(&template, method, op, &shared));
                    }
                }
            }
        }
        assert!(!served.is_empty(), "{path} describes none of the operations the GitHub stub serves");
        Spec { known, served }
    })
}

fn operation(template: &str, method: &str, op: &Value, shared: &Value) -> Operation {
    let mut query = BTreeMap::new();
    let params = shared.as_array().unwrap().iter().chain(op["parameters"].as_array().into_iter().flatten());
    for param in params.filter(|p| p["in"] == "query") {
        query.insert(param["name"].as_str().unwrap().to_string(), validator(&param["schema"]));
    }
    let request_body = op.get("requestBody").map(|body| {
        let schema = &body["content"]["application/json"]["schema"];
        (body["required"].as_bool().unwrap_or(false), validator(schema))
    });
    let mut responses = BTreeMap::new();
    let mut examples = BTreeMap::new();
    for (status, response) in op["responses"].as_object().unwrap() {
        let Ok(status) = status.parse::<u16>() else { continue };
        let content = &response["content"]["application/json"];
        responses.insert(status, content.get("schema").map(validator));
        if let Some(example) = content["examples"].as_object().and_then(|e| e.values().next()) {
            examples.insert(status, example["value"].clone());
        }
    }
    Operation {
        id: op["operationId"].as_str().unwrap_or("?").to_string(),
        method: method.to_uppercase(),
        template: template.to_string(),
        segments: segments(template),
        query,
        request_body,
        responses,
        examples,
    }
}

fn segments(template: &str) -> Vec<Segment> {
    template
        .trim_start_matches('/')
        .split('/')
        .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => Segment::Param(name.to_string()),
            None => Segment::Literal(s.to_string()),
        })
        .collect()
}

fn validator(openapi_schema: &Value) -> jsonschema::Validator {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&json_schema(openapi_schema))
        .unwrap_or_else(|e| panic!("GitHub's schema does not compile: {e}"))
}

/// OpenAPI 3.0's `nullable: true` in JSON Schema terms (a null type, a null in the enum).
fn json_schema(schema: &Value) -> Value {
    match schema {
        Value::Array(items) => Value::Array(items.iter().map(json_schema).collect()),
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (key, value) in map {
                match key.as_str() {
                    // Values, not schemas: copy as they are.
                    "example" | "examples" | "default" | "enum" | "required" | "description" | "title" => {
                        out.insert(key.clone(), value.clone());
                    }
                    "nullable" => {}
                    // Property names map to schemas.
                    "properties" | "patternProperties" => {
                        let props = value.as_object().unwrap().iter().map(|(k, v)| (k.clone(), json_schema(v)));
                        out.insert(key.clone(), Value::Object(props.collect()));
                    }
                    _ => {
                        out.insert(key.clone(), json_schema(value));
                    }
                }
            }
            if map.get("nullable") == Some(&Value::Bool(true)) {
                match out.get("type").cloned() {
                    Some(Value::String(t)) => {
                        out.insert("type".into(), json!([t, "null"]));
                        if let Some(Value::Array(values)) = out.get_mut("enum") {
                            values.push(Value::Null);
                        }
                    }
                    _ => return json!({ "anyOf": [Value::Object(out), { "type": "null" }] }),
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// The top level of the description: only `paths` is read, the served ones in full.
struct Document {
    paths: Vec<(String, PathItem)>,
}

enum PathItem {
    Served(Value),
    Other(Vec<String>),
}

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Top;
        impl<'de> Visitor<'de> for Top {
            type Value = Document;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an OpenAPI document")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Document, A::Error> {
                let mut paths = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "paths" {
                        paths = map.next_value_seed(Paths)?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Document { paths })
            }
        }
        deserializer.deserialize_map(Top)
    }
}

struct Paths;

impl<'de> DeserializeSeed<'de> for Paths {
    type Value = Vec<(String, PathItem)>;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Paths {
    type Value = Vec<(String, PathItem)>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("OpenAPI paths")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut paths = Vec::new();
        while let Some(template) = map.next_key::<String>()? {
            let item = if SERVED_PATHS.contains(&template.as_str()) {
                PathItem::Served(map.next_value::<Value>()?)
            } else {
                PathItem::Other(map.next_value::<BTreeMap<String, IgnoredAny>>()?.into_keys().collect())
            };
            paths.push((template, item));
        }
        Ok(paths)
    }
}

/// The templated operation `path` matches, and its parameters.
fn match_path<'a>(segments: &'a [Segment], path: &str) -> Option<HashMap<&'a str, String>> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if parts.len() != segments.len() {
        return None;
    }
    let mut params = HashMap::new();
    for (segment, part) in segments.iter().zip(parts) {
        match segment {
            Segment::Literal(l) if l == part => {}
            Segment::Param(name) if !part.is_empty() => {
                params.insert(name.as_str(), decode(part));
            }
            _ => return None,
        }
    }
    Some(params)
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

// ---------------------------------------------------------------- the stub

/// One request as the stub received it. The Authorization header's value is
/// not among `headers`: `auth_scheme` and `token` hold it apart.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// The path as sent, the API prefix included.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Option<Value>,
    pub headers: Vec<(String, String)>,
    /// `Bearer` or `token`, when an Authorization header came.
    pub auth_scheme: Option<String>,
    pub token: Option<String>,
    /// GitHub's operationId, when the request matched one.
    pub operation: Option<String>,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A pull request as the stub keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StubPull {
    pub owner: String,
    pub repo: String,
    pub number: u64,
    pub title: String,
    pub body: Option<String>,
    pub head: String,
    pub base: String,
    /// `open` or `closed`.
    pub state: String,
    pub labels: Vec<String>,
    pub draft: bool,
    /// How many PATCHes it received.
    pub updates: u32,
}

/// A response to give instead of the real one.
#[derive(Debug, Clone)]
pub struct Fault {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
    /// Only a request with this method (e.g. `POST`) …
    pub method: Option<String>,
    /// … and whose path (after the API prefix) ends with this.
    pub path_suffix: Option<String>,
    /// The request takes effect before the fault is answered (a timeout after the write).
    pub after_effect: bool,
}

impl Fault {
    pub fn new(status: u16, body: Value) -> Self {
        Fault { status, headers: Vec::new(), body, method: None, path_suffix: None, after_effect: false }
    }

    /// The request takes effect (a PR is created, a label added) and then this fault is answered.
    pub fn after_effect(mut self) -> Self {
        self.after_effect = true;
        self
    }

    pub fn header(mut self, name: &str, value: impl ToString) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Applies only to `method` requests whose path ends with `path_suffix` (e.g. `"/pulls"`).
    pub fn on(mut self, method: &str, path_suffix: &str) -> Self {
        self.method = Some(method.to_uppercase());
        self.path_suffix = Some(path_suffix.to_string());
        self
    }

    /// 401 as GitHub sends it for a bad token.
    pub fn bad_credentials() -> Self {
        Fault::new(
            401,
            json!({ "message": "Bad credentials", "documentation_url": "https://docs.github.com/rest", "status": "401" }),
        )
    }

    /// The hourly quota used up, resetting at `reset` (seconds since the epoch).
    pub fn primary_rate_limit(reset: i64) -> Self {
        Fault::new(
            403,
            json!({
                "message": "API rate limit exceeded for installation ID 1.",
                "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
                "status": "403"
            }),
        )
        .header("x-ratelimit-limit", 5000)
        .header("x-ratelimit-remaining", 0)
        .header("x-ratelimit-used", 5000)
        .header("x-ratelimit-reset", reset)
        .header("x-ratelimit-resource", "core")
    }

    /// Too many requests too fast: come back after `retry_after` seconds.
    pub fn secondary_rate_limit(retry_after: u64) -> Self {
        Fault::new(
            403,
            json!({
                "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                "documentation_url": "https://docs.github.com/free-pro-team@latest/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
                "status": "403"
            }),
        )
        .header("retry-after", retry_after)
    }

    /// A 422 Validation Failed with one custom error, e.g. `No commits between main and promptloop/x`.
    pub fn validation(message: &str) -> Self {
        Fault::new(
            422,
            json!({
                "message": "Validation Failed",
                "errors": [{ "resource": "PullRequest", "code": "custom", "message": message }],
                "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request",
                "status": "422"
            }),
        )
    }

    /// A 5xx as GitHub's front end sends it (an HTML page would do too; GitHub sends JSON for the API).
    pub fn server_error(status: u16) -> Self {
        Fault::new(status, json!({ "message": "Server Error" }))
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method)
            && self.path_suffix.as_deref().is_none_or(|s| path.ends_with(s))
    }
}

#[derive(Default)]
struct StubState {
    requests: Vec<RecordedRequest>,
    violations: Vec<String>,
    pulls: Vec<StubPull>,
    next_number: u64,
    faults: Vec<Fault>,
    forbidden: Vec<(String, String)>,
    token: Option<String>,
    no_commits: Vec<String>,
}

pub struct GitHubStub {
    base_url: String,
    state: Arc<Mutex<StubState>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl GitHubStub {
    /// Serves the API at the root, as api.github.com does.
    pub async fn start() -> Self {
        Self::start_with_prefix("").await
    }

    /// Serves the API under `prefix`, as GitHub Enterprise Server does under `/api/v3`.
    pub async fn start_with_prefix(prefix: &str) -> Self {
        spec();
        let prefix = prefix.trim_end_matches('/').to_string();
        let state = Arc::new(Mutex::new(StubState { next_number: 1, ..Default::default() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(handle).with_state((state.clone(), prefix.clone()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    rx.await.ok();
                })
                .await
                .unwrap();
        });
        GitHubStub { base_url: format!("http://{addr}{prefix}"), state, shutdown: Some(tx) }
    }

    /// The API root to configure the client with.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// Everything that did not conform to GitHub's description, one sentence each.
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Requests with this method whose path (prefix included) ends with `suffix`.
    pub fn requests_to(&self, method: &str, suffix: &str) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(|r| r.method == method && r.path.ends_with(suffix)).collect()
    }

    pub fn pulls(&self) -> Vec<StubPull> {
        self.state.lock().unwrap().pulls.clone()
    }

    /// Seeds an open pull request as if someone had opened it; returns its number.
    pub fn add_pull(&self, owner: &str, repo: &str, head: &str, base: &str, title: &str, body: &str) -> u64 {
        let mut state = self.state.lock().unwrap();
        let number = state.next_number;
        state.next_number += 1;
        state.pulls.push(StubPull {
            owner: owner.into(),
            repo: repo.into(),
            number,
            title: title.into(),
            body: Some(body.into()),
            head: head.into(),
            base: base.into(),
            state: "open".into(),
            labels: Vec::new(),
            draft: false,
            updates: 0,
        });
        number
    }

    /// The next matching request gets `status` with these headers and body instead of its answer.
    pub fn fail_next(&self, status: u16, headers: &[(&str, &str)], body: Value) {
        let mut fault = Fault::new(status, body);
        for (k, v) in headers {
            fault = fault.header(k, v);
        }
        self.push_fault(fault);
    }

    /// Queues a fault; faults are used once each, in order, by the first request they match.
    pub fn push_fault(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push(fault);
    }

    /// The token lacks the right for `method` requests under `path_prefix` (after the API prefix):
    /// they get GitHub's 403 with `x-accepted-github-permissions`.
    pub fn forbid(&self, method: &str, path_prefix: &str) {
        self.state.lock().unwrap().forbidden.push((method.to_uppercase(), path_prefix.to_string()));
    }

    /// Only this token is accepted; any other gets 401 Bad credentials.
    pub fn require_token(&self, token: &str) {
        self.state.lock().unwrap().token = Some(token.to_string());
    }

    /// Creating a PR from `head` fails as GitHub does when the branch adds nothing to the base.
    pub fn no_commits_on(&self, head: &str) {
        self.state.lock().unwrap().no_commits.push(head.to_string());
    }
}

impl Drop for GitHubStub {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

type Shared = (Arc<Mutex<StubState>>, String);

async fn handle(State((state, prefix)): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024 * 1024).await.unwrap_or_default();
    let mut state = state.lock().unwrap();
    let stub = &mut *state;
    let method = parts.method.as_str().to_string();
    let full_path = parts.uri.path().to_string();
    let query = parse_query(parts.uri.query().unwrap_or(""));
    let mut violations = Vec::new();

    let (auth_scheme, token) = match parts.headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(value) => match value.split_once(' ') {
            Some((scheme, token)) => (Some(scheme.to_string()), Some(token.to_string())),
            None => (Some(value.to_string()), None),
        },
        None => (None, None),
    };
    let headers = parts
        .headers
        .iter()
        .filter(|(k, _)| k.as_str() != "authorization")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("<binary>").to_string()))
        .collect();
    let body_json = if bytes.is_empty() { None } else { serde_json::from_slice::<Value>(&bytes).ok() };
    let mut record = RecordedRequest {
        method: method.clone(),
        path: full_path.clone(),
        query: query.clone(),
        body: body_json.clone(),
        headers,
        auth_scheme: auth_scheme.clone(),
        token: token.clone(),
        operation: None,
    };
    let what = format!("{method} {full_path}");

    // Where in the API, and which operation.
    let Some(path) = full_path.strip_prefix(&prefix).filter(|p| p.starts_with('/')).map(str::to_string) else {
        violations.push(format!("{what}: outside the API root `{prefix}`"));
        return finish(stub, record, violations, error(404, "Not Found"));
    };
    let spec = spec();
    let served = spec
        .served
        .iter()
        .find_map(|op| (op.method == method).then(|| match_path(&op.segments, &path).map(|p| (op, p))).flatten());
    let Some((op, params)) = served else {
        let known = spec.known.iter().any(|(m, segs)| *m == method && match_path(segs, &path).is_some());
        violations.push(if known {
            format!("{what}: a GitHub operation the stub does not serve")
        } else {
            format!("{what}: no such operation in GitHub's REST API")
        });
        return finish(stub, record, violations, error(404, "Not Found"));
    };
    record.operation = Some(op.id.clone());

    // Headers GitHub needs or recommends.
    match (&auth_scheme, &token) {
        (Some(s), Some(t)) if (s == "Bearer" || s == "token") && !t.is_empty() => {}
        _ => violations.push(format!("{what}: no `Authorization: Bearer <token>` header")),
    }
    if parts.headers.get("user-agent").is_none() {
        violations.push(format!("{what}: no User-Agent header (GitHub rejects requests without one)"));
    }
    let accept = parts.headers.get_all("accept").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>();
    if !accept.iter().any(|a| a.contains("application/vnd.github+json")) {
        violations.push(format!("{what}: Accept is {accept:?}, not application/vnd.github+json"));
    }
    match parts.headers.get("x-github-api-version").and_then(|v| v.to_str().ok()) {
        Some(API_VERSION) => {}
        other => violations.push(format!("{what}: X-GitHub-Api-Version is {other:?}, not {API_VERSION}")),
    }

    // The query: declared names, values of the declared type.
    for (name, value) in &query {
        match op.query.get(name) {
            None => violations.push(format!("{what}: query parameter `{name}` is not one {} declares", op.id)),
            Some(validator) => {
                let candidates = [
                    value.parse::<i64>().map(Value::from).ok(),
                    value.parse::<bool>().map(Value::from).ok(),
                    Some(Value::String(value.clone())),
                ];
                if !candidates.iter().flatten().any(|v| validator.is_valid(v)) {
                    violations.push(format!("{what}: query parameter `{name}={value}` does not fit its schema"));
                }
            }
        }
    }

    // The body.
    match (&op.request_body, bytes.is_empty()) {
        (Some((true, _)), true) => violations.push(format!("{what}: {} requires a JSON body", op.id)),
        (None, false) => violations.push(format!("{what}: {} takes no body", op.id)),
        (Some((_, validator)), false) => {
            let content_type = parts.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
            if !content_type.starts_with("application/json") {
                violations.push(format!("{what}: Content-Type is `{content_type}`, not application/json"));
            }
            match &body_json {
                None => violations.push(format!("{what}: the body is not JSON")),
                Some(body) => {
                    for e in validator.iter_errors(body) {
                        violations.push(format!("{what}: request body at `{}`: {e}", e.instance_path));
                    }
                }
            }
        }
        (_, true) => {}
    }

    // Refusals before the operation runs.
    if let Some(expected) = &stub.token
        && token.as_deref() != Some(expected.as_str())
    {
        return finish(stub, record, violations, checked(op, Fault::bad_credentials()));
    }
    if stub.forbidden.iter().any(|(m, p)| *m == method && path.starts_with(p.as_str())) {
        let accepted =
            if path.contains("/labels") { "issues=write; pull_requests=write" } else { "pull_requests=write" };
        let fault = Fault::new(
            403,
            json!({
                "message": "Resource not accessible by personal access token",
                "documentation_url": "https://docs.github.com/rest",
                "status": "403"
            }),
        )
        .header("x-accepted-github-permissions", accepted);
        return finish(stub, record, violations, checked(op, fault));
    }
    let fault = stub.faults.iter().position(|f| f.matches(&method, &path)).map(|i| stub.faults.remove(i));
    if let Some(fault) = fault.clone().filter(|f| !f.after_effect) {
        let response = checked(op, fault);
        return finish(stub, record, violations, response);
    }

    let owner = params.get("owner").cloned().unwrap_or_default();
    let repo = params.get("repo").cloned().unwrap_or_default();
    let body = body_json.unwrap_or(Value::Null);
    let (status, value) = match (op.id.as_str(), params.get("pull_number").or(params.get("issue_number"))) {
        ("repos/get", _) => (200, render_repo(op, &owner, &repo)),
        ("pulls/list", _) => list_pulls(stub, &owner, &repo, &query),
        ("pulls/create", _) => create_pull(stub, &owner, &repo, &body),
        ("pulls/get", Some(n)) => match find_pull(stub, &owner, &repo, n) {
            Some(i) => (200, render_pull(&stub.pulls[i], true)),
            None => (404, not_found()),
        },
        ("pulls/update", Some(n)) => update_pull(stub, &owner, &repo, n, &body),
        ("issues/list-labels-on-issue", Some(n)) => match find_pull(stub, &owner, &repo, n) {
            Some(i) => (200, render_labels(&stub.pulls[i])),
            None => (404, not_found()),
        },
        ("issues/add-labels", Some(n)) => add_labels(stub, &owner, &repo, n, &body),
        (id, _) => {
            violations.push(format!("{what}: the stub does not implement {id}"));
            (501, json!({ "message": format!("{id} is not implemented by the stub") }))
        }
    };
    if let Some(fault) = fault {
        let response = checked(op, fault);
        return finish(stub, record, violations, response);
    }
    let location = value.get("url").and_then(Value::as_str).map(str::to_string);
    let mut response = Fault::new(status, value);
    if status == 201
        && let Some(url) = location
    {
        response = response.header("location", url);
    }
    let response = checked(op, response);
    finish(stub, record, violations, response)
}

/// A response, checked against the operation's schema for its status.
struct Checked {
    fault: Fault,
    violations: Vec<String>,
}

fn checked(op: &Operation, fault: Fault) -> Checked {
    let mut violations = Vec::new();
    match op.responses.get(&fault.status) {
        Some(Some(validator)) => {
            for e in validator.iter_errors(&fault.body) {
                violations.push(format!(
                    "the stub's own {} response to {} does not fit GitHub's schema at `{}`: {e}",
                    fault.status, op.id, e.instance_path
                ));
            }
        }
        Some(None) => {}
        // GitHub documents only some statuses per operation; 401, 429 and 5xx can come from any.
        None if fault.status < 300 => {
            violations.push(format!("the stub answered {} to {}, which GitHub does not document", fault.status, op.id))
        }
        None => {}
    }
    Checked { fault, violations }
}

fn finish(stub: &mut StubState, record: RecordedRequest, mut violations: Vec<String>, response: Checked) -> Response {
    violations.extend(response.violations);
    stub.violations.extend(violations);
    stub.requests.push(record);
    let fault = response.fault;
    let mut builder = Response::builder().status(StatusCode::from_u16(fault.status).unwrap());
    let headers = builder.headers_mut().unwrap();
    let now = chrono::Utc::now().timestamp();
    let defaults: [(&str, String); 7] = [
        ("content-type", "application/json; charset=utf-8".into()),
        ("x-github-api-version-selected", API_VERSION.into()),
        ("x-github-media-type", "github.v3; format=json".into()),
        ("x-ratelimit-limit", "5000".into()),
        ("x-ratelimit-remaining", "4999".into()),
        ("x-ratelimit-reset", (now + 3600).to_string()),
        ("x-ratelimit-resource", "core".into()),
    ];
    set_headers(headers, defaults.iter().map(|(k, v)| (k.to_string(), v.clone())));
    set_headers(headers, fault.headers.into_iter());
    builder.body(Body::from(fault.body.to_string())).unwrap()
}

fn set_headers(headers: &mut HeaderMap, pairs: impl Iterator<Item = (String, String)>) {
    for (k, v) in pairs {
        headers.insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(&v).unwrap());
    }
}

fn error(status: u16, message: &str) -> Checked {
    Checked {
        fault: Fault::new(status, json!({ "message": message, "documentation_url": "https://docs.github.com/rest" })),
        violations: Vec::new(),
    }
}

fn not_found() -> Value {
    json!({ "message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404" })
}

fn find_pull(stub: &StubState, owner: &str, repo: &str, number: &str) -> Option<usize> {
    let number: u64 = number.parse().ok()?;
    stub.pulls.iter().position(|p| p.owner == owner && p.repo == repo && p.number == number)
}

fn list_pulls(stub: &StubState, owner: &str, repo: &str, query: &[(String, String)]) -> (u16, Value) {
    let get = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let state = get("state").unwrap_or("open");
    let mut pulls: Vec<&StubPull> = stub
        .pulls
        .iter()
        .filter(|p| p.owner == owner && p.repo == repo)
        .filter(|p| state == "all" || p.state == state)
        .filter(|p| get("base").is_none_or(|b| p.base == b))
        .filter(|p| {
            // `user:ref`; GitHub ignores a head filter without the user part.
            get("head").and_then(|h| h.split_once(':')).is_none_or(|(user, branch)| user == p.owner && branch == p.head)
        })
        .collect();
    // Newest first unless asked otherwise, as GitHub does.
    pulls.sort_by_key(|p| p.number);
    if get("direction") != Some("asc") {
        pulls.reverse();
    }
    let per_page = get("per_page").and_then(|v| v.parse::<usize>().ok()).unwrap_or(30).min(100);
    let page = get("page").and_then(|v| v.parse::<usize>().ok()).unwrap_or(1).max(1);
    let items: Vec<Value> =
        pulls.iter().skip((page - 1) * per_page).take(per_page).map(|p| render_pull(p, false)).collect();
    (200, Value::Array(items))
}

fn validation_failed(errors: Value) -> (u16, Value) {
    (
        422,
        json!({
            "message": "Validation Failed",
            "errors": errors,
            "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request",
            "status": "422"
        }),
    )
}

fn create_pull(stub: &mut StubState, owner: &str, repo: &str, body: &Value) -> (u16, Value) {
    let field = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_string);
    let (Some(title), Some(head), Some(base)) = (field("title"), field("head"), field("base")) else {
        return validation_failed(json!([{ "resource": "PullRequest", "field": "title", "code": "missing_field" }]));
    };
    let head = head.split_once(':').map(|(_, b)| b.to_string()).unwrap_or(head);
    if stub
        .pulls
        .iter()
        .any(|p| p.owner == owner && p.repo == repo && p.state == "open" && p.head == head && p.base == base)
    {
        return validation_failed(json!([{
            "resource": "PullRequest", "code": "custom",
            "message": format!("A pull request already exists for {owner}:{head}.")
        }]));
    }
    if head == base || stub.no_commits.contains(&head) {
        return validation_failed(json!([{
            "resource": "PullRequest", "code": "custom",
            "message": format!("No commits between {base} and {head}")
        }]));
    }
    let number = stub.next_number;
    stub.next_number += 1;
    let pull = StubPull {
        owner: owner.into(),
        repo: repo.into(),
        number,
        title,
        body: field("body"),
        head,
        base,
        state: "open".into(),
        labels: Vec::new(),
        draft: body.get("draft").and_then(Value::as_bool).unwrap_or(false),
        updates: 0,
    };
    let rendered = render_pull(&pull, true);
    stub.pulls.push(pull);
    (201, rendered)
}

fn update_pull(stub: &mut StubState, owner: &str, repo: &str, number: &str, body: &Value) -> (u16, Value) {
    let Some(i) = find_pull(stub, owner, repo, number) else { return (404, not_found()) };
    let pull = &mut stub.pulls[i];
    if let Some(title) = body.get("title").and_then(Value::as_str) {
        pull.title = title.into();
    }
    if let Some(text) = body.get("body").and_then(Value::as_str) {
        pull.body = Some(text.into());
    }
    if let Some(base) = body.get("base").and_then(Value::as_str) {
        pull.base = base.into();
    }
    if let Some(state) = body.get("state").and_then(Value::as_str) {
        pull.state = state.into();
    }
    pull.updates += 1;
    (200, render_pull(pull, true))
}

fn add_labels(stub: &mut StubState, owner: &str, repo: &str, number: &str, body: &Value) -> (u16, Value) {
    let Some(i) = find_pull(stub, owner, repo, number) else { return (404, not_found()) };
    let names: Vec<String> = match body.get("labels").and_then(Value::as_array) {
        Some(labels) => labels
            .iter()
            .filter_map(|l| l.as_str().map(str::to_string).or_else(|| l.get("name")?.as_str().map(str::to_string)))
            .collect(),
        None => Vec::new(),
    };
    let pull = &mut stub.pulls[i];
    for name in names {
        if !pull.labels.iter().any(|l| l.eq_ignore_ascii_case(&name)) {
            pull.labels.push(name);
        }
    }
    (200, render_labels(pull))
}

// ---------------------------------------------------------------- responses shaped like GitHub's

/// GitHub's own example for an operation's response, with its `octocat/Hello-World` renamed.
fn example(operation_id: &str, status: u16, owner: &str, repo: &str) -> Value {
    let op = spec().served.iter().find(|op| op.id == operation_id).expect("a served operation");
    let value = op
        .examples
        .get(&status)
        .unwrap_or_else(|| panic!("GitHub's description has no {status} example for {operation_id}"));
    let text = value.to_string().replace("octocat/Hello-World", &format!("{owner}/{repo}"));
    serde_json::from_str(&text).unwrap()
}

fn render_repo(_op: &Operation, owner: &str, repo: &str) -> Value {
    let mut value = example("repos/get", 200, owner, repo);
    value["name"] = json!(repo);
    value["full_name"] = json!(format!("{owner}/{repo}"));
    value["owner"]["login"] = json!(owner);
    value["default_branch"] = json!("main");
    value["html_url"] = json!(format!("https://github.com/{owner}/{repo}"));
    value
}

fn render_labels(pull: &StubPull) -> Value {
    Value::Array(
        pull.labels
            .iter()
            .enumerate()
            .map(|(i, name)| {
                json!({
                    "id": 208045946 + i as u64,
                    "node_id": format!("LA_kwDO{i:08}"),
                    "url": format!("https://api.github.com/repos/{}/{}/labels/{}", pull.owner, pull.repo, name.replace(' ', "%20")),
                    "name": name,
                    // GitHub sends null for a label without one; the list's schema wants a string.
                    "description": "",
                    "color": "ededed",
                    "default": false
                })
            })
            .collect(),
    )
}

/// A pull request as GitHub returns it: the full object (get, create, update) or the list item.
fn render_pull(pull: &StubPull, full: bool) -> Value {
    let (owner, repo, n) = (&pull.owner, &pull.repo, pull.number);
    let mut value = if full {
        example("pulls/create", 201, owner, repo)
    } else {
        example("pulls/list", 200, owner, repo).as_array().unwrap()[0].clone()
    };
    let text = value.to_string().replace("/1347", &format!("/{n}"));
    value = serde_json::from_str(&text).unwrap();
    let bot = {
        let mut user = value["user"].clone();
        user["login"] = json!("github-actions[bot]");
        user["id"] = json!(41898282);
        user["type"] = json!("Bot");
        user
    };
    let time = "2025-01-03T06:00:00Z";
    let fields = json!({
        "id": 1_000_000 + n,
        "node_id": format!("PR_kwDO{n:08}"),
        "number": n,
        "state": pull.state,
        "locked": false,
        "active_lock_reason": null,
        "title": pull.title,
        "body": pull.body,
        "user": bot,
        "labels": render_labels(pull),
        "milestone": null,
        "assignee": null,
        "assignees": [],
        "requested_reviewers": [],
        "requested_teams": [],
        "created_at": time,
        "updated_at": time,
        "closed_at": null,
        "merged_at": null,
        "merge_commit_sha": null,
        "draft": pull.draft,
        "auto_merge": null,
        "author_association": "CONTRIBUTOR",
        "html_url": format!("https://github.com/{owner}/{repo}/pull/{n}"),
    });
    for (k, v) in fields.as_object().unwrap() {
        value[k] = v.clone();
    }
    for (side, branch) in [("head", &pull.head), ("base", &pull.base)] {
        value[side]["ref"] = json!(branch);
        value[side]["label"] = json!(format!("{owner}:{branch}"));
    }
    if full {
        for (k, v) in json!({
            "merged": false, "mergeable": true, "rebaseable": true, "mergeable_state": "clean",
            "merged_by": null, "comments": 0, "review_comments": 0, "maintainer_can_modify": false,
            "commits": 1, "additions": 3, "deletions": 1, "changed_files": 3
        })
        .as_object()
        .unwrap()
        {
            value[k] = v.clone();
        }
    }
    value
}

impl fmt::Debug for GitHubStub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHubStub").field("base_url", &self.base_url).finish()
    }
}
