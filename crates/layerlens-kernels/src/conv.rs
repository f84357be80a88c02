//! 2-D convolution on f32 NCHW slices: forward with a fused epilogue, and both
//! gradients.
//!
//! General convolutions lower to one GEMM per sample and group
//! (`W[c_out/g, c_in/g·kh·kw] · col[c_in/g·kh·kw, oh·ow]`) written straight into
//! the NCHW output, so no batch-wide im2col buffer and no output permutation is
//! ever built (candle's CPU conv does both). 1×1 stride-1 unpadded convolutions
//! use the input itself as the GEMM operand. Depthwise convolutions (one input
//! channel per group) run as direct loops, where a GEMM with one row would be
//! starved. Work is split across samples when the batch covers the thread pool,
//! and inside the GEMM (and im2col) otherwise.
//!
//! Every entry point reads the kernel path ([`isa::active`]) once and runs the
//! GEMM and its own loops (im2col, col2im, depthwise, epilogue) on it.

use crate::gemm::{matmul, parallelism as gemm_parallelism};
use crate::isa::{self, Isa};
use crate::multiversion;
use crate::packed::{self, gemm_packed, Lhs, RhsSource};
use crate::scratch::with_scratch;
use crate::winograd;
use rayon::prelude::*;

/// Everything about a convolution's sizes; `pads` are `[top, bottom, left, right]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvGeometry {
    /// Samples.
    pub batch: usize,
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride `[h, w]`.
    pub stride: [usize; 2],
    /// Dilation `[h, w]`.
    pub dilation: [usize; 2],
    /// Zero padding `[top, bottom, left, right]`.
    pub pads: [usize; 4],
    /// Channel groups.
    pub groups: usize,
}

impl ConvGeometry {
    /// Output `(height, width)`; `None` when the kernel does not fit the padded input
    /// or a size is zero.
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        if self.stride.contains(&0) || self.dilation.contains(&0) || self.kh == 0 || self.kw == 0 {
            return None;
        }
        let eh = self.dilation[0] * (self.kh - 1) + 1;
        let ew = self.dilation[1] * (self.kw - 1) + 1;
        let ph = self.h + self.pads[0] + self.pads[1];
        let pw = self.w + self.pads[2] + self.pads[3];
        if ph < eh || pw < ew {
            return None;
        }
        Some((
            (ph - eh) / self.stride[0] + 1,
            (pw - ew) / self.stride[1] + 1,
        ))
    }

    /// Checks the sizes; the error says which one is off.
    pub fn validate(&self) -> Result<(usize, usize), String> {
        if self.groups == 0
            || !self.c_in.is_multiple_of(self.groups)
            || !self.c_out.is_multiple_of(self.groups)
        {
            return Err(format!(
                "groups={} must divide the input channels ({}) and the output channels ({})",
                self.groups, self.c_in, self.c_out
            ));
        }
        self.out_hw().ok_or_else(|| {
            format!(
                "a {}x{} kernel (dilation {:?}) does not fit a {}x{} input padded by {:?}",
                self.kh, self.kw, self.dilation, self.h, self.w, self.pads
            )
        })
    }

    fn cin_g(&self) -> usize {
        self.c_in / self.groups
    }
    fn cout_g(&self) -> usize {
        self.c_out / self.groups
    }
    /// Rows of the im2col matrix of one group: `c_in/groups · kh · kw`.
    fn k_len(&self) -> usize {
        self.cin_g() * self.kh * self.kw
    }
    fn ohw(&self) -> usize {
        let (oh, ow) = self.out_hw().expect("validated geometry");
        oh * ow
    }
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.pads == [0; 4]
    }
    /// One input channel per group: direct loops beat a one-row GEMM.
    fn depthwise(&self) -> bool {
        self.groups > 1 && self.cin_g() == 1
    }
    /// Elements of the input, kernel and output.
    pub fn lens(&self) -> (usize, usize, usize) {
        (
            self.batch * self.c_in * self.h * self.w,
            self.c_out * self.k_len(),
            self.batch * self.c_out * self.ohw(),
        )
    }
}

