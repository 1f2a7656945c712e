//! The small triage pipeline the pull tests read: files under `logs/`, into
//! `datasets/triage/examples.jsonl`, no optimizer.

pub const PULL_PIPELINE: &str = r#"
name = "triage"
seed = 7

[lm]
provider = "embedded"
model = "model.gguf"

[dataset]
path = "datasets/triage/examples.jsonl"

[source]
kind = "files"
paths = ["logs/*.jsonl*"]

[signatures.triage]
instructions = "Route the message."
[signatures.triage.inputs]
message = { type = "string" }
[signatures.triage.outputs]
queue = { type = "enum", values = ["cards", "payments", "security", "transfers"] }

[[program.predictors]]
name = "route"
signature = "triage"

[metric]
kind = "exact_match"
fields = ["queue"]

[optimizer]
kind = "none"
"#;
