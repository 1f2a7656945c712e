//! Instruction candidates for a predictor: drafts written from the training
//! data itself, and proposals by the proposer LM.
//!
//! A drafted instruction needs no model: for an enum output it names, for each
//! label, the words that most distinguish its training inputs from the others'
//! (smoothed log-odds), so even a small task model is told what each label is
//! about in the users' own words. A proposal asks the proposer LM, grounded in
//! a summary of the dataset, a description of the program, labeled examples
//! and a tip that varies per proposal. Both are scored the same way by the
//! search; a proposal whose reply does not parse (after the adapter's retry in
//! the other format) is dropped with its reason.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value};

use super::demos::{by_label, label_field};
use crate::config::Module;
use crate::dataset::Example;
use crate::lm::LmError;
use crate::program::predictor::{PredictSettings, Predictor};
use crate::program::signature::{Field, FieldType, Signature};

/// One instruction candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    /// Where it came from: `data: clues`, `lm: <tip>`, ...
    pub origin: String,
    pub instruction: String,
}

/// Tips that vary the proposer's angle, one per proposal in turn.
pub const TIPS: &[&str] = &[
    "Say plainly what distinguishes each possible answer.",
    "Be concise: a few short sentences.",
    "Write as an experienced specialist instructing a new colleague.",
    "Mention the mistakes that are easy to make and how to avoid them.",
    "Say what to do when the input is ambiguous.",
    "Keep it simple and direct.",
];

const STOPWORDS: &[&str] = &[
    "a", "an", "the", "i", "my", "me", "is", "are", "was", "be", "to", "of", "and", "or", "in", "on", "for", "it",
    "this", "that", "do", "does", "did", "can", "could", "how", "what", "why", "when", "you", "your", "have", "has",
    "with", "at", "from", "not", "no", "yes", "am", "there", "get", "will", "would", "please", "if", "so", "but",
    "just", "been", "still", "any", "as", "by", "we", "they", "their", "which", "where", "about", "should", "need",
    "want", "know", "some", "all", "much", "many", "one", "out", "up", "its", "im", "dont", "cant", "help",
];

fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 2 && !STOPWORDS.contains(w) && !w.chars().all(|c| c.is_ascii_digit()))
        .map(str::to_string)
        .collect()
}

/// The words of `text` worth a hint: no stopwords, no numbers, each once, in order.
pub fn content_words(text: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    words(text).into_iter().filter(|w| seen.insert(w.clone())).collect()
}

fn input_text(predictor: &Predictor, example: &Example) -> String {
    predictor
        .signature
        .inputs
        .iter()
        .filter_map(|f| example.inputs.get(&f.name))
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// For each label of the predictor's enum output, up to `k` words that most
/// distinguish its training inputs (each word counted once per example), in
/// the enum's order. `None` without an enum output.
pub fn label_clues(predictor: &Predictor, train: &[Example], k: usize) -> Option<Vec<(String, Vec<String>)>> {
    let (_, values) = label_field(predictor)?;
    let groups = by_label(predictor, train)?;
    let mut per_label: BTreeMap<usize, HashMap<String, f64>> = BTreeMap::new();
    let mut overall: HashMap<String, f64> = HashMap::new();
    let mut docs: BTreeMap<usize, f64> = BTreeMap::new();
    for (label, examples) in &groups {
        for e in examples {
            let unique: HashSet<String> = words(&input_text(predictor, e)).into_iter().collect();
            for w in unique {
                *per_label.entry(*label).or_default().entry(w.clone()).or_default() += 1.0;
                *overall.entry(w).or_default() += 1.0;
            }
            *docs.entry(*label).or_default() += 1.0;
        }
    }
    let total_docs: f64 = docs.values().sum();
    let mut out = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let Some(counts) = per_label.get(&i) else {
            out.push((value.clone(), Vec::new()));
            continue;
        };
        let n_in = docs[&i];
        let n_out = (total_docs - n_in).max(1.0);
        let mut scored: Vec<(f64, &String)> = counts
            .iter()
            .filter(|(_, c)| **c >= 2.0_f64.min(n_in))
            .map(|(w, c)| {
                let outside = overall[w] - c;
                // Smoothed log-odds of appearing in this label's inputs versus the others', weighted by support.
                let odds = ((c + 0.5) / (n_in + 1.0)).ln() - ((outside + 0.5) / (n_out + 1.0)).ln();
                (odds * c.sqrt(), w)
            })
            .filter(|(s, _)| *s > 0.0)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
        out.push((value.clone(), scored.into_iter().take(k).map(|(_, w)| w.clone()).collect()));
    }
    Some(out)
}

