//! A llama-architecture transformer read from a GGUF file, with a KV cache that
//! remembers which tokens it holds, and a bounded store of earlier prompts'
//! attention state: a new sequence continues from the longest prefix it shares
//! with either, so instructions and demos shared by many prompts are computed once.
//!
//! The weight matrices go through [`super::kernels`]; everything between them
//! (norms, rotary embeddings, attention, activations) runs on plain `f32`
//! buffers. All of it runs on the engine's own thread pool.

use std::io::{Read, Seek, SeekFrom};

use anyhow::{Context, Result, anyhow, bail};
use candle_core::Device;
use candle_core::quantized::{GgmlDType, gguf_file};
use rayon::prelude::*;

use super::kernels::{BlockFormat, HeadCache, Matrix, SendPtr, attend, swiglu};

/// Hyper-parameters read from the GGUF metadata.
#[derive(Debug, Clone)]
pub struct Config {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    pub vocab: usize,
    pub context: usize,
}

struct Layer {
    attn_norm: Vec<f32>,
    /// q, k and v stacked: one pass over the normalised input computes all three.
    wqkv: Matrix,
    wo: Matrix,
    ffn_norm: Vec<f32>,
    /// gate and up stacked.
    w_gate_up: Matrix,
    w_down: Matrix,
}

/// Attention state of a token sequence: per layer, the keys and values of
/// every position, `[position][n_kv_head * head_dim]`.
#[derive(Default)]
struct KvState {
    tokens: Vec<u32>,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

impl KvState {
    fn empty(layers: usize) -> Self {
        Self { tokens: Vec::new(), keys: vec![Vec::new(); layers], values: vec![Vec::new(); layers] }
    }

    fn truncate(&mut self, len: usize, kv_width: usize) {
        if len >= self.tokens.len() {
            return;
        }
        for (k, v) in self.keys.iter_mut().zip(self.values.iter_mut()) {
            k.truncate(len * kv_width);
            v.truncate(len * kv_width);
        }
        self.tokens.truncate(len);
    }

    /// A copy of the first `len` positions.
    fn prefix(&self, len: usize, kv_width: usize) -> KvState {
        KvState {
            tokens: self.tokens[..len].to_vec(),
            keys: self.keys.iter().map(|k| k[..len * kv_width].to_vec()).collect(),
            values: self.values.iter().map(|v| v[..len * kv_width].to_vec()).collect(),
        }
    }

    fn bytes(&self) -> usize {
        self.keys.iter().chain(&self.values).map(|b| b.len() * 4).sum()
    }

    fn common_prefix(&self, seq: &[u32]) -> usize {
        self.tokens.iter().zip(seq).take_while(|(a, b)| a == b).count()
    }
}

/// Earlier prompts' attention state, least recently used first out, within a
/// byte budget.
struct PrefixStore {
    budget: usize,
    entries: Vec<(u64, KvState)>,
    clock: u64,
}

impl PrefixStore {
    fn bytes(&self) -> usize {
        self.entries.iter().map(|(_, e)| e.bytes()).sum()
    }

    fn insert(&mut self, state: KvState) {
        if state.tokens.is_empty() || state.bytes() > self.budget {
            return;
        }
        self.clock += 1;
        self.entries.push((self.clock, state));
        while self.bytes() > self.budget {
            let oldest = self.entries.iter().enumerate().min_by_key(|(_, (used, _))| *used).map(|(i, _)| i);
            match oldest {
                Some(i) => drop(self.entries.swap_remove(i)),
                None => break,
            }
        }
    }

    /// Takes out the entry sharing the longest prefix with `seq`, if it shares
    /// more than `better_than` tokens.
    fn take_best(&mut self, seq: &[u32], better_than: usize) -> Option<KvState> {
        let (i, common) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, (_, e))| (i, e.common_prefix(seq)))
            .max_by_key(|&(i, c)| (c, std::cmp::Reverse(i)))?;
        (common > better_than).then(|| self.entries.swap_remove(i).1)
    }
}

pub struct LlamaModel {
    pub cfg: Config,
    embedding: Matrix,
    /// `None` when the output projection is the embedding matrix (tied).
    output: Option<Matrix>,
    norm: Vec<f32>,
    layers: Vec<Layer>,
    /// cos/sin of every (position, frequency) pair: `[context][head_dim / 2]`.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    /// The sequence being computed.
    live: KvState,
    /// How much of `live` was the current request's prompt.
    live_prompt: usize,
    /// `None`: no reuse across requests.
    store: Option<PrefixStore>,
    pool: std::sync::Arc<rayon::ThreadPool>,
    stats: PrefixStats,
}

