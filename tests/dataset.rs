//! Datasets: the split is a stable function of the id; bad lines are errors with file and line.

use std::path::Path;

use promptloop::config::SplitFractions;
use promptloop::dataset::{Dataset, Example, Split, parse_examples, split_of};
use serde_json::{Map, json};

fn example(id: &str) -> Example {
    Example { id: id.into(), inputs: Map::new(), outputs: Map::new(), extra: Map::new() }
}

#[test]
fn split_is_a_pinned_function_of_the_id() {
    // bucket = SHA-256(id)[..8] as big-endian u64 mod 10_000; pinned so it never drifts.
    let f = SplitFractions::default();
    assert_eq!(split_of("abc", &f), Split::Train); // bucket 74
    assert_eq!(split_of("b77-train-00002", &f), Split::Train); // 2710
    assert_eq!(split_of("b77-test-00018", &f), Split::Test); // 9140
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
    assert_eq!((d.train().len(), d.dev().len(), d.test().len()), (701, 160, 139));
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
