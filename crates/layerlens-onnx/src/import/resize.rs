//! `Resize` (opsets 10–25) and `Upsample` (7–9): every mode, coordinate
//! transformation and rounding of the ONNX reference, on the spatial axes of
//! an NCHW activation. The common PyTorch cases become the fast
//! [`Upsample`] op; everything else the exact, general [`Resize`] op.

use super::{attr, Importer};
use crate::proto::NodeProto;
use layerlens_core::builder::NodeRef;
use layerlens_core::ops::{
    CoordinateMode, NearestRounding, Resize, ResizeKernel, Upsample, UpsampleMode,
};
use layerlens_core::Result;

impl Importer<'_> {
    /// Translates a `Resize` or `Upsample` node whose first input is `x`.
    pub(super) fn resize(
        &mut self,
        n: &NodeProto,
        name: &str,
        op: &str,
        x: NodeRef,
    ) -> Result<NodeRef> {
        let shape = self.g.shape(x).clone();
        let Some((c, h, w)) = shape.chw() else {
            return Err(self.err(
                n,
                format!("resizes a {shape} tensor; only NCHW is supported"),
            ));
        };
        // Before opset 11 Resize had no roi input and the Upsample semantics.
        let legacy = op == "Upsample" || self.opset < 11;
        let scales_input = if legacy { 1 } else { 2 };
        let mut scales = match self.opt_constant(n, scales_input)? {
            Some(c) if c.len() > 0 => Some(c.floats()),
            _ => attr(n, "scales").map(|a| a.floats.clone()),
        };
        let mut sizes = if legacy {
            None
        } else {
            self.opt_constant(n, 3)?
                .map(|c| c.ints())
                .filter(|s| !s.is_empty())
        };
        let mut roi = if legacy {
            None
        } else {
            self.opt_constant(n, 1)?
                .map(|c| c.floats())
                .filter(|r| !r.is_empty())
        };
        let text = |k: &str, d: &str| {
            attr(n, k)
                .map(|a| String::from_utf8_lossy(&a.s).to_string())
                .unwrap_or_else(|| d.to_string())
        };

        // `axes` (opset 18) names the axes the scales, sizes and roi are given for.
        if let Some(axes) = Self::ints(n, "axes") {
            let mut full = Vec::with_capacity(axes.len());
            for &a in &axes {
                let a = if a < 0 { a + 4 } else { a };
                if !(0..4).contains(&a) || full.contains(&(a as usize)) {
                    return Err(
                        self.err(n, format!("axes {axes:?} are invalid for a rank-4 input"))
                    );
                }
                full.push(a as usize);
            }
            let dims = [1i64, c as i64, h as i64, w as i64];
            if let Some(s) = scales.take() {
                if s.len() != full.len() {
                    return Err(self.err(n, format!("scales {s:?} do not match axes {axes:?}")));
                }
                let mut f = vec![1.0; 4];
                full.iter().zip(&s).for_each(|(&a, &v)| f[a] = v);
                scales = Some(f);
            }
            if let Some(s) = sizes.take() {
                if s.len() != full.len() {
                    return Err(self.err(n, format!("sizes {s:?} do not match axes {axes:?}")));
                }
                let mut f = dims.to_vec();
                full.iter().zip(&s).for_each(|(&a, &v)| f[a] = v);
                sizes = Some(f);
            }
            if let Some(r) = roi.take() {
                if r.len() != 2 * full.len() {
                    return Err(self.err(n, format!("roi {r:?} does not match axes {axes:?}")));
                }
                let mut f = vec![0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
                for (i, &a) in full.iter().enumerate() {
                    f[a] = r[i];
                    f[4 + a] = r[full.len() + i];
                }
                roi = Some(f);
            }
        }

        // Output sizes and the scales used to map coordinates, per spatial axis.
        let policy = text("keep_aspect_ratio_policy", "stretch");
        let (size, scale) = match (&sizes, &scales) {
            (Some(s), _) => {
                if s.len() != 4 {
                    return Err(
                        self.err(n, format!("sizes {s:?}: 4 values (N, C, H, W) are needed"))
                    );
                }
                if s[1] != c as i64 {
                    return Err(self.err(n, format!("sizes {s:?} resize the channel axis ({c} channels); only H and W can be resized")));
                }
                if s[2] < 1 || s[3] < 1 || s[2] > 1 << 24 || s[3] > 1 << 24 {
                    return Err(self.err(
                        n,
                        format!("sizes {s:?}: the spatial sizes must be positive"),
                    ));
                }
                let f = [s[2] as f64 / h as f64, s[3] as f64 / w as f64];
                match policy.as_str() {
                    "stretch" => ([s[2] as usize, s[3] as usize], f),
                    "not_larger" | "not_smaller" => {
                        // The reference takes the min/max over every listed axis; N and C
                        // keep their size, so their scale of 1 takes part unless `axes` omits them.
                        let listed: Vec<usize> = match Self::ints(n, "axes") {
                            Some(a) => a
                                .iter()
                                .map(|&a| if a < 0 { a + 4 } else { a } as usize)
                                .collect(),
                            None => vec![0, 1, 2, 3],
                        };
                        if listed.iter().any(|&a| a < 2) && listed.contains(&0) {
                            return Err(self.err(n, format!("keep_aspect_ratio_policy '{policy}' over the batch axis is not supported")));
                        }
                        let mut all = vec![];
                        for a in listed {
                            all.push(if a >= 2 { f[a - 2] } else { 1.0 });
                        }
                        let pick = if policy == "not_larger" {
                            all.iter().cloned().fold(f64::INFINITY, f64::min)
                        } else {
                            all.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
                        };
                        if pick != 1.0 && all.len() > 2 && Self::ints(n, "axes").is_none() {
                            return Err(self.err(n, format!("keep_aspect_ratio_policy '{policy}' would resize the channel axis")));
                        }
                        let round = |d: usize| (pick * d as f64 + 0.5) as usize;
                        ([round(h), round(w)], [pick, pick])
                    }
                    other => {
                        return Err(self.err(
                            n,
                            format!("keep_aspect_ratio_policy '{other}' is not supported"),
                        ))
                    }
                }
            }
            (None, Some(s)) => {
                if s.len() != 4 {
                    return Err(
                        self.err(n, format!("scales {s:?}: 4 values (N, C, H, W) are needed"))
                    );
                }
                if s[0] != 1.0 || s[1] != 1.0 {
                    return Err(self.err(n, format!("scales {s:?} resize the batch or channel axis; only H and W can be resized")));
                }
                let scaled = |d: usize, f: f32| {
                    let v = (d as f64 * f as f64).floor();
                    (v.is_finite() && v >= 1.0 && v <= (1 << 24) as f64).then_some(v as usize)
                };
                match (scaled(h, s[2]), scaled(w, s[3])) {
                    (Some(a), Some(b)) => ([a, b], [s[2] as f64, s[3] as f64]),
                    _ => {
                        return Err(self.err(
                            n,
                            format!("scales {s:?} on {h}x{w}: the output must be at least 1x1"),
                        ))
                    }
                }
            }
            (None, None) => {
                return Err(self.err(n, "neither scales nor sizes is given as a constant".into()))
            }
        };

        let mode = text("mode", "nearest");
        let coord = text(
            "coordinate_transformation_mode",
            if legacy { "asymmetric" } else { "half_pixel" },
        );
        let antialias = Self::int(n, "antialias").unwrap_or(0) != 0;
        let exclude_outside = Self::int(n, "exclude_outside").unwrap_or(0) != 0;
        let rounding = if legacy {
            // ONNX Runtime's rule before opset 11: floor when enlarging, ceil when shrinking.
            let down = [size[0] < h, size[1] < w];
            let up = [size[0] > h, size[1] > w];
            if (down[0] || down[1]) && (up[0] || up[1]) {
                return Err(self.err(n, format!("nearest resizing that enlarges one axis and shrinks the other ({h}x{w} to {}x{}) before opset 11 is not supported", size[0], size[1])));
            }
            if down[0] || down[1] {
                NearestRounding::Ceil
            } else {
                NearestRounding::Floor
            }
        } else {
            match text("nearest_mode", "round_prefer_floor").as_str() {
                "round_prefer_floor" => NearestRounding::RoundPreferFloor,
                "round_prefer_ceil" => NearestRounding::RoundPreferCeil,
                "floor" => NearestRounding::Floor,
                "ceil" => NearestRounding::Ceil,
                other => {
                    return Err(self.err(n, format!("nearest_mode '{other}' is not supported")))
                }
            }
        };
        let kernel = match mode.as_str() {
            "nearest" if antialias => {
                return Err(self.err(n, "antialias=1 with mode 'nearest' is not defined".into()))
            }
            "nearest" => ResizeKernel::Nearest(rounding),
            "linear" | "bilinear" => ResizeKernel::Linear,
            "cubic" => ResizeKernel::Cubic {
                a: attr(n, "cubic_coeff_a").map(|a| a.f).unwrap_or(-0.75),
            },
            other => return Err(self.err(n, format!("resize mode '{other}' is not supported"))),
        };
        let coordinates = match coord.as_str() {
            "half_pixel" => CoordinateMode::HalfPixel,
            "half_pixel_symmetric" => CoordinateMode::HalfPixelSymmetric,
            "pytorch_half_pixel" => CoordinateMode::PytorchHalfPixel,
            "align_corners" => CoordinateMode::AlignCorners,
            "asymmetric" => CoordinateMode::Asymmetric,
            "tf_crop_and_resize" => {
                let r = roi.clone().ok_or_else(|| {
                    self.err(
                        n,
                        "coordinate_transformation_mode 'tf_crop_and_resize' needs a constant roi"
                            .into(),
                    )
                })?;
                if r.len() != 8 {
                    return Err(self.err(
                        n,
                        format!("roi {r:?}: 8 values (starts and ends of N, C, H, W) are needed"),
                    ));
                }
                if r[0] != 0.0 || r[1] != 0.0 || r[4] != 1.0 || r[5] != 1.0 {
                    return Err(self.err(
                        n,
                        format!("roi {r:?} crops the batch or channel axis; not supported"),
                    ));
                }
                CoordinateMode::TfCropAndResize {
                    start: [r[2], r[3]],
                    end: [r[6], r[7]],
                    extrapolation: attr(n, "extrapolation_value").map(|a| a.f).unwrap_or(0.0),
                }
            }
            other => {
                return Err(self.err(
                    n,
                    format!("coordinate_transformation_mode '{other}' is not supported"),
                ))
            }
        };

        if let Some(mode) = fast_path(size, scale, [h, w], kernel, coordinates) {
            return self.g.add_as(name, Upsample { size, mode }, &[x]);
        }
        self.g.add_as(
            name,
            Resize {
                size,
                scales: scale,
                kernel,
                coordinates,
                antialias,
                exclude_outside,
            },
            &[x],
        )
    }
}

