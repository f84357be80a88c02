//! Training-mode batch normalisation on f32 slices laid out `(N, C, S)` (`S` is
//! `H·W` for NCHW, 1 for `(N, C)`), forward and backward, optionally followed by
//! a ReLU.
//!
//! Work is split across channels. A channel's values are `N` strided runs of `S`
//! elements; each kernel makes all its passes over one channel back to back, so
//! after the first one the channel is read from cache, not memory. Sums run in
//! f32 over blocks of [`BLOCK`] elements (eight lanes, which vectorises) and in f64
//! across blocks; the variance is the mean of squared deviations from the block-
//! summed mean (two passes), not `E[x²] - E[x]²`.
//!
//! Backward: with `x̂ = (x - mean) · inv_std` and `M = N·S` values per channel,
//! `dbias = Σ dy`, `dweight = Σ dy·x̂` and
//! `dx = weight · inv_std / M · (M·dy - Σ dy - x̂ · Σ dy·x̂)`, the full gradient
//! (through the batch mean and variance too).

use crate::isa;
use crate::multiversion;
use rayon::prelude::*;

/// Elements summed in f32 before the partial sum joins the f64 total.
pub const BLOCK: usize = 256;

/// Sizes of a batch norm's input, seen as `(batch, channels, spatial)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BnGeometry {
    /// Samples (`N`).
    pub batch: usize,
    /// Channels (`C`).
    pub channels: usize,
    /// Elements per sample and channel (`H·W`; 1 for an `(N, C)` input).
    pub spatial: usize,
}

impl BnGeometry {
    /// The geometry of an `(N, C)` or `(N, C, H, W)` shape; `None` for other ranks.
    pub fn of_dims(dims: &[usize]) -> Option<Self> {
        match *dims {
            [n, c] => Some(BnGeometry {
                batch: n,
                channels: c,
                spatial: 1,
            }),
            [n, c, h, w] => Some(BnGeometry {
                batch: n,
                channels: c,
                spatial: h * w,
            }),
            _ => None,
        }
    }

    /// Elements of the whole tensor.
    pub fn len(&self) -> usize {
        self.batch * self.channels * self.spatial
    }

    /// Whether the tensor has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values per channel (`M = N·S`), what the statistics average over.
    pub fn per_channel(&self) -> usize {
        self.batch * self.spatial
    }
}

/// Per-channel batch statistics (f64): mean and biased variance.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchStats {
    /// Mean over the batch and spatial positions.
    pub mean: Vec<f64>,
    /// Biased variance (divided by `M`), what the normalisation uses.
    pub var: Vec<f64>,
}

impl BatchStats {
    /// `1 / sqrt(var + eps)` for channel `c`.
    pub fn inv_std(&self, c: usize, eps: f64) -> f64 {
        1.0 / (self.var[c] + eps).sqrt()
    }
}

/// Per-channel parameter gradients of a batch norm.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BnParamGrads {
    /// `Σ dy · x̂` (the weight's gradient).
    pub dweight: Vec<f32>,
    /// `Σ dy` (the bias's gradient).
    pub dbias: Vec<f32>,
}

/// The `N` runs of channel `c` in a `(N, C, S)` slice.
fn channel_runs<'a>(
    g: &BnGeometry,
    v: &'a [f32],
    c: usize,
) -> impl Iterator<Item = &'a [f32]> + Clone + 'a {
    let (s, cs) = (g.spatial, g.channels);
    (0..g.batch).map(move |i| &v[(i * cs + c) * s..(i * cs + c + 1) * s])
}

/// `out` cut into runs and grouped by channel, so that channels can be written in
/// parallel (run `i·C + c` belongs to channel `c`).
fn runs_by_channel<'a>(g: &BnGeometry, out: &'a mut [f32]) -> Vec<Vec<&'a mut [f32]>> {
    let mut by: Vec<Vec<&mut [f32]>> = (0..g.channels)
        .map(|_| Vec::with_capacity(g.batch))
        .collect();
    for (r, run) in out.chunks_mut(g.spatial).enumerate() {
        by[r % g.channels].push(run);
    }
    by
}

