//! Log shapes mapped onto [`LogRecord`]: one line of a log file in, its records out.
//!
//! Three shapes, chosen by `[source] format`:
//!
//! **`native`** — the [`LogRecord`] itself, one JSON object a line:
//! `{"id", "timestamp", "inputs": {..}, "output": {..}, "reference": {..},
//! "feedback": {"score", "comment"}, "history": [..], "metadata": {..}}`.
//! Read liberally where that is cheap: `id` a string or a number; `timestamp` an
//! RFC 3339 string or a Unix time in seconds, milliseconds, microseconds or
//! nanoseconds (told apart by magnitude); `output` and `reference` an object of
//! output fields or a bare value (the single output field's value, when the
//! program has exactly one); `feedback` an object or a bare score (a number, or
//! `true`/`false` for thumbs up/down); `history` strings or `{role, content}`
//! messages. Other top-level keys are ignored.
//!
//! **`openai`** — chat-completion request/response pairs as logging proxies and
//! gateways write them. The request is the first of `request`, `request_body`,
//! `body` (an OpenAI Batch API input line) or the line itself when it has
//! `messages` (LiteLLM's standard logging payload); the response is `response` or
//! `response_body`. Either may be a JSON string, and either may wrap the real body
//! in `body` (a joined Batch API input and output line:
//! `{"custom_id", "body": {request}, "response": {"status_code", "body": {response}}}`).
//! The input field is the last user message's text (a string or `[{type: "text",
//! text}]` parts); earlier user messages are the history; the first choice's
//! reply is read into the output fields (a JSON object holding them, or, for a
//! single output field, the trimmed text). The id is the response id, else
//! `custom_id`, `id` or `request_id`; the time is `response.created`, else a
//! top-level `timestamp`, `created_at`, `request_created_at` or `startTime`.
//! Metadata keeps `request.metadata`, a top-level `metadata` object, the model,
//! the token usage and a few operational keys (provider, status, latency, cache
//! hit). `reference` and `feedback` are read from the top level or from the
//! metadata; a string reference is read like a reply.
//!
//! **`otel`** — one OTLP/JSON `ExportTraceServiceRequest` a line
//! (`resourceSpans[].scopeSpans[].spans[]`). Every span carrying `gen_ai.*`
//! attributes or events becomes a record (id = `spanId`, time =
//! `startTimeUnixNano`). Messages are read from, in order of preference:
//! - the current convention (semconv ≥ 1.37): `gen_ai.input.messages` and
//!   `gen_ai.output.messages` (`[{role, parts: [{type: "text", content}]}]`, as a
//!   JSON string or a structured value), on the span or on its
//!   `gen_ai.client.inference.operation.details` event;
//! - the event-based convention (1.27–1.36): span events `gen_ai.system.message`,
//!   `gen_ai.user.message`, `gen_ai.assistant.message`, `gen_ai.tool.message`,
//!   `gen_ai.choice`, their body in `gen_ai.event.content` (JSON), `message` or
//!   `content` attributes;
//! - the oldest: `gen_ai.prompt` / `gen_ai.completion` attributes or
//!   `gen_ai.content.prompt` / `gen_ai.content.completion` events (OpenAI-style
//!   message JSON or plain text; a Python repr is read as plain text), and
//!   OpenLLMetry's indexed `gen_ai.prompt.N.role` / `gen_ai.prompt.N.content` /
//!   `gen_ai.completion.N.content`.
//!
//! System instructions are the prompt being optimized, not data: they are not
//! kept. Metadata holds the model, provider, operation, token usage, trace id,
//! span name and service. A GenAI span without a user message (a tool call, an
//! agent step) is skipped; a line whose GenAI spans have none at all is an error,
//! and a line with no GenAI span gives no records.
//!
//! Errors name the field path and the fix and never quote a value from the
//! line: logs are full of personal data.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::config::{FormatConfig, LogFormat};
use crate::logs::{Feedback, LogRecord};

/// Why a line could not be read. The message names the field and never a value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordError {
    #[error("not JSON (syntax error at column {column}); each line must be one complete JSON object")]
    NotJson { column: usize },
    #[error("the line is a JSON {found}, not an object; each line must be one JSON object")]
    NotAnObject { found: &'static str },
    #[error("`{field}` is missing; {hint}")]
    MissingField { field: String, hint: String },
    #[error("`{field}` must be {expected}")]
    BadField { field: String, expected: String },
    #[error("no user message in `{field}`; the input is read from the last user message")]
    NoMessages { field: String },
}

