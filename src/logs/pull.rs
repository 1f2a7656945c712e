//! `pull`: production logs in, dataset out, stage after stage.
//!
//! ```text
//! source ─► lines ─► records (format) ─► window ─► anonymize ─► signal ─► rank ─► reservoir per signal
//!                                                                                    │ (memory bounded by the caps)
//! dataset + inbox on disk ─► dedup index ─► exact / near / leak checks, rarest signal first ◄┘
//!                                                   ─► allocate the total ─► merge ─► manifest, state
//! ```
//!
//! Reading streams: lines are parsed, anonymized and read for signals in
//! batches on all cores, and only each signal's lowest-ranked records are
//! kept, so memory does not grow with the logs. Nothing is written until the
//! whole source has been read: a source that fails mid-stream stops the pull
//! with the dataset untouched.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::PipelineConfig;
use crate::dataset::store::{DatasetStore, MergeOutcome, Snapshot};
use crate::dataset::{Example, Split, split_of};
use crate::logs::LogRecord;
use crate::logs::anonymize::{Anonymizer, PiiCounts};
use crate::logs::dedup::{ContentKey, Deduplicator, MinHasher, Verdict, comparable_text, content_key};
use crate::logs::formats::parse_line;
use crate::logs::sample::{Offer, Reservoir, allocate, rank};
use crate::logs::signals::{Signal, SignalDetector, SignalReading};
use crate::logs::sources::{LineEvent, LineProblem, Lines, Window, open};

/// How many bad lines the report names one by one (all are counted).
const NAMED_PROBLEMS: usize = 20;
/// Source ids kept per example; repeats beyond are only counted.
const KEPT_SOURCE_IDS: usize = 10;
/// Lines handed to the cores at a time.
const BATCH_LINES: usize = 4096;

/// Where a pull's window starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Since {
    /// Where the last successful pull ended (everything on the first pull).
    LastPull,
    /// Everything the source has.
    All,
    Time(DateTime<Utc>),
    /// This long before the window's end.
    Ago(Duration),
}

impl std::str::FromStr for Since {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if s == "all" {
            return Ok(Since::All);
        }
        if s == "last" {
            return Ok(Since::LastPull);
        }
        if let Ok(time) = DateTime::parse_from_rfc3339(s) {
            return Ok(Since::Time(time.with_timezone(&Utc)));
        }
        if let Ok(date) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            return Ok(Since::Time(date.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc()));
        }
        let unclear =
            || format!("`{s}`: use a span like 7d, 36h or 2w, a date (2026-11-01), an RFC 3339 time, `last` or `all`");
        let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
        let amount: i64 = number.parse().map_err(|_| unclear())?;
        let duration = match unit {
            "m" => Duration::try_minutes(amount),
            "h" => Duration::try_hours(amount),
            "d" => Duration::try_days(amount),
            "w" => Duration::try_weeks(amount),
            _ => return Err(unclear()),
        };
        match duration {
            Some(d) if d <= Duration::days(MAX_SPAN_DAYS) => Ok(Since::Ago(d)),
            _ => Err(format!("`{s}` reaches back more than {MAX_SPAN_DAYS} days; use `all` to read everything")),
        }
    }
}

/// The longest span `--since` takes (100 years); `all` reads everything.
const MAX_SPAN_DAYS: i64 = 36_525;

/// A pull of one pipeline's logs.
pub struct PullRequest {
    pub config: PipelineConfig,
    pub since: Since,
    /// The window's end [default: now].
    pub until: Option<DateTime<Utc>>,
    /// Read, clean and report, but write nothing.
    pub dry_run: bool,
}

