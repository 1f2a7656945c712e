//! The dataset's files: `examples.jsonl` merged in place, `inbox.jsonl` for
//! records that still need a reference, and `manifest.json` describing both.
//!
//! People edit these files in pull requests, so a merge never rewrites what is
//! there: existing lines are kept byte for byte and new ones appended. An inbox
//! line a person gave `outputs` is promoted into the examples as written. A
//! merge refuses to run when `examples.jsonl` or `inbox.jsonl` changed since it
//! was read. The manifest remembers which ids pull added, so one a person
//! deleted stays deleted when the same message is pulled again.
//!
//! **One pull at a time.** A pull reads the dataset to deduplicate against it
//! and then merges into it, so it holds [`DatasetLock`] from before that read
//! until the manifest is written. The lock is the operating system's advisory
//! lock on a file under `.promptloop/locks/` (one per dataset directory): it
//! goes away with the process that held it, crash or not, so it is never
//! stale. The holder writes its pid, host, command and start time into the
//! file; a second pull is refused with them and how to retry.
//!
//! **One commit point.** The three files change together or not at all. A
//! merge (1–3) writes each file's new content beside it under a hidden name
//! (`.examples.jsonl.promptloop-new`, ...) and syncs it, (4) writes the
//! journal `.promptloop-merge.json` to a temporary file, and (5) renames it
//! into place: that rename is the commit. Then (6–8) it renames each new file
//! over the old one and (9) deletes the journal. The next pull, once it holds
//! the lock, calls [`DatasetStore::recover`] (and every merge does before it
//! writes): a journal there means a committed merge
//! was interrupted, so its remaining renames are done (the journal names each
//! new file with its SHA-256 and that of the file it replaces, so a file a
//! person edited in the meantime is never overwritten); no journal means
//! whatever temporary files lie there belong to a merge that never committed,
//! and they are deleted. Either way the dataset is one a whole merge left, and
//! a rerun of the pull over the same window reaches the files an
//! uninterrupted pull writes, byte for byte (`tests/pull_concurrency.rs`
//! stops a merge after each step to check it). Reading ([`DatasetStore::read`]) sees a committed merge even
//! before it is finished, so a dry run needs no recovery and writes nothing.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{DatasetLines, Example, MAX_EXAMPLE_LINE_BYTES, Split, SplitFractions, parse_examples, split_of};

/// The commit record of a merge, in the dataset's directory.
const JOURNAL: &str = ".promptloop-merge.json";
/// Where the journal is written before the rename that commits it.
const JOURNAL_TMP: &str = ".promptloop-merge.json.tmp";
const JOURNAL_FORMAT: &str = "promptloop.merge/v1";
/// A file's new content waits in `.{file}{PENDING}` until the journal commits it.
const PENDING: &str = ".promptloop-new";
/// How many steps a merge takes (see the module documentation).
#[doc(hidden)]
pub const MERGE_STEPS: usize = 9;

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
    /// New records left out because their line would pass [`MAX_EXAMPLE_LINE_BYTES`].
    pub too_long: usize,
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

/// The journal: what a committed merge puts in place.
#[derive(Debug, Serialize, serde::Deserialize)]
struct Journal {
    format: String,
    files: Vec<JournalEntry>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
struct JournalEntry {
    /// The file's name in the dataset's directory.
    file: String,
    /// Where its new content waits.
    pending: String,
    /// SHA-256 of the file the merge replaces (none when there was none).
    before: Option<String>,
    /// SHA-256 of the new content.
    after: String,
}

/// The dataset's lock, held while a pull reads and changes the dataset;
/// released when dropped or when the process ends, however it ends.
pub struct DatasetLock {
    file: File,
    path: PathBuf,
}

impl DatasetLock {
    /// The lock file (it holds who has the lock while someone does).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DatasetLock {
    fn drop(&mut self) {
        // Forget who held it; the lock itself goes with the file handle.
        let _ = self.file.set_len(0);
    }
}

/// Who holds a dataset's lock, as written into the lock file.
#[derive(Serialize, serde::Deserialize)]
struct Holder {
    pid: u32,
    host: String,
    command: String,
    since: chrono::DateTime<chrono::Utc>,
}

/// Merges to stop after a given step, by examples path: how tests stand in
/// for a crash between two steps. Empty outside tests.
static INTERRUPTIONS: Mutex<Vec<(PathBuf, usize)>> = Mutex::new(Vec::new());

/// Makes the next merge into `examples` stop with an error right after step
/// `after_step` (1 to [`MERGE_STEPS`]), leaving the files as a crash there
/// would: tests use it to check every step is recoverable.
#[doc(hidden)]
pub fn interrupt_next_merge(examples: &Path, after_step: usize) {
    INTERRUPTIONS.lock().unwrap_or_else(|e| e.into_inner()).push((examples.to_path_buf(), after_step));
}

/// Counts a merge's steps, stopping where a test asked.
struct Steps {
    done: usize,
    stop_after: Option<usize>,
}

impl Steps {
    fn for_merge(examples: &Path) -> Self {
        let mut interruptions = INTERRUPTIONS.lock().unwrap_or_else(|e| e.into_inner());
        let stop_after = interruptions.iter().position(|(path, _)| path == examples).map(|i| interruptions.remove(i).1);
        Self { done: 0, stop_after }
    }

