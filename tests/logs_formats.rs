//! Log formats: native, OpenAI and OTLP lines map onto `LogRecord`; bad lines are errors that
//! name the field and never quote the line.

use std::path::Path;

use chrono::{DateTime, Utc};
use promptloop::config::{FormatConfig, LogFormat};
use promptloop::logs::LogRecord;
use promptloop::logs::formats::{RecordError, parse_line};
use promptloop::logs::sources::{LineEvent, LineProblem};
use serde_json::{Value, json};

fn config(format: LogFormat) -> FormatConfig {
    FormatConfig { format, input_field: "message".into(), output_fields: vec!["queue".into()] }
}

fn fixture_lines(name: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/logs").join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(String::from)
        .collect()
}

fn one(format: LogFormat, line: &str) -> LogRecord {
    let mut records = parse_line(&config(format), line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(records.len(), 1, "{line}");
    records.remove(0)
}

fn time(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339).unwrap().with_timezone(&Utc)
}

fn queue(value: &str) -> serde_json::Map<String, Value> {
    json!({ "queue": value }).as_object().unwrap().clone()
}

// ---------------------------------------------------------------- native

#[test]
fn native_full_record_round_trips() {
    let lines = fixture_lines("native.jsonl");
    let r = one(LogFormat::Native, &lines[0]);
    assert_eq!(r.id, "req-7f3a9c01");
    assert_eq!(r.timestamp, time("2026-11-02T09:30:00Z"));
    assert_eq!(r.inputs["message"], "My card still hasn't arrived, it's been 2 weeks.");
    assert_eq!(r.output, Some(queue("cards")));
    assert_eq!(r.reference, Some(queue("cards")));
    let feedback = r.feedback.clone().unwrap();
    assert_eq!((feedback.score, feedback.comment.as_deref()), (Some(1.0), Some("routed right")));
    assert_eq!(r.history, vec!["I ordered a new card last month."]);
    assert_eq!(r.metadata["app_version"], "5.12.0");
    // The record's own serialization reads back to the same record.
    let again = one(LogFormat::Native, &serde_json::to_string(&r).unwrap());
    assert_eq!(again, r);
}

#[test]
fn native_reads_liberal_fields() {
    let lines = fixture_lines("native.jsonl");
    let r = one(LogFormat::Native, &lines[1]);
    assert_eq!(r.id, "48213", "a numeric id becomes its decimal string");
    assert_eq!(r.timestamp, time("2026-11-02T09:30:00Z"), "Unix seconds");
    assert_eq!(r.output, Some(queue("top_ups")), "a bare output fills the single output field");
    assert_eq!(r.reference, None);

    let r = one(LogFormat::Native, &lines[2]);
    assert_eq!(r.timestamp, time("2026-11-02T09:30:00.250Z"), "Unix milliseconds");
    assert_eq!(r.reference, Some(queue("payments")));
    assert_eq!(r.feedback.as_ref().unwrap().score, Some(0.2), "a bare number is the score");
    assert_eq!(r.history, vec!["Hello?"], "history messages as {{role, content}}");
    assert!(r.metadata.is_empty(), "null metadata is none");

    let r = one(LogFormat::Native, &lines[3]);
    assert_eq!(r.timestamp, time("2026-11-02T09:15:00Z"), "offsets are converted to UTC");
    assert_eq!(r.feedback.as_ref().unwrap().score, Some(0.0), "thumbs down");

    assert!(parse_line(&config(LogFormat::Native), &lines[4]).unwrap().is_empty(), "a blank line has no records");
    let r = one(LogFormat::Native, &lines[5]);
    assert_eq!(r.timestamp, time("2026-11-02T11:00:00Z"), "a space instead of T");
    assert_eq!((r.output, r.reference, r.feedback), (None, None, None));
}

