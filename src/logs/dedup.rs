//! Deduplication: exact duplicates (same normalized text, placeholders
//! included) and near duplicates (MinHash over character shingles, indexed by
//! LSH bands), within a batch and against the existing dataset. A record close
//! to a member on the other side of the test boundary is a leak: a near copy of
//! a test example must never reach train or dev, nor the other way round.
//!
//! Everything is deterministic: the permutations come from a fixed seed and the
//! shingle hash is xxh3, so a text has the same signature on every machine.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use serde_json::{Map, Value};
use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

use crate::config::DedupConfig;
use crate::dataset::Split;

/// Lower case, Unicode-aware; runs of punctuation and whitespace collapse to
/// one space; trimmed. Anonymizer placeholders (`<EMAIL_1>`, `<ORDER_ID_2>`)
/// are kept verbatim as tokens of their own, so they stay distinct from the
/// words `email 1`.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // Start of the current word in `text`, while inside one.
    let mut word_start: Option<usize> = None;
    let mut rest = text.char_indices().peekable();
    while let Some((at, c)) = rest.next() {
        if c.is_alphanumeric() {
            word_start.get_or_insert(at);
            continue;
        }
        if let Some(start) = word_start.take() {
            push_token(&mut out, &text[start..at], true);
        }
        if c == '<'
            && let Some(len) = placeholder_len(&text[at..])
        {
            push_token(&mut out, &text[at..at + len], false);
            // Skip the rest of the placeholder (its first char is consumed).
            while rest.peek().is_some_and(|&(next, _)| next < at + len) {
                rest.next();
            }
        }
    }
    if let Some(start) = word_start {
        push_token(&mut out, &text[start..], true);
    }
    out
}

fn push_token(out: &mut String, token: &str, lower: bool) {
    if !out.is_empty() {
        out.push(' ');
    }
    if !lower {
        out.push_str(token);
    } else if token.is_ascii() {
        out.extend(token.chars().map(|c| c.to_ascii_lowercase()));
    } else {
        // Whole-token lowering so context rules (final sigma) apply.
        out.push_str(&token.to_lowercase());
    }
}

/// Length in bytes of the placeholder `<NAME_N>` at the start of `text`
/// (NAME: upper case ASCII letters, digits and `_`, starting with a letter;
/// N: digits), if there is one.
fn placeholder_len(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    if bytes.first() != Some(&b'<') || !bytes.get(1).is_some_and(u8::is_ascii_uppercase) {
        return None;
    }
    let close = bytes.iter().take(80).position(|&b| b == b'>')?;
    let inner = &bytes[1..close];
    if !inner.iter().all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') {
        return None;
    }
    let underscore = inner.iter().rposition(|&b| b == b'_')?;
    let number = &inner[underscore + 1..];
    (underscore > 0 && !number.is_empty() && number.iter().all(u8::is_ascii_digit)).then_some(close + 1)
}

/// The text a record is compared by: its input values in key order (sorted by
/// name, so field order in a log line does not matter; strings as is, other
/// values as compact JSON), joined by newlines, normalized.
pub fn comparable_text(inputs: &Map<String, Value>) -> String {
    let mut keys: Vec<&String> = inputs.keys().collect();
    keys.sort();
    let mut joined = String::new();
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            joined.push('\n');
        }
        match &inputs[key] {
            Value::String(s) => joined.push_str(s),
            other => joined.push_str(&other.to_string()),
        }
    }
    normalize(&joined)
}

/// Exact-duplicate key of a comparable text: its xxh3-128 hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentKey(pub u128);

impl fmt::Display for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

pub fn content_key(comparable: &str) -> ContentKey {
    ContentKey(xxh3_128(comparable.as_bytes()))
}

const MERSENNE_61: u64 = (1 << 61) - 1;
/// Seed of the permutation parameters; changing it changes every signature.
const PERMUTATION_SEED: u64 = 0x7072_6f6d_7074_6c70;

/// MinHash over the character shingles of a comparable text: each of
/// `num_perm` slots holds the minimum of `(a·h + b) mod (2^61 − 1)`, cut to 32
/// bits, over the shingles' 64-bit xxh3 hashes `h`.
#[derive(Debug, Clone)]
pub struct MinHasher {
    /// (a, b) per permutation, a in [1, p), b in [0, p).
    permutations: Vec<(u64, u64)>,
    shingle: usize,
}

/// One MinHash signature: `num_perm` 32-bit slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinHashSignature(Vec<u32>);

impl MinHashSignature {
    pub fn slots(&self) -> &[u32] {
        &self.0
    }
}