/// What a pull did at every step; printed by the CLI, kept for the run's report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PullReport {
    pub pipeline: String,
    pub since: Option<DateTime<Utc>>,
    pub until: DateTime<Utc>,
    /// Files, pages or objects read.
    pub units: usize,
    pub lines: u64,
    pub bytes: u64,
    pub records: u64,
    /// Bad input by kind; the run goes on without it.
    pub malformed: BTreeMap<String, u64>,
    /// The first bad lines, `where: what` (never their content).
    pub problems: Vec<String>,
    pub outside_window: u64,
    /// Placeholders put in, by type.
    pub anonymized: PiiCounts,
    /// Records in the window by signal.
    pub signals: BTreeMap<Signal, u64>,
    pub with_reference: u64,
    pub without_reference: u64,
    /// References that do not fit the program's outputs (sent to the inbox).
    pub invalid_reference: u64,
    pub duplicates: DuplicateCounts,
    /// New examples per signal.
    pub sampled: BTreeMap<Signal, usize>,
    /// Distinct records left out by the sample's caps.
    pub not_sampled: u64,
    /// New examples per split.
    pub added: BTreeMap<Split, usize>,
    pub inbox_added: usize,
    pub promoted: usize,
    /// New records left out because their dataset line would pass the
    /// dataset's line limit (`MAX_EXAMPLE_LINE_BYTES`).
    #[serde(default)]
    pub too_long: usize,
    pub examples: usize,
    pub inbox: usize,
    pub content_hash: String,
    pub dry_run: bool,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DuplicateCounts {
    /// Repeats of a record already seen in this pull.
    pub exact_in_pull: u64,
    /// Records already in the dataset or inbox.
    pub exact_existing: u64,
    pub near_in_pull: u64,
    pub near_existing: u64,
    /// Similar to an example across the test boundary: kept out of the dataset.
    pub leak_guarded: u64,
    /// Pulled before and deleted by a person since: kept out.
    #[serde(default)]
    pub removed_by_person: u64,
}

/// `.promptloop/pull/<name>.json`: where the last pull ended, and its report.
#[derive(Serialize, Deserialize)]
struct PullState {
    until: DateTime<Utc>,
    report: PullReport,
}

fn state_path(config: &PipelineConfig) -> PathBuf {
    config.state_dir().join("pull").join(format!("{}.json", config.name))
}

/// One record kept in a reservoir.
struct Candidate {
    record: LogRecord,
    reading: SignalReading,
    key: ContentKey,
    source_ids: Vec<String>,
    seen: u64,
}

/// A record after the per-record stages, before the reservoirs.
struct Cleaned {
    record: LogRecord,
    reading: SignalReading,
    key: ContentKey,
    counts: PiiCounts,
    /// Some(valid) when the record has a reference.
    reference_valid: Option<bool>,
}

enum LineOutcome {
    Records(Vec<Cleaned>, u64),
    Bad(&'static str, String),
}

pub async fn pull(request: PullRequest) -> Result<PullReport> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || pull_blocking(request, runtime))
        .await
        .context("the pull stopped unexpectedly")?
}

fn pull_blocking(request: PullRequest, runtime: tokio::runtime::Handle) -> Result<PullReport> {
    let started = Instant::now();
    let config = &request.config;
    let Some(source) = &config.source else {
        bail!(
            "{}: there is no [source] table; add one to say where the logs are, e.g.\n[source]\nkind = \"files\"\npaths = [\"logs/{}/*.jsonl.gz\"]",
            config.file.display(),
            config.name
        );
    };
    let now = crate::clock::now()?;
    if let Some(until) = request.until
        && until > now
    {
        bail!(
            "--until {until} is in the future: a pull reads what has already happened, and the window's end is saved as where the next pull starts; leave --until out to read up to now"
        );
    }
    let until = request.until.unwrap_or(now);
    // One pull at a time on a dataset, from reading where the last one ended
    // to writing the manifest; an interrupted merge is finished or undone first.
    let store = DatasetStore::new(&config.dataset.path, config.dataset.split);
    let command = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ");
    let _lock = store.lock(&config.state_dir().join("locks"), &command)?;
    if !request.dry_run {
        store.recover()?;
    }
    let since = match &request.since {
        Since::All => None,
        Since::Time(t) => Some(*t),
        Since::Ago(d) => Some(until.checked_sub_signed(*d).context("the window's start is before the year -262143")?),
        // The dataset's own record first: it is what the base branch merged.
        Since::LastPull => match store.pulled_until()? {
            Some(end) => Some(end),
            None => read_state(config)?.map(|s| s.until),
        },
    };
    if let Some(start) = since
        && start >= until
    {
        let hint = match request.since {
            Since::LastPull => format!(
                "; it starts where the last merged pull ended ({}'s `pulled_until`): to read from an earlier point, pass --since DATE or --since all (the next merge records the new end)",
                config.dataset.path.with_file_name("manifest.json").display()
            ),
            _ => "; pass an earlier --since or a later --until".to_string(),
        };
        bail!("the window is empty: it starts at {start} and ends at {until}{hint}");
    }
    let window = Window { since, until };
    let mut report =
        PullReport { pipeline: config.name.clone(), since, until, dry_run: request.dry_run, ..PullReport::default() };

    let reservoirs = read_source(config, source, &window, runtime, &mut report)?;

    // Everything read: now decide against the dataset on disk.
    let snapshot = store.read()?;
    let mut admission = Admission::new(config, &snapshot, until.format("%Y-%m-%d").to_string());
    let caps = signal_caps(config);
    let new_examples = admission.admit(reservoirs.examples, &caps, config.sample.total, false, &mut report);
    for (signal, _) in &new_examples {
        *report.sampled.entry(*signal).or_default() += 1;
    }
    let new_inbox = admission.admit(reservoirs.inbox, &BTreeMap::new(), config.sample.inbox_total, true, &mut report);

    let new_examples: Vec<Example> = new_examples.into_iter().map(|(_, e)| e).collect();
    let new_inbox: Vec<Example> = new_inbox.into_iter().map(|(_, e)| e).collect();
    if request.dry_run {
        report.added = new_examples.iter().fold(BTreeMap::new(), |mut added, e| {
            *added.entry(split_of(&e.id, &config.dataset.split)).or_default() += 1;
            added
        });
        report.inbox_added = new_inbox.len();
        report.examples = snapshot.examples.len() + new_examples.len();
        report.inbox = snapshot.inbox.len() + new_inbox.len();
    } else {
        let MergeOutcome { added, promoted, inbox_added, too_long, manifest } =
            store.merge(&snapshot, &new_examples, &new_inbox, until)?;
        report.too_long = too_long;
        report.added = added;
        report.promoted = promoted;
        report.inbox_added = inbox_added;
        report.examples = manifest.examples;
        report.inbox = manifest.inbox;
        report.content_hash = manifest.content_hash;
    }
    report.seconds = started.elapsed().as_secs_f64();
    if !request.dry_run {
        write_state(config, &PullState { until, report: report.clone() })?;
    }
    Ok(report)
}