/// The [`Upsample`] mode that computes exactly this resize, if one does: it
/// maps coordinates with the size ratio, so the scale must be that ratio.
fn fast_path(
    size: [usize; 2],
    scale: [f64; 2],
    input: [usize; 2],
    kernel: ResizeKernel,
    coordinates: CoordinateMode,
) -> Option<UpsampleMode> {
    let ratio_is_scale = (0..2).all(|a| size[a] as f64 / input[a] as f64 == scale[a]);
    let enlarging = (0..2).all(|a| size[a] >= input[a]);
    if !ratio_is_scale || !enlarging {
        return None;
    }
    // Antialiasing changes nothing when no axis shrinks.
    let whole = (0..2).all(|a| size[a].is_multiple_of(input[a]));
    let small = (0..2).all(|a| size[a] / input[a] <= 2);
    use CoordinateMode as C;
    use NearestRounding as R;
    match (kernel, coordinates) {
        (ResizeKernel::Nearest(_), _) if size == input => Some(UpsampleMode::Nearest),
        (ResizeKernel::Nearest(R::Floor), C::Asymmetric) => Some(UpsampleMode::Nearest),
        // x_in = x_out / f: rounding half down equals flooring for f <= 2 only
        // (f = 3 maps x_out = 2 to 0.67, rounded to 1 but floored to 0).
        (ResizeKernel::Nearest(R::RoundPreferFloor), C::Asymmetric) if whole && small => {
            Some(UpsampleMode::Nearest)
        }
        (ResizeKernel::Linear, C::HalfPixel) => Some(UpsampleMode::Bilinear),
        // pytorch_half_pixel differs from half_pixel only for an output of size 1.
        (ResizeKernel::Linear, C::PytorchHalfPixel) if size[0] > 1 && size[1] > 1 => {
            Some(UpsampleMode::Bilinear)
        }
        (ResizeKernel::Linear, C::AlignCorners) => Some(UpsampleMode::BilinearAlignCorners),
        _ => None,
    }
}
