//! What changed in the prompts, as a reviewer reads it: each predictor's
//! instructions and demos as plain lines, and a unified diff between
//! production and the candidate.

use serde_json::{Map, Value};
use similar::TextDiff;

use crate::program::Program;
use crate::program::predictor::DemoSource;

/// A program as reviewable lines: per predictor, its instructions and then
/// one line per demo field.
pub fn program_text(program: &Program) -> String {
    let mut text = String::new();
    for predictor in &program.predictors {
        text.push_str(&format!("## {}\n", predictor.name));
        text.push_str("instructions:\n");
        for line in predictor.instructions.lines() {
            text.push_str(&format!("  {line}\n"));
        }
        text.push_str(&format!("demos: {}\n", predictor.demos.len()));
        for (index, demo) in predictor.demos.iter().enumerate() {
            let source = match demo.source {
                DemoSource::Bootstrapped => "bootstrapped",
                DemoSource::Labeled => "labeled",
            };
            text.push_str(&format!("  {}. {} ({source})\n", index + 1, demo.example_id));
            push_fields(&mut text, &demo.inputs);
            push_fields(&mut text, &demo.outputs);
        }
        text.push('\n');
    }
    text
}

fn push_fields(text: &mut String, fields: &Map<String, Value>) {
    for (name, value) in fields {
        let value = match value {
            Value::String(s) => s.replace('\n', " "),
            other => other.to_string(),
        };
        text.push_str(&format!("     {name}: {value}\n"));
    }
}

/// The unified diff from `production` to `candidate` (three lines of
/// context), or an empty string when they are the same.
pub fn unified(production: &str, candidate: &str) -> String {
    if production == candidate {
        return String::new();
    }
    TextDiff::from_lines(production, candidate)
        .unified_diff()
        .context_radius(3)
        .header("production", "candidate")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_shows_changed_lines_with_context() {
        let before = "## route\ninstructions:\n  Route it.\ndemos: 0\n";
        let after = "## route\ninstructions:\n  Route it.\ndemos: 1\n  1. ex-1 (labeled)\n     message: hi\n";
        let diff = unified(before, after);
        assert!(diff.starts_with("--- production\n+++ candidate\n"), "{diff}");
        assert!(diff.contains("-demos: 0\n+demos: 1\n+  1. ex-1 (labeled)\n"), "{diff}");
        assert_eq!(unified(before, before), "");
    }
}