impl RecordError {
    /// A short stable name for counting errors by kind in a pull's report.
    pub fn kind(&self) -> &'static str {
        match self {
            RecordError::NotJson { .. } => "not_json",
            RecordError::NotAnObject { .. } => "not_an_object",
            RecordError::MissingField { .. } => "missing_field",
            RecordError::BadField { .. } => "bad_field",
            RecordError::NoMessages { .. } => "no_messages",
        }
    }
}

/// One line of a log file → its records (native and OpenAI: one; OTLP: one per
/// GenAI span with a user message, possibly none). A blank line has no records.
pub fn parse_line(config: &FormatConfig, line: &str) -> Result<Vec<LogRecord>, RecordError> {
    let line = line.strip_prefix('\u{feff}').unwrap_or(line);
    if line.trim().is_empty() {
        return Ok(Vec::new());
    }
    // Only the column of a syntax error is kept: serde_json's messages may quote the line.
    let value: Value = serde_json::from_str(line).map_err(|e| RecordError::NotJson { column: e.column() })?;
    let Value::Object(object) = value else {
        return Err(RecordError::NotAnObject { found: json_type(&value) });
    };
    match config.format {
        LogFormat::Native => native_record(config, object).map(|r| vec![r]),
        LogFormat::Openai => openai_record(config, object).map(|r| vec![r]),
        LogFormat::Otel => otel_records(config, object),
    }
}

// ---------------------------------------------------------------- native

fn native_record(config: &FormatConfig, mut object: Map<String, Value>) -> Result<LogRecord, RecordError> {
    let id = match object.remove("id") {
        Some(value) => id_from(value, "id")?,
        None => return Err(missing("id", "each record needs an id (a string or a number)")),
    };
    let timestamp = match object.remove("timestamp") {
        Some(value) => timestamp_from(&value, "timestamp")?,
        None => return Err(missing("timestamp", "each record needs an RFC 3339 time or Unix seconds")),
    };
    let inputs = match object.remove("inputs") {
        Some(Value::Object(inputs)) if !inputs.is_empty() => inputs,
        Some(Value::Object(_)) => {
            return Err(bad("inputs", "an object with at least one input field, e.g. {\"message\": ...}"));
        }
        Some(_) => return Err(bad("inputs", "an object of input fields, e.g. {\"message\": ...}")),
        None => return Err(missing("inputs", "each record needs an object of input fields, e.g. {\"message\": ...}")),
    };
    let output = match object.remove("output") {
        Some(value) => outputs_from_value(value, &config.output_fields, "output")?,
        None => None,
    };
    let reference = match object.remove("reference") {
        Some(value) => outputs_from_value(value, &config.output_fields, "reference")?,
        None => None,
    };
    let feedback = match object.remove("feedback") {
        Some(value) => feedback_from(value, "feedback")?,
        None => None,
    };
    let history = match object.remove("history") {
        Some(value) => history_from(value, "history")?,
        None => Vec::new(),
    };
    let metadata = match object.remove("metadata") {
        Some(Value::Object(metadata)) => metadata,
        Some(Value::Null) | None => Map::new(),
        Some(_) => return Err(bad("metadata", "an object")),
    };
    Ok(LogRecord { id, timestamp, inputs, output, reference, feedback, history, metadata })
}

fn history_from(value: Value, field: &str) -> Result<Vec<String>, RecordError> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::String(text) => Ok(vec![text]),
        Value::Array(items) => {
            let mut history = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                match &item {
                    Value::String(text) => history.push(text.clone()),
                    Value::Object(message) => match message.get("content").and_then(text_of) {
                        Some(text) => history.push(text),
                        None => return Err(bad(&format!("{field}[{i}].content"), "the message's text")),
                    },
                    _ => return Err(bad(&format!("{field}[{i}]"), "a string or a {role, content} message")),
                }
            }
            Ok(history)
        }
        _ => Err(bad(field, "a list of earlier user messages, oldest first")),
    }
}

// ---------------------------------------------------------------- openai

/// Top-level keys kept as metadata when a proxy writes them next to the request and response.
const OPENAI_KEPT_KEYS: &[&str] = &[
    "provider",
    "custom_llm_provider",
    "call_type",
    "status",
    "status_code",
    "latency_ms",
    "response_time",
    "cache_hit",
];

