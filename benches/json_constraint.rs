//! What constrained decoding adds per step: checking every vocabulary token
//! against a JSON state.
//!
//! cargo bench --bench json_constraint   (needs the model: scripts/setup-model.sh)

use std::path::PathBuf;
use std::time::Instant;

use promptloop::lm::local::DEFAULT_MODEL_PATH;
use promptloop::lm::local::constrain::Constraint;
use promptloop::lm::local::tokenizer::Tokenizer;
use promptloop::lm::{OutputTemplate, Segment};
use serde_json::json;

fn main() -> anyhow::Result<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL_PATH);
    let mut file = std::io::BufReader::new(std::fs::File::open(&path)?);
    let content = candle_core::quantized::gguf_file::Content::read(&mut file)?;
    let tokenizer = Tokenizer::from_gguf(&content)?;
    let vocab = tokenizer.vocab_size() as u32;
    let ticket = json!({
        "type": "object",
        "properties": {
            "category": {"type": "string", "enum": ["billing", "technical", "account"]},
            "items": {"type": "array", "maxItems": 3, "items": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 40}, "quantity": {"type": "integer"}},
                "required": ["name", "quantity"], "additionalProperties": false}},
            "note": {"type": "string", "maxLength": 60}
        },
        "required": ["category", "items"], "additionalProperties": false
    });
    let template = OutputTemplate {
        segments: vec![Segment::Json {
            schema: json!({"type": "object", "properties": {"ticket": ticket}, "required": ["ticket"]}),
        }],
    };
    for (label, prefix) in [
        ("inside a string", r#"{"ticket": {"category": "billing", "items": [{"name": "blue m"#),
        ("choosing a key", r#"{"ticket": {"category": "billing", "items": [{"name": "mug", "quantity": 2}], "#),
        ("inside a number", r#"{"ticket": {"category": "billing", "items": [{"name": "mug", "quantity": 1"#),
    ] {
        let mut c = Constraint::new(&template);
        c.push(prefix.as_bytes());
        let rounds = 20;
        let start = Instant::now();
        let mut allowed = 0usize;
        for _ in 0..rounds {
            allowed = (0..vocab).filter(|&t| c.allows(tokenizer.token_bytes(t))).count();
        }
        let per_pass = start.elapsed() / rounds;
        println!(
            "{label}: {allowed} of {vocab} tokens allowed; {:.0} µs per pass over the vocabulary, {:.0} ns per token",
            per_pass.as_secs_f64() * 1e6,
            per_pass.as_secs_f64() * 1e9 / vocab as f64
        );
    }
    Ok(())
}
