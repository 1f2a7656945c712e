//! Modules: how a stage turns its signature into LM calls.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Module {
    /// One call: inputs in, outputs out.
    Predict,
    /// One call whose reply reasons step by step (a `reasoning` output) before the outputs.
    ChainOfThought,
    /// A tool loop: `<stage>.react` picks a tool (or `finish`) step by step,
    /// then `<stage>.extract` (chain of thought) writes the outputs from the trajectory.
    React,
}