/// Instructions drafted from train for a predictor whose current instruction
/// is `base`: the base with each label's clue words, and a compact list of
/// the labels with their clues. Empty without an enum output.
pub fn data_drafts(predictor: &Predictor, base: &str, train: &[Example]) -> Vec<Draft> {
    let Some(clues) = label_clues(predictor, train, 5) else {
        return Vec::new();
    };
    if clues.iter().all(|(_, w)| w.is_empty()) {
        return Vec::new();
    }
    let field = label_field(predictor).map(|(f, _)| f.to_string()).unwrap_or_default();
    let lines: Vec<String> = clues
        .iter()
        .filter(|(_, w)| !w.is_empty())
        .map(|(label, w)| format!("{label}: often mentions {}", w.join(", ")))
        .collect();
    let labels: Vec<&str> = clues.iter().map(|(l, _)| l.as_str()).collect();
    vec![
        Draft {
            origin: "data: instruction + label clues".into(),
            instruction: format!(
                "{}\nWords that often point to each {field} in past messages:\n{}",
                base.trim(),
                lines.join("\n")
            ),
        },
        Draft {
            origin: "data: label clues".into(),
            instruction: format!("Answer with exactly one {field}: {}.\n{}", labels.join(", "), lines.join("\n")),
        },
    ]
}

/// A deterministic summary of the training data for the proposer.
pub fn dataset_summary(predictor: &Predictor, train: &[Example]) -> String {
    let mut lines = vec![format!("{} training examples.", train.len())];
    if let Some((field, values)) = label_field(predictor) {
        let groups = by_label(predictor, train).unwrap_or_default();
        let counts: Vec<String> =
            values.iter().enumerate().map(|(i, v)| format!("{v} {}", groups.get(&i).map_or(0, Vec::len))).collect();
        lines.push(format!("`{field}` per value: {}.", counts.join(", ")));
    }
    let lengths: Vec<usize> = train.iter().map(|e| input_text(predictor, e).split_whitespace().count()).collect();
    if !lengths.is_empty() {
        let mean = lengths.iter().sum::<usize>() as f64 / lengths.len() as f64;
        lines.push(format!("Inputs are {mean:.0} words long on average."));
    }
    lines.join(" ")
}

/// The program's predictor as the proposer sees it.
pub fn describe_predictor(predictor: &Predictor) -> String {
    let field = |f: &Field| format!("`{}` ({}): {}", f.name, type_name(&f.ty), f.description);
    let inputs: Vec<String> = predictor.signature.inputs.iter().map(field).collect();
    let outputs: Vec<String> = predictor.signature.outputs.iter().map(field).collect();
    format!(
        "A {} step named `{}`. Inputs: {}. Outputs: {}.",
        match predictor.module {
            Module::Predict => "single-call",
            Module::ChainOfThought => "reason-then-answer",
            Module::React => "tool-using",
        },
        predictor.name,
        inputs.join("; "),
        outputs.join("; ")
    )
}

fn type_name(ty: &FieldType) -> String {
    match ty {
        FieldType::Enum { values } => format!("one of {}", values.join(", ")),
        other => format!("{other:?}").split([' ', '{', '(']).next().unwrap_or("value").to_lowercase(),
    }
}

