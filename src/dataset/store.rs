//! The dataset's files: `examples.jsonl` merged in place, `inbox.jsonl` for
//! records that still need a reference, and `manifest.json` describing both.
//!
//! People edit these files in pull requests, so a merge never rewrites what is
//! there: existing lines are kept byte for byte and new ones appended. An inbox
//! line a person gave `outputs` is promoted into the examples as written. Each
//! file is written to a temporary file and renamed into place, and a merge
//! refuses to run when `examples.jsonl` or `inbox.jsonl` changed since it was read.
//! The manifest remembers which ids pull added, so one a person deleted stays
//! deleted when the same message is pulled again.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{DatasetLines, Example, Split, parse_examples, split_of};
use crate::config::SplitFractions;
use crate::program::artifact::write_atomically;

pub struct DatasetStore {
    pub examples: PathBuf,
    pub inbox: PathBuf,
    pub manifest: PathBuf,
    fractions: SplitFractions,
}

/// The dataset as read before a merge.
pub struct Snapshot {
    examples_bytes: Vec<u8>,
    inbox_bytes: Vec<u8>,
    pub examples: Vec<Example>,
    pub inbox: Vec<InboxEntry>,
    /// Pulled ids a person deleted, now or before: pull keeps them out.
    pub removed: BTreeSet<String>,
    /// Pulled ids still in the files.
    pulled: BTreeSet<String>,
    /// Where the pull that wrote the manifest ended its window.
    pub pulled_until: Option<chrono::DateTime<chrono::Utc>>,
}

/// One inbox line: its text as written, and what promptloop reads of it.
pub struct InboxEntry {
    text: String,
    pub id: String,
    pub inputs: Map<String, Value>,
    /// Filled in by a person: the line moves into the examples on the next merge.
    pub outputs: Map<String, Value>,
}

/// What a merge changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MergeOutcome {
    /// New examples per split.
    pub added: BTreeMap<Split, usize>,
    /// Inbox lines a person labelled, moved into the examples.
    pub promoted: usize,
    pub inbox_added: usize,
    pub manifest: Manifest,
}

/// `manifest.json`: a summary reviewers (and the report) can trust without
/// reading the whole dataset, and the memory of what pull added, so that a
/// record a person deleted is not pulled back in when the same message
/// comes again. It only changes when the files do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Manifest {
    pub examples: usize,
    pub inbox: usize,
    /// Examples per split.
    pub splits: BTreeMap<String, usize>,
    /// Examples per split and signal (`unlabeled` for examples without one).
    pub signals: BTreeMap<String, BTreeMap<String, usize>>,
    /// SHA-256 of examples.jsonl.
    pub content_hash: String,
    pub split_fractions: BTreeMap<String, f64>,
    /// Ids pull put in the examples or the inbox that are still there.
    #[serde(default)]
    pub pulled: Vec<String>,
    /// Ids pull put there that a person deleted: never added again.
    #[serde(default)]
    pub removed: Vec<String>,
    /// Where the last pull's window ended. It travels with the dataset, so a
    /// run on a branch that has not merged last week's pull reads those logs
    /// again instead of losing them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pulled_until: Option<chrono::DateTime<chrono::Utc>>,
}

impl DatasetStore {
    /// The store around `examples_path`: the inbox and manifest sit beside it.
    pub fn new(examples_path: &Path, fractions: SplitFractions) -> Self {
        let dir = examples_path.parent().unwrap_or(Path::new("."));
        Self {
            examples: examples_path.to_path_buf(),
            inbox: dir.join("inbox.jsonl"),
            manifest: dir.join("manifest.json"),
            fractions,
        }
    }

    /// Where the last merged pull's window ended, from the manifest alone.
    pub fn pulled_until(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        Ok(self.read_manifest()?.pulled_until)
    }

    fn read_manifest(&self) -> Result<Manifest> {
        let manifest_bytes = read_optional(&self.manifest)?;
        if manifest_bytes.is_empty() {
            return Ok(Manifest::default());
        }
        serde_json::from_slice(&manifest_bytes).with_context(|| {
            format!(
                "{} is not a manifest promptloop can read; restore it from git (or delete it, and records people deleted may come back)",
                self.manifest.display()
            )
        })
    }

    /// Reads the examples (a missing file is an empty dataset) and the inbox.
    pub fn read(&self) -> Result<Snapshot> {
        let examples_bytes = read_optional(&self.examples)?;
        let examples = parse_examples(&examples_bytes, &self.examples)?;
        let inbox_bytes = read_optional(&self.inbox)?;
        let inbox = parse_inbox(&inbox_bytes, &self.inbox)?;
        let previous = self.read_manifest()?;
        let present: HashSet<&str> =
            examples.iter().map(|e| e.id.as_str()).chain(inbox.iter().map(|e| e.id.as_str())).collect();
        let (pulled, gone): (BTreeSet<String>, BTreeSet<String>) =
            previous.pulled.into_iter().partition(|id| present.contains(id.as_str()));
        let removed = previous.removed.into_iter().chain(gone).collect();
        Ok(Snapshot {
            examples_bytes,
            inbox_bytes,
            examples,
            inbox,
            removed,
            pulled,
            pulled_until: previous.pulled_until,
        })
    }

