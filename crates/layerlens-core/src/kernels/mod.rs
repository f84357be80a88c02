//! The candle custom ops that run the `layerlens-kernels` crate behind the ops'
//! interface (the kernels themselves, and their instruction-set dispatch, live
//! there and are re-exported here).
//!
//! candle stays the tensor type and the autograd engine; where a benchmark showed
//! its CPU kernel to be the bottleneck (convolution, forward and backward: see
//! `docs/performance.md`), layerlens runs its own kernel as a candle custom op
//! with its own backward. Other devices (CUDA) and dtypes keep candle's kernels.
//! [`set_kernel_path`] switches back to candle's CPU convolution, which is how the
//! tests check one path against the other. Training-mode batch normalisation
//! ([`batch_norm_train`]) follows the same switch.

pub use layerlens_kernels::{batch_norm, conv, elementwise, isa, pool};

use crate::ops::padding::pad_hw;
use batch_norm::{BatchStats, BnGeometry};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use conv::{ConvGeometry, Epilogue, FusedActivation};
use pool::PoolGeometry;
use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

/// Which implementation of convolution, pooling and training-mode batch norm runs
/// on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPath {
    /// layerlens' kernels ([`conv`], [`pool`], [`batch_norm`]): packed-GEMM and
    /// Winograd convolutions, direct depthwise loops, fused epilogues, their own
    /// gradients, on the instruction-set path [`isa::active`] gives. The default.
    Fast,
    /// candle's `conv2d` and pooling, and their autograd (`conv_transpose2d` for
    /// the input gradient; layerlens' workarounds for its pooling backward);
    /// batch norm composed from candle ops.
    Candle,
}

static KERNEL_PATH: AtomicU8 = AtomicU8::new(0);

thread_local! {
    static KERNEL_PATH_OVERRIDE: Cell<Option<KernelPath>> = const { Cell::new(None) };
}

/// Chooses the CPU kernels for the whole process (benchmarks compare the
/// two; there is no other reason to leave [`KernelPath::Fast`]).
pub fn set_kernel_path(path: KernelPath) {
    KERNEL_PATH.store(
        match path {
            KernelPath::Fast => 0,
            KernelPath::Candle => 1,
        },
        Ordering::Relaxed,
    );
}

/// Runs `f` with `path` as the CPU kernels on this thread only (the thread
/// that calls the model, where the choice is made), whatever the process-wide
/// setting: how tests compare the paths side by side.
pub fn with_kernel_path<R>(path: KernelPath, f: impl FnOnce() -> R) -> R {
    let before = KERNEL_PATH_OVERRIDE.with(|c| c.replace(Some(path)));
    struct Restore(Option<KernelPath>);
    impl Drop for Restore {
        fn drop(&mut self) {
            KERNEL_PATH_OVERRIDE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(before);
    f()
}

/// One CPU configuration: whose kernels, and on which instruction-set path
/// (the ISA matters for layerlens' kernels only; candle's follow its own
/// detection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuPath {
    /// layerlens' kernels or candle's.
    pub kernels: KernelPath,
    /// The instruction-set path of layerlens' kernels.
    pub isa: isa::Isa,
}

impl std::fmt::Display for CpuPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kernels {
            KernelPath::Fast => write!(f, "layerlens/{}", self.isa),
            KernelPath::Candle => f.write_str("candle"),
        }
    }
}

/// Every CPU configuration this machine can run: layerlens' kernels on each
/// instruction-set path the CPU supports (portable up to the best), then
/// candle's. The numeric tests run each, so a lower path stays tested on a
/// machine that would never pick it.
pub fn cpu_paths() -> Vec<CpuPath> {
    let mut paths: Vec<CpuPath> = isa::Isa::supported()
        .into_iter()
        .map(|isa| CpuPath {
            kernels: KernelPath::Fast,
            isa,
        })
        .collect();
    paths.push(CpuPath {
        kernels: KernelPath::Candle,
        isa: isa::Isa::detected(),
    });
    paths
}

/// Runs `f` on this thread with `path`'s kernels and instruction set.
pub fn with_cpu_path<R>(path: CpuPath, f: impl FnOnce() -> R) -> R {
    isa::with_isa(path.isa, || with_kernel_path(path.kernels, f))
}

