//! 2-D max and average pooling on f32 NCHW slices, forward and backward, with
//! implicit padding (max pooling never selects a padded cell; average pooling
//! counts padded cells or not, as PyTorch's `count_include_pad`).
//!
//! Max pooling's backward recomputes each window's first maximum (PyTorch's tie
//! rule) instead of storing indices, so the forward allocates only its output.

use crate::conv::valid_cols;
use crate::isa::{self, Isa};
use crate::multiversion;
use rayon::prelude::*;

/// A pooling's sizes; `pads` are `[top, bottom, left, right]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolGeometry {
    /// Samples.
    pub batch: usize,
    /// Channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Window `[h, w]`.
    pub kernel: [usize; 2],
    /// Stride `[h, w]`.
    pub stride: [usize; 2],
    /// Padding `[top, bottom, left, right]`.
    pub pads: [usize; 4],
}

impl PoolGeometry {
    /// Output `(height, width)`; `None` when the window does not fit or a size is zero.
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        if self.kernel.contains(&0) || self.stride.contains(&0) {
            return None;
        }
        let ph = self.h + self.pads[0] + self.pads[1];
        let pw = self.w + self.pads[2] + self.pads[3];
        if ph < self.kernel[0] || pw < self.kernel[1] {
            return None;
        }
        Some((
            (ph - self.kernel[0]) / self.stride[0] + 1,
            (pw - self.kernel[1]) / self.stride[1] + 1,
        ))
    }

    /// Elements of the input and of the output.
    pub fn lens(&self) -> Option<(usize, usize)> {
        let (oh, ow) = self.out_hw()?;
        let planes = self.batch * self.c;
        Some((planes * self.h * self.w, planes * oh * ow))
    }

    /// The input rows and columns window `(oy, ox)` covers, clipped to the input.
    #[inline(always)]
    fn window(&self, oy: usize, ox: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let clip = |o: usize, s: usize, k: usize, pad: usize, size: usize| {
            let start = (o * s) as isize - pad as isize;
            let end = (start + k as isize).min(size as isize);
            start.max(0) as usize..end.max(0) as usize
        };
        (
            clip(oy, self.stride[0], self.kernel[0], self.pads[0], self.h),
            clip(ox, self.stride[1], self.kernel[1], self.pads[2], self.w),
        )
    }
}

/// The flat index (within a plane) of the first maximum of window `(oy, ox)`.
#[inline(always)]
fn argmax(g: &PoolGeometry, plane: &[f32], oy: usize, ox: usize) -> Option<usize> {
    let (rows, cols) = g.window(oy, ox);
    let mut best: Option<(usize, f32)> = None;
    for r in rows {
        for c in cols.clone() {
            let v = plane[r * g.w + c];
            // NaN wins, as in PyTorch.
            if best.is_none_or(|(_, b)| v > b || v.is_nan() && !b.is_nan()) {
                best = Some((r * g.w + c, v));
            }
        }
    }
    best.map(|(i, _)| i)
}

multiversion! {
    /// One plane of max pooling, row by row: each window row's taps are folded
    /// into the output row with a NaN-sticky maximum, which vectorises across
    /// output columns (the value equals the first maximum's; NaN wins, as in
    /// PyTorch; an all-padding window is -inf).
    fn max_pool_plane(g: &PoolGeometry, x_p: &[f32], y_p: &mut [f32]) {
        let (oh, ow) = g.out_hw().expect("validated geometry");
        for (oy, out) in y_p.chunks_mut(ow).enumerate().take(oh) {
            out.fill(f32::NEG_INFINITY);
            let (rows, _) = g.window(oy, 0);
            for r in rows {
                let row = &x_p[r * g.w..(r + 1) * g.w];
                for kx in 0..g.kernel[1] {
                    let off = kx as isize - g.pads[2] as isize;
                    let (lo, hi) = valid_cols(ow, g.w, g.stride[1], off);
                    if hi > lo && g.stride[1] == 1 {
                        let s0 = (lo as isize + off) as usize;
                        for (o, &v) in out[lo..hi].iter_mut().zip(&row[s0..s0 + hi - lo]) {
                            *o = sticky_max(*o, v);
                        }
                    } else {
                        for (ox, o) in out.iter_mut().enumerate().take(hi).skip(lo) {
                            *o = sticky_max(*o, row[((ox * g.stride[1]) as isize + off) as usize]);
                        }
                    }
                }
            }
        }
    }
}

