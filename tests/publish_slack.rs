//! The Slack message: its blocks for a promote and a hold, Slack's limits with absurd input,
//! and posting by bot token and by webhook to a stand-in that checks every request against
//! Slack's published description, through 5xx answers, rate limits and error codes, without
//! a secret ever leaking into an error.

#[path = "common/closing_port.rs"]
mod closing_port;
#[path = "common/slack_stub.rs"]
mod slack_stub;
#[path = "common/waits.rs"]
mod waits;

use std::time::Duration;

use closing_port::ClosingPort;

use promptloop::eval::gate::Decision;
use promptloop::publish::Secret;
use promptloop::publish::slack::{self, Links, Posted, Retry, SlackError, SlackMessage, SlackTarget, to_json, to_text};
use promptloop::report::{Cost, Headline};
use serde_json::{Value, json};
use slack_stub::SlackStub;
use waits::Waits;

fn promote() -> Headline {
    Headline {
        pipeline: "support-triage".into(),
        metric: "exact_match(queue)".into(),
        n: 139,
        baseline: 0.266,
        candidate: 0.460,
        delta: 0.194,
        low: 0.094,
        high: 0.295,
        confidence: 0.95,
        mcnemar_p: Some(0.0001),
        decision: Decision::Promote,
        reasons: vec!["the delta +0.194 clears the minimum of +0.000 and its interval lies above zero".into()],
        no_candidate: false,
    }
}

fn hold() -> Headline {
    Headline {
        pipeline: "support-triage".into(),
        metric: "exact_match(queue)".into(),
        n: 139,
        baseline: 0.460,
        candidate: 0.468,
        delta: 0.008,
        low: -0.036,
        high: 0.050,
        confidence: 0.95,
        mcnemar_p: Some(0.74),
        decision: Decision::Hold,
        reasons: vec![
            "the 95% interval [-0.036, +0.050] reaches zero: the difference may be noise".into(),
            "the delta +0.008 is not above the minimum of +0.020".into(),
        ],
        no_candidate: false,
    }
}

fn cost() -> Cost {
    Cost { lm_calls: 1498, cache_hits: 312, prompt_tokens: 400_000, completion_tokens: 12_003, dollars: Some(0.41) }
}

fn links() -> Links {
    Links {
        pr_url: Some("https://github.com/acme/support/pull/42".into()),
        run_url: Some("https://github.com/acme/support/actions/runs/123456789".into()),
    }
}

fn bot(stub: &SlackStub) -> SlackTarget {
    SlackTarget::Bot { token: Secret::new(stub.token()), channel: "#promptloop".into(), api_url: stub.api_url() }
}

fn webhook(stub: &SlackStub) -> SlackTarget {
    SlackTarget::webhook(Secret::new(stub.webhook_url()))
}

/// The default tries, with the waits between them recorded in `waits` instead of waited.
fn recorded(waits: &Waits) -> Retry {
    Retry { sleeper: waits.sleeper(), ..Retry::default() }
}

/// The default tries, none of them waited for.
fn fast() -> Retry {
    recorded(&Waits::new())
}

fn pretty(message: &SlackMessage) -> String {
    serde_json::to_string_pretty(&to_json(message)).unwrap()
}

/// Every mrkdwn and plain text in the blocks, in order.
fn block_texts(payload: &Value) -> Vec<String> {
    let mut texts = Vec::new();
    for block in payload["blocks"].as_array().unwrap() {
        for key in ["text"] {
            if let Some(text) = block[key]["text"].as_str() {
                texts.push(text.to_string());
            }
        }
        for list in ["fields", "elements"] {
            for item in block[list].as_array().into_iter().flatten() {
                if let Some(text) = item["text"].as_str() {
                    texts.push(text.to_string());
                }
            }
        }
    }
    texts
}

/// Every mrkdwn text object in the blocks.
fn mrkdwn_texts(payload: &Value) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if map.get("type").and_then(Value::as_str) == Some("mrkdwn") {
                    out.extend(map.get("text").and_then(Value::as_str).map(str::to_string));
                }
                map.values().for_each(|v| walk(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&payload["blocks"], &mut out);
    out
}

#[test]
fn the_blocks_for_a_promote() {
    let message = slack::message(&promote(), &cost(), &links(), None);
    assert!(slack_stub::block_kit_violations(&to_json(&message)).is_empty());
    insta::assert_snapshot!(pretty(&message));
}

