//! Signatures: the contract of one LM call — instructions plus typed input and
//! output fields.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The type of a field's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FieldType {
    String,
    Int,
    Float,
    Bool,
    Enum { values: Vec<String> },
    List { items: Box<FieldType> },
    Json { schema: Value },
}

impl FieldType {
    /// Parses the type names a pipeline file uses: `string`, `int`, `float`,
    /// `bool`, `enum`, `list<T>`, `json`. Enum values and JSON schemas come
    /// from sibling keys, so the caller passes them in.
    pub fn parse(name: &str, values: Option<&[String]>, schema: Option<&Value>) -> Result<FieldType, String> {
        let name = name.trim();
        if let Some(inner) = name.strip_prefix("list<").and_then(|rest| rest.strip_suffix('>')) {
            let items = FieldType::parse(inner, values, schema)?;
            return Ok(FieldType::List { items: Box::new(items) });
        }
        match name {
            "string" | "str" => Ok(FieldType::String),
            "int" | "integer" => Ok(FieldType::Int),
            "float" | "number" => Ok(FieldType::Float),
            "bool" | "boolean" => Ok(FieldType::Bool),
            "enum" => match values {
                Some(values) if !values.is_empty() => Ok(FieldType::Enum { values: values.to_vec() }),
                _ => Err("an `enum` field needs `values = [\"a\", \"b\", ...]`".into()),
            },
            "json" => match schema {
                Some(schema) => Ok(FieldType::Json { schema: schema.clone() }),
                None => Err("a `json` field needs `schema = { ... }` (a JSON Schema)".into()),
            },
            other => {
                Err(format!("unknown field type `{other}`; use one of string, int, float, bool, enum, list<T>, json"))
            }
        }
    }

    /// How the type is shown to the model in the field list.
    pub fn describe(&self) -> String {
        match self {
            FieldType::String => "str".into(),
            FieldType::Int => "int".into(),
            FieldType::Float => "float".into(),
            FieldType::Bool => "bool".into(),
            FieldType::Enum { values } => format!("one of: {}", values.join("; ")),
            FieldType::List { items } => format!("list[{}]", items.describe()),
            FieldType::Json { .. } => "JSON object".into(),
        }
    }

    /// The JSON Schema of a value of this type (used for JSON replies).
    pub fn json_schema(&self) -> Value {
        match self {
            FieldType::String => serde_json::json!({"type": "string"}),
            FieldType::Int => serde_json::json!({"type": "integer"}),
            FieldType::Float => serde_json::json!({"type": "number"}),
            FieldType::Bool => serde_json::json!({"type": "boolean"}),
            FieldType::Enum { values } => serde_json::json!({"type": "string", "enum": values}),
            FieldType::List { items } => {
                serde_json::json!({"type": "array", "items": items.json_schema()})
            }
            FieldType::Json { schema } => schema.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Field {
    pub name: String,
    #[serde(flatten)]
    pub ty: FieldType,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

impl Field {
    pub fn new(name: impl Into<String>, ty: FieldType, description: impl Into<String>) -> Self {
        Self { name: name.into(), ty, description: description.into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    pub inputs: Vec<Field>,
    pub outputs: Vec<Field>,
}

impl Signature {
    pub fn output(&self, name: &str) -> Option<&Field> {
        self.outputs.iter().find(|f| f.name == name)
    }
}

/// A signature as the pipeline file declares it (`[signatures.<name>]`):
/// its instructions and its typed fields.
#[derive(Debug, Clone, PartialEq)]
pub struct SignatureConfig {
    pub instructions: String,
    pub signature: Signature,
}

/// A field's value as text: a string as it is, anything else as JSON.
pub fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A value in the form two answers are compared in (exact match, an enum
/// label, a router's branch): lowercase, trimmed, inner whitespace
/// collapsed, wrapping punctuation gone.
pub fn normalize_value(value: &Value) -> String {
    let text = value_text(value).to_lowercase();
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.trim_matches(|c: char| c.is_ascii_punctuation() && c != '_' && c != '-').trim().to_string()
}
