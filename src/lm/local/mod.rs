//! The embedded model: a GGUF llama-architecture model run in-process with candle.
//!
//! [`LocalEngine`] loads the weights and the tokenizer from one GGUF file and
//! answers chat requests with them. It keeps the attention state of the last
//! sequence it ran, so consecutive prompts that share a prefix (the same
//! instructions and demos over many inputs) compute that prefix once. With a
//! reply template and constrained decoding on, replies follow the template's
//! segments by construction.
//!
//! A generation can be stopped: [`Cancel`] is checked before each token is
//! computed, and the async [`LanguageModel::complete`] sets it when its future
//! is dropped, so a caller that gives up stops the work it asked for.

pub mod constrain;
pub mod gguf_model;
pub mod json_constrain;
pub mod kernels;
pub mod tokenizer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use candle_core::quantized::gguf_file;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use self::constrain::{Constraint, Ending, Step};
pub use self::gguf_model::PrefixStats;
use self::gguf_model::{LlamaModel, ModelOptions};
pub use self::tokenizer::Tokenizer;
use super::{
    ChatMessage, LanguageModel, LmDescription, LmError, LmRequest, LmResponse, OutputTemplate, Segment, TokenUsage,
};

/// Where `scripts/setup-model.sh` puts the default model, relative to the project root.
pub const DEFAULT_MODEL_PATH: &str = ".promptloop/models/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Worker threads (default: all cores).
    pub threads: Option<usize>,
    /// Enforce the request's reply template while decoding.
    pub constrained: bool,
    /// Memory for the attention state of recent prompt prefixes, in MiB
    /// (0 turns prefix reuse off).
    pub prefix_cache_mb: usize,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self { threads: None, constrained: true, prefix_cache_mb: 256 }
    }
}

/// Asks a generation to stop. Once set, the generation ends before it computes
/// its next token, with an error saying it was cancelled.
#[derive(Clone, Default)]
pub struct Cancel(Arc<(Mutex<bool>, Condvar)>);

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        let (set, changed) = &*self.0;
        *set.lock().unwrap_or_else(|p| p.into_inner()) = true;
        changed.notify_all();
    }

    pub fn is_cancelled(&self) -> bool {
        *self.0.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks until cancelled or `timeout` has passed; whether it was cancelled.
    pub fn wait(&self, timeout: Duration) -> bool {
        let (set, changed) = &*self.0;
        let guard = set.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = changed.wait_timeout_while(guard, timeout, |set| !*set).unwrap_or_else(|p| p.into_inner());
        *guard
    }

    /// A guard that cancels when dropped, unless [`CancelOnDrop::disarm`]ed first.
    pub fn on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(Some(self.clone()))
    }
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Cancel").field(&self.is_cancelled()).finish()
    }
}

/// Cancels its [`Cancel`] when dropped: held by whatever waits for a
/// generation, so that giving up the wait stops the generation.
#[must_use = "dropping the guard cancels at once"]
pub struct CancelOnDrop(Option<Cancel>);

impl CancelOnDrop {
    /// The wait ended normally: dropping the guard no longer cancels.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            cancel.cancel();
        }
    }
}

/// Called before each token a generation computes, with the number of reply
/// tokens produced so far (0 at the first) and the generation's [`Cancel`]:
/// lets a test watch, or hold, a generation between tokens.
pub type StepHook = Arc<dyn Fn(usize, &Cancel) + Send + Sync>;

/// The error a cancelled generation ends with.
#[derive(Debug)]
struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the generation was cancelled")
    }
}

impl std::error::Error for Cancelled {}

/// The embedded model. One generation runs at a time; concurrent calls queue.
pub struct LocalEngine {
    inner: Arc<Mutex<Engine>>,
    tokenizer: Arc<Tokenizer>,
    description: LmDescription,
    context: usize,
}

struct Engine {
    model: LlamaModel,
    tokenizer: Arc<Tokenizer>,
    constrained: bool,
    /// The current generation's cancellation.
    cancel: Cancel,
    hook: Option<StepHook>,
}