/// The CPU kernels in use on this thread.
pub fn kernel_path() -> KernelPath {
    if let Some(p) = KERNEL_PATH_OVERRIDE.with(Cell::get) {
        return p;
    }
    match KERNEL_PATH.load(Ordering::Relaxed) {
        0 => KernelPath::Fast,
        _ => KernelPath::Candle,
    }
}

/// A convolution's hyper-parameters; `pads` are `[top, bottom, left, right]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvParams {
    /// Stride `[h, w]`.
    pub stride: [usize; 2],
    /// Dilation `[h, w]`.
    pub dilation: [usize; 2],
    /// Zero padding `[top, bottom, left, right]`.
    pub pads: [usize; 4],
    /// Channel groups.
    pub groups: usize,
}

impl ConvParams {
    fn geometry(&self, x: &[usize], w: &[usize]) -> candle_core::Result<ConvGeometry> {
        let (&[n, c, h, wd], &[o, _, kh, kw]) = (x, w) else {
            candle_core::bail!("conv2d expects NCHW input and OIHW kernel, got {x:?} and {w:?}")
        };
        let g = ConvGeometry {
            batch: n,
            c_in: c,
            h,
            w: wd,
            c_out: o,
            kh,
            kw,
            stride: self.stride,
            dilation: self.dilation,
            pads: self.pads,
            groups: self.groups,
        };
        g.validate().map_err(candle_core::Error::msg)?;
        if w[1] * self.groups != c {
            candle_core::bail!(
                "conv2d kernel {w:?} expects {} input channels, the input {x:?} has {c}",
                w[1] * self.groups
            );
        }
        Ok(g)
    }

    fn fast(&self, x: &Tensor) -> bool {
        x.device().is_cpu() && x.dtype() == DType::F32 && kernel_path() == KernelPath::Fast
    }
}

/// The f32 contents of a contiguous CPU tensor's storage.
fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("layerlens conv kernels take f32, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("layerlens conv kernels take contiguous tensors"),
    }
}

/// `conv2d(x, w)` with an epilogue, as a candle op; its backward (without
/// epilogue only) runs [`conv::conv2d_backward_input`] / [`conv::conv2d_backward_weight`].
#[derive(Clone, Debug)]
struct ConvForward {
    p: ConvParams,
    scale: Option<Vec<f32>>,
    shift: Option<Vec<f32>>,
    act: FusedActivation,
}

impl ConvForward {
    fn plain(p: ConvParams) -> Self {
        ConvForward {
            p,
            scale: None,
            shift: None,
            act: FusedActivation::None,
        }
    }

    fn run(
        &self,
        (x, xl): (&CpuStorage, &Layout),
        (w, wl): (&CpuStorage, &Layout),
        residual: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.p.geometry(xl.dims(), wl.dims())?;
        let (oh, ow) = g.out_hw().expect("validated");
        let mut y = vec![0f32; g.batch * g.c_out * oh * ow];
        let ep = Epilogue {
            scale: self.scale.as_deref(),
            shift: self.shift.as_deref(),
            residual,
            act: self.act,
        };
        if residual.is_some_and(|r| r.len() != y.len()) {
            candle_core::bail!("the residual does not have the convolution's output shape");
        }
        conv::conv2d_forward(&g, slice(x, xl)?, slice(w, wl)?, &ep, &mut y);
        Ok((CpuStorage::F32(y), Shape::from((g.batch, g.c_out, oh, ow))))
    }
}

