//! Deduplication: normalization, exact keys, MinHash similarity, the LSH
//! layout, and the near-duplicate and test-leak verdicts.

use std::collections::HashSet;

use promptloop::config::DedupConfig;
use promptloop::dataset::Split;
use promptloop::logs::dedup::{
    ContentKey, Deduplicator, MinHashSignature, MinHasher, Verdict, comparable_text, content_key, lsh_bands_rows,
    normalize, similarity,
};
use serde_json::{Map, Value, json};

const LONG: &str = "I ordered a replacement card two weeks ago and it still has not arrived, can you tell me \
                    where it is and whether I should cancel it and order another one";

fn config(threshold: f64, leak_threshold: f64) -> DedupConfig {
    DedupConfig { threshold, leak_threshold, ..DedupConfig::default() }
}

/// Exact Jaccard similarity of the character 5-shingle sets of two normalized texts.
fn true_jaccard(a: &str, b: &str) -> f64 {
    fn shingles(text: &str) -> HashSet<String> {
        let chars: Vec<char> = text.chars().collect();
        if chars.len() < 5 {
            return HashSet::from([text.to_owned()]);
        }
        chars.windows(5).map(|w| w.iter().collect()).collect()
    }
    let (a, b) = (shingles(a), shingles(b));
    a.intersection(&b).count() as f64 / a.union(&b).count() as f64
}

struct Fixture {
    hasher: MinHasher,
    dedup: Deduplicator,
}

impl Fixture {
    fn new(config: &DedupConfig) -> Self {
        Self { hasher: MinHasher::new(config), dedup: Deduplicator::new(config) }
    }

    fn parts(&self, text: &str) -> (ContentKey, MinHashSignature) {
        let comparable = normalize(text);
        (content_key(&comparable), self.hasher.signature(&comparable))
    }

    fn add(&mut self, id: &str, text: &str, split: Option<Split>) {
        let (key, signature) = self.parts(text);
        self.dedup.add_existing(id, key, signature, split);
    }

    fn check(&self, text: &str, split: Option<Split>) -> Verdict {
        let (key, signature) = self.parts(text);
        self.dedup.check(key, &signature, split)
    }

    fn estimate(&self, a: &str, b: &str) -> f64 {
        similarity(&self.parts(a).1, &self.parts(b).1)
    }
}

#[test]
fn normalize_lowercases_collapses_punctuation_and_trims() {
    assert_eq!(normalize("  Where is MY card?!  "), "where is my card");
    assert_eq!(normalize("card---arrived...\n\tyesterday"), "card arrived yesterday");
    assert_eq!(normalize("I can't pay €50"), "i can t pay 50");
    assert_eq!(normalize("ÜBER Straße ΟΔΟΣ"), "über straße οδος");
    assert_eq!(normalize("?!..."), "");
    assert_eq!(normalize(""), "");
}

#[test]
fn normalize_keeps_placeholders_as_their_own_tokens() {
    assert_eq!(normalize("Mail me at <EMAIL_1>, thanks!"), "mail me at <EMAIL_1> thanks");
    assert_eq!(normalize("order<ORDER_ID_12>arrived"), "order <ORDER_ID_12> arrived");
    // Not placeholders: lower case, no number, unclosed.
    assert_eq!(normalize("<email_1> <EMAIL> <EMAIL_1"), "email 1 email email 1");
    assert_ne!(normalize("write to <EMAIL_1>"), normalize("write to email 1"));
}

#[test]
fn exact_duplicates_after_normalization_and_placeholders() {
    let key = |text: &str| content_key(&normalize(text));
    assert_eq!(key("Where is my card?"), key("  where IS my card!!! "));
    assert_eq!(key("My email is <EMAIL_1>, help"), key("my email is <EMAIL_1> help"));
    assert_ne!(key("My email is <EMAIL_1>"), key("My email is <EMAIL_2>"));
    assert_ne!(key("Where is my card?"), key("Where is my cart?"));
    assert_eq!(key("x").to_string().len(), 32);

    let mut fixture = Fixture::new(&DedupConfig::default());
    fixture.add("a", "Where is my card?", Some(Split::Train));
    assert_eq!(fixture.check("WHERE is my card", Some(Split::Test)), Verdict::Exact { of: "a".into() });
}

#[test]
fn comparable_text_orders_inputs_by_key_and_renders_non_strings_as_json() {
    let mut forward = Map::new();
    forward.insert("question".into(), json!("Where's my CARD?"));
    forward.insert("account".into(), json!({"tier": "gold", "age": 3}));
    forward.insert("attempts".into(), json!(2));
    let mut backward = Map::new();
    for (k, v) in forward.iter().rev() {
        backward.insert(k.clone(), v.clone());
    }
    assert_eq!(comparable_text(&forward), comparable_text(&backward));
    // account (JSON), attempts, question, in that order.
    assert_eq!(comparable_text(&forward), "tier gold age 3 2 where s my card");
    assert_eq!(comparable_text(&Map::<String, Value>::new()), "");
}

