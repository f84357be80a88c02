//! Window geometry (convolution and pooling) against the definition, computed
//! here in f64 one output at a time, on every CPU path
//! ([`cpu_paths`]: layerlens' kernels on each instruction set, then candle's)
//! and, for layerlens' convolutions, with both algorithms (im2col + packed
//! GEMM, Winograd). A geometry that cannot work must be refused when the graph
//! is built, with a typed error naming the node and the shapes, never a panic.
//!
//! The first test is torchvision's DeepLabV3-MobileNetV3 ASPP case, which used
//! to panic with a usize underflow in the convolution kernel: a 3×3
//! convolution with dilation 36 and padding 36 on a 14×14 map, where the
//! effective kernel (73×73) is larger than the input but not than the padded
//! input (86×86), so every tap but the centre falls in the padding and must
//! contribute zero (PyTorch's result: the centre tap alone).

use layerlens_core::kernels::conv::{with_algorithm, ConvAlgorithm};
use layerlens_core::kernels::{cpu_paths, with_cpu_path, CpuPath, KernelPath};
use layerlens_core::ops::{ConvTranspose2d, Pad2d, PadMode, PoolKind, Upsample, UpsampleMode};
use layerlens_core::prelude::*;
use proptest::prelude::*;

/// A convolution's sizes.
#[derive(Clone, Copy, Debug)]
struct ConvCase {
    batch: usize,
    c_in: usize,
    c_out: usize,
    groups: usize,
    h: usize,
    w: usize,
    k: [usize; 2],
    stride: usize,
    dilation: usize,
    /// `[top, bottom, left, right]`.
    pads: [usize; 4],
}

/// Deterministic values in [-0.5, 0.5).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

/// `(oh, ow)` by the definition, or `None` where the window does not fit.
fn conv_out(c: &ConvCase) -> Option<(usize, usize)> {
    let eh = c.dilation * (c.k[0] - 1) + 1;
    let ew = c.dilation * (c.k[1] - 1) + 1;
    let ph = c.h + c.pads[0] + c.pads[1];
    let pw = c.w + c.pads[2] + c.pads[3];
    (ph >= eh && pw >= ew).then(|| ((ph - eh) / c.stride + 1, (pw - ew) / c.stride + 1))
}

/// The definition (PyTorch's `conv2d`: taps in the zero padding add nothing),
/// in f64, plus the bias.
fn naive_conv(c: &ConvCase, x: &[f32], wt: &[f32], bias: &[f32]) -> Vec<f32> {
    let (oh, ow) = conv_out(c).expect("valid geometry");
    let (cin_g, cout_g) = (c.c_in / c.groups, c.c_out / c.groups);
    let mut y = vec![0f32; c.batch * c.c_out * oh * ow];
    for n in 0..c.batch {
        for oc in 0..c.c_out {
            let grp = oc / cout_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = bias[oc] as f64;
                    for ci in 0..cin_g {
                        let ic = grp * cin_g + ci;
                        for i in 0..c.k[0] {
                            for j in 0..c.k[1] {
                                let iy =
                                    (oy * c.stride + i * c.dilation) as isize - c.pads[0] as isize;
                                let ix =
                                    (ox * c.stride + j * c.dilation) as isize - c.pads[2] as isize;
                                if iy < 0 || ix < 0 || iy >= c.h as isize || ix >= c.w as isize {
                                    continue;
                                }
                                let xv =
                                    x[((n * c.c_in + ic) * c.h + iy as usize) * c.w + ix as usize];
                                let wv = wt[((oc * cin_g + ci) * c.k[0] + i) * c.k[1] + j];
                                s += xv as f64 * wv as f64;
                            }
                        }
                    }
                    y[((n * c.c_out + oc) * oh + oy) * ow + ox] = s as f32;
                }
            }
        }
    }
    y
}

/// Every configuration a convolution can run on here: each CPU path, and on
/// layerlens' kernels each algorithm.
fn conv_configs() -> Vec<(CpuPath, Option<ConvAlgorithm>)> {
    let mut v = Vec::new();
    for path in cpu_paths() {
        match path.kernels {
            KernelPath::Fast => {
                for a in [ConvAlgorithm::Im2col, ConvAlgorithm::Winograd] {
                    v.push((path, Some(a)));
                }
            }
            KernelPath::Candle => v.push((path, None)),
        }
    }
    v
}

