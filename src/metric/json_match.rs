//! `json_match`: a JSON value compared with its reference key by key. A list
//! of objects (meeting action items, extracted entities) is matched one to
//! one, predicted items to reference items, by the assignment that maximizes
//! the total similarity (the Hungarian algorithm); the score is the F1 of
//! that matching, each matched pair counting its similarity.

use async_trait::async_trait;
use indexmap::IndexMap;
use serde_json::{Map, Value};

use super::{Metric, MetricError, Score, normalize_value, token_f1};
use crate::dataset::Example;

/// The most items either side of a list comparison (the matching is cubic).
const MAX_ITEMS: usize = 500;
/// Item labels and values are cut to this many characters in feedback.
const SHOWN_CHARS: usize = 60;

pub struct JsonMatch {
    field: String,
    schema: Option<Value>,
    weights: IndexMap<String, f64>,
}

impl JsonMatch {
    pub fn new(field: String, schema: Option<Value>, weights: IndexMap<String, f64>) -> Self {
        Self { field, schema, weights }
    }

    /// The schema of one item: the `items` of an array schema, else the schema.
    fn item_schema(&self) -> Option<&Value> {
        let schema = self.schema.as_ref()?;
        if schema.get("type").and_then(Value::as_str) == Some("array") { schema.get("items") } else { Some(schema) }
    }

    fn expects_list(&self, reference: &Value) -> bool {
        match self.schema.as_ref().and_then(|s| s.get("type")).and_then(Value::as_str) {
            Some("array") => true,
            Some(_) => false,
            None => reference.is_array(),
        }
    }

    /// Scores `predicted` against `reference`, both JSON values or JSON text.
    pub fn compare(&self, reference: &Value, predicted: &Value) -> Result<Score, MetricError> {
        let field = &self.field;
        let reference = decode(reference)
            .map_err(|e| MetricError(format!("the reference `{field}` is not valid JSON ({e}); fix the dataset")))?;
        let predicted = match decode(predicted) {
            Ok(v) => v,
            Err(e) => return Ok(zero(format!("`{field}` is not valid JSON: {e}"))),
        };
        let list = self.expects_list(&reference);
        let (reference, predicted) = if list {
            let Value::Array(reference) = reference else {
                return Err(MetricError(format!("the reference `{field}` is not a JSON list; fix the dataset")));
            };
            let Value::Array(predicted) = predicted else {
                return Ok(zero(format!("`{field}` must be a JSON list of items, got {}", kind(&predicted))));
            };
            (reference, predicted)
        } else {
            if !predicted.is_object() && reference.is_object() {
                return Ok(zero(format!("`{field}` must be a JSON object, got {}", kind(&predicted))));
            }
            (vec![reference], vec![predicted])
        };
        if reference.len() > MAX_ITEMS || predicted.len() > MAX_ITEMS {
            return Ok(zero(format!(
                "`{field}` has {} items and its reference {}: more than the {MAX_ITEMS} compared",
                predicted.len(),
                reference.len()
            )));
        }
        if reference.is_empty() && predicted.is_empty() {
            return Ok(Score { value: 1.0, feedback: "correct (no items, as expected)".into() });
        }
        if predicted.is_empty() {
            return Ok(zero(format!(
                "`{field}` is an empty list; expected {} items: {}",
                reference.len(),
                labels(&reference)
            )));
        }
        if reference.is_empty() {
            return Ok(zero(format!(
                "`{field}` should be an empty list; got {} items: {}",
                predicted.len(),
                labels(&predicted)
            )));
        }

        let pairs: Vec<Vec<ItemComparison>> =
            predicted.iter().map(|p| reference.iter().map(|r| self.compare_item(r, p)).collect()).collect();
        let similarity: Vec<Vec<f64>> = pairs.iter().map(|row| row.iter().map(|c| c.similarity).collect()).collect();
        let assignment = assign(&similarity);

        let mut matched_total = 0.0;
        let mut notes = Vec::new();
        let mut reference_matched = vec![false; reference.len()];
        let single = !list;
        for (i, slot) in assignment.iter().enumerate() {
            match slot {
                Some(j) if pairs[i][*j].similarity > 0.0 => {
                    let c = &pairs[i][*j];
                    matched_total += c.similarity;
                    reference_matched[*j] = true;
                    if c.similarity < 1.0 {
                        let head = if single {
                            String::new()
                        } else {
                            format!("item {} {} matched reference item {}: ", i + 1, label(&predicted[i]), j + 1)
                        };
                        notes.push(format!("{head}{}", c.notes.join("; ")));
                    }
                }
                _ => notes.push(format!("item {} {} matches no reference item (extra)", i + 1, label(&predicted[i]))),
            }
        }
        for (j, matched) in reference_matched.iter().enumerate() {
            if !matched {
                notes.push(format!("reference item {} {} was not predicted (missing)", j + 1, label(&reference[j])));
            }
        }
        let precision = matched_total / predicted.len() as f64;
        let recall = matched_total / reference.len() as f64;
        let f1 = if matched_total > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        let feedback = if notes.is_empty() {
            "correct".to_string()
        } else if single {
            notes.join("; ")
        } else {
            format!(
                "precision {precision:.2}, recall {recall:.2} over {} predicted and {} reference items: {}",
                predicted.len(),
                reference.len(),
                notes.join("; ")
            )
        };
        Ok(Score { value: f1.clamp(0.0, 1.0), feedback })
    }