#[test]
fn a_word_changed_in_a_long_sentence_is_a_near_duplicate() {
    let mut fixture = Fixture::new(&DedupConfig::default());
    fixture.add("orig", LONG, Some(Split::Train));
    fixture.add("other", "How do I change the PIN of my debit card at an ATM?", Some(Split::Train));
    let changed = LONG.replace("two weeks", "three weeks");
    assert!(true_jaccard(&normalize(LONG), &normalize(&changed)) >= 0.8);
    match fixture.check(&changed, Some(Split::Train)) {
        Verdict::Near { of, similarity } => {
            assert_eq!(of, "orig");
            assert!(similarity >= 0.8, "{similarity}");
        }
        other => panic!("expected a near duplicate, got {other:?}"),
    }
    let unrelated = "Is there a fee for exchanging US dollars into euros when I travel abroad?";
    assert_eq!(fixture.check(unrelated, Some(Split::Train)), Verdict::Unique);
}

#[test]
fn near_picks_the_most_similar_member() {
    let mut fixture = Fixture::new(&DedupConfig::default());
    let close = LONG.replace("another one", "another");
    let closer = LONG.replace("can you", "could you");
    fixture.add("close", &close, None);
    fixture.add("closer", &closer, None);
    let (a, b) = (fixture.estimate(LONG, &close), fixture.estimate(LONG, &closer));
    assert!(a >= 0.8 && b >= 0.8 && a != b, "{a} {b}");
    let best = if a > b { "close" } else { "closer" };
    match fixture.check(LONG, None) {
        Verdict::Near { of, similarity } => {
            assert_eq!(of, best);
            assert_eq!(similarity, a.max(b));
        }
        other => panic!("expected a near duplicate, got {other:?}"),
    }
}

/// A text whose similarity to LONG lies between 0.6 and 0.8 (about 0.7).
fn mid_similar() -> String {
    LONG.replace("replacement card two weeks ago", "card last week")
}

#[test]
fn the_near_threshold_is_configurable() {
    let mid = mid_similar();
    let jaccard = true_jaccard(&normalize(LONG), &normalize(&mid));
    assert!((0.62..0.78).contains(&jaccard), "true Jaccard {jaccard}");

    let mut strict = Fixture::new(&config(0.8, 0.8));
    strict.add("orig", LONG, None);
    let estimate = strict.estimate(LONG, &mid);
    assert!((0.6..0.8).contains(&estimate), "estimate {estimate}");
    assert_eq!(strict.check(&mid, None), Verdict::Unique);

    let mut loose = Fixture::new(&config(0.6, 0.6));
    loose.add("orig", LONG, None);
    assert_eq!(loose.check(&mid, None), Verdict::Near { of: "orig".into(), similarity: estimate });
}

#[test]
fn lsh_layout_is_datasketchs_choice() {
    // datasketch 2.0.0 `_optimal_param(t, 128, 0.5, 0.5)` for these thresholds.
    assert_eq!(lsh_bands_rows(0.5, 128), (25, 5));
    assert_eq!(lsh_bands_rows(0.6, 128), (18, 7));
    assert_eq!(lsh_bands_rows(0.7, 128), (14, 9));
    assert_eq!(lsh_bands_rows(0.8, 128), (9, 13));
    assert_eq!(lsh_bands_rows(0.9, 128), (5, 25));
    // The index serves both questions, so it is built for the lower threshold.
    assert_eq!(Deduplicator::new(&config(0.8, 0.6)).bands_rows(), (18, 7));
    assert_eq!(Deduplicator::new(&config(0.8, 0.8)).bands_rows(), (9, 13));
}

#[test]
fn a_near_copy_across_the_test_boundary_is_a_leak_both_ways() {
    let mid = mid_similar();
    let mut fixture = Fixture::new(&DedupConfig::default());
    fixture.add("test-ex", LONG, Some(Split::Test));
    let estimate = fixture.estimate(LONG, &mid);
    assert!((0.6..0.8).contains(&estimate), "estimate {estimate}");
    let leak = Verdict::Leak { of: "test-ex".into(), similarity: estimate };
    assert_eq!(fixture.check(&mid, Some(Split::Train)), leak);
    assert_eq!(fixture.check(&mid, Some(Split::Dev)), leak);
    assert_eq!(fixture.check(&mid, Some(Split::Test)), Verdict::Unique);
    assert_eq!(fixture.check(&mid, None), Verdict::Unique, "inbox records are never leaks");

    let mut fixture = Fixture::new(&DedupConfig::default());
    fixture.add("train-ex", LONG, Some(Split::Train));
    fixture.add("dev-ex", &LONG.replace("can you tell me", "tell me please"), Some(Split::Dev));
    match fixture.check(&mid, Some(Split::Test)) {
        Verdict::Leak { of, similarity } => {
            assert!(of == "train-ex" || of == "dev-ex");
            assert!((0.6..0.8).contains(&similarity));
        }
        other => panic!("expected a leak, got {other:?}"),
    }
    assert_eq!(fixture.check(&mid, Some(Split::Train)), Verdict::Unique);
    assert_eq!(fixture.check(&mid, None), Verdict::Unique);

    // An inbox member has no side.
    let mut fixture = Fixture::new(&DedupConfig::default());
    fixture.add("inbox", LONG, None);
    assert_eq!(fixture.check(&mid, Some(Split::Test)), Verdict::Unique);
}