/// How much prompt computation the caches saved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    /// Prompt positions of all requests.
    pub prompt_positions: u64,
    /// Of those, positions whose state came from a cache instead of the model.
    pub reused_positions: u64,
    /// Earlier prompts held in the prefix store now, and their bytes.
    pub stored_prefixes: usize,
    pub stored_bytes: usize,
}

/// How the model runs.
#[derive(Debug, Clone, Copy)]
pub struct ModelOptions {
    /// Worker threads (default: all cores).
    pub threads: Option<usize>,
    /// Bytes of earlier prompts' attention state to keep; 0 turns reuse across
    /// requests off.
    pub prefix_cache_bytes: usize,
}

fn md<'a>(content: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value> {
    content.metadata.get(key).with_context(|| format!("the model file has no `{key}` metadata"))
}

fn md_usize(content: &gguf_file::Content, key: &str) -> Result<usize> {
    let v = md(content, key)?;
    v.to_u32()
        .map(|v| v as usize)
        .or_else(|_| v.to_u64().map(|v| v as usize))
        .or_else(|_| v.to_i32().map(|v| v as usize))
        .map_err(|e| anyhow!("metadata `{key}`: {e}"))
}

fn md_f32(content: &gguf_file::Content, key: &str) -> Result<f32> {
    let v = md(content, key)?;
    v.to_f32().or_else(|_| v.to_f64().map(|v| v as f32)).map_err(|e| anyhow!("metadata `{key}`: {e}"))
}

impl Config {
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let arch = md(content, "general.architecture")?.to_string().map_err(|e| anyhow!("{e}"))?.clone();
        if arch != "llama" {
            bail!("unsupported model architecture `{arch}` (only llama is supported)");
        }
        let n_embd = md_usize(content, "llama.embedding_length")?;
        let n_head = md_usize(content, "llama.attention.head_count")?;
        let n_kv_head = md_usize(content, "llama.attention.head_count_kv").unwrap_or(n_head);
        let head_dim = n_embd / n_head;
        if n_head % n_kv_head != 0 || head_dim * n_head != n_embd || head_dim % 2 != 0 {
            bail!("inconsistent attention shape: {n_head} heads, {n_kv_head} kv heads, width {n_embd}");
        }
        let rope_dims = md_usize(content, "llama.rope.dimension_count").unwrap_or(head_dim);
        if rope_dims != head_dim {
            bail!("partial rotary embeddings ({rope_dims} of {head_dim}) are not supported");
        }
        let vocab = match md_usize(content, "llama.vocab_size") {
            Ok(v) => v,
            Err(_) => md(content, "tokenizer.ggml.tokens")?.to_vec().map_err(|e| anyhow!("{e}"))?.len(),
        };
        Ok(Self {
            n_layer: md_usize(content, "llama.block_count")?,
            n_embd,
            n_head,
            n_kv_head,
            head_dim,
            n_ff: md_usize(content, "llama.feed_forward_length")?,
            rope_base: md_f32(content, "llama.rope.freq_base").unwrap_or(10_000.0),
            rms_eps: md_f32(content, "llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            vocab,
            context: md_usize(content, "llama.context_length")?,
        })
    }
}

fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    for (row, dst) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let scale = 1.0 / (mean_sq + eps).sqrt();
        for ((d, v), w) in dst.iter_mut().zip(row).zip(weight) {
            *d = v * scale * w;
        }
    }
}

/// Reads one weight matrix in the format best run from it: Q4_1 and Q8_0
/// natively, anything else dequantized to `f32` by candle.
fn read_matrix<R: Read + Seek>(content: &gguf_file::Content, reader: &mut R, name: &str) -> Result<Matrix> {
    let info = content.tensor_infos.get(name).with_context(|| format!("the model file has no tensor `{name}`"))?;
    let (rows, cols) = info.shape.dims2().with_context(|| format!("tensor `{name}` is not a matrix"))?;
    let format = match info.ggml_dtype {
        GgmlDType::Q4_1 => Some(BlockFormat::Q4_1),
        GgmlDType::Q8_0 => Some(BlockFormat::Q8_0),
        _ => None,
    };
    let result = match format {
        Some(format) => {
            let dtype = info.ggml_dtype;
            let size = rows * cols / dtype.block_size() * dtype.type_size();
            let mut bytes = vec![0u8; size];
            reader.seek(SeekFrom::Start(content.tensor_data_offset + info.offset))?;
            reader.read_exact(&mut bytes)?;
            Matrix::from_gguf_blocks(format, rows, cols, &bytes)
        }
        None => {
            let t = content.tensor(reader, name, &Device::Cpu)?.dequantize(&Device::Cpu)?;
            Matrix::from_f32(rows, cols, t.flatten_all()?.to_vec1::<f32>()?)
        }
    };
    result.with_context(|| format!("reading tensor `{name}`"))
}

