//! layerlens' convolution kernels (forward, input gradient, kernel gradient)
//! against PyTorch autograd (tests/fixtures/conv/gen_conv_grads.py) and against
//! candle's own convolution, on the shapes the kernels special-case: stride 2,
//! "same" padding with even kernels, TF-style asymmetric padding, dilation,
//! groups, depthwise (with a channel multiplier), 1×1, rectangular kernels.
//! Tolerance `common::F32` scaled by the reduction length where sums are long.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{assert_close, fixture, Tol, F32};
use layerlens_core::kernels::conv::FusedActivation;
use layerlens_core::kernels::conv::{with_algorithm, ConvAlgorithm};
use layerlens_core::kernels::isa::{with_isa, Isa};
use layerlens_core::kernels::{self, ChannelAffine, ConvParams, KernelPath};
use std::collections::HashMap;

struct Case {
    name: String,
    p: ConvParams,
    x: Tensor,
    w: Tensor,
    dy: Tensor,
}

fn cases(fx: &HashMap<String, Tensor>) -> Vec<Case> {
    let mut names: Vec<&str> = fx
        .keys()
        .filter_map(|k| k.strip_suffix("/geometry"))
        .collect();
    names.sort();
    assert!(names.len() >= 14, "fixture has {} cases", names.len());
    names
        .into_iter()
        .map(|name| {
            let g: Vec<i64> = fx[&format!("{name}/geometry")].to_vec1().unwrap();
            let u = |i: usize| g[i] as usize;
            Case {
                name: name.to_string(),
                p: ConvParams {
                    stride: [u(7), u(8)],
                    dilation: [u(9), u(10)],
                    pads: [u(11), u(12), u(13), u(14)],
                    groups: u(15),
                },
                x: fx[&format!("{name}/x")].clone(),
                w: fx[&format!("{name}/w")].clone(),
                dy: fx[&format!("{name}/dy")].clone(),
            }
        })
        .collect()
}

/// Output and both gradients through candle's autograd, with `<y, dy>` as the loss.
fn run(c: &Case) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let x = Var::from_tensor(&c.x)?;
    let w = Var::from_tensor(&c.w)?;
    let y = kernels::conv2d(x.as_tensor(), w.as_tensor(), &c.p)?;
    let grads = (&y * &c.dy)?.sum_all()?.backward()?;
    let dx = grads.get(x.as_tensor()).expect("dx").clone();
    let dw = grads.get(w.as_tensor()).expect("dw").clone();
    Ok((y, dx, dw))
}

/// Kernel gradients sum over batch × output positions: allow for the longer sums.
const GRAD: Tol = Tol {
    atol: 1e-4,
    rtol: 1e-4,
};

/// candle 0.11's strided conv2d backward derives the input gradient's `output_padding`
/// from the height alone, so its gradient has the wrong width when the two axes
/// leave different remainders under the stride (it fails with a shape error).
fn candle_backward_breaks(c: &Case) -> bool {
    // A rectangular stride runs candle's stride-1 convolution (then samples it).
    if c.p.stride[0] != c.p.stride[1] {
        return false;
    }
    let d = c.x.dims();
    let k = c.w.dims();
    let rem = |size: usize, pad: usize, k: usize, dil: usize, s: usize| {
        (size + pad - dil * (k - 1) - 1) % s
    };
    rem(
        d[2],
        c.p.pads[0] + c.p.pads[1],
        k[2],
        c.p.dilation[0],
        c.p.stride[0],
    ) != rem(
        d[3],
        c.p.pads[2] + c.p.pads[3],
        k[3],
        c.p.dilation[1],
        c.p.stride[1],
    )
}

#[test]
fn every_cpu_path_matches_pytorch_forward_and_gradients() {
    let fx = fixture("conv/conv_grads.safetensors");
    let mut candle_checked = 0;
    for path in kernels::cpu_paths() {
        for c in cases(&fx) {
            if path.kernels == KernelPath::Candle {
                // candle's kernel takes square dilations only (a rectangular
                // stride is its stride-1 result, subsampled).
                if c.p.dilation[0] != c.p.dilation[1] {
                    continue;
                }
                if candle_backward_breaks(&c) {
                    let e = kernels::with_cpu_path(path, || run(&c)).unwrap_err();
                    assert!(e.to_string().contains("shape mismatch"), "{e}");
                    continue;
                }
                candle_checked += 1;
            }
            // layerlens' kernels: im2col, and Winograd wherever it applies.
            let algos: &[ConvAlgorithm] = match path.kernels {
                KernelPath::Fast => &[ConvAlgorithm::Im2col, ConvAlgorithm::Winograd],
                KernelPath::Candle => &[ConvAlgorithm::Auto],
            };
            for &algo in algos {
                let what = |t: &str| format!("{path} {algo:?} {} {t}", c.name);
                let (y, dx, dw) =
                    with_algorithm(algo, || kernels::with_cpu_path(path, || run(&c))).unwrap();
                assert_close(&y, &fx[&format!("{}/y", c.name)], F32, &what("y"));
                assert_close(&dx, &fx[&format!("{}/dx", c.name)], F32, &what("dx"));
                assert_close(&dw, &fx[&format!("{}/dw", c.name)], GRAD, &what("dw"));
            }
        }
    }
    assert!(candle_checked >= 10, "{candle_checked}");
}