#[test]
fn native_bare_output_needs_a_single_output_field() {
    let two = FormatConfig {
        format: LogFormat::Native,
        input_field: "message".into(),
        output_fields: vec!["queue".into(), "urgency".into()],
    };
    let line = r#"{"id": "a", "timestamp": 1793611800, "inputs": {"message": "hi"}, "output": "cards"}"#;
    let err = parse_line(&two, line).unwrap_err();
    assert!(matches!(&err, RecordError::BadField { field, .. } if field == "output"), "{err:?}");
    assert!(err.to_string().contains("`queue`, `urgency`"), "{err}");
    let line = r#"{"id": "a", "timestamp": 1793611800, "inputs": {"message": "hi"}, "output": {"queue": "cards", "urgency": "low"}}"#;
    assert_eq!(parse_line(&two, line).unwrap()[0].output.as_ref().unwrap()["urgency"], "low");
}

// ---------------------------------------------------------------- openai

#[test]
fn openai_gateway_pair_with_json_reply_and_metadata_reference() {
    let lines = fixture_lines("openai.jsonl");
    let r = one(LogFormat::Openai, &lines[0]);
    assert_eq!(r.id, "chatcmpl-AbC123");
    assert_eq!(r.timestamp, time("2026-11-02T09:30:00Z"));
    assert_eq!(r.inputs["message"], "I was charged an extra fee when paying in euros.");
    assert!(r.history.is_empty(), "the system message is not history");
    assert_eq!(r.output, Some(queue("payments")), "the JSON reply's field");
    assert_eq!(r.reference, Some(queue("payments")), "metadata.reference, a string read like a reply");
    assert_eq!(r.feedback.as_ref().unwrap().comment.as_deref(), Some("correct"));
    assert_eq!(r.metadata["model"], "gpt-4o-mini-2024-07-18", "the response's model wins");
    assert_eq!(r.metadata["usage"]["total_tokens"], 68);
    assert_eq!(r.metadata["channel"], "web");
    assert_eq!(r.metadata["latency_ms"], 412);
    assert!(!r.metadata.contains_key("reference"), "the reference is not left in the metadata");
}

#[test]
fn openai_multi_turn_parts_and_plain_text_reply() {
    let lines = fixture_lines("openai.jsonl");
    let r = one(LogFormat::Openai, &lines[1]);
    assert_eq!(r.inputs["message"], "Also my card is in the phone case, please block it!", "text parts only");
    assert_eq!(r.history, vec!["I lost my phone yesterday."]);
    assert_eq!(r.output, Some(queue("security")), "trimmed text for the single output field");
    assert_eq!(r.timestamp, time("2026-11-02T10:00:00Z"), "top-level timestamp without response.created");
    assert_eq!(r.reference, Some(queue("security")));
}

#[test]
fn openai_litellm_batch_and_helicone_shapes() {
    let lines = fixture_lines("openai.jsonl");
    let r = one(LogFormat::Openai, &lines[2]);
    assert_eq!(r.id, "chatcmpl-GhI789");
    assert_eq!(r.inputs["message"], "How long does a transfer to Germany take?");
    assert_eq!(r.output, Some(queue("transfers")));
    assert_eq!(r.metadata["custom_llm_provider"], "openai");
    assert_eq!(r.metadata["user_api_key_alias"], "support-bot");

    let r = one(LogFormat::Openai, &lines[3]);
    assert_eq!(r.id, "chatcmpl-JkL012");
    assert_eq!(r.inputs["message"], "Is there an age limit to open an account?");
    assert_eq!(r.output, Some(queue("account")), "a fenced JSON reply");
    assert_eq!(r.timestamp, DateTime::from_timestamp(1793612100, 0).unwrap());

    let r = one(LogFormat::Openai, &lines[4]);
    assert_eq!(r.id, "6f1c2b7e-0d55-4c1a-9f0e-8a1b2c3d4e5f", "request_id without a response");
    assert_eq!(r.inputs["message"], "My top-up failed twice today.", "a request body stored as a JSON string");
    assert_eq!(r.output, None);
    assert_eq!(r.timestamp, time("2026-11-02T10:20:00Z"));
    assert_eq!(r.metadata["status"], 500);
}

