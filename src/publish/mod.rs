//! Where a run's result leaves the machine: the bot branch (`git`), the pull
//! request (`github`), the Slack message (`slack`), and the GitHub Actions
//! job summary and outputs (`actions`). Only this module and `lm/` touch the
//! network; each part degrades to writing files when it has no token.

pub mod actions;
pub mod git;
pub mod github;
pub mod slack;

use std::fmt;

/// What a secret prints as, wherever it would otherwise appear.
pub const REDACTED: &str = "***";

/// A token or webhook URL: sent where it must go, printed as `***`, never
/// serialized (it implements neither `Display` nor `Serialize`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret from environment variable `var`: `None` when unset or blank.
    pub fn from_env(var: &str) -> Option<Secret> {
        std::env::var(var).ok().filter(|v| !v.trim().is_empty()).map(|v| Secret(v.trim().to_string()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the secret replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        let secret = self.0.trim();
        if secret.is_empty() { text.to_string() } else { text.replace(secret, REDACTED) }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}