    fn none() -> Self {
        Self { done: 0, stop_after: None }
    }

    fn done(&mut self) -> Result<()> {
        self.done += 1;
        if self.stop_after == Some(self.done) {
            bail!("the merge was interrupted after step {} of {MERGE_STEPS} (as a test asked)", self.done);
        }
        Ok(())
    }
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

    /// The directory the three files are in.
    pub fn dir(&self) -> &Path {
        self.manifest.parent().unwrap_or(Path::new("."))
    }

    /// Takes the dataset's lock, or says who has it. `lock_dir` is where lock
    /// files live (the pipeline's `.promptloop/locks`); `command` is what the
    /// holder is doing, for whoever finds the dataset busy.
    pub fn lock(&self, lock_dir: &Path, command: &str) -> Result<DatasetLock> {
        let dataset = stable_path(self.dir());
        let name = dataset.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let key = hex::encode(&Sha256::digest(dataset.as_os_str().as_encoded_bytes())[..8]);
        std::fs::create_dir_all(lock_dir).with_context(|| format!("cannot create {}", lock_dir.display()))?;
        let path = lock_dir.join(format!("{name}-{key}.lock"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the dataset's lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Holder>(&b).ok());
                let who = match holder {
                    Some(h) => format!(
                        "pid {} on {} (`{}`), since {}",
                        h.pid,
                        h.host,
                        h.command,
                        h.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                    None => "a process that has not written who it is yet".to_string(),
                };
                bail!(
                    "{} is locked by another pull: {who}. Nothing was read or written; pull again once it has finished (the lock in {} goes away when that process exits, even if it crashes)",
                    self.dir().display(),
                    path.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        let mut lock = DatasetLock { file, path };
        let holder = Holder {
            pid: std::process::id(),
            host: host_name(),
            command: command.to_string(),
            since: chrono::Utc::now(),
        };
        let text = serde_json::to_string(&holder).expect("the holder serializes");
        lock.file
            .set_len(0)
            .and_then(|()| lock.file.write_all(text.as_bytes()))
            .with_context(|| format!("cannot write {}", lock.path.display()))?;
        Ok(lock)
    }

    /// Puts the dataset back into a state a whole merge left: finishes a
    /// merge that committed (its journal is there) and deletes what one that
    /// did not commit wrote. Call it holding the lock. Returns whether there
    /// was anything to do.
    pub fn recover(&self) -> Result<bool> {
        let mut changed = false;
        if let Some(journal) = self.journal()? {
            self.apply(&journal, &mut Steps::none())?;
            tracing::warn!("{}: finished the merge an interrupted pull had committed", self.dir().display());
            changed = true;
        }
        let dir = self.dir();
        let mut leftovers = vec![dir.join(JOURNAL_TMP)];
        for path in [&self.examples, &self.inbox, &self.manifest] {
            let name = file_name(path);
            leftovers.push(dir.join(format!(".{name}{PENDING}")));
            // What earlier versions left: `.{name}.tmp-{pid}`.
            if let Ok(entries) = std::fs::read_dir(dir) {
                let prefix = format!(".{name}.tmp-");
                leftovers.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                        .map(|e| e.path()),
                );
            }
        }
        for path in leftovers {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::warn!("deleted {}, left by a pull that stopped before committing", path.display());
                    changed = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot delete {}, left by an interrupted pull; delete it by hand", path.display())
                    });
                }
            }
        }
        Ok(changed)
    }