fn signal_caps(config: &PipelineConfig) -> BTreeMap<Signal, usize> {
    config.sample.caps.iter().filter_map(|(k, &v)| Signal::from_name(k).map(|s| (s, v))).collect()
}

/// Streams the source through the per-record stages (format, window,
/// anonymize, signal, rank) into the reservoirs, counting as it goes.
fn read_source(
    config: &PipelineConfig,
    source: &crate::config::SourceConfig,
    window: &Window,
    runtime: tokio::runtime::Handle,
    report: &mut PullReport,
) -> Result<Reservoirs> {
    let anonymizer = Anonymizer::new(&config.anonymize.patterns)?;
    let detector = SignalDetector::new(&config.signals);
    let outputs = OutputCheck::new(config)?;
    let caps = signal_caps(config);
    // Room for what dedup will drop: three times the cap, and some.
    let capacity = |cap: usize| cap.saturating_mul(3).saturating_add(64);
    let mut reservoirs = Reservoirs {
        examples: Signal::ALL
            .into_iter()
            .map(|s| (s, Reservoir::new(capacity(caps.get(&s).copied().unwrap_or(config.sample.total)))))
            .collect(),
        inbox: Signal::ALL.into_iter().map(|s| (s, Reservoir::new(capacity(config.sample.inbox_total)))).collect(),
        seed: config.sample.seed.unwrap_or(config.seed),
        problems: Vec::new(),
    };

    // A router by the detector reads the conversation from an input (its
    // `history = "…"`): a record's own history fills that input when the
    // record's inputs lack it, and a record with no history of its own is read
    // with the input's.
    let history_input: Option<String> = config.graph.routers().iter().find_map(|r| match &r.by {
        crate::program::graph::RouteBy::Detector(d) => d.history.clone(),
        crate::program::graph::RouteBy::Field(_) => None,
    });
    let process = |text: &str| -> LineOutcome {
        let records = match parse_line(&source.format, text) {
            Ok(records) => records,
            Err(e) => return LineOutcome::Bad(e.kind(), e.to_string()),
        };
        let mut outside = 0;
        let mut cleaned = Vec::with_capacity(records.len());
        for mut record in records {
            if window.since.is_some_and(|s| record.timestamp < s) || record.timestamp >= window.until {
                outside += 1;
                continue;
            }
            let mut counts = PiiCounts::default();
            anonymizer.anonymize_record(&mut record, &mut counts);
            if let Some(field) = &history_input {
                match record.inputs.get(field) {
                    None => {
                        let earlier = record.history.iter().cloned().map(Value::String).collect();
                        record.inputs.insert(field.clone(), Value::Array(earlier));
                    }
                    Some(Value::Array(items)) if record.history.is_empty() => {
                        record.history = items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
                    }
                    Some(_) => {}
                }
            }
            let message = record.inputs.get(&config.signals.field).and_then(Value::as_str).unwrap_or_default();
            let reading = detector.read(message, &record.history);
            let key = content_key(&comparable_text(&record.inputs));
            let reference_valid = record.reference.as_ref().map(|r| outputs.fits(r));
            cleaned.push(Cleaned { record, reading, key, counts, reference_valid });
        }
        LineOutcome::Records(cleaned, outside)
    };

    let progress = indicatif::ProgressBar::new_spinner();
    progress.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} {pos} records ({per_sec})").expect("valid template"),
    );
    progress.set_message("pulling");
    let mut units = open(source, window, runtime, crate::clock::Sleeper::default())?;
    let mut batch: Vec<(usize, u64, String)> = Vec::with_capacity(BATCH_LINES);
    let mut names: Vec<String> = Vec::new();
    while let Some(unit) = units.next().transpose()? {
        report.units += 1;
        names.push(unit.name.clone());
        let unit_index = names.len() - 1;
        for event in Lines::new(unit.reader, source.max_line_bytes) {
            match event.with_context(|| format!("reading {} failed; nothing was written", unit.name))? {
                LineEvent::Line { number, text } => {
                    report.lines += 1;
                    report.bytes += text.len() as u64 + 1;
                    batch.push((unit_index, number, text));
                }
                LineEvent::Bad { number, problem } => {
                    report.lines += 1;
                    if let LineProblem::TooLong { bytes } = problem {
                        report.bytes += bytes;
                    }
                    let (kind, what) = describe(&problem);
                    let at = format!("{}:{number}: {what}", unit.name);
                    note_problem(&mut reservoirs.problems, report, kind, (unit_index, number, at));
                }
            }
            if batch.len() >= BATCH_LINES {
                process_batch(&mut batch, &names, &process, report, &mut reservoirs);
                progress.set_position(report.records);
            }
        }
    }
    process_batch(&mut batch, &names, &process, report, &mut reservoirs);
    progress.finish_and_clear();
    reservoirs.problems.sort();
    report.problems = reservoirs.problems.drain(..).take(NAMED_PROBLEMS).map(|p| p.2).collect();
    Ok(reservoirs)
}

