//! Class activation maps over a chosen layer: Grad-CAM, Grad-CAM++, Score-CAM,
//! Eigen-CAM and LayerCAM, computed as `pytorch-grad-cam` computes them (ReLU,
//! min-max scaling with eps 1e-7 at the layer's resolution, bilinear resizing to
//! the input, min-max scaling again), so their values can be compared with it.

use crate::colormap::Colormap;
use candle_core::{DType, Device, Tensor, D};
use image::{Rgb, RgbImage};
use layerlens_core::{Error, Mode, Model, Result, RunOptions};
use std::cell::Cell;

/// Which CAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CamMethod {
    /// Channel weights = spatial mean of the gradient (Selvaraju et al. 2017).
    GradCam,
    /// Weights from higher-order gradient terms (Chattopadhay et al. 2018).
    GradCamPlusPlus,
    /// Weights = softmax over channels of the class score when the input is masked
    /// by each upsampled, normalised channel (Wang et al. 2020); no gradients.
    ScoreCam,
    /// First principal component of the activations (Muhammad & Yeasin 2020);
    /// class-agnostic. The sign is chosen so the larger magnitude is positive.
    EigenCam,
    /// Element-wise positive gradient × activation (Jiang et al. 2021).
    LayerCam,
}

impl CamMethod {
    /// Every method, in the order menus list them.
    pub const ALL: [CamMethod; 5] = [
        CamMethod::GradCam,
        CamMethod::GradCamPlusPlus,
        CamMethod::ScoreCam,
        CamMethod::EigenCam,
        CamMethod::LayerCam,
    ];

    /// The name as the papers and people write it: `Grad-CAM++`.
    pub fn label(self) -> &'static str {
        match self {
            CamMethod::GradCam => "Grad-CAM",
            CamMethod::GradCamPlusPlus => "Grad-CAM++",
            CamMethod::ScoreCam => "Score-CAM",
            CamMethod::EigenCam => "Eigen-CAM",
            CamMethod::LayerCam => "LayerCAM",
        }
    }

    /// The short name [`parse`](Self::parse) takes: `gradcam++`.
    pub fn key(self) -> &'static str {
        match self {
            CamMethod::GradCam => "gradcam",
            CamMethod::GradCamPlusPlus => "gradcam++",
            CamMethod::ScoreCam => "scorecam",
            CamMethod::EigenCam => "eigencam",
            CamMethod::LayerCam => "layercam",
        }
    }

    /// Whether the method is class-agnostic (Eigen-CAM explains no class).
    pub fn is_class_agnostic(self) -> bool {
        self == CamMethod::EigenCam
    }

    /// Parses `gradcam`, `gradcam++`, `scorecam`, `eigencam` or `layercam`
    /// (case, `-` and `_` ignored, so `Grad-CAM++` is read too).
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "gradcam" => CamMethod::GradCam,
            "gradcam++" | "gradcamplusplus" => CamMethod::GradCamPlusPlus,
            "scorecam" => CamMethod::ScoreCam,
            "eigencam" => CamMethod::EigenCam,
            "layercam" => CamMethod::LayerCam,
            other => return Err(Error::invalid("cam", format!("unknown CAM method '{other}' (gradcam, gradcam++, scorecam, eigencam, layercam)"))),
        })
    }
}

impl std::fmt::Display for CamMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// A CAM request.
#[derive(Debug, Clone)]
pub struct CamOptions {
    /// The method.
    pub method: CamMethod,
    /// The layer whose activations are weighted (usually the last conv block).
    pub layer: String,
    /// The node holding class scores (logits); default: the model's first output.
    pub output: Option<String>,
    /// The class; default: the top prediction.
    pub class: Option<usize>,
    /// Masked inputs per forward pass for Score-CAM.
    pub batch: usize,
}

impl CamOptions {
    /// `method` over `layer`, top class, first output.
    pub fn new(method: CamMethod, layer: &str) -> Self {
        CamOptions {
            method,
            layer: layer.to_string(),
            output: None,
            class: None,
            batch: 16,
        }
    }
}

/// One CAM.
#[derive(Debug, Clone)]
pub struct Cam {
    /// The class explained.
    pub class: usize,
    /// Its score (logit).
    pub score: f32,
    /// The map at the layer's resolution, after ReLU, before scaling: `(h, w)`.
    pub raw: Tensor,
    /// Scaled to `[0, 1]` and resized to the input: `(H, W)`.
    pub heatmap: Tensor,
}

fn minmax_scale(t: &Tensor) -> Result<Tensor> {
    let t = t.broadcast_sub(&t.min_all()?)?;
    Ok(t.broadcast_div(&(t.max_all()? + 1e-7)?)?)
}

