//! promptloop: prompt engineering as a weekly, measured build.
//!
//! See ARCHITECTURE.md for the map of the loop through these modules.

pub mod lm;