/// `max(acc, v)` where a NaN, once in `acc` or arriving as `v`, stays.
#[inline(always)]
fn sticky_max(acc: f32, v: f32) -> f32 {
    if v > acc || v.is_nan() {
        v
    } else {
        acc
    }
}

multiversion! {
    fn max_pool_plane_backward(g: &PoolGeometry, x_p: &[f32], dy_p: &[f32], dx_p: &mut [f32]) {
        let (oh, ow) = g.out_hw().expect("validated geometry");
        dx_p.fill(0.0);
        for oy in 0..oh {
            for ox in 0..ow {
                if let Some(i) = argmax(g, x_p, oy, ox) {
                    dx_p[i] += dy_p[oy * ow + ox];
                }
            }
        }
    }
}

multiversion! {
    fn avg_pool_plane(g: &PoolGeometry, x_p: &[f32], y_p: &mut [f32], count_include_pad: bool) {
        let (oh, ow) = g.out_hw().expect("validated geometry");
        for oy in 0..oh {
            for ox in 0..ow {
                let (rows, cols) = g.window(oy, ox);
                let mut s = 0.0f32;
                for r in rows {
                    s += x_p[r * g.w + cols.start..r * g.w + cols.end].iter().sum::<f32>();
                }
                y_p[oy * ow + ox] = s / divisor(g, oy, ox, count_include_pad);
            }
        }
    }
}

multiversion! {
    fn avg_pool_plane_backward(g: &PoolGeometry, dy_p: &[f32], dx_p: &mut [f32], count_include_pad: bool) {
        let (oh, ow) = g.out_hw().expect("validated geometry");
        dx_p.fill(0.0);
        for oy in 0..oh {
            for ox in 0..ow {
                let (rows, cols) = g.window(oy, ox);
                let v = dy_p[oy * ow + ox] / divisor(g, oy, ox, count_include_pad);
                for r in rows {
                    for d in &mut dx_p[r * g.w + cols.start..r * g.w + cols.end] {
                        *d += v;
                    }
                }
            }
        }
    }
}

/// Max pooling: `y` is NCHW of the output size.
pub fn max_pool_forward(g: &PoolGeometry, x: &[f32], y: &mut [f32]) {
    let (oh, ow) = g.out_hw().expect("validated geometry");
    let isa: Isa = isa::active();
    y.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(g.h * g.w))
        .for_each(|(y_p, x_p)| max_pool_plane(isa, g, x_p, y_p));
}

/// Max pooling's input gradient: each window's gradient goes to its first maximum.
pub fn max_pool_backward(g: &PoolGeometry, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (oh, ow) = g.out_hw().expect("validated geometry");
    let hw = g.h * g.w;
    let isa = isa::active();
    dx.par_chunks_mut(hw)
        .zip(x.par_chunks(hw))
        .zip(dy.par_chunks(oh * ow))
        .for_each(|((dx_p, x_p), dy_p)| max_pool_plane_backward(isa, g, x_p, dy_p, dx_p));
}

#[inline(always)]
fn divisor(g: &PoolGeometry, oy: usize, ox: usize, count_include_pad: bool) -> f32 {
    if count_include_pad {
        (g.kernel[0] * g.kernel[1]) as f32
    } else {
        let (r, c) = g.window(oy, ox);
        (r.len() * c.len()).max(1) as f32
    }
}

/// Average pooling.
pub fn avg_pool_forward(g: &PoolGeometry, x: &[f32], y: &mut [f32], count_include_pad: bool) {
    let (oh, ow) = g.out_hw().expect("validated geometry");
    let isa = isa::active();
    y.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(g.h * g.w))
        .for_each(|(y_p, x_p)| avg_pool_plane(isa, g, x_p, y_p, count_include_pad));
}