/// Decides which held candidates enter the dataset or the inbox, against the
/// dataset and inbox on disk and what this pull already admitted.
struct Admission<'a> {
    config: &'a PipelineConfig,
    hasher: MinHasher,
    dedup: Deduplicator,
    /// Ids on disk, to tell a repeat of the dataset from a repeat within the pull.
    existing: HashSet<String>,
    /// Pulled once, deleted by a person since.
    removed: &'a std::collections::BTreeSet<String>,
    today: String,
}

impl<'a> Admission<'a> {
    fn new(config: &'a PipelineConfig, snapshot: &'a Snapshot, today: String) -> Self {
        let hasher = MinHasher::new(&config.dedup);
        let mut dedup = Deduplicator::new(&config.dedup);
        let mut existing = HashSet::new();
        for example in &snapshot.examples {
            let text = comparable_text(&example.inputs);
            let split = split_of(&example.id, &config.dataset.split);
            dedup.add_existing(&example.id, content_key(&text), hasher.signature(&text), Some(split));
            existing.insert(example.id.clone());
        }
        for entry in &snapshot.inbox {
            let text = comparable_text(&entry.inputs);
            // A labelled inbox line becomes an example in this merge.
            let split = (!entry.outputs.is_empty()).then(|| split_of(&entry.id, &config.dataset.split));
            dedup.add_existing(&entry.id, content_key(&text), hasher.signature(&text), split);
            existing.insert(entry.id.clone());
        }
        Self { config, hasher, dedup, existing, removed: &snapshot.removed, today }
    }