impl CustomOp2 for ConvForward {
    fn name(&self) -> &'static str {
        "layerlens-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if self.scale.is_some() || self.shift.is_some() || self.act != FusedActivation::None {
            candle_core::bail!("a fused inference convolution has no gradient");
        }
        let dy = dy.contiguous()?;
        let dx = if x.track_op() {
            Some(dy.apply_op2(
                w,
                ConvBackwardInput {
                    p: self.p,
                    x_dims: x.dims().to_vec(),
                },
            )?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(x.apply_op2(
                &dy,
                ConvBackwardWeight {
                    p: self.p,
                    w_dims: w.dims().to_vec(),
                },
            )?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

impl CustomOp3 for ConvForward {
    fn name(&self) -> &'static str {
        "layerlens-conv2d-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), Some(slice(s3, l3)?))
    }
}

/// `act(conv(x, w) + b)` for training: one op whose backward masks the upstream
/// gradient by the activation and sums the bias gradient in one pass each,
/// instead of candle's separate broadcast-add, activation and reduction nodes.
#[derive(Clone, Copy, Debug)]
struct ConvBiasAct {
    p: ConvParams,
    act: FusedActivation,
}

impl ConvBiasAct {
    fn run(
        &self,
        (x, xl): (&CpuStorage, &Layout),
        (w, wl): (&CpuStorage, &Layout),
        bias: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.p.geometry(xl.dims(), wl.dims())?;
        if bias.is_some_and(|b| b.len() != g.c_out) {
            candle_core::bail!("the bias does not have one value per output channel");
        }
        let (oh, ow) = g.out_hw().expect("validated");
        let mut y = vec![0f32; g.lens().2];
        let ep = Epilogue {
            scale: None,
            shift: bias,
            residual: None,
            act: self.act,
        };
        conv::conv2d_forward(&g, slice(x, xl)?, slice(w, wl)?, &ep, &mut y);
        Ok((CpuStorage::F32(y), Shape::from((g.batch, g.c_out, oh, ow))))
    }

    /// The gradient before the activation, from the upstream one and the output.
    fn pre_activation_grad(&self, y: &Tensor, dy: &Tensor) -> candle_core::Result<Tensor> {
        match self.act {
            FusedActivation::None => dy.contiguous(),
            act => dy
                .contiguous()?
                .apply_op2_no_bwd(&y.contiguous()?, &ActivationMask(act)),
        }
    }

    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        dz: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = if x.track_op() {
            Some(dz.apply_op2(
                w,
                ConvBackwardInput {
                    p: self.p,
                    x_dims: x.dims().to_vec(),
                },
            )?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(x.apply_op2(
                dz,
                ConvBackwardWeight {
                    p: self.p,
                    w_dims: w.dims().to_vec(),
                },
            )?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

impl CustomOp2 for ConvBiasAct {
    fn name(&self) -> &'static str {
        "layerlens-conv2d-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dz = self.pre_activation_grad(y, dy)?;
        self.grads(x, w, &dz)
    }
}

impl CustomOp3 for ConvBiasAct {
    fn name(&self) -> &'static str {
        "layerlens-conv2d-bias-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), Some(slice(s3, l3)?))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dz = self.pre_activation_grad(y, dy)?;
        let (dx, dw) = self.grads(x, w, &dz)?;
        let db = if b.track_op() {
            Some(dz.apply_op1_no_bwd(&ChannelSum)?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

/// `dz = dy` where the activation passed its input through, 0 elsewhere
/// (ReLU: `y > 0`; clip: `lo < y < hi`, PyTorch's hardtanh rule).
struct ActivationMask(FusedActivation);

impl CustomOp2 for ActivationMask {
    fn name(&self) -> &'static str {
        "layerlens-activation-mask"
    }

    fn cpu_fwd(
        &self,
        dys: &CpuStorage,
        dyl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (dy, y) = (slice(dys, dyl)?, slice(ys, yl)?);
        let mut dz = vec![0f32; dy.len()];
        elementwise::activation_mask(self.0, dy, y, &mut dz);
        Ok((CpuStorage::F32(dz), dyl.shape().clone()))
    }
}

/// Sums an NCHW tensor over everything but the channel axis.
struct ChannelSum;

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "layerlens-channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let &[n, c, h, w] = l.dims() else {
            candle_core::bail!("channel sum expects NCHW, got {:?}", l.dims())
        };
        let v = slice(s, l)?;
        let sums = elementwise::channel_sums(v, n, c, h * w);
        Ok((CpuStorage::F32(sums), Shape::from(c)))
    }
}

/// `dx` from `(dy, w)`.
struct ConvBackwardInput {
    p: ConvParams,
    x_dims: Vec<usize>,
}

impl CustomOp2 for ConvBackwardInput {
    fn name(&self) -> &'static str {
        "layerlens-conv2d-backward-input"
    }

    fn cpu_fwd(
        &self,
        dy: &CpuStorage,
        dyl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.p.geometry(&self.x_dims, wl.dims())?;
        let mut dx = vec![0f32; g.lens().0];
        conv::conv2d_backward_input(&g, slice(dy, dyl)?, slice(w, wl)?, &mut dx);
        Ok((CpuStorage::F32(dx), Shape::from(self.x_dims.clone())))
    }
}

/// `dw` from `(x, dy)`.
struct ConvBackwardWeight {
    p: ConvParams,
    w_dims: Vec<usize>,
}

impl CustomOp2 for ConvBackwardWeight {
    fn name(&self) -> &'static str {
        "layerlens-conv2d-backward-weight"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        dy: &CpuStorage,
        dyl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.p.geometry(xl.dims(), &self.w_dims)?;
        let mut dw = vec![0f32; g.lens().1];
        conv::conv2d_backward_weight(&g, slice(x, xl)?, slice(dy, dyl)?, &mut dw);
        Ok((CpuStorage::F32(dw), Shape::from(self.w_dims.clone())))
    }
}

/// candle's convolution, padding explicitly where the padding is asymmetric
/// (candle's kernel pads both sides alike).
fn candle_conv2d(x: &Tensor, w: &Tensor, p: &ConvParams) -> candle_core::Result<Tensor> {
    if p.dilation[0] != p.dilation[1] {
        candle_core::bail!(
            "candle's conv2d (the path for devices other than the CPU) needs a square dilation, got {:?}",
            p.dilation
        );
    }
    // candle takes one stride: a rectangular one (OCR backbones' [2, 1]) is the
    // stride-1 result sampled every stride[0] rows and stride[1] columns.
    let square = p.stride[0] == p.stride[1];
    let (s, d, g) = (
        if square { p.stride[0] } else { 1 },
        p.dilation[0],
        p.groups,
    );
    let y = if p.pads.iter().all(|&q| q == p.pads[0]) {
        x.conv2d(w, p.pads[0], s, d, g)?
    } else {
        pad_hw(x, p.pads, 0.0)?.conv2d(w, 0, s, d, g)?
    };
    if square {
        return Ok(y);
    }
    let pick = |y: Tensor, dim: usize, step: usize| -> candle_core::Result<Tensor> {
        let n = y.dim(dim)?;
        let idx: Vec<u32> = (0..n as u32).step_by(step).collect();
        let idx = Tensor::from_vec(idx.clone(), idx.len(), y.device())?;
        y.index_select(&idx, dim)
    };
    pick(pick(y, 2, p.stride[0])?, 3, p.stride[1])
}

/// A differentiable 2-D convolution: NCHW `x`, OIHW `w`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use layerlens_core::kernels::{conv2d, ConvParams};
/// let x = Tensor::ones((1, 2, 5, 5), candle_core::DType::F32, &Device::Cpu)?;
/// let w = Tensor::ones((3, 2, 3, 3), candle_core::DType::F32, &Device::Cpu)?;
/// let p = ConvParams { stride: [1, 1], dilation: [1, 1], pads: [1, 1, 1, 1], groups: 1 };
/// let y = conv2d(&x, &w, &p)?;
/// assert_eq!(y.dims(), &[1, 3, 5, 5]);
/// assert_eq!(y.get(0)?.get(0)?.get(2)?.get(2)?.to_scalar::<f32>()?, 18.0);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn conv2d(x: &Tensor, w: &Tensor, p: &ConvParams) -> candle_core::Result<Tensor> {
    if !p.fast(x) {
        return candle_conv2d(x, w, p);
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let op = ConvForward::plain(*p);
    if x.track_op() || w.track_op() {
        x.apply_op2(&w, op)
    } else {
        x.apply_op2_no_bwd(&w, &op)
    }
}

/// A per-channel affine map applied to a convolution's output: `y · scale + shift`
/// (a bias, an inference-mode batch norm, or both folded together).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChannelAffine {
    /// Factor per output channel (`None`: 1).
    pub scale: Option<Vec<f32>>,
    /// Offset per output channel (`None`: 0).
    pub shift: Option<Vec<f32>>,
}

/// An inference-only convolution with everything after it fused in one pass over
/// the output: `act(conv(x, w) · scale + shift + residual)`.
///
/// Falls back to composing candle ops on other devices or when a tensor is
/// tracked by autograd (the fused op has no gradient).
pub fn conv2d_fused(
    x: &Tensor,
    w: &Tensor,
    p: &ConvParams,
    affine: ChannelAffine,
    residual: Option<&Tensor>,
    act: FusedActivation,
) -> candle_core::Result<Tensor> {
    let tracked = x.track_op() || w.track_op() || residual.is_some_and(|r| r.track_op());
    if !p.fast(x) || tracked {
        let mut y = conv2d(x, w, p)?;
        let c = y.dim(1)?;
        let dev = y.device().clone();
        if let Some(s) = &affine.scale {
            y = y.broadcast_mul(&Tensor::from_slice(s, (1, c, 1, 1), &dev)?)?;
        }
        if let Some(t) = &affine.shift {
            y = y.broadcast_add(&Tensor::from_slice(t, (1, c, 1, 1), &dev)?)?;
        }
        if let Some(r) = residual {
            y = (y + r)?;
        }
        return match act {
            FusedActivation::None => Ok(y),
            FusedActivation::Relu => y.relu(),
            FusedActivation::Clip(lo, hi) => y.clamp(lo, hi),
        };
    }
    let op = ConvForward {
        p: *p,
        scale: affine.scale,
        shift: affine.shift,
        act,
    };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match residual {
        Some(r) => x.apply_op3_no_bwd(&w, &r.contiguous()?, &op),
        None => x.apply_op2_no_bwd(&w, &op),
    }
}

/// Max or average pooling on the CPU path (`count_include_pad` only matters for average).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolParams {
    /// Max (`true`) or average pooling.
    pub max: bool,
    /// Window `[h, w]`.
    pub kernel: [usize; 2],
    /// Stride `[h, w]`.
    pub stride: [usize; 2],
    /// Implicit padding `[top, bottom, left, right]`.
    pub pads: [usize; 4],
    /// Average pooling divides by the whole window, padding included.
    pub count_include_pad: bool,
}

