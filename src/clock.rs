//! The time promptloop takes as now: the system clock, or `PROMPTLOOP_NOW`
//! (an RFC 3339 time) when a simulation sets it — `bench/weekly/` replays
//! weeks that have not happened yet, and a pull refuses a window that ends
//! after now.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};

/// The variable that sets the clock.
pub const NOW_VAR: &str = "PROMPTLOOP_NOW";

pub fn now() -> Result<DateTime<Utc>> {
    match std::env::var(NOW_VAR) {
        Ok(text) if !text.trim().is_empty() => DateTime::parse_from_rfc3339(text.trim())
            .map(|t| t.with_timezone(&Utc))
            .with_context(|| format!("{NOW_VAR} must be an RFC 3339 time such as 2027-01-04T00:00:00Z")),
        _ => Ok(Utc::now()),
    }
}