    /// The similarity of one predicted item to one reference item, with what differed.
    fn compare_item(&self, reference: &Value, predicted: &Value) -> ItemComparison {
        let (Value::Object(reference), Value::Object(predicted)) = (reference, predicted) else {
            let (similarity, note) = value_similarity(reference, predicted);
            return ItemComparison { similarity, notes: note.into_iter().collect() };
        };
        let item_schema = self.item_schema();
        let properties = item_schema.and_then(|s| s.get("properties")).and_then(Value::as_object);
        let required: Vec<&str> = match item_schema.and_then(|s| s.get("required")).and_then(Value::as_array) {
            Some(r) => r.iter().filter_map(Value::as_str).collect(),
            None => reference.keys().map(String::as_str).collect(),
        };
        let mut keys: Vec<&str> = match properties {
            Some(p) => p.keys().map(String::as_str).collect(),
            None => reference.keys().map(String::as_str).collect(),
        };
        for k in reference.keys() {
            if !keys.contains(&k.as_str()) {
                keys.push(k);
            }
        }
        let mut total = 0.0;
        let mut weights = 0.0;
        let mut notes = Vec::new();
        for key in keys {
            let weight = self.weights.get(key).copied().unwrap_or(1.0);
            weights += weight;
            let want = reference.get(key);
            let got = predicted.get(key);
            let similarity = match (want, got) {
                (None, None) => 1.0,
                (_, None) if required.contains(&key) || want.is_some_and(|w| !w.is_null()) => {
                    notes.push(format!("lacks `{key}`"));
                    0.0
                }
                (_, None) => 1.0,
                (want, Some(got)) => {
                    let key_schema = properties.and_then(|p| p.get(key));
                    if let Some(expected) = key_schema.and_then(|s| type_mismatch(s, got)) {
                        notes.push(format!("`{key}` should be {expected}, got {}", kind(got)));
                        0.0
                    } else {
                        let (s, note) = value_similarity(want.unwrap_or(&Value::Null), got);
                        if let Some(note) = note {
                            notes.push(format!("`{key}` {note}"));
                        }
                        s
                    }
                }
            };
            total += weight * similarity;
        }
        let similarity = if weights > 0.0 { total / weights } else { 1.0 };
        ItemComparison { similarity, notes }
    }
}

struct ItemComparison {
    similarity: f64,
    notes: Vec<String>,
}

#[async_trait]
impl Metric for JsonMatch {
    fn name(&self) -> String {
        format!("json_match({})", self.field)
    }

    fn is_binary(&self) -> bool {
        false
    }

    async fn score(&self, example: &Example, prediction: &Map<String, Value>) -> Result<Score, MetricError> {
        let Some(reference) = example.outputs.get(&self.field) else {
            return Err(MetricError(format!("the example has no reference `{}` to compare with", self.field)));
        };
        match prediction.get(&self.field) {
            Some(predicted) => self.compare(reference, predicted),
            None => Ok(zero(format!("the prediction has no `{}`", self.field))),
        }
    }
}

fn zero(feedback: String) -> Score {
    Score { value: 0.0, feedback }
}

