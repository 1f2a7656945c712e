//! Anonymization before anything is stored.
//!
//! [`Anonymizer::find`] locates PII in a text: emails, phone numbers, card
//! numbers (Luhn), IBANs (mod-97, or mistyped but plainly an account number),
//! IPv4/IPv6 addresses, US SSNs, URLs carrying credentials or tokens, API keys,
//! JWTs and other secrets, and the pipeline's own patterns.
//! [`Anonymizer::anonymize_record`] walks everything of a [`LogRecord`] that a
//! pull can write — every string, object key and number, in arrays and nested
//! objects — and replaces every finding with a typed placeholder (`<EMAIL_1>`)
//! that is the same for the same value everywhere in the record; an id holding
//! PII or a secret becomes a stable hash ([`anonymous_id`]).
//!
//! Detectors run in precedence order and a later one never takes text an
//! earlier one claimed: the pipeline's patterns first (the user asked for them
//! by name), then URLs with credentials (they contain `user@host`), secrets,
//! emails, IBANs, cards, SSNs, IP addresses and phone numbers last (the most
//! permissive shape). Most log messages hold no PII, so each detector is gated
//! by byte counts taken in one pass over the text.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::sync::Arc;

use anyhow::{Context, bail};
use regex::Regex;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::CustomPattern;
use crate::logs::LogRecord;

/// The type of a finding; its label names the placeholder (`<PHONE_2>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PiiKind {
    Email,
    Phone,
    Card,
    Iban,
    Ip,
    Ssn,
    /// A URL with `user:pass@` or a secret-looking query parameter; the whole URL is replaced.
    Url,
    /// API keys, JWTs, bearer tokens, `secret: ...` assignments.
    Secret,
    /// A person's name where the writer gives it: "my name is Jane Doe",
    /// "Mr Smith", "Regards, Jane". Names elsewhere need NER and are not found.
    Name,
    /// A pattern from the pipeline's `[anonymize]` table, by its name.
    Custom(Arc<str>),
}

impl PiiKind {
    pub fn label(&self) -> &str {
        match self {
            PiiKind::Email => "EMAIL",
            PiiKind::Phone => "PHONE",
            PiiKind::Card => "CARD",
            PiiKind::Iban => "IBAN",
            PiiKind::Ip => "IP",
            PiiKind::Ssn => "SSN",
            PiiKind::Url => "URL",
            PiiKind::Secret => "SECRET",
            PiiKind::Name => "NAME",
            PiiKind::Custom(name) => name,
        }
    }
}

/// One PII span: `range` is in bytes of the text given to [`Anonymizer::find`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: PiiKind,
    pub range: Range<usize>,
}

/// Replacements made, by type label. Iterates and serializes in label order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct PiiCounts(BTreeMap<String, u64>);

impl PiiCounts {
    pub fn add(&mut self, other: &PiiCounts) {
        for (label, n) in &other.0 {
            *self.0.entry(label.clone()).or_default() += n;
        }
    }

    pub fn record(&mut self, label: &str, n: u64) {
        match self.0.get_mut(label) {
            Some(count) => *count += n,
            None => {
                self.0.insert(label.to_string(), n);
            }
        }
    }

    pub fn get(&self, label: &str) -> u64 {
        self.0.get(label).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(label, n)| (label.as_str(), *n))
    }
}

struct CustomDetector {
    kind: PiiKind,
    regex: Regex,
}

/// Built-in detectors plus the pipeline's patterns, compiled once.
pub struct Anonymizer {
    custom: Vec<CustomDetector>,
    url: Regex,
    /// Whole-match secrets: key formats with a recognizable prefix, JWTs.
    secret_tokens: Regex,
    /// Secrets after a keyword (`Bearer x`, `api_key=x`): group 1 is the value.
    secret_values: Regex,
    email: Regex,
    iban: Regex,
    card: Regex,
    ssn: Regex,
    ipv4: Regex,
    ipv6: Regex,
    placeholder: Regex,
    /// A cue ("my name is", "Mr", "Regards,") and then group 1: one to three capitalized words.
    name: Regex,
}

/// Byte counts that decide which detectors can possibly match.
struct Gate {
    digits: usize,
    dots: usize,
    colons: usize,
    at: bool,
    upper: bool,
    lt: bool,
}

impl Gate {
    fn of(text: &str) -> Gate {
        let mut gate = Gate { digits: 0, dots: 0, colons: 0, at: false, upper: false, lt: false };
        for &b in text.as_bytes() {
            match b {
                b'0'..=b'9' => gate.digits += 1,
                b'.' => gate.dots += 1,
                b':' => gate.colons += 1,
                b'@' => gate.at = true,
                b'<' => gate.lt = true,
                b'A'..=b'Z' => gate.upper = true,
                _ => {}
            }
        }
        gate
    }
}

