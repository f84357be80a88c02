//! layerlens' own f32 GEMM for the convolution forward: `Y = A · B` with `A`
//! (the kernel) packed once per call and `B` (the im2col matrix, or the input
//! itself for 1×1 convolutions) written straight into the micro-kernel's panel
//! layout, so nothing is packed twice.
//!
//! Why not the `gemm` crate here: profiled on ResNet-18 at batch 1, its operand
//! packing took as long as its micro-kernel (37 % vs 40 % of the forward,
//! docs/performance.md): it packs the kernel again for every sample and every
//! thread, and re-packs the im2col matrix layerlens had just built. The backward
//! passes (where operands are transposed and accumulated) keep using `gemm`.
//!
//! Layout (BLIS-style): `A` in panels of [`MR`] rows, `k`-major
//! (`a[panel][k][r]`); `B` in panels of `NR` columns, `k`-major
//! (`b[panel][k][c]`), `NR` = two vectors of the path (32 on AVX-512, 16 on
//! AVX2, 8 portable). Loops: columns in blocks of `NC`, depth in blocks of
//! [`KC`] (one B panel stays in L1 while every row panel of A — `M·KC` floats,
//! in L2 — passes over it).

use crate::conv::{valid_cols, ConvGeometry};
use crate::isa::Isa;
use crate::multiversion;

/// Rows of an A panel (output channels per micro-tile).
pub const MR: usize = 6;
/// Depth of one pass over the packed operands.
pub const KC: usize = 256;

/// Columns of a B panel on `isa` (two vector registers).
pub fn nr(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 32,
        Isa::Avx2 => 16,
        Isa::Portable => 8,
    }
}

/// The left operand: a row-major `m × k` matrix (row stride `k`), read in
/// place. The micro-kernel broadcasts one value of each of [`MR`] rows per depth
/// step, six sequential streams the prefetcher follows, so the kernel needs no
/// packed copy (packing it on every call was 10 % of a ResNet-18 forward at
/// batch 1, and a copy kept across calls could go stale: weights change in
/// place).
#[derive(Clone, Copy, Debug)]
pub struct Lhs<'a> {
    data: &'a [f32],
    m: usize,
    k: usize,
}

impl<'a> Lhs<'a> {
    /// Views `data` as `m × k`, row-major.
    ///
    /// # Panics
    /// If `data.len() != m · k`.
    pub fn new(data: &'a [f32], m: usize, k: usize) -> Self {
        assert_eq!(data.len(), m * k, "lhs length");
        Lhs { data, m, k }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.m
    }

    /// Columns (the depth of the product).
    pub fn depth(&self) -> usize {
        self.k
    }

    /// Pointers to rows `r0..r0 + MR` at column `k0`; rows past the end point at
    /// row `r0` (their products are computed and discarded).
    fn row_ptrs(&self, r0: usize, k0: usize) -> [*const f32; MR] {
        let mut ptrs = [std::ptr::null(); MR];
        for (r, p) in ptrs.iter_mut().enumerate() {
            let row = if r0 + r < self.m { r0 + r } else { r0 };
            *p = self.data[row * self.k + k0..].as_ptr();
        }
        ptrs
    }
}

/// Where the columns of `B` come from.
#[derive(Clone, Copy, Debug)]
pub enum RhsSource<'a> {
    /// The im2col matrix of one group's input `x_g` (`[c_in/groups, h, w]`):
    /// rows `(c, i, j)`, columns the output positions.
    Im2col {
        /// The convolution.
        geometry: &'a ConvGeometry,
        /// One group's input.
        input: &'a [f32],
    },
    /// A row-major matrix with row stride `row_stride`.
    Matrix {
        /// The values.
        data: &'a [f32],
        /// Distance between rows.
        row_stride: usize,
    },
}

