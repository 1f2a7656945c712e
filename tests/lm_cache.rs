//! The SQLite response cache, its keys, and the `Lm` handle in front of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use promptloop::lm::cache::{ResponseCache, request_key};
use promptloop::lm::{
    ChatMessage, LanguageModel, Lm, LmDescription, LmError, LmRequest, LmResponse, OutputTemplate, Role, Segment,
    TokenUsage,
};
use serde_json::json;

fn description() -> LmDescription {
    LmDescription {
        provider: "openai".into(),
        model: "test-model".into(),
        endpoint: Some("http://127.0.0.1:8081/v1".into()),
        constrained_decoding: false,
        response_format: Some("json_schema".into()),
    }
}

fn request() -> LmRequest {
    LmRequest::new(vec![ChatMessage::new(Role::System, "Be brief."), ChatMessage::new(Role::User, "2 + 2?")])
}

fn response(text: &str) -> LmResponse {
    LmResponse {
        text: text.into(),
        usage: TokenUsage { prompt_tokens: 10, completion_tokens: 2 },
        finish_reason: Some("stop".into()),
    }
}

#[test]
fn put_then_get() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ResponseCache::open(&dir.path().join("nested/dir/cache.sqlite")).unwrap();
    assert!(cache.is_empty());
    assert_eq!(cache.get("k1"), None);
    cache.put("k1", &response("four"));
    cache.put("k2", &LmResponse { text: "é ✓ \n\"quoted\"".into(), usage: TokenUsage::default(), finish_reason: None });
    assert_eq!(cache.get("k1"), Some(response("four")));
    assert_eq!(cache.get("k2").unwrap().text, "é ✓ \n\"quoted\"");
    assert_eq!(cache.len(), 2);
    // Replacing keeps one entry per key.
    cache.put("k1", &response("4"));
    assert_eq!(cache.get("k1").unwrap().text, "4");
    assert_eq!(cache.len(), 2);
}

#[test]
fn entries_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.sqlite");
    {
        let cache = ResponseCache::open(&path).unwrap();
        cache.put("kept", &response("still here"));
    }
    let cache = ResponseCache::open(&path).unwrap();
    assert_eq!(cache.get("kept"), Some(response("still here")));
    assert_eq!(cache.len(), 1);
}

#[test]
fn a_garbled_row_is_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.sqlite");
    let cache = ResponseCache::open(&path).unwrap();
    cache.put("good", &response("fine"));
    cache.put("bad", &response("about to be damaged"));
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let changed = conn.execute("UPDATE responses SET response = '{not json' WHERE key = 'bad'", []).unwrap();
        assert_eq!(changed, 1);
    }
    assert_eq!(cache.get("bad"), None);
    assert_eq!(cache.get("good"), Some(response("fine")));
    // The next put repairs it.
    cache.put("bad", &response("rewritten"));
    assert_eq!(cache.get("bad").unwrap().text, "rewritten");
}

#[test]
fn concurrent_writers_share_one_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(ResponseCache::open(&dir.path().join("cache.sqlite")).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    cache.put(&format!("{t}-{i}"), &response(&format!("{t}/{i}")));
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(cache.len(), 100);
    assert_eq!(cache.get("3-24").unwrap().text, "3/24");
}

