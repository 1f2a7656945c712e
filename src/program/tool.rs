//! Tools a ReAct stage may call, declared in the pipeline as `[tools.<name>]`.
//!
//! A `command` tool is a program run without a shell from the pipeline's root,
//! in a process group of its own that is killed at its time limit: it reads
//! the JSON arguments object on stdin and prints one JSON value on stdout. An
//! `http` tool gets the arguments as the JSON body of a POST and answers 2xx
//! with JSON, with a bearer token read from `token_env` at call time when one
//! is declared.
//!
//! Every call ends in a [`ToolReply`]: the result rendered as compact JSON
//! (at most [`MAX_OBSERVATION_CHARS`]), or `ok = false` with the reason — the
//! arguments do not match the declaration, the tool crashed, overran its time
//! limit, printed something that is not JSON, the request failed or was
//! refused. A failing tool never fails the run; the agent reads the reason.
//!
//! Replies are recorded in a [`ToolCache`] so a rerun sees the same
//! observations. The bearer token is never part of a key, a reply or a
//! message: replies from an http tool have it masked before anyone sees them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::child::{self, exit_text, stderr_tail};
use crate::keyed::KeyedStore;

/// The name the agent uses to end its loop; no tool may take it.
pub const FINISH: &str = "finish";
/// A tool's time limit unless `timeout_secs` says otherwise.
pub const DEFAULT_TIMEOUT_SECS: f64 = 10.0;
/// The longest time limit a tool may have.
pub const MAX_TIMEOUT_SECS: f64 = 600.0;
/// The most characters of a result the agent sees; a longer one is cut and
/// says how long it was.
pub const MAX_OBSERVATION_CHARS: usize = 4000;
/// The most bytes read from a command's stdout or an http tool's body.
pub const MAX_RESULT_BYTES: usize = 1024 * 1024;
/// Characters of a refusing http body a reason quotes.
const REFUSAL_BODY_CHARS: usize = 300;
/// The longest tool name.
const MAX_NAME_LEN: usize = 64;
/// Part of every cache key: changing how keys are computed (or what a cached
/// reply means) bumps this, and old entries simply stop matching.
const KEY_FORMAT: &str = "promptloop-tool-cache/v1";

// ---- declaration --------------------------------------------------------------

/// How a tool runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolKind {
    Command,
    Http,
}

/// One `[tools.<name>]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTool {
    pub kind: ToolKind,
    pub description: String,
    #[serde(default)]
    pub args: IndexMap<String, RawArg>,
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub token_env: Option<String>,
}

/// One argument as written: `{ type = "string", description = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArg {
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default)]
    pub description: String,
}

/// The type of a tool argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArgType {
    String,
    Int,
    Float,
    Bool,
}

impl ArgType {
    fn parse(name: &str) -> Option<ArgType> {
        match name.trim() {
            "string" => Some(ArgType::String),
            "int" => Some(ArgType::Int),
            "float" => Some(ArgType::Float),
            "bool" => Some(ArgType::Bool),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ArgType::String => "string",
            ArgType::Int => "int",
            ArgType::Float => "float",
            ArgType::Bool => "bool",
        }
    }

    /// The JSON Schema of a value of this type.
    pub fn json_schema(self) -> Value {
        match self {
            ArgType::String => json!({"type": "string"}),
            ArgType::Int => json!({"type": "integer"}),
            ArgType::Float => json!({"type": "number"}),
            ArgType::Bool => json!({"type": "boolean"}),
        }
    }

    /// The value as this type: integers written as `3.0` become `3`, any
    /// other mismatch is refused.
    fn check(self, value: &Value) -> Option<Value> {
        match (self, value) {
            (ArgType::String, Value::String(_)) | (ArgType::Bool, Value::Bool(_)) => Some(value.clone()),
            (ArgType::Float, Value::Number(_)) => Some(value.clone()),
            (ArgType::Int, Value::Number(n)) if n.is_i64() || n.is_u64() => Some(value.clone()),
            (ArgType::Int, Value::Number(n)) => {
                n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| Value::from(f as i64))
            }
            _ => None,
        }
    }
}