impl Anonymizer {
    /// Built-in detectors plus the pipeline's patterns.
    pub fn new(custom: &[CustomPattern]) -> anyhow::Result<Self> {
        let mut compiled = Vec::with_capacity(custom.len());
        for pattern in custom {
            if pattern.name.is_empty() {
                bail!("[anonymize] pattern with regex {:?} has no name: give it an upper-case name", pattern.regex);
            }
            let regex = Regex::new(&pattern.regex).with_context(|| {
                format!("[anonymize] pattern `{}`: the regex does not compile; fix its `regex`", pattern.name)
            })?;
            compiled.push(CustomDetector { kind: PiiKind::Custom(Arc::from(pattern.name.as_str())), regex });
        }
        let built = |pattern: &str| Regex::new(pattern).expect("built-in PII pattern compiles");
        Ok(Anonymizer {
            custom: compiled,
            url: built(
                r"(?i)(?-u:\b)(?:https?|ftps?|wss?|sftp|s3|postgres(?:ql)?|mysql|mongodb(?:\+srv)?|redis|amqps?|smtps?)://[^\s<>]+",
            ),
            secret_tokens: built(concat!(
                r"(?-u:\b)(?:",
                r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}",
                r"|gh[pousr]_[A-Za-z0-9]{30,255}",
                r"|github_pat_[A-Za-z0-9_]{22,255}",
                r"|xox[baprse]-[A-Za-z0-9-]{10,}",
                r"|sk-(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_-]{20,}",
                r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}",
                r"|AIza[0-9A-Za-z_-]{35}",
                r"|glpat-[0-9A-Za-z_-]{20,}",
                r"|hf_[A-Za-z0-9]{30,}",
                r"|npm_[A-Za-z0-9]{36}",
                r"|SG\.[A-Za-z0-9_-]{16,32}\.[A-Za-z0-9_-]{16,64}",
                r"|whsec_[A-Za-z0-9+/=]{24,}",
                r"|xapp-[0-9]-[A-Za-z0-9-]{20,}",
                r"|shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}",
                // A JWT (three segments) or JWE (five) is known by its header,
                // `{"` in base64url; the payload may be anything.
                r"|eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*){1,3}",
                // No closing boundary: these alphabets end in `-`, and the classes are greedy anyway.
                r")",
            )),
            secret_values: built(concat!(
                r"(?i)(?-u:\b)(?:",
                r"bearer\s+",
                r#"|(?:api[_-]?key|api[_-]?secret|client[_-]?secret|secret[_-]?key|secret|access[_-]?token|auth[_-]?token|refresh[_-]?token|private[_-]?key|password|passwd|pwd|token)["']?\s*[:=]\s*["']?"#,
                r")([A-Za-z0-9_\-.~+/=]{6,})",
            )),
            email: built(
                r"(?i)(?-u:\b)[a-z0-9][a-z0-9._%+-]*@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24}(?-u:\b)",
            ),
            iban: built(
                r"(?-u:\b)[A-Z]{2}[0-9]{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)(?-u:\b)",
            ),
            card: built(r"(?-u:\b)[0-9](?:[ -]?[0-9]){11,18}(?-u:\b)"),
            ssn: built(r"(?-u:\b)[0-9]{3}[- ]?[0-9]{2}[- ]?[0-9]{4}(?-u:\b)"),
            ipv4: built(r"(?-u:\b)[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?-u:\b)"),
            ipv6: built(r"(?i)[0-9a-f:]*:[0-9a-f]*:[0-9a-f:]*(?:[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})?"),
            placeholder: built(r"<[A-Z][A-Z0-9_]*_[0-9]+>"),
            name: built(concat!(
                r"(?:(?i:\bmy name is|\bmy name's|\bname:|\bi'm called|\bi am called|\bregards,|\bsincerely,|\bcheers,)",
                r"|\b(?:Mr|Mrs|Ms|Miss|Dr)\.?)\s+",
                // Words like Ana, O'Neill, McDonald, Smith-Jones.
                r"(\p{Lu}\p{Ll}*(?:['’-]?\p{Lu}?\p{Ll}+)*(?: \p{Lu}\p{Ll}*(?:['’-]?\p{Lu}?\p{Ll}+)*){0,2})",
            )),
        })
    }

    /// Non-overlapping PII spans in `text`, in order.
    pub fn find(&self, text: &str) -> Vec<Finding> {
        let gate = Gate::of(text);
        let mut found = Spans::default();
        // Placeholders from an earlier pass are never detected again.
        if gate.lt && gate.upper {
            for m in self.placeholder.find_iter(text) {
                found.reserve(m.range());
            }
        }
        for custom in &self.custom {
            for m in custom.regex.find_iter(text) {
                if !m.is_empty() {
                    found.claim(&custom.kind, m.range());
                }
            }
        }
        if gate.colons > 0 && text.contains("://") {
            for m in self.url.find_iter(text) {
                let url = trim_url(m.as_str());
                if url_carries_secret(url) {
                    found.claim(&PiiKind::Url, m.start()..m.start() + url.len());
                }
            }
        }
        self.find_secrets(text, &mut found);
        if gate.upper {
            for caps in self.name.captures_iter(text) {
                let name = caps.get(1).expect("group 1 always takes part");
                found.claim(&PiiKind::Name, name.range());
            }
        }
        if gate.at {
            for m in self.email.find_iter(text) {
                found.claim(&PiiKind::Email, m.range());
            }
        }
        if gate.digits >= 8 && gate.upper {
            for m in self.iban.find_iter(text) {
                if let Some(len) = valid_iban_prefix(m.as_str()) {
                    found.claim(&PiiKind::Iban, m.start()..m.start() + len);
                }
            }
        }
        if gate.digits >= 12 {
            for m in self.card.find_iter(text) {
                // The regex takes the leftmost run, which can start inside an
                // amount before the card (`£154.80 4111 ...`): try the run from
                // each later group too.
                let starts = std::iter::once(m.start())
                    .chain(m.as_str().match_indices([' ', '-']).map(|(at, _)| m.start() + at + 1));
                for start in starts {
                    let digits = text[start..m.end()].bytes().filter(u8::is_ascii_digit).count();
                    if digits < 12 {
                        break;
                    }
                    if is_card(text, start..m.end()) {
                        found.claim(&PiiKind::Card, start..m.end());
                        break;
                    }
                }
            }
        }
        if gate.digits >= 9 {
            for m in self.ssn.find_iter(text) {
                if is_ssn(text, m.range()) {
                    found.claim(&PiiKind::Ssn, m.range());
                }
            }
        }
        if gate.digits >= 4 && gate.dots >= 3 {
            for m in self.ipv4.find_iter(text) {
                if is_ipv4(text, m.range()) {
                    found.claim(&PiiKind::Ip, m.range());
                }
            }
        }
        if gate.colons >= 2 {
            for m in self.ipv6.find_iter(text) {
                if let Some(range) = ipv6_in(text, m.range()) {
                    found.claim(&PiiKind::Ip, range);
                }
            }
        }
        if gate.digits >= 7 {
            for range in phone_candidates(text) {
                if is_phone(text, range.clone()) {
                    found.claim(&PiiKind::Phone, range);
                }
            }
        }
        found.into_findings()
    }

    fn find_secrets(&self, text: &str, found: &mut Spans) {
        for caps in self.secret_values.captures_iter(text) {
            let value = caps.get(1).expect("group 1 always takes part");
            if looks_like_secret_value(value.as_str()) {
                found.claim(&PiiKind::Secret, value.range());
            }
        }
        for m in self.secret_tokens.find_iter(text) {
            // A JWT's empty last segment allows a dot; a sentence's full stop is not part of it.
            let end = m.start() + m.as_str().trim_end_matches('.').len();
            found.claim(&PiiKind::Secret, m.start()..end);
        }
    }

    /// Replaces PII everywhere in the record that pull can write: every
    /// string, object key and number of the inputs, output, reference and
    /// metadata (nested objects and arrays included), the feedback comment and
    /// the history, with typed placeholders numbered by first appearance in the
    /// record; and the id, which is replaced whole by [`anonymous_id`] when
    /// anything is found in it. Adds the replacements to `counts`. The
    /// timestamp is left as it is.
    pub fn anonymize_record(&self, record: &mut LogRecord, counts: &mut PiiCounts) {
        let mut names = Placeholders::default();
        let id_findings = self.find(&record.id);
        if !id_findings.is_empty() {
            for finding in &id_findings {
                counts.record(finding.kind.label(), 1);
            }
            record.id = anonymous_id(&record.id, &record.timestamp);
        }
        self.anonymize_map(&mut record.inputs, &mut names, counts);
        if let Some(output) = &mut record.output {
            self.anonymize_map(output, &mut names, counts);
        }
        if let Some(reference) = &mut record.reference {
            self.anonymize_map(reference, &mut names, counts);
        }
        if let Some(comment) = record.feedback.as_mut().and_then(|feedback| feedback.comment.as_mut()) {
            self.anonymize_string(comment, "", &mut names, counts);
        }
        for message in &mut record.history {
            self.anonymize_string(message, "", &mut names, counts);
        }
        self.anonymize_map(&mut record.metadata, &mut names, counts);
    }

    /// Replaces PII in one text, with placeholders numbered within this text alone.
    pub fn anonymize_text(&self, text: &str, counts: &mut PiiCounts) -> String {
        let mut names = Placeholders::default();
        let mut out = text.to_string();
        self.anonymize_string(&mut out, "", &mut names, counts);
        out
    }

    /// Keys and values in order; a key that holds PII is replaced like any
    /// string (the map is rebuilt only then, keeping the order of entries).
    fn anonymize_map(&self, map: &mut Map<String, Value>, names: &mut Placeholders, counts: &mut PiiCounts) {
        if !map.keys().any(|key| !self.find(key).is_empty()) {
            for (key, value) in map.iter_mut() {
                self.anonymize_value(value, key, names, counts);
            }
            return;
        }
        for (key, mut value) in std::mem::take(map) {
            let mut new_key = key.clone();
            self.anonymize_string(&mut new_key, "", names, counts);
            self.anonymize_value(&mut value, &key, names, counts);
            // Two keys can become one placeholder (the same email written in
            // two cases): both values are kept.
            let mut unique = new_key.clone();
            let mut n = 1;
            while map.contains_key(&unique) {
                n += 1;
                unique = format!("{new_key}_{n}");
            }
            map.insert(unique, value);
        }
    }

    /// `context` is the key of the nearest enclosing object: a phone or card
    /// number logged alone (`"phone": 4155550123`, `"cards": ["4111..."]`) is
    /// read with its words, as a writer would have written "phone: 4155550123",
    /// and `"order_id": "4155550123"` as "order id: 4155550123".
    fn anonymize_value(&self, value: &mut Value, context: &str, names: &mut Placeholders, counts: &mut PiiCounts) {
        match value {
            Value::String(text) => self.anonymize_string(text, context, names, counts),
            Value::Array(items) => {
                for item in items {
                    self.anonymize_value(item, context, names, counts);
                }
            }
            Value::Object(map) => self.anonymize_map(map, names, counts),
            Value::Number(number) => {
                // Only whole numbers of 7+ digits can be a phone, card or SSN;
                // the rest (latencies, token counts, amounts) cost no
                // formatting. Floats and negative numbers count by their
                // digits: 4111111111111111.0 is still a card. A JSON number is
                // a phone only under a key that says so: ids, counts and sizes
                // are numbers too.
                let Some(digits) = integral_digits(number) else { return };
                let words = key_words(context);
                let text = format!("{words}: {digits}");
                let start = text.len() - digits.len();
                let phone_key = PHONE_WORDS.iter().any(|word| contains_word(&words, word));
                if let Some(finding) = self
                    .find(&text)
                    .into_iter()
                    .find(|f| f.range == (start..text.len()) && (f.kind != PiiKind::Phone || phone_key))
                {
                    counts.record(finding.kind.label(), 1);
                    *value = Value::String(names.name(&finding.kind, &digits));
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
    }

    /// A short value made of digits and separators is read after its key
    /// (`context`), like a number; anything else is read alone.
    fn anonymize_string(&self, text: &mut String, context: &str, names: &mut Placeholders, counts: &mut PiiCounts) {
        let findings = if !context.is_empty() && is_bare_number(text) {
            let framed = format!("{}: {text}", key_words(context));
            let start = framed.len() - text.len();
            self.find(&framed)
                .into_iter()
                .filter(|f| f.range.start >= start)
                .map(|f| Finding { kind: f.kind, range: f.range.start - start..f.range.end - start })
                .collect()
        } else {
            self.find(text)
        };
        if findings.is_empty() {
            return;
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for finding in &findings {
            out.push_str(&text[last..finding.range.start]);
            let value = &text[finding.range.clone()];
            out.push_str(&names.name(&finding.kind, value));
            counts.record(finding.kind.label(), 1);
            last = finding.range.end;
        }
        out.push_str(&text[last..]);
        *text = out;
    }
}

/// What replaces a record id in which PII or a secret was found: `anon-` and
/// 16 hex digits of SHA-256 over the record's timestamp and id. The same log
/// line always gives the same id, so repeats still collapse into one source and
/// whoever holds the logs can find the line again; the timestamp keeps someone
/// who only guesses an email address from confirming it by hashing it.
pub fn anonymous_id(id: &str, timestamp: &chrono::DateTime<chrono::Utc>) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(timestamp.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true).as_bytes());
    hasher.update([0]);
    hasher.update(id.as_bytes());
    let digest = hasher.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("anon-{hex}")
}

/// A key as words: `order_id`, `orderId` and `order-id` are "order id".
fn key_words(key: &str) -> String {
    let mut words = String::with_capacity(key.len() + 4);
    let mut previous_lower = false;
    for c in key.chars() {
        if matches!(c, '_' | '-' | '.') {
            words.push(' ');
            previous_lower = false;
            continue;
        }
        if c.is_uppercase() && previous_lower {
            words.push(' ');
        }
        previous_lower = c.is_lowercase();
        words.extend(c.to_lowercase());
    }
    words
}

/// The digits of a JSON number that is a whole number of 7 to 20 digits, sign
/// and `.0` dropped.
fn integral_digits(number: &serde_json::Number) -> Option<String> {
    let digits = if let Some(n) = number.as_u64() {
        n.to_string()
    } else if let Some(n) = number.as_i64() {
        n.unsigned_abs().to_string()
    } else {
        let n = number.as_f64()?.abs();
        if !n.is_finite() || n.fract() != 0.0 || n >= 1e20 {
            return None;
        }
        format!("{n:.0}")
    };
    (digits.len() >= 7).then_some(digits)
}

/// `4155550123`, `+44 20 7946 0958`, `4111-1111-1111-1111`: up to 40 bytes of
/// digits (at least 7), spaces, `+ - . ( ) /`.
fn is_bare_number(text: &str) -> bool {
    text.len() <= 40
        && text.bytes().filter(u8::is_ascii_digit).count() >= 7
        && text.bytes().all(|b| b.is_ascii_digit() || matches!(b, b' ' | b'+' | b'-' | b'.' | b'(' | b')' | b'/'))
}

/// The placeholder of each distinct value seen so far in one record.
#[derive(Default)]
struct Placeholders {
    by_value: HashMap<(PiiKind, String), String>,
    next: HashMap<PiiKind, usize>,
}

impl Placeholders {
    fn name(&mut self, kind: &PiiKind, value: &str) -> String {
        let key = (kind.clone(), normalize(kind, value));
        if let Some(name) = self.by_value.get(&key) {
            return name.clone();
        }
        let n = self.next.entry(kind.clone()).or_insert(0);
        *n += 1;
        let name = format!("<{}_{}>", kind.label(), n);
        self.by_value.insert(key, name.clone());
        name
    }
}

/// The same value written differently gets the same placeholder: case for
/// emails and IBANs, separators for numbers, notation for IP addresses.
fn normalize(kind: &PiiKind, value: &str) -> String {
    match kind {
        PiiKind::Email => value.to_ascii_lowercase(),
        PiiKind::Phone => {
            let digits: String = value.chars().filter(char::is_ascii_digit).collect();
            if value.trim_start().starts_with('+') { format!("+{digits}") } else { digits }
        }
        PiiKind::Card | PiiKind::Ssn => value.chars().filter(char::is_ascii_digit).collect(),
        PiiKind::Iban => value.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_uppercase()).collect(),
        PiiKind::Ip => match value.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => value.to_ascii_lowercase(),
        },
        PiiKind::Name => value.to_lowercase(),
        PiiKind::Url | PiiKind::Secret | PiiKind::Custom(_) => value.to_string(),
    }
}