impl PoolParams {
    fn geometry(&self, x: &[usize]) -> candle_core::Result<PoolGeometry> {
        let &[batch, c, h, w] = x else {
            candle_core::bail!("pooling expects NCHW input, got {x:?}")
        };
        let g = PoolGeometry {
            batch,
            c,
            h,
            w,
            kernel: self.kernel,
            stride: self.stride,
            pads: self.pads,
        };
        if g.out_hw().is_none() {
            candle_core::bail!(
                "a {:?} pooling window does not fit a {h}x{w} input padded by {:?}",
                self.kernel,
                self.pads
            );
        }
        Ok(g)
    }
}

struct PoolForward(PoolParams);

impl CustomOp1 for PoolForward {
    fn name(&self) -> &'static str {
        "layerlens-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.0.geometry(l.dims())?;
        let (oh, ow) = g.out_hw().expect("checked");
        let x = slice(s, l)?;
        let mut y = vec![0f32; g.lens().expect("checked").1];
        if self.0.max {
            pool::max_pool_forward(&g, x, &mut y);
        } else {
            pool::avg_pool_forward(&g, x, &mut y, self.0.count_include_pad);
        }
        Ok((CpuStorage::F32(y), Shape::from((g.batch, g.c, oh, ow))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2(&dy.contiguous()?, PoolBackward(self.0))?))
    }
}

