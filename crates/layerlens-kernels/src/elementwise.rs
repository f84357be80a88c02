//! Per-element passes of the training backward: activation masks and
//! per-channel sums (a convolution's bias gradient).

use crate::conv::FusedActivation;
use crate::isa::{self, Isa};
use crate::multiversion;
use rayon::prelude::*;

/// Elements per parallel task of the element-wise passes.
const CHUNK: usize = 1 << 14;

multiversion! {
    fn mask_chunk(act: FusedActivation, dy: &[f32], y: &[f32], dz: &mut [f32]) {
        match act {
            FusedActivation::None => dz.copy_from_slice(dy),
            FusedActivation::Relu => {
                for ((d, &g), &v) in dz.iter_mut().zip(dy).zip(y) {
                    *d = if v > 0.0 { g } else { 0.0 };
                }
            }
            FusedActivation::Clip(lo, hi) => {
                for ((d, &g), &v) in dz.iter_mut().zip(dy).zip(y) {
                    *d = if v > lo && v < hi { g } else { 0.0 };
                }
            }
        }
    }
}

/// `dz = dy` where the activation passed its input through (judged from its
/// output `y`), 0 elsewhere: ReLU `y > 0`; clip `lo < y < hi` (PyTorch's
/// hardtanh rule).
///
/// # Panics
/// If the three slices differ in length.
pub fn activation_mask(act: FusedActivation, dy: &[f32], y: &[f32], dz: &mut [f32]) {
    assert!(
        dy.len() == y.len() && dz.len() == y.len(),
        "mask slice lengths"
    );
    let isa = isa::active();
    dz.par_chunks_mut(CHUNK)
        .zip(dy.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
        .for_each(|(dz, (dy, y))| mask_chunk(isa, act, dy, y, dz));
}

multiversion! {
    /// `Σ v` in sixteen f32 lanes (the same order on every path).
    fn lane_sum(v: &[f32]) -> f32 {
        let mut acc = [0f32; 16];
        let mut chunks = v.chunks_exact(16);
        for c in &mut chunks {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a += x;
            }
        }
        for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
            *a += x;
        }
        let mut width = 8;
        while width > 0 {
            for i in 0..width {
                acc[i] += acc[i + width];
            }
            width /= 2;
        }
        acc[0]
    }
}

/// Sums an NCHW slice (`n` samples, `c` channels, `hw` positions each) over
/// everything but the channel axis.
///
/// # Panics
/// If `v.len() != n · c · hw`.
pub fn channel_sums(v: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
    assert_eq!(v.len(), n * c * hw, "channel sum slice length");
    let isa: Isa = isa::active();
    (0..c)
        .into_par_iter()
        .map(|ch| {
            (0..n)
                .map(|i| lane_sum(isa, &v[(i * c + ch) * hw..(i * c + ch + 1) * hw]))
                .sum()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_sums_agree_on_every_path() {
        let y: Vec<f32> = (0..40_000)
            .map(|i| ((i * 37) % 101) as f32 / 10.0 - 5.0)
            .collect();
        let dy: Vec<f32> = (0..40_000).map(|i| (i % 7) as f32).collect();
        for isa in Isa::supported() {
            isa::with_isa(isa, || {
                let mut dz = vec![f32::NAN; y.len()];
                activation_mask(FusedActivation::Clip(-1.0, 2.0), &dy, &y, &mut dz);
                for ((&d, &g), &v) in dz.iter().zip(&dy).zip(&y) {
                    assert_eq!(d, if v > -1.0 && v < 2.0 { g } else { 0.0 });
                }
                let sums = channel_sums(&dy, 4, 10, 1000);
                for (ch, &s) in sums.iter().enumerate() {
                    let want: f32 = (0..4)
                        .flat_map(|i| dy[(i * 10 + ch) * 1000..(i * 10 + ch + 1) * 1000].iter())
                        .sum();
                    assert_eq!(s, want, "{isa} channel {ch}");
                }
            });
        }
    }
}
