//! The reply-template automaton: tracks which segment of an [`OutputTemplate`]
//! the reply is in and which bytes may come next. It works on bytes, so a token
//! that ends in the middle of a UTF-8 character is judged like any other.
//!
//! The decoding loop asks [`Constraint::step`] what to do: emit a literal
//! verbatim, let the model pick a token (filtered by [`Constraint::allows`]), or
//! stop. Choice and number segments can end where the text is complete; when
//! they could also go on, the loop compares the model's best continuation with
//! its best way of starting what follows ([`Constraint::ending`]).
//!
//! A JSON segment follows its schema's grammar ([`super::json_constrain`]); a
//! schema the grammar cannot enforce leaves that segment free text.
//! [`Constraint::completion`] gives the shortest text that finishes the whole
//! template: from the start, the shortest complete reply, which is what
//! `[lm] max_tokens` must at least leave room for. Decoding never writes it
//! for the model: a reply the budget cuts stays cut.

use std::sync::Arc;

use super::json_constrain::{JsonGrammar, JsonState};
use crate::lm::{OutputTemplate, Segment};

/// Longest text a number segment may produce.
pub const MAX_NUMBER_CHARS: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Emit this text verbatim (a literal segment; it is already consumed).
    Force(String),
    /// Let the model choose among the tokens [`Constraint::allows`].
    Pick,
    /// The template is complete.
    Done,
}

/// What ending the current segment looks like to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The next segment is this literal text: ending means starting it.
    Literal(Vec<u8>),
    /// Nothing fixed follows: ending means ending the turn.
    EndOfTurn,
}

#[derive(Debug, Clone)]
pub struct Constraint {
    segments: Vec<Segment>,
    /// The grammar of each JSON segment (`None` for other segments, and for a
    /// schema the grammar cannot enforce: that segment is then free text).
    grammars: Vec<Option<Arc<JsonGrammar>>>,
    index: usize,
    /// Bytes produced so far in the current segment.
    text: Vec<u8>,
    /// Where the current JSON segment stands.
    json: Option<JsonState>,
}