impl MinHasher {
    pub fn new(config: &DedupConfig) -> Self {
        let mut state = PERMUTATION_SEED;
        let permutations = (0..config.num_perm)
            .map(|_| {
                let a = 1 + splitmix64(&mut state) % (MERSENNE_61 - 1);
                let b = splitmix64(&mut state) % MERSENNE_61;
                (a, b)
            })
            .collect();
        Self { permutations, shingle: config.shingle.max(1) }
    }

    pub fn signature(&self, comparable: &str) -> MinHashSignature {
        // Shingle i spans from the i-th char to the (i + shingle)-th (or the
        // end); slicing the text by char offsets avoids allocating shingles.
        let ends = comparable.char_indices().map(|(at, _)| at).skip(self.shingle).chain([comparable.len()]);
        let starts = comparable.char_indices().map(|(at, _)| at);
        let mut hashes: Vec<u64> = starts.zip(ends).map(|(start, end)| shingle_hash(&comparable[start..end])).collect();
        if hashes.is_empty() {
            // Shorter than one shingle (or empty): the whole text is the shingle.
            hashes.push(shingle_hash(comparable));
        }
        // One permutation at a time over all shingles keeps the running
        // minimum in a register.
        let slots = self
            .permutations
            .iter()
            .map(|&(a, b)| hashes.iter().map(|&h| permute(a, b, h)).min().unwrap_or(u32::MAX))
            .collect();
        MinHashSignature(slots)
    }
}

fn shingle_hash(shingle: &str) -> u64 {
    let h = xxh3_64(shingle.as_bytes());
    let h = (h & MERSENNE_61) + (h >> 61);
    if h >= MERSENNE_61 { h - MERSENNE_61 } else { h }
}

/// `((a·h + b) mod (2^61 − 1))` cut to its low 32 bits, for a, b, h below 2^61.
#[inline]
fn permute(a: u64, b: u64, h: u64) -> u32 {
    let product = a as u128 * h as u128;
    let (low, high) = (product as u64, (product >> 64) as u64);
    // 2^64 ≡ 2^3 (mod 2^61 − 1); high < 2^58, so every term fits and the sum is below 2^63.
    let folded = (low & MERSENNE_61) + (low >> 61) + (high << 3) + b;
    let folded = (folded & MERSENNE_61) + (folded >> 61);
    (if folded >= MERSENNE_61 { folded - MERSENNE_61 } else { folded }) as u32
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Estimated Jaccard similarity: the share of equal slots.
pub fn similarity(a: &MinHashSignature, b: &MinHashSignature) -> f64 {
    slot_similarity(&a.0, &b.0)
}

fn slot_similarity(a: &[u32], b: &[u32]) -> f64 {
    assert_eq!(a.len(), b.len(), "MinHash signatures of different num_perm cannot be compared");
    if a.is_empty() {
        return 0.0;
    }
    let equal = a.iter().zip(b).filter(|(x, y)| x == y).count();
    equal as f64 / a.len() as f64
}

/// LSH bands and rows for `threshold` the way datasketch chooses them: the
/// (b, r) with b·r ≤ num_perm minimizing the equally weighted integrals of the
/// false-positive probability below the threshold and the false-negative
/// probability above it.
pub fn lsh_bands_rows(threshold: f64, num_perm: usize) -> (usize, usize) {
    let mut best = (1, num_perm.max(1));
    let mut best_error = f64::INFINITY;
    for bands in 1..=num_perm {
        for rows in 1..=num_perm / bands {
            let (b, r) = (bands as f64, rows as f64);
            let collide = |s: f64| 1.0 - (1.0 - s.powf(r)).powf(b);
            let false_positive = integrate(collide, 0.0, threshold);
            let false_negative = integrate(|s| 1.0 - collide(s), threshold, 1.0);
            let error = 0.5 * false_positive + 0.5 * false_negative;
            if error < best_error {
                best_error = error;
                best = (bands, rows);
            }
        }
    }
    best
}

/// Composite 5-point Gauss–Legendre quadrature; the integrands are smooth
/// polynomials, so 64 pieces are far below the choice's sensitivity.
fn integrate(f: impl Fn(f64) -> f64, from: f64, to: f64) -> f64 {
    const NODES: [f64; 5] =
        [0.0, -0.538_469_310_105_683_1, 0.538_469_310_105_683_1, -0.906_179_845_938_664, 0.906_179_845_938_664];
    const WEIGHTS: [f64; 5] = [
        0.568_888_888_888_888_9,
        0.478_628_670_499_366_5,
        0.478_628_670_499_366_5,
        0.236_926_885_056_189_1,
        0.236_926_885_056_189_1,
    ];
    const PIECES: usize = 64;
    let width = (to - from) / PIECES as f64;
    let mut sum = 0.0;
    for piece in 0..PIECES {
        let mid = from + (piece as f64 + 0.5) * width;
        for (node, weight) in NODES.iter().zip(WEIGHTS) {
            sum += weight * f(mid + 0.5 * width * node);
        }
    }
    sum * 0.5 * width
}

/// What admitting a candidate would mean.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Unique,
    /// Same content key as a member.
    Exact {
        of: String,
    },
    /// Estimated Jaccard similarity at or above `threshold` to a member (the most similar one).
    Near {
        of: String,
        similarity: f64,
    },
    /// Between `leak_threshold` and `threshold` similar to a member on the other
    /// side of the test boundary (candidate train/dev vs member test, or
    /// candidate test vs member train/dev). Inbox candidates are never leaks.
    Leak {
        of: String,
        similarity: f64,
    },
}

