//! A llama-architecture transformer read from a GGUF file, with a KV cache that
//! remembers which tokens it holds so a new sequence sharing a prefix with the
//! last one only computes the part after the shared prefix.
//!
//! The weight matrices go through candle's quantized matmul; everything between
//! them (norms, rotary embeddings, attention, activations) runs on plain `f32`
//! buffers, parallelised over candle's CPU worker pool.

use std::io::{Read, Seek};

use anyhow::{Context, Result, anyhow, bail};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor, gguf_file};
use candle_core::{Device, Module, Tensor};

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

/// How the weight matrices are multiplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// As stored in the file (quantized matmul).
    #[default]
    Quantized,
    /// Dequantized to `f32` at load (more memory; a dense matmul).
    F32,
}

struct Linear {
    inner: QMatMul,
    out_dim: usize,
}

impl Linear {
    fn new(t: QTensor, format: WeightFormat) -> Result<Self> {
        let (out_dim, _) = t.shape().dims2()?;
        let inner = match (format, t.dtype()) {
            (WeightFormat::F32, _) | (_, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) => {
                QMatMul::Tensor(t.dequantize(&Device::Cpu)?)
            }
            _ => QMatMul::QTensor(std::sync::Arc::new(t)),
        };
        Ok(Self { inner, out_dim })
    }

    /// `x` holds `rows` rows of the input dimension; returns `rows` rows of the output.
    fn forward(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let input = Tensor::from_slice(x, (rows, x.len() / rows), &Device::Cpu)?;
        let out = self.inner.forward(&input)?;
        let out = out.flatten_all()?.to_vec1::<f32>()?;
        debug_assert_eq!(out.len(), rows * self.out_dim);
        Ok(out)
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Vec<f32>,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
}

pub struct LlamaModel {
    pub cfg: Config,
    embedding: QTensor,
    output: Linear,
    norm: Vec<f32>,
    layers: Vec<Layer>,
    /// cos/sin of every (position, frequency) pair: `[context][head_dim / 2]`.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    /// Per layer, keys and values of the cached positions: `[position][n_kv_head * head_dim]`.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// The tokens whose keys and values are cached, in order.
    cached: Vec<u32>,
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

/// Sum of products, in eight independent lanes so it vectorises.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        sum += a[i] * b[i];
    }
    sum
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

/// Raw pointer that may cross into the worker pool; each worker writes a
/// disjoint part of the buffer.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

impl LlamaModel {
    pub fn load<R: Read + Seek>(content: &gguf_file::Content, reader: &mut R, format: WeightFormat) -> Result<Self> {
        let cfg = Config::from_gguf(content)?;
        let dev = Device::Cpu;
        let mut tensor = |name: &str| -> Result<QTensor> {
            content.tensor(reader, name, &dev).with_context(|| format!("reading tensor `{name}`"))
        };
        let vector =
            |t: QTensor| -> Result<Vec<f32>> { Ok(t.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?) };

        let embedding = tensor("token_embd.weight")?;
        let (rows, width) = embedding.shape().dims2()?;
        if width != cfg.n_embd || rows < cfg.vocab {
            bail!("token embedding is {rows}x{width}, expected {}x{}", cfg.vocab, cfg.n_embd);
        }
        let output = if content.tensor_infos.contains_key("output.weight") {
            tensor("output.weight")?
        } else {
            // Tied embeddings: the output projection is the embedding matrix.
            tensor("token_embd.weight")?
        };
        // The output projection runs once per generated token over the whole
        // vocabulary; keep it in its stored format.
        let output = Linear::new(output, WeightFormat::Quantized)?;
        let norm = vector(tensor("output_norm.weight")?)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("blk.{i}");
            let mut lin =
                |name: &str| -> Result<Linear> { Linear::new(tensor(&format!("{p}.{name}.weight"))?, format) };
            let wq = lin("attn_q")?;
            let wk = lin("attn_k")?;
            let wv = lin("attn_v")?;
            let wo = lin("attn_output")?;
            let w_gate = lin("ffn_gate")?;
            let w_up = lin("ffn_up")?;
            let w_down = lin("ffn_down")?;
            layers.push(Layer {
                attn_norm: vector(tensor(&format!("{p}.attn_norm.weight"))?)?,
                ffn_norm: vector(tensor(&format!("{p}.ffn_norm.weight"))?)?,
                wq,
                wk,
                wv,
                wo,
                w_gate,
                w_up,
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
        let n_layer = cfg.n_layer;
        Ok(Self {
            cfg,
            embedding,
            output,
            norm,
            layers,
            rope_cos,
            rope_sin,
            keys: vec![Vec::new(); n_layer],
            values: vec![Vec::new(); n_layer],
            cached: Vec::new(),
        })
    }

    /// The tokens whose state the cache holds.
    pub fn cached_tokens(&self) -> &[u32] {
        &self.cached
    }

    /// Forgets cached positions from `len` on.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.cached.len() {
            return;
        }
        let kv_width = self.cfg.n_kv_head * self.cfg.head_dim;
        for (k, v) in self.keys.iter_mut().zip(self.values.iter_mut()) {
            k.truncate(len * kv_width);
            v.truncate(len * kv_width);
        }
        self.cached.truncate(len);
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// The next-token logits after `seq`, reusing the cached state of the
    /// longest prefix `seq` shares with the cached tokens. Afterwards the cache
    /// holds exactly `seq`.
    pub fn logits_after(&mut self, seq: &[u32]) -> Result<Vec<f32>> {
        if seq.is_empty() {
            bail!("cannot run the model on an empty sequence");
        }
        if seq.len() > self.cfg.context {
            bail!("sequence of {} tokens exceeds the context window of {}", seq.len(), self.cfg.context);
        }
        let common = self.cached.iter().zip(seq).take_while(|(a, b)| a == b).count();
        // At least one token must be run to produce logits.
        let keep = common.min(seq.len() - 1);
        self.truncate(keep);
        let result = self.forward(&seq[keep..]);
        if result.is_err() {
            // A failure part-way leaves layers at different lengths; start afresh.
            self.clear();
        }
        result
    }

    /// Runs `tokens` after the cached ones; returns the logits of the last.
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let cfg = self.cfg.clone();
        let n = tokens.len();
        let start = self.cached.len();
        let d = cfg.n_embd;
        let kv_width = cfg.n_kv_head * cfg.head_dim;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab) {
            bail!("token id {bad} outside the vocabulary of {}", cfg.vocab);
        }