/// `Σ f(i)` over `0..n` in eight f32 lanes.
#[inline(always)]
fn lanes_sum(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let full = n / 8 * 8;
    let mut i = 0;
    while i < full {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(i + l);
        }
        i += 8;
    }
    for j in full..n {
        acc[j - full] += f(j);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `Σ f(i)` over `0..n`: f32 lanes within blocks of [`BLOCK`], f64 across them.
#[inline(always)]
fn block_sum(n: usize, f: impl Fn(usize) -> f32) -> f64 {
    let mut total = 0f64;
    let mut start = 0;
    while start < n {
        let len = BLOCK.min(n - start);
        total += lanes_sum(len, |i| f(start + i)) as f64;
        start += len;
    }
    total
}

/// The batch statistics of channel `c`: `(mean, biased variance)`.
fn channel_moments(g: &BnGeometry, x: &[f32], c: usize) -> (f64, f64) {
    let m = g.per_channel() as f64;
    let sum: f64 = channel_runs(g, x, c)
        .map(|r| block_sum(r.len(), |i| r[i]))
        .sum();
    // Deviations from the f32 mean; `dev` corrects for its rounding.
    let m32 = (sum / m) as f32;
    let (mut dev, mut sq) = (0f64, 0f64);
    for r in channel_runs(g, x, c) {
        dev += block_sum(r.len(), |i| r[i] - m32);
        sq += block_sum(r.len(), |i| {
            let d = r[i] - m32;
            d * d
        });
    }
    let shift = dev / m;
    let mean = m32 as f64 + shift;
    let var = (sq / m - shift * shift).max(0.0);
    (mean, var)
}

multiversion! {
    /// Normalises channel `ch` into its output runs; returns its `(mean, variance)`.
    fn forward_channel(
        g: &BnGeometry,
        x: &[f32],
        ch: usize,
        y_runs: Vec<&mut [f32]>,
        weight: Option<&[f32]>,
        bias: Option<&[f32]>,
        eps: f64,
        relu: bool,
    ) -> (f64, f64) {
    let (mean, var) = channel_moments(g, x, ch);
    let inv_std = 1.0 / (var + eps).sqrt();
    let w = weight.map_or(1.0, |w| w[ch] as f64);
    let b = bias.map_or(0.0, |b| b[ch] as f64);
    // y = (x - m32) · scale + shift, with m32 the f32 mean (exact
    // subtraction near the mean) and `shift` absorbing its rounding.
    let m32 = mean as f32;
    let scale = w * inv_std;
    let shift = (b - (mean - m32 as f64) * scale) as f32;
    let scale = scale as f32;
    for (xr, yr) in channel_runs(g, x, ch).zip(y_runs) {
        if relu {
            for (o, &v) in yr.iter_mut().zip(xr) {
                *o = ((v - m32) * scale + shift).max(0.0);
            }
        } else {
            for (o, &v) in yr.iter_mut().zip(xr) {
                *o = (v - m32) * scale + shift;
            }
        }
    }
    (mean, var)
    }
}

/// Forward in training mode: normalises `x` (`(N, C, S)`, `g.len()` elements) with
/// its batch statistics, applies `weight`/`bias` (one per channel; `None`: 1 and
/// 0) and, if `relu`, `max(·, 0)`, writing `y`. Returns the statistics.
///
/// # Panics
/// If a slice's length does not match `g` (the callers check).
pub fn batch_norm_train_forward(
    g: &BnGeometry,
    x: &[f32],
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f64,
    relu: bool,
    y: &mut [f32],
) -> BatchStats {
    assert_eq!(x.len(), g.len());
    assert_eq!(y.len(), g.len());
    let c = g.channels;
    assert!(weight.is_none_or(|w| w.len() == c) && bias.is_none_or(|b| b.len() == c));
    if g.is_empty() {
        return BatchStats {
            mean: vec![f64::NAN; c],
            var: vec![f64::NAN; c],
        };
    }
    let isa = isa::active();
    let moments: Vec<(f64, f64)> = runs_by_channel(g, y)
        .into_par_iter()
        .enumerate()
        .map(|(ch, y_runs)| forward_channel(isa, g, x, ch, y_runs, weight, bias, eps, relu))
        .collect();
    let (mean, var) = moments.into_iter().unzip();
    BatchStats { mean, var }
}

multiversion! {
    /// Channel `ch` of the backward: writes its input gradient runs when given and
    /// returns `(Σ dz·x̂, Σ dz)`.
    fn backward_channel(
        g: &BnGeometry,
        x: &[f32],
        dy: &[f32],
        relu_out: Option<&[f32]>,
        stats: &BatchStats,
        weight: Option<&[f32]>,
        eps: f64,
        ch: usize,
        dx_runs: Option<Vec<&mut [f32]>>,
    ) -> (f32, f32) {
        let c = g.channels;
        let m = g.per_channel() as f64;
    let mean = stats.mean[ch];
    let inv_std = stats.inv_std(ch, eps);
    let m32 = mean as f32;
    let d = mean - m32 as f64;
    // The forward output's run `run` (for the ReLU mask).
    let out_run = |run: usize| {
        relu_out.map(|y| &y[(run * c + ch) * g.spatial..(run * c + ch + 1) * g.spatial])
    };
    let (mut sdy, mut sdyx) = (0f64, 0f64);
    for (run, (xr, dyr)) in channel_runs(g, x, ch)
        .zip(channel_runs(g, dy, ch))
        .enumerate()
    {
        match out_run(run) {
            Some(yr) => {
                // The gradient that reaches the normalisation.
                let dz = |i: usize| if yr[i] > 0.0 { dyr[i] } else { 0.0 };
                sdy += block_sum(xr.len(), dz);
                sdyx += block_sum(xr.len(), |i| dz(i) * (xr[i] - m32));
            }
            None => {
                sdy += block_sum(xr.len(), |i| dyr[i]);
                sdyx += block_sum(xr.len(), |i| dyr[i] * (xr[i] - m32));
            }
        }
    }
    // Σ dz·x̂ = inv_std · Σ dz·(x - mean), with x - mean = (x - m32) - d.
    let sdxhat = inv_std * (sdyx - d * sdy);
    if let Some(dx_runs) = dx_runs {
        // dx = a·dz + b·(x - m32) + k: a = w·inv_std,
        // b = -a·inv_std·Σdz·x̂ / M, k = -a·Σdz / M - b·d.
        let w = weight.map_or(1.0, |w| w[ch] as f64);
        let a = w * inv_std;
        let b = -a * inv_std * sdxhat / m;
        let k = (-a * sdy / m - b * d) as f32;
        let (a, b) = (a as f32, b as f32);
        for (run, ((xr, dyr), dxr)) in channel_runs(g, x, ch)
            .zip(channel_runs(g, dy, ch))
            .zip(dx_runs)
            .enumerate()
        {
            match out_run(run) {
                Some(yr) => {
                    for (((o, &gv), &xv), &yv) in dxr.iter_mut().zip(dyr).zip(xr).zip(yr) {
                        let dz = if yv > 0.0 { gv } else { 0.0 };
                        *o = a * dz + b * (xv - m32) + k;
                    }
                }
                None => {
                    for ((o, &gv), &xv) in dxr.iter_mut().zip(dyr).zip(xr) {
                        *o = a * gv + b * (xv - m32) + k;
                    }
                }
            }
        }
    }
    (sdxhat as f32, sdy as f32)
    }
}

/// Backward of [`batch_norm_train_forward`]: from the input `x`, the upstream
/// gradient `dy`, the forward's statistics and `eps`, the parameter gradients,
/// and the input gradient into `dx` when given. With `relu_out` (the forward's
/// output when it applied a ReLU) the gradient is first masked to where that
/// output is positive.
///
/// # Panics
/// If a slice's length does not match `g` (the callers check).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train_backward(
    g: &BnGeometry,
    x: &[f32],
    dy: &[f32],
    relu_out: Option<&[f32]>,
    stats: &BatchStats,
    weight: Option<&[f32]>,
    eps: f64,
    dx: Option<&mut [f32]>,
) -> BnParamGrads {
    let c = g.channels;
    assert_eq!(x.len(), g.len());
    assert_eq!(dy.len(), g.len());
    assert!(relu_out.is_none_or(|y| y.len() == g.len()));
    assert!(stats.mean.len() == c && stats.var.len() == c);
    assert!(weight.is_none_or(|w| w.len() == c));
    if g.is_empty() {
        return BnParamGrads {
            dweight: vec![0.0; c],
            dbias: vec![0.0; c],
        };
    }
    let dx_runs: Vec<Option<Vec<&mut [f32]>>> = match dx {
        Some(dx) => {
            assert_eq!(dx.len(), g.len());
            runs_by_channel(g, dx).into_iter().map(Some).collect()
        }
        None => (0..c).map(|_| None).collect(),
    };
    let isa = isa::active();
    let sums: Vec<(f32, f32)> = dx_runs
        .into_par_iter()
        .enumerate()
        .map(|(ch, dx_runs)| {
            backward_channel(isa, g, x, dy, relu_out, stats, weight, eps, ch, dx_runs)
        })
        .collect();
    let (dweight, dbias) = sums.into_iter().unzip();
    BnParamGrads { dweight, dbias }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random sequence in `[-1, 1)` plus an offset.
    fn data(n: usize, seed: u64, offset: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f64 / (1u64 << 31) as f64 * 2.0 - 1.0) as f32 + offset
            })
            .collect()
    }

    /// Batch norm straight from its definition, in f64: `(y, dx, dweight, dbias)`.
    /// The input gradient is the finite-difference-free closed form derived
    /// element by element: `dx_j = Σ_i dy_i · ∂y_i/∂x_j`.
    #[allow(clippy::type_complexity)]
    fn reference(
        g: &BnGeometry,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        dy: &[f32],
        eps: f64,
        relu: bool,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (n, c, s) = (g.batch, g.channels, g.spatial);
        let m = (n * s) as f64;
        let idx = |i: usize, ch: usize, p: usize| (i * c + ch) * s + p;
        let mut y = vec![0.0; g.len()];
        let mut dx = vec![0.0; g.len()];
        let (mut dw, mut db) = (vec![0.0; c], vec![0.0; c]);
        for ch in 0..c {
            let all: Vec<usize> = (0..n)
                .flat_map(|i| (0..s).map(move |p| idx(i, ch, p)))
                .collect();
            let mean = all.iter().map(|&j| x[j] as f64).sum::<f64>() / m;
            let var = all
                .iter()
                .map(|&j| (x[j] as f64 - mean).powi(2))
                .sum::<f64>()
                / m;
            let istd = 1.0 / (var + eps).sqrt();
            let xhat = |j: usize| (x[j] as f64 - mean) * istd;
            let mut dz = vec![0.0; g.len()];
            for &j in &all {
                let v = xhat(j) * w[ch] as f64 + b[ch] as f64;
                y[j] = if relu { v.max(0.0) } else { v };
                dz[j] = if relu && v <= 0.0 { 0.0 } else { dy[j] as f64 };
                db[ch] += dz[j];
                dw[ch] += dz[j] * xhat(j);
            }
            // ∂x̂_i/∂x_j = istd·(δ_ij - 1/M - x̂_i·x̂_j/M).
            for &jj in &all {
                let mut acc = 0.0;
                for &ii in &all {
                    let delta = if ii == jj { 1.0 } else { 0.0 };
                    acc += dz[ii] * istd * (delta - 1.0 / m - xhat(ii) * xhat(jj) / m);
                }
                dx[jj] = acc * w[ch] as f64;
            }
        }
        (y, dx, dw, db)
    }

    fn close(got: &[f32], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a as f64 - b).abs() <= tol * (1.0 + b.abs()),
                "{what}[{i}]: {a} vs {b}"
            );
        }
    }

    #[test]
    fn forward_and_backward_match_the_definition() {
        for isa in crate::isa::Isa::supported() {
            crate::isa::with_isa(isa, forward_and_backward_match_the_definition_on_this_path);
        }
    }

    fn forward_and_backward_match_the_definition_on_this_path() {
        let cases = [
            (
                BnGeometry {
                    batch: 5,
                    channels: 3,
                    spatial: 1,
                },
                false,
            ),
            (
                BnGeometry {
                    batch: 1,
                    channels: 4,
                    spatial: 13,
                },
                false,
            ),
            (
                BnGeometry {
                    batch: 6,
                    channels: 2,
                    spatial: 1,
                },
                true,
            ),
            (
                BnGeometry {
                    batch: 3,
                    channels: 5,
                    spatial: 35,
                },
                false,
            ),
            (
                BnGeometry {
                    batch: 2,
                    channels: 3,
                    spatial: 300,
                },
                true,
            ),
        ];
        for (k, (g, relu)) in cases.into_iter().enumerate() {
            let x = data(g.len(), 1 + k as u64, 3.0);
            let dy = data(g.len(), 100 + k as u64, 0.0);
            let w = data(g.channels, 200 + k as u64, 1.0);
            let b = data(g.channels, 300 + k as u64, 0.0);
            let eps = 1e-3;
            let (y_ref, dx_ref, dw_ref, db_ref) = reference(&g, &x, &w, &b, &dy, eps, relu);
            let mut y = vec![0.0; g.len()];
            let stats = batch_norm_train_forward(&g, &x, Some(&w), Some(&b), eps, relu, &mut y);
            close(&y, &y_ref, 2e-6, "y");
            let mut dx = vec![0.0; g.len()];
            let relu_out = relu.then_some(y.as_slice());
            let grads = batch_norm_train_backward(
                &g,
                &x,
                &dy,
                relu_out,
                &stats,
                Some(&w),
                eps,
                Some(&mut dx),
            );
            close(&dx, &dx_ref, 1e-5, "dx");
            close(&grads.dweight, &dw_ref, 1e-5, "dweight");
            close(&grads.dbias, &db_ref, 1e-5, "dbias");
            // Without dx only the sums are made, and they are the same.
            let only =
                batch_norm_train_backward(&g, &x, &dy, relu_out, &stats, Some(&w), eps, None);
            assert_eq!(only, grads);
        }
    }

    #[test]
    fn statistics_survive_a_large_offset() {
        for isa in crate::isa::Isa::supported() {
            crate::isa::with_isa(isa, statistics_survive_a_large_offset_on_this_path);
        }
    }

    fn statistics_survive_a_large_offset_on_this_path() {
        // Mean 1000, standard deviation ~0.58: E[x²] - E[x]² in f32 would lose it all.
        let g = BnGeometry {
            batch: 4,
            channels: 2,
            spatial: 999,
        };
        let x = data(g.len(), 7, 1000.0);
        let mut y = vec![0.0; g.len()];
        let stats = batch_norm_train_forward(&g, &x, None, None, 1e-5, false, &mut y);
        for ch in 0..2 {
            let v: Vec<f64> = channel_runs(&g, &x, ch)
                .flatten()
                .map(|&v| v as f64)
                .collect();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / v.len() as f64;
            assert!(
                (stats.mean[ch] - mean).abs() < 1e-9,
                "{} {mean}",
                stats.mean[ch]
            );
            assert!(
                (stats.var[ch] / var - 1.0).abs() < 1e-6,
                "{} {var}",
                stats.var[ch]
            );
        }
        let s: f64 = y.iter().map(|&v| v as f64).sum();
        assert!(s.abs() < 1e-2, "normalised output sums to {s}");
    }

    #[test]
    fn an_empty_batch_gives_nan_statistics_not_a_panic() {
        let g = BnGeometry {
            batch: 0,
            channels: 3,
            spatial: 4,
        };
        let stats = batch_norm_train_forward(&g, &[], None, None, 1e-5, false, &mut []);
        assert!(stats.mean.iter().all(|m| m.is_nan()));
        let grads =
            batch_norm_train_backward(&g, &[], &[], None, &stats, None, 1e-5, Some(&mut []));
        assert_eq!(grads.dbias, vec![0.0; 3]);
    }
}