fn openai_record(config: &FormatConfig, mut object: Map<String, Value>) -> Result<LogRecord, RecordError> {
    let (request, request_path) = if let Some((key, value)) = take_first(&mut object, &["request", "request_body"]) {
        (as_object(value, key)?, key.to_string())
    } else if object.contains_key("messages") {
        (object.clone(), String::new())
    } else if let Some(value) = object.remove("body") {
        (as_object(value, "body")?, "body".to_string())
    } else {
        return Err(missing("request", "an OpenAI log line needs the request (`request`, `request_body` or `body`)"));
    };
    let (mut request, request_path) = unwrap_body(request, request_path, "messages");
    let response = match take_first(&mut object, &["response", "response_body"]) {
        Some((_, Value::Null)) | None => None,
        Some((key, value)) => {
            let (response, path) = unwrap_body(as_object(value, key)?, key.to_string(), "choices");
            Some((response, path))
        }
    };

    let messages_path = join_path(&request_path, "messages");
    let turns = match request.remove("messages") {
        Some(Value::Array(messages)) => openai_turns(&messages, &messages_path)?,
        Some(_) => return Err(bad(&messages_path, "a list of chat messages")),
        None => return Err(missing(&messages_path, "the request's chat messages are needed to read the input")),
    };
    let (input, history) = input_and_history(turns, &messages_path)?;
    let mut inputs = Map::new();
    inputs.insert(config.input_field.clone(), Value::String(input));

    let mut output = None;
    let mut response_id = None;
    let mut created = None;
    let mut metadata = Map::new();
    if let Some(Value::Object(request_metadata)) = request.remove("metadata") {
        metadata.extend(request_metadata);
    }
    if let Some(Value::Object(top_metadata)) = object.remove("metadata") {
        metadata.extend(top_metadata);
    }
    if let Some(model) = request.remove("model") {
        metadata.insert("model".into(), model);
    }
    if let Some((mut response, path)) = response {
        response_id = response.remove("id").filter(|id| !id.is_null());
        created = response.remove("created").map(|c| (c, join_path(&path, "created")));
        if let Some(model) = response.remove("model") {
            metadata.insert("model".into(), model);
        }
        if let Some(usage) = response.remove("usage") {
            metadata.insert("usage".into(), usage);
        }
        if let Some(Value::Array(choices)) = response.get("choices")
            && let Some(content) = choices.first().and_then(|c| c.get("message")).and_then(|m| m.get("content"))
        {
            let field = join_path(&path, "choices[0].message.content");
            if let Some(text) = text_of(content) {
                output = outputs_from_reply(&text, &config.output_fields, &field)?;
            }
        }
    }
    for key in OPENAI_KEPT_KEYS {
        if let Some(value) = object.remove(*key) {
            metadata.insert((*key).to_string(), value);
        }
    }

    let id = match response_id {
        Some(value) => id_from(value, "response.id")?,
        None => match take_first(&mut object, &["custom_id", "id", "request_id"]) {
            Some((key, value)) => id_from(value, key)?,
            None => return Err(missing("response.id", "each line needs an id: `response.id`, `custom_id` or `id`")),
        },
    };
    let timestamp = match created {
        Some((value, path)) => timestamp_from(&value, &path)?,
        None => match take_first(&mut object, &["timestamp", "created_at", "request_created_at", "startTime"]) {
            Some((key, value)) => timestamp_from(&value, key)?,
            None => {
                return Err(missing(
                    "response.created",
                    "each line needs a time: `response.created` or a top-level `timestamp` (RFC 3339 or Unix seconds)",
                ));
            }
        },
    };

    // A reviewer's answer and feedback travel at the top level or in the metadata.
    let reference = match object.remove("reference") {
        Some(value) => reference_from(value, config, "reference")?,
        None => match metadata.shift_remove("reference") {
            Some(value) => reference_from(value, config, "metadata.reference")?,
            None => None,
        },
    };
    let feedback = match object.remove("feedback") {
        Some(value) => feedback_from(value, "feedback")?,
        None => match metadata.shift_remove("feedback") {
            Some(value) => feedback_from(value, "metadata.feedback")?,
            None => None,
        },
    };
    Ok(LogRecord { id, timestamp, inputs, output, reference, feedback, history, metadata })
}

fn openai_turns(messages: &[Value], path: &str) -> Result<Vec<Turn>, RecordError> {
    messages
        .iter()
        .enumerate()
        .map(|(i, message)| match message {
            Value::Object(message) => Ok(Turn {
                role: message.get("role").and_then(Value::as_str).unwrap_or("user").to_string(),
                text: message.get("content").and_then(text_of),
            }),
            _ => Err(bad(&format!("{path}[{i}]"), "a {role, content} message")),
        })
        .collect()
}

/// A reference as a bare value, an object of output fields, or a reply-like string.
fn reference_from(value: Value, config: &FormatConfig, field: &str) -> Result<Option<Map<String, Value>>, RecordError> {
    match value {
        Value::String(text) => outputs_from_reply(&text, &config.output_fields, field),
        other => outputs_from_value(other, &config.output_fields, field),
    }
}