/// A declared argument. Every declared argument is required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolArg {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ArgType,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// Where a tool runs.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolTarget {
    /// `command` as declared (`command[0]` a program on `PATH`, or a path;
    /// relative with a slash resolves against `dir`), run in `dir`.
    Command { command: Vec<String>, dir: PathBuf },
    /// POSTed to `url`; `token_env` names the variable holding a bearer token.
    Http { url: String, token_env: Option<String> },
}

/// A validated tool.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub args: Vec<ToolArg>,
    pub timeout: Duration,
    pub target: ToolTarget,
}

/// Whether `name` can name a tool: 1 to 64 lowercase letters, digits, `_`
/// and `-`, starting with a letter.
pub fn is_tool_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn is_arg_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_env_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl ToolSpec {
    /// Validates `[tools.<name>]`. `root` is the pipeline's root directory,
    /// against which a relative program path resolves. Messages name the key
    /// (`kind`, `args.city.type`, ...) and the fix; the caller prefixes
    /// `tools.<name>`.
    pub fn from_raw(name: &str, raw: RawTool, root: &Path) -> Result<ToolSpec, String> {
        if name == FINISH {
            return Err("`finish` is reserved: the agent calls it to end its loop; give the tool another name".into());
        }
        if !is_tool_name(name) {
            return Err(format!(
                "{:?} is not a usable tool name: up to {MAX_NAME_LEN} lowercase letters, digits, `_` and `-`, starting with a letter",
                name.chars().take(80).collect::<String>()
            ));
        }
        let description = raw.description.trim().to_string();
        if description.is_empty() {
            return Err(
                "description: is empty; say what the tool does and what it returns (the agent chooses tools by it)"
                    .into(),
            );
        }
        let mut args = Vec::new();
        for (arg, declared) in raw.args {
            if !is_arg_name(&arg) {
                return Err(format!(
                    "args.{arg}: not a usable argument name; use letters, digits and `_`, starting with a letter or `_`"
                ));
            }
            let ty = ArgType::parse(&declared.ty).ok_or_else(|| {
                format!(
                    "args.{arg}.type: unknown type {:?}; use one of \"string\", \"int\", \"float\", \"bool\"",
                    declared.ty
                )
            })?;
            args.push(ToolArg { name: arg, ty, description: declared.description.trim().to_string() });
        }
        let timeout_secs = raw.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if !(timeout_secs > 0.0 && timeout_secs <= MAX_TIMEOUT_SECS) {
            return Err(format!(
                "timeout_secs: {timeout_secs} is out of range; give seconds above 0 and at most {MAX_TIMEOUT_SECS}"
            ));
        }
        let timeout = Duration::from_secs_f64(timeout_secs);
        let target = match raw.kind {
            ToolKind::Command => {
                if raw.url.is_some() {
                    return Err("url: only an `http` tool has a url; a `command` tool has `command = [...]`".into());
                }
                if raw.token_env.is_some() {
                    return Err("token_env: only an `http` tool sends a token; remove it".into());
                }
                let command = raw.command.ok_or_else(|| {
                    "command: missing; a `command` tool needs `command = [\"program\", \"arg\", ...]`".to_string()
                })?;
                if command.first().is_none_or(|p| p.trim().is_empty()) {
                    return Err("command: the first item must be the program to run, e.g. [\"tools/search.py\"]".into());
                }
                ToolTarget::Command { command, dir: root.to_path_buf() }
            }
            ToolKind::Http => {
                if raw.command.is_some() {
                    return Err("command: only a `command` tool runs a program; an `http` tool has `url`".into());
                }
                let url = raw
                    .url
                    .ok_or_else(|| "url: missing; an `http` tool needs `url = \"https://host/path\"`".to_string())?;
                let parsed = reqwest::Url::parse(&url)
                    .map_err(|e| format!("url: {url:?} is not a valid URL ({e}); write it as https://host/path"))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(format!("url: the scheme `{}` is not supported; use http or https", parsed.scheme()));
                }
                if !parsed.username().is_empty() || parsed.password().is_some() {
                    return Err(
                        "url: holds credentials; put a bearer token in an environment variable and name it in `token_env`"
                            .into(),
                    );
                }
                if let Some(var) = &raw.token_env
                    && !is_env_name(var)
                {
                    return Err(format!(
                        "token_env: {var:?} is not an environment variable name; give the variable's name (e.g. \"SEARCH_TOKEN\"), not the token"
                    ));
                }
                ToolTarget::Http { url, token_env: raw.token_env }
            }
        };
        Ok(ToolSpec { name: name.to_string(), description, args, timeout, target })
    }

    /// The JSON Schema of the arguments object.
    pub fn args_schema(&self) -> Value {
        let properties: Map<String, Value> = self
            .args
            .iter()
            .map(|a| {
                let mut schema = a.ty.json_schema();
                if !a.description.is_empty() {
                    schema["description"] = Value::String(a.description.clone());
                }
                (a.name.clone(), schema)
            })
            .collect();
        json!({"type": "object", "properties": properties})
    }

    /// The declaration that decides what the tool answers, as JSON: what the
    /// cache key covers. It holds the command as declared (not resolved
    /// against the root, so a checkout elsewhere shares the cache) and the
    /// name of the token's variable, never the token.
    fn fingerprint(&self) -> Value {
        let args: Vec<Value> = self.args.iter().map(|a| json!({"name": a.name, "type": a.ty.name()})).collect();
        let target = match &self.target {
            ToolTarget::Command { command, .. } => json!({"kind": "command", "command": command}),
            ToolTarget::Http { url, token_env } => json!({"kind": "http", "url": url, "token_env": token_env}),
        };
        json!({
            "name": self.name,
            "description": self.description,
            "args": args,
            "timeout_secs": self.timeout.as_secs_f64(),
            "target": target,
        })
    }

    /// The arguments checked against the declaration: an object with every
    /// declared argument, of its type, and nothing else.
    pub fn check_args(&self, args: &Value) -> Result<Map<String, Value>, String> {
        let empty = Map::new();
        let given = match args {
            Value::Object(given) => given,
            Value::Null => &empty,
            other => return Err(format!("the arguments must be a JSON object, got {}", clip(&other.to_string(), 80))),
        };
        let mut checked = Map::new();
        for name in given.keys() {
            if !self.args.iter().any(|a| &a.name == name) {
                return Err(format!("unknown argument `{}`; {} takes {}", clip(name, 64), self.name, self.args_list()));
            }
        }
        for arg in &self.args {
            let Some(value) = given.get(&arg.name) else {
                return Err(format!("missing argument `{}`; {} takes {}", arg.name, self.name, self.args_list()));
            };
            let value = arg.ty.check(value).ok_or_else(|| {
                format!("argument `{}` must be {}, got {}", arg.name, arg.ty.name(), clip(&value.to_string(), 80))
            })?;
            checked.insert(arg.name.clone(), value);
        }
        Ok(checked)
    }

    fn args_list(&self) -> String {
        if self.args.is_empty() {
            return "no arguments".into();
        }
        let list: Vec<String> = self.args.iter().map(|a| format!("`{}` ({})", a.name, a.ty.name())).collect();
        list.join(", ")
    }
}