/// Accepted spans, kept sorted; a later detector cannot take claimed text.
#[derive(Default)]
struct Spans {
    spans: Vec<(Range<usize>, Option<PiiKind>)>,
}

impl Spans {
    fn overlaps(&self, range: &Range<usize>) -> bool {
        self.spans.iter().any(|(taken, _)| taken.start < range.end && range.start < taken.end)
    }

    fn claim(&mut self, kind: &PiiKind, range: Range<usize>) {
        if range.is_empty() || self.overlaps(&range) {
            return;
        }
        self.spans.push((range, Some(kind.clone())));
    }

    fn reserve(&mut self, range: Range<usize>) {
        self.spans.push((range, None));
    }

    fn into_findings(self) -> Vec<Finding> {
        let mut findings: Vec<Finding> =
            self.spans.into_iter().filter_map(|(range, kind)| Some(Finding { kind: kind?, range })).collect();
        findings.sort_by_key(|finding| finding.range.start);
        findings
    }
}

fn byte_before(text: &str, at: usize) -> Option<u8> {
    at.checked_sub(1).map(|i| text.as_bytes()[i])
}

fn byte_at(text: &str, at: usize) -> Option<u8> {
    text.as_bytes().get(at).copied()
}

/// The lower-cased text up to `window` bytes before `at`, for context words.
fn context_before(text: &str, at: usize, window: usize) -> String {
    let mut start = at.saturating_sub(window);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..at].to_lowercase()
}