/// Gateways wrap the real body: `{"status_code": 200, "body": {...}}`.
fn unwrap_body(mut object: Map<String, Value>, path: String, marker: &str) -> (Map<String, Value>, String) {
    if !object.contains_key(marker)
        && let Some(Value::Object(body)) = object.get("body")
        && body.contains_key(marker)
    {
        let Some(Value::Object(body)) = object.remove("body") else { unreachable!("checked above") };
        return (body, join_path(&path, "body"));
    }
    (object, path)
}

// ---------------------------------------------------------------- otel

fn otel_records(config: &FormatConfig, object: Map<String, Value>) -> Result<Vec<LogRecord>, RecordError> {
    let resource_spans = match get_either(&object, "resourceSpans", "resource_spans") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(bad("resourceSpans", "a list of resource spans (OTLP/JSON)")),
        None => {
            return Err(missing(
                "resourceSpans",
                "an OTLP line is one ExportTraceServiceRequest in OTLP/JSON: {\"resourceSpans\": [...]}",
            ));
        }
    };
    let mut records = Vec::new();
    let mut genai_spans = 0;
    for (r, resource_span) in resource_spans.iter().enumerate() {
        let service = resource_span
            .get("resource")
            .and_then(|resource| resource.get("attributes"))
            .map(attributes_map)
            .and_then(|attributes| attributes.get("service.name").cloned());
        let scopes = get_either_value(resource_span, "scopeSpans", "scope_spans")
            .or_else(|| resource_span.get("instrumentationLibrarySpans"));
        let Some(Value::Array(scopes)) = scopes else { continue };
        for (s, scope) in scopes.iter().enumerate() {
            let Some(Value::Array(spans)) = scope.get("spans") else { continue };
            for (n, span) in spans.iter().enumerate() {
                let path = format!("resourceSpans[{r}].scopeSpans[{s}].spans[{n}]");
                let Value::Object(span) = span else {
                    return Err(bad(&path, "a span object"));
                };
                let Some(messages) = span_messages(span) else { continue };
                genai_spans += 1;
                if let Some(record) = span_record(config, span, messages, service.as_ref(), &path)? {
                    records.push(record);
                }
            }
        }
    }
    if genai_spans > 0 && records.is_empty() {
        return Err(RecordError::NoMessages { field: "resourceSpans[].scopeSpans[].spans[]".into() });
    }
    Ok(records)
}

/// What one GenAI span says: its attributes and the messages read from whichever convention it follows.
struct SpanMessages {
    attributes: Map<String, Value>,
    input: Vec<Turn>,
    output: Vec<Turn>,
}

/// The span's GenAI data, or `None` when the span is not a GenAI span.
fn span_messages(span: &Map<String, Value>) -> Option<SpanMessages> {
    let attributes = span.get("attributes").map(attributes_map).unwrap_or_default();
    let events: Vec<(String, Map<String, Value>)> = match span.get("events") {
        Some(Value::Array(events)) => events
            .iter()
            .map(|event| {
                let name = event.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
                let attributes = event.get("attributes").map(attributes_map).unwrap_or_default();
                (name, attributes)
            })
            .collect(),
        _ => Vec::new(),
    };
    let is_genai =
        attributes.keys().any(|k| k.starts_with("gen_ai.")) || events.iter().any(|(n, _)| n.starts_with("gen_ai."));
    if !is_genai {
        return None;
    }
    let details = events.iter().find(|(name, _)| name == "gen_ai.client.inference.operation.details").map(|(_, a)| a);

    // Current convention: structured message attributes on the span or its details event.
    let mut input = Vec::new();
    let mut output = Vec::new();
    for source in std::iter::once(&attributes).chain(details) {
        if input.is_empty()
            && let Some(value) = source.get("gen_ai.input.messages")
        {
            input = semconv_turns(value);
        }
        if output.is_empty()
            && let Some(value) = source.get("gen_ai.output.messages")
        {
            output = semconv_turns(value);
        }
    }

    // Event-based convention: one event per message.
    if input.is_empty() || output.is_empty() {
        let mut event_input = Vec::new();
        let mut event_output = Vec::new();
        for (name, event) in &events {
            let role = match name.as_str() {
                "gen_ai.system.message" => "system",
                "gen_ai.user.message" => "user",
                "gen_ai.assistant.message" => "assistant",
                "gen_ai.tool.message" => "tool",
                "gen_ai.choice" => {
                    event_output.push(Turn { role: "assistant".into(), text: event_text(event) });
                    continue;
                }
                _ => continue,
            };
            let role = event.get("role").and_then(Value::as_str).unwrap_or(role).to_string();
            event_input.push(Turn { role, text: event_text(event) });
        }
        if input.is_empty() {
            input = event_input;
        }
        if output.is_empty() {
            output = event_output;
        }
    }

    // Oldest convention: whole-prompt attributes or content events, then OpenLLMetry's indexed attributes.
    if input.is_empty() {
        let prompt = attributes
            .get("gen_ai.prompt")
            .or_else(|| event_attribute(&events, "gen_ai.content.prompt", "gen_ai.prompt"));
        if let Some(prompt) = prompt {
            input = legacy_turns(prompt, "user");
        }
    }
    if output.is_empty() {
        let completion = attributes
            .get("gen_ai.completion")
            .or_else(|| event_attribute(&events, "gen_ai.content.completion", "gen_ai.completion"));
        if let Some(completion) = completion {
            output = legacy_turns(completion, "assistant");
        }
    }
    if input.is_empty() {
        input = indexed_turns(&attributes, "gen_ai.prompt.", "user");
    }
    if output.is_empty() {
        output = indexed_turns(&attributes, "gen_ai.completion.", "assistant");
    }
    Some(SpanMessages { attributes, input, output })
}