fn run_in(path: CpuPath, algo: Option<ConvAlgorithm>, f: impl FnOnce() -> Tensor) -> Tensor {
    with_cpu_path(path, || match algo {
        Some(a) => with_algorithm(a, f),
        None => f(),
    })
}

/// Largest `|got - want| - tol(want)`; `<= 0` when everything is within tolerance.
fn worst_excess(got: &[f32], want: &[f32], atol: f32, rtol: f32) -> f32 {
    got.iter()
        .zip(want)
        .map(|(a, b)| {
            if a.is_nan() {
                f32::INFINITY
            } else {
                (a - b).abs() - (atol + rtol * b.abs())
            }
        })
        .fold(f32::NEG_INFINITY, f32::max)
}

fn conv_layer(c: &ConvCase) -> Conv2d {
    let mut l = Conv2d::new(c.c_out, 1)
        .kernel_hw(c.k[0], c.k[1])
        .stride(c.stride)
        .dilation(c.dilation)
        .groups(c.groups)
        .padding(Padding::Explicit(c.pads));
    l.bias = true;
    l
}

/// Builds `input -> conv` for `c`, or the build error.
fn build_conv(c: &ConvCase) -> Result<Model> {
    let mut g = Functional::new("geometry");
    let i = g.input("input", Shape::new([c.c_in, c.h, c.w]))?;
    let y = g.add_as("conv", conv_layer(c), &[i])?;
    g.build(&[y])
}

/// Runs `c` on every configuration and compares with the definition; the
/// geometry must be valid.
fn check_conv(c: &ConvCase, seed: u64) -> std::result::Result<(), String> {
    let model = build_conv(c).map_err(|e| format!("{c:?}: build failed: {e}"))?;
    let (oh, ow) = conv_out(c).unwrap();
    let wl = c.c_out * (c.c_in / c.groups) * c.k[0] * c.k[1];
    let (xv, wv, bv) = (
        values(c.batch * c.c_in * c.h * c.w, seed),
        values(wl, seed + 1),
        values(c.c_out, seed + 2),
    );
    let dev = Device::Cpu;
    let wt = Tensor::from_vec(
        wv.clone(),
        (c.c_out, c.c_in / c.groups, c.k[0], c.k[1]),
        &dev,
    )
    .unwrap();
    model.params().set("conv.weight", &wt).unwrap();
    model
        .params()
        .set(
            "conv.bias",
            &Tensor::from_vec(bv.clone(), c.c_out, &dev).unwrap(),
        )
        .unwrap();
    let x = Tensor::from_vec(xv.clone(), (c.batch, c.c_in, c.h, c.w), &dev).unwrap();
    let want = naive_conv(c, &xv, &wv, &bv);
    // Sums of up to c_in/groups · kh · kw products of values below 0.5.
    let depth = (c.c_in / c.groups * c.k[0] * c.k[1]) as f32;
    for (path, algo) in conv_configs() {
        let y = run_in(path, algo, || {
            model
                .run(&[x.clone()], &["conv"], RunOptions::default())
                .map_err(|e| format!("{c:?} on {path} {algo:?}: {e}"))
                .unwrap()
                .get("conv")
                .unwrap()
                .clone()
        });
        if y.dims() != [c.batch, c.c_out, oh, ow] {
            return Err(format!("{c:?} on {path} {algo:?}: shape {:?}", y.dims()));
        }
        let got: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let excess = worst_excess(&got, &want, 1e-6 * depth.max(1.0) + 1e-6, 1e-5);
        if excess > 0.0 {
            return Err(format!(
                "{c:?} on {path} {algo:?}: off the definition by {excess} beyond tolerance"
            ));
        }
    }
    Ok(())
}

/// An invalid geometry must come back as a shape or argument error naming the
/// node, with the sizes in the message.
fn check_refused(err: &Error, node: &str) -> std::result::Result<(), String> {
    let msg = err.to_string();
    match err {
        Error::ShapeMismatch { node: n, .. } | Error::InvalidArgument { node: n, .. }
            if n == node && !msg.contains('\n') =>
        {
            Ok(())
        }
        _ => Err(format!("not a one-line error naming '{node}': {err:?}")),
    }
}

