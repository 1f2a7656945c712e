//! Metrics: structured JSON comparison, an LM judge against a loopback
//! endpoint, external commands, and weighted combinations. Each one on exact,
//! partial, malformed and missing predictions.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indexmap::IndexMap;
use promptloop::config::{JudgeScale, MetricConfig, MetricPart};
use promptloop::dataset::Example;
use promptloop::lm::Lm;
use promptloop::lm::budget::{LmRole, Meter, Prices};
use promptloop::lm::openai::{OpenAiClient, OpenAiConfig, SchemaStyle};
use promptloop::metric::{self, CommandMetric, JsonMatch, Judge, Metric, MetricError, Score, assign, normalize_date};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn example(inputs: Value, outputs: Value) -> Example {
    Example { id: "ex-1".into(), inputs: object(inputs), outputs: object(outputs), extra: Map::new() }
}

fn action_items_schema() -> Value {
    json!({
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "action": {"type": "string"},
                "owner": {"type": "string"},
                "due_date": {"type": ["string", "null"]}
            },
            "required": ["action", "owner", "due_date"]
        }
    })
}

fn meeting() -> Example {
    example(
        json!({"transcript": "Ana sends the Q3 deck by Friday; Bo books the venue; someone should update the wiki."}),
        json!({"action_items": [
            {"action": "Send the Q3 deck to the board", "owner": "Ana", "due_date": "2026-12-04"},
            {"action": "Book the venue for the offsite", "owner": "Bo", "due_date": null},
            {"action": "Update the onboarding wiki", "owner": "Cy", "due_date": null}
        ]}),
    )
}

fn json_match(schema: Option<Value>) -> JsonMatch {
    JsonMatch::new("action_items".into(), schema, IndexMap::new())
}

async fn score(metric: &dyn Metric, example: &Example, prediction: Value) -> Result<Score, MetricError> {
    metric.score(example, &object(prediction)).await
}

// ---- json_match ------------------------------------------------------------

#[tokio::test]
async fn json_match_exact_in_any_order_and_date_format() {
    let prediction = json!({"action_items": [
        {"action": "update the onboarding wiki", "owner": "Cy", "due_date": null},
        {"action": "Send the Q3 deck to the board.", "owner": "ana", "due_date": "Dec 4, 2026"},
        {"action": "Book the venue for the offsite", "owner": "Bo", "due_date": null}
    ]});
    for schema in [Some(action_items_schema()), None] {
        let s = score(&json_match(schema), &meeting(), prediction.clone()).await.unwrap();
        assert_eq!(s, Score { value: 1.0, feedback: "correct".into() });
    }
}

#[tokio::test]
async fn json_match_partial_says_which_item_and_key() {
    // One item right, one with the wrong owner and date, one missing, one extra.
    let prediction = json!({"action_items": [
        {"action": "Send the Q3 deck to the board", "owner": "Ana", "due_date": "4 December 2026"},
        {"action": "Book the venue for the offsite", "owner": "Cy", "due_date": "2026-12-11"},
        {"action": "Order pizza", "owner": "Dee", "due_date": null}
    ]});
    let s = score(&json_match(Some(action_items_schema())), &meeting(), prediction).await.unwrap();
    // Matched: 1, then 1/3 (the action only), then the pizza item against the
    // wiki item at 1/3 (only the null due dates agree).
    let tp = 1.0 + 1.0 / 3.0 + 1.0 / 3.0;
    let (p, r) = (tp / 3.0, tp / 3.0);
    assert!((s.value - 2.0 * p * r / (p + r)).abs() < 1e-9, "{}", s.value);
    insta::assert_snapshot!("json_match_partial_feedback", s.feedback);
}