impl LocalEngine {
    /// Loads the model: weights as stored in the file (Q4_1 and Q8_0 run
    /// natively), its own pool of worker threads, and a prefix store of the
    /// configured size.
    pub fn load(path: &Path, options: LocalOptions) -> Result<LocalEngine> {
        if !path.is_file() {
            anyhow::bail!(
                "the embedded model was expected at {} but there is no file there; \
                 run scripts/setup-model.sh to download it (SmolLM2-135M-Instruct, Q4_1 GGUF, into .promptloop/models/)",
                path.display()
            );
        }
        let mut file =
            std::io::BufReader::new(std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?);
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| anyhow!("{} is not a readable GGUF file: {e}", path.display()))?;
        let tokenizer = Arc::new(Tokenizer::from_gguf(&content).context("building the tokenizer")?);
        let model_options = ModelOptions {
            threads: options.threads,
            prefix_cache_bytes: options.prefix_cache_mb.saturating_mul(1 << 20),
        };
        let model = LlamaModel::load(&content, &mut file, model_options).context("loading the model weights")?;
        if tokenizer.vocab_size() > model.cfg.vocab {
            anyhow::bail!("the tokenizer has {} tokens but the model only {}", tokenizer.vocab_size(), model.cfg.vocab);
        }
        let name = content
            .metadata
            .get("general.name")
            .and_then(|v| v.to_string().ok())
            .filter(|s| !s.trim().is_empty())
            .cloned()
            .unwrap_or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
        let description = LmDescription {
            provider: "embedded".into(),
            model: name,
            endpoint: path.file_name().map(|s| s.to_string_lossy().into_owned()),
            constrained_decoding: options.constrained,
            response_format: None,
        };
        let context = model.cfg.context;
        Ok(LocalEngine {
            inner: Arc::new(Mutex::new(Engine {
                model,
                tokenizer: tokenizer.clone(),
                constrained: options.constrained,
                cancel: Cancel::new(),
                hook: None,
            })),
            tokenizer,
            description,
            context,
        })
    }

    /// How much prompt computation prefix reuse has saved so far.
    pub fn prefix_stats(&self) -> PrefixStats {
        match self.inner.lock() {
            Ok(engine) => engine.model.prefix_stats(),
            Err(poisoned) => poisoned.into_inner().model.prefix_stats(),
        }
    }

    /// The model's context window in tokens.
    pub fn context_size(&self) -> usize {
        self.context
    }

    /// The prompt tokens for these messages, and the range each message's
    /// tokens (role line and content) occupy in them.
    pub fn prompt_tokens(&self, messages: &[ChatMessage]) -> (Vec<u32>, Vec<std::ops::Range<usize>>) {
        self.tokenizer.chat_prompt(messages)
    }

    /// The id of `<|im_end|>`, the token that closes a chat turn.
    pub fn end_of_turn_token(&self) -> u32 {
        self.tokenizer.im_end
    }

    /// Tokens of plain text (control-token spellings are plain text here).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(text)
    }

    /// Runs one request on the calling thread.
    pub fn complete_blocking(&self, request: &LmRequest) -> Result<LmResponse, LmError> {
        self.complete_blocking_cancellable(request, &Cancel::new())
    }

    /// Runs one request on the calling thread until it ends or `cancel` is set
    /// (checked before each token; a cancelled request is an error).
    pub fn complete_blocking_cancellable(&self, request: &LmRequest, cancel: &Cancel) -> Result<LmResponse, LmError> {
        let mut engine = self.lock();
        engine.cancel = cancel.clone();
        engine.generate(request)
    }

    /// Installs (or with `None` removes) the hook called before each token.
    pub fn set_step_hook(&self, hook: Option<StepHook>) {
        self.lock().hook = hook;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Engine> {
        match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => {
                // A panic mid-generation may have left the cache half-written.
                let mut guard = poisoned.into_inner();
                guard.model.clear();
                guard
            }
        }
    }
}

