//! The signal detector: a cheap, LM-free reading of how a customer writes.
//!
//! It labels a message `routine`, `urgent` or `escalating` and says why. The
//! cues are the ones a support lead would name: runs of `!`, interrobang
//! clusters (`?!`, `??!!`), shouting (a large share of all-caps words), urgency
//! words, escalation phrases ("legal action", "speak to a manager", "third time
//! I've asked"), and a conversation that keeps coming back. The label is kept
//! on the example so sampling can stratify by it and reports can slice by it.

use regex::Regex;
use serde::{Deserialize, Serialize};

/// `[signals]`: the rule-based routine / urgent / escalating detector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalsConfig {
    /// The input field holding the customer's message [default: the first input].
    #[serde(default)]
    pub field: String,
    /// Phrases that mark escalation, added to the built-in ones.
    #[serde(default)]
    pub escalation_phrases: Vec<String>,
    /// Words that mark urgency, added to the built-in ones.
    #[serde(default)]
    pub urgent_phrases: Vec<String>,
    /// Share of all-caps words (of those with 3+ letters) that counts as shouting.
    #[serde(default = "default_caps_share")]
    pub caps_share: f64,
    /// Earlier messages in the history that make an urgent message escalating.
    #[serde(default = "default_history_repeats")]
    pub history_repeats: usize,
}

fn default_caps_share() -> f64 {
    0.5
}
fn default_history_repeats() -> usize {
    2
}