/// Top eigenvector of a symmetric PSD matrix by power iteration (f64).
fn top_eigenvector(m: &[f64], n: usize) -> (Vec<f64>, f64) {
    let mut v: Vec<f64> = (0..n).map(|i| 1.0 + (i as f64) * 1e-3).collect();
    let mut lambda = 0.0;
    for _ in 0..500 {
        let w: Vec<f64> = (0..n)
            .map(|i| (0..n).map(|j| m[i * n + j] * v[j]).sum())
            .collect();
        let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return (v, 0.0);
        }
        let next: Vec<f64> = w.iter().map(|x| x / norm).collect();
        let delta: f64 = next.iter().zip(&v).map(|(a, b)| (a - b).abs()).sum();
        v = next;
        lambda = norm;
        if delta < 1e-12 {
            break;
        }
    }
    (v, lambda)
}

/// Eigen-CAM's projection of `(C, h, w)` activations on their first principal
/// component (`pytorch_grad_cam.utils.svd_on_activations.get_2d_projection`), with
/// the sign fixed so that the largest magnitude is positive.
pub fn eigen_projection(a: &Tensor) -> Result<Tensor> {
    let (c, h, w) = a.dims3()?;
    let hw = h * w;
    let x: Vec<Vec<f32>> = a.reshape((c, hw))?.to_dtype(DType::F32)?.to_vec2()?;
    // Rows of X are positions, columns channels, centred per channel.
    let mut xm = vec![0f64; hw * c];
    for (ch, row) in x.iter().enumerate() {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / hw as f64;
        for (p, &v) in row.iter().enumerate() {
            xm[p * c + ch] = if v.is_nan() { 0.0 } else { v as f64 } - mean;
        }
    }
    // X v1 = s1 u1, and u1 is the top eigenvector of the small Gram matrix X Xᵀ.
    let mut gram = vec![0f64; hw * hw];
    for i in 0..hw {
        for j in i..hw {
            let s: f64 = (0..c).map(|k| xm[i * c + k] * xm[j * c + k]).sum();
            gram[i * hw + j] = s;
            gram[j * hw + i] = s;
        }
    }
    let (u, lambda) = top_eigenvector(&gram, hw);
    let s = lambda.sqrt();
    let mut proj: Vec<f32> = u.iter().map(|&v| (v * s) as f32).collect();
    let (lo, hi) = proj
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    if lo.abs() > hi.abs() {
        proj.iter_mut().for_each(|v| *v = -*v);
    }
    Ok(Tensor::from_vec(proj, (h, w), &Device::Cpu)?)
}

