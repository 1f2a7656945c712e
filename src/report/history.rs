//! `artifacts/<name>/history.jsonl`: one line per run, appended, never
//! rewritten, so the PR shows the score's path across weeks.

use std::path::Path;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::eval::gate::Decision;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub date: DateTime<Utc>,
    /// Examples in the dataset the run scored on.
    pub examples: usize,
    /// Test examples both programs were scored on.
    pub test_n: usize,
    /// Production's test score.
    pub baseline: f64,
    /// The candidate's test score and the delta with its interval; `null`
    /// when the search found no better program, so none was scored on test.
    pub candidate: Option<f64>,
    pub delta: Option<f64>,
    pub low: Option<f64>,
    pub high: Option<f64>,
    pub decision: Decision,
    pub lm_calls: u64,
    pub tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dollars: Option<f64>,
}

/// The bytes of `path` (none when it does not exist): [`parse`] reads them
/// for the chart, [`appended`] extends them.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The entries in a history file's bytes. A line that does not parse is
/// skipped with a warning naming it: the history is for reading, and a
/// hand-edited line must not stop a run.
pub fn parse(bytes: &[u8], path: &Path) -> Vec<Entry> {
    let mut entries = Vec::new();
    for (index, line) in String::from_utf8_lossy(bytes).lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Entry>(line) {
            Ok(entry) => entries.push(entry),
            Err(e) => {
                tracing::warn!("{}:{}: not a history entry ({e}); left out of the chart", path.display(), index + 1)
            }
        }
    }
    entries
}

/// The file's bytes with `entry` appended as one line; earlier lines are kept
/// byte for byte.
pub fn appended(existing: &[u8], entry: &Entry) -> Vec<u8> {
    let mut bytes = existing.to_vec();
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(serde_json::to_string(entry).expect("a history entry serializes").as_bytes());
    bytes.push(b'\n');
    bytes
}