/// Where a byte string stands against `-?[0-9]+(\.[0-9]+)?`: `None` if it can
/// never become a number, else whether it already is one.
fn number_state(s: &[u8], integer: bool) -> Option<bool> {
    let mut i = 0;
    if s.first() == Some(&b'-') {
        i = 1;
    }
    let int_start = i;
    while i < s.len() && s[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - int_start;
    if i == s.len() {
        return Some(int_digits > 0);
    }
    if integer || s[i] != b'.' || int_digits == 0 {
        return None;
    }
    i += 1;
    let frac_start = i;
    while i < s.len() && s[i].is_ascii_digit() {
        i += 1;
    }
    if i != s.len() {
        return None;
    }
    Some(i > frac_start)
}

/// The shortest text of a whole segment.
fn segment_min_text(segment: &Segment, grammar: Option<&Arc<JsonGrammar>>) -> Vec<u8> {
    match segment {
        Segment::Literal { text } => text.as_bytes().to_vec(),
        Segment::Choice { options } => {
            options.iter().min_by_key(|o| o.len()).map(|o| o.as_bytes().to_vec()).unwrap_or_default()
        }
        Segment::Number { .. } => b"0".to_vec(),
        Segment::Text { .. } => Vec::new(),
        Segment::Json { .. } => grammar.map(|g| g.min_value().to_vec()).unwrap_or_default(),
    }
}

impl Constraint {
    pub fn new(template: &OutputTemplate) -> Self {
        let grammars = template
            .segments
            .iter()
            .map(|segment| match segment {
                Segment::Json { schema } => match JsonGrammar::compile(schema) {
                    Ok(g) => Some(Arc::new(g)),
                    Err(e) => {
                        tracing::warn!("a JSON reply segment is decoded as free text: {e}");
                        None
                    }
                },
                _ => None,
            })
            .collect();
        let mut c = Self { segments: template.segments.clone(), grammars, index: 0, text: Vec::new(), json: None };
        c.enter_segment();
        c
    }

    fn enter_segment(&mut self) {
        self.text.clear();
        self.json = self.grammars.get(self.index).and_then(|g| g.as_ref()).map(|g| g.start());
    }

    /// What comes next. A literal segment is returned as `Force` and the
    /// automaton moves past it.
    pub fn step(&mut self) -> Step {
        match self.segments.get(self.index) {
            None => Step::Done,
            Some(Segment::Literal { text }) => {
                let text = text.clone();
                self.finish_segment();
                Step::Force(text)
            }
            Some(_) => Step::Pick,
        }
    }

    pub fn current(&self) -> Option<&Segment> {
        self.segments.get(self.index)
    }

    pub fn is_done(&self) -> bool {
        self.index >= self.segments.len()
    }

    /// The bytes produced in the current segment.
    pub fn segment_text(&self) -> &[u8] {
        &self.text
    }

    /// Whether appending `bytes` keeps the current segment valid.
    pub fn allows(&self, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return false;
        }
        match self.current() {
            None | Some(Segment::Literal { .. }) => false,
            Some(Segment::Json { .. }) => self.json.as_ref().is_none_or(|j| j.allows(bytes)),
            Some(Segment::Text { .. }) => true,
            Some(Segment::Choice { options }) => options.iter().any(|o| {
                let o = o.as_bytes();
                o.len() >= self.text.len() + bytes.len()
                    && o.starts_with(&self.text)
                    && o[self.text.len()..].starts_with(bytes)
            }),
            Some(Segment::Number { integer }) => {
                let len = self.text.len() + bytes.len();
                if len > MAX_NUMBER_CHARS {
                    return false;
                }
                let mut s = self.text.clone();
                s.extend_from_slice(bytes);
                match number_state(&s, *integer) {
                    None => false,
                    Some(complete) => complete || len < MAX_NUMBER_CHARS,
                }
            }
        }
    }

    /// Whether the current segment may end here.
    pub fn is_complete(&self) -> bool {
        match self.current() {
            None => true,
            Some(Segment::Literal { .. }) => false,
            Some(Segment::Json { .. }) => self.json.as_ref().is_none_or(JsonState::is_complete),
            Some(Segment::Text { .. }) => true,
            Some(Segment::Choice { options }) => options.iter().any(|o| o.as_bytes() == self.text.as_slice()),
            Some(Segment::Number { integer }) => number_state(&self.text, *integer) == Some(true),
        }
    }

    /// Whether some continuation of the current segment is still possible.
    pub fn can_continue(&self) -> bool {
        match self.current() {
            None | Some(Segment::Literal { .. }) => false,
            Some(Segment::Json { .. }) => self.json.as_ref().is_none_or(JsonState::can_continue),
            Some(Segment::Text { .. }) => true,
            Some(Segment::Choice { options }) => {
                options.iter().any(|o| o.len() > self.text.len() && o.as_bytes().starts_with(&self.text))
            }
            Some(Segment::Number { .. }) => self.text.len() < MAX_NUMBER_CHARS,
        }
    }

    /// What ending the current segment would look like.
    pub fn ending(&self) -> Ending {
        match self.segments.get(self.index + 1) {
            Some(Segment::Literal { text }) if !text.is_empty() => Ending::Literal(text.as_bytes().to_vec()),
            _ => Ending::EndOfTurn,
        }
    }

    /// Records bytes the model produced in the current segment.
    pub fn push(&mut self, bytes: &[u8]) {
        self.text.extend_from_slice(bytes);
        if let Some(json) = self.json.as_mut() {
            json.push(bytes);
        }
    }

    /// The bytes that must come next whatever the model prefers: in a JSON
    /// segment, as long as exactly one byte is allowed and the value cannot
    /// end yet (e.g. an object's only possible key). Empty elsewhere.
    pub fn determined(&self) -> Vec<u8> {
        self.json.as_ref().map(JsonState::determined).unwrap_or_default()
    }

    /// The shortest bytes that make the current segment complete (empty if it is).
    pub fn segment_completion(&self) -> Vec<u8> {
        match self.current() {
            None => Vec::new(),
            Some(Segment::Literal { text }) => text.as_bytes().to_vec(),
            Some(Segment::Choice { options }) => options
                .iter()
                .filter(|o| o.as_bytes().starts_with(&self.text))
                .min_by_key(|o| o.len())
                .map(|o| o.as_bytes()[self.text.len()..].to_vec())
                .unwrap_or_default(),
            Some(Segment::Number { integer }) => match number_state(&self.text, *integer) {
                Some(true) | None => Vec::new(),
                Some(false) => b"0".to_vec(),
            },
            Some(Segment::Text { .. }) => Vec::new(),
            Some(Segment::Json { .. }) => self.json.as_ref().map(JsonState::completion).unwrap_or_default(),
        }
    }

    /// The shortest bytes that complete the whole template from here: the
    /// current segment's completion, then every later segment at its
    /// shortest (literals verbatim, the shortest choice, `0`, no text, the
    /// schema's smallest value).
    pub fn completion(&self) -> Vec<u8> {
        let mut out = self.segment_completion();
        for (segment, grammar) in self.segments.iter().zip(&self.grammars).skip(self.index + 1) {
            out.extend(segment_min_text(segment, grammar.as_ref()));
        }
        out
    }

    /// The segments of the template and, for each JSON segment, the shortest
    /// value its schema accepts (`None` elsewhere, and for a schema decoded as
    /// free text): what the fewest tokens of a complete reply are counted on.
    pub fn shortest_parts(&self) -> Vec<(&Segment, Option<&[u8]>)> {
        self.segments.iter().zip(&self.grammars).map(|(s, g)| (s, g.as_ref().map(|g| g.min_value()))).collect()
    }

    /// For a text segment: where its `until` marker starts in the segment's text.
    pub fn until_position(&self) -> Option<usize> {
        match self.current() {
            Some(Segment::Text { until }) if !until.is_empty() => {
                let until = until.as_bytes();
                self.text.windows(until.len()).position(|w| w == until)
            }
            _ => None,
        }
    }

    /// Moves on to the next segment.
    pub fn finish_segment(&mut self) {
        if self.index < self.segments.len() {
            self.index += 1;
        }
        self.enter_segment();
    }
}