/// The activation an [`Epilogue`] applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FusedActivation {
    /// Identity.
    None,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, lo), hi)` (ReLU6 is `Clip(0, 6)`).
    Clip(f32, f32),
}

/// What happens to each output value right after the GEMM, while it is still in
/// cache: `act(y · scale[c] + shift[c] + residual)`. A folded batch norm is
/// `scale`/`shift`, a bias is `shift`, a ResNet skip connection is `residual`.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    /// Per-output-channel factor.
    pub scale: Option<&'a [f32]>,
    /// Per-output-channel offset.
    pub shift: Option<&'a [f32]>,
    /// A tensor of the output's shape added before the activation.
    pub residual: Option<&'a [f32]>,
    /// The activation.
    pub act: FusedActivation,
}

impl Epilogue<'_> {
    /// No epilogue: the plain convolution.
    pub const NONE: Epilogue<'static> = Epilogue {
        scale: None,
        shift: None,
        residual: None,
        act: FusedActivation::None,
    };

    pub(crate) fn is_identity(&self) -> bool {
        self.scale.is_none()
            && self.shift.is_none()
            && self.residual.is_none()
            && self.act == FusedActivation::None
    }

    /// Applies the epilogue to `plane`, the values of output channel `c` of sample
    /// `n`, which start at `offset` in the whole output.
    #[inline]
    pub(crate) fn plane(&self, isa: Isa, plane: &mut [f32], c: usize, offset: usize) {
        let s = self.scale.map_or(1.0, |s| s[c]);
        let t = self.shift.map_or(0.0, |t| t[c]);
        let r = self.residual.map(|r| &r[offset..offset + plane.len()]);
        epilogue_plane(isa, plane, s, t, r, self.act);
    }
}

/// `v = act(v · s + t + r)` over a plane, with `act` hoisted out of the loop.
#[inline(always)]
fn affine_act(
    plane: &mut [f32],
    s: f32,
    t: f32,
    residual: Option<&[f32]>,
    act: impl Fn(f32) -> f32,
) {
    match residual {
        Some(r) => {
            for (v, &r) in plane.iter_mut().zip(r) {
                *v = act(*v * s + t + r);
            }
        }
        None => {
            for v in plane.iter_mut() {
                *v = act(*v * s + t);
            }
        }
    }
}

multiversion! {
    /// One plane of an [`Epilogue`]: `act(v · s + t + residual)`.
    fn epilogue_plane(plane: &mut [f32], s: f32, t: f32, residual: Option<&[f32]>, act: FusedActivation) {
        match act {
            FusedActivation::None => affine_act(plane, s, t, residual, |v| v),
            FusedActivation::Relu => affine_act(plane, s, t, residual, |v| v.max(0.0)),
            FusedActivation::Clip(lo, hi) => affine_act(plane, s, t, residual, move |v| v.max(lo).min(hi)),
        }
    }
}

fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// The range of output columns `ox` whose input column `ox·stride + off` lies
/// inside `[0, w)`.
#[inline(always)]
pub(crate) fn valid_cols(ow: usize, w: usize, stride: usize, off: isize) -> (usize, usize) {
    let lo = if off >= 0 {
        0
    } else {
        ((-off) as usize).div_ceil(stride)
    };
    let last = w as isize - 1 - off;
    let hi = if last < 0 {
        0
    } else {
        (last as usize / stride + 1).min(ow)
    };
    let lo = lo.min(ow);
    (lo, hi.max(lo))
}

multiversion! {
    /// The `kh·kw` im2col rows of one input channel `x_c` (`[h, w]`), for output
    /// rows `oy0..oy1` (each im2col row is `(oy1 - oy0)·ow` long).
    fn im2col_channel(g: &ConvGeometry, x_c: &[f32], rows: &mut [f32], oy0: usize, oy1: usize) {
        let ow = g.out_hw().expect("validated geometry").1;
        let (h, w) = (g.h, g.w);
        for (r, row) in rows.chunks_mut((oy1 - oy0) * ow).enumerate() {
            let (i, j) = (r / g.kw, r % g.kw);
            let off = (j * g.dilation[1]) as isize - g.pads[2] as isize;
            let (lo, hi) = valid_cols(ow, w, g.stride[1], off);
            for (oy, dst) in (oy0..oy1).zip(row.chunks_mut(ow)) {
                let iy = (oy * g.stride[0] + i * g.dilation[0]) as isize - g.pads[0] as isize;
                if iy < 0 || iy >= h as isize {
                    dst.fill(0.0);
                    continue;
                }
                let src = &x_c[iy as usize * w..(iy as usize + 1) * w];
                dst[..lo].fill(0.0);
                dst[hi..].fill(0.0);
                if hi > lo && g.stride[1] == 1 {
                    let s0 = (lo as isize + off) as usize;
                    dst[lo..hi].copy_from_slice(&src[s0..s0 + hi - lo]);
                } else {
                    for (ox, d) in dst.iter_mut().enumerate().take(hi).skip(lo) {
                        *d = src[((ox * g.stride[1]) as isize + off) as usize];
                    }
                }
            }
        }
    }
}

multiversion! {
    /// Adds one input channel's `kh·kw` im2col-shaped gradient rows onto `dx_c`.
    fn col2im_channel(g: &ConvGeometry, rows: &[f32], dx_c: &mut [f32]) {
        let (oh, ow) = g.out_hw().expect("validated geometry");
        let (h, w) = (g.h, g.w);
        for (r, row) in rows.chunks(oh * ow).enumerate() {
            let (i, j) = (r / g.kw, r % g.kw);
            let off = (j * g.dilation[1]) as isize - g.pads[2] as isize;
            let (lo, hi) = valid_cols(ow, w, g.stride[1], off);
            for (oy, src) in row.chunks(ow).enumerate() {
                let iy = (oy * g.stride[0] + i * g.dilation[0]) as isize - g.pads[0] as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let dst = &mut dx_c[iy as usize * w..(iy as usize + 1) * w];
                if hi > lo && g.stride[1] == 1 {
                    let s0 = (lo as isize + off) as usize;
                    for (d, &s) in dst[s0..s0 + hi - lo].iter_mut().zip(&src[lo..hi]) {
                        *d += s;
                    }
                } else {
                    for (ox, &s) in src.iter().enumerate().take(hi).skip(lo) {
                        dst[((ox * g.stride[1]) as isize + off) as usize] += s;
                    }
                }
            }
        }
    }
}

/// Writes the im2col matrix `[c·kh·kw, oh·ow]` of one group's input `x_g`
/// (`[c, h, w]`) into `col`.
fn im2col(isa: Isa, g: &ConvGeometry, x_g: &[f32], col: &mut [f32], parallel: bool) {
    let hw = g.h * g.w;
    let oh = g.out_hw().expect("validated geometry").0;
    let per_channel = g.kh * g.kw * g.ohw();
    let col = &mut col[..g.cin_g() * per_channel];
    if parallel && threads() > 1 && g.cin_g() > 1 {
        col.par_chunks_mut(per_channel)
            .zip(x_g.par_chunks(hw))
            .for_each(|(rows, x_c)| im2col_channel(isa, g, x_c, rows, 0, oh));
    } else {
        for (rows, x_c) in col.chunks_mut(per_channel).zip(x_g.chunks(hw)) {
            im2col_channel(isa, g, x_c, rows, 0, oh);
        }
    }
}

/// Adds the im2col-shaped gradient `dcol` back onto one group's input gradient
/// `dx_g` (`[c, h, w]`): the adjoint of [`im2col`].
fn col2im_add(isa: Isa, g: &ConvGeometry, dcol: &[f32], dx_g: &mut [f32], parallel: bool) {
    let hw = g.h * g.w;
    let per_channel = g.kh * g.kw * g.ohw();
    let dx_g = &mut dx_g[..g.cin_g() * hw];
    if parallel && threads() > 1 && g.cin_g() > 1 {
        dx_g.par_chunks_mut(hw)
            .zip(dcol.par_chunks(per_channel))
            .for_each(|(dx_c, rows)| col2im_channel(isa, g, rows, dx_c));
    } else {
        for (dx_c, rows) in dx_g.chunks_mut(hw).zip(dcol.chunks(per_channel)) {
            col2im_channel(isa, g, rows, dx_c);
        }
    }
}

/// Splits the batch across the thread pool when it covers it; otherwise runs the
/// samples in turn with the parallelism inside each.
fn per_sample_parallel(g: &ConvGeometry) -> bool {
    let t = threads();
    t > 1 && g.batch >= t
}

/// How the forward of a dense (not depthwise) convolution is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvAlgorithm {
    /// Winograd F(2, 3) for 3×3 stride-1 convolutions where its cost model says
    /// it pays ([`crate::winograd::pays`]), im2col + packed GEMM otherwise.
    Auto,
    /// Always im2col + packed GEMM.
    Im2col,
    /// Winograd wherever it applies (3×3, stride 1, dilation 1, one group).
    Winograd,
}

thread_local! {
    static ALGORITHM: std::cell::Cell<Option<ConvAlgorithm>> = const { std::cell::Cell::new(None) };
}

/// The algorithm on this thread: [`with_algorithm`]'s, else the process's from
/// `LAYERLENS_CONV=auto|im2col|winograd` (for benchmarks; unknown values mean
/// `auto`), else [`ConvAlgorithm::Auto`].
fn algorithm() -> ConvAlgorithm {
    static PROCESS: std::sync::OnceLock<ConvAlgorithm> = std::sync::OnceLock::new();
    ALGORITHM.with(std::cell::Cell::get).unwrap_or_else(|| {
        *PROCESS.get_or_init(|| match std::env::var("LAYERLENS_CONV").as_deref() {
            Ok("im2col") => ConvAlgorithm::Im2col,
            Ok("winograd") => ConvAlgorithm::Winograd,
            _ => ConvAlgorithm::Auto,
        })
    })
}

/// Runs `f` with the convolutions it calls on this thread forced to `algo`
/// (how the tests check both algorithms on the same cases), then restores the
/// previous choice.
pub fn with_algorithm<R>(algo: ConvAlgorithm, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<ConvAlgorithm>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ALGORITHM.with(|a| a.set(self.0));
        }
    }
    let _restore = Restore(ALGORITHM.with(|a| a.replace(Some(algo))));
    f()
}

/// Forward convolution: `y = epilogue(conv(x, w))`, `x` NCHW, `w` OIHW
/// (`[c_out, c_in/groups, kh, kw]`), `y` NCHW. Slices must have exactly the
/// lengths [`ConvGeometry::lens`] gives.
pub fn conv2d_forward(g: &ConvGeometry, x: &[f32], w: &[f32], ep: &Epilogue, y: &mut [f32]) {
    let ohw = g.ohw();
    let (xl, wl, yl) = g.lens();
    assert!(
        x.len() == xl && w.len() == wl && y.len() == yl,
        "conv2d slice lengths"
    );
    if let Some(r) = ep.residual {
        assert_eq!(r.len(), yl, "residual length");
    }
    let isa = isa::active();
    if g.depthwise() {
        return depthwise_forward(isa, g, x, w, ep, y);
    }
    let winograd = match algorithm() {
        ConvAlgorithm::Auto => winograd::pays(g),
        ConvAlgorithm::Im2col => false,
        ConvAlgorithm::Winograd => winograd::applies(g),
    };
    if winograd {
        return winograd::forward(isa, g, x, w, ep, y);
    }
    let x_per = g.c_in * g.h * g.w;
    let y_per = g.c_out * ohw;
    let hw = g.h * g.w;
    let (cin_g, cout_g, k_len) = (g.cin_g(), g.cout_g(), g.k_len());
    // The kernel of each group, read in place by every sample and thread.
    let lhs: Vec<Lhs> = (0..g.groups)
        .map(|grp| {
            Lhs::new(
                &w[grp * cout_g * k_len..(grp + 1) * cout_g * k_len],
                cout_g,
                k_len,
            )
        })
        .collect();
    let out = SharedOut(y.as_mut_ptr());
    // Columns `c0..c0 + nc` (output positions) of sample `n`, every group, then
    // the epilogue on them.
    let task = |n: usize, c0: usize, nc: usize| {
        let out = &out;
        let x_n = &x[n * x_per..(n + 1) * x_per];
        for (grp, &a) in lhs.iter().enumerate() {
            let x_g = &x_n[grp * cin_g * hw..(grp + 1) * cin_g * hw];
            let src = if g.pointwise() {
                RhsSource::Matrix {
                    data: x_g,
                    row_stride: hw,
                }
            } else {
                RhsSource::Im2col {
                    geometry: g,
                    input: x_g,
                }
            };
            // SAFETY: rows `grp·cout_g..` of sample `n`, columns `c0..c0 + nc`:
            // inside `y`, and written by this task only.
            unsafe {
                gemm_packed(
                    isa,
                    a,
                    src,
                    c0,
                    nc,
                    out.0.add(n * y_per + grp * cout_g * ohw),
                    ohw,
                    false,
                )
            };
        }
        if !ep.is_identity() {
            for c in 0..g.c_out {
                let start = n * y_per + c * ohw + c0;
                // SAFETY: this task's columns of channel `c`, written above by
                // this task only.
                let block = unsafe { std::slice::from_raw_parts_mut(out.0.add(start), nc) };
                ep.plane(isa, block, c, start);
            }
        }
    };
    if per_sample_parallel(g) {
        (0..g.batch).into_par_iter().for_each(|n| task(n, 0, ohw));
    } else {
        // Fewer samples than threads: split each sample's output positions, in
        // whole micro-tile columns.
        let nr = packed::nr(isa);
        let parts = threads().min(ohw.div_ceil(nr)).max(1);
        let per = ohw.div_ceil(parts).div_ceil(nr) * nr;
        let ranges: Vec<(usize, usize)> = (0..parts)
            .map(|p| (p * per, ((p + 1) * per).min(ohw)))
            .filter(|(a, b)| a < b)
            .collect();
        for n in 0..g.batch {
            ranges.par_iter().for_each(|&(a, b)| task(n, a, b - a));
        }
    }
}

/// A raw pointer that may cross threads; each user writes a disjoint part.
struct SharedOut(*mut f32);
// SAFETY: only used by `conv2d_forward`, whose tasks write disjoint elements of
// the buffer behind the pointer, which outlives them.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// Walks the taps of a depthwise convolution for one input/output plane pair,
/// running the body with `(weight_index, out_row, in_row, offset, lo, hi)` bound
/// for every kernel tap and output row that reads a real (unpadded) input row.
/// A macro, not a function taking a closure: the body must be compiled inside
/// the caller's [`multiversion!`] copy (an outlined closure ran without the
/// path's instructions: 43 % of a MobileNetV2 forward).
macro_rules! for_each_tap {
    ($g:expr, |$tap:ident, $oy:ident, $iy:ident, $off:ident, $lo:ident, $hi:ident| $body:block) => {{
        let g: &ConvGeometry = $g;
        let (oh, ow) = g.out_hw().expect("validated geometry");
        for i in 0..g.kh {
            for j in 0..g.kw {
                let $off = (j * g.dilation[1]) as isize - g.pads[2] as isize;
                let ($lo, $hi) = valid_cols(ow, g.w, g.stride[1], $off);
                for $oy in 0..oh {
                    let iy =
                        (($oy * g.stride[0] + i * g.dilation[0]) as isize) - g.pads[0] as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let $iy = iy as usize;
                    let $tap = i * g.kw + j;
                    $body
                }
            }
        }
    }};
}

multiversion! {
    /// One output plane of a depthwise convolution: `y_p = Σ_taps w · x_p(shifted)`,
    /// one output row at a time with every tap folded into it while it is in L1
    /// (tap by tap over the whole plane went through L2 nine times).
    fn depthwise_plane(g: &ConvGeometry, x_p: &[f32], w_k: &[f32], y_p: &mut [f32]) {
        let (oh, ow) = g.out_hw().expect("validated geometry");
        let sw = g.stride[1];
        // Per kernel column: its input offset and the output columns it reaches.
        let cols: Vec<(isize, usize, usize)> = (0..g.kw)
            .map(|j| {
                let off = (j * g.dilation[1]) as isize - g.pads[2] as isize;
                let (lo, hi) = valid_cols(ow, g.w, sw, off);
                (off, lo, hi)
            })
            .collect();
        // Strided: each input row is split into its `sw` phases once
        // (`phase r` = columns `r, r + sw, ...`), so every tap reads a
        // contiguous run: `x[ox·sw + off] = phase[off mod sw][ox + off div sw]`.
        let pw = g.w.div_ceil(sw);
        let mut phases = if sw > 1 { vec![0f32; sw * pw] } else { Vec::new() };
        for (oy, dst) in y_p.chunks_mut(ow).enumerate().take(oh) {
            dst.fill(0.0);
            for i in 0..g.kh {
                let iy = (oy * g.stride[0] + i * g.dilation[0]) as isize - g.pads[0] as isize;
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                let src = &x_p[iy as usize * g.w..(iy as usize + 1) * g.w];
                if sw > 1 {
                    for (r, phase) in phases.chunks_mut(pw).enumerate() {
                        for (p, &v) in phase.iter_mut().zip(src.iter().skip(r).step_by(sw)) {
                            *p = v;
                        }
                    }
                }
                for (j, &(off, lo, hi)) in cols.iter().enumerate() {
                    if hi <= lo {
                        continue;
                    }
                    let wv = w_k[i * g.kw + j];
                    let (run, s0) = if sw == 1 {
                        (src, (lo as isize + off) as usize)
                    } else {
                        // Input column of output `lo`, as (phase, index in it).
                        let first = (lo * sw) as isize + off;
                        let r = first as usize % sw;
                        (&phases[r * pw..(r + 1) * pw], first as usize / sw)
                    };
                    for (d, &s) in dst[lo..hi].iter_mut().zip(&run[s0..s0 + hi - lo]) {
                        *d += wv * s;
                    }
                }
            }
        }
    }
}

fn depthwise_forward(
    isa: Isa,
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    ep: &Epilogue,
    y: &mut [f32],
) {
    let (oh, ow) = g.out_hw().expect("validated geometry");
    let (hw, ohw, kk) = (g.h * g.w, oh * ow, g.kh * g.kw);
    let mult = g.cout_g();
    y.par_chunks_mut(ohw).enumerate().for_each(|(plane, y_p)| {
        let (n, oc) = (plane / g.c_out, plane % g.c_out);
        let ic = oc / mult;
        let x_p = &x[(n * g.c_in + ic) * hw..(n * g.c_in + ic + 1) * hw];
        depthwise_plane(isa, g, x_p, &w[oc * kk..(oc + 1) * kk], y_p);
        ep.plane(isa, y_p, oc, plane * ohw);
    });
}

/// Gradient with respect to the input: `dx = conv2d_transpose(dy, w)`.
pub fn conv2d_backward_input(g: &ConvGeometry, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let ohw = g.ohw();
    let (xl, wl, yl) = g.lens();
    assert!(
        dx.len() == xl && w.len() == wl && dy.len() == yl,
        "conv2d slice lengths"
    );
    dx.fill(0.0);
    let isa = isa::active();
    if g.depthwise() {
        return depthwise_backward_input(isa, g, dy, w, dx);
    }
    let x_per = g.c_in * g.h * g.w;
    let y_per = g.c_out * ohw;
    let (cin_g, cout_g, k_len) = (g.cin_g(), g.cout_g(), g.k_len());
    // dcol is fully written by the GEMM (no accumulation) before col2im reads it.
    let dcol_len = if g.pointwise() { 0 } else { k_len * ohw };
    let run = |n: usize, dx_n: &mut [f32], dcol: &mut [f32], inner_parallel: bool| {
        let dy_n = &dy[n * y_per..(n + 1) * y_per];
        for grp in 0..g.groups {
            let dy_g = &dy_n[grp * cout_g * ohw..(grp + 1) * cout_g * ohw];
            let w_g = &w[grp * cout_g * k_len..(grp + 1) * cout_g * k_len];
            let dx_g = &mut dx_n[grp * cin_g * g.h * g.w..(grp + 1) * cin_g * g.h * g.w];
            let par = gemm_parallelism(inner_parallel);
            // W_gᵀ [k_len, cout_g] · dy_g [cout_g, ohw]
            if g.pointwise() {
                matmul(
                    isa,
                    (k_len, ohw, cout_g),
                    dx_g,
                    ohw,
                    false,
                    w_g,
                    (1, k_len),
                    dy_g,
                    (ohw, 1),
                    par,
                );
            } else {
                matmul(
                    isa,
                    (k_len, ohw, cout_g),
                    dcol,
                    ohw,
                    false,
                    w_g,
                    (1, k_len),
                    dy_g,
                    (ohw, 1),
                    par,
                );
                col2im_add(isa, g, dcol, dx_g, inner_parallel);
            }
        }
    };
    if per_sample_parallel(g) {
        dx.par_chunks_mut(x_per)
            .enumerate()
            .for_each(|(n, dx_n)| with_scratch(dcol_len, |dcol| run(n, dx_n, dcol, false)));
    } else {
        with_scratch(dcol_len, |dcol| {
            for (n, dx_n) in dx.chunks_mut(x_per).enumerate() {
                run(n, dx_n, dcol, true);
            }
        });
    }
}

multiversion! {
    /// Adds one output plane's gradient `dy_p`, through kernel `w_k`, onto the
    /// input plane's gradient `dx_p`.
    fn depthwise_plane_backward(g: &ConvGeometry, dy_p: &[f32], w_k: &[f32], dx_p: &mut [f32]) {
        let ow = g.out_hw().expect("validated geometry").1;
        let sw = g.stride[1];
        for_each_tap!(g, |tap, oy, iy, off, lo, hi| {
            let wv = w_k[tap];
            let src = &dy_p[oy * ow..(oy + 1) * ow];
            let dst = &mut dx_p[iy * g.w..(iy + 1) * g.w];
            if hi > lo && sw == 1 {
                let s0 = (lo as isize + off) as usize;
                for (d, &s) in dst[s0..s0 + hi - lo].iter_mut().zip(&src[lo..hi]) {
                    *d += wv * s;
                }
            } else {
                for (ox, &s) in src.iter().enumerate().take(hi).skip(lo) {
                    dst[((ox * sw) as isize + off) as usize] += wv * s;
                }
            }
        });
    }
}

fn depthwise_backward_input(isa: Isa, g: &ConvGeometry, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let (oh, ow) = g.out_hw().expect("validated geometry");
    let (hw, ohw, kk) = (g.h * g.w, oh * ow, g.kh * g.kw);
    let mult = g.cout_g();
    dx.par_chunks_mut(hw).enumerate().for_each(|(plane, dx_p)| {
        let (n, ic) = (plane / g.c_in, plane % g.c_in);
        for q in 0..mult {
            let oc = ic * mult + q;
            let dy_p = &dy[(n * g.c_out + oc) * ohw..(n * g.c_out + oc + 1) * ohw];
            depthwise_plane_backward(isa, g, dy_p, &w[oc * kk..(oc + 1) * kk], dx_p);
        }
    });
}

/// Gradient with respect to the kernel: `dw[o, i, a, b] = Σ dy · x` over the
/// batch and the output positions.
pub fn conv2d_backward_weight(g: &ConvGeometry, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let ohw = g.ohw();
    let (xl, wl, yl) = g.lens();
    assert!(
        x.len() == xl && dw.len() == wl && dy.len() == yl,
        "conv2d slice lengths"
    );
    let isa = isa::active();
    if g.depthwise() {
        return depthwise_backward_weight(isa, g, x, dy, dw);
    }
    let x_per = g.c_in * g.h * g.w;
    let y_per = g.c_out * ohw;
    let (cin_g, cout_g, k_len) = (g.cin_g(), g.cout_g(), g.k_len());
    // Accumulates samples `range` into `acc` (the whole kernel's gradient).
    let col_len = if g.pointwise() { 0 } else { k_len * ohw };
    let run = |range: std::ops::Range<usize>, acc: &mut [f32], inner_parallel: bool| {
        let par = gemm_parallelism(inner_parallel);
        with_scratch(col_len, |col| {
            for n in range {
                let x_n = &x[n * x_per..(n + 1) * x_per];
                let dy_n = &dy[n * y_per..(n + 1) * y_per];
                for grp in 0..g.groups {
                    let x_g = &x_n[grp * cin_g * g.h * g.w..(grp + 1) * cin_g * g.h * g.w];
                    let rhs: &[f32] = if g.pointwise() {
                        x_g
                    } else {
                        im2col(isa, g, x_g, col, inner_parallel);
                        col
                    };
                    // dy_g [cout_g, ohw] · colᵀ [ohw, k_len]
                    matmul(
                        isa,
                        (cout_g, k_len, ohw),
                        &mut acc[grp * cout_g * k_len..(grp + 1) * cout_g * k_len],
                        k_len,
                        true,
                        &dy_n[grp * cout_g * ohw..(grp + 1) * cout_g * ohw],
                        (ohw, 1),
                        rhs,
                        (1, ohw),
                        par,
                    );
                }
            }
        })
    };
    dw.fill(0.0);
    if per_sample_parallel(g) {
        let parts = threads().min(g.batch);
        let chunk = g.batch.div_ceil(parts);
        let partial: Vec<Vec<f32>> = (0..parts)
            .into_par_iter()
            .map(|p| {
                let mut acc = vec![0.0f32; dw.len()];
                run(p * chunk..((p + 1) * chunk).min(g.batch), &mut acc, false);
                acc
            })
            .collect();
        for acc in partial {
            for (d, a) in dw.iter_mut().zip(acc) {
                *d += a;
            }
        }
    } else {
        run(0..g.batch, dw, true);
    }
}

fn depthwise_backward_weight(_isa: Isa, g: &ConvGeometry, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let (oh, ow) = g.out_hw().expect("validated geometry");
    let (hw, ohw, kk) = (g.h * g.w, oh * ow, g.kh * g.kw);
    let mult = g.cout_g();
    let sw = g.stride[1];
    dw.par_chunks_mut(kk).enumerate().for_each(|(oc, dw_k)| {
        dw_k.fill(0.0);
        let ic = oc / mult;
        for n in 0..g.batch {
            let x_p = &x[(n * g.c_in + ic) * hw..(n * g.c_in + ic + 1) * hw];
            let dy_p = &dy[(n * g.c_out + oc) * ohw..(n * g.c_out + oc + 1) * ohw];
            for_each_tap!(g, |tap, oy, iy, off, lo, hi| {
                let src = &x_p[iy * g.w..(iy + 1) * g.w];
                let d = &dy_p[oy * ow..(oy + 1) * ow];
                let mut s = 0.0f32;
                if hi > lo && sw == 1 {
                    let s0 = (lo as isize + off) as usize;
                    for (&a, &b) in d[lo..hi].iter().zip(&src[s0..s0 + hi - lo]) {
                        s += a * b;
                    }
                } else {
                    for (ox, &a) in d.iter().enumerate().take(hi).skip(lo) {
                        s += a * src[((ox * sw) as isize + off) as usize];
                    }
                }
                dw_k[tap] += s;
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one output at a time.
    fn naive(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
        let (oh, ow) = g.out_hw().unwrap();
        let (cin_g, cout_g) = (g.cin_g(), g.cout_g());
        let mut y = vec![0.0; g.batch * g.c_out * oh * ow];
        for n in 0..g.batch {
            for oc in 0..g.c_out {
                let grp = oc / cout_g;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = 0.0;
                        for ci in 0..cin_g {
                            let ic = grp * cin_g + ci;
                            for i in 0..g.kh {
                                for j in 0..g.kw {
                                    let iy = (oy * g.stride[0] + i * g.dilation[0]) as isize
                                        - g.pads[0] as isize;
                                    let ix = (ox * g.stride[1] + j * g.dilation[1]) as isize
                                        - g.pads[2] as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    s += x[((n * g.c_in + ic) * g.h + iy as usize) * g.w
                                        + ix as usize]
                                        * w[((oc * cin_g + ci) * g.kh + i) * g.kw + j];
                                }
                            }
                        }
                        y[((n * g.c_out + oc) * oh + oy) * ow + ox] = s;
                    }
                }
            }
        }
        y
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&a, &b)| a as f64 * b as f64).sum()
    }

    fn geometries() -> Vec<ConvGeometry> {
        let base = ConvGeometry {
            batch: 2,
            c_in: 4,
            h: 7,
            w: 6,
            c_out: 6,
            kh: 3,
            kw: 3,
            stride: [1, 1],
            dilation: [1, 1],
            pads: [1, 1, 1, 1],
            groups: 1,
        };
        vec![
            base,
            ConvGeometry {
                stride: [2, 2],
                ..base
            },
            ConvGeometry {
                pads: [0, 1, 0, 1],
                kh: 2,
                kw: 2,
                ..base
            },
            ConvGeometry {
                kh: 1,
                kw: 1,
                pads: [0; 4],
                ..base
            },
            ConvGeometry {
                kh: 1,
                kw: 1,
                pads: [0; 4],
                stride: [2, 2],
                ..base
            },
            ConvGeometry { groups: 2, ..base },
            ConvGeometry {
                groups: 4,
                c_out: 8,
                ..base
            },
            ConvGeometry {
                groups: 4,
                c_out: 4,
                kh: 5,
                kw: 5,
                pads: [2, 2, 2, 2],
                stride: [2, 2],
                ..base
            },
            ConvGeometry {
                dilation: [2, 2],
                pads: [2, 2, 2, 2],
                ..base
            },
            // Rows longer than a micro-tile's columns, depth over one block
            // (KC), batch 1 (columns split across threads).
            ConvGeometry {
                batch: 1,
                c_in: 30,
                h: 5,
                w: 70,
                c_out: 7,
                ..base
            },
            ConvGeometry {
                batch: 1,
                c_in: 29,
                h: 6,
                w: 75,
                c_out: 13,
                stride: [2, 2],
                pads: [0, 1, 2, 1],
                ..base
            },
            ConvGeometry {
                batch: 5,
                c_in: 3,
                kh: 3,
                kw: 2,
                pads: [0, 0, 0, 0],
                stride: [1, 3],
                ..base
            },
        ]
    }

    #[test]
    fn forward_matches_the_definition() {
        for isa in crate::isa::Isa::supported() {
            crate::isa::with_isa(isa, forward_matches_the_definition_on_this_path);
        }
    }

    fn forward_matches_the_definition_on_this_path() {
        for g in geometries() {
            g.validate().unwrap();
            let (xl, wl, yl) = g.lens();
            let (x, w) = (values(xl, 1), values(wl, 2));
            let mut y = vec![f32::NAN; yl];
            conv2d_forward(&g, &x, &w, &Epilogue::NONE, &mut y);
            let want = naive(&g, &x, &w);
            let diff = y
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(diff < 1e-5, "{g:?}: max diff {diff}");
        }
    }

    /// Random geometries (large paddings and dilations included, where a tap
    /// can miss a whole output row or column) against the definition, forward
    /// and both gradients (through the adjoint identity), on every path.
    #[test]
    fn random_geometries_match_the_definition() {
        let mut rng = crate::testutil::Lcg(11);
        let mut next = |n: usize| rng.below(n);
        let mut checked = 0;
        while checked < 120 {
            let groups = [1, 1, 2, 3][next(4)];
            let g = ConvGeometry {
                batch: 1 + next(3),
                c_in: groups * (1 + next(4)),
                h: 1 + next(9),
                w: 1 + next(40),
                c_out: groups * (1 + next(4)),
                kh: 1 + next(4),
                kw: 1 + next(4),
                stride: [1 + next(3), 1 + next(3)],
                dilation: [1 + next(3), 1 + next(3)],
                pads: [next(5), next(5), next(6), next(6)],
                groups,
            };
            if g.validate().is_err() {
                continue;
            }
            checked += 1;
            let (xl, wl, yl) = g.lens();
            let (x, w, dy) = (values(xl, 21), values(wl, 22), values(yl, 23));
            let want = naive(&g, &x, &w);
            for isa in crate::isa::Isa::supported() {
                crate::isa::with_isa(isa, || {
                    let mut y = vec![f32::NAN; yl];
                    conv2d_forward(&g, &x, &w, &Epilogue::NONE, &mut y);
                    for (a, b) in y.iter().zip(&want) {
                        assert!((a - b).abs() < 1e-5, "{isa} {g:?}: {a} vs {b}");
                    }
                    let mut dx = vec![f32::NAN; xl];
                    let mut dw = vec![f32::NAN; wl];
                    conv2d_backward_input(&g, &dy, &w, &mut dx);
                    conv2d_backward_weight(&g, &x, &dy, &mut dw);
                    let lhs = dot(&want, &dy);
                    for rhs in [dot(&x, &dx), dot(&w, &dw)] {
                        assert!((lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()), "{isa} {g:?}");
                    }
                });
            }
        }
    }

    /// Winograd F(2, 3), forced, on random 3×3 stride-1 geometries (odd sizes,
    /// asymmetric and large paddings, one-row outputs), with an epilogue, on
    /// every path.
    #[test]
    fn winograd_matches_the_definition() {
        let mut rng = crate::testutil::Lcg(5);
        let mut next = |n: usize| rng.below(n);
        let mut checked = 0;
        while checked < 60 {
            let g = ConvGeometry {
                batch: 1 + next(3),
                c_in: 1 + next(20),
                h: 1 + next(12),
                w: 1 + next(40),
                c_out: 1 + next(20),
                kh: 3,
                kw: 3,
                stride: [1, 1],
                dilation: [1, 1],
                pads: [next(3), next(3), next(3), next(3)],
                groups: 1,
            };
            if g.validate().is_err() {
                continue;
            }
            checked += 1;
            assert!(winograd::applies(&g));
            let (xl, wl, yl) = g.lens();
            let (x, w, r) = (values(xl, 31), values(wl, 32), values(yl, 33));
            let shift: Vec<f32> = (0..g.c_out).map(|c| c as f32 * 0.1).collect();
            let ep = Epilogue {
                scale: None,
                shift: Some(&shift),
                residual: Some(&r),
                act: FusedActivation::Relu,
            };
            let ohw = yl / g.batch / g.c_out;
            let want: Vec<f32> = naive(&g, &x, &w)
                .iter()
                .enumerate()
                .map(|(i, &v)| (v + shift[(i / ohw) % g.c_out] + r[i]).max(0.0))
                .collect();
            for isa in crate::isa::Isa::supported() {
                let mut y = vec![f32::NAN; yl];
                crate::isa::with_isa(isa, || {
                    with_algorithm(ConvAlgorithm::Winograd, || {
                        conv2d_forward(&g, &x, &w, &ep, &mut y)
                    })
                });
                for (a, b) in y.iter().zip(&want) {
                    assert!((a - b).abs() < 2e-5, "{isa} {g:?}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn epilogue_applies_scale_shift_residual_and_activation() {
        for isa in crate::isa::Isa::supported() {
            crate::isa::with_isa(
                isa,
                epilogue_applies_scale_shift_residual_and_activation_on_this_path,
            );
        }
    }

    fn epilogue_applies_scale_shift_residual_and_activation_on_this_path() {
        let g = geometries()[0];
        let (xl, wl, yl) = g.lens();
        let (x, w, r) = (values(xl, 3), values(wl, 4), values(yl, 5));
        let scale: Vec<f32> = (0..g.c_out).map(|c| 0.5 + c as f32).collect();
        let shift: Vec<f32> = (0..g.c_out).map(|c| c as f32 * 0.1 - 0.2).collect();
        let ep = Epilogue {
            scale: Some(&scale),
            shift: Some(&shift),
            residual: Some(&r),
            act: FusedActivation::Clip(0.0, 0.3),
        };
        let mut y = vec![0.0; yl];
        conv2d_forward(&g, &x, &w, &ep, &mut y);
        let plain = naive(&g, &x, &w);
        let ohw = yl / g.batch / g.c_out;
        for (i, (&got, &p)) in y.iter().zip(&plain).enumerate() {
            let c = (i / ohw) % g.c_out;
            let want = (p * scale[c] + shift[c] + r[i]).clamp(0.0, 0.3);
            assert!((got - want).abs() < 1e-5, "{i}: {got} vs {want}");
        }
    }

    /// The gradients are the adjoints of the forward map:
    /// `<conv(x, w), dy> = <x, dx(dy, w)> = <w, dw(x, dy)>`.
    #[test]
    fn gradients_are_the_adjoints_of_the_forward_map() {
        for isa in crate::isa::Isa::supported() {
            crate::isa::with_isa(
                isa,
                gradients_are_the_adjoints_of_the_forward_map_on_this_path,
            );
        }
    }

    fn gradients_are_the_adjoints_of_the_forward_map_on_this_path() {
        for g in geometries() {
            let (xl, wl, yl) = g.lens();
            let (x, w, dy) = (values(xl, 6), values(wl, 7), values(yl, 8));
            let y = naive(&g, &x, &w);
            let mut dx = vec![f32::NAN; xl];
            let mut dw = vec![f32::NAN; wl];
            conv2d_backward_input(&g, &dy, &w, &mut dx);
            conv2d_backward_weight(&g, &x, &dy, &mut dw);
            let lhs = dot(&y, &dy);
            for (what, rhs) in [("input", dot(&x, &dx)), ("weight", dot(&w, &dw))] {
                assert!(
                    (lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()),
                    "{g:?} {what}: {lhs} vs {rhs}"
                );
            }
        }
    }
}
