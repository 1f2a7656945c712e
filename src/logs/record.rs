//! The log record every source and format is mapped onto.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One production LM call, as promptloop sees it.
///
/// `inputs`, `output` and `reference` are keyed by the signature's field names:
/// `{"message": "..."}` in, `{"queue": "cards"}` out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The id the source gave the record (a request id, a span id, ...).
    pub id: String,
    pub timestamp: DateTime<Utc>,
    pub inputs: Map<String, Value>,
    /// What production answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Map<String, Value>>,
    /// A person's considered answer, when someone gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<Feedback>,
    /// Earlier user messages of the same conversation, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

/// What a user or reviewer said about the production output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Feedback {
    /// 0..=1 (or whatever scale the source uses; kept as given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}