#[test]
fn the_blocks_for_a_hold_say_why() {
    let headline = hold();
    let message = slack::message(&headline, &cost(), &links(), Some("PR not updated: GitHub answered 403"));
    let payload = to_json(&message);
    assert!(slack_stub::block_kit_violations(&payload).is_empty());
    let all = block_texts(&payload).join("\n");
    for reason in &headline.reasons {
        assert!(all.contains(reason.as_str()), "the reason `{reason}` is missing from:\n{all}");
    }
    assert!(all.contains("PR not updated: GitHub answered 403"));
    insta::assert_snapshot!(pretty(&message));
}

#[test]
fn the_plain_text_for_the_terminal() {
    let message = slack::message(&hold(), &cost(), &links(), Some("PR not updated: <a & b>"));
    let text = to_text(&message);
    // Plain text: nothing escaped for mrkdwn.
    assert!(text.contains("PR not updated: <a & b>"));
    insta::assert_snapshot!(text);
}

#[test]
fn every_rendering_carries_exactly_the_headline_words() {
    for headline in [promote(), hold()] {
        let cost = cost();
        let message = slack::message(&headline, &cost, &links(), None);
        let payload = to_json(&message);
        let texts = block_texts(&payload);
        let delta = headline.delta_text();
        // The headline section, right under the header, says the delta and the decision.
        assert_eq!(payload["blocks"][0]["type"], "header");
        assert_eq!(payload["blocks"][1]["type"], "section");
        assert_eq!(
            payload["blocks"][1]["text"]["text"].as_str().unwrap(),
            format!("*Test delta:* {delta}\n*Decision:* {}", headline.decision_text())
        );
        assert!(texts.iter().any(|t| t.ends_with(&headline.scores_text())));
        assert!(texts.iter().any(|t| t.ends_with(&cost.text())));
        assert!(message.text().contains(&delta), "the fallback `{}` lacks the delta", message.text());
        assert_eq!(payload["text"].as_str().unwrap(), message.text());
        let plain = to_text(&message);
        for words in [delta, headline.decision_text(), headline.scores_text(), cost.text()] {
            assert!(plain.contains(&words), "the plain text lacks `{words}`:\n{plain}");
        }
    }
}

#[test]
fn user_text_is_escaped_so_it_cannot_mention_or_link() {
    let mut headline = hold();
    headline.pipeline = "triage <!channel> & co".into();
    headline.metric = "f1<@U123>".into();
    headline.reasons[0] = "a reason with <!here> and <https://evil.test|a link>".into();
    let links = Links { pr_url: Some("https://github.com/a/b/pull/1?x=1&y=<2>|z".into()), run_url: None };
    let payload = to_json(&slack::message(&headline, &cost(), &links, Some("note <!everyone>")));
    // Every mrkdwn text (the header is plain_text, which Slack shows as written).
    let mrkdwn = mrkdwn_texts(&payload).join("\n");
    for raw in ["<!channel>", "<@U123>", "<!here>", "<https://evil.test", "<!everyone>"] {
        assert!(!mrkdwn.contains(raw), "`{raw}` reached the blocks unescaped: {mrkdwn}");
    }
    for escaped in ["&lt;!here&gt;", "f1&lt;@U123&gt;", "note &lt;!everyone&gt;"] {
        assert!(mrkdwn.contains(escaped), "`{escaped}` is missing from: {mrkdwn}");
    }
    assert!(!payload["text"].as_str().unwrap().contains("<!channel>"));
    // The PR link stays one link: `|` and `>` inside the URL are encoded, `&` escaped.
    let link_section = block_texts(&payload).into_iter().find(|t| t.contains("|Pull request>")).unwrap();
    assert_eq!(link_section, "<https://github.com/a/b/pull/1?x=1&amp;y=%3C2%3E%7Cz|Pull request>");
}

