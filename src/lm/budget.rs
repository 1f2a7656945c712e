//! One usage meter for a run, shared by every LM role (task, teacher,
//! proposer, judge), and the budget it enforces.
//!
//! Every [`super::Lm`] handle of a run records into the same [`Meter`] under
//! its [`LmRole`], so cost and history count every call, whoever made it. While
//! a budget is set, a call is admitted only if it keeps the run within it:
//! calls are reserved before they are made, so `max_calls` is never exceeded;
//! tokens and dollars are known only once a reply arrives, so they can exceed
//! their limit by the calls already in flight (at most the LM's concurrency).
//!
//! Budgets count every completion asked for, replies served from the response
//! cache included, at list price: a run resumed from the cache then stops at
//! exactly the point an uninterrupted run would.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{LmError, TokenUsage};

/// What an LM is used for in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LmRole {
    /// The program's own predictions (scoring and selection).
    Task,
    /// Bootstrapping demos (`[optimizer.teacher]`, else the task LM).
    Teacher,
    /// Writing instructions and reflecting on failures (`[optimizer.proposer]`, else the task LM).
    Proposer,
    /// Grading predictions for a `judge` metric (`[metric.lm]`).
    Judge,
}

impl LmRole {
    pub const ALL: [LmRole; 4] = [LmRole::Task, LmRole::Teacher, LmRole::Proposer, LmRole::Judge];

    pub fn name(self) -> &'static str {
        match self {
            LmRole::Task => "task",
            LmRole::Teacher => "teacher",
            LmRole::Proposer => "proposer",
            LmRole::Judge => "judge",
        }
    }
}

/// Dollars per million tokens, from the role's `[lm]` table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Prices {
    pub input: Option<f64>,
    pub output: Option<f64>,
}

impl Prices {
    pub fn is_set(&self) -> bool {
        self.input.is_some() || self.output.is_some()
    }

    pub fn dollars(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        self.input.unwrap_or(0.0) * prompt_tokens as f64 / 1e6
            + self.output.unwrap_or(0.0) * completion_tokens as f64 / 1e6
    }
}

/// Limits on calls, tokens and dollars; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_calls: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_dollars: Option<f64>,
}

impl Budget {
    pub fn is_unlimited(&self) -> bool {
        self.max_calls.is_none() && self.max_tokens.is_none() && self.max_dollars.is_none()
    }

    /// The first limit `used` (plus `reserved` calls) has reached, in words.
    fn reached(&self, used: &RoleUsage, reserved: u64) -> Option<String> {
        if let Some(max) = self.max_calls
            && used.calls + reserved >= max
        {
            return Some(format!("{max} calls"));
        }
        if let Some(max) = self.max_tokens
            && used.tokens() >= max
        {
            return Some(format!("{max} tokens"));
        }
        if let Some(max) = self.max_dollars
            && used.list_dollars >= max
        {
            return Some(format!("${max:.2}"));
        }
        None
    }

    /// This budget less what is set aside for something else (each limit that is set).
    pub fn less(&self, calls: u64, tokens: u64, dollars: f64) -> Budget {
        Budget {
            max_calls: self.max_calls.map(|m| m.saturating_sub(calls)),
            max_tokens: self.max_tokens.map(|m| m.saturating_sub(tokens)),
            max_dollars: self.max_dollars.map(|m| (m - dollars).max(0.0)),
        }
    }
}

/// The budget for a stage of a run: in all, and per role.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub total: Budget,
    pub roles: BTreeMap<LmRole, Budget>,
}

/// What one role (or the run) used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RoleUsage {
    /// Completions asked for, cache hits included.
    pub calls: u64,
    /// Completions the model computed.
    pub provider_calls: u64,
    pub cache_hits: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Dollars billed: provider calls only (cached replies cost nothing).
    pub dollars: f64,
    /// Dollars at list price, cached replies included: what budgets count.
    pub list_dollars: f64,
}

impl RoleUsage {
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    fn add(&mut self, other: &RoleUsage) {
        self.calls += other.calls;
        self.provider_calls += other.provider_calls;
        self.cache_hits += other.cache_hits;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.dollars += other.dollars;
        self.list_dollars += other.list_dollars;
    }