/// Hashes that are already uniform 64-bit values go into the maps as they are.
#[derive(Default)]
struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxh3_64(bytes);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64 ^ (n >> 64) as u64;
    }
}

type PassThroughMap<K, V> = HashMap<K, V, BuildHasherDefault<PassThroughHasher>>;

const NO_MEMBER: u32 = u32::MAX;

/// The dataset's and this batch's admitted members, indexed by LSH for
/// `min(threshold, leak_threshold)` so one lookup answers both the
/// near-duplicate and the leak question; every candidate the bands yield is
/// then scored on its full signature.
pub struct Deduplicator {
    threshold: f64,
    leak_threshold: f64,
    num_perm: usize,
    bands: usize,
    rows: usize,
    ids: Vec<String>,
    splits: Vec<Option<Split>>,
    /// Members' signatures back to back, `num_perm` slots each.
    slots: Vec<u32>,
    exact: PassThroughMap<ContentKey, u32>,
    /// Per band: band hash → the latest member with it; `chain` links each
    /// member to the previous one with the same band hash (no Vec per bucket).
    band_heads: Vec<PassThroughMap<u64, u32>>,
    /// `chain[member * bands + band]`: the previous member in that bucket.
    chain: Vec<u32>,
}

impl Deduplicator {
    pub fn new(config: &DedupConfig) -> Self {
        let index_threshold = config.threshold.min(config.leak_threshold);
        let (bands, rows) = lsh_bands_rows(index_threshold, config.num_perm);
        Self {
            threshold: config.threshold,
            leak_threshold: config.leak_threshold,
            num_perm: config.num_perm,
            bands,
            rows,
            ids: Vec::new(),
            splits: Vec::new(),
            slots: Vec::new(),
            exact: PassThroughMap::default(),
            band_heads: (0..bands).map(|_| PassThroughMap::default()).collect(),
            chain: Vec::new(),
        }
    }

    /// The LSH layout in use: (bands, rows per band).
    pub fn bands_rows(&self) -> (usize, usize) {
        (self.bands, self.rows)
    }

    /// Registers an existing member: a dataset example (split Some) or an inbox record (split None).
    pub fn add_existing(&mut self, id: &str, key: ContentKey, signature: MinHashSignature, split: Option<Split>) {
        self.insert(id, key, signature, split);
    }