impl LlamaModel {
    pub fn load<R: Read + Seek>(content: &gguf_file::Content, reader: &mut R, options: ModelOptions) -> Result<Self> {
        let cfg = Config::from_gguf(content)?;
        let mut vector = |name: &str| -> Result<Vec<f32>> {
            let t = content.tensor(reader, name, &Device::Cpu).with_context(|| format!("reading tensor `{name}`"))?;
            Ok(t.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
        };
        let norm = vector("output_norm.weight")?;
        let mut norms = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            norms.push((vector(&format!("blk.{i}.attn_norm.weight"))?, vector(&format!("blk.{i}.ffn_norm.weight"))?));
        }

        let embedding = read_matrix(content, reader, "token_embd.weight")?;
        if embedding.cols() != cfg.n_embd || embedding.rows() < cfg.vocab {
            bail!(
                "token embedding is {}x{}, expected {}x{}",
                embedding.rows(),
                embedding.cols(),
                cfg.vocab,
                cfg.n_embd
            );
        }
        let output = if content.tensor_infos.contains_key("output.weight") {
            Some(read_matrix(content, reader, "output.weight")?)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for (i, (attn_norm, ffn_norm)) in norms.into_iter().enumerate() {
            let mut m = |name: &str| read_matrix(content, reader, &format!("blk.{i}.{name}.weight"));
            let (wq, wk, wv) = (m("attn_q")?, m("attn_k")?, m("attn_v")?);
            let kv_width = cfg.n_kv_head * cfg.head_dim;
            if wq.rows() != cfg.n_embd || wk.rows() != kv_width || wv.rows() != kv_width {
                bail!("layer {i}: attention projections have unexpected sizes");
            }
            let wo = m("attn_output")?;
            let (w_gate, w_up) = (m("ffn_gate")?, m("ffn_up")?);
            let w_down = m("ffn_down")?;
            if w_gate.rows() != cfg.n_ff || w_up.rows() != cfg.n_ff || w_down.cols() != cfg.n_ff {
                bail!("layer {i}: feed-forward matrices have unexpected sizes");
            }
            layers.push(Layer {
                attn_norm,
                wqkv: Matrix::stack(vec![wq, wk, wv])?,
                wo,
                ffn_norm,
                w_gate_up: Matrix::stack(vec![w_gate, w_up])?,
                w_down,
            });
        }

        let half = cfg.head_dim / 2;
        let mut rope_cos = vec![0f32; cfg.context * half];
        let mut rope_sin = vec![0f32; cfg.context * half];
        for pos in 0..cfg.context {
            for i in 0..half {
                let freq = 1.0 / (cfg.rope_base as f64).powf(2.0 * i as f64 / cfg.head_dim as f64);
                let angle = pos as f64 * freq;
                rope_cos[pos * half + i] = angle.cos() as f32;
                rope_sin[pos * half + i] = angle.sin() as f32;
            }
        }
        let threads = options
            .threads
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("promptloop-engine-{i}"))
            .build()
            .context("starting the engine's worker threads")?;
        let pool = std::sync::Arc::new(pool);
        let store = (options.prefix_cache_bytes > 0).then(|| PrefixStore {
            budget: options.prefix_cache_bytes,
            entries: Vec::new(),
            clock: 0,
        });
        let n_layer = cfg.n_layer;
        Ok(Self {
            cfg,
            embedding,
            output,
            norm,
            layers,
            rope_cos,
            rope_sin,
            live: KvState::empty(n_layer),
            live_prompt: 0,
            store,
            pool,
            stats: PrefixStats::default(),
        })
    }

    /// Bytes of attention state per cached token.
    fn kv_width(&self) -> usize {
        self.cfg.n_kv_head * self.cfg.head_dim
    }

    /// Bytes one cached position takes (keys and values of every layer).
    pub fn bytes_per_position(&self) -> usize {
        2 * self.cfg.n_layer * self.kv_width() * 4
    }