fn span_record(
    config: &FormatConfig,
    span: &Map<String, Value>,
    messages: SpanMessages,
    service: Option<&Value>,
    path: &str,
) -> Result<Option<LogRecord>, RecordError> {
    let SpanMessages { attributes, input, output } = messages;
    if !input.iter().any(|turn| turn.role == "user" && turn.text.is_some()) {
        return Ok(None);
    }
    let (text, history) = input_and_history(input, &format!("{path}.attributes"))?;
    let mut inputs = Map::new();
    inputs.insert(config.input_field.clone(), Value::String(text));

    let id = match get_either(span, "spanId", "span_id") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        Some(_) => return Err(bad(&format!("{path}.spanId"), "a non-empty hex string")),
        None => return Err(missing(&format!("{path}.spanId"), "every OTLP span has a spanId")),
    };
    let timestamp = match get_either(span, "startTimeUnixNano", "start_time_unix_nano") {
        Some(value) => nanos_from(value, &format!("{path}.startTimeUnixNano"))?,
        None => return Err(missing(&format!("{path}.startTimeUnixNano"), "every OTLP span has a start time")),
    };
    let reply = output.into_iter().find(|turn| turn.role == "assistant" && turn.text.is_some());
    let output = match reply.and_then(|turn| turn.text) {
        Some(text) => outputs_from_reply(&text, &config.output_fields, &format!("{path}.output"))?,
        None => None,
    };

    let mut metadata = Map::new();
    let first = |keys: &[&str]| keys.iter().find_map(|key| attributes.get(*key).cloned());
    let mut keep = |name: &str, value: Option<Value>| {
        if let Some(value) = value {
            metadata.insert(name.to_string(), value);
        }
    };
    keep("model", first(&["gen_ai.response.model", "gen_ai.request.model"]));
    keep("system", first(&["gen_ai.provider.name", "gen_ai.system"]));
    keep("operation", first(&["gen_ai.operation.name"]));
    keep("response_id", first(&["gen_ai.response.id"]));
    let input_tokens = first(&["gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"]);
    let output_tokens = first(&["gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"]);
    if input_tokens.is_some() || output_tokens.is_some() {
        let mut usage = Map::new();
        if let Some(tokens) = input_tokens {
            usage.insert("input_tokens".into(), tokens);
        }
        if let Some(tokens) = output_tokens {
            usage.insert("output_tokens".into(), tokens);
        }
        keep("usage", Some(Value::Object(usage)));
    }
    keep("trace_id", get_either(span, "traceId", "trace_id").cloned());
    keep("span_name", span.get("name").cloned());
    keep("service", service.cloned());

    Ok(Some(LogRecord { id, timestamp, inputs, output, reference: None, feedback: None, history, metadata }))
}

/// OTLP attributes `[{key, value: AnyValue}]` as a JSON object (a plain object is taken as is).
fn attributes_map(value: &Value) -> Map<String, Value> {
    match value {
        Value::Array(items) => items
            .iter()
            .filter_map(|item| {
                let key = item.get("key")?.as_str()?;
                Some((key.to_string(), any_value(item.get("value").unwrap_or(&Value::Null))))
            })
            .collect(),
        Value::Object(object) => object.clone(),
        _ => Map::new(),
    }
}

/// An OTLP `AnyValue` as plain JSON. `intValue` is a string in OTLP/JSON (64-bit).
fn any_value(value: &Value) -> Value {
    let Value::Object(value) = value else { return value.clone() };
    if let Some(v) = get_either(value, "stringValue", "string_value") {
        return v.clone();
    }
    if let Some(v) = get_either(value, "intValue", "int_value") {
        return match v {
            Value::String(s) => s.parse::<i64>().map(Value::from).unwrap_or_else(|_| v.clone()),
            _ => v.clone(),
        };
    }
    if let Some(v) =
        get_either(value, "doubleValue", "double_value").or_else(|| get_either(value, "boolValue", "bool_value"))
    {
        return v.clone();
    }
    if let Some(v) = get_either(value, "arrayValue", "array_value") {
        return match v.get("values") {
            Some(Value::Array(values)) => Value::Array(values.iter().map(any_value).collect()),
            _ => Value::Array(Vec::new()),
        };
    }
    if let Some(v) = get_either(value, "kvlistValue", "kvlist_value") {
        return Value::Object(v.get("values").map(attributes_map).unwrap_or_default());
    }
    if let Some(v) = get_either(value, "bytesValue", "bytes_value") {
        return v.clone();
    }
    Value::Null
}