#[tokio::test]
async fn json_match_counts_extra_and_missing_items_in_precision_and_recall() {
    let only_one = json!({"action_items": [
        {"action": "Send the Q3 deck to the board", "owner": "Ana", "due_date": "2026-12-04"}
    ]});
    let s = score(&json_match(Some(action_items_schema())), &meeting(), only_one).await.unwrap();
    // Precision 1, recall 1/3.
    assert!((s.value - 0.5).abs() < 1e-9, "{}", s.value);
    assert!(
        s.feedback.contains("reference item 2 (\"Book the venue for the offsite\") was not predicted (missing)"),
        "{}",
        s.feedback
    );
    assert!(
        s.feedback.contains("reference item 3 (\"Update the onboarding wiki\") was not predicted (missing)"),
        "{}",
        s.feedback
    );
}

#[tokio::test]
async fn json_match_nulls_match_only_nulls() {
    let reference =
        example(json!({}), json!({"action_items": [{"action": "Book the venue", "owner": "Bo", "due_date": null}]}));
    let metric = json_match(Some(action_items_schema()));
    let both_null = json!({"action_items": [{"action": "Book the venue", "owner": "Bo", "due_date": null}]});
    assert_eq!(score(&metric, &reference, both_null).await.unwrap().value, 1.0);
    let dated = json!({"action_items": [{"action": "Book the venue", "owner": "Bo", "due_date": "2026-12-04"}]});
    let s = score(&metric, &reference, dated).await.unwrap();
    assert!((s.value - 2.0 / 3.0).abs() < 1e-9, "{}", s.value);
    assert!(s.feedback.contains("`due_date` expected null, got \"2026-12-04\""), "{}", s.feedback);
    // The reverse: a date expected, null predicted.
    let reference = example(
        json!({}),
        json!({"action_items": [{"action": "Book the venue", "owner": "Bo", "due_date": "2026-12-04"}]}),
    );
    let undated = json!({"action_items": [{"action": "Book the venue", "owner": "Bo", "due_date": null}]});
    let s = score(&metric, &reference, undated).await.unwrap();
    assert!(s.feedback.contains("`due_date` expected \"2026-12-04\", got null"), "{}", s.feedback);
}

#[tokio::test]
async fn json_match_malformed_and_missing_predictions_score_zero_and_say_why() {
    let metric = json_match(Some(action_items_schema()));
    let cases = [
        (json!({"action_items": "[{\"action\": \"Send"}), "`action_items` is not valid JSON"),
        (
            json!({"action_items": {"action": "Send the deck"}}),
            "`action_items` must be a JSON list of items, got an object",
        ),
        (json!({"action_items": "\"just text\""}), "`action_items` must be a JSON list of items, got a string"),
        (json!({"action_items": []}), "`action_items` is an empty list; expected 3 items"),
        (json!({"queue": "cards"}), "the prediction has no `action_items`"),
    ];
    for (prediction, says) in cases {
        let s = score(&metric, &meeting(), prediction.clone()).await.unwrap();
        assert_eq!(s.value, 0.0, "{prediction}");
        assert!(s.feedback.starts_with(says), "{prediction}: {}", s.feedback);
    }
}

#[tokio::test]
async fn json_match_reads_a_list_written_as_json_text() {
    let text = "```json\n[{\"action\": \"Send the Q3 deck to the board\", \"owner\": \"Ana\", \"due_date\": \"2026-12-04\"}, {\"action\": \"Book the venue for the offsite\", \"owner\": \"Bo\", \"due_date\": null}, {\"action\": \"Update the onboarding wiki\", \"owner\": \"Cy\", \"due_date\": null}]\n```";
    let s = score(&json_match(None), &meeting(), json!({"action_items": text})).await.unwrap();
    assert_eq!(s.value, 1.0, "{}", s.feedback);
}