    /// Walks each signal's candidates in rank order — rarest signal first, so a
    /// routine message never pushes out the escalating one it resembles —
    /// keeping the unique ones up to the signal's cap, then shares `total`.
    fn admit(
        &mut self,
        reservoirs: BTreeMap<Signal, Reservoir<Candidate>>,
        caps: &BTreeMap<Signal, usize>,
        total: usize,
        to_inbox: bool,
        report: &mut PullReport,
    ) -> Vec<(Signal, Example)> {
        let fractions = &self.config.dataset.split;
        let mut survivors: BTreeMap<Signal, Vec<Example>> = BTreeMap::new();
        for (signal, reservoir) in reservoirs.into_iter().rev() {
            let cap = caps.get(&signal).copied().unwrap_or(total);
            let kept = survivors.entry(signal).or_default();
            report.not_sampled += reservoir.left_out();
            let held = reservoir.into_sorted();
            let held_count = held.len();
            for (taken, (_, candidate)) in held.into_iter().enumerate() {
                if kept.len() >= cap {
                    report.not_sampled += (held_count - taken) as u64;
                    break;
                }
                let id = format!("log-{}", &candidate.key.to_string()[..16]);
                if self.removed.contains(&id) {
                    report.duplicates.removed_by_person += 1;
                    continue;
                }
                let split = (!to_inbox).then(|| split_of(&id, fractions));
                let signature = self.hasher.signature(&comparable_text(&candidate.record.inputs));
                let duplicates = &mut report.duplicates;
                match self.dedup.check(candidate.key, &signature, split) {
                    Verdict::Unique => {
                        self.dedup.admit(&id, candidate.key, signature, split);
                        kept.push(to_example(id, candidate, to_inbox, &self.today));
                    }
                    Verdict::Exact { of } if self.existing.contains(&of) => duplicates.exact_existing += 1,
                    Verdict::Exact { .. } => duplicates.exact_in_pull += 1,
                    Verdict::Near { of, .. } if self.existing.contains(&of) => duplicates.near_existing += 1,
                    Verdict::Near { .. } => duplicates.near_in_pull += 1,
                    Verdict::Leak { .. } => duplicates.leak_guarded += 1,
                }
            }
        }
        let available = survivors.iter().map(|(&s, v)| (s, v.len())).collect();
        let shares = allocate(&available, caps, total);
        let mut out = Vec::new();
        for (signal, mut kept) in survivors {
            let share = shares.get(&signal).copied().unwrap_or(0);
            report.not_sampled += kept.len().saturating_sub(share) as u64;
            kept.truncate(share);
            out.extend(kept.into_iter().map(|e| (signal, e)));
        }
        out
    }
}

/// What reading keeps: records with a fitting reference are example
/// candidates, the rest inbox candidates; and the earliest bad lines.
struct Reservoirs {
    examples: BTreeMap<Signal, Reservoir<Candidate>>,
    inbox: BTreeMap<Signal, Reservoir<Candidate>>,
    seed: u64,
    problems: Vec<(usize, u64, String)>,
}

/// Counts a bad line and keeps the earliest ones by position (lines that fail
/// to read are seen before lines that fail to parse, so order them here).
fn note_problem(
    problems: &mut Vec<(usize, u64, String)>,
    report: &mut PullReport,
    kind: &str,
    at: (usize, u64, String),
) {
    *report.malformed.entry(kind.to_string()).or_default() += 1;
    problems.push(at);
    if problems.len() > 2 * NAMED_PROBLEMS {
        problems.sort();
        problems.truncate(NAMED_PROBLEMS);
    }
}