#[test]
fn deeplab_aspp_dilation_36_on_14x14_matches_the_definition() {
    let aspp = ConvCase {
        batch: 2,
        c_in: 8,
        c_out: 5,
        groups: 1,
        h: 14,
        w: 14,
        k: [3, 3],
        stride: 1,
        dilation: 36,
        pads: [36; 4],
    };
    let mut cases = vec![aspp];
    // The other ASPP rates, a batch of one (columns split across threads),
    // depthwise and grouped variants, a stride, and a map smaller still.
    for dilation in [12, 24] {
        cases.push(ConvCase {
            dilation,
            pads: [dilation; 4],
            ..aspp
        });
    }
    cases.push(ConvCase { batch: 1, ..aspp });
    cases.push(ConvCase {
        c_out: 8,
        groups: 8,
        ..aspp
    });
    cases.push(ConvCase {
        c_out: 4,
        groups: 2,
        ..aspp
    });
    cases.push(ConvCase { stride: 2, ..aspp });
    cases.push(ConvCase {
        h: 3,
        w: 5,
        pads: [36, 36, 35, 34],
        ..aspp
    });
    for (i, c) in cases.iter().enumerate() {
        check_conv(c, 100 + i as u64).unwrap();
    }
    // The ASPP output is the centre tap alone: a 1×1 convolution with the
    // kernel's centre, checked against the definition above and here directly.
    let c = aspp;
    let x = values(c.batch * c.c_in * c.h * c.w, 100);
    let w = values(c.c_out * c.c_in * 9, 101);
    let b = values(c.c_out, 102);
    let y = naive_conv(&c, &x, &w, &b);
    for n in 0..c.batch {
        for o in 0..c.c_out {
            for p in 0..c.h * c.w {
                let centre: f64 = (0..c.c_in)
                    .map(|i| {
                        x[(n * c.c_in + i) * 196 + p] as f64 * w[(o * c.c_in + i) * 9 + 4] as f64
                    })
                    .sum::<f64>()
                    + b[o] as f64;
                let got = y[(n * c.c_out + o) * 196 + p] as f64;
                assert!((got - centre).abs() < 1e-5, "centre tap: {got} vs {centre}");
            }
        }
    }
}

#[test]
fn impossible_geometries_are_refused_when_the_graph_is_built() {
    let base = ConvCase {
        batch: 1,
        c_in: 2,
        c_out: 2,
        groups: 1,
        h: 14,
        w: 14,
        k: [3, 3],
        stride: 1,
        dilation: 36,
        pads: [35; 4],
    };
    // Effective kernel 73 on a 14 + 70 = 84 input: fits; with padding 29 (72) it does not.
    assert!(build_conv(&base).is_ok());
    for c in [
        ConvCase {
            pads: [29; 4],
            ..base
        },
        ConvCase {
            pads: [0; 4],
            ..base
        },
        ConvCase {
            dilation: 1,
            k: [7, 1],
            h: 3,
            pads: [1, 2, 0, 0],
            ..base
        },
    ] {
        let err = build_conv(&c).expect_err("window larger than the padded input");
        check_refused(&err, "conv").unwrap();
        let msg = err.to_string();
        assert!(msg.contains(&format!("{}x{}", c.h, c.w)), "{msg}");
    }
    // Pooling: window larger than the padded input, padding not smaller than the window.
    for (pool, input) in [
        (Pool2d::max(5), [3, 4, 4]),
        (Pool2d::avg(2).padding(Padding::symmetric(2)), [3, 8, 8]),
        (
            Pool2d::max(3).padding(Padding::Explicit([0, 0, 0, 3])),
            [3, 8, 8],
        ),
    ] {
        let mut g = Functional::new("geometry");
        let i = g.input("input", Shape::new(input)).unwrap();
        let err = g.add_as("pool", pool, &[i]).expect_err("refused");
        check_refused(&err, "pool").unwrap();
    }
    // Resize to nothing, a transposed convolution whose padding removes the
    // whole output, padding that overflows.
    let refused: Vec<(&str, layerlens_core::ir::Op)> = vec![
        (
            "resize",
            Upsample {
                size: [0, 4],
                mode: UpsampleMode::Bilinear,
            }
            .into(),
        ),
        (
            "deconv",
            ConvTranspose2d {
                padding: 3,
                ..ConvTranspose2d::new(2, 3)
            }
            .into(),
        ),
        (
            "pad",
            Pad2d {
                pads: [usize::MAX, 1, 0, 0],
                mode: PadMode::Edge,
            }
            .into(),
        ),
    ];
    // Any node whose output has an empty axis (here a Lambda that crops the
    // whole width): nothing to tap, and kernels downstream would see no data.
    let mut g = Functional::new("geometry");
    let i = g.input("input", Shape::new([3, 4, 4])).unwrap();
    let err = g
        .closure("crop", &[i], |xs| xs[0].narrow(3, 0, 0))
        .expect_err("empty output");
    check_refused(&err, "crop").unwrap();
    assert!(err.to_string().contains("(N, 3, 4, 4)"), "{err}");
    for (node, op) in refused {
        let mut g = Functional::new("geometry");
        let i = g.input("input", Shape::new([3, 2, 2])).unwrap();
        let err = g.add_as(node, op, &[i]).expect_err("refused");
        check_refused(&err, node).unwrap();
    }
}