/// Checks that decoding can be constrained to `schema`: `Err` names the first
/// keyword it cannot enforce and where it is (a JSON Pointer into the schema).
pub fn validate_schema(schema: &serde_json::Value) -> Result<(), String> {
    JsonGrammar::compile(schema).map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(segments: Vec<Segment>) -> OutputTemplate {
        OutputTemplate { segments }
    }

    fn choice(options: &[&str]) -> Segment {
        Segment::Choice { options: options.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn literals_are_forced_in_order() {
        let mut c = Constraint::new(&template(vec![
            Segment::Literal { text: "a".into() },
            Segment::Literal { text: "b".into() },
        ]));
        assert_eq!(c.step(), Step::Force("a".into()));
        assert_eq!(c.step(), Step::Force("b".into()));
        assert_eq!(c.step(), Step::Done);
        assert!(c.is_done());
    }

    #[test]
    fn choice_allows_only_prefixes_of_options() {
        let mut c = Constraint::new(&template(vec![
            choice(&["cards", "transfers", "top_ups"]),
            Segment::Literal { text: "\n\nEND".into() },
        ]));
        assert_eq!(c.step(), Step::Pick);
        assert!(c.allows(b"c"));
        assert!(c.allows(b"card"));
        assert!(c.allows(b"t"));
        assert!(c.allows(b"top"));
        assert!(!c.allows(b"cards\n"));
        assert!(!c.allows(b"x"));
        assert!(!c.allows(b""));
        c.push(b"t");
        assert!(c.allows(b"ransfers"));
        assert!(c.allows(b"op_"));
        assert!(!c.allows(b"c"));
        assert!(!c.is_complete());
        c.push(b"op_ups");
        assert!(c.is_complete());
        assert!(!c.can_continue());
        assert_eq!(c.ending(), Ending::Literal(b"\n\nEND".to_vec()));
        c.finish_segment();
        assert_eq!(c.step(), Step::Force("\n\nEND".into()));
        assert_eq!(c.step(), Step::Done);
    }

    #[test]
    fn choice_with_an_option_that_extends_another() {
        let mut c = Constraint::new(&template(vec![choice(&["yes", "yes_but"])]));
        c.push(b"yes");
        assert!(c.is_complete());
        assert!(c.can_continue());
        assert!(c.allows(b"_b"));
        assert_eq!(c.ending(), Ending::EndOfTurn);
    }

    #[test]
    fn choice_options_may_contain_multibyte_characters() {
        let mut c = Constraint::new(&template(vec![choice(&["café", "cafe"])]));
        c.push(b"caf");
        // A token that ends in the middle of "é".
        assert!(c.allows(&[0xc3]));
        c.push(&[0xc3]);
        assert!(c.allows(&[0xa9]));
        assert!(!c.allows(b"e"));
    }

    #[test]
    fn number_states() {
        assert_eq!(number_state(b"", false), Some(false));
        assert_eq!(number_state(b"-", false), Some(false));
        assert_eq!(number_state(b"-12", false), Some(true));
        assert_eq!(number_state(b"12.", false), Some(false));
        assert_eq!(number_state(b"12.5", false), Some(true));
        assert_eq!(number_state(b"12.", true), None);
        assert_eq!(number_state(b".5", false), None);
        assert_eq!(number_state(b"1-", false), None);
        assert_eq!(number_state(b"1.2.3", false), None);
        assert_eq!(number_state(b"--1", false), None);
        assert_eq!(number_state(b" 1", false), None);
    }

    #[test]
    fn number_segment_limits() {
        let mut c = Constraint::new(&template(vec![Segment::Number { integer: true }]));
        assert!(c.allows(b"-"));
        assert!(c.allows(b"42"));
        assert!(!c.allows(b"4.2"));
        assert!(!c.allows(b" 4"));
        assert!(!c.is_complete());
        c.push(b"4");
        assert!(c.is_complete());
        assert!(c.can_continue());
        c.push(b"1234567890123456789");
        assert_eq!(c.segment_text().len(), MAX_NUMBER_CHARS);
        assert!(!c.can_continue());
        assert!(!c.allows(b"1"));

        let mut c = Constraint::new(&template(vec![Segment::Number { integer: false }]));
        c.push(b"123456789012345678");
        // "." at 19 chars still leaves room for one digit...
        assert!(c.allows(b"."));
        // ...but a number cannot end on "." at the limit.
        assert!(!c.allows(b".."));
        c.push(b"9");
        assert!(!c.allows(b"."));
        assert!(c.allows(b"0"));
    }

    fn json(schema: serde_json::Value) -> Segment {
        Segment::Json { schema }
    }

    #[test]
    fn json_segment_follows_its_schema() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b"]}}, "n": {"type": "integer"}},
            "required": ["tags", "n"],
            "additionalProperties": false
        });
        let mut c = Constraint::new(&template(vec![
            Segment::Literal { text: "[[ ## out ## ]]\n".into() },
            json(schema),
            Segment::Literal { text: "\n\n[[ ## completed ## ]]".into() },
        ]));
        assert!(matches!(c.step(), Step::Force(_)));
        assert_eq!(c.step(), Step::Pick);
        assert!(c.allows(b"{\"") && !c.allows(b"{}") && !c.allows(b"[") && !c.allows(b"{\"n"));
        assert!(!c.is_complete() && c.can_continue());
        // Only one key may come first, so the grammar writes it.
        c.push(b"{");
        assert_eq!(c.determined(), b"\"tags\": [");
        c.push(b"\"tags\": [\"a\", \"");
        assert_eq!(c.determined(), b"");
        assert!(c.allows(b"b\"]") && !c.allows(b"c"));
        c.push(b"b\"], \"n\": 4");
        assert!(!c.is_complete() && c.can_continue());
        assert_eq!(c.completion(), b"}\n\n[[ ## completed ## ]]");
        c.push(b"2}");
        assert!(c.is_complete() && !c.can_continue());
        assert_eq!(c.ending(), Ending::Literal(b"\n\n[[ ## completed ## ]]".to_vec()));
        c.finish_segment();
        assert_eq!(c.step(), Step::Force("\n\n[[ ## completed ## ]]".into()));
        assert_eq!(c.step(), Step::Done);
    }

    #[test]
    fn a_json_number_may_end_or_go_on() {
        let mut c = Constraint::new(&template(vec![json(serde_json::json!({"type": "number"}))]));
        c.push(b"-1");
        assert!(c.is_complete() && c.can_continue());
        assert!(c.allows(b".5") && !c.allows(b"}"));
        assert_eq!(c.ending(), Ending::EndOfTurn);
    }

    #[test]
    fn completion_covers_the_rest_of_the_template() {
        let c = Constraint::new(&template(vec![
            Segment::Literal { text: "A: ".into() },
            choice(&["long_option", "short"]),
            Segment::Literal { text: "\nB: ".into() },
            Segment::Number { integer: false },
            Segment::Literal { text: "\nC: ".into() },
            Segment::Text { until: "\n".into() },
            Segment::Literal { text: "\nD: ".into() },
            json(serde_json::json!({"type": "object", "properties": {"k": {"type": "boolean"}}, "required": ["k"]})),
        ]));
        assert_eq!(c.completion(), b"A: short\nB: 0\nC: \nD: {\"k\": true}");
        let mut c = c;
        c.step();
        c.push(b"lo");
        assert_eq!(c.completion(), b"ng_option\nB: 0\nC: \nD: {\"k\": true}");
        c.push(b"ng_option");
        c.finish_segment();
        c.step();
        c.push(b"3.");
        assert_eq!(c.segment_completion(), b"0");
        assert_eq!(c.completion(), b"0\nC: \nD: {\"k\": true}");
    }

    #[test]
    fn a_schema_the_grammar_cannot_enforce_leaves_free_text() {
        let mut c = Constraint::new(&template(vec![json(serde_json::json!({"type": "string", "pattern": "^a"}))]));
        assert!(c.allows(b"anything"));
        c.push(b"anything");
        assert!(c.is_complete() && c.can_continue());
        assert_eq!(c.completion(), b"");
    }

    #[test]
    fn validate_schema_names_the_keyword() {
        assert_eq!(validate_schema(&serde_json::json!({"type": "object", "properties": {"a": {}}})), Ok(()));
        let err = validate_schema(&serde_json::json!({"properties": {"zip": {"type": "string", "pattern": "x"}}}))
            .unwrap_err();
        assert!(err.contains("`pattern`") && err.contains("/properties/zip"), "{err}");
    }

    #[test]
    fn text_segment_finds_its_marker() {
        let mut c = Constraint::new(&template(vec![
            Segment::Literal { text: "[[ ## reasoning ## ]]\n".into() },
            Segment::Text { until: "\n\n[[ ##".into() },
            Segment::Literal { text: "\n\n[[ ## answer ## ]]\n".into() },
        ]));
        assert!(matches!(c.step(), Step::Force(_)));
        assert_eq!(c.step(), Step::Pick);
        assert!(c.allows("anything at all ✓".as_bytes()));
        c.push(b"Because it is.\n\n[[");
        assert_eq!(c.until_position(), None);
        c.push(b" ## answer");
        assert_eq!(c.until_position(), Some(14));
        assert_eq!(c.ending(), Ending::Literal(b"\n\n[[ ## answer ## ]]\n".to_vec()));
        c.finish_segment();
        assert_eq!(c.step(), Step::Force("\n\n[[ ## answer ## ]]\n".into()));
        assert_eq!(c.step(), Step::Done);
    }
}