// ---- calling ------------------------------------------------------------------

/// What a tool call gave the agent to observe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolReply {
    /// The tool answered with JSON.
    pub ok: bool,
    /// The result as compact JSON (a string result as its text), cut at
    /// [`MAX_OBSERVATION_CHARS`]; or why there is none.
    pub text: String,
}

impl ToolReply {
    fn failed(reason: impl Into<String>) -> Self {
        Self { ok: false, text: reason.into() }
    }
}

/// One call through [`Tools::call`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub reply: ToolReply,
    /// The reply came from the [`ToolCache`]; the tool did not run.
    pub cached: bool,
}

/// How a call ended, before it is cached: `transient` failures (a time
/// limit, a tool that could not be started or reached, a missing token) are
/// not recorded, so a rerun tries again.
struct Outcome {
    reply: ToolReply,
    transient: bool,
}

impl Outcome {
    fn answer(reply: ToolReply) -> Self {
        Self { reply, transient: false }
    }

    fn transient(reason: String) -> Self {
        Self { reply: ToolReply::failed(reason), transient: true }
    }
}

/// The tools a stage may call, and the cache their replies are kept in.
#[derive(Debug, Default)]
pub struct Tools {
    pub specs: Vec<ToolSpec>,
    pub cache: Option<ToolCache>,
}