/// A pooling's sizes.
#[derive(Clone, Copy, Debug)]
struct PoolCase {
    max: bool,
    count_include_pad: bool,
    batch: usize,
    c: usize,
    h: usize,
    w: usize,
    k: [usize; 2],
    stride: usize,
    pads: [usize; 4],
}

/// PyTorch's `max_pool2d` / `avg_pool2d` (floor mode) by the definition: max
/// never picks padding (NaN wins), average divides by the whole window or by
/// its real cells.
fn naive_pool(p: &PoolCase, x: &[f32]) -> Option<Vec<f32>> {
    let ph = p.h + p.pads[0] + p.pads[1];
    let pw = p.w + p.pads[2] + p.pads[3];
    if ph < p.k[0] || pw < p.k[1] {
        return None;
    }
    let (oh, ow) = ((ph - p.k[0]) / p.stride + 1, (pw - p.k[1]) / p.stride + 1);
    let mut y = Vec::with_capacity(p.batch * p.c * oh * ow);
    for plane in x.chunks(p.h * p.w) {
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut m, mut s, mut real) = (f32::NEG_INFINITY, 0f64, 0usize);
                for i in 0..p.k[0] {
                    for j in 0..p.k[1] {
                        let iy = (oy * p.stride + i) as isize - p.pads[0] as isize;
                        let ix = (ox * p.stride + j) as isize - p.pads[2] as isize;
                        if iy < 0 || ix < 0 || iy >= p.h as isize || ix >= p.w as isize {
                            continue;
                        }
                        let v = plane[iy as usize * p.w + ix as usize];
                        if v > m || v.is_nan() {
                            m = v;
                        }
                        s += v as f64;
                        real += 1;
                    }
                }
                y.push(if p.max {
                    m
                } else if p.count_include_pad {
                    (s / (p.k[0] * p.k[1]) as f64) as f32
                } else {
                    (s / real as f64) as f32
                });
            }
        }
    }
    Some(y)
}