// ---------- URL ----------

/// Sentence punctuation after a URL is not part of it.
fn trim_url(url: &str) -> &str {
    let mut end = url.len();
    while end > 0 {
        let last = url.as_bytes()[end - 1];
        let unbalanced_paren = last == b')' && url[..end].matches('(').count() < url[..end].matches(')').count();
        if matches!(last, b'.' | b',' | b';' | b':' | b'!' | b'?' | b'\'' | b'"' | b']' | b'>') || unbalanced_paren {
            end -= 1;
        } else {
            break;
        }
    }
    &url[..end]
}

/// Query or fragment parameter names that carry a secret.
const SECRET_PARAMS: &[&str] = &[
    "token",
    "accesstoken",
    "refreshtoken",
    "idtoken",
    "authtoken",
    "sessiontoken",
    "apikey",
    "key",
    "secret",
    "clientsecret",
    "sig",
    "signature",
    "password",
    "pass",
    "passwd",
    "pwd",
    "auth",
    "code",
    "session",
    "sessionid",
    "sid",
    "jwt",
    "xamzsignature",
    "xamzcredential",
    "xamzsecuritytoken",
    "accesskey",
    "secretkey",
    "privatekey",
];

fn url_carries_secret(url: &str) -> bool {
    let Some(scheme_end) = url.find("://") else { return false };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    if let Some(at) = authority.rfind('@') {
        // `user:pass@host`, or a lone token as the user (`https://TOKEN@github.com`).
        let userinfo = &authority[..at];
        if userinfo.contains(':') || userinfo.len() >= 20 {
            return true;
        }
    }
    let after = &rest[authority_end..];
    let Some(params_start) = after.find(['?', '#']) else { return false };
    after[params_start + 1..].split(['&', ';', '#', '?']).any(|pair| {
        let Some((name, value)) = pair.split_once('=') else { return false };
        if value.is_empty() {
            return false;
        }
        let name: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect();
        SECRET_PARAMS.contains(&name.as_str())
            || ["token", "secret", "password", "signature", "apikey"].iter().any(|suffix| name.ends_with(suffix))
    })
}