#[test]
fn keys_are_hex_sha256_and_stable() {
    let key = request_key(&description(), &request());
    assert_eq!(key.len(), 64);
    assert!(key.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(key, request_key(&description(), &request().clone()));
}

#[test]
fn every_field_changes_the_key() {
    let base = request_key(&description(), &request());
    let variants: Vec<(&str, LmRequest)> = vec![
        ("messages", {
            let mut r = request();
            r.messages[1].content = "3 + 3?".into();
            r
        }),
        ("role", {
            let mut r = request();
            r.messages[0].role = Role::User;
            r
        }),
        ("temperature", LmRequest { temperature: 0.5, ..request() }),
        ("max_tokens", LmRequest { max_tokens: 17, ..request() }),
        ("stop", LmRequest { stop: vec!["\n".into()], ..request() }),
        ("json_schema", LmRequest { json_schema: Some(json!({"type": "object"})), ..request() }),
        (
            "template",
            LmRequest {
                template: Some(OutputTemplate { segments: vec![Segment::Literal { text: "Answer: ".into() }] }),
                ..request()
            },
        ),
        ("rollout", LmRequest { rollout: Some(1), ..request() }),
    ];
    let mut seen = std::collections::HashSet::from([base.clone()]);
    for (field, variant) in &variants {
        let key = request_key(&description(), variant);
        assert!(seen.insert(key), "changing {field} did not change the key");
    }
    let rollout_2 = request_key(&description(), &LmRequest { rollout: Some(2), ..request() });
    assert!(seen.insert(rollout_2), "rollouts 1 and 2 share a key");

    let descriptions = [
        LmDescription { provider: "embedded".into(), ..description() },
        LmDescription { model: "other-model".into(), ..description() },
        LmDescription { endpoint: None, ..description() },
        LmDescription { endpoint: Some("https://api.example.com/v1".into()), ..description() },
        LmDescription { constrained_decoding: true, ..description() },
        LmDescription { response_format: Some("json_object".into()), ..description() },
    ];
    for d in &descriptions {
        assert!(seen.insert(request_key(d, &request())), "description change {d:?} did not change the key");
    }
}

#[test]
fn schema_key_order_does_not_matter() {
    let a: serde_json::Value = serde_json::from_str(
        r#"{"type":"object","properties":{"answer":{"type":"string","enum":["a","b"]},"why":{"type":"string"}},"required":["answer"]}"#,
    )
    .unwrap();
    let b: serde_json::Value = serde_json::from_str(
        r#"{"required":["answer"],"properties":{"why":{"type":"string"},"answer":{"enum":["a","b"],"type":"string"}},"type":"object"}"#,
    )
    .unwrap();
    assert_ne!(a.to_string(), b.to_string(), "the two schemas should differ textually");
    let key_a = request_key(&description(), &LmRequest { json_schema: Some(a), ..request() });
    let key_b = request_key(&description(), &LmRequest { json_schema: Some(b), ..request() });
    assert_eq!(key_a, key_b);
    // Array order is meaningful, though.
    let c = json!({"type": "string", "enum": ["b", "a"]});
    let d = json!({"type": "string", "enum": ["a", "b"]});
    assert_ne!(
        request_key(&description(), &LmRequest { json_schema: Some(c), ..request() }),
        request_key(&description(), &LmRequest { json_schema: Some(d), ..request() })
    );
}

/// A model that counts its calls and answers with the call number.
struct CountingModel {
    calls: AtomicUsize,
}

#[async_trait]
impl LanguageModel for CountingModel {
    fn describe(&self) -> LmDescription {
        description()
    }

    async fn complete(&self, request: &LmRequest) -> Result<LmResponse, LmError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if request.messages.iter().any(|m| m.content == "fail") {
            return Err(LmError::Engine("refused".into()));
        }
        Ok(LmResponse {
            text: format!("reply {n}"),
            usage: TokenUsage { prompt_tokens: 7, completion_tokens: 3 },
            finish_reason: Some("stop".into()),
        })
    }
}

#[tokio::test]
async fn the_lm_handle_answers_repeats_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.sqlite");
    let model = Arc::new(CountingModel { calls: AtomicUsize::new(0) });
    let cache = Arc::new(ResponseCache::open(&path).unwrap());
    let lm = Lm::new(model.clone(), Some(cache.clone()), 2);

    let first = lm.complete(&request()).await.unwrap();
    assert!(!first.cache_hit);
    assert_eq!(first.response.text, "reply 1");
    let again = lm.complete(&request()).await.unwrap();
    assert!(again.cache_hit);
    assert_eq!(again.response, first.response);
    assert_eq!(model.calls.load(Ordering::SeqCst), 1);

    let other = lm.complete(&LmRequest { rollout: Some(1), ..request() }).await.unwrap();
    assert!(!other.cache_hit);
    assert_eq!(other.response.text, "reply 2");

    // Errors are not cached.
    let failing = LmRequest::new(vec![ChatMessage::new(Role::User, "fail")]);
    assert!(lm.complete(&failing).await.is_err());
    assert!(lm.complete(&failing).await.is_err());
    assert_eq!(model.calls.load(Ordering::SeqCst), 4);

    let usage = lm.usage();
    assert_eq!((usage.calls, usage.provider_calls, usage.cache_hits), (3, 2, 1));
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (21, 9));
    assert_eq!(cache.len(), 2);

    // A later run, a new handle on the same file: no model calls at all.
    drop(lm);
    drop(cache);
    let model = Arc::new(CountingModel { calls: AtomicUsize::new(0) });
    let lm = Lm::new(model.clone(), Some(Arc::new(ResponseCache::open(&path).unwrap())), 2);
    assert_eq!(lm.complete(&request()).await.unwrap().response.text, "reply 1");
    assert_eq!(model.calls.load(Ordering::SeqCst), 0);
    assert_eq!(lm.usage().cache_hits, 1);
}

#[tokio::test]
async fn without_a_cache_every_call_reaches_the_model() {
    let model = Arc::new(CountingModel { calls: AtomicUsize::new(0) });
    let lm = Lm::new(model.clone(), None, 1);
    lm.complete(&request()).await.unwrap();
    lm.complete(&request()).await.unwrap();
    assert_eq!(model.calls.load(Ordering::SeqCst), 2);
    assert_eq!(lm.usage().cache_hits, 0);
}

#[test]
fn the_file_is_in_wal_mode_and_a_failed_write_is_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.sqlite");
    let cache = ResponseCache::open(&path).unwrap();
    cache.put("k", &response("x"));
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0)).unwrap();
    assert_eq!(mode.to_ascii_lowercase(), "wal");
    // Pull the table out from under the cache: writes and reads fail softly.
    conn.execute_batch("DROP TABLE responses").unwrap();
    cache.put("k2", &response("y"));
    assert_eq!(cache.get("k"), None);
    assert_eq!(cache.len(), 0);
}