#[test]
fn openai_reply_fills_several_output_fields_or_fails() {
    let two = FormatConfig {
        format: LogFormat::Openai,
        input_field: "text".into(),
        output_fields: vec!["queue".into(), "urgency".into()],
    };
    let line = |reply: &str| {
        json!({"request": {"messages": [{"role": "user", "content": "card stolen"}]},
               "response": {"id": "x", "created": 1793611800, "choices": [{"message": {"role": "assistant", "content": reply}}]}})
        .to_string()
    };
    let r = parse_line(&two, &line(r#"{"queue": "security", "urgency": "high", "extra": 1}"#)).unwrap().remove(0);
    assert_eq!(r.inputs["text"], "card stolen", "the configured input field");
    assert_eq!(r.output.unwrap(), json!({"queue": "security", "urgency": "high"}).as_object().unwrap().clone());
    let err = parse_line(&two, &line("security, very urgent")).unwrap_err();
    assert!(
        matches!(&err, RecordError::BadField { field, .. } if field == "response.choices[0].message.content"),
        "{err:?}"
    );
    assert!(!err.to_string().contains("very urgent"), "{err}");
}

// ---------------------------------------------------------------- otel

#[test]
fn otel_current_convention_json_attributes() {
    let lines = fixture_lines("otel-current.jsonl");
    let records = parse_line(&config(LogFormat::Otel), &lines[0]).unwrap();
    assert_eq!(records.len(), 1, "the HTTP span is not a GenAI span");
    let r = &records[0];
    assert_eq!(r.id, "eee19b7ec3c1b174");
    assert_eq!(r.timestamp, DateTime::from_timestamp(1793612400, 0).unwrap());
    assert_eq!(r.inputs["message"], "There are 3 payments I don't recognise at all.");
    assert_eq!(r.history, vec!["I think someone used my card in another country."]);
    assert_eq!(r.output, Some(queue("security")));
    assert_eq!(r.metadata["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(r.metadata["system"], "openai");
    assert_eq!(r.metadata["operation"], "chat");
    assert_eq!(r.metadata["usage"], json!({"input_tokens": 58, "output_tokens": 6}), "intValue strings become numbers");
    assert_eq!(r.metadata["trace_id"], "5b8efff798038103d269b633813fc60c");
    assert_eq!(r.metadata["service"], "support-router");
    assert_eq!(r.metadata["response_id"], "chatcmpl-MnO345");
}

#[test]
fn otel_current_convention_structured_values_on_the_details_event() {
    let lines = fixture_lines("otel-current.jsonl");
    let r = one(LogFormat::Otel, &lines[1]);
    assert_eq!(r.inputs["message"], "Where can I withdraw cash for free?");
    assert_eq!(r.output, Some(queue("payments")));
    assert_eq!(r.metadata["system"], "vllm");
    assert_eq!(r.metadata["model"], "llama-3.1-8b");
}

#[test]
fn otel_span_without_user_message_is_skipped() {
    let lines = fixture_lines("otel-current.jsonl");
    let records = parse_line(&config(LogFormat::Otel), &lines[2]).unwrap();
    assert_eq!(records.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["2222222222222222"]);
    assert_eq!(records[0].output, None, "no output messages recorded");
}

#[test]
fn otel_event_based_convention() {
    let lines = fixture_lines("otel-events.jsonl");
    let r = one(LogFormat::Otel, &lines[0]);
    assert_eq!(r.id, "b7ad6b7169203331");
    assert_eq!(r.inputs["message"], "Can I change my PIN in the app?");
    assert!(r.history.is_empty());
    assert_eq!(r.output, Some(queue("security")), "gen_ai.choice body's message");
    assert_eq!(r.metadata["system"], "openai");

    let r = one(LogFormat::Otel, &lines[1]);
    assert_eq!(r.inputs["message"], "Still pending, what now?");
    assert_eq!(r.history, vec!["My transfer says pending since Monday."]);
    assert_eq!(r.output, Some(queue("transfers")), "a `message` attribute holding JSON");
    assert_eq!(r.metadata["usage"], json!({"input_tokens": 30, "output_tokens": 2}), "older usage names");
}

#[test]
fn otel_oldest_conventions() {
    let lines = fixture_lines("otel-legacy.jsonl");
    let r = one(LogFormat::Otel, &lines[0]);
    assert_eq!(r.inputs["message"], "How do I verify my identity?", "gen_ai.prompt holding message JSON");
    assert_eq!(r.output, Some(queue("account")));

    let r = one(LogFormat::Otel, &lines[1]);
    assert_eq!(r.inputs["message"], "What is the exchange rate for dollars today?", "content events, plain text");
    assert_eq!(r.output, Some(queue("exchange")));
    assert_eq!(r.metadata["system"], "az.ai.inference");

    let r = one(LogFormat::Otel, &lines[2]);
    assert_eq!(r.inputs["message"], "I got the wrong amount of cash from the ATM.", "OpenLLMetry indexed attributes");
    assert_eq!(r.output, Some(queue("payments")));
    assert_eq!(r.metadata["service"], "legacy-bot");
    assert_eq!(r.timestamp, DateTime::from_timestamp(1793613000, 0).unwrap());
}

#[test]
fn otel_export_without_genai_spans_has_no_records() {
    let line = json!({"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "ab", "spanId": "cd", "name": "GET /", "startTimeUnixNano": "1793613000000000000",
         "attributes": [{"key": "http.request.method", "value": {"stringValue": "GET"}}]}]}]}]});
    assert!(parse_line(&config(LogFormat::Otel), &line.to_string()).unwrap().is_empty());
}

