//! One bad log line never aborts a pull: the per-record stages (format, anonymize,
//! signals, dedup keys) are fed thousands of mangled versions of real fixture
//! lines and arbitrary text, and must return an error or a record — never panic.

use promptloop::config::{DedupConfig, FormatConfig, LogFormat, SignalsConfig};
use promptloop::logs::anonymize::{Anonymizer, PiiCounts};
use promptloop::logs::dedup::{MinHasher, comparable_text, content_key};
use promptloop::logs::formats::parse_line;
use promptloop::logs::signals::SignalDetector;

/// A small deterministic generator, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 17
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INSERTS: &[&str] = &[
    "\"",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "null",
    "1e999",
    "-0",
    "\\u0000",
    "\\ud800",
    "é",
    "💳",
    "\u{202e}",
    "true",
    "\"inputs\"",
    "\"messages\"",
    "{\"role\":\"user\",\"content\":[]}",
    "4111 1111 1111 1111",
    "+44 20 7946 0958",
    "a@b.co",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
    "http://u:p@h/x?token=abc",
    "fe80::1",
    "!!?!",
];

fn mangle(line: &str, rng: &mut Rng) -> String {
    let mut chars: Vec<char> = line.chars().collect();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(chars.len() + 1);
        match rng.below(4) {
            0 => chars.truncate(at),
            1 if at < chars.len() => {
                chars.remove(at);
            }
            2 => {
                let insert: Vec<char> = INSERTS[rng.below(INSERTS.len())].chars().collect();
                chars.splice(at..at, insert);
            }
            _ => {
                if at < chars.len() {
                    chars[at] = char::from_u32(rng.below(0x3000) as u32).unwrap_or('x');
                }
            }
        }
    }
    chars.into_iter().collect()
}

#[test]
fn mangled_log_lines_are_errors_or_records_never_panics() {
    let anonymizer = Anonymizer::new(&[]).unwrap();
    let detector = SignalDetector::new(&SignalsConfig { field: "message".into(), ..SignalsConfig::default() });
    let hasher = MinHasher::new(&DedupConfig::default());
    let mut rng = Rng(2026);
    let mut parsed = 0;
    let mut rejected = 0;
    for (file, format) in [
        ("native.jsonl", LogFormat::Native),
        ("openai.jsonl", LogFormat::Openai),
        ("otel-current.jsonl", LogFormat::Otel),
        ("otel-events.jsonl", LogFormat::Otel),
        ("otel-legacy.jsonl", LogFormat::Otel),
    ] {
        let config = FormatConfig { format, input_field: "message".into(), output_fields: vec!["queue".into()] };
        let text = std::fs::read_to_string(format!("tests/data/logs/{file}")).unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            for _ in 0..300 {
                let mangled = mangle(line, &mut rng);
                match parse_line(&config, &mangled) {
                    Ok(records) => {
                        parsed += 1;
                        for mut record in records {
                            let mut counts = PiiCounts::default();
                            anonymizer.anonymize_record(&mut record, &mut counts);
                            let message = record.inputs.get("message").and_then(|v| v.as_str()).unwrap_or_default();
                            detector.read(message, &record.history);
                            let comparable = comparable_text(&record.inputs);
                            content_key(&comparable);
                            hasher.signature(&comparable);
                        }
                    }
                    Err(error) => {
                        rejected += 1;
                        assert!(!error.to_string().is_empty());
                    }
                }
            }
        }
    }
    // The mangling must exercise both paths, or the test proves nothing.
    assert!(parsed > 500 && rejected > 500, "parsed {parsed}, rejected {rejected}");
}

#[test]
fn arbitrary_text_goes_through_anonymize_and_signals() {
    let anonymizer = Anonymizer::new(&[]).unwrap();
    let detector = SignalDetector::new(&SignalsConfig::default());
    let placeholder = regex::Regex::new(r"<[A-Z][A-Z0-9_]*_\d+>").unwrap();
    let mut rng = Rng(7);
    for _ in 0..20_000 {
        let mut text = String::new();
        for _ in 0..rng.below(12) {
            match rng.below(3) {
                0 => text.push_str(INSERTS[rng.below(INSERTS.len())]),
                1 => text.push(char::from_u32(rng.below(0x11_0000) as u32).unwrap_or(' ')),
                _ => text.push_str(&rng.next().to_string()),
            }
            if rng.below(2) == 0 {
                text.push(' ');
            }
        }
        let mut counts = PiiCounts::default();
        let once = anonymizer.anonymize_text(&text, &mut counts);
        // Placeholders are never taken for PII again (the text around them may
        // read differently once a neighbour became a placeholder).
        let twice = anonymizer.anonymize_text(&once, &mut PiiCounts::default());
        let placeholders = |s: &str| placeholder.find_iter(s).map(|m| m.as_str().to_string()).collect::<Vec<_>>();
        let kept = placeholders(&once);
        let mut again = placeholders(&twice).into_iter();
        assert!(kept.iter().all(|p| again.any(|q| &q == p)), "{text:?}: {once:?} -> {twice:?}");
        detector.read(&text, &[text.clone()]);
    }
}
