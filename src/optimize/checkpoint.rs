//! Checkpoints: a long search survives being killed (a cancelled CI job, a
//! crash, an outage after retries) and continues where it was.
//!
//! What a search costs is its scoring on dev, so the checkpoint holds every
//! program's dev results as they complete (written to a temporary file and
//! renamed). A resumed run replays the search from its seed: scores the
//! checkpoint holds are taken from it, and counted against the budget exactly
//! as when they were first made, so the search takes the same path, stops at
//! the same point, and reaches the same program as an uninterrupted run; the
//! other calls (bootstrapping, proposals, reflections) come from the response
//! cache. A checkpoint belongs to one pipeline, dataset, seed, optimizer
//! setting and production program: any other is refused, never mixed in.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::eval::ExampleResult;
use crate::program::Program;

pub const FORMAT: &str = "promptloop.checkpoint/v1";

/// What a checkpoint must match to be resumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub pipeline: String,
    /// SHA-256 of the dataset file.
    pub dataset: String,
    pub seed: u64,
    /// The optimizer's settings, as the artifact records them.
    pub optimizer: serde_json::Value,
    /// The program the search starts from.
    pub production: String,
    /// The LM the task runs on.
    pub model: serde_json::Value,
}

/// One program's dev results as saved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedEntry {
    pub key: String,
    /// Results by dev example id (traces left out).
    pub results: Vec<ExampleResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct File {
    format: String,
    identity: Identity,
    entries: Vec<SavedEntry>,
}

/// A search's checkpoint file: what it restored, and where it saves.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    identity: Identity,
    restored: Vec<SavedEntry>,
    saved: Mutex<Vec<SavedEntry>>,
}

impl Checkpoint {
    /// Opens the checkpoint at `path` for a search with `identity`: resumes
    /// the one there, or starts empty (`fresh` discards any). A corrupt or
    /// foreign file is an error that names it and says how to start over.
    pub fn open(path: &Path, identity: Identity, fresh: bool) -> Result<Checkpoint> {
        let empty = |restored: Vec<SavedEntry>| Checkpoint {
            path: path.to_path_buf(),
            identity: identity.clone(),
            // What was restored stays in the file until the search has it again.
            saved: Mutex::new(restored.clone()),
            restored,
        };
        if fresh {
            match std::fs::remove_file(path) {
                Ok(()) => tracing::info!(path = %path.display(), "discarded the checkpoint (--fresh)"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot remove the checkpoint {}", path.display())),
            }
            return Ok(empty(Vec::new()));
        }
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(empty(Vec::new())),
            Err(e) => return Err(e).with_context(|| format!("cannot read the checkpoint {}", path.display())),
        };
        let file: File = serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}: not a checkpoint promptloop can read ({e}); run again with --fresh to start the optimization over",
                path.display()
            )
        })?;
        if file.format != FORMAT {
            bail!(
                "{}: checkpoint format `{}`, this promptloop writes `{FORMAT}`; run again with --fresh to start over",
                path.display(),
                file.format
            );
        }
        if file.identity != identity {
            let what = mismatch(&file.identity, &identity);
            bail!(
                "{}: this checkpoint is for a different {what}, and is not mixed into this search; run again with --fresh to start over (it is discarded)",
                path.display()
            );
        }
        tracing::info!(path = %path.display(), programs = file.entries.len(), "resuming the search from its checkpoint");
        Ok(empty(file.entries))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved dev results of the program with `key`, by dev example id.
    pub fn restored(&self, key: &str) -> Option<&[ExampleResult]> {
        self.restored.iter().find(|e| e.key == key).map(|e| e.results.as_slice())
    }

    /// Programs restored from the file.
    pub fn restored_len(&self) -> usize {
        self.restored.len()
    }

    /// Records `program`'s results so far and writes the file. A file that
    /// cannot be written is a warning: the search goes on without it.
    pub fn save(&self, program: &Program, results: Vec<ExampleResult>) {
        let key = super::scorer::program_key(program);
        let results: Vec<ExampleResult> =
            results.into_iter().map(|r| ExampleResult { trace: Vec::new(), ..r }).collect();
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        match saved.iter_mut().find(|e| e.key == key) {
            Some(entry) => entry.results = results,
            None => saved.push(SavedEntry { key, results }),
        }
        let file = File { format: FORMAT.into(), identity: self.identity.clone(), entries: saved.clone() };
        let bytes = serde_json::to_vec(&file).expect("a checkpoint serializes");
        if let Err(e) = crate::program::artifact::write_atomically(&self.path, &bytes) {
            tracing::warn!(path = %self.path.display(), error = %format!("{e:#}"), "the checkpoint could not be written; the search goes on without it");
        }
    }

    /// Removes the file once the search's results are safely used.
    pub fn finish(&self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "the finished checkpoint could not be removed");
        }
    }
}

/// What differs between two identities, in words.
fn mismatch(found: &Identity, wanted: &Identity) -> String {
    let mut what = Vec::new();
    if found.pipeline != wanted.pipeline {
        what.push(format!("pipeline (`{}`)", found.pipeline));
    }
    if found.dataset != wanted.dataset {
        what.push("dataset".to_string());
    }
    if found.seed != wanted.seed {
        what.push(format!("seed ({})", found.seed));
    }
    if found.optimizer != wanted.optimizer {
        what.push("optimizer setting".to_string());
    }
    if found.production != wanted.production {
        what.push("production program".to_string());
    }
    if found.model != wanted.model {
        what.push("model".to_string());
    }
    what.join(", ")
}