impl Tools {
    /// The tools, refusing two whose names the agent could not tell apart
    /// (`a-b` and `a_b` read the same when a reply is parsed).
    pub fn new(specs: Vec<ToolSpec>, cache: Option<ToolCache>) -> Result<Tools, String> {
        for (i, spec) in specs.iter().enumerate() {
            if spec.name == FINISH {
                return Err("the tool name `finish` is reserved".into());
            }
            if let Some(other) = specs[..i].iter().find(|o| o.name.replace('-', "_") == spec.name.replace('-', "_")) {
                return Err(format!(
                    "the tools `{}` and `{}` differ only in `-` and `_`; rename one so the agent can tell them apart",
                    other.name, spec.name
                ));
            }
        }
        Ok(Tools { specs, cache })
    }

    pub fn get(&self, name: &str) -> Option<&ToolSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.specs.iter().map(|s| s.name.as_str()).collect()
    }

    /// Calls the tool `name` with `args`. Never fails: whatever goes wrong is
    /// the reply's reason. Arguments are checked before anything runs; a
    /// reply already in the cache is returned without running the tool.
    pub async fn call(&self, name: &str, args: &Value) -> ToolCall {
        let Some(spec) = self.get(name) else {
            let reason =
                format!("there is no tool named `{}`; the tools are: {}", clip(name, 64), self.names().join(", "));
            return ToolCall { reply: ToolReply::failed(reason), cached: false };
        };
        let args = match spec.check_args(args) {
            Ok(args) => Value::Object(args),
            Err(reason) => return ToolCall { reply: ToolReply::failed(reason), cached: false },
        };
        let key = self.cache.as_ref().map(|_| tool_key(spec, &args));
        if let (Some(cache), Some(key)) = (&self.cache, &key)
            && let Some(reply) = cache.get(key)
        {
            return ToolCall { reply, cached: true };
        }
        let outcome = match &spec.target {
            ToolTarget::Command { command, dir } => run_command(spec, command, dir, &args).await,
            ToolTarget::Http { url, token_env } => run_http(spec, url, token_env.as_deref(), &args).await,
        };
        if !outcome.transient
            && let (Some(cache), Some(key)) = (&self.cache, &key)
        {
            cache.put(key, &outcome.reply);
        }
        ToolCall { reply: outcome.reply, cached: false }
    }
}

async fn run_command(spec: &ToolSpec, command: &[String], dir: &Path, args: &Value) -> Outcome {
    let body = serde_json::to_vec(args).unwrap_or_default();
    let finished = match child::run(command, dir, body, spec.timeout, MAX_RESULT_BYTES).await {
        Ok(finished) => finished,
        Err(child::Failure::Start(reason) | child::Failure::Wait(reason)) => return Outcome::transient(reason),
        Err(child::Failure::TimedOut) => {
            return Outcome::transient(format!(
                "stopped at its time limit of {}s: it had not finished, so it and the processes it started were killed",
                spec.timeout.as_secs_f64()
            ));
        }
    };
    if !finished.status.success() {
        return Outcome::answer(ToolReply::failed(format!(
            "{}{}",
            exit_text(&finished.status),
            stderr_tail(&finished.stderr)
        )));
    }
    let reply = match parse_result(&finished.stdout) {
        Ok(value) => ToolReply { ok: true, text: render_result(&value) },
        Err(e) => ToolReply::failed(format!("{e}{}", stderr_tail(&finished.stderr))),
    };
    Outcome::answer(reply)
}