/// Computes a CAM for each sample of `input` (`(N, C, H, W)`).
pub fn cam(model: &Model, input: &Tensor, opts: &CamOptions) -> Result<Vec<Cam>> {
    let (n, _, ih, iw) = input.dims4()?;
    let g = model.graph();
    let output = match &opts.output {
        Some(o) => o.clone(),
        None => g.node(g.outputs()[0]).name.clone(),
    };
    let layer_shape = g.node(g.find(&opts.layer)?).shape.clone();
    if layer_shape.rank() != 3 {
        return Err(Error::shape(
            &opts.layer,
            format!(
                "a CAM needs a (N, C, H, W) layer; '{}' is {layer_shape}",
                opts.layer
            ),
        ));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let x = input.narrow(0, i, 1)?;
        let chosen = Cell::new((0usize, 0f32));
        let needs_grad = matches!(
            opts.method,
            CamMethod::GradCam | CamMethod::GradCamPlusPlus | CamMethod::LayerCam
        );
        let (a, grad) = if needs_grad {
            let gr = model.gradients(
                &[x.clone()],
                &[output.as_str()],
                &[opts.layer.as_str()],
                Mode::Eval,
                |acts| {
                    let logits = acts.get(&output)?;
                    let class = match opts.class {
                        Some(c) => c,
                        None => logits
                            .detach()
                            .argmax(D::Minus1)?
                            .flatten_all()?
                            .to_vec1::<u32>()?[0] as usize,
                    };
                    let k = logits.dim(D::Minus1)?;
                    if class >= k {
                        return Err(Error::invalid(
                            "cam",
                            format!("class {class} does not exist ('{output}' has {k} classes)"),
                        ));
                    }
                    let s = logits.narrow(1, class, 1)?.sum_all()?;
                    chosen.set((class, s.to_scalar::<f32>()?));
                    Ok(s)
                },
            )?;
            (
                gr.values.get(&opts.layer)?.get(0)?,
                Some(gr.grads.get(&opts.layer)?.get(0)?),
            )
        } else {
            let acts = model.extract(&x, &[opts.layer.as_str(), output.as_str()])?;
            let logits = acts.get(&output)?;
            let class = match opts.class {
                Some(c) => c,
                None => logits.argmax(D::Minus1)?.flatten_all()?.to_vec1::<u32>()?[0] as usize,
            };
            let k = logits.dim(D::Minus1)?;
            if class >= k {
                return Err(Error::invalid(
                    "cam",
                    format!("class {class} does not exist ('{output}' has {k} classes)"),
                ));
            }
            chosen.set((class, logits.get(0)?.get(class)?.to_scalar::<f32>()?));
            (acts.get(&opts.layer)?.get(0)?, None)
        };
        let (class, score) = chosen.get();
        let weighted = |w: &Tensor| -> Result<Tensor> {
            Ok(a.broadcast_mul(&w.reshape(((), 1, 1))?)?.sum(0)?)
        };
        let raw = match opts.method {
            CamMethod::GradCam => weighted(&grad.as_ref().expect("gradients").mean((1, 2))?)?,
            CamMethod::GradCamPlusPlus => {
                let gr = grad.as_ref().expect("gradients");
                let g2 = gr.sqr()?;
                let g3 = (&g2 * gr)?;
                let sum_a = a.sum_keepdim((1, 2))?;
                let denom = ((&g2 * 2.0)? + g3.broadcast_mul(&sum_a)?)? + 1e-6;
                let aij = (&g2 / denom?)?;
                let nonzero = gr.ne(0f32)?.to_dtype(DType::F32)?;
                let w = (gr.relu()? * (aij * nonzero)?)?.sum((1, 2))?;
                weighted(&w)?
            }
            CamMethod::LayerCam => (grad.as_ref().expect("gradients").relu()? * &a)?.sum(0)?,
            CamMethod::EigenCam => eigen_projection(&a)?,
            CamMethod::ScoreCam => {
                let c = a.dim(0)?;
                let up = a
                    .unsqueeze(0)?
                    .upsample_bilinear2d(ih, iw, true)?
                    .squeeze(0)?;
                let mins = up.flatten_from(1)?.min_keepdim(1)?.unsqueeze(2)?;
                let maxs = up.flatten_from(1)?.max_keepdim(1)?.unsqueeze(2)?;
                let masks = (up
                    .broadcast_sub(&mins)?
                    .broadcast_div(&((maxs - &mins)? + 1e-8)?))?;
                let mut scores = Vec::with_capacity(c);
                let mut start = 0;
                while start < c {
                    let len = opts.batch.max(1).min(c - start);
                    let m = masks.narrow(0, start, len)?.unsqueeze(1)?;
                    let batch = x.broadcast_mul(&m)?;
                    let o = model.run(&[batch], &[output.as_str()], RunOptions::default())?;
                    scores.extend(
                        o.get(&output)?
                            .narrow(1, class, 1)?
                            .flatten_all()?
                            .to_vec1::<f32>()?,
                    );
                    start += len;
                }
                let s = Tensor::from_vec(scores, c, &Device::Cpu)?;
                weighted(&candle_nn_softmax(&s)?)?
            }
        };
        let raw = raw.relu()?;
        let scaled = minmax_scale(&raw)?;
        let resized = scaled
            .unsqueeze(0)?
            .unsqueeze(0)?
            .upsample_bilinear2d(ih, iw, false)?
            .squeeze(0)?
            .squeeze(0)?;
        // pytorch-grad-cam scales once more after resizing (bilinear samples may miss the extremes).
        let heatmap = minmax_scale(&resized)?;
        out.push(Cam {
            class,
            score,
            raw,
            heatmap,
        });
    }
    Ok(out)
}

fn candle_nn_softmax(s: &Tensor) -> Result<Tensor> {
    let e = s.broadcast_sub(&s.max_keepdim(0)?)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(0)?)?)
}

/// An image tensor `(3, H, W)` (or `(1, 3, H, W)`) in `[0, 1]` as an RGB image.
pub fn to_rgb_image(x: &Tensor) -> Result<RgbImage> {
    let x = if x.rank() == 4 { x.get(0)? } else { x.clone() };
    let (c, h, w) = x.dims3()?;
    if c != 3 && c != 1 {
        return Err(Error::invalid(
            "to_rgb_image",
            format!("expects 1 or 3 channels, got {c}"),
        ));
    }
    let v: Vec<Vec<f32>> = x.to_dtype(DType::F32)?.reshape((c, h * w))?.to_vec2()?;
    let q = |f: f32| (f.clamp(0.0, 1.0) * 255.0).round() as u8;
    Ok(RgbImage::from_fn(w as u32, h as u32, |px, py| {
        let i = py as usize * w + px as usize;
        if c == 3 {
            Rgb([q(v[0][i]), q(v[1][i]), q(v[2][i])])
        } else {
            Rgb([q(v[0][i]); 3])
        }
    }))
}

/// Blends a `[0, 1]` heat map (`(H, W)`) over `base` with opacity `alpha`.
pub fn overlay(base: &RgbImage, heatmap: &Tensor, cmap: Colormap, alpha: f32) -> Result<RgbImage> {
    let (h, w) = heatmap.dims2()?;
    if (w as u32, h as u32) != base.dimensions() {
        return Err(Error::shape(
            "overlay",
            format!(
                "heat map is {w}x{h} but the image is {}x{}",
                base.width(),
                base.height()
            ),
        ));
    }
    let v: Vec<f32> = heatmap.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let a = alpha.clamp(0.0, 1.0);
    Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let c = cmap.rgb(v[y as usize * w + x as usize]);
        let b = base.get_pixel(x, y).0;
        Rgb(std::array::from_fn(|k| {
            ((1.0 - a) * b[k] as f32 + a * c[k] as f32).round() as u8
        }))
    }))
}