/// A JSON value as is, or the JSON a string holds (a model may write the list
/// as text, possibly inside a ```json fence).
fn decode(value: &Value) -> Result<Value, String> {
    match value {
        Value::String(text) => {
            let t = text.trim();
            let t = t.strip_prefix("```json").or_else(|| t.strip_prefix("```")).unwrap_or(t);
            let t = t.strip_suffix("```").unwrap_or(t).trim();
            serde_json::from_str(t).map_err(|e| e.to_string())
        }
        other => Ok(other.clone()),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// What the schema's `type` allows when `value` is not one of them.
fn type_mismatch(schema: &Value, value: &Value) -> Option<String> {
    let types: Vec<&str> = match schema.get("type")? {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    let fits = |t: &str| match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => true,
    };
    if types.iter().any(|t| fits(t)) { None } else { Some(types.join(" or ")) }
}

fn shown(value: &Value) -> String {
    let text = match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    cut(&text)
}

fn cut(text: &str) -> String {
    if text.chars().count() > SHOWN_CHARS {
        format!("{}…", text.chars().take(SHOWN_CHARS).collect::<String>())
    } else {
        text.to_string()
    }
}

/// An item as feedback names it: its first string value, in parentheses.
fn label(item: &Value) -> String {
    let first = match item {
        Value::Object(map) => map.values().find_map(Value::as_str).map(str::to_string),
        Value::String(s) => Some(s.clone()),
        _ => None,
    };
    match first {
        Some(text) => format!("({:?})", cut(&text)),
        None => format!("({})", cut(&item.to_string())),
    }
}

fn labels(items: &[Value]) -> String {
    items.iter().map(label).collect::<Vec<_>>().join(", ")
}

/// The similarity of two leaf values in 0..=1, and what differed. Null
/// matches only null; two dates match when they are the same day; other
/// strings by token F1; numbers and booleans exactly; lists and objects when
/// equal as JSON.
fn value_similarity(want: &Value, got: &Value) -> (f64, Option<String>) {
    let differ = || Some(format!("expected {}, got {}", shown(want), shown(got)));
    match (want, got) {
        (Value::Null, Value::Null) => (1.0, None),
        (Value::Null, _) | (_, Value::Null) => (0.0, differ()),
        (Value::String(w), Value::String(g)) => {
            if let (Some(wd), Some(gd)) = (normalize_date(w), normalize_date(g)) {
                return if wd == gd { (1.0, None) } else { (0.0, Some(format!("expected {wd}, got {gd}"))) };
            }
            if normalize_date(w).is_some() {
                return (
                    0.0,
                    Some(format!("expected the date {}, got {} (not a date read as such)", shown(want), shown(got))),
                );
            }
            let s = token_f1(w, g);
            if s >= 1.0 { (1.0, None) } else { (s, differ()) }
        }
        (Value::Number(w), Value::Number(g)) => {
            let same = match (w.as_f64(), g.as_f64()) {
                (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0),
                _ => w == g,
            };
            if same { (1.0, None) } else { (0.0, differ()) }
        }
        (Value::Array(_), _) | (Value::Object(_), _) => {
            if want == got {
                (1.0, None)
            } else {
                (0.0, differ())
            }
        }
        _ => {
            if normalize_value(want) == normalize_value(got) {
                (1.0, None)
            } else {
                (0.0, differ())
            }
        }
    }
}

/// A calendar date as ISO 8601 (`2026-12-04`), or `None` when `text` is not
/// one. Read: `2026-12-04` (a time after it is ignored), `2026/12/04`,
/// `Dec 4, 2026`, `December 4th, 2026`, `4 December 2026`, `4 Dec, 2026`.
/// A numeric `a/b/yyyy` (or with `-` or `.`) is read only when it is
/// unambiguous: `25/12/2026` is day first, `12/25/2026` month first, and
/// `12/04/2026` (both parts 12 or less, and different) is no date at all, so
/// it matches only the same text.
pub fn normalize_date(text: &str) -> Option<String> {
    use chrono::NaiveDate;
    let t = text.trim();
    if t.len() < 8 || t.len() > 40 {
        return None;
    }
    let iso = |d: NaiveDate| d.format("%Y-%m-%d").to_string();
    // ISO 8601, with or without a time after the date.
    if t.len() >= 10 && t.is_char_boundary(10) {
        let (date, rest) = t.split_at(10);
        if (rest.is_empty() || rest.starts_with('T') || rest.starts_with(' '))
            && let Ok(d) =
                NaiveDate::parse_from_str(date, "%Y-%m-%d").or_else(|_| NaiveDate::parse_from_str(date, "%Y/%m/%d"))
        {
            return Some(iso(d));
        }
    }
    // Numeric day and month: only when which is which is clear.
    let parts: Vec<&str> = t.split(['/', '-', '.']).collect();
    if parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())) {
        let (a, b, y): (u32, u32, i32) = (parts[0].parse().ok()?, parts[1].parse().ok()?, parts[2].parse().ok()?);
        if parts[2].len() != 4 {
            return None;
        }
        let (month, day) = match (a <= 12, b <= 12) {
            (true, false) => (a, b),
            (false, true) => (b, a),
            (true, true) if a == b => (a, b),
            _ => return None,
        };
        return NaiveDate::from_ymd_opt(y, month, day).map(iso);
    }
    // Month names: drop ordinal suffixes and a leading weekday, then try the usual orders.
    let words: Vec<String> = t
        .replace(',', " ")
        .split_whitespace()
        .map(|w| {
            let digits = w.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            let suffix = &w[digits.len()..];
            if !digits.is_empty()
                && digits.chars().all(|c| c.is_ascii_digit())
                && matches!(suffix.to_ascii_lowercase().as_str(), "st" | "nd" | "rd" | "th")
            {
                digits.to_string()
            } else {
                w.trim_end_matches('.').to_string()
            }
        })
        .collect();
    let words = match words.first() {
        Some(w) if words.len() == 4 && w.parse::<chrono::Weekday>().is_ok() => words[1..].to_vec(),
        _ => words,
    };
    let joined = words.join(" ");
    for format in ["%b %d %Y", "%B %d %Y", "%d %b %Y", "%d %B %Y", "%Y %b %d", "%Y %B %d"] {
        if let Ok(d) = NaiveDate::parse_from_str(&joined, format) {
            return Some(iso(d));
        }
    }
    None
}