/// One JSON value: the whole of stdout, or its last non-empty line (a tool
/// may log before its result). Never quotes stdout.
fn parse_result(stdout: &[u8]) -> Result<Value, String> {
    let text = String::from_utf8_lossy(stdout);
    if text.trim().is_empty() {
        return Err("printed nothing on stdout; a tool must print one JSON value".into());
    }
    if stdout.len() >= MAX_RESULT_BYTES {
        return Err(format!("printed more than {MAX_RESULT_BYTES} bytes on stdout; a tool must print one JSON value"));
    }
    serde_json::from_str(text.trim())
        .or_else(|first| {
            text.lines().rev().find(|l| !l.trim().is_empty()).map_or(Err(first), |l| serde_json::from_str(l.trim()))
        })
        .map_err(|e| {
            format!(
                "printed {} bytes on stdout that are not JSON ({e}); a tool must print one JSON value",
                stdout.len()
            )
        })
}

async fn run_http(spec: &ToolSpec, url: &str, token_env: Option<&str>, args: &Value) -> Outcome {
    let token = match token_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(token) if !token.trim().is_empty() => Some(token.trim().to_string()),
            _ => {
                return Outcome::transient(format!(
                    "the environment variable {var} (token_env) is not set; set it to the bearer token"
                ));
            }
        },
    };
    let outcome = tokio::time::timeout(spec.timeout, post(url, token.as_deref(), args)).await.unwrap_or_else(|_| {
        Outcome::transient(format!(
            "stopped at its time limit of {}s: {url} had not answered",
            spec.timeout.as_secs_f64()
        ))
    });
    // Whatever the endpoint echoed, the token stays out of replies and the cache.
    match token {
        Some(token) => {
            Outcome { reply: ToolReply { text: mask(&outcome.reply.text, &token), ..outcome.reply }, ..outcome }
        }
        None => outcome,
    }
}

async fn post(url: &str, token: Option<&str>, args: &Value) -> Outcome {
    // A client per call: tool calls are few, and a client's pooled
    // connections must not outlive the runtime that opened them.
    let client = match reqwest::Client::builder().user_agent(concat!("promptloop/", env!("CARGO_PKG_VERSION"))).build()
    {
        Ok(client) => client,
        Err(e) => return Outcome::transient(format!("cannot set up the HTTP client: {}", describe(e))),
    };
    let mut request = client.post(url).header(reqwest::header::ACCEPT, "application/json").json(args);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(e) => return Outcome::transient(format!("POST {url} failed: {}", describe(e))),
    };
    let status = response.status();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_RESULT_BYTES {
                    return Outcome::answer(ToolReply::failed(format!(
                        "answered HTTP {status} with more than {MAX_RESULT_BYTES} bytes; a tool must answer one JSON value"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Outcome::transient(format!("POST {url}: reading the answer failed: {}", describe(e))),
        }
    }
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let quoted = if text.is_empty() { String::new() } else { format!(": {}", clip(&text, REFUSAL_BODY_CHARS)) };
        return Outcome::answer(ToolReply::failed(format!("answered HTTP {status}{quoted}")));
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(value) => Outcome::answer(ToolReply { ok: true, text: render_result(&value) }),
        Err(e) => Outcome::answer(ToolReply::failed(format!(
            "answered HTTP {status} with {} bytes that are not JSON ({e}); a tool must answer one JSON value",
            body.len()
        ))),
    }
}

/// An error of the HTTP client with its causes, e.g. `error sending request
/// (connection refused)`.
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(&format!(" ({cause_text})"));
        }
        source = cause.source();
    }
    text
}

/// `text` with every occurrence of `secret` masked.
fn mask(text: &str, secret: &str) -> String {
    if secret.is_empty() { text.to_string() } else { text.replace(secret, "[token]") }
}

/// A result as the agent sees it: compact JSON (a string as its text), cut at
/// [`MAX_OBSERVATION_CHARS`] with its full length said.
pub fn render_result(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let count = text.chars().count();
    if count <= MAX_OBSERVATION_CHARS {
        return text;
    }
    let kept: String = text.chars().take(MAX_OBSERVATION_CHARS).collect();
    format!("{kept}… [cut: the result is {count} characters; the first {MAX_OBSERVATION_CHARS} are shown]")
}