    /// Bytes the weight matrices take.
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| l.wqkv.memory_bytes() + l.wo.memory_bytes() + l.w_gate_up.memory_bytes() + l.w_down.memory_bytes())
            .sum();
        layers + self.embedding.memory_bytes() + self.output.as_ref().map_or(0, Matrix::memory_bytes)
    }

    /// The tokens whose state the live cache holds.
    pub fn cached_tokens(&self) -> &[u32] {
        &self.live.tokens
    }

    /// What the caches have saved so far.
    pub fn prefix_stats(&self) -> PrefixStats {
        PrefixStats {
            stored_prefixes: self.store.as_ref().map(|s| s.entries.len()).unwrap_or(0),
            stored_bytes: self.store.as_ref().map(|s| s.bytes()).unwrap_or(0),
            ..self.stats
        }
    }

    /// Forgets everything cached, the prefix store included.
    pub fn clear(&mut self) {
        let w = self.kv_width();
        self.live.truncate(0, w);
        self.live_prompt = 0;
        if let Some(store) = &mut self.store {
            store.entries.clear();
        }
    }

    /// Starts a request for `prompt`: picks the cached state to continue from.
    /// The live state holds the previous request; when another stored prompt
    /// shares more with this one, they swap. When this prompt would discard
    /// more of the previous prompt than it keeps, the previous prompt's state
    /// is stored first (interleaved programs each keep their prefix).
    /// Returns how many of the prompt's positions come from a cache.
    pub fn begin(&mut self, prompt: &[u32]) -> usize {
        let w = self.kv_width();
        let Some(store) = &mut self.store else {
            // No reuse across requests: every prompt is computed from scratch.
            self.live.truncate(0, w);
            self.live_prompt = prompt.len();
            self.stats.prompt_positions += prompt.len() as u64;
            return 0;
        };
        let live_common = self.live.common_prefix(prompt);
        if let Some(better) = store.take_best(prompt, live_common) {
            let previous = std::mem::replace(&mut self.live, better);
            let keep = self.live_prompt.min(previous.tokens.len());
            let mut previous = previous;
            previous.truncate(keep, w);
            store.insert(previous);
        } else {
            let kept = live_common.min(self.live_prompt);
            let lost = self.live_prompt.min(self.live.tokens.len()) - kept;
            if lost > kept {
                store.insert(self.live.prefix(self.live_prompt.min(self.live.tokens.len()), w));
            }
        }
        self.live_prompt = prompt.len();
        self.stats.prompt_positions += prompt.len() as u64;
        // The last prompt position always runs: its logits start the reply.
        let reused = self.live.common_prefix(prompt).min(prompt.len().saturating_sub(1));
        self.stats.reused_positions += reused as u64;
        reused
    }

    /// The next-token logits after `seq`, reusing the live state of the
    /// longest prefix `seq` shares with it. Afterwards the live state holds
    /// exactly `seq`.
    pub fn logits_after(&mut self, seq: &[u32]) -> Result<Vec<f32>> {
        if seq.is_empty() {
            bail!("cannot run the model on an empty sequence");
        }
        if seq.len() > self.cfg.context {
            bail!("sequence of {} tokens exceeds the context window of {}", seq.len(), self.cfg.context);
        }
        let common = self.live.common_prefix(seq);
        // At least one token must be run to produce logits.
        let keep = common.min(seq.len() - 1);
        let w = self.kv_width();
        self.live.truncate(keep, w);
        let pool = self.pool.clone();
        let result = pool.install(|| self.forward(&seq[keep..]));
        if result.is_err() {
            // A failure part-way leaves layers at different lengths; start afresh.
            self.live.truncate(0, w);
        }
        result
    }

    /// Runs `tokens` after the live ones; returns the logits of the last.
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let cfg = self.cfg.clone();
        let n = tokens.len();
        let start = self.live.tokens.len();
        let d = cfg.n_embd;
        let kv_width = cfg.n_kv_head * cfg.head_dim;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab) {
            bail!("token id {bad} outside the vocabulary of {}", cfg.vocab);
        }

        let mut x: Vec<f32> = tokens.iter().flat_map(|&t| self.embedding.dequantize_row(t as usize)).collect();
        let mut h = vec![0f32; n * d];
        let q_width = cfg.n_head * cfg.head_dim;
        let qkv_width = q_width + 2 * kv_width;

        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, cfg.rms_eps, &mut h);
            let qkv = layer.wqkv.matmul(&h, n);
            let mut q = Vec::with_capacity(n * q_width);
            let mut k = Vec::with_capacity(n * kv_width);
            for row in qkv.chunks_exact(qkv_width) {
                q.extend_from_slice(&row[..q_width]);
                k.extend_from_slice(&row[q_width..q_width + kv_width]);
                self.live.values[li].extend_from_slice(&row[q_width + kv_width..]);
            }
            rope(&cfg, &self.rope_cos, &self.rope_sin, &mut q, start, cfg.n_head);
            rope(&cfg, &self.rope_cos, &self.rope_sin, &mut k, start, cfg.n_kv_head);
            self.live.keys[li].extend_from_slice(&k);
            debug_assert_eq!(self.live.keys[li].len(), (start + n) * kv_width);

            let attn = attention(&cfg, &q, &self.live.keys[li], &self.live.values[li], start, n);
            let o = layer.wo.matmul(&attn, n);
            for (a, b) in x.iter_mut().zip(&o) {
                *a += b;
            }

            rms_norm(&x, &layer.ffn_norm, cfg.rms_eps, &mut h);
            let gate_up = layer.w_gate_up.matmul(&h, n);
            let ff = cfg.n_ff;
            let mut act = Vec::with_capacity(n * ff);
            for row in gate_up.chunks_exact(2 * ff) {
                let (gate, up) = row.split_at(ff);
                let from = act.len();
                act.extend_from_slice(up);
                swiglu(gate, &mut act[from..]);
            }
            let down = layer.w_down.matmul(&act, n);
            for (a, b) in x.iter_mut().zip(&down) {
                *a += b;
            }
        }
        self.live.tokens.extend_from_slice(tokens);

        let last = &x[(n - 1) * d..];
        let mut normed = vec![0f32; d];
        rms_norm(last, &self.norm, cfg.rms_eps, &mut normed);
        let mut logits = self.output.as_ref().unwrap_or(&self.embedding).matmul(&normed, 1);
        logits.truncate(cfg.vocab);
        Ok(logits)
    }
}