/// The assignment of rows to columns that maximizes the total `similarity`
/// (rows: predicted items, columns: reference items): for each row, its
/// column, or `None` when there are more rows than columns and it got none.
/// The Hungarian algorithm (Kuhn–Munkres with potentials), O(n² m).
pub fn assign(similarity: &[Vec<f64>]) -> Vec<Option<usize>> {
    let rows = similarity.len();
    let cols = similarity.first().map_or(0, Vec::len);
    if rows == 0 || cols == 0 {
        return vec![None; rows];
    }
    if rows > cols {
        let transposed: Vec<Vec<f64>> = (0..cols).map(|j| (0..rows).map(|i| similarity[i][j]).collect()).collect();
        let by_col = assign(&transposed);
        let mut by_row = vec![None; rows];
        for (j, i) in by_col.into_iter().enumerate() {
            if let Some(i) = i {
                by_row[i] = Some(j);
            }
        }
        return by_row;
    }
    // Minimize cost = -similarity; rows <= cols. 1-based, column 0 is the sentinel.
    let cost = |i: usize, j: usize| -similarity[i - 1][j - 1];
    let (n, m) = (rows, cols);
    let mut u = vec![0.0f64; n + 1];
    let mut v = vec![0.0f64; m + 1];
    let mut owner = vec![0usize; m + 1];
    let mut way = vec![0usize; m + 1];
    for i in 1..=n {
        owner[0] = i;
        let mut j0 = 0usize;
        let mut min_to = vec![f64::INFINITY; m + 1];
        let mut used = vec![false; m + 1];
        loop {
            used[j0] = true;
            let i0 = owner[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0usize;
            for j in 1..=m {
                if !used[j] {
                    let reduced = cost(i0, j) - u[i0] - v[j];
                    if reduced < min_to[j] {
                        min_to[j] = reduced;
                        way[j] = j0;
                    }
                    if min_to[j] < delta {
                        delta = min_to[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=m {
                if used[j] {
                    u[owner[j]] += delta;
                    v[j] -= delta;
                } else {
                    min_to[j] -= delta;
                }
            }
            j0 = j1;
            if owner[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            owner[j0] = owner[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut by_row = vec![None; rows];
    for j in 1..=m {
        if owner[j] != 0 {
            by_row[owner[j] - 1] = Some(j - 1);
        }
    }
    by_row
}