// ---------- secrets ----------

/// After `password:` or `Bearer`, a word of prose is not a secret: ask for a
/// digit or symbol, or the length of a random token.
fn looks_like_secret_value(value: &str) -> bool {
    let value = value.trim_end_matches(['.', ',']);
    let has_digit = value.bytes().any(|b| b.is_ascii_digit());
    let has_symbol = value.bytes().any(|b| matches!(b, b'_' | b'-' | b'+' | b'/' | b'=' | b'~'));
    let mixed_case = value.bytes().any(|b| b.is_ascii_uppercase()) && value.bytes().any(|b| b.is_ascii_lowercase());
    value.len() >= 6 && (has_digit || value.len() >= 16 || (has_symbol && mixed_case))
}

// ---------- IBAN ----------

/// Lengths by country (SWIFT IBAN registry).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BR", 29),
    ("BY", 28),
    ("CH", 21),
    ("CR", 22),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DK", 18),
    ("DO", 28),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GI", 23),
    ("GL", 18),
    ("GR", 27),
    ("GT", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IQ", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LC", 32),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("LY", 25),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MK", 19),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("NL", 18),
    ("NO", 15),
    ("PK", 24),
    ("PL", 28),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("RS", 22),
    ("SA", 24),
    ("SC", 31),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("ST", 25),
    ("SV", 28),
    ("TL", 23),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VA", 22),
    ("VG", 24),
    ("XK", 20),
];

/// The byte length of the valid IBAN at the start of `candidate`, if any. A
/// grouped IBAN can run into a short upper-case word after it, so the
/// candidate is cut to its country's length when that is known.
fn valid_iban_prefix(candidate: &str) -> Option<usize> {
    let expected = IBAN_LENGTHS.iter().find(|(country, _)| candidate.starts_with(country)).map(|&(_, len)| len);
    let mut compact = Vec::with_capacity(34);
    let mut end = 0;
    for (i, b) in candidate.bytes().enumerate() {
        if b == b' ' {
            continue;
        }
        compact.push(b);
        end = i + 1;
        if Some(compact.len()) == expected {
            break;
        }
    }
    match expected {
        Some(len) if compact.len() != len => return plausible_account_number(candidate, len),
        // The cut must fall between groups, not inside a word.
        Some(_) if candidate.as_bytes().get(end).is_some_and(|b| *b != b' ') => return None,
        None if !(15..=34).contains(&compact.len()) => return None,
        _ => {}
    }
    if iban_checksum_ok(&compact) {
        return Some(end);
    }
    expected.and_then(|len| plausible_account_number(candidate, len))
}

/// An IBAN with a digit lost or mistyped (`GB29 NWBK 6016 1331 9268 1`, 21
/// characters, or a check that fails) is still an account number to a reader:
/// a known country, its check digits, a length at most two short of the
/// country's, and a body mostly of digits. Returns the byte length taken,
/// without a trailing group of letters (a word after a grouped number).
fn plausible_account_number(candidate: &str, expected: usize) -> Option<usize> {
    let mut end = candidate.len();
    if let Some(space) = candidate.rfind(' ')
        && candidate[space + 1..].bytes().all(|b| b.is_ascii_uppercase())
    {
        end = space;
    }
    let compact: Vec<u8> = candidate[..end].bytes().filter(|b| *b != b' ').collect();
    if compact.len() > expected || compact.len() + 2 < expected {
        return None;
    }
    let body = &compact[4..];
    let digits = body.iter().filter(|b| b.is_ascii_digit()).count();
    (digits >= 8 && body.len() - digits <= 6).then_some(end)
}

fn iban_checksum_ok(compact: &[u8]) -> bool {
    let rotated = compact[4..].iter().chain(&compact[..4]);
    let mut remainder: u32 = 0;
    for &b in rotated {
        let value = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        remainder = if value >= 10 { (remainder * 100 + value) % 97 } else { (remainder * 10 + value) % 97 };
    }
    remainder == 1
}

// ---------- card ----------

fn is_card(text: &str, range: Range<usize>) -> bool {
    let candidate = &text[range.clone()];
    // Part of a longer dotted or signed number (a decimal, a phone with +).
    // A card logged as a float (`4111111111111111.0`) is still a card; sixteen
    // digits before a fraction that is not zero are an amount.
    let fraction_after = matches!(byte_at(text, range.end), Some(b'.' | b','))
        && byte_at(text, range.end + 1).is_some_and(|b| b.is_ascii_digit());
    let zero_fraction =
        fraction_after && text[range.end + 1..].bytes().take_while(u8::is_ascii_digit).all(|b| b == b'0');
    if matches!(byte_before(text, range.start), Some(b'+' | b'.' | b',' | b'#')) || (fraction_after && !zero_fraction) {
        return false;
    }
    let digits: Vec<u8> = candidate.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect();
    let separators: Vec<u8> = candidate.bytes().filter(|b| !b.is_ascii_digit()).collect();
    if separators.windows(2).any(|pair| pair[0] != pair[1]) {
        return false;
    }
    // Issuer ranges start with 2-6 (Mastercard, Amex/Diners/JCB, Visa, Mastercard/Maestro, Discover/UnionPay),
    // 1800 (15-digit JCB) or 0604 (12-digit Maestro).
    let maestro_0604 = digits.len() == 12 && digits.starts_with(&[0, 6, 0, 4]);
    if !((2..=6).contains(&digits[0]) || (digits.len() == 15 && digits.starts_with(&[1, 8, 0, 0])) || maestro_0604) {
        return false;
    }
    // 12 digits only for Maestro (5x/6x/0604), and not where the text calls it
    // a reference without calling it a card ("card no. 5038..." is a card).
    if digits.len() == 12
        && (!(matches!(digits[0], 5 | 6) || maestro_0604)
            || (follows_reference_word(text, range.start) && !follows_card_word(text, range.start)))
    {
        return false;
    }
    luhn_ok(&digits)
}

fn follows_card_word(text: &str, start: usize) -> bool {
    let before = context_before(text, start, 24);
    ["card", "maestro", "visa", "mastercard", "karte", "carte", "tarjeta", "carta", "cartão", "kaart", "karta", "kort"]
        .iter()
        .any(|word| before.contains(word))
}