    /// Adds a candidate the caller decided to keep, so later candidates are checked against it.
    pub fn admit(&mut self, id: &str, key: ContentKey, signature: MinHashSignature, split: Option<Split>) {
        self.insert(id, key, signature, split);
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// What admitting a candidate (that would land in `split`; None = inbox)
    /// would mean, against everything added or admitted so far: exact first,
    /// then the most similar member at or above `threshold`, then the most
    /// similar member across the test boundary at or above `leak_threshold`.
    pub fn check(&self, key: ContentKey, signature: &MinHashSignature, split: Option<Split>) -> Verdict {
        if let Some(&member) = self.exact.get(&key) {
            return Verdict::Exact { of: self.ids[member as usize].clone() };
        }
        self.assert_width(signature);
        let mut candidates = Vec::new();
        for band in 0..self.bands {
            let mut member =
                self.band_heads[band].get(&self.band_hash(&signature.0, band)).copied().unwrap_or(NO_MEMBER);
            while member != NO_MEMBER {
                candidates.push(member);
                member = self.chain[member as usize * self.bands + band];
            }
        }
        candidates.sort_unstable();
        candidates.dedup();

        let mut near: Option<(u32, f64)> = None;
        let mut leak: Option<(u32, f64)> = None;
        for member in candidates {
            let sim = slot_similarity(&signature.0, self.member_slots(member));
            // Candidates ascend, so a strict `>` keeps the earliest member on ties.
            if sim >= self.threshold && near.is_none_or(|(_, best)| sim > best) {
                near = Some((member, sim));
            }
            if sim >= self.leak_threshold
                && crosses_test_boundary(split, self.splits[member as usize])
                && leak.is_none_or(|(_, best)| sim > best)
            {
                leak = Some((member, sim));
            }
        }
        if let Some((member, similarity)) = near {
            return Verdict::Near { of: self.ids[member as usize].clone(), similarity };
        }
        if let Some((member, similarity)) = leak {
            return Verdict::Leak { of: self.ids[member as usize].clone(), similarity };
        }
        Verdict::Unique
    }

    fn insert(&mut self, id: &str, key: ContentKey, signature: MinHashSignature, split: Option<Split>) {
        self.assert_width(&signature);
        let member = u32::try_from(self.ids.len()).ok().filter(|&m| m != NO_MEMBER).expect("at most 2^32 - 1 members");
        self.exact.entry(key).or_insert(member);
        for band in 0..self.bands {
            let hash = self.band_hash(&signature.0, band);
            let previous = self.band_heads[band].insert(hash, member).unwrap_or(NO_MEMBER);
            self.chain.push(previous);
        }
        self.slots.extend_from_slice(&signature.0);
        self.ids.push(id.to_owned());
        self.splits.push(split);
    }

    fn member_slots(&self, member: u32) -> &[u32] {
        let start = member as usize * self.num_perm;
        &self.slots[start..start + self.num_perm]
    }

    fn band_hash(&self, slots: &[u32], band: usize) -> u64 {
        let mut h = (band as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for &slot in &slots[band * self.rows..(band + 1) * self.rows] {
            h = (h.rotate_left(23) ^ slot as u64).wrapping_mul(0x5851_f42d_4c95_7f2d);
        }
        // Final avalanche (murmur3's fmix64) so the map's low bits are mixed.
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }

    fn assert_width(&self, signature: &MinHashSignature) {
        assert_eq!(
            signature.0.len(),
            self.num_perm,
            "a MinHash signature of {} slots given to a deduplicator built for num_perm = {}; build both from the same [dedup] config",
            signature.0.len(),
            self.num_perm
        );
    }
}

fn crosses_test_boundary(candidate: Option<Split>, member: Option<Split>) -> bool {
    match (candidate, member) {
        (Some(c), Some(m)) => (c == Split::Test) != (m == Split::Test),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_shapes() {
        assert_eq!(placeholder_len("<EMAIL_1> rest"), Some(9));
        assert_eq!(placeholder_len("<ORDER_ID_12>"), Some(13));
        assert_eq!(placeholder_len("<EMAIL>"), None);
        assert_eq!(placeholder_len("<email_1>"), None);
        assert_eq!(placeholder_len("<_1>"), None);
        assert_eq!(placeholder_len("<EMAIL_1"), None);
        assert_eq!(placeholder_len("<A B_1>"), None);
    }

    #[test]
    fn permutation_matches_plain_modulo() {
        let p = MERSENNE_61;
        let edges = [0, 1, 2, 7, 8, p - 8, p - 2, p - 1, 1 << 60, 0x1234_5678_9abc_def0 % p];
        for a in edges.iter().map(|&x| x.max(1)) {
            for &b in &edges {
                for &h in &edges {
                    let expected = ((a as u128 * h as u128 + b as u128) % p as u128) as u64 as u32;
                    assert_eq!(permute(a, b, h), expected, "a = {a}, b = {b}, h = {h}");
                }
            }
        }
    }

    #[test]
    fn integration_is_accurate_on_a_steep_polynomial() {
        // ∫0^1 s^128 ds = 1/129
        let got = integrate(|s| s.powi(128), 0.0, 1.0);
        assert!((got - 1.0 / 129.0).abs() < 1e-9, "{got}");
    }

    #[test]
    fn band_chains_link_every_member_in_a_bucket() {
        let config = DedupConfig::default();
        let hasher = MinHasher::new(&config);
        let mut dedup = Deduplicator::new(&config);
        let text = normalize("the very same message, over and over");
        for i in 0..5 {
            // Distinct keys so the exact map does not short-circuit the check.
            dedup.add_existing(&format!("m{i}"), ContentKey(i), hasher.signature(&text), None);
        }
        let verdict = dedup.check(ContentKey(99), &hasher.signature(&text), None);
        assert_eq!(verdict, Verdict::Near { of: "m0".into(), similarity: 1.0 });
    }
}