#[tokio::test]
async fn json_match_checks_required_keys_and_types_from_the_schema() {
    let prediction = json!({"action_items": [
        {"action": "Send the Q3 deck to the board", "owner": "Ana", "due_date": 20261204},
        {"action": "Book the venue for the offsite", "due_date": null},
        {"action": "Update the onboarding wiki", "owner": "Cy", "due_date": null}
    ]});
    let s = score(&json_match(Some(action_items_schema())), &meeting(), prediction).await.unwrap();
    assert!(s.feedback.contains("`due_date` should be string or null, got a number"), "{}", s.feedback);
    assert!(s.feedback.contains("lacks `owner`"), "{}", s.feedback);
    assert!((s.value - 7.0 / 9.0).abs() < 1e-9, "{}", s.value);
}

#[tokio::test]
async fn json_match_weights_keys() {
    let weights: IndexMap<String, f64> = [("owner".to_string(), 2.0)].into_iter().collect();
    let metric = JsonMatch::new("item".into(), None, weights);
    let reference = example(json!({}), json!({"item": {"action": "Book the venue", "owner": "Bo", "due_date": null}}));
    let s = score(&metric, &reference, json!({"item": {"action": "Book the venue", "owner": "Al", "due_date": null}}))
        .await
        .unwrap();
    // action 1, owner 0 (weight 2), due_date 1: 2 of 4.
    assert!((s.value - 0.5).abs() < 1e-9, "{}", s.value);
    assert_eq!(s.feedback, "`owner` expected \"Bo\", got \"Al\"");
}

#[test]
fn the_matching_is_optimal_where_greedy_is_not() {
    // Greedy (each predicted item takes its best free reference) pairs 0→0
    // (0.9) and leaves 1→1 (0.0): 0.9 in all. The optimum crosses: 0.8 + 0.8.
    let similarity = vec![vec![0.9, 0.8], vec![0.8, 0.0]];
    assert_eq!(assign(&similarity), [Some(1), Some(0)]);
    // More predicted items than reference ones, and fewer.
    let tall = vec![vec![0.9, 0.8], vec![0.8, 0.0], vec![0.85, 0.1]];
    assert_eq!(assign(&tall), [Some(1), None, Some(0)]);
    let wide = vec![vec![0.9, 0.8, 0.0], vec![0.8, 0.0, 0.1]];
    assert_eq!(assign(&wide), [Some(1), Some(0)]);
    assert_eq!(assign(&[]), Vec::<Option<usize>>::new());
}

#[test]
fn the_matching_agrees_with_brute_force() {
    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut all = Vec::new();
        for p in permutations(n - 1) {
            for at in 0..=p.len() {
                let mut q = p.clone();
                q.insert(at, n - 1);
                all.push(q);
            }
        }
        all
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 1000) as f64 / 1000.0
    };
    for trial in 0..200 {
        let n = 1 + trial % 6;
        let m: Vec<Vec<f64>> = (0..n).map(|_| (0..n).map(|_| next()).collect()).collect();
        let best = permutations(n)
            .iter()
            .map(|p| p.iter().enumerate().map(|(i, &j)| m[i][j]).sum::<f64>())
            .fold(0.0, f64::max);
        let got: f64 = assign(&m).iter().enumerate().map(|(i, j)| m[i][j.unwrap()]).sum();
        assert!((got - best).abs() < 1e-9, "trial {trial}: {got} vs {best} on {m:?}");
    }
}

#[test]
fn dates_are_normalized_to_iso_8601() {
    let same_day = [
        "2026-12-04",
        "2026-12-04T17:00:00Z",
        "2026/12/04",
        "Dec 4, 2026",
        "December 4, 2026",
        "december 4th, 2026",
        "4 December 2026",
        "4 Dec 2026",
        "Friday, December 4, 2026",
    ];
    for text in same_day {
        assert_eq!(normalize_date(text).as_deref(), Some("2026-12-04"), "{text}");
    }
    // Numeric day and month: read only when unambiguous.
    assert_eq!(normalize_date("25/12/2026").as_deref(), Some("2026-12-25"));
    assert_eq!(normalize_date("12/25/2026").as_deref(), Some("2026-12-25"));
    assert_eq!(normalize_date("04/04/2026").as_deref(), Some("2026-04-04"));
    assert_eq!(normalize_date("12/04/2026"), None);
    for not_a_date in ["2026-13-01", "Feb 30, 2026", "next Friday", "", "12/04/26", "04/12/2026x"] {
        assert_eq!(normalize_date(not_a_date), None, "{not_a_date}");
    }
}