/// `dx` from `(x, dy)`.
struct PoolBackward(PoolParams);

impl CustomOp2 for PoolBackward {
    fn name(&self) -> &'static str {
        "layerlens-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        dys: &CpuStorage,
        dyl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.0.geometry(xl.dims())?;
        let mut dx = vec![0f32; g.lens().expect("checked").0];
        let dy = slice(dys, dyl)?;
        if self.0.max {
            pool::max_pool_backward(&g, slice(xs, xl)?, dy, &mut dx);
        } else {
            pool::avg_pool_backward(&g, dy, &mut dx, self.0.count_include_pad);
        }
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

/// Differentiable pooling with layerlens' CPU kernels; `None` where they do not
/// apply (another device or dtype, or the candle path chosen), so the caller
/// runs candle's.
pub fn pool2d(x: &Tensor, p: &PoolParams) -> Option<candle_core::Result<Tensor>> {
    if !(x.device().is_cpu() && x.dtype() == DType::F32 && kernel_path() == KernelPath::Fast) {
        return None;
    }
    Some(x.contiguous().and_then(|x| {
        if x.track_op() {
            x.apply_op1(PoolForward(*p))
        } else {
            x.apply_op1_no_bwd(&PoolForward(*p))
        }
    }))
}

/// A differentiable `act(conv(x, w) + bias)` in one op with its own backward
/// (see [`conv2d`] for the plain convolution). Off the CPU path it composes
/// candle ops.
pub fn conv2d_bias_act(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    p: &ConvParams,
    act: FusedActivation,
) -> candle_core::Result<Tensor> {
    if !p.fast(x) {
        let mut y = conv2d(x, w, p)?;
        if let Some(b) = bias {
            y = y.broadcast_add(&b.reshape((1, (), 1, 1))?)?;
        }
        return match act {
            FusedActivation::None => Ok(y),
            FusedActivation::Relu => y.relu(),
            FusedActivation::Clip(lo, hi) => y.clamp(lo, hi),
        };
    }
    let op = ConvBiasAct { p: *p, act };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match bias {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

/// Training-mode batch norm `[relu](bn(x) · weight + bias)` with the batch
/// statistics, as one candle op with its own backward ([`batch_norm`]).
///
/// The forward computes the statistics itself and leaves them in `stats` for the
/// caller (running statistics) and for its backward; they are a by-product of the
/// op, not inputs: the backward is the full gradient through them.
struct BatchNormTrain {
    eps: f64,
    relu: bool,
    stats: Arc<OnceLock<BatchStats>>,
}

impl BatchNormTrain {
    fn run(
        &self,
        (x, xl): (&CpuStorage, &Layout),
        affine: Option<(&[f32], &[f32])>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = bn_geometry(xl.dims())?;
        if affine.is_some_and(|(w, b)| w.len() != g.channels || b.len() != g.channels) {
            candle_core::bail!(
                "batch norm weight and bias need one value per channel ({})",
                g.channels
            );
        }
        let mut y = vec![0f32; g.len()];
        let stats = batch_norm::batch_norm_train_forward(
            &g,
            slice(x, xl)?,
            affine.map(|a| a.0),
            affine.map(|a| a.1),
            self.eps,
            self.relu,
            &mut y,
        );
        if self.stats.set(stats).is_err() {
            candle_core::bail!("a batch norm op value ran its forward twice");
        }
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    /// `(dx, (dweight, dbias))` from the upstream gradient; each only if asked.
    #[allow(clippy::type_complexity)]
    fn grads(
        &self,
        x: &Tensor,
        weight: Option<&Tensor>,
        y: &Tensor,
        dy: &Tensor,
        need_dx: bool,
        need_params: bool,
    ) -> candle_core::Result<(Option<Tensor>, Option<(Tensor, Tensor)>)> {
        if !need_dx && !need_params {
            return Ok((None, None));
        }
        let g = bn_geometry(x.dims())?;
        let op = BatchNormBackward {
            eps: self.eps,
            stats: self.stats.clone(),
            weight: weight.map(|w| w.to_vec1::<f32>()).transpose()?,
            need_dx,
        };
        let (x, dy) = (x.contiguous()?, dy.contiguous()?);
        let out = if self.relu {
            x.apply_op3_no_bwd(&dy, &y.contiguous()?, &op)?
        } else {
            x.apply_op2_no_bwd(&dy, &op)?
        };
        // `out` is `[dx | dweight | dbias]` (no dx unless asked).
        let n = if need_dx { g.len() } else { 0 };
        let c = g.channels;
        let dx = if need_dx {
            Some(out.narrow(0, 0, n)?.reshape(x.shape())?)
        } else {
            None
        };
        let params = if need_params {
            Some((
                out.narrow(0, n, c)?.copy()?,
                out.narrow(0, n + c, c)?.copy()?,
            ))
        } else {
            None
        };
        Ok((dx, params))
    }
}

fn bn_geometry(dims: &[usize]) -> candle_core::Result<BnGeometry> {
    let Some(g) = BnGeometry::of_dims(dims) else {
        candle_core::bail!("batch norm expects (N, C) or (N, C, H, W), got {dims:?}")
    };
    if g.per_channel() == 0 {
        candle_core::bail!(
            "batch norm in training needs at least one value per channel, got {dims:?}"
        );
    }
    Ok(g)
}

impl CustomOp1 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "layerlens-batch-norm-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run((s, l), None)
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(self.grads(x, None, y, dy, x.track_op(), false)?.0)
    }
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "layerlens-batch-norm-train-affine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run((s1, l1), Some((slice(s2, l2)?, slice(s3, l3)?)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, params) = self.grads(
            x,
            Some(w),
            y,
            dy,
            x.track_op(),
            w.track_op() || b.track_op(),
        )?;
        let (dw, db) = match params {
            Some((dw, db)) => (w.track_op().then_some(dw), b.track_op().then_some(db)),
            None => (None, None),
        };
        Ok((dx, dw, db))
    }
}

