//! Matrix kernels of the embedded model.
//!
//! Weights stay in their GGUF block formats (Q4_1, Q8_0: 4 or 8 bits per
//! weight plus a scale per block of 32); the activations they multiply are
//! quantized to 8 bits per block of 32, and each block's dot product is an
//! integer one — the arithmetic llama.cpp uses for these formats. On x86 with
//! AVX2 and FMA the inner loops are vectorised by hand; elsewhere a scalar loop
//! computes the same sums. Other formats are dequantized to `f32` at load.
//!
//! Work is split over the engine's thread pool by weight rows, so the result
//! of every (row, input) pair is computed the same way whatever the batch: a
//! prompt run in one batch and token by token gives identical numbers.

use anyhow::{Result, bail};
use half::f16;
use rayon::prelude::*;

/// Weights per quantization block.
pub const QK: usize = 32;

/// A Q4_1 block: `weight = d * q + m`, `q` in 0..16, two per byte (the low
/// nibbles hold weights 0..16, the high ones 16..32).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ4_1 {
    d: f32,
    m: f32,
    qs: [u8; 16],
}

/// A Q8_0 block: `weight = d * q`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ8_0 {
    d: f32,
    qs: [i8; 32],
}

/// One block of quantized activations: `x ≈ d * q`; `s = d * Σq` serves the
/// `m` term of Q4_1.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct BlockQ8 {
    d: f32,
    s: f32,
    qs: [i8; 32],
}

#[derive(Debug, Clone)]
enum Weights {
    Q4_1(Vec<BlockQ4_1>),
    Q8_0(Vec<BlockQ8_0>),
    F32(Vec<f32>),
}

/// A weight matrix of `rows` outputs by `cols` inputs, row-major.
#[derive(Debug, Clone)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    weights: Weights,
}

/// The GGUF block formats read natively; others arrive as `f32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    Q4_1,
    Q8_0,
}