#[async_trait]
impl LanguageModel for LocalEngine {
    fn describe(&self) -> LmDescription {
        self.description.clone()
    }

    async fn complete(&self, request: &LmRequest) -> Result<LmResponse, LmError> {
        let inner = self.inner.clone();
        let tokenizer = self.tokenizer.clone();
        let description = self.description.clone();
        let context = self.context;
        let request = request.clone();
        let worker = LocalEngine { inner, tokenizer, description, context };
        // Dropping this future (the caller gave up) stops the generation at its next token.
        let cancel = Cancel::new();
        let guard = cancel.on_drop();
        let result = tokio::task::spawn_blocking(move || worker.complete_blocking_cancellable(&request, &cancel))
            .await
            .map_err(|e| LmError::Engine(format!("the embedded model's worker failed: {e}")))?;
        guard.disarm();
        result
    }
}

/// A seed that depends on everything in the request, `rollout` included.
fn request_seed(request: &LmRequest) -> u64 {
    let bytes = serde_json::to_vec(request).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// What the model picked.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pick {
    Token(u32),
    /// End the current segment instead of continuing it.
    End,
}

struct Sampler {
    temperature: f32,
    rng: ChaCha8Rng,
    order: Vec<u32>,
}

impl Sampler {
    fn new(request: &LmRequest) -> Self {
        Self {
            temperature: request.temperature.max(0.0),
            rng: ChaCha8Rng::seed_from_u64(request_seed(request)),
            order: Vec::new(),
        }
    }

    fn greedy(&self) -> bool {
        self.temperature < 1e-6
    }

    /// Picks among the allowed tokens and, when `end` is given, the option of
    /// ending (scored by that logit). `None` when nothing is allowed.
    fn pick(&mut self, logits: &[f32], allowed: impl Fn(u32) -> bool, end: Option<f32>) -> Option<Pick> {
        if self.greedy() {
            let best = self.best_allowed(logits, &allowed);
            return match (best, end) {
                (Some(t), Some(e)) if e > logits[t as usize] => Some(Pick::End),
                (Some(t), _) => Some(Pick::Token(t)),
                (None, Some(_)) => Some(Pick::End),
                (None, None) => None,
            };
        }
        let inv_t = 1.0 / self.temperature;
        let mut max = end.unwrap_or(f32::NEG_INFINITY);
        let mut candidates: Vec<(u32, f32)> = Vec::new();
        for (i, &l) in logits.iter().enumerate() {
            if l.is_finite() && allowed(i as u32) {
                candidates.push((i as u32, l));
                max = max.max(l);
            }
        }
        if candidates.is_empty() && end.is_none() {
            return None;
        }
        let end_weight = end.map(|e| ((e - max) * inv_t).exp()).unwrap_or(0.0);
        let mut total = end_weight;
        for c in candidates.iter_mut() {
            c.1 = ((c.1 - max) * inv_t).exp();
            total += c.1;
        }
        let mut r = self.rng.random::<f32>() * total;
        for &(t, w) in &candidates {
            if r < w {
                return Some(Pick::Token(t));
            }
            r -= w;
        }
        if end.is_some() { Some(Pick::End) } else { candidates.last().map(|&(t, _)| Pick::Token(t)) }
    }

    /// The highest-scoring allowed token: the plain argmax when it is allowed,
    /// else the best allowed among the top few, else one pass over them all.
    fn best_allowed(&mut self, logits: &[f32], allowed: &impl Fn(u32) -> bool) -> Option<u32> {
        const TOP: usize = 64;
        let better = |a: u32, b: u32| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b));
        let argmax =
            (0..logits.len() as u32).filter(|&t| !logits[t as usize].is_nan()).min_by(|&a, &b| better(a, b))?;
        if allowed(argmax) {
            return Some(argmax);
        }
        self.order.clear();
        self.order.extend((0..logits.len() as u32).filter(|&t| !logits[t as usize].is_nan()));
        if self.order.len() > TOP {
            self.order.select_nth_unstable_by(TOP - 1, |&a, &b| better(a, b));
            self.order.truncate(TOP);
        }
        self.order.sort_unstable_by(|&a, &b| better(a, b));
        if let Some(t) = self.order.iter().copied().find(|&t| allowed(t)) {
            return Some(t);
        }
        (0..logits.len() as u32).filter(|&t| !logits[t as usize].is_nan() && allowed(t)).min_by(|&a, &b| better(a, b))
    }
}