    /// The journal of a committed, unfinished merge.
    fn journal(&self) -> Result<Option<Journal>> {
        let path = self.dir().join(JOURNAL);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        // Only files beside the journal, each with its own pending name.
        let sound = |j: &Journal| {
            j.format == JOURNAL_FORMAT
                && j.files.iter().all(|e| {
                    !e.file.is_empty()
                        && !e.file.starts_with('.')
                        && !e.file.contains(['/', '\\'])
                        && e.pending == format!(".{}{PENDING}", e.file)
                })
        };
        let journal: Journal = serde_json::from_slice(&bytes).ok().filter(sound).with_context(|| {
            format!(
                "{} is not a merge journal promptloop can read; restore the dataset's files from git and delete it",
                path.display()
            )
        })?;
        Ok(Some(journal))
    }

    /// Steps 6 to 9: each new file over the old one, then the journal gone.
    fn apply(&self, journal: &Journal, steps: &mut Steps) -> Result<()> {
        let dir = self.dir();
        let journal_path = dir.join(JOURNAL);
        for entry in &journal.files {
            let target = dir.join(&entry.file);
            let pending = dir.join(&entry.pending);
            match std::fs::read(&pending) {
                Ok(bytes) => {
                    if sha256(&bytes) != entry.after {
                        bail!(
                            "{} does not hold what {} says it does; restore the dataset's files from git, delete both and pull again",
                            pending.display(),
                            journal_path.display()
                        );
                    }
                    let current = read_existing(&target)?.map(|b| sha256(&b));
                    if current != entry.before && current.as_deref() != Some(entry.after.as_str()) {
                        bail!(
                            "{} changed after a pull was interrupted while writing it; the pull's version is {}. Keep one: move that file over yours, or delete it and {} to keep yours; then pull again",
                            target.display(),
                            pending.display(),
                            journal_path.display()
                        );
                    }
                    std::fs::rename(&pending, &target).with_context(|| {
                        format!("cannot move {} into place at {}", pending.display(), target.display())
                    })?;
                    sync_dir(dir)?;
                }
                // Moved into place before the interruption.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", pending.display())),
            }
            steps.done()?;
        }
        std::fs::remove_file(&journal_path).with_context(|| format!("cannot delete {}", journal_path.display()))?;
        sync_dir(dir)?;
        steps.done()
    }

    /// A file as the last committed merge left it: its new content while the
    /// merge is unfinished, the file itself otherwise.
    fn read_committed(&self, path: &Path, journal: Option<&Journal>) -> Result<Vec<u8>> {
        let name = file_name(path);
        if let Some(entry) = journal.and_then(|j| j.files.iter().find(|e| e.file == name))
            && let Some(bytes) = read_existing(&self.dir().join(&entry.pending))?
        {
            return Ok(bytes);
        }
        read_optional(path)
    }

    /// Where the last merged pull's window ended, from the manifest alone.
    pub fn pulled_until(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        Ok(self.read_manifest(self.journal()?.as_ref())?.pulled_until)
    }

