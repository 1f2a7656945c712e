//! A keyed store of JSON values in SQLite: what the response cache
//! (`lm/cache.rs`) and the tool cache (`program/tool.rs`) are made of.
//!
//! WAL mode, one transaction per `put`, so a process killed at any point
//! leaves the file consistent: an entry is either fully there or not at all.
//! A row that cannot be read back (damaged by hand, written by an
//! incompatible version) is a miss, never an error; a failed write is logged
//! and otherwise ignored, since a cache only saves work.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub struct KeyedStore {
    conn: Mutex<Connection>,
    /// The table, and the column holding each value's JSON.
    table: &'static str,
    column: &'static str,
    /// What it is, for messages: `response cache`, `tool cache`.
    what: &'static str,
}

impl std::fmt::Debug for KeyedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self.lock().path().map(str::to_string);
        f.debug_struct("KeyedStore").field("what", &self.what).field("path", &path).finish()
    }
}

impl KeyedStore {
    /// Opens (creating it and its directory if needed) the store at `path`,
    /// values in `column` of `table`.
    pub fn open(path: &Path, table: &'static str, column: &'static str, what: &'static str) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the directory {} for the {what}", dir.display()))?;
        }
        let conn = Connection::open(path).with_context(|| format!("cannot open the {what} {}", path.display()))?;
        let store = Self { conn: Mutex::new(conn), table, column, what };
        store.init().with_context(|| format!("cannot set up the {what} {}", path.display()))?;
        Ok(store)
    }

    fn init(&self) -> rusqlite::Result<()> {
        let conn = self.lock();
        // Another promptloop process may hold the write lock for a moment.
        conn.busy_timeout(Duration::from_secs(10))?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!("the {} runs in {mode} journal mode, not WAL", self.what);
        }
        // In WAL mode NORMAL keeps the database consistent across crashes; at
        // worst the last few entries of a power cut are lost.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {} (
                 key        TEXT PRIMARY KEY NOT NULL,
                 {}         TEXT NOT NULL,
                 created_at INTEGER NOT NULL
             )",
            self.table, self.column
        ))?;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written.
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The value stored under `key`, if there is a readable one.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let sql = format!("SELECT {} FROM {} WHERE key = ?1", self.column, self.table);
        let row: Option<String> = match self.lock().query_row(&sql, params![key], |row| row.get(0)).optional() {
            Ok(row) => row,
            Err(e) => {
                tracing::warn!(key, "cannot read the {}: {e}", self.what);
                return None;
            }
        };
        match serde_json::from_str(&row?) {
            Ok(value) => Some(value),
            Err(e) => {
                tracing::warn!(key, "ignoring an unreadable {} entry: {e}", self.what);
                None
            }
        }
    }

    /// Stores `value` under `key`, replacing any earlier entry.
    pub fn put<T: Serialize>(&self, key: &str, value: &T) {
        let json = match serde_json::to_string(value) {
            Ok(json) => json,
            Err(e) => {
                tracing::warn!(key, "cannot serialize an entry for the {}: {e}", self.what);
                return;
            }
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let sql =
            format!("INSERT OR REPLACE INTO {} (key, {}, created_at) VALUES (?1, ?2, ?3)", self.table, self.column);
        if let Err(e) = self.lock().execute(&sql, params![key, json, now]) {
            tracing::warn!(key, "cannot write to the {}: {e}", self.what);
        }
    }

    /// How many entries it holds (0 if it cannot be read).
    pub fn len(&self) -> usize {
        let sql = format!("SELECT COUNT(*) FROM {}", self.table);
        match self.lock().query_row(&sql, [], |row| row.get::<_, i64>(0)) {
            Ok(n) => usize::try_from(n).unwrap_or(0),
            Err(e) => {
                tracing::warn!("cannot count the {} entries: {e}", self.what);
                0
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
