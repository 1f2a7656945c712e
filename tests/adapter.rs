//! The adapter: what the model is shown, and how replies are read —
//! malformed ones included.

use promptloop::config::{AdapterFormat, Module};
use promptloop::lm::local::constrain::Constraint;
use promptloop::lm::{Lm, Segment};
use promptloop::program::adapter::{Prompt, parse, render, reply_schema, template};
use promptloop::program::predictor::{Demo, DemoSource, PredictSettings, Predictor};
use promptloop::program::signature::{Field, FieldType, Signature};
use serde_json::{Map, Value, json};

mod common;

fn queue() -> Field {
    Field::new(
        "queue",
        FieldType::Enum { values: vec!["cards".into(), "top_ups".into(), "transfers".into()] },
        "the queue",
    )
}

fn message() -> Field {
    Field::new("message", FieldType::String, "the customer's message")
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn rendered_text(format: AdapterFormat) -> String {
    let demo_in = obj(json!({"message": "My card hasn't arrived yet."}));
    let demo_out = obj(json!({"queue": "cards"}));
    let values = obj(json!({"message": "How do I top up by bank transfer?"}));
    let inputs = [message()];
    let outputs = [queue()];
    let prompt = Prompt {
        instructions: "Route the message.",
        inputs: &inputs,
        outputs: &outputs,
        demos: vec![(&demo_in, &demo_out)],
        values: &values,
    };
    let r = render(format, &prompt);
    r.messages.iter().map(|m| format!("--- {:?}\n{}\n", m.role, m.content)).collect()
}

#[test]
fn the_chat_format_as_the_model_sees_it() {
    insta::assert_snapshot!(rendered_text(AdapterFormat::Chat));
}

#[test]
fn the_json_format_as_the_model_sees_it() {
    insta::assert_snapshot!(rendered_text(AdapterFormat::Json));
}

#[test]
fn the_chat_template_matches_the_demo_replies() {
    let t = template(AdapterFormat::Chat, &[queue()]).unwrap();
    assert_eq!(
        t.segments,
        vec![
            Segment::Literal { text: "[[ ## queue ## ]]\n".into() },
            Segment::Choice { options: vec!["cards".into(), "top_ups".into(), "transfers".into()] },
            Segment::Literal { text: "\n\n[[ ## completed ## ]]".into() },
        ]
    );
    // Filling the template reproduces the reply format the demos use, which parses.
    let filled = "[[ ## queue ## ]]\ncards\n\n[[ ## completed ## ]]";
    assert_eq!(parse(AdapterFormat::Chat, &[queue()], filled).unwrap()["queue"], "cards");
}

fn details() -> Field {
    let schema = json!({
        "type": "object",
        "properties": {"kind": {"enum": ["refund", "bug"]}, "lines": {"type": "array", "items": {"type": "integer"}}},
        "required": ["kind", "lines"],
        "additionalProperties": false
    });
    Field::new("details", FieldType::Json { schema }, "")
}

fn tags() -> Field {
    Field::new("tags", FieldType::List { items: Box::new(FieldType::String) }, "")
}

#[test]
fn the_json_template_is_one_json_value_of_the_reply_schema() {
    let outputs = [queue(), Field::new("why", FieldType::String, ""), tags(), details()];
    let t = template(AdapterFormat::Json, &outputs).unwrap();
    assert_eq!(t.segments, vec![Segment::Json { schema: reply_schema(&outputs) }]);
    // The demo layout is what the grammar produces, and it parses.
    let filled = r#"{"queue": "cards", "why": "He said \"card\".", "tags": ["a", "b"], "details": {"kind": "bug", "lines": [1, 2]}}"#;
    let mut c = Constraint::new(&t);
    assert!(c.allows(filled.as_bytes()));
    c.push(filled.as_bytes());
    assert!(c.is_complete() && !c.can_continue());
    let out = parse(AdapterFormat::Json, &outputs, filled).unwrap();
    assert_eq!(out["why"], "He said \"card\".");
    assert_eq!(out["details"]["lines"], json!([1, 2]));
}

#[test]
fn the_chat_template_puts_lists_and_json_values_in_json_segments() {
    let outputs = [tags(), details(), Field::new("why", FieldType::String, "")];
    let t = template(AdapterFormat::Chat, &outputs).unwrap();
    assert_eq!(
        t.segments,
        vec![
            Segment::Literal { text: "[[ ## tags ## ]]\n".into() },
            Segment::Json { schema: json!({"type": "array", "items": {"type": "string"}}) },
            Segment::Literal { text: "\n\n[[ ## details ## ]]\n".into() },
            Segment::Json { schema: details().ty.json_schema() },
            Segment::Literal { text: "\n\n[[ ## why ## ]]\n".into() },
            Segment::Text { until: "[[ ##".into() },
            Segment::Literal { text: "\n\n[[ ## completed ## ]]".into() },
        ]
    );
}

#[test]
fn demos_lay_out_json_values_as_constrained_decoding_writes_them() {
    let demo_in = obj(json!({"message": "Refund lines 1 and 2"}));
    let demo_out = obj(json!({"tags": ["a", "b"], "details": {"kind": "refund", "lines": [1, 2]}}));
    let values = obj(json!({"message": "x"}));
    let inputs = [message()];
    let outputs = [tags(), details()];
    let prompt = Prompt {
        instructions: "",
        inputs: &inputs,
        outputs: &outputs,
        demos: vec![(&demo_in, &demo_out)],
        values: &values,
    };
    let chat = render(AdapterFormat::Chat, &prompt);
    assert!(chat.messages[2].content.contains("[[ ## details ## ]]\n{\"kind\": \"refund\", \"lines\": [1, 2]}"));
    assert!(chat.messages[2].content.contains("[[ ## tags ## ]]\n[\"a\", \"b\"]"));
    let json_format = render(AdapterFormat::Json, &prompt);
    assert_eq!(
        json_format.messages[2].content,
        r#"{"tags": ["a", "b"], "details": {"kind": "refund", "lines": [1, 2]}}"#
    );
}

#[test]
fn enum_values_are_read_forgivingly_where_safe() {
    for reply in [
        "[[ ## queue ## ]]\ncards\n\n[[ ## completed ## ]]",
        "[[ ## queue ## ]]\nCards",
        "[[ ## queue ## ]]\n\"cards\".",
        "[[ ## queue ## ]]\n**cards**",
        "[[ ##queue## ]]\n`CARDS`",
        "cards",
        "'Cards'",
    ] {
        let out = parse(AdapterFormat::Chat, &[queue()], reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"));
        assert_eq!(out["queue"], "cards", "{reply:?}");
    }
    let out = parse(AdapterFormat::Chat, &[queue()], "[[ ## queue ## ]]\ntop ups").unwrap();
    assert_eq!(out["queue"], "top_ups");
}

#[test]
fn enum_values_are_never_guessed() {
    for (reply, reason) in [
        ("[[ ## queue ## ]]\nI think it is cards", "is not one of: cards, top_ups, transfers"),
        ("[[ ## queue ## ]]\ncard", "is not one of"),
        ("The answer is cards.", "no `[[ ## queue ## ]]` marker"),
        ("[[ ## label ## ]]\ncards", "no `[[ ## queue ## ]]` section"),
        ("", "no `[[ ## queue ## ]]` marker"),
    ] {
        let err = parse(AdapterFormat::Chat, &[queue()], reply).unwrap_err();
        assert!(err.contains(reason), "{reply:?}: {err}");
    }
}

#[test]
fn typed_fields_in_the_chat_format() {
    let fields = [
        Field::new("n", FieldType::Int, ""),
        Field::new("x", FieldType::Float, ""),
        Field::new("ok", FieldType::Bool, ""),
        Field::new("tags", FieldType::List { items: Box::new(FieldType::String) }, ""),
        Field::new("why", FieldType::String, ""),
    ];
    let reply = "[[ ## n ## ]]\n42\n\n[[ ## x ## ]]\n-0.5\n\n[[ ## ok ## ]]\nYes\n\n[[ ## tags ## ]]\n[\"a\", \"b\"]\n\n[[ ## why ## ]]\nBecause.\nTwo lines.\n\n[[ ## completed ## ]]";
    let out = parse(AdapterFormat::Chat, &fields, reply).unwrap();
    assert_eq!(
        Value::Object(out),
        json!({"n": 42, "x": -0.5, "ok": true, "tags": ["a", "b"], "why": "Because.\nTwo lines."})
    );
    let err = parse(AdapterFormat::Chat, &fields[..1], "[[ ## n ## ]]\nforty-two").unwrap_err();
    assert!(err.contains("`forty-two` is not an integer"), "{err}");
}

#[test]
fn json_replies_tolerate_prose_and_fences_but_not_wrong_types() {
    let fields = [queue(), Field::new("confidence", FieldType::Float, "")];
    for reply in [
        r#"{"queue": "cards", "confidence": 0.9}"#,
        "Sure! Here you go:\n{\"queue\": \"Cards\", \"confidence\": 0.9}\nHope that helps.",
        "```json\n{\"queue\": \"cards\", \"confidence\": \"0.9\"}\n```",
    ] {
        let out = parse(AdapterFormat::Json, &fields, reply).unwrap_or_else(|e| panic!("{reply}: {e}"));
        assert_eq!(out["queue"], "cards");
        assert_eq!(out["confidence"], 0.9);
    }
    let err = parse(AdapterFormat::Json, &fields, r#"{"queue": "cards"}"#).unwrap_err();
    assert!(err.contains("no key `confidence`"), "{err}");
    let err = parse(AdapterFormat::Json, &fields, r#"{"queue": "cards", "confidence": [1]}"#).unwrap_err();
    assert!(err.contains("field `confidence`"), "{err}");
    let err = parse(AdapterFormat::Json, &fields, "no json here").unwrap_err();
    assert!(err.contains("no JSON object"), "{err}");
}

#[test]
fn json_fields_are_checked_against_their_schema() {
    let schema = json!({"type": "object", "properties": {"amount": {"type": "number"}}, "required": ["amount"]});
    let fields = [Field::new("details", FieldType::Json { schema }, "")];
    let ok = parse(AdapterFormat::Json, &fields, r#"{"details": {"amount": 12.5}}"#).unwrap();
    assert_eq!(ok["details"]["amount"], 12.5);
    let err = parse(AdapterFormat::Json, &fields, r#"{"details": {"amt": 12.5}}"#).unwrap_err();
    assert!(err.contains("does not match the schema") && err.contains("amount"), "{err}");
}

fn triage_predictor() -> Predictor {
    Predictor {
        name: "route".into(),
        module: Module::Predict,
        signature: Signature { inputs: vec![message()], outputs: vec![queue()] },
        instructions: "Route the message.".into(),
        demos: vec![Demo {
            example_id: "d1".into(),
            source: DemoSource::Labeled,
            inputs: obj(json!({"message": "Card not here"})),
            outputs: obj(json!({"queue": "cards"})),
        }],
    }
}

#[tokio::test]
async fn an_unparseable_reply_is_retried_once_in_the_other_format() {
    let lm = common::ScriptedLm::new(|req| {
        if common::wants_json(req) { r#"{"queue": "transfers"}"#.into() } else { "hmm, not sure".into() }
    });
    let settings = PredictSettings {
        lm: Lm::new(lm.clone(), None, 1),
        format: AdapterFormat::Chat,
        temperature: 0.0,
        max_tokens: 32,
        tools: None,
    };
    let call = triage_predictor().call(&settings, &obj(json!({"message": "send money"})), None).await.unwrap();
    assert_eq!(call.outputs.unwrap()["queue"], "transfers");
    assert_eq!(lm.calls(), 2);
}

#[tokio::test]
async fn a_reply_unparseable_in_both_formats_fails_with_both_reasons() {
    let lm = common::ScriptedLm::new(|_| "I cannot help with that.".into());
    let settings = PredictSettings {
        lm: Lm::new(lm.clone(), None, 1),
        format: AdapterFormat::Chat,
        temperature: 0.0,
        max_tokens: 32,
        tools: None,
    };
    let call = triage_predictor().call(&settings, &obj(json!({"message": "x"})), None).await.unwrap();
    assert!(call.outputs.is_none());
    assert!(call.format_error);
    let error = call.error.unwrap();
    assert!(error.contains("chat format:") && error.contains("json format:"), "{error}");
    assert_eq!(lm.calls(), 2);
}

#[tokio::test]
async fn chain_of_thought_asks_for_reasoning_first() {
    let lm = common::ScriptedLm::new(|_| {
        "[[ ## reasoning ## ]]\nIt is about money moving.\n\n[[ ## queue ## ]]\ntransfers\n\n[[ ## completed ## ]]"
            .into()
    });
    let mut predictor = triage_predictor();
    predictor.module = Module::ChainOfThought;
    let settings = PredictSettings {
        lm: Lm::new(lm.clone(), None, 1),
        format: AdapterFormat::Chat,
        temperature: 0.0,
        max_tokens: 32,
        tools: None,
    };
    let call = predictor.call(&settings, &obj(json!({"message": "x"})), None).await.unwrap();
    let out = call.outputs.unwrap();
    assert_eq!(out["reasoning"], "It is about money moving.");
    assert_eq!(out["queue"], "transfers");
    let request = &lm.requests.lock().unwrap()[0];
    let t = request.template.as_ref().unwrap();
    assert_eq!(t.segments[0], Segment::Literal { text: "[[ ## reasoning ## ]]\n".into() });
    // The labeled demo has no reasoning: it is shown as not supplied, not invented.
    assert!(request.messages[2].content.contains("Not supplied for this particular example."));
}

// ---- Replies cut by max_tokens ----------------------------------------------------

/// A remote model whose replies run to `full` and stop at `max_tokens`
/// characters with finish_reason "length", as an OpenAI-compatible endpoint says.
struct Budgeted {
    full: fn(&promptloop::lm::LmRequest) -> String,
}

#[async_trait::async_trait]
impl promptloop::lm::LanguageModel for Budgeted {
    fn describe(&self) -> promptloop::lm::LmDescription {
        promptloop::lm::LmDescription {
            provider: "openai".into(),
            model: "budgeted".into(),
            endpoint: None,
            constrained_decoding: false,
            response_format: None,
        }
    }

    async fn complete(
        &self,
        request: &promptloop::lm::LmRequest,
    ) -> Result<promptloop::lm::LmResponse, promptloop::lm::LmError> {
        let full = (self.full)(request);
        let cut: String = full.chars().take(request.max_tokens as usize).collect();
        let finish = if cut.len() < full.len() { "length" } else { "stop" };
        Ok(promptloop::lm::LmResponse {
            text: cut,
            usage: promptloop::lm::TokenUsage { prompt_tokens: 10, completion_tokens: u64::from(request.max_tokens) },
            finish_reason: Some(finish.into()),
        })
    }
}

fn budgeted(full: fn(&promptloop::lm::LmRequest) -> String, max_tokens: u32) -> PredictSettings {
    PredictSettings {
        lm: Lm::new(std::sync::Arc::new(Budgeted { full }), None, 1),
        format: AdapterFormat::Chat,
        temperature: 0.0,
        max_tokens,
        tools: None,
    }
}

fn answer_predictor() -> Predictor {
    Predictor {
        name: "answer".into(),
        module: Module::Predict,
        signature: Signature {
            inputs: vec![message()],
            outputs: vec![Field::new("reply", FieldType::String, "what to tell the customer")],
        },
        instructions: "Answer the customer.".into(),
        demos: vec![],
    }
}

#[tokio::test]
async fn a_reply_cut_by_max_tokens_fails_even_where_its_start_parses() {
    // Cut in the middle of a free-text field: the start would parse as an
    // answer, a wrong one.
    let full = |_: &promptloop::lm::LmRequest| {
        "[[ ## reply ## ]]\nYour card is on its way and should arrive within three working days.\n\n[[ ## completed ## ]]"
            .to_string()
    };
    let inputs = obj(json!({"message": "where is my card?"}));
    let call = answer_predictor().call(&budgeted(full, 40), &inputs, None).await.unwrap();
    assert!(call.outputs.is_none() && call.cut && !call.format_error, "{call:?}");
    assert_eq!(call.error.as_deref(), Some("reply cut at max_tokens = 40 before `reply` was complete"));
    assert_eq!((call.lm_calls, call.format_retried), (1, false), "a cut is not retried in the other format");
    assert_eq!(call.reply.as_deref(), Some("[[ ## reply ## ]]\nYour card is on its wa"));

    // With room, the same reply is an answer.
    let call = answer_predictor().call(&budgeted(full, 200), &inputs, None).await.unwrap();
    assert!(!call.cut && call.outputs.is_some(), "{call:?}");

    // A whole reply the model rambled on after is complete: taken as written.
    let rambling = |_: &promptloop::lm::LmRequest| {
        format!("[[ ## queue ## ]]\ntransfers\n\n[[ ## completed ## ]]\n{}", "and so on ".repeat(20))
    };
    let call = triage_predictor().call(&budgeted(rambling, 64), &inputs, None).await.unwrap();
    assert_eq!(call.outputs.unwrap()["queue"], "transfers");
    assert!(!call.cut);
}

#[test]
fn a_cut_names_the_field_it_stopped_in() {
    use promptloop::program::adapter::{cut_reason, reply_complete};
    let two = [queue(), Field::new("urgent", FieldType::Bool, "")];
    let chat = |reply: &str| cut_reason(AdapterFormat::Chat, &two, reply, 16);
    assert_eq!(chat(""), "reply cut at max_tokens = 16 before `queue` was complete");
    assert_eq!(chat("[[ ## que"), "reply cut at max_tokens = 16 before `queue` was complete");
    assert_eq!(chat("[[ ## queue ## ]]\ntrans"), "reply cut at max_tokens = 16 before `queue` was complete");
    assert_eq!(
        chat("[[ ## queue ## ]]\ncards\n\n[[ ## urg"),
        "reply cut at max_tokens = 16 before `urgent` was complete"
    );
    assert_eq!(
        chat("[[ ## queue ## ]]\ncards\n\n[[ ## urgent ## ]]\ntrue\n\n[[ ## comp"),
        "reply cut at max_tokens = 16 before its end marker"
    );
    let json = |reply: &str| cut_reason(AdapterFormat::Json, &two, reply, 9);
    assert_eq!(json("{\"que"), "reply cut at max_tokens = 9 before `queue` was complete");
    assert_eq!(
        json("{\"queue\": \"cards\", \"urgent\": tr"),
        "reply cut at max_tokens = 9 before `urgent` was complete"
    );

    assert!(reply_complete(
        AdapterFormat::Chat,
        &two,
        "[[ ## queue ## ]]\ncards\n\n[[ ## urgent ## ]]\ntrue\n\n[[ ## completed ## ]]"
    ));
    assert!(!reply_complete(AdapterFormat::Chat, &two, "[[ ## queue ## ]]\ncards\n\n[[ ## completed ## ]]"));
    assert!(reply_complete(AdapterFormat::Json, &two, "{\"queue\": \"cards\", \"urgent\": true}"));
    assert!(!reply_complete(AdapterFormat::Json, &two, "{\"queue\": \"cards\", \"urgent\": true"));
}

#[tokio::test]
async fn cut_replies_are_counted_apart_in_an_evaluation() {
    use promptloop::dataset::Example;
    use promptloop::eval::{EvalContext, evaluate};
    use promptloop::program::Program;

    // Long messages get long answers, which 60 characters cut.
    let full = |request: &promptloop::lm::LmRequest| {
        let message = common::last_input(request, "message");
        format!("[[ ## reply ## ]]\n{message}\n\n[[ ## completed ## ]]")
    };
    let examples: Vec<Example> = (0..5)
        .map(|i| Example {
            id: format!("e{i}"),
            inputs: obj(json!({"message": if i < 2 { "a very long message that goes on and on and on and on" } else { "short" }})),
            outputs: obj(json!({"reply": "short"})),
            extra: Map::new(),
        })
        .collect();
    let ctx = EvalContext {
        settings: budgeted(full, 60),
        metric: promptloop::metric::build(&promptloop::config::MetricConfig::ExactMatch {
            fields: vec!["reply".into()],
        }),
        concurrency: 2,
        progress: false,
    };
    let program = Program::sequence(vec![answer_predictor()]);
    let evaluation = evaluate(&program, &examples, &ctx, "test").await.unwrap();
    let s = &evaluation.summary;
    assert_eq!((s.n, s.failed, s.cut, s.format_errors, s.max_tokens), (5, 2, 2, 0, 60));
    let cut = &evaluation.results[0];
    assert!(cut.stats.cut && cut.trace[0].cut, "{cut:?}");
    assert_eq!(cut.feedback, "answer: reply cut at max_tokens = 60 before `reply` was complete");
    // In the per-example results `eval --results` writes, a cut is its own kind.
    let line = serde_json::to_value(cut).unwrap();
    assert_eq!((line["cut"].clone(), line["trace"][0]["cut"].clone()), (json!(true), json!(true)));
    assert!(serde_json::to_value(&evaluation.results[3]).unwrap().get("cut").is_none());
    insta::assert_snapshot!("failures_line_with_cut_replies", s.failures_text());
    let failures = promptloop::report::Failures::of("production", s).unwrap();
    insta::assert_snapshot!("report_failures_with_cut_replies", failures.text());
}

/// One OpenAI-compatible endpoint on 127.0.0.1 that answers every request
/// with `body`; its base URL.
async fn endpoint_answering(body: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                // Read the headers and the body they announce, then answer.
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    format!("http://{address}/v1")
}

#[tokio::test]
async fn an_endpoint_that_stops_at_length_gives_a_cut_prediction() {
    use promptloop::lm::openai::{OpenAiClient, OpenAiConfig};
    let base_url = endpoint_answering(
        r#"{"choices":[{"message":{"role":"assistant","content":"[[ ## queue ## ]]\ntrans"},"finish_reason":"length"}],"usage":{"prompt_tokens":50,"completion_tokens":8}}"#,
    )
    .await;
    let client = OpenAiClient::new(OpenAiConfig { max_retries: 0, ..OpenAiConfig::new(base_url, "m") }).unwrap();
    let settings = PredictSettings {
        lm: Lm::new(std::sync::Arc::new(client), None, 1),
        format: AdapterFormat::Chat,
        temperature: 0.0,
        max_tokens: 8,
        tools: None,
    };
    let call = triage_predictor().call(&settings, &obj(json!({"message": "send money"})), None).await.unwrap();
    assert!(call.cut && call.outputs.is_none(), "{call:?}");
    assert_eq!(call.error.as_deref(), Some("reply cut at max_tokens = 8 before `queue` was complete"));
}