/// `gen_ai.input.messages` / `gen_ai.output.messages`: `[{role, parts: [{type, content}]}]`, JSON or structured.
fn semconv_turns(value: &Value) -> Vec<Turn> {
    let parsed;
    let value = match value {
        Value::String(text) => match serde_json::from_str::<Value>(text) {
            Ok(value) => {
                parsed = value;
                &parsed
            }
            Err(_) => return Vec::new(),
        },
        other => other,
    };
    let Value::Array(messages) = value else { return Vec::new() };
    messages
        .iter()
        .filter_map(|message| {
            let role = message.get("role")?.as_str()?.to_string();
            let text = message.get("parts").or_else(|| message.get("content")).and_then(text_of);
            Some(Turn { role, text })
        })
        .collect()
}

/// The text of an event-based message: `gen_ai.event.content` JSON, `message`, or `content`.
fn event_text(event: &Map<String, Value>) -> Option<String> {
    let body = |value: &Value| -> Option<String> {
        let parsed = match value {
            Value::String(text) => serde_json::from_str::<Value>(text).unwrap_or_else(|_| value.clone()),
            other => other.clone(),
        };
        match &parsed {
            // A gen_ai.choice body nests the reply in `message`.
            Value::Object(body) => match body.get("message") {
                Some(message) => message.get("content").and_then(text_of).or_else(|| text_of(message)),
                None => body.get("content").and_then(text_of),
            },
            other => text_of(other),
        }
    };
    event
        .get("gen_ai.event.content")
        .and_then(body)
        .or_else(|| event.get("message").and_then(body))
        .or_else(|| event.get("content").and_then(text_of))
}

fn event_attribute<'a>(events: &'a [(String, Map<String, Value>)], event: &str, key: &str) -> Option<&'a Value> {
    events.iter().find(|(name, _)| name == event).and_then(|(_, attributes)| attributes.get(key))
}

/// `gen_ai.prompt` / `gen_ai.completion`: OpenAI-style message JSON, or plain text in the given role.
fn legacy_turns(value: &Value, plain_role: &str) -> Vec<Turn> {
    let parsed = match value {
        Value::String(text) => match serde_json::from_str::<Value>(text) {
            Ok(value @ (Value::Array(_) | Value::Object(_))) => value,
            _ => return vec![Turn { role: plain_role.into(), text: text_of(value) }],
        },
        other => other.clone(),
    };
    let messages = match parsed {
        Value::Array(messages) => messages,
        Value::Object(mut object) => match object.remove("messages") {
            Some(Value::Array(messages)) => messages,
            _ => vec![Value::Object(object)],
        },
        _ => return Vec::new(),
    };
    messages
        .iter()
        .map(|message| match message {
            Value::Object(m) => Turn {
                role: m.get("role").and_then(Value::as_str).unwrap_or(plain_role).to_string(),
                text: m.get("content").and_then(text_of),
            },
            other => Turn { role: plain_role.into(), text: text_of(other) },
        })
        .collect()
}

/// OpenLLMetry: `gen_ai.prompt.0.role`, `gen_ai.prompt.0.content`, ... in index order.
fn indexed_turns(attributes: &Map<String, Value>, prefix: &str, default_role: &str) -> Vec<Turn> {
    let mut indexed: Vec<(usize, Turn)> = Vec::new();
    for (key, value) in attributes {
        let Some(rest) = key.strip_prefix(prefix) else { continue };
        let Some((index, field)) = rest.split_once('.') else { continue };
        let Ok(index) = index.parse::<usize>() else { continue };
        let slot = match indexed.iter().position(|(i, _)| *i == index) {
            Some(slot) => slot,
            None => {
                indexed.push((index, Turn { role: default_role.into(), text: None }));
                indexed.len() - 1
            }
        };
        match field {
            "role" => {
                if let Some(role) = value.as_str() {
                    indexed[slot].1.role = role.to_string();
                }
            }
            "content" => indexed[slot].1.text = text_of(value),
            _ => {}
        }
    }
    indexed.sort_by_key(|(index, _)| *index);
    indexed.into_iter().map(|(_, turn)| turn).collect()
}