fn luhn_ok(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

// ---------- SSN ----------

fn is_ssn(text: &str, range: Range<usize>) -> bool {
    let candidate = &text[range.clone()];
    if matches!(byte_before(text, range.start), Some(b'-' | b'+' | b'.' | b'#'))
        || matches!(byte_at(text, range.end), Some(b'-'))
    {
        return false;
    }
    let separators: Vec<u8> = candidate.bytes().filter(|b| !b.is_ascii_digit()).collect();
    let digits: Vec<u8> = candidate.bytes().filter(u8::is_ascii_digit).collect();
    match separators.as_slice() {
        [b'-', b'-'] => {}
        // Spaced or bare nine digits are an SSN only where the text says so.
        [b' ', b' '] | [] => {
            let before = context_before(text, range.start, 32);
            if !["ssn", "social security", "ss#", "ss no"].iter().any(|word| before.contains(word)) {
                return false;
            }
        }
        _ => return false,
    }
    let number = |part: &[u8]| part.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    let (area, group, serial) = (number(&digits[..3]), number(&digits[3..5]), number(&digits[5..]));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

// ---------- IP ----------

/// Words right before a dotted number that make it a version, not an address.
const VERSION_WORDS: &[&str] = &[
    "version", "ver", "v", "build", "release", "firmware", "patch", "android", "ios", "os", "app", "updated", "update",
    "upgraded",
];

fn follows_version_word(text: &str, start: usize) -> bool {
    let before = context_before(text, start, 24);
    before.split_whitespace().last().is_some_and(|word| {
        let word = word.trim_matches(|c: char| !c.is_alphanumeric());
        VERSION_WORDS.contains(&word)
    })
}

fn is_ipv4(text: &str, range: Range<usize>) -> bool {
    if follows_version_word(text, range.start) {
        return false;
    }
    // A longer dotted run is a version or an OID, not an address.
    if byte_before(text, range.start) == Some(b'.')
        && byte_before(text, range.start - 1).is_some_and(|b| b.is_ascii_digit())
    {
        return false;
    }
    if byte_at(text, range.end) == Some(b'.') && byte_at(text, range.end + 1).is_some_and(|b| b.is_ascii_digit()) {
        return false;
    }
    let candidate = &text[range];
    // Ipv4Addr rejects octets over 255 and leading zeros.
    candidate.parse::<Ipv4Addr>().is_ok()
}

fn ipv6_in(text: &str, mut range: Range<usize>) -> Option<Range<usize>> {
    let before = byte_before(text, range.start);
    if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    if byte_at(text, range.end).is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    // A colon ending a sentence ("at fe80::1:") is not part of the address.
    while text[range.clone()].ends_with(':') && !text[range.clone()].ends_with("::") {
        range.end -= 1;
    }
    let candidate = &text[range.clone()];
    let address: Ipv6Addr = candidate.parse().ok()?;
    let groups_written = candidate.split(':').filter(|group| !group.is_empty()).count();
    // `::`, `::1` and clock times are not worth a placeholder; times do not parse anyway.
    if address.is_loopback() || address.is_unspecified() || groups_written < 2 {
        return None;
    }
    Some(range)
}

// ---------- phone ----------

/// Runs of digits joined by single separators (` - . /`), with an optional
/// leading `+`, parentheses around an area code, `(0)` after a country code,
/// and an extension (`x123`, `ext. 123`).
fn phone_candidates(text: &str) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let starts = b.is_ascii_digit()
            || ((b == b'+' || b == b'(') && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
            || (b == b'+' && bytes.get(i + 1) == Some(&b' ') && bytes.get(i + 2).is_some_and(u8::is_ascii_digit));
        if !starts || (i > 0 && (bytes[i - 1].is_ascii_alphanumeric())) {
            i += 1;
            continue;
        }
        let start = i;
        let mut j = i + 1;
        let mut end = if b.is_ascii_digit() { j } else { start };
        let mut open_paren = b == b'(';
        while j < bytes.len() {
            let c = bytes[j];
            if c.is_ascii_digit() {
                j += 1;
                end = j;
            } else if c == b'(' && !open_paren && next_is_digit_after(bytes, j + 1) {
                open_paren = true;
                j += 1;
            } else if c == b')' && open_paren {
                open_paren = false;
                j += 1;
                if matches!(bytes.get(j), Some(b' ' | b'-' | b'.')) && next_is_digit_after(bytes, j + 1) {
                    j += 1;
                }
                if !bytes.get(j).is_some_and(|b| b.is_ascii_digit() || *b == b'(') {
                    break;
                }
            } else if matches!(c, b' ' | b'-' | b'.' | b'/')
                && (bytes.get(j + 1).is_some_and(u8::is_ascii_digit) || (c == b' ' && bytes.get(j + 1) == Some(&b'(')))
            {
                j += 1;
            } else {
                break;
            }
        }
        if end > start {
            end = extension_end(bytes, end);
            out.push(start..end);
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

fn next_is_digit_after(bytes: &[u8], at: usize) -> bool {
    bytes.get(at).is_some_and(u8::is_ascii_digit)
}

fn extension_end(bytes: &[u8], end: usize) -> usize {
    let rest = &bytes[end..];
    for marker in [&b"x"[..], b" x", b" ext. ", b" ext ", b" ext.", b"ext.", b"ext"] {
        if rest.len() > marker.len() && rest[..marker.len()].eq_ignore_ascii_case(marker) {
            let digits = rest[marker.len()..].iter().take_while(|b| b.is_ascii_digit()).count();
            let after = rest.get(marker.len() + digits);
            if (1..=6).contains(&digits) && !after.is_some_and(u8::is_ascii_alphanumeric) {
                return end + marker.len() + digits;
            }
        }
    }
    end
}

const PHONE_WORDS: &[&str] = &[
    "phone",
    "call",
    "tel",
    "mobile",
    "cell",
    "whatsapp",
    "sms",
    "fax",
    "text me",
    "ring",
    "landline",
    "dial",
    "reach me",
    "my number",
    "number is",
    "contact details",
];
/// Words right before a number that make it an identifier rather than a phone.
const REFERENCE_WORDS: &[&str] = &[
    "order",
    "invoice",
    "ref",
    "tracking",
    "transaction",
    "account",
    "acct",
    "booking",
    "ticket",
    "case",
    "id",
    "no.",
    "#",
    "parcel",
    "receipt",
    "policy",
    "serial",
    "iban",
    "reference",
    "sort code",
    "routing",
];

/// Looks only at the two words before the number: a reference word earlier in
/// the message ("my card ... call me on") says nothing about this number.
fn follows_reference_word(text: &str, start: usize) -> bool {
    let before = context_before(text, start, 24);
    let before = before.trim_end_matches([' ', ':', '-']);
    // A sentence that ended ("the wrong account number! 727 849 729") says nothing about this number.
    if before.ends_with(['!', '?'])
        || (before.ends_with('.') && before.split_whitespace().last().is_some_and(|word| word.len() > 5))
    {
        return false;
    }
    if REFERENCE_WORDS.iter().filter(|w| w.contains(' ')).any(|w| before.ends_with(w)) {
        return true;
    }
    // The word right before, or the one before that when the nearer one only
    // joins them ("order no. 123", "invoice number 123"): "receipt. It's 123" is not a reference.
    let mut words =
        before.split_whitespace().rev().map(|word| word.trim_matches(|c: char| !c.is_alphanumeric() && c != '#'));
    let is_reference = |word: &str| REFERENCE_WORDS.iter().any(|reference| word == reference.trim_end_matches('.'));
    match (words.next(), words.next()) {
        (Some(last), _) if is_reference(last) => true,
        (Some(last), Some(previous)) => {
            ["no", "nr", "number", "num", "is", "code", "#"].contains(&last) && is_reference(previous)
        }
        _ => false,
    }
}

/// `word` in `text` at the start of a word: "ring me" is a phone cue, "transferring" is not.
fn contains_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(at, _)| !text[..at].chars().next_back().is_some_and(char::is_alphanumeric))
}

fn is_phone(text: &str, range: Range<usize>) -> bool {
    let raw = &text[range.clone()];
    // The extension is validated with the number but does not count as its digits.
    let number = match raw.bytes().position(|b| b == b'x' || b == b'X' || b == b'e' || b == b'E') {
        Some(at) => raw[..at].trim_end(),
        None => raw,
    };
    let international = number.starts_with('+') || (number.starts_with("00") && !number.starts_with("000"));
    if (matches!(byte_before(text, range.start), Some(b'#' | b'$' | b'.' | b',' | b'-' | b'/' | b':'))
        && !glued_to_phone_word(text, range.start))
        || byte_at(text, range.end).is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        || contains_date(number)
        || (number.contains('.') && follows_version_word(text, range.start))
        || text[..range.start].trim_end().ends_with(['$', '£', '€', '¥', '#'])
        || matches!(byte_at(text, range.end), Some(b'%' | b'-' | b'/'))
        || (matches!(byte_at(text, range.end), Some(b'.' | b',' | b':'))
            && byte_at(text, range.end + 1).is_some_and(|b| b.is_ascii_digit()))
    {
        return false;
    }
    let groups: Vec<&str> = number.split(|c: char| !c.is_ascii_digit()).filter(|g| !g.is_empty()).collect();
    let digits: usize = groups.iter().map(|g| g.len()).sum();
    let separators: Vec<char> =
        number.trim_start_matches('+').chars().filter(|c| !c.is_ascii_digit() && *c != '(' && *c != ')').collect();
    let before = context_before(text, range.start, 28);
    let phone_context = PHONE_WORDS.iter().any(|word| contains_word(&before, word));
    // 3-2-4 with dashes is SSN-shaped: a valid one was taken already, an invalid one is not a phone.
    let ssn_shaped = groups.iter().map(|g| g.len()).eq([3, 2, 4]) && separators.iter().all(|&c| c == '-');
    if ssn_shaped || looks_like_date(&groups, &separators) || looks_like_dotted_numbers(&groups, &separators) {
        return false;
    }
    // 154.8756, 1234,56: one separator that is a decimal point.
    if groups.len() == 2 && matches!(separators.as_slice(), ['.'] | [',']) {
        return false;
    }
    if international {
        return (8..=15).contains(&digits);
    }
    if !(7..=15).contains(&digits) || (digits > 12 && !phone_context) {
        return false;
    }
    if !phone_context && follows_reference_word(text, range.start) {
        return false;
    }
    // 1 234 567 or 123 456 789 euros is an amount; 732 126 587 alone is a
    // phone number (Spain, Poland, Portugal write nine digits 3-3-3).
    if looks_like_thousands(&groups, &separators)
        && !phone_context
        && (groups[0].len() < 3 || digits < 9 || separators[0] != ' ' || near_currency(text, range.clone()))
    {
        return false;
    }
    let has_paren = number.contains('(');
    if groups.len() == 1 && !has_paren {
        // A bare run of digits: a national number with its trunk 0, ten digits
        // as North America and Italy write them (never starting with 0 or 1:
        // that is where counts and Unix times are; nor a round number), or one
        // the text calls a phone.
        let run = groups[0];
        return phone_context
            || (run.starts_with('0') && !run.starts_with("00") && (9..=12).contains(&digits))
            || (digits == 10 && !run.starts_with(['0', '1']) && !run.ends_with("0000") && !near_currency(text, range));
    }
    // Grouped national numbers: the first group is an area code or trunk prefix.
    groups[0].len() <= 5 || phone_context
}

/// `Tel:0301234567`, `mob.980-564-9525`: a phone word and a colon or dot, no space.
fn glued_to_phone_word(text: &str, start: usize) -> bool {
    if !matches!(byte_before(text, start), Some(b':' | b'.')) {
        return false;
    }
    let before = context_before(text, start - 1, 16);
    let word = before.rsplit(|c: char| !c.is_alphabetic()).next().unwrap_or_default();
    ["tel", "phone", "mobile", "mob", "ph", "cell", "fax", "whatsapp", "sms", "telefon", "telefono", "téléphone", "tlf"]
        .contains(&word)
}

/// A date inside a longer run: `9.9.6 (8/12/2026)`, `12/03/2024 10`.
fn contains_date(number: &str) -> bool {
    let bytes = number.as_bytes();
    let digits_at = |at: usize| bytes[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    let value = |at: usize, len: usize| number[at..at + len].parse::<u32>().unwrap_or(u32::MAX);
    for start in 0..bytes.len() {
        if !bytes[start].is_ascii_digit() || (start > 0 && bytes[start - 1].is_ascii_digit()) {
            continue;
        }
        let a = digits_at(start);
        let Some(&sep) = bytes.get(start + a) else { continue };
        if !matches!(sep, b'/' | b'.' | b'-') {
            continue;
        }
        let b_at = start + a + 1;
        let b = digits_at(b_at);
        if b == 0 || bytes.get(b_at + b) != Some(&sep) {
            continue;
        }
        let c_at = b_at + b + 1;
        let c = digits_at(c_at);
        let day_month = |at: usize, len: usize| (1..=2).contains(&len) && (1..=31).contains(&value(at, len));
        let year = |at: usize, len: usize| len == 4 && (1900..=2099).contains(&value(at, len));
        if (day_month(start, a) && day_month(b_at, b) && year(c_at, c))
            || (year(start, a) && day_month(b_at, b) && day_month(c_at, c))
        {
            return true;
        }
    }
    false
}

/// A currency sign, code or word right before or after the number.
fn near_currency(text: &str, range: Range<usize>) -> bool {
    const SIGNS: &[&str] =
        &["$", "£", "€", "¥", "₹", "r$", "zł", "kr", "eur", "usd", "gbp", "pln", "sek", "inr", "jpy", "brl", "chf"];
    const WORDS: &[&str] =
        &["euro", "dollar", "pound", "zł", "zloty", "złot", "kr", "kronor", "yen", "rupee", "real", "reais", "franc"];
    let before = context_before(text, range.start, 8);
    let before = before.trim_end();
    let mut after_end = (range.end + 12).min(text.len());
    while !text.is_char_boundary(after_end) {
        after_end -= 1;
    }
    let after = text[range.end..after_end].to_lowercase();
    let after = after.trim_start();
    SIGNS.iter().any(|sign| before.ends_with(sign) || after.starts_with(sign))
        || WORDS.iter().any(|word| after.starts_with(word))
}

/// 2024-01-15, 15.01.2024, 01/15/2024, 2019-2024.
fn looks_like_date(groups: &[&str], separators: &[char]) -> bool {
    let number = |g: &str| g.parse::<u32>().unwrap_or(u32::MAX);
    let year = |g: &str| g.len() == 4 && (1900..=2099).contains(&number(g));
    let day_month = |g: &str| g.len() <= 2 && (1..=31).contains(&number(g));
    let same_separators = separators.windows(2).all(|pair| pair[0] == pair[1]);
    match groups {
        [a, b, c] if same_separators => {
            (year(a) && day_month(b) && day_month(c)) || (day_month(a) && day_month(b) && year(c))
        }
        [a, b] => year(a) && year(b),
        _ => false,
    }
}

/// 999.100.100.100, 1.2.3.4567: dotted runs of short numbers are versions or addresses.
fn looks_like_dotted_numbers(groups: &[&str], separators: &[char]) -> bool {
    groups.len() >= 3
        && separators.iter().all(|&c| c == '.')
        && groups.iter().take(groups.len() - 1).all(|g| g.len() <= 3)
        && groups[0].len() <= 3
        && groups.iter().filter(|g| g.len() <= 3).count() >= 3
}

/// 1 234 567 or 1.234.567: thousands grouping.
fn looks_like_thousands(groups: &[&str], separators: &[char]) -> bool {
    groups.len() >= 3
        && groups[0].len() <= 3
        && groups[1..].iter().all(|g| g.len() == 3)
        && separators.iter().all(|&c| c == separators[0])
        && matches!(separators.first(), Some(' ' | '.' | ','))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(String, String)> {
        let anonymizer = Anonymizer::new(&[]).unwrap();
        anonymizer
            .find(text)
            .into_iter()
            .map(|finding| (finding.kind.label().to_string(), text[finding.range].to_string()))
            .collect()
    }

    fn one(text: &str, label: &str, value: &str) {
        assert_eq!(kinds(text), vec![(label.to_string(), value.to_string())], "in {text:?}");
    }

    #[test]
    fn luhn_and_mod97() {
        assert!(luhn_ok(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]));
        assert!(!luhn_ok(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2]));
        assert!(iban_checksum_ok(b"DE89370400440532013000"));
        assert!(!iban_checksum_ok(b"DE88370400440532013000"));
    }

    #[test]
    fn grouped_iban_stops_at_the_country_length() {
        one("Send it to BE68 5390 0754 7034 OK thanks", "IBAN", "BE68 5390 0754 7034");
        one("IBAN: GB82 WEST 1234 5698 7654 32.", "IBAN", "GB82 WEST 1234 5698 7654 32");
    }

    #[test]
    fn phones_in_national_and_international_forms() {
        for phone in [
            "(555) 123-4567",
            "555-123-4567",
            "555.123.4567",
            "020 7946 0958",
            "07700 900123",
            "030 12345678",
            "0151 23456789",
            "01 23 45 67 89",
            "+44 20 7946 0958",
            "+1-555-123-4567",
            "+49 (0) 30 12345678",
            "+33 (0)1 41 63 60 83",
            "+4915123456789",
            "206.269.0743x9150",
            "(0406)-812415",
            "+44(0)2074960074",
        ] {
            one(&format!("Hi, please call me back at {phone} today."), "PHONE", phone);
            one(&format!("My details changed, new one is {phone}"), "PHONE", phone);
        }
    }

    #[test]
    fn numbers_that_are_not_phones() {
        for text in [
            "The charge on 2024-01-15 at 12:30:45 was £1,234.56.",
            "Order #123456 arrived broken, app version 1.2.3.",
            "I moved 1 234 567 euros last year",
            "Between 2019-2024 I had no issues",
            "Reference 12345678 in the statement",
            "The transfer of 15.01.2024 never arrived",
            "Server 999.100.100.100 refused",
        ] {
            assert_eq!(kinds(text), vec![], "in {text:?}");
        }
    }

    #[test]
    fn placeholders_are_not_detected_again() {
        let anonymizer = Anonymizer::new(&[CustomPattern { name: "NUM".into(), regex: r"\d+".into() }]).unwrap();
        assert_eq!(anonymizer.find("see <EMAIL_1> and <PHONE_12>"), vec![]);
    }
}
