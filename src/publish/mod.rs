//! Where a run's result leaves the machine: the bot branch (`git`), the pull
//! request (`github`), the Slack message (`slack`), and the GitHub Actions
//! job summary and outputs (`actions`). Only this module and `lm/` touch the
//! network; each part degrades to writing files when it has no token.

pub mod actions;
pub mod git;
pub mod github;
pub mod slack;