        let ids = Tensor::from_slice(tokens, n, &Device::Cpu)?;
        let mut x = self.embedding.embedding(&ids)?.flatten_all()?.to_vec1::<f32>()?;
        let mut h = vec![0f32; n * d];

        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, cfg.rms_eps, &mut h);
            let mut q = layer.wq.forward(&h, n)?;
            let mut k = layer.wk.forward(&h, n)?;
            let v = layer.wv.forward(&h, n)?;
            self.rope(&mut q, start, cfg.n_head);
            self.rope(&mut k, start, cfg.n_kv_head);
            self.keys[li].extend_from_slice(&k);
            self.values[li].extend_from_slice(&v);
            debug_assert_eq!(self.keys[li].len(), (start + n) * kv_width);

            let attn = attention(&cfg, &q, &self.keys[li], &self.values[li], start, n);
            let o = layer.wo.forward(&attn, n)?;
            for (a, b) in x.iter_mut().zip(&o) {
                *a += b;
            }

            rms_norm(&x, &layer.ffn_norm, cfg.rms_eps, &mut h);
            let gate = layer.w_gate.forward(&h, n)?;
            let mut up = layer.w_up.forward(&h, n)?;
            for (u, g) in up.iter_mut().zip(&gate) {
                *u *= g / (1.0 + (-g).exp());
            }
            let down = layer.w_down.forward(&up, n)?;
            for (a, b) in x.iter_mut().zip(&down) {
                *a += b;
            }
        }
        self.cached.extend_from_slice(tokens);

        let last = &x[(n - 1) * d..];
        let mut normed = vec![0f32; d];
        rms_norm(last, &self.norm, cfg.rms_eps, &mut normed);
        let mut logits = self.output.forward(&normed, 1)?;
        logits.truncate(cfg.vocab);
        Ok(logits)
    }

    /// Rotates adjacent pairs of every head of `rows` (one row per new position).
    fn rope(&self, rows: &mut [f32], start: usize, heads: usize) {
        let hd = self.cfg.head_dim;
        let half = hd / 2;
        let width = heads * hd;
        for (i, row) in rows.chunks_exact_mut(width).enumerate() {
            let pos = start + i;
            let cos = &self.rope_cos[pos * half..(pos + 1) * half];
            let sin = &self.rope_sin[pos * half..(pos + 1) * half];
            for head in row.chunks_exact_mut(hd) {
                for j in 0..half {
                    let (a, b) = (head[2 * j], head[2 * j + 1]);
                    head[2 * j] = a * cos[j] - b * sin[j];
                    head[2 * j + 1] = a * sin[j] + b * cos[j];
                }
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
        let len = start + i + 1;
        scores.clear();
        let mut max = f32::NEG_INFINITY;
        for p in 0..len {
            let s = dot(qv, &keys[p * kv_width + kv_off..p * kv_width + kv_off + hd]) * scale;
            max = max.max(s);
            scores.push(s);
        }
        let mut total = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            total += *s;
        }
        let inv = 1.0 / total;
        // SAFETY: unit `u` alone writes this row segment of `out`.
        let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(i * width + head * hd), hd) };
        for (p, &w) in scores.iter().enumerate() {
            let w = w * inv;
            let vrow = &values[p * kv_width + kv_off..p * kv_width + kv_off + hd];
            for (o, v) in dst.iter_mut().zip(vrow) {
                *o += w * v;
            }
        }
    };

    // Small problems are not worth waking the pool.
    let work = units * (start + n);
    if work < 16_384 {
        let mut scores = Vec::with_capacity(start + n);
        for u in 0..units {
            unit(u, &mut scores);
        }
    } else {
        candle_core::utils::barrier_pool().execute_chunked(units, |range| {
            let mut scores = Vec::with_capacity(start + n);
            for u in range {
                unit(u, &mut scores);
            }
        });
    }
    out
}
