//! Datasets: the split is a stable function of the id; bad lines are errors with file and line.

use std::path::Path;

use promptloop::config::SplitFractions;
use promptloop::dataset::{Dataset, Example, MAX_EXAMPLE_LINE_BYTES, Split, parse_examples, read_examples, split_of};
use serde_json::{Map, json};

fn example(id: &str) -> Example {
    Example { id: id.into(), inputs: Map::new(), outputs: Map::new(), extra: Map::new() }
}

#[test]
fn split_is_a_pinned_function_of_the_id() {
    // bucket = SHA-256(id)[..8] as big-endian u64 mod 10_000; pinned so it never drifts.
    let f = SplitFractions::default();
    assert_eq!(split_of("abc", &f), Split::Train); // bucket 74
    assert_eq!(split_of("b77-00001", &f), Split::Train); // 1413
    assert_eq!(split_of("b77-10020", &f), Split::Test); // 9352
    assert_eq!(split_of("x", &f), Split::Test); // 9876
}

#[test]
fn growing_the_dataset_never_moves_an_example() {
    let f = SplitFractions::default();
    let first: Vec<Example> = (0..500).map(|i| example(&format!("ex-{i}"))).collect();
    let before = Dataset::from_examples(first.clone(), &f, String::new());
    let mut grown = first;
    grown.extend((500..5000).map(|i| example(&format!("ex-{i}"))));
    let after = Dataset::from_examples(grown, &f, String::new());
    for split in [Split::Train, Split::Dev, Split::Test] {
        for e in before.split(split) {
            assert!(after.split(split).iter().any(|a| a.id == e.id), "{} left {:?}", e.id, split);
        }
    }
    // And the fractions hold at scale.
    let n = after.len() as f64;
    assert!((after.train().len() as f64 / n - 0.70).abs() < 0.03);
    assert!((after.dev().len() as f64 / n - 0.15).abs() < 0.03);
    assert!((after.test().len() as f64 / n - 0.15).abs() < 0.03);
}

#[test]
fn the_worked_example_splits_as_documented() {
    let d = Dataset::load(Path::new("datasets/support-triage/examples.jsonl"), &SplitFractions::default()).unwrap();
    assert_eq!((d.train().len(), d.dev().len(), d.test().len()), (720, 140, 140));
}

#[test]
fn a_line_that_is_not_json_names_file_and_line() {
    let text = format!("{}\nnot json\n", json!({"id": "a", "inputs": {}, "outputs": {}}));
    let err = parse_examples(text.as_bytes(), Path::new("d.jsonl")).unwrap_err().to_string();
    assert!(err.starts_with("d.jsonl:2:"), "{err}");
}

#[test]
fn a_line_without_outputs_names_the_field() {
    let text = format!("{}\n", json!({"id": "a", "inputs": {}}));
    let err = parse_examples(text.as_bytes(), Path::new("d.jsonl")).unwrap_err().to_string();
    assert!(err.contains("d.jsonl:1") && err.contains("missing field `outputs`"), "{err}");
}

#[test]
fn duplicate_ids_and_bad_utf8_are_errors() {
    let line = json!({"id": "a", "inputs": {}, "outputs": {}}).to_string();
    let err = parse_examples(format!("{line}\n{line}\n").as_bytes(), Path::new("d.jsonl")).unwrap_err().to_string();
    assert!(err.contains("d.jsonl:2") && err.contains("appears twice"), "{err}");
    let mut bytes = format!("{line}\n").into_bytes();
    bytes.extend_from_slice(b"{\"id\": \"\xff\"}\n");
    let err = parse_examples(&bytes, Path::new("d.jsonl")).unwrap_err().to_string();
    assert!(err.contains("d.jsonl:2") && err.contains("UTF-8"), "{err}");
}

#[test]
fn extra_keys_on_a_line_are_kept() {
    let text = json!({"id": "a", "inputs": {"m": "hi"}, "outputs": {"q": "x"}, "signal": "urgent"}).to_string();
    let examples = parse_examples(text.as_bytes(), Path::new("d.jsonl")).unwrap();
    assert_eq!(examples[0].extra["signal"], "urgent");
}