fn check_pool(p: &PoolCase, seed: u64) -> std::result::Result<(), String> {
    let kind = if p.max { PoolKind::Max } else { PoolKind::Avg };
    let mut layer = Pool2d::new(kind, p.k)
        .stride(p.stride)
        .padding(Padding::Explicit(p.pads))
        .count_include_pad(p.count_include_pad);
    layer.stride = [p.stride, p.stride];
    let mut g = Functional::new("geometry");
    let i = g.input("input", Shape::new([p.c, p.h, p.w])).unwrap();
    let built = g.add_as("pool", layer, &[i]);
    let fits = p.pads[0] < p.k[0] && p.pads[1] < p.k[0] && p.pads[2] < p.k[1] && p.pads[3] < p.k[1];
    let want = naive_pool(p, &values(p.batch * p.c * p.h * p.w, seed)).filter(|_| fits);
    let (y, want) = match (built, want) {
        (Err(e), None) => return check_refused(&e, "pool"),
        (Err(e), Some(_)) => return Err(format!("{p:?}: refused a valid geometry: {e}")),
        (Ok(_), None) => return Err(format!("{p:?}: accepted an impossible geometry")),
        (Ok(y), Some(want)) => (y, want),
    };
    let model = g.build(&[y]).map_err(|e| e.to_string())?;
    let x = Tensor::from_vec(
        values(p.batch * p.c * p.h * p.w, seed),
        (p.batch, p.c, p.h, p.w),
        &Device::Cpu,
    )
    .unwrap();
    for path in cpu_paths() {
        let y = with_cpu_path(path, || {
            model
                .run(&[x.clone()], &["pool"], RunOptions::default())
                .map_err(|e| format!("{p:?} on {path}: {e}"))
        })?;
        let got: Vec<f32> = y
            .get("pool")
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        if got.len() != want.len() {
            return Err(format!(
                "{p:?} on {path}: {} values, want {}",
                got.len(),
                want.len()
            ));
        }
        let excess = worst_excess(&got, &want, 1e-6, 1e-5);
        if excess > 0.0 {
            return Err(format!("{p:?} on {path}: off the definition by {excess}"));
        }
    }
    Ok(())
}

/// Dilations mostly small (where the window fits most often), sometimes up to 40.
fn dilation() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..=3, 1usize..=40]
}

/// Paddings mostly up to 3 on each side, sometimes up to 40 (symmetric or not).
fn pads() -> impl Strategy<Value = [usize; 4]> {
    prop_oneof![
        prop::array::uniform4(0usize..=3),
        (0usize..=40).prop_map(|p| [p; 4]),
        prop::array::uniform4(0usize..=40),
    ]
}

fn conv_case() -> impl Strategy<Value = ConvCase> {
    (
        (1usize..=3, 1usize..=3, 1usize..=3, 0usize..4),
        (1usize..=20, 1usize..=20, 1usize..=7, 1usize..=7),
        (1usize..=3, dilation(), pads()),
    )
        .prop_map(
            |((batch, cin_g, cout_g, kind), (h, w, kh, kw), (stride, dilation, pads))| {
                // Dense, grouped, depthwise, depthwise with a channel multiplier.
                let (groups, cin_g, cout_g) = match kind {
                    0 => (1, cin_g, cout_g),
                    1 => (2, cin_g, cout_g),
                    2 => (1 + cin_g, 1, 1),
                    _ => (1 + cin_g, 1, 2),
                };
                ConvCase {
                    batch,
                    c_in: groups * cin_g,
                    c_out: groups * cout_g,
                    groups,
                    h,
                    w,
                    k: [kh, kw],
                    stride,
                    dilation,
                    pads,
                }
            },
        )
}

fn pool_case() -> impl Strategy<Value = PoolCase> {
    (
        (any::<bool>(), any::<bool>(), 1usize..=3, 1usize..=3),
        (1usize..=20, 1usize..=20, 1usize..=7, 1usize..=7),
        (
            1usize..=3,
            prop_oneof![3 => prop::array::uniform4(0usize..=3), 1 => pads()],
        ),
    )
        .prop_map(
            |((max, cip, batch, c), (h, w, kh, kw), (stride, pads))| PoolCase {
                max,
                count_include_pad: cip,
                batch,
                c,
                h,
                w,
                k: [kh, kw],
                stride,
                pads,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random convolution geometries on every path and algorithm: the
    /// definition's values where the window fits, a clean build error where it
    /// does not, never a panic.
    #[test]
    fn random_conv_geometries_match_the_definition_or_are_refused(c in conv_case(), seed in 0u64..1000) {
        match conv_out(&c) {
            Some(_) => check_conv(&c, seed).map_err(TestCaseError::fail)?,
            None => {
                let err = build_conv(&c).err().ok_or_else(|| TestCaseError::fail(format!("{c:?}: accepted")))?;
                check_refused(&err, "conv").map_err(TestCaseError::fail)?;
            }
        }
    }

    /// Random max and average pooling geometries on every path, likewise.
    #[test]
    fn random_pool_geometries_match_the_definition_or_are_refused(p in pool_case(), seed in 0u64..1000) {
        check_pool(&p, seed).map_err(TestCaseError::fail)?;
    }
}