/// Runs the per-record stages over a batch on all cores, then feeds the
/// reservoirs in line order (so repeats list their sources in that order).
fn process_batch(
    batch: &mut Vec<(usize, u64, String)>,
    names: &[String],
    process: &(dyn Fn(&str) -> LineOutcome + Sync),
    report: &mut PullReport,
    reservoirs: &mut Reservoirs,
) {
    let outcomes: Vec<LineOutcome> = batch.par_iter().map(|(_, _, text)| process(text)).collect();
    for ((unit, number, _), outcome) in batch.iter().zip(outcomes) {
        match outcome {
            LineOutcome::Bad(kind, what) => {
                let at = format!("{}:{number}: {what}", names[*unit]);
                note_problem(&mut reservoirs.problems, report, kind, (*unit, *number, at));
            }
            LineOutcome::Records(records, outside) => {
                report.outside_window += outside;
                for cleaned in records {
                    report.records += 1;
                    report.anonymized.add(&cleaned.counts);
                    *report.signals.entry(cleaned.reading.label).or_default() += 1;
                    let to_inbox = match cleaned.reference_valid {
                        Some(true) => {
                            report.with_reference += 1;
                            false
                        }
                        Some(false) => {
                            report.invalid_reference += 1;
                            true
                        }
                        None => {
                            report.without_reference += 1;
                            true
                        }
                    };
                    let side = if to_inbox { &mut reservoirs.inbox } else { &mut reservoirs.examples };
                    let reservoir = side.get_mut(&cleaned.reading.label).expect("a reservoir per signal");
                    let key = cleaned.key;
                    // Anonymized with the record: an id holding PII or a secret is a hash by now.
                    let source_id = cleaned.record.id.clone();
                    let offer = reservoir.offer(
                        rank(reservoirs.seed, key.0),
                        key.0,
                        || Candidate {
                            record: cleaned.record,
                            reading: cleaned.reading,
                            key,
                            source_ids: vec![source_id.clone()],
                            seen: 1,
                        },
                        |held| {
                            held.seen += 1;
                            if held.source_ids.len() < KEPT_SOURCE_IDS && !held.source_ids.contains(&source_id) {
                                held.source_ids.push(source_id.clone());
                            }
                        },
                    );
                    if offer == Offer::Repeat {
                        report.duplicates.exact_in_pull += 1;
                    }
                }
            }
        }
    }
    batch.clear();
}

fn describe(problem: &LineProblem) -> (&'static str, String) {
    match problem {
        LineProblem::TooLong { bytes } => {
            ("too_long", format!("line of {bytes} bytes is longer than [source] max_line_bytes; skipped"))
        }
        LineProblem::InvalidUtf8 => ("invalid_utf8", "not valid UTF-8; skipped".to_string()),
        LineProblem::Truncated { detail } => {
            ("truncated", format!("the compressed stream ends early ({detail}); the rest of the file is lost"))
        }
    }
}

/// The example (or inbox record) a kept candidate becomes.
fn to_example(id: String, candidate: Candidate, to_inbox: bool, today: &str) -> Example {
    let Candidate { record, reading, source_ids, seen, .. } = candidate;
    let mut extra = Map::new();
    extra.insert("signal".into(), serde_json::to_value(&reading).expect("a reading serializes"));
    if let Some(output) = record.output {
        extra.insert("production".into(), Value::Object(output));
    }
    if let Some(feedback) = record.feedback {
        extra.insert("feedback".into(), serde_json::to_value(feedback).expect("feedback serializes"));
    }
    extra.insert("source_ids".into(), source_ids.into_iter().map(Value::String).collect());
    if seen > 1 {
        extra.insert("seen".into(), seen.into());
    }
    extra.insert("added".into(), Value::String(today.to_string()));
    let reference = record.reference.unwrap_or_default();
    let outputs = if to_inbox {
        // A reference that does not fit the outputs stays beside them for the
        // person who fixes it.
        if !reference.is_empty() {
            extra.insert("rejected_reference".into(), Value::Object(reference));
        }
        Map::new()
    } else {
        reference
    };
    Example { id, inputs: record.inputs, outputs, extra }
}

/// Checks a reference against the program's output fields and their types.
struct OutputCheck {
    fields: Vec<(String, jsonschema::Validator)>,
}

impl OutputCheck {
    fn new(config: &PipelineConfig) -> Result<Self> {
        let mut fields = Vec::new();
        let mut seen = HashSet::new();
        for predictor in &config.predictors {
            for field in &config.signatures[&predictor.signature].signature.outputs {
                if !config.outputs.contains(&field.name) || !seen.insert(field.name.clone()) {
                    continue;
                }
                let validator = jsonschema::validator_for(&field.ty.json_schema())
                    .map_err(|e| anyhow::anyhow!("output `{}`: its type gives no usable schema: {e}", field.name))?;
                fields.push((field.name.clone(), validator));
            }
        }
        Ok(Self { fields })
    }

    fn fits(&self, reference: &Map<String, Value>) -> bool {
        self.fields.iter().all(|(name, validator)| reference.get(name).is_some_and(|v| validator.is_valid(v)))
    }
}