/// Rotates adjacent pairs of every head of `rows` (one row per new position).
fn rope(cfg: &Config, cos_table: &[f32], sin_table: &[f32], rows: &mut [f32], start: usize, heads: usize) {
    let hd = cfg.head_dim;
    let half = hd / 2;
    let width = heads * hd;
    for (i, row) in rows.chunks_exact_mut(width).enumerate() {
        let pos = start + i;
        let cos = &cos_table[pos * half..(pos + 1) * half];
        let sin = &sin_table[pos * half..(pos + 1) * half];
        for head in row.chunks_exact_mut(hd) {
            for j in 0..half {
                let (a, b) = (head[2 * j], head[2 * j + 1]);
                head[2 * j] = a * cos[j] - b * sin[j];
                head[2 * j + 1] = a * sin[j] + b * cos[j];
            }
        }
    }
}

/// Causal grouped-query attention of `n` new positions (starting at `start`)
/// over all cached keys and values. Returns `[n][n_head * head_dim]`.
fn attention(cfg: &Config, q: &[f32], keys: &[f32], values: &[f32], start: usize, n: usize) -> Vec<f32> {
    let hd = cfg.head_dim;
    let width = cfg.n_head * hd;
    let kv_width = cfg.n_kv_head * hd;
    let group = cfg.n_head / cfg.n_kv_head;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; n * width];
    let out_ptr = SendPtr(out.as_mut_ptr());
    let units = n * cfg.n_head;

    let unit = |u: usize, scores: &mut Vec<f32>| {
        let (i, head) = (u / cfg.n_head, u % cfg.n_head);
        let kv_off = (head / group) * hd;
        let qv = &q[i * width + head * hd..i * width + (head + 1) * hd];
        // SAFETY: unit `u` alone writes this row segment of `out`.
        let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(i * width + head * hd), hd) };
        let cache = HeadCache { keys, values, stride: kv_width, offset: kv_off };
        attend(qv, cache, start + i + 1, scale, scores, dst);
    };

    // Small problems are not worth waking the pool.
    let work = units * (start + n);
    if work < 4_096 {
        let mut scores = Vec::with_capacity(start + n);
        for u in 0..units {
            unit(u, &mut scores);
        }
    } else {
        let chunk = units.div_ceil(4 * rayon::current_num_threads().max(1)).max(1);
        (0..units.div_ceil(chunk)).into_par_iter().for_each(|c| {
            let mut scores = Vec::with_capacity(start + n);
            for u in c * chunk..((c + 1) * chunk).min(units) {
                unit(u, &mut scores);
            }
        });
    }
    out
}