// ---- judge -----------------------------------------------------------------

/// An OpenAI-compatible endpoint on 127.0.0.1 that answers each chat
/// completion with the next scripted content, and keeps the request bodies.
struct Stub {
    base_url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Stub {
    async fn start(replies: &[&str]) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let script = Arc::new(Mutex::new(replies.iter().map(|s| s.to_string()).collect::<VecDeque<_>>()));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (script, seen) = (script.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    loop {
                        let mut length = 0usize;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            if let Some((name, value)) = line.split_once(':')
                                && name.eq_ignore_ascii_case("content-length")
                            {
                                length = value.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0u8; length];
                        stream.read_exact(&mut body).await.unwrap();
                        seen.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                        let content = script.lock().unwrap().pop_front().expect("a scripted reply is left");
                        let reply = json!({
                            "id": "x", "object": "chat.completion", "model": "judge-model",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 50, "completion_tokens": 10}
                        })
                        .to_string();
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
                            reply.len()
                        );
                        stream.get_mut().write_all(response.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        Stub { base_url, bodies }
    }

    fn lm(&self, meter: &Arc<Meter>) -> Lm {
        let mut config = OpenAiConfig::new(self.base_url.clone(), "judge-model");
        config.max_retries = 0;
        config.schema_style = SchemaStyle::OpenAi;
        Lm::new(Arc::new(OpenAiClient::new(config).unwrap()), None, 1).metered(
            meter.clone(),
            LmRole::Judge,
            Prices::default(),
        )
    }
}

fn judge(lm: Lm, scale: JudgeScale) -> Judge {
    Judge {
        field: Some("reply".into()),
        rubric: "Score 1 when the reply apologizes and gives the refund timeline.".into(),
        scale,
        lm: Ok(lm),
        max_tokens: 128,
    }
}

fn support_example() -> Example {
    example(
        json!({"message": "Where is my refund?"}),
        json!({"reply": "Sorry for the wait: refunds arrive within 5 business days."}),
    )
}

#[tokio::test]
async fn judge_good_verdict() {
    let stub = Stub::start(&[r#"{"score": 0.8, "reason": "Apologizes; the timeline is vague."}"#]).await;
    let meter = Arc::new(Meter::new());
    let metric = judge(stub.lm(&meter), JudgeScale::Unit);
    let s = score(&metric, &support_example(), json!({"reply": "Sorry! It is on its way."})).await.unwrap();
    assert_eq!(s, Score { value: 0.8, feedback: "judge: Apologizes; the timeline is vague.".into() });
    assert_eq!(meter.usage().role(LmRole::Judge).calls, 1, "the judge's calls are metered in its role");
    assert_eq!(meter.usage().role(LmRole::Task).calls, 0);
    let bodies = stub.bodies.lock().unwrap().clone();
    let format = &bodies[0]["response_format"];
    assert_eq!(format["type"], "json_schema", "{format}");
    let sent = bodies[0]["messages"].to_string();
    assert!(sent.contains("refund timeline") && sent.contains("Sorry! It is on its way."), "{sent}");
}

#[tokio::test]
async fn judge_five_point_scale_is_mapped_to_0_1() {
    let stub = Stub::start(&[r#"{"score": 4, "reason": "Mostly there."}"#]).await;
    let metric = judge(stub.lm(&Arc::new(Meter::new())), JudgeScale::FivePoint);
    let s = score(&metric, &support_example(), json!({"reply": "Sorry, 5 days."})).await.unwrap();
    assert_eq!(s.value, 0.75);
    let schema = &stub.bodies.lock().unwrap()[0]["response_format"]["json_schema"]["schema"];
    assert_eq!(schema["properties"]["score"], json!({"enum": [1, 2, 3, 4, 5]}), "{schema}");
}

#[test]
fn the_verdict_schemas_are_ones_the_embedded_grammar_enforces() {
    for scale in [JudgeScale::Unit, JudgeScale::FivePoint] {
        let judge = Judge { field: None, rubric: "r".into(), scale, lm: Err("none".into()), max_tokens: 64 };
        promptloop::lm::local::constrain::validate_schema(&judge.verdict_schema()).unwrap();
    }
}

#[tokio::test]
async fn judge_unparseable_then_good_is_asked_again() {
    let stub = Stub::start(&["I think it is fine.", r#"{"score": 1, "reason": "Meets the rubric."}"#]).await;
    let meter = Arc::new(Meter::new());
    let metric = judge(stub.lm(&meter), JudgeScale::Unit);
    let s = score(&metric, &support_example(), json!({"reply": "Sorry: 5 business days."})).await.unwrap();
    assert_eq!(s, Score { value: 1.0, feedback: "judge: Meets the rubric.".into() });
    assert_eq!(meter.usage().role(LmRole::Judge).calls, 2);
}

#[tokio::test]
async fn judge_unparseable_twice_is_a_metric_error_with_the_reason() {
    let stub = Stub::start(&["I think it is fine.", r#"{"score": 7, "reason": "Great."}"#]).await;
    let meter = Arc::new(Meter::new());
    let metric = judge(stub.lm(&meter), JudgeScale::Unit);
    let err = score(&metric, &support_example(), json!({"reply": "Sorry."})).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"the judge's verdict did not parse, asked twice: score 7 is outside 0..=1 (reply: "{\"score\": 7, \"reason\": \"Great.\"}")"#
    );
    assert_eq!(meter.usage().role(LmRole::Judge).calls, 2);
}

#[tokio::test]
async fn judge_of_a_missing_field_scores_zero_without_a_call() {
    let stub = Stub::start(&[]).await;
    let meter = Arc::new(Meter::new());
    let metric = judge(stub.lm(&meter), JudgeScale::Unit);
    let s = score(&metric, &support_example(), json!({"queue": "cards"})).await.unwrap();
    assert_eq!(s, Score { value: 0.0, feedback: "the prediction has no `reply`".into() });
    assert_eq!(meter.usage().role(LmRole::Judge).calls, 0);
}

// ---- command ---------------------------------------------------------------

const RUBRIC_PY: &str = r#"
import json, sys
case = json.load(sys.stdin)
want = case["outputs"]["queue"]
got = case["prediction"].get("queue")
if got == want:
    print(json.dumps({"score": 1.0, "feedback": "right queue"}))
else:
    print("checking...")
    print(json.dumps({"score": 0.25, "feedback": f"expected {want}, got {got} (field {case.get('field')})"}))
"#;

fn command_metric(dir: &Path, argv: &[&str], timeout: Duration) -> CommandMetric {
    CommandMetric {
        field: Some("queue".into()),
        command: argv.iter().map(|s| s.to_string()).collect(),
        dir: dir.to_path_buf(),
        timeout,
    }
}

fn triage_example() -> Example {
    example(json!({"message": "PRIVATE-CUSTOMER-TEXT: my card was charged twice"}), json!({"queue": "cards"}))
}

#[tokio::test]
async fn command_that_succeeds_reads_stdin_and_is_run_from_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rubric.py"), RUBRIC_PY).unwrap();
    let metric = command_metric(dir.path(), &["python3", "rubric.py"], Duration::from_secs(60));
    let s = score(&metric, &triage_example(), json!({"queue": "cards"})).await.unwrap();
    assert_eq!(s, Score { value: 1.0, feedback: "right queue".into() });
    // Lines before the verdict are ignored: the last line is the verdict.
    let s = score(&metric, &triage_example(), json!({"queue": "transfers"})).await.unwrap();
    assert_eq!(s, Score { value: 0.25, feedback: "expected cards, got transfers (field queue)".into() });
    // The prediction lacks the field: scored 0, the command is not run.
    let s = score(&metric, &triage_example(), json!({"other": 1})).await.unwrap();
    assert_eq!(s, Score { value: 0.0, feedback: "the prediction has no `queue`".into() });
}

#[tokio::test]
async fn command_with_a_relative_program_path_resolves_it_from_the_root() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("scripts")).unwrap();
    let script = dir.path().join("scripts/score.sh");
    std::fs::write(&script, "#!/bin/sh\ncat > /dev/null\necho '{\"score\": 0.5, \"feedback\": \"half\"}'\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let metric = command_metric(dir.path(), &["scripts/score.sh"], Duration::from_secs(60));
    let s = score(&metric, &triage_example(), json!({"queue": "cards"})).await.unwrap();
    assert_eq!(s, Score { value: 0.5, feedback: "half".into() });
}

async fn command_error(argv: &[&str], timeout: Duration) -> String {
    let dir = tempfile::tempdir().unwrap();
    let metric = command_metric(dir.path(), argv, timeout);
    let err = score(&metric, &triage_example(), json!({"queue": "cards"})).await.unwrap_err().to_string();
    assert!(!err.contains("PRIVATE-CUSTOMER-TEXT"), "the example's content stays out of errors: {err}");
    err
}

#[tokio::test]
async fn command_that_crashes_fails_the_example_with_its_status_and_stderr() {
    let script =
        "cat > /dev/null; for i in 1 2 3 4 5 6 7; do echo \"line $i\" >&2; done; echo 'ValueError: boom' >&2; exit 3";
    let err = command_error(&["sh", "-c", script], Duration::from_secs(60)).await;
    assert_eq!(
        err,
        format!("`sh -c {script}` exited with status 3; stderr: line 4 | line 5 | line 6 | line 7 | ValueError: boom")
    );
}

#[tokio::test]
async fn command_that_hangs_is_killed_at_its_time_limit() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("never-written");
    // Opening a FIFO no one writes blocks for good: the command hangs.
    let script = "mkfifo \"$1\" && read line < \"$1\"";
    let err = command_error(&["sh", "-c", script, "sh", fifo.to_str().unwrap()], Duration::from_millis(300)).await;
    assert!(err.ends_with("did not finish within its time limit of 0.3s and was killed"), "{err}");
}

#[tokio::test]
async fn command_that_prints_garbage_fails_the_example() {
    // It echoes the example back as garbage: the error must not quote it.
    let err = command_error(&["sh", "-c", "sed 's/^/verdict: /'"], Duration::from_secs(60)).await;
    assert!(err.contains("bytes on stdout that are not a JSON verdict (expected value at line 1 column 1)"), "{err}");
    let err = command_error(&["sh", "-c", "true"], Duration::from_secs(60)).await;
    assert!(err.contains("printed nothing on stdout"), "{err}");
}

#[tokio::test]
async fn command_that_prints_a_score_outside_0_1_fails_the_example() {
    let err =
        command_error(&["sh", "-c", "echo '{\"score\": 1.7, \"feedback\": \"great\"}'"], Duration::from_secs(60)).await;
    assert!(err.ends_with("printed score 1.7, outside 0..=1"), "{err}");
    let err = command_error(&["sh", "-c", "echo '{\"score\": \"high\"}'"], Duration::from_secs(60)).await;
    assert!(err.ends_with("printed a `score` that is not a number"), "{err}");
}

#[tokio::test]
async fn command_that_cannot_start_says_so() {
    let err = command_error(&["./no-such-scorer"], Duration::from_secs(60)).await;
    assert!(err.starts_with("cannot start `./no-such-scorer`"), "{err}");
}

// ---- weighted --------------------------------------------------------------

fn weighted_config() -> MetricConfig {
    MetricConfig::Weighted {
        parts: vec![
            MetricPart { name: None, weight: 2.0, metric: MetricConfig::ExactMatch { fields: vec!["queue".into()] } },
            MetricPart {
                name: Some("reply wording".into()),
                weight: 1.0,
                metric: MetricConfig::TokenF1 { field: "reply".into() },
            },
            MetricPart {
                name: None,
                weight: 1.0,
                metric: MetricConfig::JsonMatch {
                    field: "action_items".into(),
                    schema: Some(action_items_schema()),
                    weights: IndexMap::new(),
                },
            },
        ],
    }
}

#[tokio::test]
async fn weighted_is_the_weighted_mean_with_each_parts_feedback() {
    let metric = metric::build(&weighted_config());
    assert_eq!(metric.name(), "weighted(2 × exact_match(queue), 1 × reply wording, 1 × json_match(action_items))");
    assert!(!metric.is_binary());
    let example = example(
        json!({"message": "Card charged twice; please call me Friday."}),
        json!({
            "queue": "cards",
            "reply": "We refund the duplicate charge within 5 days.",
            "action_items": [{"action": "Call the customer", "owner": "Agent", "due_date": "2026-12-04"}]
        }),
    );
    let prediction = json!({
        "queue": "cards",
        "reply": "We refund the charge soon.",
        "action_items": [{"action": "Call the customer", "owner": "Agent", "due_date": "12/04/2026"}]
    });
    let s = score(&*metric, &example, prediction).await.unwrap();
    insta::assert_snapshot!("weighted_feedback", format!("score {:.4}\n{}", s.value, s.feedback));
    let exact = score(
        &*metric,
        &example,
        json!({"queue": "cards", "reply": "We refund the duplicate charge within 5 days.", "action_items": [{"action": "Call the customer", "owner": "Agent", "due_date": "Dec 4, 2026"}]}),
    )
    .await
    .unwrap();
    assert_eq!(exact.value, 1.0, "{}", exact.feedback);
}

#[tokio::test]
async fn weighted_of_one_binary_part_is_binary_and_a_failing_part_names_itself() {
    let one = MetricConfig::Weighted {
        parts: vec![MetricPart {
            name: None,
            weight: 1.0,
            metric: MetricConfig::ExactMatch { fields: vec!["queue".into()] },
        }],
    };
    assert!(metric::build(&one).is_binary());
    let dir = tempfile::tempdir().unwrap();
    let failing = MetricConfig::Weighted {
        parts: vec![
            MetricPart { name: None, weight: 1.0, metric: MetricConfig::ExactMatch { fields: vec!["queue".into()] } },
            MetricPart {
                name: Some("house rules".into()),
                weight: 1.0,
                metric: MetricConfig::Command {
                    field: None,
                    command: vec!["sh".into(), "-c".into(), "exit 2".into()],
                    dir: dir.path().to_path_buf(),
                    timeout_secs: 60.0,
                },
            },
        ],
    };
    let err = score(&*metric::build(&failing), &triage_example(), json!({"queue": "cards"})).await.unwrap_err();
    assert_eq!(err.to_string(), "house rules: `sh -c exit 2` exited with status 2");
}

#[tokio::test]
async fn a_judge_built_without_its_lm_fails_each_example_clearly() {
    let config = MetricConfig::Judge {
        field: None,
        rubric: "r".into(),
        scale: JudgeScale::Unit,
        lm: Box::new(
            toml::from_str("provider = \"openai\"\nmodel = \"m\"\nbase_url = \"http://127.0.0.1:9/v1\"").unwrap(),
        ),
    };
    let metric = metric::build(&config);
    assert_eq!(metric.name(), "judge");
    let err = score(&*metric, &triage_example(), json!({"queue": "cards"})).await.unwrap_err();
    assert_eq!(err.to_string(), "the judge was built without its LM");
}