fn nanos_from(value: &Value, field: &str) -> Result<DateTime<Utc>, RecordError> {
    let nanos = match value {
        Value::String(text) => text.parse::<i64>().ok(),
        Value::Number(n) => n.as_i64().or_else(|| n.as_u64().and_then(|n| i64::try_from(n).ok())),
        _ => None,
    };
    match nanos {
        Some(nanos) if nanos > 0 => Ok(DateTime::from_timestamp_nanos(nanos)),
        _ => Err(bad(field, "Unix nanoseconds (a decimal string or a number)")),
    }
}

// ---------------------------------------------------------------- shared

/// One chat message, reduced to what a record needs.
struct Turn {
    role: String,
    text: Option<String>,
}

/// The last user message with text is the input; the earlier ones, oldest first, the history.
fn input_and_history(turns: Vec<Turn>, field: &str) -> Result<(String, Vec<String>), RecordError> {
    let mut user_texts: Vec<String> =
        turns.into_iter().filter(|turn| turn.role == "user").filter_map(|turn| turn.text).collect();
    match user_texts.pop() {
        Some(input) => Ok((input, user_texts)),
        None => Err(RecordError::NoMessages { field: field.to_string() }),
    }
}

/// The text of a message's content: a string, or the text parts of a list joined by newlines.
fn text_of(content: &Value) -> Option<String> {
    let text = match content {
        Value::String(text) => {
            // OpenLLMetry and some SDKs store multi-part content as a JSON string of parts.
            if text.starts_with("[{")
                && let Ok(parts @ Value::Array(_)) = serde_json::from_str::<Value>(text)
                && let Some(joined) = text_of(&parts)
            {
                return Some(joined);
            }
            text.clone()
        }
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|part| match part {
                    Value::String(text) => Some(text.as_str()),
                    Value::Object(part) => {
                        let kind = part.get("type").and_then(Value::as_str).unwrap_or("text");
                        if kind != "text" && kind != "input_text" && kind != "output_text" {
                            return None;
                        }
                        part.get("text").or_else(|| part.get("content")).and_then(Value::as_str)
                    }
                    _ => None,
                })
                .collect();
            texts.join("\n")
        }
        Value::Object(object) => return object.get("content").or_else(|| object.get("text")).and_then(text_of),
        _ => return None,
    };
    if text.trim().is_empty() { None } else { Some(text) }
}

/// A reply's text in the output fields: a JSON object holding them (fenced or not), or for
/// a single output field the trimmed text. An empty reply is no output.
fn outputs_from_reply(text: &str, fields: &[String], field: &str) -> Result<Option<Map<String, Value>>, RecordError> {
    let trimmed = text.trim();
    if trimmed.is_empty() || fields.is_empty() {
        return Ok(None);
    }
    if let Some(Value::Object(object)) = json_in_reply(trimmed)
        && fields.iter().all(|f| object.contains_key(f))
    {
        return Ok(Some(fields.iter().map(|f| (f.clone(), object[f].clone())).collect()));
    }
    if let [only] = fields {
        let mut output = Map::new();
        output.insert(only.clone(), Value::String(trimmed.to_string()));
        return Ok(Some(output));
    }
    Err(bad(field, &format!("a JSON object with the output fields {}", field_list(fields))))
}

fn json_in_reply(text: &str) -> Option<Value> {
    let body = text
        .strip_prefix("```json")
        .or_else(|| text.strip_prefix("```"))
        .and_then(|rest| rest.trim_end().strip_suffix("```"))
        .unwrap_or(text)
        .trim();
    if body.starts_with('{') { serde_json::from_str(body).ok() } else { None }
}

/// `output` / `reference` in a native record: an object of fields, or a bare value for a single field.
fn outputs_from_value(value: Value, fields: &[String], field: &str) -> Result<Option<Map<String, Value>>, RecordError> {
    match value {
        Value::Null => Ok(None),
        Value::Object(object) => Ok(Some(object)),
        bare @ (Value::String(_) | Value::Number(_) | Value::Bool(_)) => match fields {
            [only] => {
                let mut output = Map::new();
                output.insert(only.clone(), bare);
                Ok(Some(output))
            }
            _ => Err(bad(
                field,
                &format!(
                    "an object with the output fields {} (a bare value fits only a program with one output field)",
                    field_list(fields)
                ),
            )),
        },
        Value::Array(_) => Err(bad(field, &format!("an object with the output fields {}", field_list(fields)))),
    }
}

