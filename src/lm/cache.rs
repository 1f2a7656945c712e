//! Persistent response cache (SQLite under `.promptloop/`), keyed by a hash of
//! the whole request and the model's description.
//!
//! Every `put` is its own SQLite transaction in WAL mode, so a run killed at
//! any point leaves the file consistent: an entry is either fully there or not
//! at all. A row that cannot be read back (damaged by hand, written by an
//! incompatible version) is a miss, never an error.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::{LmDescription, LmRequest, LmResponse};

/// Part of every key: changing how keys are computed (or what a cached reply
/// means) bumps this, and old entries simply stop matching.
const KEY_FORMAT: &str = "promptloop-response-cache/v1";

/// Responses already computed, by [`request_key`].
pub struct ResponseCache {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self.lock().path().map(str::to_string);
        f.debug_struct("ResponseCache").field("path", &path).finish()
    }
}

impl ResponseCache {
    /// Opens (creating it and its directory if needed) the cache at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the directory {} for the response cache", dir.display()))?;
        }
        let conn =
            Connection::open(path).with_context(|| format!("cannot open the response cache {}", path.display()))?;
        Self::init(&conn).with_context(|| format!("cannot set up the response cache {}", path.display()))?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn init(conn: &Connection) -> rusqlite::Result<()> {
        // Another promptloop process may hold the write lock for a moment.
        conn.busy_timeout(Duration::from_secs(10))?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!("the response cache runs in {mode} journal mode, not WAL");
        }
        // In WAL mode NORMAL keeps the database consistent across crashes; at
        // worst the last few entries of a power cut are lost.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS responses (
                 key        TEXT PRIMARY KEY NOT NULL,
                 response   TEXT NOT NULL,
                 created_at INTEGER NOT NULL
             )",
        )?;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written.
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached response for `key`, if there is a readable one.
    pub fn get(&self, key: &str) -> Option<LmResponse> {
        let row: Option<String> = match self
            .lock()
            .query_row("SELECT response FROM responses WHERE key = ?1", params![key], |row| row.get(0))
            .optional()
        {
            Ok(row) => row,
            Err(e) => {
                tracing::warn!(key, "cannot read the response cache: {e}");
                return None;
            }
        };
        match serde_json::from_str(&row?) {
            Ok(response) => Some(response),
            Err(e) => {
                tracing::warn!(key, "ignoring an unreadable response cache entry: {e}");
                None
            }
        }
    }

    /// Stores `response` under `key`, replacing any earlier entry. A failed
    /// write is logged and otherwise ignored: the cache only saves work.
    pub fn put(&self, key: &str, response: &LmResponse) {
        let json = match serde_json::to_string(response) {
            Ok(json) => json,
            Err(e) => {
                tracing::warn!(key, "cannot serialize a response for the cache: {e}");
                return;
            }
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        if let Err(e) = self.lock().execute(
            "INSERT OR REPLACE INTO responses (key, response, created_at) VALUES (?1, ?2, ?3)",
            params![key, json, now],
        ) {
            tracing::warn!(key, "cannot write to the response cache: {e}");
        }
    }

    /// How many entries the cache holds (0 if it cannot be read).
    pub fn len(&self) -> usize {
        match self.lock().query_row("SELECT COUNT(*) FROM responses", [], |row| row.get::<_, i64>(0)) {
            Ok(n) => usize::try_from(n).unwrap_or(0),
            Err(e) => {
                tracing::warn!("cannot count the response cache entries: {e}");
                0
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The cache key: a SHA-256 over the canonical JSON of the model description and the request.
///
/// Canonical means object keys sorted at every depth, so a JSON Schema written
/// with its keys in another order gives the same key.
pub fn request_key(description: &LmDescription, request: &LmRequest) -> String {
    let value = json!({"lm": description, "request": request});
    let canonical = canonicalize(value).to_string();
    let mut hasher = Sha256::new();
    hasher.update(KEY_FORMAT.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical.as_bytes());
    hex::encode(hasher.finalize())
}

/// The same JSON with every object's keys in sorted order.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let a = json!({"b": 1, "a": {"y": [{"q": 1, "p": 2}], "x": null}});
        let b = json!({"a": {"x": null, "y": [{"p": 2, "q": 1}]}, "b": 1});
        assert_eq!(canonicalize(a.clone()).to_string(), canonicalize(b).to_string());
        assert_eq!(canonicalize(a).to_string(), r#"{"a":{"x":null,"y":[{"p":2,"q":1}]},"b":1}"#);
    }
}