multiversion! {
    /// Packs rows `k0..k0 + kc` and columns `c0..c0 + nc` of `B` into
    /// `dst[panel][kk][col]` (panels of `nr` columns, the last zero-padded).
    fn pack_rhs(src: RhsSource, k0: usize, kc: usize, c0: usize, nc: usize, nr: usize, dst: &mut [f32]) {
        let panels = nc.div_ceil(nr);
        match src {
            RhsSource::Matrix { data, row_stride } => {
                for p in 0..panels {
                    let pc0 = c0 + p * nr;
                    let cols = nr.min(c0 + nc - pc0);
                    let panel = &mut dst[p * kc * nr..(p + 1) * kc * nr];
                    for (kk, row) in panel.chunks_exact_mut(nr).enumerate() {
                        let s = (k0 + kk) * row_stride + pc0;
                        row[..cols].copy_from_slice(&data[s..s + cols]);
                        row[cols..].fill(0.0);
                    }
                }
            }
            RhsSource::Im2col { geometry: g, input } => {
                for kk in 0..kc {
                    pack_im2col_row(g, input, k0 + kk, c0, nc, nr, kc, &mut dst[kk * nr..]);
                }
            }
        }
    }
}

/// Row `k` of the im2col matrix, columns `c0..c0 + nc`, into the panels:
/// column `c0 + q` goes to `dst[(q / nr)·kc·nr + q % nr]` (`dst` starts at the
/// row's place in the first panel). The columns are walked in runs that stay on
/// one output row and in one panel, each copied from its input row (zeros where
/// the tap falls in the padding); no division inside the walk.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pack_im2col_row(
    g: &ConvGeometry,
    x_g: &[f32],
    k: usize,
    c0: usize,
    nc: usize,
    nr: usize,
    kc: usize,
    dst: &mut [f32],
) {
    let (_, ow) = g.out_hw().expect("validated geometry");
    let (h, w) = (g.h, g.w);
    let taps = g.kh * g.kw;
    let (c, i, j) = (k / taps, (k % taps) / g.kw, k % g.kw);
    let x_c = &x_g[c * h * w..(c + 1) * h * w];
    let off = (j * g.dilation[1]) as isize - g.pads[2] as isize;
    let (lo_all, hi_all) = valid_cols(ow, w, g.stride[1], off);
    let (mut oy, mut ox) = (c0 / ow, c0 % ow);
    let end = c0 + nc;
    let mut col = c0;
    let mut p = 0;
    while col < end {
        let pend = end.min(c0 + (p + 1) * nr);
        let row = &mut dst[p * kc * nr..p * kc * nr + nr];
        let mut d = 0;
        while col < pend {
            let run = (ow - ox).min(pend - col);
            let seg = &mut row[d..d + run];
            let iy = (oy * g.stride[0] + i * g.dilation[0]) as isize - g.pads[0] as isize;
            if iy < 0 || iy >= h as isize {
                seg.fill(0.0);
            } else {
                let src = &x_c[iy as usize * w..(iy as usize + 1) * w];
                let lo = lo_all.clamp(ox, ox + run);
                let hi = hi_all.clamp(lo, ox + run);
                seg[..lo - ox].fill(0.0);
                seg[hi - ox..].fill(0.0);
                if hi > lo && g.stride[1] == 1 {
                    let s0 = (lo as isize + off) as usize;
                    seg[lo - ox..hi - ox].copy_from_slice(&src[s0..s0 + hi - lo]);
                } else {
                    // (An empty range when the tap misses this run entirely.)
                    for x in lo..hi {
                        seg[x - ox] = src[((x * g.stride[1]) as isize + off) as usize];
                    }
                }
            }
            d += run;
            col += run;
            ox += run;
            if ox == ow {
                ox = 0;
                oy += 1;
            }
        }
        row[d..].fill(0.0);
        p += 1;
    }
}

/// `c[r·ldc + col] (+)= Σ_k a[r][k] · b[k·NR + col]` for `r < rows`,
/// `col < cols`: the micro-tile of [`MR`] rows of A (given as row pointers, each
/// readable for `kc` values) and one B panel.
type MicroKernel = unsafe fn(usize, [*const f32; MR], &[f32], *mut f32, usize, bool, usize, usize);

/// Stores a full `MR × NR` tile held in `tile` into `c` (adding when `accumulate`),
/// keeping only `rows × cols`.
///
/// # Safety
/// `c + r·ldc + col` must be valid for `r < rows`, `col < cols`.
#[inline(always)]
unsafe fn store_tile<const NR: usize>(
    tile: &[[f32; NR]; MR],
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    rows: usize,
    cols: usize,
) {
    for (r, t) in tile.iter().enumerate().take(rows) {
        for (col, &v) in t.iter().enumerate().take(cols) {
            // SAFETY: within the caller's extents.
            unsafe {
                let p = c.add(r * ldc + col);
                *p = if accumulate { *p + v } else { v };
            }
        }
    }
}

