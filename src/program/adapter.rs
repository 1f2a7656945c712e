//! The adapter: signature + demos + inputs → chat messages (and the reply's
//! shape), and a reply → typed outputs.
//!
//! Two formats: `chat` writes each field under a `[[ ## name ## ]]` marker;
//! `json` asks for one JSON object. Parsing forgives what is safe to forgive
//! (case, quotes and markup around an enum value, prose around JSON) and
//! never guesses: a value it cannot read is an error that says why.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

use crate::lm::local::constrain::validate_schema;
use crate::lm::local::json_constrain::canonical_json;
use crate::lm::{ChatMessage, OutputTemplate, Role, Segment};
use crate::program::signature::{Field, FieldType};

/// The reply format: how a prompt asks for outputs and how the reply is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterFormat {
    /// `[[ ## field ## ]]` markers.
    Chat,
    /// One JSON object.
    Json,
}

/// One worked example as shown: its inputs and its outputs.
pub type DemoPair<'a> = (&'a Map<String, Value>, &'a Map<String, Value>);

/// What one prediction shows the model: instructions, fields, demos, inputs.
pub struct Prompt<'a> {
    pub instructions: &'a str,
    pub inputs: &'a [Field],
    /// The outputs the reply must carry, in order (reasoning first for chain of thought).
    pub outputs: &'a [Field],
    /// Worked examples: (inputs, outputs); a missing output is shown as not supplied.
    pub demos: Vec<DemoPair<'a>>,
    pub values: &'a Map<String, Value>,
}

/// The rendered request: messages, the reply's shape for engines that enforce
/// it, and a JSON Schema for endpoints that take one.
pub struct Rendered {
    pub messages: Vec<ChatMessage>,
    pub template: Option<OutputTemplate>,
    pub json_schema: Option<Value>,
}

const NOT_SUPPLIED: &str = "Not supplied for this particular example.";

pub fn render(format: AdapterFormat, prompt: &Prompt) -> Rendered {
    let mut system = String::new();
    if !prompt.instructions.trim().is_empty() {
        system.push_str(prompt.instructions.trim());
        system.push_str("\n\n");
    }
    system.push_str(&field_list("Your input fields are:", prompt.inputs));
    system.push_str(&field_list("Your output fields are:", prompt.outputs));
    match format {
        AdapterFormat::Chat => {
            system.push_str("\nReply in this format:\n\n");
            let shape: Map<String, Value> =
                prompt.outputs.iter().map(|f| (f.name.clone(), Value::String(format!("{{{}}}", f.name)))).collect();
            system.push_str(&chat_reply(prompt.outputs, &shape));
        }
        AdapterFormat::Json => {
            let keys: Vec<String> = prompt.outputs.iter().map(|f| format!("`{}`", f.name)).collect();
            system.push_str(&format!("\nReply with one JSON object with the keys {}.", keys.join(", ")));
        }
    }

    let mut messages = vec![ChatMessage::new(Role::System, system)];
    for (inputs, outputs) in &prompt.demos {
        messages.push(ChatMessage::new(Role::User, input_block(prompt.inputs, inputs)));
        let reply = match format {
            AdapterFormat::Chat => chat_reply(prompt.outputs, outputs),
            AdapterFormat::Json => json_reply(prompt.outputs, outputs),
        };
        messages.push(ChatMessage::new(Role::Assistant, reply));
    }
    let mut last = input_block(prompt.inputs, prompt.values);
    if format == AdapterFormat::Chat {
        let first = &prompt.outputs[0].name;
        last.push_str(&format!("\n\nRespond with `[[ ## {first} ## ]]`"));
        for field in &prompt.outputs[1..] {
            last.push_str(&format!(", `[[ ## {} ## ]]`", field.name));
        }
        last.push_str(", then `[[ ## completed ## ]]`.");
    }
    messages.push(ChatMessage::new(Role::User, last));

    Rendered {
        messages,
        template: template(format, prompt.outputs),
        json_schema: (format == AdapterFormat::Json).then(|| reply_schema(prompt.outputs)),
    }
}

fn field_list(title: &str, fields: &[Field]) -> String {
    let mut out = format!("{title}\n");
    for (i, f) in fields.iter().enumerate() {
        out.push_str(&format!("{}. `{}` ({})", i + 1, f.name, f.ty.describe()));
        if !f.description.is_empty() {
            out.push_str(&format!(": {}", f.description));
        }
        out.push('\n');
    }
    out
}

fn input_block(fields: &[Field], values: &Map<String, Value>) -> String {
    let parts: Vec<String> =
        fields.iter().map(|f| format!("[[ ## {} ## ]]\n{}", f.name, show_value(values.get(&f.name)))).collect();
    parts.join("\n\n")
}