/// `[dx | dweight | dbias]` (flat) from `(x, dy)`, or `(x, dy, y)` when the
/// forward applied a ReLU (`y` masks the gradient).
struct BatchNormBackward {
    eps: f64,
    stats: Arc<OnceLock<BatchStats>>,
    weight: Option<Vec<f32>>,
    need_dx: bool,
}

impl BatchNormBackward {
    fn run(
        &self,
        (x, xl): (&CpuStorage, &Layout),
        (dy, dyl): (&CpuStorage, &Layout),
        relu_out: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = bn_geometry(xl.dims())?;
        if dyl.dims() != xl.dims() {
            candle_core::bail!(
                "batch norm gradient {:?} does not have the input's shape {:?}",
                dyl.dims(),
                xl.dims()
            );
        }
        let Some(stats) = self.stats.get() else {
            candle_core::bail!("batch norm backward before its forward")
        };
        let n = if self.need_dx { g.len() } else { 0 };
        let mut out = vec![0f32; n + 2 * g.channels];
        let grads = batch_norm::batch_norm_train_backward(
            &g,
            slice(x, xl)?,
            slice(dy, dyl)?,
            relu_out,
            stats,
            self.weight.as_deref(),
            self.eps,
            self.need_dx.then(|| &mut out[..n]),
        );
        out[n..n + g.channels].copy_from_slice(&grads.dweight);
        out[n + g.channels..].copy_from_slice(&grads.dbias);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

impl CustomOp2 for BatchNormBackward {
    fn name(&self) -> &'static str {
        "layerlens-batch-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), None)
    }
}

impl CustomOp3 for BatchNormBackward {
    fn name(&self) -> &'static str {
        "layerlens-batch-norm-relu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l3.dims() != l1.dims() {
            candle_core::bail!("batch norm output does not have the input's shape");
        }
        self.run((s1, l1), (s2, l2), Some(slice(s3, l3)?))
    }
}