/// The portable micro-kernel (8 columns; LLVM vectorises it for SSE2).
///
/// # Safety
/// See [`MicroKernel`]: each `a[r]` is readable for `kc` values, `b` holds
/// `kc·8`; `c` covers the tile.
#[allow(clippy::too_many_arguments)]
unsafe fn micro_portable(
    kc: usize,
    a: [*const f32; MR],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    rows: usize,
    cols: usize,
) {
    const NR: usize = 8;
    // SAFETY: each row pointer is readable for `kc` values (the caller's contract).
    let rows_a: [&[f32]; MR] = a.map(|p| unsafe { std::slice::from_raw_parts(p, kc) });
    let mut acc = [[0f32; NR]; MR];
    for (k, bk) in b.chunks_exact(NR).take(kc).enumerate() {
        for r in 0..MR {
            for col in 0..NR {
                acc[r][col] += rows_a[r][k] * bk[col];
            }
        }
    }
    // SAFETY: forwarded.
    unsafe { store_tile(&acc, c, ldc, accumulate, rows, cols) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{store_tile, MR};
    use std::arch::x86_64::*;

    /// One x86 micro-kernel: `MR` rows × two vectors of columns in `2·MR`
    /// accumulators; per depth step two loads of B, `MR` broadcasts of A and
    /// `2·MR` fused multiply-adds. Full tiles are stored from the registers,
    /// edge tiles through a stack tile.
    macro_rules! micro_kernel {
        ($(#[$doc:meta])* $name:ident, $features:literal, $nr:literal, $vec:ty,
         $zero:ident, $load:ident, $store:ident, $add:ident, $fma:ident, $splat:ident) => {
            $(#[$doc])*
            ///
            /// # Safety
            /// The CPU has the features; each `a[r]` is readable for `kc` values,
            /// `b` holds `kc·NR`; `c` covers the `rows × cols` tile (row stride
            /// `ldc`).
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn $name(
                kc: usize,
                a: [*const f32; MR],
                b: &[f32],
                c: *mut f32,
                ldc: usize,
                accumulate: bool,
                rows: usize,
                cols: usize,
            ) {
                const NR: usize = $nr;
                const HALF: usize = NR / 2;
                assert!(b.len() >= kc * NR);
                let bp = b.as_ptr();
                let mut acc: [[$vec; 2]; MR] = [[$zero(); 2]; MR];
                for k in 0..kc {
                    // SAFETY: `k < kc`, bounds asserted above.
                    unsafe {
                        let b0 = $load(bp.add(k * NR));
                        let b1 = $load(bp.add(k * NR + HALF));
                        for (r, acc_r) in acc.iter_mut().enumerate() {
                            let av = $splat(*a[r].add(k));
                            acc_r[0] = $fma(av, b0, acc_r[0]);
                            acc_r[1] = $fma(av, b1, acc_r[1]);
                        }
                    }
                }
                if rows == MR && cols == NR {
                    for (r, acc_r) in acc.iter().enumerate() {
                        // SAFETY: a full tile lies inside `c`'s extents.
                        unsafe {
                            let p = c.add(r * ldc);
                            let (mut v0, mut v1) = (acc_r[0], acc_r[1]);
                            if accumulate {
                                v0 = $add(v0, $load(p));
                                v1 = $add(v1, $load(p.add(HALF)));
                            }
                            $store(p, v0);
                            $store(p.add(HALF), v1);
                        }
                    }
                } else {
                    let mut tile = [[0f32; NR]; MR];
                    for (t, acc_r) in tile.iter_mut().zip(&acc) {
                        // SAFETY: `t` holds NR floats.
                        unsafe {
                            $store(t.as_mut_ptr(), acc_r[0]);
                            $store(t.as_mut_ptr().add(HALF), acc_r[1]);
                        }
                    }
                    // SAFETY: forwarded.
                    unsafe { store_tile(&tile, c, ldc, accumulate, rows, cols) }
                }
            }
        };
    }

    micro_kernel!(
        /// AVX2 + FMA: 6 rows × 16 columns.
        micro_avx2, "avx2,fma", 16, __m256,
        _mm256_setzero_ps, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_add_ps, _mm256_fmadd_ps,
        _mm256_set1_ps
    );
    micro_kernel!(
        /// AVX-512: 6 rows × 32 columns.
        micro_avx512, "avx512f,avx2,fma", 32, __m512,
        _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_add_ps, _mm512_fmadd_ps,
        _mm512_set1_ps
    );
}

fn micro_kernel(isa: Isa) -> MicroKernel {
    match isa.min(Isa::detected()) {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86::micro_avx512,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::micro_avx2,
        _ => micro_portable,
    }
}

thread_local! {
    static PANELS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Columns per block: the B panels of one depth block (`KC × NC` floats, 256 KiB
/// on AVX-512) stay in L2.
const NC_PANELS: usize = 8;

/// `y[r·ldy + c] (+)= (A · B)[r, c]` for every row of `a` and the columns
/// `c0..c0 + nc` of `B` (read from `src`), single-threaded: callers split the
/// columns across threads.
///
/// # Safety
/// `y + r·ldy + c` must be valid for writes (and reads with `accumulate`) for
/// `r < a.rows()`, `c0 ≤ c < c0 + nc`, and not be accessed by anyone else during
/// the call. `src` must have `a.depth()` rows and at least `c0 + nc` columns.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_packed(
    isa: Isa,
    a: Lhs,
    src: RhsSource,
    c0: usize,
    nc: usize,
    y: *mut f32,
    ldy: usize,
    accumulate: bool,
) {
    let (m, k) = (a.m, a.k);
    if m == 0 || nc == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                for c in c0..c0 + nc {
                    // SAFETY: the caller's extents.
                    unsafe { y.add(r * ldy + c).write(0.0) };
                }
            }
        }
        return;
    }
    let isa = isa.min(Isa::detected());
    let nr = nr(isa);
    let micro = micro_kernel(isa);
    let block = NC_PANELS * nr;
    let with_panels = |panels: &mut Vec<f32>| {
        let need = KC * block;
        if panels.len() < need {
            panels.resize(need, 0.0);
        }
        for jc in (c0..c0 + nc).step_by(block) {
            let ncb = block.min(c0 + nc - jc);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                let buf = &mut panels[..ncb.div_ceil(nr) * kc * nr];
                pack_rhs(isa, src, pc, kc, jc, ncb, nr, buf);
                for (jr, b) in buf.chunks(kc * nr).enumerate() {
                    let col = jc + jr * nr;
                    let cols = nr.min(jc + ncb - col);
                    for ir in 0..m.div_ceil(MR) {
                        let rows = MR.min(m - ir * MR);
                        let ap = a.row_ptrs(ir * MR, pc);
                        // SAFETY: the tile (rows `ir·MR..`, columns `col..col+cols`)
                        // lies within the caller's extents; the path is the CPU's.
                        unsafe {
                            micro(
                                kc,
                                ap,
                                b,
                                y.add(ir * MR * ldy + col),
                                ldy,
                                accumulate || pc > 0,
                                rows,
                                cols,
                            )
                        };
                    }
                }
            }
        }
    };
    PANELS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => with_panels(&mut v),
        Err(_) => with_panels(&mut Vec::new()),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_gemm_matches_the_definition_on_every_path() {
        let mut rng = crate::testutil::Lcg(3);
        let mut next = |n: usize| rng.below(n);
        for _ in 0..40 {
            let (m, k, n) = (1 + next(40), 1 + next(600), 1 + next(300));
            let (a, b, want) = crate::testutil::integer_product(m, k, n);
            let packed = Lhs::new(&a, m, k);
            for isa in Isa::supported() {
                let (c0, nc) = (next(n), 0);
                let nc = (n - c0).max(nc);
                let mut y = vec![f32::NAN; m * n];
                let src = RhsSource::Matrix {
                    data: &b,
                    row_stride: n,
                };
                // SAFETY: `y` is m × n with row stride n.
                unsafe { gemm_packed(isa, packed, src, 0, n, y.as_mut_ptr(), n, false) };
                // Small integers: exact on every path.
                assert_eq!(y, want, "{isa} {m}x{k}x{n}");
                // Accumulating into a column range.
                unsafe { gemm_packed(isa, packed, src, c0, nc, y.as_mut_ptr(), n, true) };
                for i in 0..m {
                    for j in 0..n {
                        let f = if j >= c0 { 2.0 } else { 1.0 };
                        assert_eq!(y[i * n + j], f * want[i * n + j], "{isa} acc");
                    }
                }
            }
        }
    }
}