    fn read_manifest(&self, journal: Option<&Journal>) -> Result<Manifest> {
        let manifest_bytes = self.read_committed(&self.manifest, journal)?;
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

    /// Reads the examples (a missing file is an empty dataset) and the inbox,
    /// as the last committed merge left them.
    pub fn read(&self) -> Result<Snapshot> {
        let journal = self.journal()?;
        let examples_bytes = self.read_committed(&self.examples, journal.as_ref())?;
        let examples = parse_examples(&examples_bytes, &self.examples)?;
        let inbox_bytes = self.read_committed(&self.inbox, journal.as_ref())?;
        let inbox = parse_inbox(&inbox_bytes, &self.inbox)?;
        let previous = self.read_manifest(journal.as_ref())?;
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
    /// promotes labelled inbox lines, and rewrites the manifest, all three
    /// committed at once (see the module documentation). Call it holding the
    /// lock the snapshot was read under.
    pub fn merge(
        &self,
        snapshot: &Snapshot,
        new_examples: &[Example],
        new_inbox: &[Example],
        window_end: chrono::DateTime<chrono::Utc>,
    ) -> Result<MergeOutcome> {
        // The snapshot may have been read through an unfinished merge's journal.
        self.recover()?;
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
        // Records whose line would be too long to read back are left out.
        let mut left_out: HashSet<&str> = HashSet::new();
        for example in new_examples {
            if ids.contains(example.id.as_str()) {
                continue;
            }
            let line = serde_json::to_string(example).expect("an example serializes");
            if line.len() > MAX_EXAMPLE_LINE_BYTES {
                left_out.insert(&example.id);
                continue;
            }
            ids.insert(&example.id);
            examples_text.push_str(&line);
            examples_text.push('\n');
            *outcome.added.entry(split_of(&example.id, &self.fractions)).or_default() += 1;
        }
        let inbox_ids: HashSet<&str> = snapshot.inbox.iter().map(|e| e.id.as_str()).collect();
        for record in new_inbox {
            if ids.contains(record.id.as_str()) || inbox_ids.contains(record.id.as_str()) {
                continue;
            }
            let line = serde_json::to_string(record).expect("an inbox record serializes");
            if line.len() > MAX_EXAMPLE_LINE_BYTES {
                left_out.insert(&record.id);
                continue;
            }
            inbox_text.push_str(&line);
            inbox_text.push('\n');
            outcome.inbox_added += 1;
        }
        outcome.too_long = left_out.len();
        if outcome.too_long > 0 {
            tracing::warn!(
                "{} pulled record(s) left out: as a dataset line each would be longer than {MAX_EXAMPLE_LINE_BYTES} bytes",
                outcome.too_long
            );
        }

        // Parse what we are about to write: a merge must leave a loadable dataset.
        let merged = parse_examples(examples_text.as_bytes(), &self.examples)
            .context("the merged dataset does not parse; nothing was written")?;
        let inbox_count = inbox_kept + outcome.inbox_added;
        outcome.manifest = self.manifest_of(&merged, examples_text.as_bytes(), inbox_count);
        let mut pulled = snapshot.pulled.clone();
        pulled.extend(
            new_examples.iter().chain(new_inbox).filter(|e| !left_out.contains(e.id.as_str())).map(|e| e.id.clone()),
        );
        outcome.manifest.pulled = pulled.into_iter().collect();
        outcome.manifest.removed = snapshot.removed.iter().cloned().collect();
        outcome.manifest.pulled_until = Some(window_end);

        let mut manifest = serde_json::to_string_pretty(&outcome.manifest).expect("a manifest serializes");
        manifest.push('\n');
        self.commit(
            &[
                (&self.examples, examples_text.as_bytes()),
                (&self.inbox, inbox_text.as_bytes()),
                (&self.manifest, manifest.as_bytes()),
            ],
            &mut Steps::for_merge(&self.examples),
        )?;
        Ok(outcome)
    }

    /// Writes `files` through the journal: steps 1 to 9 of the module
    /// documentation, the rename of step 5 the commit point.
    fn commit(&self, files: &[(&PathBuf, &[u8])], steps: &mut Steps) -> Result<()> {
        let dir = self.dir();
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut journal = Journal { format: JOURNAL_FORMAT.to_string(), files: Vec::new() };
        for (path, bytes) in files {
            let name = file_name(path);
            let pending = format!(".{name}{PENDING}");
            write_synced(&dir.join(&pending), bytes)?;
            let before = read_existing(path)?.map(|b| sha256(&b));
            journal.files.push(JournalEntry { file: name, pending, before, after: sha256(bytes) });
            steps.done()?;
        }
        let mut text = serde_json::to_string_pretty(&journal).expect("a journal serializes");
        text.push('\n');
        write_synced(&dir.join(JOURNAL_TMP), text.as_bytes())?;
        steps.done()?;
        std::fs::rename(dir.join(JOURNAL_TMP), dir.join(JOURNAL))
            .with_context(|| format!("cannot move {} into place", dir.join(JOURNAL).display()))?;
        sync_dir(dir)?;
        steps.done()?;
        self.apply(&journal, steps)
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

/// The file's bytes, or `None` when there is no such file.
fn read_existing(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Writes a file and waits until it is on disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).with_context(|| format!("cannot write {}", path.display()))
}

/// Makes the renames in `dir` durable (a no-op where directories cannot be synced).
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync {}", dir.display()))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The same path for a directory however it is named (relative, through a
/// symbolic link, not created yet), so every pull finds the same lock.
fn stable_path(dir: &Path) -> PathBuf {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut existing = absolute.as_path();
    let mut missing = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return missing.iter().rev().fold(real, |path, part| path.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_owned());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// This machine's name, for the lock file.
fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .into_iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .chain(["HOSTNAME", "COMPUTERNAME"].into_iter().filter_map(|var| std::env::var(var).ok()))
        .map(|name| name.trim().to_string())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "an unnamed host".to_string())
}