/// One generation in progress: the prompt plus the reply tokens so far.
struct Reply {
    /// Prompt followed by the reply's tokens: what the model has seen.
    seq: Vec<u32>,
    prompt_len: usize,
    /// The reply's bytes (control tokens excluded), in step with `seq`.
    bytes: Vec<u8>,
    /// Byte length of each reply token.
    token_len: Vec<usize>,
    /// Tokens produced, forced ones and later withdrawn ones included.
    produced: usize,
    budget: usize,
}

impl Reply {
    fn out_of_budget(&self) -> bool {
        self.produced >= self.budget
    }

    fn push(&mut self, tokenizer: &Tokenizer, token: u32) {
        let bytes = tokenizer.token_bytes(token);
        self.seq.push(token);
        self.bytes.extend_from_slice(bytes);
        self.token_len.push(bytes.len());
        self.produced += 1;
    }

    /// Appends `tokens` one by one while the budget lasts: `Some("length")`
    /// when it ran out first, `Some("stop")` when a stop string appeared,
    /// `None` when all were written.
    fn write(&mut self, tokenizer: &Tokenizer, tokens: &[u32], stops: &[String]) -> Option<&'static str> {
        for &token in tokens {
            if self.out_of_budget() {
                return Some("length");
            }
            let before = self.bytes.len();
            self.push(tokenizer, token);
            if find_stop(&self.bytes, stops, before).is_some() {
                return Some("stop");
            }
        }
        None
    }

    fn reply_tokens(&self) -> usize {
        self.seq.len() - self.prompt_len
    }

    /// Withdraws reply tokens from index `keep` (of the reply) on.
    fn truncate(&mut self, keep: usize) {
        let bytes: usize = self.token_len[..keep].iter().sum();
        self.seq.truncate(self.prompt_len + keep);
        self.token_len.truncate(keep);
        self.bytes.truncate(bytes);
    }
}

/// Where a stop string first occurs in `bytes`, looking only at matches that
/// end after `from`.
fn find_stop(bytes: &[u8], stops: &[String], from: usize) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = s.as_bytes();
            let begin = from.saturating_sub(s.len() - 1);
            bytes.get(begin..)?.windows(s.len()).position(|w| w == s).map(|p| begin + p)
        })
        .min()
}

impl Engine {
    fn generate(&mut self, request: &LmRequest) -> Result<LmResponse, LmError> {
        let tokenizer = self.tokenizer.clone();
        let (prompt, _) = tokenizer.chat_prompt(&request.messages);
        let context = self.model.cfg.context;
        let max_tokens = request.max_tokens as usize;
        if prompt.len() + max_tokens > context {
            return Err(LmError::ContextOverflow { prompt_tokens: prompt.len(), max_tokens, context });
        }
        let reused = self.model.begin(&prompt);
        tracing::debug!(
            prompt_tokens = prompt.len(),
            reused,
            "embedded model: prompt positions from the prefix caches"
        );
        let mut reply = Reply {
            prompt_len: prompt.len(),
            seq: prompt,
            bytes: Vec::new(),
            token_len: Vec::new(),
            produced: 0,
            budget: max_tokens,
        };
        let mut sampler = Sampler::new(request);
        let template = request.template.as_ref().filter(|t| self.constrained && !t.segments.is_empty());
        let finish = match template {
            Some(t) => self.run_template(&tokenizer, request, &mut reply, &mut sampler, Constraint::new(t)),
            None => self.run_free(&tokenizer, request, &mut reply, &mut sampler),
        }
        .map_err(|e| match e.downcast_ref::<Cancelled>() {
            Some(cancelled) => {
                tracing::debug!(produced = reply.produced, "embedded model: generation cancelled");
                LmError::Engine(format!("embedded model: {cancelled}"))
            }
            None => LmError::Engine(format!("embedded model: {e:#}")),
        })?;

        let mut bytes = reply.bytes;
        let finish = match find_stop(&bytes, &request.stop, 0) {
            Some(p) => {
                bytes.truncate(p);
                "stop"
            }
            None => finish,
        };
        Ok(LmResponse {
            text: String::from_utf8_lossy(&bytes).into_owned(),
            usage: TokenUsage { prompt_tokens: reply.prompt_len as u64, completion_tokens: reply.produced as u64 },
            finish_reason: Some(finish.to_string()),
        })
    }

