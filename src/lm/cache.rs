//! Persistent response cache (SQLite under `.promptloop/`), keyed by a hash of
//! the whole request and the model's description.
//!
//! Every `put` is its own SQLite transaction in WAL mode, so a run killed at
//! any point leaves the file consistent: an entry is either fully there or not
//! at all. A row that cannot be read back (damaged by hand, written by an
//! incompatible version) is a miss, never an error.

use std::path::Path;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::{LmDescription, LmRequest, LmResponse};
use crate::keyed::KeyedStore;

/// Part of every key: changing how keys are computed (or what a cached reply
/// means) bumps this, and old entries simply stop matching.
const KEY_FORMAT: &str = "promptloop-response-cache/v1";

/// Responses already computed, by [`request_key`].
#[derive(Debug)]
pub struct ResponseCache {
    store: KeyedStore,
}

impl ResponseCache {
    /// Opens (creating it and its directory if needed) the cache at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(Self { store: KeyedStore::open(path, "responses", "response", "response cache")? })
    }

    /// The cached response for `key`, if there is a readable one.
    pub fn get(&self, key: &str) -> Option<LmResponse> {
        self.store.get(key)
    }

    /// Stores `response` under `key`, replacing any earlier entry. A failed
    /// write is logged and otherwise ignored: the cache only saves work.
    pub fn put(&self, key: &str, response: &LmResponse) {
        self.store.put(key, response)
    }

    /// How many entries the cache holds (0 if it cannot be read).
    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
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