    /// Appends `new_examples` to the examples and `new_inbox` to the inbox,
    /// promotes labelled inbox lines, and rewrites the manifest.
    pub fn merge(
        &self,
        snapshot: &Snapshot,
        new_examples: &[Example],
        new_inbox: &[Example],
        window_end: chrono::DateTime<chrono::Utc>,
    ) -> Result<MergeOutcome> {
        for (path, read) in [(&self.examples, &snapshot.examples_bytes), (&self.inbox, &snapshot.inbox_bytes)] {
            if read_optional(path)? != *read {
                bail!(
                    "{} changed while the pull ran; nothing was written. Save the edit and pull again",
                    path.display()
                );
            }
        }
        let mut ids: HashSet<&str> = snapshot.examples.iter().map(|e| e.id.as_str()).collect();
        let mut examples_text = String::from_utf8(snapshot.examples_bytes.clone()).expect("parsed as UTF-8 already");
        if !examples_text.is_empty() && !examples_text.ends_with('\n') {
            examples_text.push('\n');
        }
        let mut outcome = MergeOutcome::default();

        let mut inbox_text = String::new();
        let mut inbox_kept = 0;
        for entry in &snapshot.inbox {
            if entry.outputs.is_empty() {
                inbox_text.push_str(&entry.text);
                inbox_text.push('\n');
                inbox_kept += 1;
            } else if ids.insert(entry.id.as_str()) {
                examples_text.push_str(&entry.text);
                examples_text.push('\n');
                outcome.promoted += 1;
            }
            // A labelled line whose id is already an example was copied over by
            // hand; the example is the copy that counts.
        }
        for example in new_examples {
            if !ids.insert(example.id.as_str()) {
                continue;
            }
            examples_text.push_str(&serde_json::to_string(example).expect("an example serializes"));
            examples_text.push('\n');
            *outcome.added.entry(split_of(&example.id, &self.fractions)).or_default() += 1;
        }
        let inbox_ids: HashSet<&str> = snapshot.inbox.iter().map(|e| e.id.as_str()).collect();
        for record in new_inbox {
            if ids.contains(record.id.as_str()) || inbox_ids.contains(record.id.as_str()) {
                continue;
            }
            inbox_text.push_str(&serde_json::to_string(record).expect("an inbox record serializes"));
            inbox_text.push('\n');
            outcome.inbox_added += 1;
        }

        // Parse what we are about to write: a merge must leave a loadable dataset.
        let merged = parse_examples(examples_text.as_bytes(), &self.examples)
            .context("the merged dataset does not parse; nothing was written")?;
        let inbox_count = inbox_kept + outcome.inbox_added;
        outcome.manifest = self.manifest_of(&merged, examples_text.as_bytes(), inbox_count);
        let mut pulled = snapshot.pulled.clone();
        pulled.extend(new_examples.iter().chain(new_inbox).map(|e| e.id.clone()));
        outcome.manifest.pulled = pulled.into_iter().collect();
        outcome.manifest.removed = snapshot.removed.iter().cloned().collect();
        outcome.manifest.pulled_until = Some(window_end);

        write_atomically(&self.examples, examples_text.as_bytes())?;
        write_atomically(&self.inbox, inbox_text.as_bytes())?;
        let mut manifest = serde_json::to_string_pretty(&outcome.manifest).expect("a manifest serializes");
        manifest.push('\n');
        write_atomically(&self.manifest, manifest.as_bytes())?;
        Ok(outcome)
    }

    fn manifest_of(&self, examples: &[Example], bytes: &[u8], inbox: usize) -> Manifest {
        let mut manifest = Manifest {
            examples: examples.len(),
            inbox,
            content_hash: hex::encode(Sha256::digest(bytes)),
            split_fractions: [
                ("train", self.fractions.train),
                ("dev", self.fractions.dev),
                ("test", self.fractions.test),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            ..Manifest::default()
        };
        for example in examples {
            let split = split_of(&example.id, &self.fractions).name().to_string();
            let signal = signal_label(example).unwrap_or("unlabeled").to_string();
            *manifest.splits.entry(split.clone()).or_default() += 1;
            *manifest.signals.entry(split).or_default().entry(signal).or_default() += 1;
        }
        manifest
    }
}

/// The signal label an example carries (`{"signal": {"label": "urgent", ...}}`).
pub fn signal_label(example: &Example) -> Option<&str> {
    example.extra.get("signal")?.get("label")?.as_str()
}

fn read_optional(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Inbox lines need an `id` and `inputs`; `outputs` may be missing or empty.
fn parse_inbox(bytes: &[u8], path: &Path) -> Result<Vec<InboxEntry>> {
    let mut entries = Vec::new();
    for line in DatasetLines::new(bytes, path) {
        let (line_no, line) = line?;
        let at = format!("{}:{line_no}", path.display());
        let value: Value = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("{at}: not a JSON object (column {}); fix or delete the line", e.column()))?;
        let id = value.get("id").and_then(Value::as_str).filter(|s| !s.is_empty());
        let inputs = value.get("inputs").and_then(Value::as_object);
        let (Some(id), Some(inputs)) = (id, inputs) else {
            bail!("{at}: an inbox line needs a string `id` and an object `inputs`; restore them or delete the line");
        };
        let outputs = match value.get("outputs") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(outputs)) => outputs.clone(),
            Some(_) => bail!("{at}: `outputs` must be an object of output fields, e.g. {{\"queue\": \"cards\"}}"),
        };
        entries.push(InboxEntry { text: line, id: id.to_string(), inputs: inputs.clone(), outputs });
    }
    Ok(entries)
}
