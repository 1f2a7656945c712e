//! PII spans for a JSONL corpus, for the anonymization benchmark (bench/anonymize/).
//!
//! ```text
//! pii_spans < corpus.jsonl > spans.jsonl        # {"id","text"} in, {"id","spans":[{start,end,type}]} out
//! pii_spans --bench corpus.jsonl [--seconds 5]  # messages per second of find() and of replacing
//! ```
//!
//! Span offsets are in Unicode code points, as Python indexes strings.

use std::io::{BufRead, BufWriter, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use promptloop::logs::anonymize::{Anonymizer, PiiCounts};
use serde_json::{Value, json};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let anonymizer = Anonymizer::new(&[])?;
    match args.as_slice() {
        [] => spans(&anonymizer),
        [flag, path] if flag == "--bench" => bench(&anonymizer, path, 5.0),
        [flag, path, seconds_flag, seconds] if flag == "--bench" && seconds_flag == "--seconds" => {
            let seconds = seconds.parse().with_context(|| format!("--seconds {seconds:?} is not a number"))?;
            bench(&anonymizer, path, seconds)
        }
        _ => bail!("usage: pii_spans < corpus.jsonl > spans.jsonl | pii_spans --bench corpus.jsonl [--seconds N]"),
    }
}

/// One `{"id", "text"}` object per line.
fn read_line(line: &str, number: usize) -> anyhow::Result<(Value, String)> {
    let value: Value = serde_json::from_str(line).with_context(|| format!("line {number}: not a JSON object"))?;
    let text = value
        .get("text")
        .and_then(Value::as_str)
        .with_context(|| format!("line {number}: no string field `text`"))?
        .to_string();
    Ok((value.get("id").cloned().unwrap_or(Value::Null), text))
}

fn spans(anonymizer: &Anonymizer) -> anyhow::Result<()> {
    let stdin = std::io::stdin().lock();
    let mut out = BufWriter::new(std::io::stdout().lock());
    for (i, line) in stdin.lines().enumerate() {
        let line = line.with_context(|| format!("reading stdin at line {}", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let (id, text) = read_line(&line, i + 1)?;
        let spans: Vec<Value> = anonymizer
            .find(&text)
            .into_iter()
            .map(|finding| {
                let start = text[..finding.range.start].chars().count();
                let end = start + text[finding.range.clone()].chars().count();
                json!({ "start": start, "end": end, "type": finding.kind.label() })
            })
            .collect();
        serde_json::to_writer(&mut out, &json!({ "id": id, "spans": spans }))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

fn bench(anonymizer: &Anonymizer, path: &str, seconds: f64) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {path}"))?;
    let mut texts = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{path}: reading line {}", i + 1))?;
        if !line.trim().is_empty() {
            texts.push(read_line(&line, i + 1).with_context(|| path.to_string())?.1);
        }
    }
    if texts.is_empty() {
        bail!("{path} holds no messages");
    }
    let bytes: usize = texts.iter().map(String::len).sum();
    let budget = Duration::from_secs_f64(seconds);

    let (passes, elapsed, findings) = timed(budget, || texts.iter().map(|text| anonymizer.find(text).len()).sum());
    report("find", texts.len(), bytes, passes, elapsed, findings);

    let (passes, elapsed, replaced) = timed(budget, || {
        let mut counts = PiiCounts::default();
        for text in &texts {
            std::hint::black_box(anonymizer.anonymize_text(text, &mut counts));
        }
        counts.total() as usize
    });
    report("anonymize", texts.len(), bytes, passes, elapsed, replaced);
    Ok(())
}

/// Whole passes over the corpus until the budget is spent (at least one).
fn timed(budget: Duration, mut pass: impl FnMut() -> usize) -> (usize, Duration, usize) {
    let started = Instant::now();
    let mut passes = 0;
    let mut found = 0;
    while passes == 0 || started.elapsed() < budget {
        found = std::hint::black_box(pass());
        passes += 1;
    }
    (passes, started.elapsed(), found)
}

fn report(what: &str, messages: usize, bytes: usize, passes: usize, elapsed: Duration, found: usize) {
    let seconds = elapsed.as_secs_f64();
    let total = (messages * passes) as f64;
    println!(
        "{what}: {messages} messages x {passes} passes in {seconds:.2} s: {:.0} messages/s, {:.1} MB/s, {found} spans a pass",
        total / seconds,
        (bytes * passes) as f64 / seconds / 1e6,
    );
}