/// Average pooling's input gradient.
pub fn avg_pool_backward(g: &PoolGeometry, dy: &[f32], dx: &mut [f32], count_include_pad: bool) {
    let (oh, ow) = g.out_hw().expect("validated geometry");
    let isa = isa::active();
    dx.par_chunks_mut(g.h * g.w)
        .zip(dy.par_chunks(oh * ow))
        .for_each(|(dx_p, dy_p)| avg_pool_plane_backward(isa, g, dy_p, dx_p, count_include_pad));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row-wise forward equals each window's first maximum (NaN included)
    /// over strides, paddings and rectangular windows, on every path.
    #[test]
    fn max_pool_forward_equals_the_windows_first_maximum() {
        let mut rng = crate::testutil::Lcg(7);
        let mut next = || rng.below(usize::MAX);
        for _ in 0..60 {
            let (kh, kw) = (1 + next() % 4, 1 + next() % 4);
            let g = PoolGeometry {
                batch: 1 + next() % 2,
                c: 1 + next() % 3,
                h: kh + next() % 9,
                w: kw + next() % 9,
                kernel: [kh, kw],
                stride: [1 + next() % 3, 1 + next() % 3],
                pads: [next() % kh, next() % kh, next() % kw, next() % kw],
            };
            let (xl, yl) = g.lens().unwrap();
            let x: Vec<f32> = (0..xl)
                .map(|_| match next() % 23 {
                    0 => f32::NAN,
                    v => v as f32 - 11.0,
                })
                .collect();
            let (oh, ow) = g.out_hw().unwrap();
            let mut want = vec![0f32; yl];
            for (p, y_p) in want.chunks_mut(oh * ow).enumerate() {
                let x_p = &x[p * g.h * g.w..(p + 1) * g.h * g.w];
                for oy in 0..oh {
                    for ox in 0..ow {
                        y_p[oy * ow + ox] =
                            argmax(&g, x_p, oy, ox).map_or(f32::NEG_INFINITY, |i| x_p[i]);
                    }
                }
            }
            for isa in Isa::supported() {
                let mut y = vec![0f32; yl];
                crate::isa::with_isa(isa, || max_pool_forward(&g, &x, &mut y));
                for (a, b) in y.iter().zip(&want) {
                    assert!(
                        a == b || a.is_nan() && b.is_nan(),
                        "{isa} {g:?}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn max_pool_with_padding_ties_and_gradient() {
        for isa in crate::isa::Isa::supported() {
            crate::isa::with_isa(isa, max_pool_with_padding_ties_and_gradient_on_this_path);
        }
    }

    fn max_pool_with_padding_ties_and_gradient_on_this_path() {
        // One 3x4 plane, 2x2 windows, stride 2, one row of padding at the bottom.
        let g = PoolGeometry {
            batch: 1,
            c: 1,
            h: 3,
            w: 4,
            kernel: [2, 2],
            stride: [2, 2],
            pads: [0, 1, 0, 0],
        };
        let x = [
            1.0, 5.0, 2.0, 2.0, 5.0, 0.0, 2.0, -1.0, -3.0, -4.0, -7.0, -2.0,
        ];
        let mut y = [0.0; 4];
        max_pool_forward(&g, &x, &mut y);
        assert_eq!(y, [5.0, 2.0, -3.0, -2.0]);
        let mut dx = [9.0; 12];
        max_pool_backward(&g, &x, &[1.0, 2.0, 3.0, 4.0], &mut dx);
        // Ties go to the first maximum in scan order.
        assert_eq!(
            dx,
            [0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 4.0]
        );
    }

    #[test]
    fn avg_pool_counts_padding_as_asked() {
        for isa in crate::isa::Isa::supported() {
            crate::isa::with_isa(isa, avg_pool_counts_padding_as_asked_on_this_path);
        }
    }

    fn avg_pool_counts_padding_as_asked_on_this_path() {
        let g = PoolGeometry {
            batch: 1,
            c: 1,
            h: 2,
            w: 2,
            kernel: [3, 3],
            stride: [1, 1],
            pads: [1, 1, 1, 1],
        };
        let x = [1.0, 2.0, 3.0, 4.0];
        let mut y = [0.0; 4];
        avg_pool_forward(&g, &x, &mut y, true);
        assert_eq!(y, [10.0 / 9.0; 4]);
        avg_pool_forward(&g, &x, &mut y, false);
        assert_eq!(y, [2.5; 4]);
        let mut dx = [0.0; 4];
        avg_pool_backward(&g, &[4.0, 4.0, 4.0, 4.0], &mut dx, false);
        assert_eq!(dx, [4.0; 4]);
    }
}
