//! Winograd F(2×2, 3×3) for 3×3 stride-1 convolutions: each 2×2 output tile is
//! computed from a 4×4 input tile with 16 products per (input, output) channel
//! pair instead of 36, so the GEMM work is 16/36 of im2col's (2.25× less).
//!
//! `U = G·g·Gᵀ` (kernel, per call), `V = Bᵀ·d·B` (input tiles), 16 GEMMs
//! `M_ξ = U_ξ · V_ξ` on [`packed`](crate::packed), `Y = Aᵀ·M·A`. F(2, 3)'s
//! transforms only add, subtract and halve, so the result is as accurate as the
//! direct sum (F(4, 3) and larger amplify rounding by their ±2, ±½ points).
//! The input transform's row step runs over whole padded rows (vectorised); its
//! column step and the output transform go tile by tile (scalar), and the kernel
//! is transformed on every call: at batch 1 on small maps these costs exceed
//! the GEMM saving, which is why [`pays`] keeps Winograd to calls with many
//! tiles.

use crate::conv::{ConvGeometry, Epilogue};
use crate::isa::Isa;
use crate::multiversion;
use crate::packed::{gemm_packed, Lhs, RhsSource};
use crate::scratch::{with_slot, Slot};
use rayon::prelude::*;

/// Whether `g` is a convolution this module computes.
pub fn applies(g: &ConvGeometry) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == [1, 1] && g.dilation == [1, 1] && g.groups == 1
}

/// Tiles per sample `(rows, columns)`.
fn tiles(g: &ConvGeometry) -> (usize, usize) {
    let (oh, ow) = g.out_hw().expect("validated geometry");
    (oh.div_ceil(2), ow.div_ceil(2))
}

/// Whether Winograd should beat im2col for `g`. Measured on ResNet-18
/// (docs/performance.md): it pays once a call has a few hundred tiles to spread
/// the per-call kernel transform over (batch 8: 12–15 % faster forward), and
/// loses at batch 1 on 14×14 and 7×7 maps (16–49 tiles).
pub fn pays(g: &ConvGeometry) -> bool {
    let (th, tw) = tiles(g);
    applies(g) && g.c_in >= 8 && g.c_out >= 8 && g.batch * th * tw >= MIN_TILES
}

/// Tiles per call from which [`pays`] chooses Winograd.
pub const MIN_TILES: usize = 256;

/// `U_ξ = (G·g·Gᵀ)_ξ` for every (output, input) channel pair of an OIHW 3×3
/// kernel: 16 row-major `co × ci` matrices, `u[(ξ·co + o)·ci + i]` (parallel
/// over output channels, each writing its rows of all 16).
fn transform_kernel(g: &ConvGeometry, w: &[f32], u: &mut [f32]) {
    let (ci, co) = (g.c_in, g.c_out);
    // u_rows[o] = row o of each of the 16 matrices.
    let mut u_rows: Vec<Vec<&mut [f32]>> = (0..co).map(|_| Vec::with_capacity(16)).collect();
    for (r, row) in u.chunks_mut(ci).enumerate() {
        u_rows[r % co].push(row);
    }
    u_rows.into_par_iter().enumerate().for_each(|(o, mut xis)| {
        for i in 0..ci {
            let k = &w[(o * ci + i) * 9..(o * ci + i + 1) * 9];
            // G·g: 4×3.
            let mut gg = [[0f32; 3]; 4];
            for c in 0..3 {
                let (k0, k1, k2) = (k[c], k[3 + c], k[6 + c]);
                gg[0][c] = k0;
                gg[1][c] = 0.5 * (k0 + k1 + k2);
                gg[2][c] = 0.5 * (k0 - k1 + k2);
                gg[3][c] = k2;
            }
            // (G·g)·Gᵀ: 4×4, element (a, q) into matrix ξ = 4a + q.
            for (a, row) in gg.iter().enumerate() {
                let (x, y, z) = (row[0], row[1], row[2]);
                let vals = [x, 0.5 * (x + y + z), 0.5 * (x - y + z), z];
                for (q, v) in vals.into_iter().enumerate() {
                    xis[a * 4 + q][i] = v;
                }
            }
        }
    });
}

multiversion! {
    /// `V` for input channel `x_c` (`[h, w]`): `v[ξ·ts + tile]` for the tiles
    /// (`ts`: the distance between ξ rows), one tile row at a time (`rows`: 4
    /// scratch rows of `2·tw + 2`).
    fn transform_input(g: &ConvGeometry, x_c: &[f32], v: &mut [f32], ts: usize, rows: &mut [f32]) {
        let (th, tw) = tiles(g);
        let t = ts;
        let lp = 2 * tw + 2;
        let (pt, pl) = (g.pads[0] as isize, g.pads[2] as isize);
        for ty in 0..th {
            // The 4 input rows of this tile row, zero-padded to 2·tw + 2 columns.
            for (r, row) in rows.chunks_mut(lp).enumerate().take(4) {
                let iy = (2 * ty + r) as isize - pt;
                row.fill(0.0);
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                let src = &x_c[iy as usize * g.w..(iy as usize + 1) * g.w];
                // Column q of `row` is input column q - pl.
                let lo = pl.max(0) as usize;
                let first = (-pl).max(0) as usize;
                let n = (g.w - first.min(g.w)).min(lp - lo.min(lp));
                row[lo..lo + n].copy_from_slice(&src[first..first + n]);
            }
            // Bᵀ·d over the rows (in place): r0 = d0 - d2, r1 = d1 + d2, r2 = d2 - d1, r3 = d1 - d3.
            let (d0, rest) = rows.split_at_mut(lp);
            let (d1, rest) = rest.split_at_mut(lp);
            let (d2, d3) = rest.split_at_mut(lp);
            for q in 0..lp {
                let (a, b, c, d) = (d0[q], d1[q], d2[q], d3[q]);
                d0[q] = a - c;
                d1[q] = b + c;
                d2[q] = c - b;
                d3[q] = b - d;
            }
            // ·B over the columns of each row: tile `tx` reads columns 2tx..2tx+3.
            for (r, row) in [&*d0, &*d1, &*d2, &*d3].into_iter().enumerate() {
                let base = ty * tw;
                for tx in 0..tw {
                    let (a, b, c, d) = (row[2 * tx], row[2 * tx + 1], row[2 * tx + 2], row[2 * tx + 3]);
                    v[(r * 4) * t + base + tx] = a - c;
                    v[(r * 4 + 1) * t + base + tx] = b + c;
                    v[(r * 4 + 2) * t + base + tx] = c - b;
                    v[(r * 4 + 3) * t + base + tx] = b - d;
                }
            }
        }
    }
}