    /// The usage since `earlier` (a snapshot of the same counter).
    pub fn since(&self, earlier: &RoleUsage) -> RoleUsage {
        RoleUsage {
            calls: self.calls - earlier.calls,
            provider_calls: self.provider_calls - earlier.provider_calls,
            cache_hits: self.cache_hits - earlier.cache_hits,
            prompt_tokens: self.prompt_tokens - earlier.prompt_tokens,
            completion_tokens: self.completion_tokens - earlier.completion_tokens,
            dollars: self.dollars - earlier.dollars,
            list_dollars: self.list_dollars - earlier.list_dollars,
        }
    }
}

/// Usage per role at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageByRole {
    pub roles: BTreeMap<LmRole, RoleUsage>,
}

impl UsageByRole {
    pub fn total(&self) -> RoleUsage {
        let mut total = RoleUsage::default();
        for usage in self.roles.values() {
            total.add(usage);
        }
        total
    }

    pub fn role(&self, role: LmRole) -> RoleUsage {
        self.roles.get(&role).copied().unwrap_or_default()
    }

    pub fn since(&self, earlier: &UsageByRole) -> UsageByRole {
        let roles = self.roles.iter().map(|(role, used)| (*role, used.since(&earlier.role(*role)))).collect();
        UsageByRole { roles }
    }
}

#[derive(Debug, Default)]
struct State {
    used: UsageByRole,
    /// Calls admitted and not yet recorded, per role.
    in_flight: BTreeMap<LmRole, u64>,
    /// Limits in force, measured from `base` (the usage when they were set).
    limits: Option<(Limits, UsageByRole)>,
}

/// The run's usage meter. Share it (in an `Arc`) between every LM handle.
#[derive(Debug, Default)]
pub struct Meter {
    state: Mutex<State>,
}

impl Meter {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain counters: still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enforces `limits` from now on, counting only what is used from now on.
    pub fn set_limits(&self, limits: Limits) {
        let mut state = self.lock();
        let base = state.used.clone();
        state.limits = Some((limits, base));
    }

    /// Raises the calls limit of the whole run and of `role` by `extra`, where
    /// there is one: spends calls set aside when the limits were set (the
    /// per-slice composition's dev score, which must not be left to whatever
    /// the search did not use).
    pub fn allow_more_calls(&self, role: LmRole, extra: u64) {
        let mut state = self.lock();
        if let Some((limits, _)) = &mut state.limits {
            for budget in std::iter::once(&mut limits.total).chain(limits.roles.get_mut(&role)) {
                if let Some(max) = &mut budget.max_calls {
                    *max += extra;
                }
            }
        }
    }

    /// Stops enforcing limits.
    pub fn clear_limits(&self) {
        self.lock().limits = None;
    }

    /// Asks to make one call as `role`: refused when the budget is spent.
    pub fn admit(&self, role: LmRole) -> Result<(), LmError> {
        let mut state = self.lock();
        if let Some((limits, base)) = &state.limits {
            let since = state.used.since(base);
            let role_in_flight = state.in_flight.get(&role).copied().unwrap_or(0);
            let all_in_flight: u64 = state.in_flight.values().sum();
            if let Some(limit) = limits.total.reached(&since.total(), all_in_flight) {
                return Err(LmError::BudgetExhausted { scope: "the run".into(), limit });
            }
            if let Some(budget) = limits.roles.get(&role)
                && let Some(limit) = budget.reached(&since.role(role), role_in_flight)
            {
                return Err(LmError::BudgetExhausted { scope: format!("the {} role", role.name()), limit });
            }
        }
        *state.in_flight.entry(role).or_default() += 1;
        Ok(())
    }

    /// Records an admitted call's outcome (`usage` is `None` when it failed).
    pub fn record(&self, role: LmRole, prices: &Prices, usage: Option<(TokenUsage, bool)>) {
        let mut state = self.lock();
        if let Some(n) = state.in_flight.get_mut(&role) {
            *n = n.saturating_sub(1);
        }
        let Some((tokens, cache_hit)) = usage else {
            return;
        };
        let used = state.used.roles.entry(role).or_default();
        used.calls += 1;
        if cache_hit {
            used.cache_hits += 1;
        } else {
            used.provider_calls += 1;
        }
        used.prompt_tokens += tokens.prompt_tokens;
        used.completion_tokens += tokens.completion_tokens;
        let dollars = prices.dollars(tokens.prompt_tokens, tokens.completion_tokens);
        used.list_dollars += dollars;
        if !cache_hit {
            used.dollars += dollars;
        }
    }

    pub fn usage(&self) -> UsageByRole {
        self.lock().used.clone()
    }

    /// Restores counters saved in a checkpoint (the meter of a resumed run).
    pub fn restore(&self, used: UsageByRole) {
        self.lock().used = used;
    }
}