/// The predictor that asks the proposer for an instruction.
fn proposer_predictor() -> Predictor {
    let string = |name: &str, description: &str| Field::new(name, FieldType::String, description);
    Predictor {
        name: "propose_instruction".into(),
        module: Module::Predict,
        signature: Signature {
            inputs: vec![
                string("dataset_summary", "what the training data looks like"),
                string("program_description", "the step whose instruction is wanted"),
                string("examples", "inputs with their correct outputs"),
                string("current_instruction", "the instruction the step has now"),
                string("tip", "an angle to take"),
            ],
            outputs: vec![string("proposed_instruction", "the new instruction for the step, in plain prose")],
        },
        instructions: "You write the instruction for one step of a language-model program. Use the data summary, \
                       the step's description and the examples to write an instruction that makes the step answer \
                       correctly. Follow the tip."
            .into(),
        demos: Vec::new(),
    }
}

/// Asks the proposer LM for one instruction with `tip`. `Ok(Err(reason))` when
/// the reply is unusable (it does not parse, or is empty or too long).
pub async fn lm_proposal(
    predictor: &Predictor,
    train: &[Example],
    settings: &PredictSettings,
    tip: &str,
    index: u32,
) -> Result<Result<Draft, String>, LmError> {
    let examples: Vec<String> = train
        .iter()
        .take(6)
        .map(|e| {
            let input = input_text(predictor, e);
            let output: Vec<String> = predictor
                .signature
                .outputs
                .iter()
                .filter_map(|f| e.outputs.get(&f.name).map(|v| format!("{}: {}", f.name, plain(v))))
                .collect();
            format!("{input} -> {}", output.join(", "))
        })
        .collect();
    let mut inputs = Map::new();
    inputs.insert("dataset_summary".into(), dataset_summary(predictor, train).into());
    inputs.insert("program_description".into(), describe_predictor(predictor).into());
    inputs.insert("examples".into(), examples.join("\n").into());
    inputs.insert("current_instruction".into(), predictor.instructions.clone().into());
    inputs.insert("tip".into(), tip.into());
    let call = proposer_predictor().call(settings, &inputs, Some(index)).await?;
    let Some(outputs) = call.outputs else {
        return Ok(Err(call.error.unwrap_or_else(|| "no reply".into())));
    };
    let text = outputs.get("proposed_instruction").map(plain).unwrap_or_default();
    let text = text.trim();
    if let Some(problem) = instruction_problem(text) {
        return Ok(Err(format!("the proposal {problem}")));
    }
    Ok(Ok(Draft { origin: format!("lm: {tip}"), instruction: text.to_string() }))
}

/// Why an instruction an LM wrote cannot be used as one, if it cannot: too
/// short or too long, the prompt's field markers copied back, or one line
/// repeated over and over (what a small model writes when it loses the thread).
pub fn instruction_problem(text: &str) -> Option<String> {
    let words = text.split_whitespace().count();
    if words < 4 {
        return Some(format!("is too short to be an instruction ({words} word{})", if words == 1 { "" } else { "s" }));
    }
    if text.len() > 4000 {
        return Some(format!("is {} characters long; at most 4000 are kept", text.len()));
    }
    if text.contains("##") {
        return Some("copies the prompt's field markers (`##`) instead of writing an instruction".into());
    }
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let distinct: HashSet<&str> = lines.iter().copied().collect();
    if lines.len() >= 4 && distinct.len() * 2 < lines.len() {
        return Some(format!("repeats itself ({} lines, {} different)", lines.len(), distinct.len()));
    }
    let vocabulary: HashSet<String> =
        text.split(|c: char| !c.is_alphabetic()).filter(|w| w.chars().count() >= 3).map(str::to_lowercase).collect();
    if vocabulary.len() < 3 {
        return Some(format!("has {} different words; an instruction needs more", vocabulary.len()));
    }
    None
}

/// A value as plain text: strings without their quotes.
pub fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