fn read_state(config: &PipelineConfig) -> Result<Option<PullState>> {
    let path = state_path(config);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("cannot read {}; delete it to pull everything, or pass --since", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_state(config: &PipelineConfig, state: &PullState) -> Result<()> {
    let mut text = serde_json::to_string_pretty(state).expect("the pull state serializes");
    text.push('\n');
    crate::program::artifact::write_atomically(&state_path(config), text.as_bytes())
}

impl std::fmt::Display for PullReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = self.since.map_or("the beginning".to_string(), |s| s.to_rfc3339());
        writeln!(f, "pull {}: window {since} .. {}", self.pipeline, self.until.to_rfc3339())?;
        let mb = self.bytes as f64 / 1e6;
        let rate = if self.seconds > 0.0 { self.records as f64 / self.seconds } else { 0.0 };
        writeln!(
            f,
            "  read         {} lines ({mb:.1} MB) from {} source unit{} in {:.1} s ({rate:.0} records/s)",
            self.lines,
            self.units,
            if self.units == 1 { "" } else { "s" },
            self.seconds
        )?;
        let malformed: u64 = self.malformed.values().sum();
        writeln!(f, "  malformed    {malformed}{}", breakdown(self.malformed.iter().map(|(k, v)| (k.as_str(), *v))))?;
        for problem in &self.problems {
            writeln!(f, "                 {problem}")?;
        }
        if malformed as usize > self.problems.len() {
            writeln!(f, "                 ... and {} more", malformed as usize - self.problems.len())?;
        }
        writeln!(f, "  records      {} in the window, {} outside it", self.records, self.outside_window)?;
        writeln!(f, "  anonymized   {}{}", self.anonymized.total(), breakdown(self.anonymized.iter()))?;
        writeln!(f, "  signals      {}", join_counts(self.signals.iter().map(|(s, n)| (s.name(), *n))))?;
        writeln!(
            f,
            "  references   {} with, {} without, {} not fitting the outputs (to the inbox)",
            self.with_reference, self.without_reference, self.invalid_reference
        )?;
        let d = &self.duplicates;
        writeln!(
            f,
            "  duplicates   exact {} in this pull, {} already in the dataset or inbox; near {} in this pull, {} in the dataset or inbox; {} kept out across the test boundary",
            d.exact_in_pull, d.exact_existing, d.near_in_pull, d.near_existing, d.leak_guarded
        )?;
        if d.removed_by_person > 0 {
            writeln!(f, "  kept out     {} deleted by a person after an earlier pull", d.removed_by_person)?;
        }
        writeln!(
            f,
            "  sampled      {} (not sampled: {})",
            join_counts(self.sampled.iter().map(|(s, n)| (s.name(), *n as u64))),
            self.not_sampled
        )?;
        let verb = if self.dry_run { "would add" } else { "added" };
        writeln!(f, "  {verb:<12} {}", join_counts(self.added.iter().map(|(s, n)| (s.name(), *n as u64))))?;
        writeln!(f, "  inbox        {} new, {} promoted to examples by a person", self.inbox_added, self.promoted)?;
        if self.too_long > 0 {
            writeln!(
                f,
                "  left out     {} records longer than a dataset line may be ({} KiB)",
                self.too_long,
                crate::dataset::MAX_EXAMPLE_LINE_BYTES / 1024
            )?;
        }
        write!(f, "  dataset      {} examples, {} in the inbox", self.examples, self.inbox)?;
        if self.dry_run {
            write!(f, " (dry run: nothing written)")?;
        }
        Ok(())
    }
}

fn join_counts<'a>(counts: impl Iterator<Item = (&'a str, u64)>) -> String {
    let parts: Vec<String> = counts.map(|(k, v)| format!("{k} {v}")).collect();
    if parts.is_empty() { "none".to_string() } else { parts.join(", ") }
}

fn breakdown<'a>(counts: impl Iterator<Item = (&'a str, u64)>) -> String {
    let parts: Vec<String> = counts.filter(|(_, v)| *v > 0).map(|(k, v)| format!("{k} {v}")).collect();
    if parts.is_empty() { String::new() } else { format!(" ({})", parts.join(", ")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_left_out_for_their_length_are_said_only_when_there_are_some() {
        let mut report = PullReport { until: DateTime::<Utc>::UNIX_EPOCH, ..Default::default() };
        assert!(!report.to_string().contains("left out"), "{report}");
        report.too_long = 2;
        assert!(
            report.to_string().contains("left out     2 records longer than a dataset line may be (1024 KiB)"),
            "{report}"
        );
    }
}