fn show_value(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => NOT_SUPPLIED.to_string(),
        Some(Value::String(s)) => s.clone(),
        // Laid out like the constrained reply: `{"a": 1, "b": [1, 2]}`.
        Some(other) => canonical_json(other),
    }
}

fn chat_reply(outputs: &[Field], values: &Map<String, Value>) -> String {
    let mut out = String::new();
    for f in outputs {
        out.push_str(&format!("[[ ## {} ## ]]\n{}\n\n", f.name, show_value(values.get(&f.name))));
    }
    out.push_str("[[ ## completed ## ]]");
    out
}

fn json_reply(outputs: &[Field], values: &Map<String, Value>) -> String {
    let object: Map<String, Value> = outputs
        .iter()
        .map(|f| (f.name.clone(), values.get(&f.name).cloned().unwrap_or_else(|| Value::String(NOT_SUPPLIED.into()))))
        .collect();
    // `{"a": 1, "b": "x"}`: one line, spaced like a person writes it, nested
    // values too; the layout constrained decoding produces.
    canonical_json(&Value::Object(object))
}

/// The JSON Schema of a JSON-format reply.
pub fn reply_schema(outputs: &[Field]) -> Value {
    let properties: Map<String, Value> = outputs.iter().map(|f| (f.name.clone(), f.ty.json_schema())).collect();
    let required: Vec<Value> = outputs.iter().map(|f| Value::String(f.name.clone())).collect();
    serde_json::json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

/// The reply's shape as segments, so an engine that constrains decoding can
/// only produce a reply this module parses. The JSON format is one JSON value
/// ([`reply_schema`]); the chat format puts each field's value under its
/// marker, lists and JSON values as JSON of the field's schema. (Always `Some`.)
pub fn template(format: AdapterFormat, outputs: &[Field]) -> Option<OutputTemplate> {
    let mut segments = Vec::new();
    match format {
        AdapterFormat::Chat => {
            for (i, f) in outputs.iter().enumerate() {
                let sep = if i == 0 { "" } else { "\n\n" };
                segments.push(Segment::Literal { text: format!("{sep}[[ ## {} ## ]]\n", f.name) });
                segments.push(match &f.ty {
                    FieldType::Enum { values } => Segment::Choice { options: values.clone() },
                    FieldType::Bool => Segment::Choice { options: vec!["true".into(), "false".into()] },
                    FieldType::Int => Segment::Number { integer: true },
                    FieldType::Float => Segment::Number { integer: false },
                    FieldType::String => Segment::Text { until: "[[ ##".into() },
                    FieldType::List { .. } | FieldType::Json { .. } => {
                        let schema = f.ty.json_schema();
                        // A schema the decoder cannot enforce (only possible when the
                        // pipeline was not checked for it) stays text up to the next marker.
                        if validate_schema(&schema).is_ok() {
                            Segment::Json { schema }
                        } else {
                            Segment::Text { until: "[[ ##".into() }
                        }
                    }
                });
            }
            segments.push(Segment::Literal { text: "\n\n[[ ## completed ## ]]".into() });
        }
        AdapterFormat::Json => segments.push(Segment::Json { schema: reply_schema(outputs) }),
    }
    Some(OutputTemplate { segments })
}

/// Whether `reply` holds the whole reply, not just its beginning: in the chat
/// format the `[[ ## completed ## ]]` marker follows every field's marker, in
/// the JSON format a whole object with every field parses. A reply the token
/// budget stopped is taken as written only when it is complete.
pub fn reply_complete(format: AdapterFormat, outputs: &[Field], reply: &str) -> bool {
    match format {
        AdapterFormat::Chat => {
            let names: Vec<String> = MARKER.captures_iter(reply).map(|c| c[1].to_string()).collect();
            let Some(end) = names.iter().position(|n| n == "completed") else {
                return false;
            };
            outputs.iter().all(|f| names[..end].contains(&f.name))
        }
        AdapterFormat::Json => match extract_json(reply) {
            Some(Value::Object(object)) => outputs.iter().all(|f| object.contains_key(&f.name)),
            _ => false,
        },
    }
}

/// Why a reply the token budget stopped is not an answer: `reply cut at
/// max_tokens = 16 before `queue` was complete`, naming the field it was
/// writing (or about to write) when the budget ran out.
pub fn cut_reason(format: AdapterFormat, outputs: &[Field], reply: &str, max_tokens: u32) -> String {
    let field = match format {
        AdapterFormat::Chat => {
            // The field whose marker came last; the first if none came yet.
            let last = MARKER.captures_iter(reply).filter_map(|c| outputs.iter().position(|f| f.name == c[1])).last();
            match last {
                // Its value is written and the next marker begun: the next field.
                Some(i) if reply.rsplit_once("]]").is_some_and(|(_, tail)| tail.trim_start().contains("\n\n[")) => {
                    outputs.get(i + 1).map(|f| f.name.as_str())
                }
                Some(i) => Some(outputs[i].name.as_str()),
                None => outputs.first().map(|f| f.name.as_str()),
            }
        }
        AdapterFormat::Json => {
            // The field whose key came last; the first if none came yet.
            outputs
                .iter()
                .filter_map(|f| reply.rfind(&format!("\"{}\"", f.name)).map(|at| (at, f.name.as_str())))
                .max()
                .map(|(_, name)| name)
                .or_else(|| outputs.first().map(|f| f.name.as_str()))
        }
    };
    match field {
        Some(name) => format!("reply cut at max_tokens = {max_tokens} before `{name}` was complete"),
        None => format!("reply cut at max_tokens = {max_tokens} before its end marker"),
    }
}

static MARKER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\[\[\s*##\s*([A-Za-z0-9_]+)\s*##\s*\]\]").expect("valid regex"));

/// Reads a reply in `format` into one value per output field.
pub fn parse(format: AdapterFormat, outputs: &[Field], reply: &str) -> Result<Map<String, Value>, String> {
    match format {
        AdapterFormat::Chat => parse_chat(outputs, reply),
        AdapterFormat::Json => parse_json(outputs, reply),
    }
}

fn parse_chat(outputs: &[Field], reply: &str) -> Result<Map<String, Value>, String> {
    let markers: Vec<_> = MARKER.captures_iter(reply).collect();
    let mut sections: Vec<(String, &str)> = Vec::new();
    for (i, cap) in markers.iter().enumerate() {
        let whole = cap.get(0).expect("match");
        let end = markers.get(i + 1).map(|next| next.get(0).expect("match").start()).unwrap_or(reply.len());
        sections.push((cap[1].to_string(), &reply[whole.end()..end]));
    }
    // A bare value with no markers is unambiguous when there is one output field.
    if sections.is_empty() && outputs.len() == 1 {
        let value = parse_text_value(&outputs[0], reply).map_err(|e| {
            format!("no `[[ ## {} ## ]]` marker, and the reply is not a bare value: {e}", outputs[0].name)
        })?;
        return Ok(Map::from_iter([(outputs[0].name.clone(), value)]));
    }
    let mut out = Map::new();
    for field in outputs {
        let Some((_, raw)) = sections.iter().find(|(name, _)| name == &field.name) else {
            return Err(format!("the reply has no `[[ ## {} ## ]]` section", field.name));
        };
        let value = parse_text_value(field, raw).map_err(|e| format!("field `{}`: {e}", field.name))?;
        out.insert(field.name.clone(), value);
    }
    Ok(out)
}

fn parse_json(outputs: &[Field], reply: &str) -> Result<Map<String, Value>, String> {
    let object = match extract_json(reply) {
        Some(Value::Object(object)) => object,
        Some(_) => return Err("the reply's JSON is not an object".into()),
        None => return Err("the reply holds no JSON object".into()),
    };
    let mut out = Map::new();
    for field in outputs {
        let value = object
            .get(&field.name)
            .or_else(|| object.iter().find(|(k, _)| k.eq_ignore_ascii_case(&field.name)).map(|(_, v)| v))
            .ok_or_else(|| format!("the reply's JSON has no key `{}`", field.name))?;
        let value = coerce(field, value).map_err(|e| format!("field `{}`: {e}", field.name))?;
        out.insert(field.name.clone(), value);
    }
    Ok(out)
}

/// The first JSON value in `text` that parses: the whole text, a fenced block,
/// or the span from the first `{`/`[` to its last closing partner.
fn extract_json(text: &str) -> Option<Value> {
    let trimmed = text.trim();
    if let Ok(v) = serde_json::from_str(trimmed) {
        return Some(v);
    }
    let unfenced = trimmed
        .split("```")
        .nth(1)
        .map(|block| block.trim_start_matches("json").trim())
        .and_then(|block| serde_json::from_str(block).ok());
    if unfenced.is_some() {
        return unfenced;
    }
    for (open, close) in [('{', '}'), ('[', ']')] {
        if let (Some(start), Some(end)) = (trimmed.find(open), trimmed.rfind(close)) {
            if start < end {
                if let Ok(v) = serde_json::from_str(&trimmed[start..=end]) {
                    return Some(v);
                }
            }
        }
    }
    None
}

/// A value written as text (a `[[ ## field ## ]]` section).
fn parse_text_value(field: &Field, raw: &str) -> Result<Value, String> {
    let text = raw.trim();
    match &field.ty {
        FieldType::String => Ok(Value::String(text.to_string())),
        FieldType::Enum { values } => match_enum(values, text),
        FieldType::Bool => parse_bool(text),
        FieldType::Int => {
            let t = strip_wrapping(text);
            t.parse::<i64>().map(Value::from).map_err(|_| format!("`{}` is not an integer", clip(text)))
        }
        FieldType::Float => {
            let t = strip_wrapping(text);
            t.parse::<f64>()
                .ok()
                .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
                .ok_or_else(|| format!("`{}` is not a number", clip(text)))
        }
        FieldType::List { .. } | FieldType::Json { .. } => {
            let value = extract_json(text).ok_or_else(|| format!("`{}` holds no JSON value", clip(text)))?;
            coerce(field, &value)
        }
    }
}

/// A value given as JSON (a JSON reply, or a list/json field's text).
fn coerce(field: &Field, value: &Value) -> Result<Value, String> {
    coerce_type(&field.ty, value)
}

fn coerce_type(ty: &FieldType, value: &Value) -> Result<Value, String> {
    match (ty, value) {
        (FieldType::String, Value::String(_)) => Ok(value.clone()),
        (FieldType::String, Value::Null) => Err("is null".into()),
        (FieldType::String, other) => Ok(Value::String(other.to_string())),
        (FieldType::Enum { values }, Value::String(s)) => match_enum(values, s),
        (FieldType::Bool, Value::Bool(_)) => Ok(value.clone()),
        (FieldType::Bool, Value::String(s)) => parse_bool(s),
        (FieldType::Int, Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(value.clone()),
        (FieldType::Int, Value::Number(n)) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => {
            Ok(Value::from(n.as_f64().expect("checked") as i64))
        }
        (FieldType::Int, Value::String(s)) => {
            s.trim().parse::<i64>().map(Value::from).map_err(|_| format!("`{}` is not an integer", clip(s)))
        }
        (FieldType::Float, Value::Number(_)) => Ok(value.clone()),
        (FieldType::Float, Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
            .ok_or_else(|| format!("`{}` is not a number", clip(s))),
        (FieldType::List { items }, Value::Array(array)) => {
            let items: Result<Vec<Value>, String> = array
                .iter()
                .enumerate()
                .map(|(i, v)| coerce_type(items, v).map_err(|e| format!("item {i}: {e}")))
                .collect();
            Ok(Value::Array(items?))
        }
        (FieldType::Json { schema }, v) => {
            let validator = jsonschema::validator_for(schema).map_err(|e| format!("invalid schema: {e}"))?;
            let problems: Vec<String> = validator.iter_errors(v).take(3).map(|e| e.to_string()).collect();
            if problems.is_empty() {
                Ok(v.clone())
            } else {
                Err(format!("does not match the schema: {}", problems.join("; ")))
            }
        }
        (ty, v) => Err(format!("expected {}, got `{}`", ty.describe(), clip(&v.to_string()))),
    }
}

/// Quotes, backticks, emphasis and a trailing period around a short value.
fn strip_wrapping(text: &str) -> &str {
    let mut t = text.trim();
    loop {
        let before = t;
        t = t.trim_end_matches(['.', ',', ';']).trim();
        for (open, close) in [("\"", "\""), ("'", "'"), ("`", "`"), ("**", "**"), ("*", "*"), ("[", "]"), ("(", ")")] {
            if t.len() >= open.len() + close.len() && t.starts_with(open) && t.ends_with(close) {
                t = t[open.len()..t.len() - close.len()].trim();
            }
        }
        if t == before {
            return t;
        }
    }
}

fn enum_key(text: &str) -> String {
    text.trim().to_lowercase().chars().map(|c| if c == ' ' || c == '-' { '_' } else { c }).collect()
}

fn match_enum(values: &[String], text: &str) -> Result<Value, String> {
    let wanted = enum_key(strip_wrapping(text));
    let hits: Vec<&String> = values.iter().filter(|v| enum_key(v) == wanted).collect();
    match hits.as_slice() {
        [one] => Ok(Value::String((*one).clone())),
        _ => Err(format!("`{}` is not one of: {}", clip(text), values.join(", "))),
    }
}

fn parse_bool(text: &str) -> Result<Value, String> {
    match strip_wrapping(text).to_lowercase().as_str() {
        "true" | "yes" => Ok(Value::Bool(true)),
        "false" | "no" => Ok(Value::Bool(false)),
        _ => Err(format!("`{}` is not true or false", clip(text))),
    }
}

fn clip(text: &str) -> String {
    const MAX: usize = 80;
    let text = text.trim();
    if text.chars().count() <= MAX {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(MAX).collect::<String>())
    }
}
