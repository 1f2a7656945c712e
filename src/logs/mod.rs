//! From production logs to dataset candidates: read records from a source,
//! map each log shape onto [`LogRecord`], anonymize, detect signals,
//! deduplicate and sample. `pull.rs` chains the stages; the dataset store
//! (`crate::dataset`) merges what survives.

pub mod anonymize;
pub mod dedup;
pub mod formats;
pub mod pull;
pub mod record;
pub mod sample;
pub mod signals;
pub mod sources;

pub use record::{Feedback, LogRecord};