    /// The model's scores for the token after `reply`, unless the generation
    /// was cancelled (the step hook is called first).
    fn next_logits(&mut self, reply: &Reply) -> Result<Vec<f32>> {
        if let Some(hook) = &self.hook {
            hook(reply.produced, &self.cancel);
        }
        if self.cancel.is_cancelled() {
            return Err(Cancelled.into());
        }
        self.model.logits_after(&reply.seq)
    }

    /// Unconstrained decoding: until end of turn, a stop string, or the budget.
    fn run_free(
        &mut self,
        tokenizer: &Tokenizer,
        request: &LmRequest,
        reply: &mut Reply,
        sampler: &mut Sampler,
    ) -> Result<&'static str> {
        loop {
            if reply.out_of_budget() {
                return Ok("length");
            }
            let logits = self.next_logits(reply)?;
            let Some(Pick::Token(token)) = sampler.pick(&logits, |_| true, None) else {
                return Ok("stop");
            };
            if tokenizer.is_control(token) {
                reply.produced += 1;
                return Ok("stop");
            }
            let before = reply.bytes.len();
            reply.push(tokenizer, token);
            if find_stop(&reply.bytes, &request.stop, before).is_some() {
                return Ok("stop");
            }
        }
    }

    /// Decoding that follows the reply template segment by segment, within
    /// `max_tokens`. Literals and the bytes a JSON grammar leaves no choice
    /// about are written as they are; everything else the model picks. When
    /// the budget runs out before the template is complete, the reply stops
    /// there (finish reason `length`): nothing is filled in for the model, so
    /// a value it did not choose never reads as its answer.
    fn run_template(
        &mut self,
        tokenizer: &Tokenizer,
        request: &LmRequest,
        reply: &mut Reply,
        sampler: &mut Sampler,
        mut constraint: Constraint,
    ) -> Result<&'static str> {
        // Where the current segment's tokens start in the reply.
        let mut segment_start = 0usize;
        loop {
            if constraint.is_done() {
                return Ok("stop");
            }
            match constraint.step() {
                Step::Done => return Ok("stop"),
                Step::Force(text) => {
                    if let Some(finish) = reply.write(tokenizer, &tokenizer.encode(&text), &request.stop) {
                        return Ok(finish);
                    }
                    segment_start = reply.reply_tokens();
                    continue;
                }
                Step::Pick => {}
            }
            let is_text = matches!(constraint.current(), Some(Segment::Text { .. }));
            if !is_text && constraint.is_complete() && !constraint.can_continue() {
                constraint.finish_segment();
                segment_start = reply.reply_tokens();
                continue;
            }
            // Bytes the grammar leaves no choice about (an object's only key, the
            // `": "` after it) are written like a literal, without asking the model.
            let determined = constraint.determined();
            if !determined.is_empty() {
                let written = reply.write(tokenizer, &tokenizer.encode_bytes(&determined), &request.stop);
                if let Some(finish) = written {
                    return Ok(finish);
                }
                constraint.push(&determined);
                continue;
            }
            if reply.out_of_budget() {
                return Ok("length");
            }
            let logits = self.next_logits(reply)?;
            let pick = if is_text {
                sampler.pick(
                    &logits,
                    |t| {
                        if tokenizer.is_control(t) {
                            tokenizer.is_end_of_turn(t)
                        } else {
                            !tokenizer.token_bytes(t).is_empty()
                        }
                    },
                    None,
                )
            } else {
                let end = if constraint.is_complete() {
                    Some(ending_score(tokenizer, &logits, &constraint.ending()))
                } else {
                    None
                };
                sampler.pick(&logits, |t| !tokenizer.is_control(t) && constraint.allows(tokenizer.token_bytes(t)), end)
            };
            let token = match pick {
                Some(Pick::Token(t)) if !tokenizer.is_control(t) => t,
                // End of turn inside a text segment, or the model prefers ending a
                // segment that is complete here.
                Some(_) if is_text || constraint.is_complete() => {
                    constraint.finish_segment();
                    segment_start = reply.reply_tokens();
                    continue;
                }
                // No token of the vocabulary continues the segment: the reply stops
                // where it is rather than being finished for the model.
                _ => return Ok("stop"),
            };
            if let Some(finish) = reply.write(tokenizer, &[token], &request.stop) {
                return Ok(finish);
            }
            constraint.push(tokenizer.token_bytes(token));
            if let Some(cut) = constraint.until_position() {
                // The marker ends the text. Withdraw the tokens from the one the
                // marker starts in, and re-emit that token's bytes before the marker.
                let segment_text = constraint.segment_text().to_vec();
                let mut keep = segment_start;
                let mut kept_bytes = 0usize;
                while keep < reply.reply_tokens() && kept_bytes + reply.token_len[keep] <= cut {
                    kept_bytes += reply.token_len[keep];
                    keep += 1;
                }
                reply.truncate(keep);
                let rest = tokenizer.encode_bytes(&segment_text[kept_bytes..cut]);
                if let Some(finish) = reply.write(tokenizer, &rest, &request.stop) {
                    return Ok(finish);
                }
                constraint.finish_segment();
                segment_start = reply.reply_tokens();
            }
        }
    }
}