// ---------------------------------------------------------------- errors

const PII: &str = "jane.doe@example.com";

/// (format, line, kind, text the message must contain)
fn bad_lines() -> Vec<(LogFormat, String, &'static str, &'static str)> {
    use LogFormat::*;
    let input = json!({"message": format!("my email is {PII}")});
    vec![
        (Native, format!(r#"{{"id": "a", "inputs": {{"message": "{PII}"#), "not_json", "column"),
        (Native, format!(r#"{{"id": "a", "inputs": {{"message": "{PII}"}}, }}"#), "not_json", "column"),
        (Native, format!(r#"["{PII}"]"#), "not_an_object", "array"),
        (Native, json!({"timestamp": 1793611800, "inputs": input}).to_string(), "missing_field", "`id`"),
        (Native, json!({"id": "a", "inputs": input}).to_string(), "missing_field", "`timestamp`"),
        (Native, json!({"id": "a", "timestamp": PII, "inputs": input}).to_string(), "bad_field", "`timestamp`"),
        (Native, json!({"id": "a", "timestamp": 1793611800}).to_string(), "missing_field", "`inputs`"),
        (Native, json!({"id": "a", "timestamp": 1793611800, "inputs": {}}).to_string(), "bad_field", "`inputs`"),
        (Native, json!({"id": "a", "timestamp": 1793611800, "inputs": PII}).to_string(), "bad_field", "`inputs`"),
        (Native, json!({"id": {"email": PII}, "timestamp": 1793611800, "inputs": input}).to_string(), "bad_field", "`id`"),
        (Native, json!({"id": "a", "timestamp": 1, "inputs": input, "output": [PII]}).to_string(), "bad_field", "`output`"),
        (
            Native,
            json!({"id": "a", "timestamp": 1, "inputs": input, "feedback": {"score": PII}}).to_string(),
            "bad_field",
            "`feedback.score`",
        ),
        (Native, json!({"id": "a", "timestamp": 1, "inputs": input, "history": [42]}).to_string(), "bad_field", "`history[0]`"),
        (Native, json!({"id": "a", "timestamp": 1, "inputs": input, "metadata": PII}).to_string(), "bad_field", "`metadata`"),
        (Openai, json!({"response": {"id": PII}}).to_string(), "missing_field", "`request`"),
        (Openai, json!({"request": {"model": PII}}).to_string(), "missing_field", "`request.messages`"),
        (
            Openai,
            json!({"request": {"messages": [{"role": "system", "content": PII}]}, "response": {"id": "x", "created": 1}})
                .to_string(),
            "no_messages",
            "`request.messages`",
        ),
        (
            Openai,
            json!({"request": {"messages": [{"role": "user", "content": PII}]}, "response": {"created": 1}}).to_string(),
            "missing_field",
            "`response.id`",
        ),
        (
            Openai,
            json!({"request": {"messages": [{"role": "user", "content": PII}]}, "response": {"id": "x"}}).to_string(),
            "missing_field",
            "`response.created`",
        ),
        (
            Openai,
            json!({"request": {"messages": [{"role": "user", "content": "hi"}]}, "response": {"id": "x", "created": PII}})
                .to_string(),
            "bad_field",
            "`response.created`",
        ),
        (Openai, json!({"request": PII}).to_string(), "bad_field", "`request`"),
        (Otel, json!({"spans": [PII]}).to_string(), "missing_field", "`resourceSpans`"),
        (
            Otel,
            json!({"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "cd", "startTimeUnixNano": "1",
                "attributes": [{"key": "gen_ai.system_instructions", "value": {"stringValue": PII}},
                               {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}}]}]}]}]})
            .to_string(),
            "no_messages",
            "spans",
        ),
        (
            Otel,
            json!({"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "cd", "startTimeUnixNano": PII,
                "attributes": [{"key": "gen_ai.prompt", "value": {"stringValue": PII}}]}]}]}]})
            .to_string(),
            "bad_field",
            "`resourceSpans[0].scopeSpans[0].spans[0].startTimeUnixNano`",
        ),
        (
            Otel,
            json!({"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "1",
                "attributes": [{"key": "gen_ai.prompt", "value": {"stringValue": PII}}]}]}]}]})
            .to_string(),
            "missing_field",
            "spanId",
        ),
    ]
}