#[tokio::test]
async fn absurd_input_stays_within_slack_limits_and_keeps_the_headline() {
    let mut headline = hold();
    headline.pipeline = "p".repeat(10_000);
    headline.metric = "m&".repeat(5_000);
    headline.reasons = (0..500).map(|i| format!("reason {i} <&> {}", "é😀".repeat(2_000))).collect();
    let note = "n<>&".repeat(20_000);
    let long_url = format!("https://github.com/acme/support/pull/42?{}", "q".repeat(5_000));
    let links =
        Links { pr_url: Some(long_url), run_url: Some("https://github.com/acme/support/actions/runs/1".into()) };
    let message = slack::message(&headline, &cost(), &links, Some(&note));
    let payload = to_json(&message);

    assert_eq!(slack_stub::block_kit_violations(&payload), Vec::<String>::new());
    let blocks = payload["blocks"].as_array().unwrap();
    assert!(blocks.len() <= 50);
    let header = blocks[0]["text"]["text"].as_str().unwrap();
    assert!(header.ends_with("…: hold"), "{header}");
    let headline_text = blocks[1]["text"]["text"].as_str().unwrap();
    assert!(headline_text.starts_with(&format!("*Test delta:* {}\n*Decision:* hold: ", headline.delta_text())));
    assert!(message.text().contains(&headline.delta_text()), "the fallback lost the delta");
    for text in block_texts(&payload) {
        assert!(!text.contains("&am…") && !text.contains("&l…") && !text.contains("&g…"), "an entity was cut");
        assert!(!text.contains('\u{FFFD}'), "a character was split");
    }
    // The run link survives though the PR link was too long for any block.
    let links_text = block_texts(&payload).into_iter().find(|t| t.contains("|Actions run>")).unwrap();
    assert!(links_text.starts_with("Pull request: the link is too long to show here"), "{links_text}");

    // And Slack (the stand-in) takes it as it is.
    let stub = SlackStub::start();
    slack::post_with(&webhook(&stub), &message, &fast()).await.unwrap();
    assert_eq!(stub.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn a_bot_post_lands_with_channel_blocks_text_and_bearer_token() {
    let stub = SlackStub::start();
    let message = slack::message(&promote(), &cost(), &links(), None);
    let posted = slack::post_with(&bot(&stub), &message, &fast()).await.unwrap();

    let Posted::Bot { channel, ts } = posted else { panic!("a bot post answers with channel and ts: {posted:?}") };
    assert_eq!(channel.as_deref(), Some("C0000000001"));
    assert_eq!(ts.as_deref(), Some("1700000000.000001"));
    let received = stub.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, "/api/chat.postMessage");
    assert_eq!(received[0].header("authorization"), Some(format!("Bearer {}", stub.token()).as_str()));
    let messages = stub.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["channel"], "#promptloop");
    assert_eq!(messages[0]["text"], to_json(&message)["text"]);
    assert_eq!(messages[0]["blocks"], to_json(&message)["blocks"]);
    assert_eq!(stub.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn a_bot_post_answered_with_only_ok_channel_and_ts_is_sent() {
    // `ok: true` is what says the message landed; the posted `message` Slack usually
    // echoes back is not needed, and its absence does not make the post a failure.
    let stub = SlackStub::start();
    stub.fail_next(200, &[], r#"{"ok":true,"channel":"C1","ts":"1.2"}"#);
    let message = slack::message(&promote(), &cost(), &links(), None);
    let posted = slack::post_with(&bot(&stub), &message, &fast()).await.unwrap();
    assert_eq!(posted, Posted::Bot { channel: Some("C1".into()), ts: Some("1.2".into()) });
    assert_eq!(stub.received().len(), 1, "a post that landed is not repeated");

    // Even `{"ok":true}` alone is a message sent.
    let stub = SlackStub::start();
    stub.fail_next(200, &[], r#"{"ok":true}"#);
    let posted = slack::post_with(&bot(&stub), &message, &fast()).await.unwrap();
    assert_eq!(posted, Posted::Bot { channel: None, ts: None });

    // And `ok: false` is a refusal even without an error code.
    let stub = SlackStub::start();
    stub.fail_next(200, &[], r#"{"ok":false}"#);
    let err = slack::post_with(&bot(&stub), &message, &fast()).await.unwrap_err();
    assert!(matches!(err, SlackError::Rejected { .. }), "{err:?}");
    assert_eq!(stub.received().len(), 1);
}

#[tokio::test]
async fn a_webhook_post_lands_as_the_saved_payload() {
    let stub = SlackStub::start();
    let message = slack::message(&hold(), &cost(), &links(), None);
    let posted = slack::post_with(&webhook(&stub), &message, &fast()).await.unwrap();
    assert_eq!(posted, Posted::Webhook);
    assert_eq!(stub.messages(), vec![to_json(&message)]);
    assert!(stub.received()[0].path.starts_with("/services/"));
    assert_eq!(stub.received()[0].header("authorization"), None);
    assert_eq!(stub.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn server_errors_are_retried() {
    let stub = SlackStub::start();
    stub.fail_next(500, &[], r#"{"ok":false,"error":"internal_error"}"#);
    stub.fail_next(503, &[], "Service Unavailable");
    let message = slack::message(&promote(), &cost(), &links(), None);
    let waits = Waits::new();
    let posted = slack::post_with(&bot(&stub), &message, &recorded(&waits)).await.unwrap();
    assert!(matches!(posted, Posted::Bot { .. }));
    // The backoff doubles from one second.
    assert_eq!(waits.recorded(), [Duration::from_secs(1), Duration::from_secs(2)]);
    assert_eq!(stub.received().len(), 3);
    assert_eq!(stub.messages().len(), 1);
    assert_eq!(stub.violations(), Vec::<String>::new());

    // The webhook too.
    let stub = SlackStub::start();
    stub.fail_next(500, &[], "rollup_error");
    slack::post_with(&webhook(&stub), &message, &fast()).await.unwrap();
    assert_eq!(stub.received().len(), 2);
    assert_eq!(stub.messages().len(), 1);
}

#[tokio::test]
async fn server_errors_that_persist_end_in_an_error_after_the_attempts() {
    let stub = SlackStub::start();
    for _ in 0..5 {
        stub.fail_next(502, &[], "Bad Gateway");
    }
    let message = slack::message(&promote(), &cost(), &links(), None);
    let err = slack::post_with(&bot(&stub), &message, &fast()).await.unwrap_err();
    assert!(matches!(err, SlackError::Unavailable { attempts: 3, .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("HTTP 502") && text.contains("3 times") && text.contains("chat.postMessage"), "{text}");
    assert_eq!(stub.received().len(), 3);
    assert!(stub.messages().is_empty());
}

#[tokio::test]
async fn a_rate_limit_is_waited_out_as_retry_after_says() {
    let stub = SlackStub::start();
    stub.fail_next(429, &[("retry-after", "7")], r#"{"ok":false,"error":"ratelimited"}"#);
    let message = slack::message(&promote(), &cost(), &links(), None);
    let waits = Waits::new();
    slack::post_with(&bot(&stub), &message, &recorded(&waits)).await.unwrap();
    // The backoff is one second: the wait is Retry-After's.
    assert_eq!(waits.recorded(), [Duration::from_secs(7)]);
    assert_eq!(stub.received().len(), 2);
    assert_eq!(stub.messages().len(), 1);

    // A webhook's rate limit answers in plain text.
    let stub = SlackStub::start();
    stub.fail_next(429, &[("retry-after", "7")], "rate_limited");
    let waits = Waits::new();
    slack::post_with(&webhook(&stub), &message, &recorded(&waits)).await.unwrap();
    assert_eq!(waits.recorded(), [Duration::from_secs(7)]);
    assert_eq!(stub.messages().len(), 1);

    // Without Retry-After, the backoff.
    let stub = SlackStub::start();
    stub.fail_next(429, &[], r#"{"ok":false,"error":"ratelimited"}"#);
    let waits = Waits::new();
    slack::post_with(&bot(&stub), &message, &recorded(&waits)).await.unwrap();
    assert_eq!(waits.recorded(), [Duration::from_secs(1)]);
}

#[tokio::test]
async fn a_rate_limit_longer_than_allowed_fails_at_once() {
    let stub = SlackStub::start();
    stub.fail_next(429, &[("retry-after", "3600")], r#"{"ok":false,"error":"ratelimited"}"#);
    let message = slack::message(&promote(), &cost(), &links(), None);
    let waits = Waits::new();
    let err = slack::post_with(&bot(&stub), &message, &recorded(&waits)).await.unwrap_err();
    assert!(matches!(err, SlackError::RateLimited { attempts: 1, retry_after: Some(d), .. } if d.as_secs() == 3600));
    assert_eq!(waits.recorded(), Vec::<Duration>::new(), "nothing was waited for");
    assert!(err.to_string().contains("3600s"), "{err}");
    assert_eq!(stub.received().len(), 1);
}

#[tokio::test]
async fn each_slack_error_code_says_what_to_do() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("channel_not_found", r#"{"ok":false,"error":"channel_not_found"}"#, &["#promptloop", "/invite"]),
        ("not_in_channel", r#"{"ok":false,"error":"not_in_channel"}"#, &["not a member of `#promptloop`", "/invite"]),
        (
            "missing_scope",
            r#"{"ok":false,"error":"missing_scope","needed":"chat:write","provided":"incoming-webhook"}"#,
            &["`chat:write` scope", "incoming-webhook", "reinstall", "SLACK_BOT_TOKEN"],
        ),
        ("is_archived", r#"{"ok":false,"error":"is_archived"}"#, &["archived"]),
        (
            "invalid_blocks",
            r#"{"ok":false,"error":"invalid_blocks","errors":["must be less than 3001 characters"]}"#,
            &["bug in promptloop", "less than 3001"],
        ),
    ];
    let message = slack::message(&promote(), &cost(), &links(), None);
    for (code, body, says) in cases {
        let stub = SlackStub::start();
        stub.fail_next(200, &[], body);
        let err = slack::post_with(&bot(&stub), &message, &fast()).await.unwrap_err();
        assert_eq!(err.code(), Some(*code), "{err}");
        let text = err.to_string();
        for words in *says {
            assert!(text.contains(words), "`{code}` should say `{words}`: {text}");
        }
        assert_eq!(stub.received().len(), 1, "`{code}` is not worth a retry");
        assert_eq!(stub.violations(), Vec::<String>::new());
    }

    // invalid_auth as the stand-in gives it: a token Slack does not know.
    let stub = SlackStub::start();
    let target = SlackTarget::Bot {
        token: Secret::new("xoxb-not-the-right-one"),
        channel: "#promptloop".into(),
        api_url: stub.api_url(),
    };
    let err = slack::post_with(&target, &message, &fast()).await.unwrap_err();
    assert_eq!(err.code(), Some("invalid_auth"));
    assert!(err.to_string().contains("SLACK_BOT_TOKEN"), "{err}");
    assert!(stub.messages().is_empty());
}

#[tokio::test]
async fn webhook_errors_say_what_to_do() {
    let message = slack::message(&promote(), &cost(), &links(), None);
    let cases: &[(u16, &str, &str)] = &[
        (404, "no_service", "SLACK_WEBHOOK_URL"),
        (403, "invalid_token", "SLACK_WEBHOOK_URL"),
        (404, "channel_not_found", "SLACK_WEBHOOK_URL"),
        (410, "channel_is_archived", "archived"),
        (400, "invalid_payload", "bug in promptloop"),
    ];
    for (status, code, says) in cases {
        let stub = SlackStub::start();
        stub.fail_next(*status, &[("content-type", "text/html")], code);
        let err = slack::post_with(&webhook(&stub), &message, &fast()).await.unwrap_err();
        assert_eq!(err.code(), Some(*code), "{err}");
        assert!(err.to_string().contains(says), "{status} `{code}` should say `{says}`: {err}");
        assert_eq!(stub.received().len(), 1);
    }

    // A webhook URL Slack does not know, as the stand-in answers it.
    let stub = SlackStub::start();
    let gone = stub.webhook_url().replace("/B00000000/", "/B99999999/");
    let err = slack::post_with(&SlackTarget::webhook(Secret::new(gone)), &message, &fast()).await.unwrap_err();
    assert_eq!(err.code(), Some("no_service"), "{err}");
}

#[tokio::test]
async fn secrets_never_appear_in_errors_logs_or_debug_output() {
    let stub = SlackStub::start();
    let token = stub.token();
    let secret_path = slack_stub::WEBHOOK_SECRET;
    let message = slack::message(&promote(), &cost(), &links(), None);

    let targets = [bot(&stub), webhook(&stub)];
    for target in &targets {
        let debug = format!("{target:?}");
        assert!(!debug.contains(token) && !debug.contains(secret_path), "{debug}");
        assert!(debug.contains("***"));
    }

    // Slack echoing the secrets back in its error bodies: 5xx through every try, a 4xx, a JSON error.
    let mut errors: Vec<SlackError> = Vec::new();
    for target in &targets {
        let echo = match target {
            SlackTarget::Bot { .. } => format!("upstream said: Authorization: Bearer {token}"),
            SlackTarget::Webhook { .. } => format!("upstream said: no hook at {}", stub.webhook_url()),
        };
        for _ in 0..3 {
            stub.fail_next(500, &[], &echo);
        }
        errors.push(slack::post_with(target, &message, &fast()).await.unwrap_err());
        stub.fail_next(418, &[], &echo);
        errors.push(slack::post_with(target, &message, &fast()).await.unwrap_err());
        stub.fail_next(200, &[], &json!({"ok": false, "error": "invalid_blocks", "errors": [echo]}).to_string());
        errors.push(slack::post_with(target, &message, &fast()).await.unwrap_err());
    }

    // A webhook nobody answers: the connection error names no path.
    let down = ClosingPort::start();
    let port = down.port();
    let unreachable = SlackTarget::webhook(Secret::new(format!(
        "http://127.0.0.1:{port}/services/T00000000/B00000000/{secret_path}"
    )));
    errors.push(slack::post_with(&unreachable, &message, &fast()).await.unwrap_err());
    let unreachable_bot = SlackTarget::Bot {
        token: Secret::new(token),
        channel: "#promptloop".into(),
        api_url: format!("http://127.0.0.1:{port}/api/"),
    };
    errors.push(slack::post_with(&unreachable_bot, &message, &fast()).await.unwrap_err());
    // A webhook URL that is no URL at all.
    errors.push(
        slack::post_with(
            &SlackTarget::webhook(Secret::new(format!("hooks.slack.com/{secret_path}"))),
            &message,
            &fast(),
        )
        .await
        .unwrap_err(),
    );

    for err in &errors {
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains(token), "the token leaked: {shown}");
            assert!(!shown.contains(secret_path), "the webhook path leaked: {shown}");
        }
    }
    // The faults are still told apart.
    assert!(matches!(errors[0], SlackError::Unavailable { .. }), "{:?}", errors[0]);
    assert!(matches!(errors[1], SlackError::Unexpected { .. }), "{:?}", errors[1]);
    assert!(errors[6].to_string().contains("3 times"), "{}", errors[6]);
    assert!(matches!(errors[8], SlackError::Target(_)), "{:?}", errors[8]);
}

#[tokio::test]
async fn the_stand_in_records_what_slack_would_refuse() {
    // Without this, an empty violations list would prove nothing.
    let stub = SlackStub::start();
    let client = reqwest::Client::new();
    let api = stub.api_url();
    let too_long_header = "h".repeat(151);
    let blocks = json!([
        {"type": "header", "text": {"type": "mrkdwn", "text": too_long_header}},
        {"type": "section"},
        {"type": "section", "fields": (0..11).map(|_| json!({"type": "mrkdwn", "text": "x"})).collect::<Vec<_>>()},
        {"type": "context", "elements": (0..11).map(|_| json!({"type": "mrkdwn", "text": "x"})).collect::<Vec<_>>()},
        {"type": "actions", "elements": [{"type": "button", "url": "https://x.test"}]},
        {"type": "banner"},
    ]);
    // No token, no channel, no text, an argument the method does not take.
    client
        .post(format!("{api}chat.postMessage"))
        .json(&json!({"blocks": blocks, "colour": "red"}))
        .send()
        .await
        .unwrap();
    // A form post whose blocks are not JSON, and a method Slack does not have.
    client
        .post(format!("{api}chat.postMessage"))
        .header("authorization", format!("Bearer {}", stub.token()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("channel=%23x&text=hi&blocks=not+json")
        .send()
        .await
        .unwrap();
    client.post(format!("{api}chat.postMesage")).json(&json!({})).send().await.unwrap();
    let violations = stub.violations().join("\n");
    for expected in [
        "no token",
        "required argument `channel`",
        "no top-level `text`",
        "`colour` is not in the method's description",
        "blocks[0].text is not a text object of type [\"plain_text\"]",
        "blocks[0].text.text has 151 characters, over 150",
        "blocks[1]: a section needs `text` or `fields`",
        "blocks[2].fields has 11 items",
        "blocks[3].elements has 11 items",
        "blocks[4].elements[0]: a button needs `text`",
        "blocks[5] has the unknown type `banner`",
        "`blocks` is not a JSON array",
        "`chat.postMesage` with POST is not a method",
    ] {
        assert!(violations.contains(expected), "expected `{expected}` among:\n{violations}");
    }
    assert!(stub.messages().iter().all(|m| m["text"] == "hi"));
}

#[test]
fn a_hold_with_no_candidate_shows_no_candidate_score() {
    // Nothing beat production on dev: no candidate was scored on test, so no delta is shown.
    let headline = Headline {
        candidate: 0.460,
        delta: 0.0,
        low: 0.0,
        high: 0.0,
        mcnemar_p: None,
        reasons: vec![
            "no better program found: of 7 candidates tried, the best on dev (`covering-2x1`, 0.383) does not beat production's 0.511".into(),
        ],
        no_candidate: true,
        ..hold()
    };
    let message = slack::message(&headline, &cost(), &links(), None);
    assert!(slack_stub::block_kit_violations(&to_json(&message)).is_empty());
    let text = to_text(&message);
    assert!(text.contains("0.460 → no candidate"), "{text}");
    assert!(!text.contains("+0.000"), "{text}");
    insta::assert_snapshot!(text);
}