/// The model's score for ending the current segment: its best token that
/// starts the following literal, or its end-of-turn token.
fn ending_score(tokenizer: &Tokenizer, logits: &[f32], ending: &Ending) -> f32 {
    match ending {
        Ending::EndOfTurn => logits[tokenizer.im_end as usize],
        Ending::Literal(text) => (0..logits.len() as u32)
            .filter(|&t| {
                let b = tokenizer.token_bytes(t);
                !b.is_empty() && !tokenizer.is_control(t) && text.starts_with(b)
            })
            .map(|t| logits[t as usize])
            .fold(f32::NEG_INFINITY, f32::max),
    }
}

/// Bytes per token assumed when no tokenizer is at hand: a lower bound on
/// tokens is the reply's bytes over this. BPE vocabularies of chat models
/// average about four bytes per token on English text; their tokens longer
/// than this are runs of spaces or of code, which a reply's field markers and
/// values do not contain. So the bound errs low: it never refuses a budget
/// that would fit, only misses some that do not.
pub const MAX_BYTES_PER_TOKEN: usize = 16;

/// The fewest tokens a complete reply of `template` can take from the
/// embedded engine, and whether the count is exact for the template's
/// literals (`tokenizer` given) or only the byte-based lower bound.
///
/// With the tokenizer: literals count as the engine writes them (their
/// encoding), a choice as its option spelled in the fewest vocabulary tokens,
/// a number one token, free text none, a JSON value its schema's shortest
/// value over the longest token (the grammar lets a model reach a longer
/// value in fewer tokens, so no tighter bound holds for all schemas).
/// Without it: the shortest reply's bytes over [`MAX_BYTES_PER_TOKEN`].
pub fn min_reply_tokens(template: &OutputTemplate, tokenizer: Option<&Tokenizer>) -> usize {
    let constraint = Constraint::new(template);
    let Some(tokenizer) = tokenizer else {
        return constraint.completion().len().div_ceil(MAX_BYTES_PER_TOKEN);
    };
    let vocab: std::collections::HashSet<&[u8]> = (0..tokenizer.vocab_size() as u32)
        .filter(|&t| !tokenizer.is_control(t))
        .map(|t| tokenizer.token_bytes(t))
        .filter(|b| !b.is_empty())
        .collect();
    let longest = vocab.iter().map(|b| b.len()).max().unwrap_or(1);
    // The fewest vocabulary tokens whose bytes, one after another, are `text`.
    let fewest = |text: &[u8]| -> usize {
        let mut best = vec![usize::MAX; text.len() + 1];
        best[0] = 0;
        for i in 0..text.len() {
            if best[i] == usize::MAX {
                continue;
            }
            for j in i + 1..=text.len().min(i + longest) {
                if vocab.contains(&text[i..j]) {
                    best[j] = best[j].min(best[i] + 1);
                }
            }
        }
        best[text.len()]
    };
    constraint
        .shortest_parts()
        .into_iter()
        .map(|(segment, json_min)| match segment {
            Segment::Literal { text } => tokenizer.encode(text).len(),
            Segment::Choice { options } => options.iter().map(|o| fewest(o.as_bytes())).min().unwrap_or(0),
            Segment::Number { .. } => 1,
            Segment::Text { .. } => 0,
            Segment::Json { .. } => json_min.map_or(0, |m| m.len().div_ceil(longest)),
        })
        .sum()
}