multiversion! {
    /// `Y = Aᵀ·M·A` for output channel `o`: `m` holds the 16 products of all
    /// channels (`m[(ξ·co + o)·ts + first + tile]`, `ts` columns per row, this
    /// sample's tiles from `first`); writes the plane `y_p` (`[oh, ow]`).
    fn transform_output(g: &ConvGeometry, m: &[f32], ts: usize, first: usize, o: usize, y_p: &mut [f32]) {
        let (th, tw) = tiles(g);
        let (oh, ow) = g.out_hw().expect("validated geometry");
        let co = g.c_out;
        let at = |xi: usize, tile: usize| m[(xi * co + o) * ts + first + tile];
        for ty in 0..th {
            for tx in 0..tw {
                let tile = ty * tw + tx;
                // Aᵀ over rows: s0 = m0 + m1 + m2, s1 = m1 - m2 - m3 (per column q).
                let mut s = [[0f32; 4]; 2];
                let [s0, s1] = &mut s;
                for (q, (s0, s1)) in s0.iter_mut().zip(s1.iter_mut()).enumerate() {
                    let (a, b, c, d) = (at(q, tile), at(4 + q, tile), at(8 + q, tile), at(12 + q, tile));
                    *s0 = a + b + c;
                    *s1 = b - c - d;
                }
                for (a, sa) in s.iter().enumerate() {
                    let oy = 2 * ty + a;
                    if oy >= oh {
                        continue;
                    }
                    let vals = [sa[0] + sa[1] + sa[2], sa[1] - sa[2] - sa[3]];
                    for (b, v) in vals.into_iter().enumerate() {
                        let ox = 2 * tx + b;
                        if ox < ow {
                            y_p[oy * ow + ox] = v;
                        }
                    }
                }
            }
        }
    }
}

/// The forward convolution of [`crate::conv::conv2d_forward`] by Winograd
/// F(2, 3); `g` must satisfy [`applies`].
pub(crate) fn forward(
    isa: Isa,
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    ep: &Epilogue,
    y: &mut [f32],
) {
    let (th, tw) = tiles(g);
    let t = th * tw;
    let (oh, ow) = g.out_hw().expect("validated geometry");
    let (ci, co, hw, ohw) = (g.c_in, g.c_out, g.h * g.w, oh * ow);
    let mut u = vec![0f32; 16 * co * ci];
    transform_kernel(g, w, &mut u);
    let lp = 2 * tw + 2;
    // Samples are taken together so that each GEMM has at least ~512 columns
    // (layer4 of ResNet-18 has 16 tiles per image).
    let group = 512usize.div_ceil(t).clamp(1, g.batch.max(1));
    let cols = group * t;
    // Both fully written before they are read: V by the input transform, M by
    // the GEMMs (no accumulation); a short last group uses a prefix of each row.
    with_slot(Slot::WinogradInput, ci * 16 * cols, |v| {
        with_slot(Slot::WinogradProducts, 16 * co * cols, |m| {
            for n0 in (0..g.batch).step_by(group) {
                let ns = group.min(g.batch - n0);
                let width = ns * t;
                // V[ci][ξ][sample·t + tile]: (channel, sample) blocks are disjoint.
                v.par_chunks_mut(16 * cols).enumerate().for_each_init(
                    || vec![0f32; 4 * lp],
                    |rows, (c, v_c)| {
                        for s in 0..ns {
                            let x_c = &x[((n0 + s) * ci + c) * hw..((n0 + s) * ci + c + 1) * hw];
                            transform_input(isa, g, x_c, &mut v_c[s * t..], cols, rows);
                        }
                    },
                );
                // M_ξ = U_ξ · V_ξ, V_ξ's rows `16·cols` apart.
                let v: &[f32] = v;
                m.par_chunks_mut(co * cols)
                    .enumerate()
                    .for_each(|(xi, m_xi)| {
                        let src = RhsSource::Matrix {
                            data: &v[xi * cols..],
                            row_stride: 16 * cols,
                        };
                        // SAFETY: `m_xi` is `co × cols` with row stride `cols`, this
                        // task's alone.
                        let a = Lhs::new(&u[xi * co * ci..(xi + 1) * co * ci], co, ci);
                        unsafe {
                            gemm_packed(isa, a, src, 0, width, m_xi.as_mut_ptr(), cols, false)
                        };
                    });
                let m: &[f32] = m;
                y[n0 * co * ohw..(n0 + ns) * co * ohw]
                    .par_chunks_mut(ohw)
                    .enumerate()
                    .for_each(|(plane, y_p)| {
                        let (s, o) = (plane / co, plane % co);
                        transform_output(isa, g, m, cols, s * t, o, y_p);
                        ep.plane(isa, y_p, o, (n0 + s) * co * ohw + o * ohw);
                    });
            }
        })
    })
}
