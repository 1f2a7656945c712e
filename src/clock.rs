//! The time promptloop takes as now: the system clock, or `PROMPTLOOP_NOW`
//! (an RFC 3339 time) when a simulation sets it — `bench/weekly/` replays
//! weeks that have not happened yet, and a pull refuses a window that ends
//! after now. And how promptloop waits between tries: a [`Sleeper`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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

/// How a client waits: tokio's timer by default. A test substitutes one that
/// records each wait and returns at once, so retries after a backoff or a
/// Retry-After are checked without the clock.
#[derive(Clone)]
pub struct Sleeper(Arc<dyn Fn(Duration) -> futures::future::BoxFuture<'static, ()> + Send + Sync>);

impl Sleeper {
    /// Waits with `sleep`: it is handed each duration and its future awaited.
    pub fn new<F, Fut>(sleep: F) -> Self
    where
        F: Fn(Duration) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Sleeper(Arc::new(move |duration| Box::pin(sleep(duration))))
    }

    /// Real time, through tokio's timer.
    pub fn tokio() -> Self {
        Self::new(tokio::time::sleep)
    }

    pub async fn sleep(&self, duration: Duration) {
        (self.0)(duration).await
    }
}

impl Default for Sleeper {
    fn default() -> Self {
        Self::tokio()
    }
}

impl fmt::Debug for Sleeper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sleeper")
    }
}
