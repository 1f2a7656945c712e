//! Sequential near-duplicate detection over a JSONL file, for the benchmark in
//! bench/dedup: each record is checked against the records kept so far and
//! kept when unique.
//!
//!     cargo run --release --example near_dups -- IN.jsonl OUT.json [--leak-threshold T] [--normalized FILE]
//!
//! IN.jsonl: one object per line with `inputs` (an object); its comparable
//! text is `comparable_text(inputs)`. OUT.json: per record, the index of the
//! earlier record it duplicates (or null), the kind (exact / near) and the
//! estimated similarity, plus the time spent hashing and in the index.
//! The leak threshold defaults to the near threshold (0.8) so the LSH layout
//! is the one datasketch picks for 0.8; pass 0.6 to time the pipeline's default.
//! `--normalized FILE` also writes each comparable text on a line, to check
//! the Python normalization against.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::time::Instant;

use anyhow::{Context, bail};
use promptloop::config::DedupConfig;
use promptloop::logs::dedup::{Deduplicator, MinHasher, Verdict, comparable_text, content_key};
use serde_json::{Map, Value, json};

fn main() -> anyhow::Result<()> {
    let usage = "usage: near_dups IN.jsonl OUT.json [--leak-threshold T] [--normalized FILE]";
    let mut args = std::env::args().skip(1);
    let (Some(input), Some(output)) = (args.next(), args.next()) else { bail!(usage) };
    let (mut leak_threshold, mut normalized_path) = (None, None);
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else { bail!("{flag} needs a value; {usage}") };
        match flag.as_str() {
            "--leak-threshold" => {
                leak_threshold =
                    Some(value.parse::<f64>().with_context(|| format!("--leak-threshold `{value}` is not a number"))?)
            }
            "--normalized" => normalized_path = Some(value),
            _ => bail!("unknown flag {flag}; {usage}"),
        }
    }
    let defaults = DedupConfig::default();
    let config = DedupConfig { leak_threshold: leak_threshold.unwrap_or(defaults.threshold), ..defaults };

    let reader = BufReader::new(File::open(&input).with_context(|| format!("cannot open {input}"))?);
    let mut comparables = Vec::new();
    for (line_no, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{input}:{}: cannot read", line_no + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let record: Value =
            serde_json::from_str(&line).with_context(|| format!("{input}:{}: not a JSON object", line_no + 1))?;
        let Some(inputs) = record.get("inputs").and_then(Value::as_object) else {
            bail!("{input}:{}: no `inputs` object", line_no + 1);
        };
        comparables.push(comparable_text(inputs));
    }

    if let Some(path) = &normalized_path {
        let mut writer = BufWriter::new(File::create(path).with_context(|| format!("cannot create {path}"))?);
        for text in &comparables {
            writeln!(writer, "{text}")?;
        }
        writer.flush()?;
    }

    // Hashing first, the index second, so the two costs are timed apart.
    let started = Instant::now();
    let hasher = MinHasher::new(&config);
    let hashed: Vec<_> = comparables.iter().map(|text| (content_key(text), hasher.signature(text))).collect();
    let signature_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut dedup = Deduplicator::new(&config);
    let (mut dup_of, mut kinds, mut similarities) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (key, signature)) in hashed.into_iter().enumerate() {
        let (of, kind, similarity) = match dedup.check(key, &signature, None) {
            Verdict::Unique => {
                dedup.admit(&i.to_string(), key, signature, None);
                (Value::Null, Value::Null, Value::Null)
            }
            Verdict::Exact { of } => (json!(of.parse::<usize>()?), json!("exact"), json!(1.0)),
            Verdict::Near { of, similarity } => (json!(of.parse::<usize>()?), json!("near"), json!(similarity)),
            Verdict::Leak { .. } => unreachable!("no record here has a split"),
        };
        dup_of.push(of);
        kinds.push(kind);
        similarities.push(similarity);
    }
    let index_seconds = started.elapsed().as_secs_f64();

    let mut out = Map::new();
    out.insert("records".into(), json!(dup_of.len()));
    out.insert("kept".into(), json!(dedup.len()));
    out.insert("bands_rows".into(), json!(dedup.bands_rows()));
    out.insert("config".into(), serde_json::to_value(&config)?);
    out.insert("signature_seconds".into(), json!(signature_seconds));
    out.insert("index_seconds".into(), json!(index_seconds));
    out.insert("dup_of".into(), Value::Array(dup_of));
    out.insert("kind".into(), Value::Array(kinds));
    out.insert("similarity".into(), Value::Array(similarities));
    let mut writer = BufWriter::new(File::create(&output).with_context(|| format!("cannot create {output}"))?);
    serde_json::to_writer(&mut writer, &out)?;
    writer.flush()?;
    Ok(())
}