/// The tokenizer of the GGUF model at `path`, read from its metadata alone
/// (not the weights), or `None` when there is no readable model there. Kept
/// per file (and its size and modification time), so loading many pipelines
/// reads it once.
pub fn read_tokenizer(path: &Path) -> Option<Arc<Tokenizer>> {
    type Stamp = (PathBuf, u64, Option<std::time::SystemTime>);
    static READ: Mutex<Vec<(Stamp, Arc<Tokenizer>)>> = Mutex::new(Vec::new());
    let meta = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
    let stamp: Stamp = (path.to_path_buf(), meta.len(), meta.modified().ok());
    let mut read = READ.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, tokenizer)) = read.iter().find(|(s, _)| *s == stamp) {
        return Some(tokenizer.clone());
    }
    let mut file = std::io::BufReader::new(std::fs::File::open(path).ok()?);
    let content = gguf_file::Content::read(&mut file).ok()?;
    let tokenizer = Arc::new(Tokenizer::from_gguf(&content).ok()?);
    read.retain(|(s, _)| s.0 != stamp.0);
    read.push((stamp, tokenizer.clone()));
    Some(tokenizer)
}

/// The default model location under a project root.
pub fn default_model_path(root: &Path) -> PathBuf {
    root.join(DEFAULT_MODEL_PATH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_across_the_boundary() {
        let stops = vec!["END".to_string()];
        assert_eq!(find_stop(b"abcEN", &stops, 3), None);
        assert_eq!(find_stop(b"abcEND", &stops, 5), Some(3));
        assert_eq!(find_stop(b"ENDabc", &stops, 5), None);
        assert_eq!(find_stop(b"ENDabc", &stops, 0), Some(0));
    }

    #[test]
    fn seed_depends_on_rollout() {
        let mut a = LmRequest::new(vec![]);
        let s1 = request_seed(&a);
        a.rollout = Some(1);
        assert_ne!(s1, request_seed(&a));
    }

    #[test]
    fn greedy_pick_walks_past_disallowed_tokens() {
        let mut s = Sampler::new(&LmRequest::new(vec![]));
        let logits = [0.1, 3.0, 2.0, 1.0];
        assert_eq!(s.pick(&logits, |t| t != 1, None), Some(Pick::Token(2)));
        assert_eq!(s.pick(&logits, |t| t == 3, Some(1.5)), Some(Pick::End));
        assert_eq!(s.pick(&logits, |_| false, None), None);
    }

    #[test]
    fn sampling_is_reproducible() {
        let mut req = LmRequest::new(vec![]);
        req.temperature = 1.0;
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32).collect();
        let run = || {
            let mut s = Sampler::new(&req);
            (0..20).map(|_| s.pick(&logits, |_| true, None)).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}