fn feedback_from(value: Value, field: &str) -> Result<Option<Feedback>, RecordError> {
    let score_of = |value: &Value| match value {
        Value::Number(n) => n.as_f64(),
        Value::Bool(up) => Some(if *up { 1.0 } else { 0.0 }),
        _ => None,
    };
    match value {
        Value::Null => Ok(None),
        Value::Object(object) => {
            let score = match object.get("score") {
                None | Some(Value::Null) => None,
                Some(value) => match score_of(value) {
                    Some(score) => Some(score),
                    None => return Err(bad(&format!("{field}.score"), "a number (or true/false for thumbs up/down)")),
                },
            };
            let comment = match object.get("comment") {
                None | Some(Value::Null) => None,
                Some(Value::String(comment)) => Some(comment.clone()),
                Some(_) => return Err(bad(&format!("{field}.comment"), "a string")),
            };
            if score.is_none() && comment.is_none() { Ok(None) } else { Ok(Some(Feedback { score, comment })) }
        }
        other => match score_of(&other) {
            Some(score) => Ok(Some(Feedback { score: Some(score), comment: None })),
            None => Err(bad(field, "an object {score, comment} or a bare score")),
        },
    }
}

fn id_from(value: Value, field: &str) -> Result<String, RecordError> {
    match value {
        Value::String(id) if !id.trim().is_empty() => Ok(id),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(bad(field, "a non-empty string or a number")),
    }
}

/// RFC 3339, or Unix time whose unit (s, ms, µs, ns) is told by its magnitude.
fn timestamp_from(value: &Value, field: &str) -> Result<DateTime<Utc>, RecordError> {
    let expected = "an RFC 3339 time (e.g. 2026-11-02T09:30:00Z) or Unix seconds";
    match value {
        Value::String(text) => {
            if let Ok(time) = DateTime::parse_from_rfc3339(text.trim()) {
                return Ok(time.with_timezone(&Utc));
            }
            match text.trim().parse::<serde_json::Number>() {
                Ok(number) => unix_time(&number).ok_or_else(|| bad(field, expected)),
                Err(_) => Err(bad(field, expected)),
            }
        }
        Value::Number(n) => unix_time(n).ok_or_else(|| bad(field, expected)),
        _ => Err(bad(field, expected)),
    }
}

/// Unix time in s, ms, µs or ns, told apart by magnitude (1e11 s is the year 5138).
/// Integers are exact; fractions are rounded to the microsecond (f64 cannot hold more).
fn unix_time(number: &serde_json::Number) -> Option<DateTime<Utc>> {
    if let Some(n) = number.as_i64() {
        let nanos = match n {
            ..=0 => return None,
            // Past 2262 nanoseconds overflow an i64: such a time is refused, never wrapped.
            1..100_000_000_000 => n.checked_mul(1_000_000_000)?,
            ..100_000_000_000_000 => n.checked_mul(1_000_000)?,
            ..100_000_000_000_000_000 => n.checked_mul(1_000)?,
            _ => n,
        };
        return Some(DateTime::from_timestamp_nanos(nanos));
    }
    let number = number.as_f64()?;
    if !number.is_finite() || number <= 0.0 {
        return None;
    }
    let micros = if number < 1e11 {
        number * 1e6
    } else if number < 1e14 {
        number * 1e3
    } else if number < 1e17 {
        number
    } else {
        number / 1e3
    };
    let micros = micros.round();
    if micros >= (i64::MAX / 1000) as f64 {
        return None;
    }
    DateTime::from_timestamp_micros(micros as i64)
}

fn take_first<'k>(object: &mut Map<String, Value>, keys: &[&'k str]) -> Option<(&'k str, Value)> {
    keys.iter().find_map(|key| object.remove(*key).map(|value| (*key, value)))
}

/// An object, or a JSON string holding one (some gateways store bodies as strings).
fn as_object(value: Value, field: &str) -> Result<Map<String, Value>, RecordError> {
    match value {
        Value::Object(object) => Ok(object),
        Value::String(text) => match serde_json::from_str(&text) {
            Ok(Value::Object(object)) => Ok(object),
            _ => Err(bad(field, "a JSON object (or a string holding one)")),
        },
        _ => Err(bad(field, "a JSON object (or a string holding one)")),
    }
}

fn get_either<'a>(object: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    object.get(camel).or_else(|| object.get(snake))
}

fn get_either_value<'a>(value: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    value.get(camel).or_else(|| value.get(snake))
}

fn join_path(prefix: &str, field: &str) -> String {
    if prefix.is_empty() { field.to_string() } else { format!("{prefix}.{field}") }
}

fn field_list(fields: &[String]) -> String {
    fields.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn missing(field: &str, hint: &str) -> RecordError {
    RecordError::MissingField { field: field.to_string(), hint: hint.to_string() }
}

fn bad(field: &str, expected: &str) -> RecordError {
    RecordError::BadField { field: field.to_string(), expected: expected.to_string() }
}
