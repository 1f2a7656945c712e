//! promptloop: prompt engineering as a weekly, measured build.
//!
//! See ARCHITECTURE.md for the map of the loop through these modules.

pub mod child;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dataset;
pub mod eval;
pub mod keyed;
pub mod lm;
pub mod logs;
pub mod metric;
pub mod optimize;
pub mod pipeline;
pub mod program;
pub mod publish;
pub mod report;
pub mod schedule;
pub mod serve;