#[test]
fn fused_epilogue_matches_the_unfused_ops_on_every_isa() {
    let fx = fixture("conv/conv_grads.safetensors");
    for (isa, c) in Isa::supported()
        .into_iter()
        .flat_map(|isa| cases(&fx).into_iter().map(move |c| (isa, c)))
    {
        // The unfused reference on the same path (the GEMM's summation order
        // differs between paths).
        let y = with_isa(isa, || kernels::conv2d(&c.x, &c.w, &c.p)).unwrap();
        let co = y.dim(1).unwrap();
        let scale: Vec<f32> = (0..co).map(|i| 0.5 + 0.25 * i as f32).collect();
        let shift: Vec<f32> = (0..co).map(|i| 0.1 * i as f32 - 0.3).collect();
        let dev = Device::Cpu;
        let want = y
            .broadcast_mul(&Tensor::from_slice(&scale, (1, co, 1, 1), &dev).unwrap())
            .unwrap()
            .broadcast_add(&Tensor::from_slice(&shift, (1, co, 1, 1), &dev).unwrap())
            .unwrap()
            .add(&c.dy)
            .unwrap()
            .relu()
            .unwrap();
        let affine = ChannelAffine {
            scale: Some(scale),
            shift: Some(shift),
        };
        let got = with_isa(isa, || {
            kernels::conv2d_fused(&c.x, &c.w, &c.p, affine, Some(&c.dy), FusedActivation::Relu)
        })
        .unwrap();
        assert_close(&got, &want, F32, &format!("{isa} {}", c.name));
    }
}

#[test]
fn frozen_kernels_and_inputs_get_no_gradient_work() {
    // Grad-CAM's case: only the activation is tracked.
    let fx = fixture("conv/conv_grads.safetensors");
    let c = &cases(&fx)[0];
    let x = Var::from_tensor(&c.x).unwrap();
    let y = kernels::conv2d(x.as_tensor(), &c.w, &c.p).unwrap();
    let grads = (&y * &c.dy).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&c.w).is_none());
    assert_close(
        grads.get(x.as_tensor()).unwrap(),
        &fx[&format!("{}/dx", c.name)],
        F32,
        "dx",
    );
}

#[test]
fn bad_geometry_is_an_error_not_a_panic() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev).unwrap();
    let w = Tensor::zeros((2, 3, 5, 5), DType::F32, &dev).unwrap();
    let p = ConvParams {
        stride: [1, 1],
        dilation: [1, 1],
        pads: [0; 4],
        groups: 1,
    };
    let e = kernels::conv2d(&x, &w, &p).unwrap_err().to_string();
    assert!(e.contains("does not fit"), "{e}");
    let w = Tensor::zeros((2, 2, 3, 3), DType::F32, &dev).unwrap();
    let e = kernels::conv2d(&x, &w, &p).unwrap_err().to_string();
    assert!(e.contains("input channels"), "{e}");
}

/// The fused training op `act(conv(x, w) + b)` against the same thing composed
/// from candle ops (conv, broadcast add, relu / clamp) with candle's autograd.
#[test]
fn fused_bias_activation_gradients_match_composed_candle_ops() {
    let fx = fixture("conv/conv_grads.safetensors");
    let mut checked = 0;
    for c in cases(&fx) {
        if c.p.stride[0] != c.p.stride[1] || candle_backward_breaks(&c) {
            continue;
        }
        let co = c.w.dim(0).unwrap();
        let b: Vec<f32> = (0..co).map(|i| 0.2 * i as f32 - 0.3).collect();
        let b = Tensor::from_vec(b, co, &Device::Cpu).unwrap();
        for act in [
            FusedActivation::None,
            FusedActivation::Relu,
            FusedActivation::Clip(-0.5, 0.5),
        ] {
            let run = || -> candle_core::Result<Vec<Tensor>> {
                let (x, w, bv) = (
                    Var::from_tensor(&c.x)?,
                    Var::from_tensor(&c.w)?,
                    Var::from_tensor(&b)?,
                );
                let y = kernels::conv2d_bias_act(
                    x.as_tensor(),
                    w.as_tensor(),
                    Some(bv.as_tensor()),
                    &c.p,
                    act,
                )?;
                let grads = (&y * &c.dy)?.sum_all()?.backward()?;
                let g = |v: &Var| grads.get(v.as_tensor()).expect("grad").clone();
                Ok(vec![y.clone(), g(&x), g(&w), g(&bv)])
            };
            let plain = kernels::with_kernel_path(KernelPath::Candle, run).unwrap();
            for isa in Isa::supported() {
                let fast = with_isa(isa, || kernels::with_kernel_path(KernelPath::Fast, run));
                let fast = fast.unwrap();
                for (i, what) in ["y", "dx", "dw", "db"].iter().enumerate() {
                    // Two float32 summation orders over up to 288 terms of size ~1.
                    let tol = if i >= 2 {
                        GRAD
                    } else {
                        Tol {
                            atol: 5e-5,
                            rtol: 1e-4,
                        }
                    };
                    assert_close(
                        &fast[i],
                        &plain[i],
                        tol,
                        &format!("{isa} {} {act:?} {what}", c.name),
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "{checked}");
}
