//! Predictions another system made — production's recorded answers, a peer
//! tool's run — read from a JSON Lines file so that [`super::evaluate_recorded`]
//! can score them with the pipeline's own metric, on the same split.
//!
//! One line per example: `{"id": "…", "outputs": {…}}`, or
//! `{"id": "…", "error": "why there is no prediction"}` (with
//! `"format_error": true` when the reply was there but did not parse).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

/// One recorded prediction, or the reason there is none.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    Outputs(Map<String, Value>),
    Failed { reason: String, format_error: bool },
}

/// The predictions of one file, by example id.
#[derive(Debug, Clone)]
pub struct RecordedPredictions {
    pub path: PathBuf,
    pub by_id: HashMap<String, Recorded>,
}

impl RecordedPredictions {
    /// Reads the file; any line that is not one of the two shapes is an error
    /// naming the file, the line and the fix (a score computed from a file
    /// read half-way would not be honest).
    pub fn load(path: &Path) -> Result<RecordedPredictions> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the predictions file {}", path.display()))?;
        RecordedPredictions::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<RecordedPredictions> {
        let mut by_id = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let n = index + 1;
            let at = || format!("{}:{n}", path.display());
            if line.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(line)
                .map_err(|e| anyhow::anyhow!("{}: not a JSON object ({e}); write one object per line", at()))?;
            let Value::Object(mut record) = value else {
                bail!("{}: a line must be a JSON object {{\"id\": …, \"outputs\": {{…}}}}", at());
            };
            let id = match record.remove("id") {
                Some(Value::String(id)) if !id.is_empty() => id,
                Some(other) => bail!("{}: `id` must be a non-empty string, found {other}", at()),
                None => bail!("{}: no `id`; every line names the example it predicts", at()),
            };
            let outputs = record.remove("outputs");
            let error = record.remove("error");
            let format_error = match record.remove("format_error") {
                None => false,
                Some(Value::Bool(b)) => b,
                Some(other) => bail!("{}: `format_error` must be true or false, found {other}", at()),
            };
            if let Some(field) = record.keys().next() {
                bail!("{}: unknown field `{field}`; a line has `id` and either `outputs` or `error`", at());
            }
            let recorded = match (outputs, error) {
                (Some(Value::Object(outputs)), None) => {
                    if format_error {
                        bail!("{}: `format_error` goes with `error`, not with `outputs`", at());
                    }
                    Recorded::Outputs(outputs)
                }
                (Some(other), None) => bail!("{}: `outputs` must be an object of output fields, found {other}", at()),
                (None, Some(Value::String(reason))) => Recorded::Failed { reason, format_error },
                (None, Some(other)) => bail!("{}: `error` must be a string, found {other}", at()),
                (Some(_), Some(_)) => bail!("{}: both `outputs` and `error`; keep one", at()),
                (None, None) => bail!("{}: neither `outputs` nor `error` for `{id}`", at()),
            };
            if let Some(earlier) = first_line.get(&id) {
                bail!("{}: `{id}` again (first on line {earlier}); keep one prediction per example", at());
            }
            first_line.insert(id.clone(), n);
            by_id.insert(id, recorded);
        }
        if by_id.is_empty() {
            bail!("{}: no predictions in the file", path.display());
        }
        Ok(RecordedPredictions { path: path.to_path_buf(), by_id })
    }

    /// The ids no example of the dataset has, sorted.
    pub fn unknown_ids<'a>(&'a self, known: &std::collections::HashSet<&str>) -> Vec<&'a str> {
        let mut unknown: Vec<&str> = self.by_id.keys().map(String::as_str).filter(|id| !known.contains(id)).collect();
        unknown.sort_unstable();
        unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RecordedPredictions> {
        RecordedPredictions::parse(Path::new("preds.jsonl"), text)
    }

    #[test]
    fn reads_outputs_and_failures() {
        let p = parse(
            "{\"id\": \"a\", \"outputs\": {\"queue\": \"cards\"}}\n\n{\"id\": \"b\", \"error\": \"no parse\", \"format_error\": true}\n",
        )
        .unwrap();
        assert_eq!(p.by_id.len(), 2);
        assert!(matches!(&p.by_id["a"], Recorded::Outputs(o) if o["queue"] == "cards"));
        assert_eq!(p.by_id["b"], Recorded::Failed { reason: "no parse".into(), format_error: true });
    }

    #[test]
    fn every_mistake_names_the_line() {
        let cases = [
            ("not json", "preds.jsonl:1: not a JSON object"),
            ("[1]", "preds.jsonl:1: a line must be a JSON object"),
            ("{\"outputs\": {}}", "preds.jsonl:1: no `id`"),
            ("{\"id\": 3, \"outputs\": {}}", "`id` must be a non-empty string"),
            ("{\"id\": \"a\"}", "neither `outputs` nor `error`"),
            ("{\"id\": \"a\", \"outputs\": {}, \"error\": \"x\"}", "both `outputs` and `error`"),
            ("{\"id\": \"a\", \"outputs\": \"cards\"}", "`outputs` must be an object"),
            ("{\"id\": \"a\", \"outputs\": {}, \"score\": 1}", "unknown field `score`"),
            ("{\"id\": \"a\", \"outputs\": {}, \"format_error\": true}", "`format_error` goes with `error`"),
            (
                "{\"id\": \"a\", \"outputs\": {}}\n{\"id\": \"a\", \"error\": \"x\"}",
                "preds.jsonl:2: `a` again (first on line 1)",
            ),
            ("\n", "no predictions in the file"),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }
}