fn clip(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

// ---- cache --------------------------------------------------------------------

/// The key of a call: SHA-256 over the tool's declaration (without the
/// root directory, and never a token) and its checked arguments, both as
/// canonical JSON (object keys sorted at every depth).
pub fn tool_key(spec: &ToolSpec, args: &Value) -> String {
    let value = json!({"tool": spec.fingerprint(), "args": args});
    let mut hasher = Sha256::new();
    hasher.update(KEY_FORMAT.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonicalize(value).to_string().as_bytes());
    hex::encode(hasher.finalize())
}

fn canonicalize(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, canonicalize(v))).collect::<Map<_, _>>())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonicalize).collect()),
        other => other,
    }
}

/// Tool replies already observed, by [`tool_key`] (SQLite, WAL mode, one
/// transaction per `put`). A row that cannot be read back is a miss.
#[derive(Debug)]
pub struct ToolCache {
    store: KeyedStore,
}

impl ToolCache {
    /// Opens (creating it and its directory if needed) the cache at `path`,
    /// e.g. `.promptloop/tools.sqlite`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(Self { store: KeyedStore::open(path, "tool_replies", "reply", "tool cache")? })
    }

    /// The reply recorded under `key`, if there is a readable one.
    pub fn get(&self, key: &str) -> Option<ToolReply> {
        self.store.get(key)
    }

    /// Records `reply` under `key`. A failed write is logged and otherwise
    /// ignored: the cache only saves work.
    pub fn put(&self, key: &str, reply: &ToolReply) {
        self.store.put(key, reply)
    }

    /// How many replies the cache holds (0 if it cannot be read).
    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(toml_text: &str) -> RawTool {
        toml::from_str(toml_text).unwrap()
    }

    fn weather() -> ToolSpec {
        let raw = raw(r#"
kind = "command"
description = "Current weather for a city."
command = ["tools/weather.py"]
args = { city = { type = "string", description = "the city" }, days = { type = "int" } }
"#);
        ToolSpec::from_raw("weather", raw, Path::new("/repo")).unwrap()
    }

    #[test]
    fn a_command_tool_is_read_with_its_defaults() {
        let spec = weather();
        assert_eq!(spec.timeout, Duration::from_secs(10));
        assert_eq!(spec.args.len(), 2);
        assert_eq!(spec.args[1].ty, ArgType::Int);
        assert_eq!(
            spec.target,
            ToolTarget::Command { command: vec!["tools/weather.py".into()], dir: PathBuf::from("/repo") }
        );
        assert_eq!(
            crate::child::program_path(&["tools/weather.py".into()], Path::new("/repo")),
            PathBuf::from("/repo/tools/weather.py")
        );
        assert_eq!(crate::child::program_path(&["python3".into()], Path::new("/repo")), PathBuf::from("python3"));
    }

    #[test]
    fn declaration_errors_name_the_key_and_the_fix() {
        let root = Path::new("/repo");
        let cases = [
            (
                "finish",
                r#"kind = "command"
description = "x"
command = ["a"]"#,
                "reserved",
            ),
            (
                "Web Search",
                r#"kind = "command"
description = "x"
command = ["a"]"#,
                "not a usable tool name",
            ),
            (
                "t",
                r#"kind = "command"
description = "  "
command = ["a"]"#,
                "description:",
            ),
            (
                "t",
                r#"kind = "command"
description = "x""#,
                "command: missing",
            ),
            (
                "t",
                r#"kind = "command"
description = "x"
command = ["a"]
timeout_secs = 0"#,
                "timeout_secs:",
            ),
            (
                "t",
                r#"kind = "command"
description = "x"
command = ["a"]
timeout_secs = 601"#,
                "timeout_secs:",
            ),
            (
                "t",
                r#"kind = "command"
description = "x"
command = ["a"]
args = { q = { type = "text" } }"#,
                "args.q.type",
            ),
            (
                "t",
                r#"kind = "http"
description = "x""#,
                "url: missing",
            ),
            (
                "t",
                r#"kind = "http"
description = "x"
url = "ftp://host/x""#,
                "url: the scheme `ftp`",
            ),
            (
                "t",
                r#"kind = "http"
description = "x"
url = "https://user:pw@host/x""#,
                "url: holds credentials",
            ),
            (
                "t",
                r#"kind = "http"
description = "x"
url = "https://host/x"
token_env = "sk-live-123""#,
                "token_env:",
            ),
            (
                "t",
                r#"kind = "http"
description = "x"
url = "https://host/x"
command = ["a"]"#,
                "command: only",
            ),
        ];
        for (name, text, wanted) in cases {
            let error = ToolSpec::from_raw(name, raw(text), root).unwrap_err();
            assert!(error.contains(wanted), "{name} / {text}: {error}");
        }
        // Unknown keys and kinds are refused by the reader itself.
        assert!(toml::from_str::<RawTool>("kind = \"command\"\ndescription = \"x\"\ncmd = [\"a\"]").is_err());
        assert!(toml::from_str::<RawTool>("kind = \"python\"\ndescription = \"x\"").is_err());
    }

    #[test]
    fn arguments_are_checked_against_the_declaration() {
        let spec = weather();
        let ok = spec.check_args(&json!({"city": "Oslo", "days": 2.0})).unwrap();
        assert_eq!(Value::Object(ok), json!({"city": "Oslo", "days": 2}));
        let missing = spec.check_args(&json!({"city": "Oslo"})).unwrap_err();
        assert!(missing.contains("missing argument `days`"), "{missing}");
        let unknown = spec.check_args(&json!({"city": "Oslo", "days": 1, "units": "C"})).unwrap_err();
        assert!(unknown.contains("unknown argument `units`"), "{unknown}");
        let wrong = spec.check_args(&json!({"city": 3, "days": 1})).unwrap_err();
        assert!(wrong.contains("argument `city` must be string"), "{wrong}");
        let fraction = spec.check_args(&json!({"city": "Oslo", "days": 1.5})).unwrap_err();
        assert!(fraction.contains("argument `days` must be int"), "{fraction}");
        let not_object = spec.check_args(&json!(["Oslo"])).unwrap_err();
        assert!(not_object.contains("must be a JSON object"), "{not_object}");
    }

    #[test]
    fn keys_ignore_key_order_and_the_root_directory() {
        let spec = weather();
        let mut moved = spec.clone();
        moved.target =
            ToolTarget::Command { command: vec!["tools/weather.py".into()], dir: PathBuf::from("/elsewhere") };
        let a = tool_key(&spec, &json!({"city": "Oslo", "days": 1}));
        assert_eq!(a, tool_key(&moved, &json!({"days": 1, "city": "Oslo"})));
        assert_ne!(a, tool_key(&spec, &json!({"city": "Bergen", "days": 1})));
        let mut renamed = spec.clone();
        renamed.target = ToolTarget::Command { command: vec!["tools/other.py".into()], dir: PathBuf::from("/repo") };
        assert_ne!(a, tool_key(&renamed, &json!({"city": "Oslo", "days": 1})));
    }

    #[test]
    fn long_results_are_cut_and_say_so() {
        let long = Value::String("x".repeat(MAX_OBSERVATION_CHARS + 10));
        let text = render_result(&long);
        assert!(text.starts_with(&"x".repeat(MAX_OBSERVATION_CHARS)));
        assert!(text.ends_with(&format!(
            "the result is {} characters; the first {MAX_OBSERVATION_CHARS} are shown]",
            MAX_OBSERVATION_CHARS + 10
        )));
        assert_eq!(render_result(&json!({"a": [1, 2], "b": "c"})), r#"{"a":[1,2],"b":"c"}"#);
        assert_eq!(render_result(&json!("plain")), "plain");
    }

    #[test]
    fn names_that_read_alike_are_refused() {
        let mut a = weather();
        a.name = "get-weather".into();
        let mut b = weather();
        b.name = "get_weather".into();
        let error = Tools::new(vec![a, b], None).unwrap_err();
        assert!(error.contains("differ only in"), "{error}");
    }

    #[test]
    fn a_token_is_masked_wherever_it_appears() {
        assert_eq!(mask("Bearer s3cr3t, again s3cr3t", "s3cr3t"), "Bearer [token], again [token]");
    }
}