#[test]
fn a_byte_order_mark_at_the_start_is_not_part_of_the_first_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("examples.jsonl");
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    for id in ["a", "b"] {
        bytes.extend_from_slice(format!("{}\r\n", json!({"id": id, "inputs": {}, "outputs": {}})).as_bytes());
    }
    std::fs::write(&path, &bytes).unwrap();
    let examples = parse_examples(&bytes, &path).unwrap();
    assert_eq!(examples.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    let dataset = Dataset::load(&path, &SplitFractions::default()).unwrap();
    assert_eq!(dataset.len(), 2);
    // The hash is of the file as it is, mark included.
    assert_eq!(dataset.content_hash, hex_sha256(&bytes));
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn the_store_reads_examples_and_inbox_saved_with_a_byte_order_mark() {
    use promptloop::dataset::store::DatasetStore;
    let dir = tempfile::tempdir().unwrap();
    let examples = dir.path().join("examples.jsonl");
    let line = json!({"id": "a", "inputs": {"m": "hi"}, "outputs": {"q": "x"}}).to_string();
    std::fs::write(&examples, format!("\u{feff}{line}\n")).unwrap();
    let inbox = json!({"id": "b", "inputs": {"m": "hello"}}).to_string();
    std::fs::write(dir.path().join("inbox.jsonl"), format!("\u{feff}{inbox}\n")).unwrap();
    let snapshot = DatasetStore::new(&examples, SplitFractions::default()).read().unwrap();
    assert_eq!(snapshot.examples[0].id, "a");
    assert_eq!(snapshot.inbox[0].id, "b");
}

/// An example whose line is exactly `len` bytes long.
fn line_of(id: &str, len: usize) -> String {
    let empty = json!({"id": id, "inputs": {"m": ""}, "outputs": {}}).to_string();
    let line = json!({"id": id, "inputs": {"m": "x".repeat(len - empty.len())}, "outputs": {}}).to_string();
    assert_eq!(line.len(), len);
    line
}

#[test]
fn a_line_longer_than_the_limit_names_file_line_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("examples.jsonl");
    // At the limit (with or without a `\r` before the `\n`): fine.
    let at_limit = format!("{}\r\n{}\n", line_of("a", MAX_EXAMPLE_LINE_BYTES), line_of("b", MAX_EXAMPLE_LINE_BYTES));
    std::fs::write(&path, &at_limit).unwrap();
    assert_eq!(Dataset::load(&path, &SplitFractions::default()).unwrap().len(), 2);

    // One byte over, on line 3 (after a blank line), and a 10 MB line after it.
    let over = format!(
        "{}\n\n{}\n{}\n",
        line_of("a", 100),
        line_of("b", MAX_EXAMPLE_LINE_BYTES + 1),
        line_of("c", 10_000_000)
    );
    std::fs::write(&path, &over).unwrap();
    let err = Dataset::load(&path, &SplitFractions::default()).unwrap_err().to_string();
    let at = format!("{}:3: ", path.display());
    assert!(err.starts_with(&at), "{err}");
    assert!(err.contains("longer than 1048576 bytes (1 MiB)") && err.contains("shorten that example"), "{err}");
    let err = parse_examples(over.as_bytes(), Path::new("d.jsonl")).unwrap_err().to_string();
    assert!(err.starts_with("d.jsonl:3: the line is longer than 1048576 bytes"), "{err}");
}

#[test]
fn a_line_with_no_end_is_refused_without_being_held() {
    // An endless line: only a reader that stops holding it at the limit returns.
    let endless = std::io::BufReader::new(std::io::Read::chain(
        &b"{\"id\": \"a\", \"inputs\": {\"m\": \""[..],
        std::io::repeat(b'x'),
    ));
    let err = read_examples(endless, Path::new("d.jsonl")).unwrap_err().to_string();
    assert!(err.starts_with("d.jsonl:1: the line is longer than 1048576 bytes"), "{err}");
}

#[test]
fn a_merge_leaves_out_a_record_too_long_to_read_back() {
    use promptloop::dataset::store::DatasetStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("examples.jsonl");
    let store = DatasetStore::new(&path, SplitFractions::default());
    let fits: Example = serde_json::from_str(&line_of("fits", 200)).unwrap();
    let huge: Example = serde_json::from_str(&line_of("huge", MAX_EXAMPLE_LINE_BYTES + 1)).unwrap();
    let snapshot = store.read().unwrap();
    let outcome = store.merge(&snapshot, &[fits, huge.clone()], &[huge], chrono::Utc::now()).unwrap();
    assert_eq!((outcome.added.values().sum::<usize>(), outcome.inbox_added, outcome.too_long), (1, 0, 1));
    assert_eq!(outcome.manifest.pulled, ["fits"], "a record left out is not remembered as pulled");
    let dataset = Dataset::load(&path, &SplitFractions::default()).unwrap();
    assert_eq!(dataset.len(), 1);
}