impl Default for SignalsConfig {
    fn default() -> Self {
        Self {
            field: String::new(),
            escalation_phrases: Vec::new(),
            urgent_phrases: Vec::new(),
            caps_share: default_caps_share(),
            history_repeats: default_history_repeats(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    Routine,
    Urgent,
    Escalating,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Routine, Signal::Urgent, Signal::Escalating];

    pub fn name(self) -> &'static str {
        match self {
            Signal::Routine => "routine",
            Signal::Urgent => "urgent",
            Signal::Escalating => "escalating",
        }
    }

    pub fn from_name(name: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A label and the cues that led to it, in words a reviewer can check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalReading {
    pub label: Signal,
    pub evidence: Vec<String>,
}

const ESCALATION_PHRASES: &[&str] = &[
    "legal action",
    "lawyer",
    "solicitor",
    "attorney",
    "sue you",
    "take you to court",
    "speak to a manager",
    "speak to your manager",
    "talk to a manager",
    "talk to your manager",
    "speak to a supervisor",
    "talk to a supervisor",
    "escalate this",
    "formal complaint",
    "file a complaint",
    "ombudsman",
    "regulator",
    "second time i've asked",
    "third time i've asked",
    "third time i have asked",
    "third time",
    "3rd time",
    "fourth time",
    "4th time",
    "asked you before",
    "asked several times",
    "asked multiple times",
    "still no answer",
    "still no reply",
    "still haven't heard",
    "nobody has replied",
    "no one has replied",
    "unacceptable",
];

const URGENT_PHRASES: &[&str] = &[
    "urgent",
    "urgently",
    "asap",
    "as soon as possible",
    "immediately",
    "right now",
    "right away",
    "emergency",
    "help me please",
    "please help",
];

/// Abbreviations that are upper case in calm writing too.
const ACRONYMS: &[&str] = &[
    "ATM", "PIN", "IBAN", "SWIFT", "BIC", "USD", "EUR", "GBP", "CHF", "JPY", "AUD", "CAD", "CVV", "CVC", "SMS", "OTP",
    "API", "URL", "FAQ", "SEPA", "ACH", "APP", "USA", "UK", "EU", "ID", "VAT", "NFC", "SIM",
];

/// Shouting is judged only when a message has at least this many words of
/// three or more letters; "OK THX" is not a tone.
const MIN_WORDS_FOR_CAPS: usize = 3;

pub struct SignalDetector {
    escalation: Regex,
    urgent: Regex,
    caps_share: f64,
    history_repeats: usize,
}

impl SignalDetector {
    pub fn new(config: &SignalsConfig) -> Self {
        let phrases = |builtin: &[&str], extra: &[String]| {
            let mut all: Vec<String> = builtin.iter().map(|p| p.to_string()).collect();
            all.extend(extra.iter().map(|p| p.trim().to_lowercase()).filter(|p| !p.is_empty()));
            // Longest first, so "third time i've asked" wins over "third time".
            all.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
            all.dedup();
            let alternation: Vec<String> = all.iter().map(|p| regex::escape(p).replace("'", "['’]")).collect();
            Regex::new(&format!(r"(?i)\b(?:{})\b", alternation.join("|"))).expect("escaped phrases form a valid regex")
        };
        Self {
            escalation: phrases(ESCALATION_PHRASES, &config.escalation_phrases),
            urgent: phrases(URGENT_PHRASES, &config.urgent_phrases),
            caps_share: config.caps_share,
            history_repeats: config.history_repeats,
        }
    }

    /// Reads a message and the earlier messages of its conversation (oldest first).
    pub fn read(&self, message: &str, history: &[String]) -> SignalReading {
        let mut evidence = Vec::new();
        let cues = self.urgency_cues(message, &mut evidence);

        let mut escalation: Vec<String> = Vec::new();
        for found in self.escalation.find_iter(message) {
            let phrase = found.as_str().to_lowercase().replace('’', "'");
            if !escalation.contains(&phrase) {
                escalation.push(phrase);
            }
        }
        for phrase in &escalation {
            evidence.push(format!("escalation phrase \"{phrase}\""));
        }

        let earlier = history.iter().filter(|m| !m.trim().is_empty()).count();
        let mut repeated_urgency = false;
        if earlier > 0 {
            evidence
                .push(format!("{earlier} earlier message{} in the conversation", if earlier == 1 { "" } else { "s" }));
            let mut scratch = Vec::new();
            repeated_urgency = history.iter().any(|m| self.urgency_cues(m, &mut scratch) > 0);
        }

        let label = if !escalation.is_empty() || (cues > 0 && (earlier >= self.history_repeats || repeated_urgency)) {
            Signal::Escalating
        } else if cues > 0 {
            Signal::Urgent
        } else {
            Signal::Routine
        };
        SignalReading { label, evidence }
    }

    /// Counts the urgency cues in one message and describes each.
    fn urgency_cues(&self, message: &str, evidence: &mut Vec<String>) -> usize {
        let mut cues = 0;
        let (bangs, clusters) = punctuation_runs(message);
        if bangs > 0 {
            cues += 1;
            evidence.push(format!("{bangs} run{} of \"!!\"", if bangs == 1 { "" } else { "s" }));
        }
        if !clusters.is_empty() {
            cues += 1;
            evidence.push(format!("interrobang {}", clusters.join(" ")));
        }
        let (caps, words) = caps_words(message);
        if words >= MIN_WORDS_FOR_CAPS && caps > 0 && caps as f64 / words as f64 >= self.caps_share {
            cues += 1;
            evidence.push(format!("{caps} of {words} words in capitals"));
        }
        let mut urgent: Vec<String> = Vec::new();
        for found in self.urgent.find_iter(message) {
            let word = found.as_str().to_lowercase();
            if !urgent.contains(&word) {
                urgent.push(word);
            }
        }
        if !urgent.is_empty() {
            cues += 1;
            for word in urgent {
                evidence.push(format!("urgency word \"{word}\""));
            }
        }
        cues
    }
}

/// Runs of two or more `!` (without `?`), and clusters mixing `?` and `!` or
/// the interrobang itself, as written (`?!`, `??!!`, `‽`).
fn punctuation_runs(text: &str) -> (usize, Vec<String>) {
    let mut bangs = 0;
    let mut clusters = Vec::new();
    let mut run = String::new();
    let mut flush = |run: &mut String| {
        let has_bang = run.contains('!');
        let has_question = run.contains('?');
        if run.contains('‽') || (has_bang && has_question) {
            if !clusters.contains(run) {
                clusters.push(run.clone());
            }
        } else if has_bang && run.chars().count() >= 2 {
            bangs += 1;
        }
        run.clear();
    };
    for c in text.chars() {
        if matches!(c, '!' | '?' | '‽') {
            run.push(c);
        } else if !run.is_empty() {
            flush(&mut run);
        }
    }
    if !run.is_empty() {
        flush(&mut run);
    }
    (bangs, clusters)
}

/// (all-caps words, words) over words of three or more letters, leaving out
/// placeholders (`<EMAIL_1>`) and common abbreviations.
fn caps_words(text: &str) -> (usize, usize) {
    let mut caps = 0;
    let mut words = 0;
    for token in text.split(|c: char| c.is_whitespace()) {
        if token.starts_with('<') {
            continue;
        }
        let word = token.trim_matches(|c: char| !c.is_alphanumeric());
        let letters = word.chars().filter(|c| c.is_alphabetic()).count();
        if letters < 3 || word.chars().any(|c| c.is_ascii_digit()) {
            continue;
        }
        words += 1;
        if word.chars().all(|c| !c.is_alphabetic() || c.is_uppercase()) && !ACRONYMS.contains(&word) {
            caps += 1;
        }
    }
    (caps, words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector() -> SignalDetector {
        SignalDetector::new(&SignalsConfig::default())
    }

    #[test]
    fn calm_messages_are_routine() {
        let d = detector();
        for message in [
            "How do I top up with a bank transfer?",
            "My card hasn't arrived yet. Can you check?",
            "Is there a fee for using an ATM abroad? Thanks!",
            "What is my PIN for the new card?",
        ] {
            let reading = d.read(message, &[]);
            assert_eq!(reading.label, Signal::Routine, "{message}: {:?}", reading.evidence);
            assert!(reading.evidence.is_empty());
        }
    }

    #[test]
    fn urgency_cues_each_make_a_message_urgent() {
        let d = detector();
        let cases = [
            ("My card was declined again!!!", "1 run of \"!!\""),
            ("Where is my money?!", "interrobang ?!"),
            ("Why was I charged twice??!!", "interrobang ??!!"),
            ("MY CARD IS NOT WORKING at the shop", "3 of 5 words in capitals"),
            ("I need this sorted urgently please", "urgency word \"urgently\""),
        ];
        for (message, cue) in cases {
            let reading = d.read(message, &[]);
            assert_eq!(reading.label, Signal::Urgent, "{message}");
            assert!(reading.evidence.iter().any(|e| e == cue), "{message}: {:?}", reading.evidence);
        }
    }

    #[test]
    fn escalation_phrases_escalate_with_their_evidence() {
        let d = detector();
        let reading = d.read("This is the third time I’ve asked. I want to speak to a manager.", &[]);
        assert_eq!(reading.label, Signal::Escalating);
        assert!(reading.evidence.contains(&"escalation phrase \"third time i've asked\"".to_string()));
        assert!(reading.evidence.contains(&"escalation phrase \"speak to a manager\"".to_string()));
        assert_eq!(d.read("I will take legal action", &[]).label, Signal::Escalating);
    }

    #[test]
    fn urgency_in_a_conversation_that_keeps_coming_back_escalates() {
        let d = detector();
        let history = vec!["Where is my transfer?".to_string(), "Any news on my transfer?".to_string()];
        let reading = d.read("STILL NOTHING HERE!!", &history);
        assert_eq!(reading.label, Signal::Escalating);
        assert!(reading.evidence.contains(&"2 earlier messages in the conversation".to_string()));
        // One calm earlier message is not enough; an urgent one is.
        assert_eq!(d.read("Where is it?!", &history[..1]).label, Signal::Urgent);
        assert_eq!(d.read("Where is it?!", &["HELP ME NOW!!!".to_string()]).label, Signal::Escalating);
        // A calm follow-up stays routine.
        assert_eq!(d.read("Thanks, and the fee?", &history).label, Signal::Routine);
    }

    #[test]
    fn placeholders_and_abbreviations_are_not_shouting() {
        let d = detector();
        let reading = d.read("Send it to <EMAIL_1> and <PHONE_1> via SEPA or SWIFT to my IBAN", &[]);
        assert_eq!(reading.label, Signal::Routine, "{:?}", reading.evidence);
    }

    #[test]
    fn configured_phrases_are_added() {
        let config = SignalsConfig {
            escalation_phrases: vec!["cancel everything".into()],
            urgent_phrases: vec!["time-sensitive".into()],
            ..SignalsConfig::default()
        };
        let d = SignalDetector::new(&config);
        assert_eq!(d.read("I'll cancel everything with you", &[]).label, Signal::Escalating);
        assert_eq!(d.read("this is time-sensitive", &[]).label, Signal::Urgent);
        assert_eq!(d.read("speak to a manager", &[]).label, Signal::Escalating);
    }
}