#[test]
fn each_error_names_the_field_and_quotes_no_value() {
    for (format, line, kind, needle) in bad_lines() {
        let err = parse_line(&config(format), &line).expect_err(&line);
        let message = err.to_string();
        assert_eq!(err.kind(), kind, "{line}\n→ {message}");
        assert!(message.contains(needle), "{message:?} should name {needle}");
        assert!(!message.contains(PII) && !message.contains("jane"), "{message:?} quotes the line");
    }
}

#[test]
fn a_missing_timestamp_says_how_to_fix_it() {
    let err = parse_line(&config(LogFormat::Native), r#"{"id": "a", "inputs": {"message": "x"}}"#).unwrap_err();
    assert_eq!(err.to_string(), "`timestamp` is missing; each record needs an RFC 3339 time or Unix seconds");
}

// ---------------------------------------------------------------- the worked example's weekly logs

const QUEUES: [&str; 7] = ["cards", "payments", "security", "transfers", "top_ups", "exchange", "account"];

/// Every committed weekly file of logs/support-triage parses: its good lines into records with the
/// generator's fields, its deliberately broken lines into the expected errors, no more, no less.
#[test]
fn committed_weekly_logs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("logs/support-triage");
    let expected = [
        ("2026-W44", 1500, "2026-10-26"),
        ("2026-W45", 1545, "2026-11-02"),
        ("2026-W46", 1590, "2026-11-09"),
        ("2026-W47", 1635, "2026-11-16"),
    ];
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".jsonl.gz"))
        .collect();
    found.sort();
    assert_eq!(found, expected.map(|(week, _, _)| format!("{week}.jsonl.gz")));

    let native = config(LogFormat::Native);
    for (week, good, monday) in expected {
        let path = dir.join(format!("{week}.jsonl.gz"));
        let start = time(&format!("{monday}T00:00:00Z"));
        let end = start + chrono::Duration::days(7);
        // Read the way a pull reads: gzip by content, lines capped at 1 MiB.
        let file = std::fs::File::open(&path).unwrap();
        let lines = promptloop::logs::sources::Lines::new(flate2::read::MultiGzDecoder::new(file), 1 << 20);
        let mut errors = std::collections::BTreeMap::<&str, usize>::new();
        let (mut records, mut over_limit, mut with_reference, mut with_feedback, mut with_history) = (0, 0, 0, 0, 0);
        for event in lines {
            let line = match event.unwrap() {
                LineEvent::Line { text, .. } => text,
                // The file has one line over the limit on purpose (a pasted statement).
                LineEvent::Bad { problem: LineProblem::TooLong { .. }, .. } => {
                    over_limit += 1;
                    continue;
                }
                LineEvent::Bad { problem: LineProblem::InvalidUtf8, .. } => {
                    *errors.entry("invalid_utf8").or_default() += 1;
                    continue;
                }
                LineEvent::Bad { problem, .. } => panic!("{week}: {problem:?}"),
            };
            match parse_line(&native, &line) {
                Ok(parsed) => {
                    let [r] = parsed.as_slice() else { panic!("{week}: one record a line") };
                    records += 1;
                    assert!(r.id.starts_with("req-") && r.id.len() == 20, "{week}: id {}", r.id);
                    assert!(r.timestamp >= start && r.timestamp < end, "{week}: {} outside the week", r.timestamp);
                    assert!(r.inputs["message"].as_str().is_some_and(|m| !m.trim().is_empty()), "{week}: {}", r.id);
                    assert!(
                        QUEUES.contains(&r.output.as_ref().unwrap()["queue"].as_str().unwrap()),
                        "{week}: {}",
                        r.id
                    );
                    if let Some(reference) = &r.reference {
                        assert!(QUEUES.contains(&reference["queue"].as_str().unwrap()), "{week}: {}", r.id);
                        with_reference += 1;
                    }
                    with_feedback += usize::from(r.feedback.is_some());
                    with_history += usize::from(!r.history.is_empty());
                    assert!(
                        r.metadata.contains_key("channel") && r.metadata.contains_key("customer"),
                        "{week}: {}",
                        r.id
                    );
                }
                Err(err) => {
                    if let RecordError::MissingField { field, .. } = &err {
                        assert_eq!(field, "inputs", "{week}");
                    }
                    *errors.entry(err.kind()).or_default() += 1;
                }
            }
        }
        assert_eq!(records, good, "{week}: good records");
        assert_eq!(over_limit, 1, "{week}: lines over 1 MiB");
        let expected_errors = [("missing_field", 2), ("not_json", 3), ("invalid_utf8", 1)].into_iter().collect();
        assert_eq!(errors, expected_errors, "{week}: broken lines by kind");
        let share = with_reference as f64 / good as f64;
        assert!((0.55..0.65).contains(&share), "{week}: {share:.2} of records have a reference");
        assert!(
            with_feedback > good / 20 && with_history > good / 20,
            "{week}: {with_feedback} feedback, {with_history} history"
        );
    }
}

#[test]
fn a_unix_time_past_what_nanoseconds_hold_is_refused_not_wrapped() {
    // Milliseconds and microseconds of the year 3000 and beyond: i64 nanoseconds end in 2262.
    for ts in ["32503680000000", "32503680000000000", "99999999999999999"] {
        let line = format!(r#"{{"id": "a", "timestamp": {ts}, "inputs": {{"message": "hi"}}, "output": "cards"}}"#);
        match parse_line(&config(LogFormat::Native), &line) {
            Err(err) => assert!(err.to_string().contains("timestamp"), "{ts}: {err}"),
            Ok(records) => panic!("{ts} was read as {:?}", records.iter().map(|r| r.timestamp).collect::<Vec<_>>()),
        }
    }
    // In range, each unit still reads.
    let line = r#"{"id": "a", "timestamp": 1793611800000000, "inputs": {"message": "hi"}, "output": "cards"}"#;
    assert_eq!(one(LogFormat::Native, line).timestamp, time("2026-11-02T09:30:00Z"), "Unix microseconds");
}