#[test]
fn near_and_exact_come_before_leak() {
    let mut fixture = Fixture::new(&DedupConfig::default());
    fixture.add("test-ex", LONG, Some(Split::Test));
    let changed = LONG.replace("two weeks", "three weeks");
    assert!(matches!(fixture.check(&changed, Some(Split::Train)), Verdict::Near { of, .. } if of == "test-ex"));
    assert_eq!(fixture.check(LONG, Some(Split::Train)), Verdict::Exact { of: "test-ex".into() });
}

#[test]
fn admitted_candidates_are_checked_against() {
    let config = DedupConfig::default();
    let mut fixture = Fixture::new(&config);
    assert!(fixture.dedup.is_empty());
    let (key, signature) = fixture.parts(LONG);
    assert_eq!(fixture.dedup.check(key, &signature, None), Verdict::Unique);
    fixture.dedup.admit("first", key, signature, Some(Split::Test));
    assert_eq!(fixture.dedup.len(), 1);
    assert_eq!(fixture.check(LONG, None), Verdict::Exact { of: "first".into() });
    assert!(matches!(fixture.check(&mid_similar(), Some(Split::Dev)), Verdict::Leak { of, .. } if of == "first"));
}

#[test]
fn signatures_are_pinned() {
    let hasher = MinHasher::new(&DedupConfig::default());
    let signature = hasher.signature("where is my card");
    assert_eq!(signature.slots().len(), 128);
    assert_eq!(&signature.slots()[..4], PINNED_FIRST_SLOTS);
    assert_eq!(content_key("where is my card").to_string(), PINNED_KEY);
    // Shorter than a shingle: one shingle, the whole text; different texts differ.
    let short = hasher.signature("abc");
    assert_ne!(short, hasher.signature("abd"));
    assert_eq!(short, MinHasher::new(&DedupConfig::default()).signature("abc"));
    assert_eq!(hasher.signature(""), hasher.signature(""));
}

// Also produced by the independent Python implementation in bench/dedup/reference_minhash.py.
const PINNED_FIRST_SLOTS: &[u32] = &[139242850, 90525900, 337565762, 119824275];
const PINNED_KEY: &str = "64a34fd225d1e68461a8bbb16161fc7d";

#[test]
fn estimated_similarity_tracks_true_jaccard() {
    let hasher = MinHasher::new(&DedupConfig::default());
    let bases = [
        LONG,
        "I would like to know why my top up by bank transfer has not shown up in my account yet",
        "The exchange rate applied to my card payment abroad looks wrong, please check it for me",
        "Someone made a payment with my card that I do not recognize and I want my money back",
    ];
    let edits: [fn(&str) -> String; 6] = [
        |t| t.replacen("my", "the", 1),
        |t| t.replace(' ', "  ").to_uppercase(),
        |t| t.split(' ').filter(|w| w.len() != 2).collect::<Vec<_>>().join(" "),
        |t| t.split(' ').rev().collect::<Vec<_>>().join(" "),
        |t| t[..t.len() / 2].to_owned(),
        |t| format!("{t} and also tell me about the fees for this"),
    ];
    let mut errors = Vec::new();
    for (i, a) in bases.iter().enumerate() {
        let mut others: Vec<String> = edits.iter().map(|edit| edit(a)).collect();
        others.extend(bases[i + 1..].iter().map(|b| b.to_string()));
        for b in others {
            let (a, b) = (normalize(a), normalize(&b));
            let truth = true_jaccard(&a, &b);
            let estimate = similarity(&hasher.signature(&a), &hasher.signature(&b));
            errors.push((estimate - truth).abs());
            // 128 slots: the standard error is at most 0.045; 0.15 is over 3 of them.
            assert!((estimate - truth).abs() < 0.15, "estimate {estimate} vs true {truth}");
        }
    }
    let mean = errors.iter().sum::<f64>() / errors.len() as f64;
    assert!(mean < 0.05, "mean absolute error {mean}");
}