/// Training-mode batch normalisation over axis 1 of an `(N, C)` or `(N, C, H, W)`
/// tensor with layerlens' CPU kernel:
/// `y = (x - mean) / sqrt(var + eps) · weight + bias` with the batch mean and
/// biased variance, then `max(y, 0)` if `relu` (the backward then masks the
/// gradient where `y` is 0). `BatchNorm` runs it without: the executor does not
/// fuse a following ReLU node in training (a one-pass ReLU op in place of
/// candle's measured no gain on the ResNet-18 step, see docs/performance.md).
/// Returns `y` (differentiable with respect to `x`, `weight` and `bias`) and the
/// batch statistics, for the caller's running averages.
///
/// `None` where the kernel does not apply (not a CPU f32 tensor, another rank, or
/// [`KernelPath::Candle`] chosen): the caller composes candle ops instead.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use layerlens_core::kernels::batch_norm_train;
/// let x = Tensor::new(&[[1f32, 10.0], [3.0, 30.0]], &Device::Cpu)?;
/// let (y, stats) = batch_norm_train(&x, None, 1e-5, false).expect("CPU f32")?;
/// assert_eq!(stats.mean, vec![2.0, 20.0]);
/// assert_eq!(stats.var, vec![1.0, 100.0]);
/// let y: Vec<Vec<f32>> = y.to_vec2()?;
/// assert!((y[0][0] + 1.0).abs() < 1e-4 && (y[1][1] - 1.0).abs() < 1e-4);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn batch_norm_train(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    eps: f64,
    relu: bool,
) -> Option<candle_core::Result<(Tensor, BatchStats)>> {
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if !(f32_cpu(x)
        && affine.is_none_or(|(w, b)| f32_cpu(w) && f32_cpu(b))
        && matches!(x.rank(), 2 | 4)
        && kernel_path() == KernelPath::Fast)
    {
        return None;
    }
    let stats = Arc::new(OnceLock::new());
    let op = BatchNormTrain {
        eps,
        relu,
        stats: stats.clone(),
    };
    let run = || -> candle_core::Result<(Tensor, BatchStats)> {
        let x = x.contiguous()?;
        let y = match affine {
            Some((w, b)) => {
                let (w, b) = (w.contiguous()?, b.contiguous()?);
                if x.track_op() || w.track_op() || b.track_op() {
                    x.apply_op3(&w, &b, op)?
                } else {
                    x.apply_op3_no_bwd(&w, &b, &op)?
                }
            }
            None if x.track_op() => x.apply_op1(op)?,
            None => x.apply_op1_no_bwd(&op)?,
        };
        let Some(stats) = stats.get() else {
            candle_core::bail!("batch norm forward left no statistics")
        };
        Ok((y, stats.clone()))
    };
    Some(run())
}