fn half(bytes: &[u8]) -> f32 {
    f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

impl Matrix {
    /// A matrix from the raw bytes of a GGUF tensor in `format`.
    pub fn from_gguf_blocks(format: BlockFormat, rows: usize, cols: usize, bytes: &[u8]) -> Result<Matrix> {
        if cols % QK != 0 {
            bail!("a row of {cols} weights is not a whole number of {QK}-weight blocks");
        }
        let blocks = rows * cols / QK;
        let weights = match format {
            BlockFormat::Q4_1 => {
                const SIZE: usize = 20;
                if bytes.len() != blocks * SIZE {
                    bail!("Q4_1 tensor of {rows}x{cols} should take {} bytes, found {}", blocks * SIZE, bytes.len());
                }
                Weights::Q4_1(
                    bytes
                        .chunks_exact(SIZE)
                        .map(|b| BlockQ4_1 {
                            d: half(&b[0..2]),
                            m: half(&b[2..4]),
                            qs: b[4..20].try_into().expect("16 bytes"),
                        })
                        .collect(),
                )
            }
            BlockFormat::Q8_0 => {
                const SIZE: usize = 34;
                if bytes.len() != blocks * SIZE {
                    bail!("Q8_0 tensor of {rows}x{cols} should take {} bytes, found {}", blocks * SIZE, bytes.len());
                }
                Weights::Q8_0(
                    bytes
                        .chunks_exact(SIZE)
                        .map(|b| {
                            let mut qs = [0i8; 32];
                            for (q, &byte) in qs.iter_mut().zip(&b[2..34]) {
                                *q = byte as i8;
                            }
                            BlockQ8_0 { d: half(&b[0..2]), qs }
                        })
                        .collect(),
                )
            }
        };
        Ok(Matrix { rows, cols, weights })
    }

    pub fn from_f32(rows: usize, cols: usize, data: Vec<f32>) -> Result<Matrix> {
        if data.len() != rows * cols {
            bail!("{} values do not make a {rows}x{cols} matrix", data.len());
        }
        Ok(Matrix { rows, cols, weights: Weights::F32(data) })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Stacks matrices of the same width and format on top of each other (so
    /// one pass computes q, k and v). Mixed formats are stacked as `f32`.
    pub fn stack(parts: Vec<Matrix>) -> Result<Matrix> {
        let cols = parts.first().map(|m| m.cols).unwrap_or(0);
        if parts.iter().any(|m| m.cols != cols) {
            bail!("cannot stack matrices of different widths");
        }
        let rows = parts.iter().map(|m| m.rows).sum();
        let same = |f: fn(&Weights) -> bool| parts.iter().all(|m| f(&m.weights));
        let weights = if same(|w| matches!(w, Weights::Q4_1(_))) {
            Weights::Q4_1(
                parts.into_iter().flat_map(|m| if let Weights::Q4_1(b) = m.weights { b } else { vec![] }).collect(),
            )
        } else if same(|w| matches!(w, Weights::Q8_0(_))) {
            Weights::Q8_0(
                parts.into_iter().flat_map(|m| if let Weights::Q8_0(b) = m.weights { b } else { vec![] }).collect(),
            )
        } else {
            Weights::F32(parts.into_iter().flat_map(|m| m.dequantize()).collect())
        };
        Ok(Matrix { rows, cols, weights })
    }

    /// All weights as `f32`, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.rows).flat_map(|r| self.dequantize_row(r)).collect()
    }

    /// One row as `f32` (an embedding lookup).
    pub fn dequantize_row(&self, row: usize) -> Vec<f32> {
        let nb = self.cols / QK;
        match &self.weights {
            Weights::Q4_1(blocks) => blocks[row * nb..(row + 1) * nb]
                .iter()
                .flat_map(|b| {
                    let lo = b.qs.map(|q| b.d * (q & 0x0F) as f32 + b.m);
                    let hi = b.qs.map(|q| b.d * (q >> 4) as f32 + b.m);
                    lo.into_iter().chain(hi)
                })
                .collect(),
            Weights::Q8_0(blocks) => {
                blocks[row * nb..(row + 1) * nb].iter().flat_map(|b| b.qs.map(|q| b.d * q as f32)).collect()
            }
            Weights::F32(data) => data[row * self.cols..(row + 1) * self.cols].to_vec(),
        }
    }

    /// `out[i][r] = Σ_c x[i][c] * w[r][c]` for the `n` rows of `x`. Runs on the
    /// current rayon pool.
    pub fn matmul(&self, x: &[f32], n: usize) -> Vec<f32> {
        assert_eq!(x.len(), n * self.cols, "input is not {n} rows of {}", self.cols);
        let mut out = vec![0f32; n * self.rows];
        let out_ptr = SendPtr(out.as_mut_ptr());
        let rows = self.rows;
        // Enough rows per task to amortise scheduling, enough tasks to balance.
        let per_task = (rows / (4 * rayon::current_num_threads().max(1))).clamp(8, 256);
        let tasks = rows.div_ceil(per_task);
        let write = move |i: usize, r: usize, v: f32| {
            // SAFETY: each task owns the rows `r` of its range; `i < n`, `r < rows`.
            unsafe { *out_ptr.get().add(i * rows + r) = v }
        };
        match &self.weights {
            Weights::F32(w) => {
                let cols = self.cols;
                (0..tasks).into_par_iter().for_each(|t| {
                    for r in t * per_task..((t + 1) * per_task).min(rows) {
                        let wr = &w[r * cols..(r + 1) * cols];
                        for i in 0..n {
                            write(i, r, dot_f32(wr, &x[i * cols..(i + 1) * cols]));
                        }
                    }
                });
            }
            Weights::Q4_1(w) => {
                let acts = quantize_rows(x, n, self.cols);
                (0..tasks)
                    .into_par_iter()
                    .for_each(|t| block_rows(w, &acts, n, t * per_task..((t + 1) * per_task).min(rows), write));
            }
            Weights::Q8_0(w) => {
                let acts = quantize_rows(x, n, self.cols);
                (0..tasks)
                    .into_par_iter()
                    .for_each(|t| block_rows(w, &acts, n, t * per_task..((t + 1) * per_task).min(rows), write));
            }
        }
        out
    }

    /// Bytes the weights take in memory.
    pub fn memory_bytes(&self) -> usize {
        match &self.weights {
            Weights::Q4_1(b) => b.len() * size_of::<BlockQ4_1>(),
            Weights::Q8_0(b) => b.len() * size_of::<BlockQ8_0>(),
            Weights::F32(d) => d.len() * 4,
        }
    }
}

/// Input rows taken four at a time (the kernels reuse each unpacked weight
/// block across them), then the remainder one at a time.
fn for_each_group(acts: &[BlockQ8], nb: usize, n: usize, mut f: impl FnMut(usize, Group<'_>)) {
    let mut i = 0;
    while i + 4 <= n {
        f(i, Group::Four(&acts[i * nb..(i + 4) * nb]));
        i += 4;
    }
    while i < n {
        f(i, Group::One(&acts[i * nb..(i + 1) * nb]));
        i += 1;
    }
}

#[derive(Clone, Copy)]
enum Group<'a> {
    One(&'a [BlockQ8]),
    Four(&'a [BlockQ8]),
}

/// Raw pointer shared with the pool; every task writes disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Quantizes `n` rows of `cols` values to 8 bits per block of 32.
fn quantize_rows(x: &[f32], n: usize, cols: usize) -> Vec<BlockQ8> {
    let nb = cols / QK;
    let mut out = Vec::with_capacity(n * nb);
    for block in x.chunks_exact(QK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; 32];
        let mut sum = 0i32;
        for (q, v) in qs.iter_mut().zip(block) {
            *q = (v * inv).round() as i8;
            sum += *q as i32;
        }
        out.push(BlockQ8 { d, s: d * sum as f32, qs });
    }
    out
}

/// Sum of products, in eight independent lanes so it vectorises.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
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

/// Up to four results, one per input row of the group, and how many there are.
struct Sums {
    values: [f32; 4],
    len: usize,
}

impl IntoIterator for Sums {
    type Item = f32;
    type IntoIter = std::iter::Take<std::array::IntoIter<f32, 4>>;
    fn into_iter(self) -> Self::IntoIter {
        self.values.into_iter().take(self.len)
    }
}

/// One key/value head of the attention cache: rows of `stride` floats per
/// position, this head's part starting at `offset`.
#[derive(Clone, Copy)]
pub struct HeadCache<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub stride: usize,
    pub offset: usize,
}

/// One query row of one head attending over the first `len` cached positions:
/// `dst = softmax(scale * q·k_p) · v_p`. `scores` is scratch.
pub fn attend(q: &[f32], cache: HeadCache<'_>, len: usize, scale: f32, scores: &mut Vec<f32>, dst: &mut [f32]) {
    let HeadCache { keys, values, stride, offset } = cache;
    let hd = q.len();
    scores.clear();
    scores.resize(len, 0.0);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && hd % 8 == 0 {
        // SAFETY: the CPU has AVX2 and FMA; every row read is in bounds (checked by the slicing below).
        unsafe { avx2::attend(q, cache, len, scale, scores, dst) };
        return;
    }
    let mut max = f32::NEG_INFINITY;
    for (p, s) in scores.iter_mut().enumerate() {
        *s = dot_f32(q, &keys[p * stride + offset..p * stride + offset + hd]) * scale;
        max = max.max(*s);
    }
    let mut total = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        total += *s;
    }
    let inv = 1.0 / total;
    dst.fill(0.0);
    for (p, &w) in scores.iter().enumerate() {
        let w = w * inv;
        for (o, v) in dst.iter_mut().zip(&values[p * stride + offset..p * stride + offset + hd]) {
            *o += w * v;
        }
    }
}

/// `up[i] = up[i] * silu(gate[i])`, the gated activation of the feed-forward block.
pub fn swiglu(gate: &[f32], up: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA.
        unsafe { avx2::swiglu(gate, up) };
        return;
    }
    for (u, g) in up.iter_mut().zip(gate) {
        *u *= g / (1.0 + (-g).exp());
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A weight block format the integer kernels multiply against [`BlockQ8`] activations.
trait WeightBlock: Sized + Sync {
    /// One block's contribution to a dot product (the portable path).
    fn dot(&self, a: &BlockQ8) -> f32;
    /// One weight row against `R` activation rows with AVX2.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; every activation row holds `w.len()` blocks.
    #[cfg(target_arch = "x86_64")]
    unsafe fn avx2<const R: usize>(w: &[Self], a: [&[BlockQ8]; R]) -> [f32; R];
}

impl WeightBlock for BlockQ4_1 {
    fn dot(&self, a: &BlockQ8) -> f32 {
        let mut isum = 0i32;
        for j in 0..16 {
            isum += (self.qs[j] & 0x0F) as i32 * a.qs[j] as i32;
            isum += (self.qs[j] >> 4) as i32 * a.qs[j + 16] as i32;
        }
        self.d * a.d * isum as f32 + self.m * a.s
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn avx2<const R: usize>(w: &[Self], a: [&[BlockQ8]; R]) -> [f32; R] {
        // SAFETY: forwarded from the caller.
        unsafe { avx2::q4_1::<R>(w, a) }
    }
}

impl WeightBlock for BlockQ8_0 {
    fn dot(&self, a: &BlockQ8) -> f32 {
        let isum: i32 = self.qs.iter().zip(&a.qs).map(|(&x, &y)| x as i32 * y as i32).sum();
        self.d * a.d * isum as f32
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn avx2<const R: usize>(w: &[Self], a: [&[BlockQ8]; R]) -> [f32; R] {
        // SAFETY: forwarded from the caller.
        unsafe { avx2::q8_0::<R>(w, a) }
    }
}

/// The weight rows in `rows` against all `n` activation rows; `write(i, r, v)`
/// stores output `[i][r]`.
fn block_rows<B: WeightBlock>(
    w: &[B],
    acts: &[BlockQ8],
    n: usize,
    rows: std::ops::Range<usize>,
    write: impl Fn(usize, usize, f32),
) {
    let nb = acts.len() / n.max(1);
    for r in rows {
        let wr = &w[r * nb..(r + 1) * nb];
        for_each_group(acts, nb, n, |i, group| {
            for (k, v) in dot_row(wr, group).into_iter().enumerate() {
                write(i + k, r, v);
            }
        });
    }
}

/// One weight row against a group of activation rows.
fn dot_row<B: WeightBlock>(w: &[B], group: Group<'_>) -> Sums {
    let nb = w.len();
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA; each activation row holds `nb` blocks.
        return unsafe {
            match group {
                Group::One(a) => Sums { values: [B::avx2::<1>(w, [a])[0], 0.0, 0.0, 0.0], len: 1 },
                Group::Four(a) => Sums {
                    values: B::avx2::<4>(w, [&a[..nb], &a[nb..2 * nb], &a[2 * nb..3 * nb], &a[3 * nb..]]),
                    len: 4,
                },
            }
        };
    }
    let one = |a: &[BlockQ8]| -> f32 { w.iter().zip(a).map(|(wb, ab)| wb.dot(ab)).sum() };
    match group {
        Group::One(a) => Sums { values: [one(a), 0.0, 0.0, 0.0], len: 1 },
        Group::Four(a) => {
            let mut values = [0f32; 4];
            for (k, v) in values.iter_mut().enumerate() {
                *v = one(&a[k * nb..(k + 1) * nb]);
            }
            Sums { values, len: 4 }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockQ4_1, BlockQ8, BlockQ8_0, HeadCache};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Q4_1 weights against `R` rows of activations. Each row's arithmetic is
    /// the same whatever `R`, so batching never changes a result.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn q4_1<const R: usize>(w: &[BlockQ4_1], a: [&[BlockQ8]; R]) -> [f32; R] {
        let mask = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut mins = [0f32; R];
        for (b, wb) in w.iter().enumerate() {
            // SAFETY: `qs` is 16 readable bytes; unaligned loads.
            let raw = unsafe { _mm_loadu_si128(wb.qs.as_ptr() as *const __m128i) };
            let nibbles = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(raw), raw), mask);
            for r in 0..R {
                let ab = &a[r][b];
                // SAFETY: `qs` is 32 readable bytes.
                let q = unsafe { _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i) };
                let pairs = _mm256_maddubs_epi16(nibbles, q);
                let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(wb.d * ab.d), sums, acc[r]);
                mins[r] += wb.m * ab.s;
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = hsum(acc[r]) + mins[r];
        }
        out
    }

    /// `e^x` for eight lanes: range reduction to `2^n * e^r` and a degree-6
    /// polynomial for `e^r` (relative error about 2e-7); inputs below -87 give 0.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        let x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0)), _mm256_set1_ps(-87.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
        ));
        // r = x - n ln2, in two parts for precision.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm256_set1_ps(1.0 / 720.0);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 120.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 24.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 6.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
        let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(p, _mm256_castsi256_ps(pow2))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn attend(
        q: &[f32],
        cache: HeadCache<'_>,
        len: usize,
        scale: f32,
        scores: &mut [f32],
        dst: &mut [f32],
    ) {
        let HeadCache { keys, values, stride, offset } = cache;
        let hd = q.len();
        let chunks = hd / 8;
        assert!(len == 0 || (len - 1) * stride + offset + hd <= keys.len().min(values.len()));
        assert!(scores.len() >= len && dst.len() == hd);
        let qp = q.as_ptr();
        let mut max = f32::NEG_INFINITY;
        for (p, score) in scores[..len].iter_mut().enumerate() {
            // SAFETY: bounds asserted above.
            let kp = unsafe { keys.as_ptr().add(p * stride + offset) };
            let mut acc0 = _mm256_setzero_ps();
            let mut acc1 = _mm256_setzero_ps();
            let mut c = 0;
            while c + 2 <= chunks {
                unsafe {
                    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c * 8)), _mm256_loadu_ps(kp.add(c * 8)), acc0);
                    acc1 =
                        _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c * 8 + 8)), _mm256_loadu_ps(kp.add(c * 8 + 8)), acc1);
                }
                c += 2;
            }
            if c < chunks {
                unsafe { acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c * 8)), _mm256_loadu_ps(kp.add(c * 8)), acc0) };
            }
            let s = hsum(_mm256_add_ps(acc0, acc1)) * scale;
            *score = s;
            max = max.max(s);
        }
        let vmax = _mm256_set1_ps(max);
        let mut total = _mm256_setzero_ps();
        let mut p = 0;
        while p + 8 <= len {
            // SAFETY: p + 8 <= len <= scores.len().
            unsafe {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores.as_ptr().add(p)), vmax));
                _mm256_storeu_ps(scores.as_mut_ptr().add(p), e);
                total = _mm256_add_ps(total, e);
            }
            p += 8;
        }
        let mut total = hsum(total);
        for s in &mut scores[p..len] {
            *s = (*s - max).exp();
            total += *s;
        }
        let inv = 1.0 / total;
        // Eight accumulators cover a head of up to 64; wider heads loop.
        let dp = dst.as_mut_ptr();
        let mut c0 = 0;
        while c0 < chunks {
            let width = (chunks - c0).min(8);
            let mut acc = [_mm256_setzero_ps(); 8];
            for (p, &w) in scores[..len].iter().enumerate() {
                let w = _mm256_set1_ps(w * inv);
                // SAFETY: bounds asserted above.
                let vp = unsafe { values.as_ptr().add(p * stride + offset + c0 * 8) };
                for (k, a) in acc.iter_mut().enumerate().take(width) {
                    *a = _mm256_fmadd_ps(w, unsafe { _mm256_loadu_ps(vp.add(k * 8)) }, *a);
                }
            }
            for (k, a) in acc.iter().enumerate().take(width) {
                // SAFETY: (c0 + k) * 8 + 8 <= hd = dst.len().
                unsafe { _mm256_storeu_ps(dp.add((c0 + k) * 8), *a) };
            }
            c0 += width;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn swiglu(gate: &[f32], up: &mut [f32]) {
        let n = gate.len().min(up.len());
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n.
            unsafe {
                let g = _mm256_loadu_ps(gate.as_ptr().add(i));
                let u = _mm256_loadu_ps(up.as_ptr().add(i));
                let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
                let silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
                _mm256_storeu_ps(up.as_mut_ptr().add(i), _mm256_mul_ps(u, silu));
            }
            i += 8;
        }
        for j in i..n {
            up[j] *= gate[j] / (1.0 + (-gate[j]).exp());
        }
    }

    /// Q8_0 weights against `R` rows of activations.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn q8_0<const R: usize>(w: &[BlockQ8_0], a: [&[BlockQ8]; R]) -> [f32; R] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        for (b, wb) in w.iter().enumerate() {
            // SAFETY: `qs` is 32 readable bytes.
            let wq = unsafe { _mm256_loadu_si256(wb.qs.as_ptr() as *const __m256i) };
            // maddubs multiplies unsigned by signed: move the weights' signs onto the inputs.
            let wabs = _mm256_sign_epi8(wq, wq);
            for r in 0..R {
                let ab = &a[r][b];
                // SAFETY: `qs` is 32 readable bytes.
                let q = unsafe { _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i) };
                let pairs = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(q, wq));
                let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(wb.d * ab.d), sums, acc[r]);
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = hsum(acc[r]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q4_1_bytes(rows: usize, cols: usize, seed: u32) -> Vec<u8> {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        };
        let mut bytes = Vec::new();
        for _ in 0..rows * cols / QK {
            bytes.extend_from_slice(&f16::from_f32(0.01 + next() as f32 / 5000.0).to_le_bytes());
            bytes.extend_from_slice(&f16::from_f32(-0.05 + next() as f32 / 3000.0).to_le_bytes());
            for _ in 0..16 {
                bytes.push(next());
            }
        }
        bytes
    }

    fn inputs(n: usize, cols: usize) -> Vec<f32> {
        (0..n * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect()
    }

    fn reference(w: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n * rows];
        for i in 0..n {
            for r in 0..rows {
                out[i * rows + r] =
                    (0..cols).map(|c| w[r * cols + c] as f64 * x[i * cols + c] as f64).sum::<f64>() as f32;
            }
        }
        out
    }

    fn close(a: &[f32], b: &[f32], rel: f32) {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= rel * scale, "element {i}: {x} vs {y} (scale {scale})");
        }
    }

    #[test]
    fn q4_1_matches_the_dequantized_product() {
        let (rows, cols, n) = (37, 96, 7);
        let m = Matrix::from_gguf_blocks(BlockFormat::Q4_1, rows, cols, &q4_1_bytes(rows, cols, 7)).unwrap();
        let x = inputs(n, cols);
        close(&m.matmul(&x, n), &reference(&m.dequantize(), &x, rows, cols, n), 0.02);
    }

    #[test]
    fn q8_0_matches_the_dequantized_product() {
        let (rows, cols, n) = (29, 64, 5);
        let mut bytes = Vec::new();
        for b in 0..rows * cols / QK {
            bytes.extend_from_slice(&f16::from_f32(0.02 + b as f32 / 1000.0).to_le_bytes());
            bytes.extend((0..32).map(|j| ((b * 7 + j * 13) % 255) as u8));
        }
        let m = Matrix::from_gguf_blocks(BlockFormat::Q8_0, rows, cols, &bytes).unwrap();
        let x = inputs(n, cols);
        close(&m.matmul(&x, n), &reference(&m.dequantize(), &x, rows, cols, n), 0.02);
    }

    #[test]
    fn a_batch_gives_the_same_numbers_as_rows_one_by_one() {
        let (rows, cols, n) = (50, 128, 9);
        let m = Matrix::from_gguf_blocks(BlockFormat::Q4_1, rows, cols, &q4_1_bytes(rows, cols, 3)).unwrap();
        let x = inputs(n, cols);
        let batch = m.matmul(&x, n);
        for i in 0..n {
            let single = m.matmul(&x[i * cols..(i + 1) * cols], 1);
            assert_eq!(&batch[i * rows..(i + 1) * rows], single.as_slice(), "row {i}");
        }
    }

    #[test]
    fn stacking_keeps_rows_in_order() {
        let a = Matrix::from_gguf_blocks(BlockFormat::Q4_1, 3, 32, &q4_1_bytes(3, 32, 1)).unwrap();
        let b = Matrix::from_gguf_blocks(BlockFormat::Q4_1, 2, 32, &q4_1_bytes(2, 32, 2)).unwrap();
        let s = Matrix::stack(vec![a.clone(), b.clone()]).unwrap();
        assert_eq!(s.rows(), 5);
        assert_eq!(s.dequantize_row(3), b.dequantize_row(0));
        let f = Matrix::from_f32(1, 32, vec![1.0; 32]).unwrap();
        let mixed = Matrix::stack(vec![a.clone(), f]).unwrap();
        assert_eq!(mixed.dequantize_row(0), a.dequantize_row(0));
        assert_eq!(mixed.dequantize_row(3), vec![1.0; 32]);
    }

    #[test]
    fn attention_and_activation_match_plain_arithmetic() {
        let (hd, stride, offset, len) = (64, 192, 64, 37);
        let q: Vec<f32> = (0..hd).map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0).collect();
        let keys: Vec<f32> = (0..len * stride).map(|i| ((i * 11 % 17) as f32 - 8.0) / 8.0).collect();
        let values: Vec<f32> = (0..len * stride).map(|i| ((i * 5 % 19) as f32 - 9.0) / 9.0).collect();
        let scale = 0.125;
        let s: Vec<f64> = (0..len)
            .map(|p| (0..hd).map(|c| q[c] as f64 * keys[p * stride + offset + c] as f64).sum::<f64>() * scale as f64)
            .collect();
        let max = s.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
        let total: f64 = e.iter().sum();
        let want: Vec<f32> = (0..hd)
            .map(|c| (0..len).map(|p| e[p] / total * values[p * stride + offset + c] as f64).sum::<f64>() as f32)
            .collect();
        let mut dst = vec![0f32; hd];
        attend(&q, HeadCache { keys: &keys, values: &values, stride, offset }, len, scale, &mut Vec::new(), &mut dst);
        close(&dst, &want, 1e-4);

        let gate: Vec<f32> = (0..29).map(|i| (i as f32 - 14.0) / 2.0).collect();
        let mut up: Vec<f32> = (0..29).map(|i| 1.0 + i as f32 / 10.0).collect();
        let want: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| u * g / (1.0 + (-g).exp())).collect();
        swiglu(&gate, &mut up);
        close(&up, &want, 1e-5);
    }

    #[test]
    fn wrong_sizes_are_errors() {
        assert!(Matrix::from_gguf_blocks(BlockFormat::Q4_1, 2, 32, &[0u8; 39]).is_err());
        assert!(Matrix::from_gguf_blocks(BlockFormat::Q8_0, 1, 33, &[0u8; 34]).is_err());
        assert!(Matrix::from_f32(2, 2, vec![0.0; 3]).is_err());
    }
}
