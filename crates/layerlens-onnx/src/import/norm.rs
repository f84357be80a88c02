//! Normalisations: `BatchNormalization`, `LayerNormalization` (with its
//! Mean and InvStdDev outputs), `LRN`.

use super::{sanitize, Importer, Value};
use crate::proto::NodeProto;
use crate::tensor::{Const, Data};
use candle_core::Tensor;
use layerlens_core::builder::NodeRef;
use layerlens_core::lambda::Reduce;
use layerlens_core::ops::{
    Activation, BatchNorm, BinaryKind, Elementwise, LayerNorm, Padding, Pool2d, PoolKind, Reshape,
};
use layerlens_core::Result;

impl Importer<'_> {
    /// `BatchNormalization`.
    pub(super) fn batch_norm(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        // Opset 14+: training_mode=1 normalises with the batch's own
        // statistics; computing it with the running ones would be wrong.
        if Self::int(n, "training_mode").unwrap_or(0) != 0 {
            return Err(self.err(n, "training_mode=1 (batch statistics) is not supported; export the model in eval mode".into()));
        }
        if n.output.iter().skip(1).any(|o| !o.is_empty()) {
            return Err(self.err(
                n,
                "the running-statistics outputs (training mode) are not supported".into(),
            ));
        }
        let eps = Self::float(n, "epsilon").unwrap_or(1e-5) as f64;
        let momentum = 1.0 - Self::float(n, "momentum").unwrap_or(0.9) as f64;
        let r = self.g.add_as(
            name,
            BatchNorm::new().eps(eps).momentum(momentum.clamp(0.0, 1.0)),
            &[x],
        )?;
        for (i, p) in ["weight", "bias", "running_mean", "running_var"]
            .iter()
            .enumerate()
        {
            let c = self.constant(n, i + 1)?;
            self.weights
                .push((format!("{name}.{p}"), Self::tensor(&c)?));
        }
        Ok(r)
    }

    /// `LRN` (local response normalisation across channels, AlexNet/GoogLeNet):
    /// `x / (bias + alpha/size · Σ x²)^beta`, the sum over the `size` channels
    /// around each one (⌊(size−1)/2⌋ before, ⌈(size−1)/2⌉ after, zeros past the
    /// ends). Composed from existing nodes: the squares reshaped to one
    /// `(1, C, H·W)` plane, averaged over `size` rows with zero padding counted
    /// (so `Σ/size`), reshaped back, scaled, shifted, raised to `beta`, divided
    /// into `x`; the intermediate nodes are named `NAME_square`, … .
    pub(super) fn lrn(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        let Some((c, h, w)) = self.g.shape(x).chw() else {
            return Err(self.err(
                n,
                format!(
                    "LRN is supported on (N, C, H, W) inputs only, got per-sample {}",
                    self.g.shape(x)
                ),
            ));
        };
        let size = match Self::int(n, "size") {
            Some(s) if s >= 1 => s as usize,
            other => {
                return Err(self.err(
                    n,
                    format!("LRN needs a positive 'size' attribute, has {other:?}"),
                ))
            }
        };
        let alpha = Self::float(n, "alpha").unwrap_or(1e-4);
        let beta = Self::float(n, "beta").unwrap_or(0.75);
        let bias = Self::float(n, "bias").unwrap_or(1.0);
        let scalar = |v: f32| {
            Value::Const(Const {
                dims: vec![],
                data: Data::F32(vec![v]),
            })
        };
        let two = Elementwise {
            kind: BinaryKind::Mul,
            constant: None,
        };
        let sq = self
            .g
            .add_as(&self.fresh_name(&format!("{name}_square")), two, &[x, x])?;
        let plane = self.g.add_as(
            &self.fresh_name(&format!("{name}_plane")),
            Reshape::new([1, c as isize, (h * w) as isize]),
            &[sq],
        )?;
        let window = Pool2d {
            kind: PoolKind::Avg,
            kernel: [size, 1],
            stride: [1, 1],
            padding: Padding::Explicit([(size - 1) / 2, size / 2, 0, 0]),
            count_include_pad: true,
        };
        let avg = self.g.add_as(
            &self.fresh_name(&format!("{name}_window_mean")),
            window,
            &[plane],
        )?;
        let back = self.g.add_as(
            &self.fresh_name(&format!("{name}_window_mean_chw")),
            Reshape::new([c as isize, h as isize, w as isize]),
            &[avg],
        )?;
        let scaled_name = self.fresh_name(&format!("{name}_scaled"));
        let scaled = self.binary_of(
            n,
            &scaled_name,
            BinaryKind::Mul,
            &Value::Node(back),
            &scalar(alpha),
        )?;
        let shifted_name = self.fresh_name(&format!("{name}_shifted"));
        let shifted = self.binary_of(
            n,
            &shifted_name,
            BinaryKind::Add,
            &Value::Node(scaled),
            &scalar(bias),
        )?;
        let denom = self.g.add_as(
            &self.fresh_name(&format!("{name}_denominator")),
            Activation::Pow { exponent: beta },
            &[shifted],
        )?;
        let div = Elementwise {
            kind: BinaryKind::Div,
            constant: None,
        };
        self.g.add_as(name, div, &[x, denom])
    }

    /// `LayerNormalization` (opset 17) over the axes from `axis` to the last,
    /// with its Scale and optional B broadcast to the normalised shape. The
    /// optional Mean and InvStdDev outputs, when used, are computed by nodes of
    /// their own named after them (set here, so `finish` leaves them alone): the mean over the axes, and
    /// `1 / sqrt(mean((x - mean)²) + epsilon)`.
    pub(super) fn layer_norm(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        if let Some(t) = Self::int(n, "stash_type").filter(|&t| t != 1) {
            return Err(self.err(
                n,
                format!("stash_type {t} is not supported (only 1, float32 statistics)"),
            ));
        }
        let dims = self.g.shape(x).dims().to_vec();
        let rank = dims.len() as i64 + 1;
        let axis = Self::int(n, "axis").unwrap_or(-1);
        let a = if axis < 0 { axis + rank } else { axis };
        if !(0..rank).contains(&a) {
            return Err(self.err(n, format!("axis {axis} is out of range for rank {rank}")));
        }
        if a == 0 {
            return Err(self.err(
                n,
                format!("axis {axis} normalises over the batch axis; not supported"),
            ));
        }
        let axes: Vec<usize> = (a as usize..rank as usize).collect();
        let norm_dims = dims[a as usize - 1..].to_vec();
        let expand = |c: &Const, what: &str| -> Result<Tensor> {
            let t = Self::tensor(c)?;
            t.broadcast_as(norm_dims.as_slice())
                .and_then(|t| t.contiguous())
                .map_err(|_| {
                    self.err(
                        n,
                        format!(
                            "{what} of dims {:?} does not broadcast to the normalised shape {norm_dims:?}",
                            c.dims
                        ),
                    )
                })
        };
        let scale = expand(&self.constant(n, 1)?, "Scale")?;
        let bias = match self.opt_constant(n, 2)? {
            Some(b) => Some(expand(&b, "B")?),
            None => None,
        };
        let eps = Self::float(n, "epsilon").unwrap_or(1e-5) as f64;
        let mut ln = LayerNorm::new(axes).eps(eps);
        ln.center = bias.is_some();
        let r = self.g.add_as(name, ln, &[x])?;
        self.weights.push((format!("{name}.weight"), scale));
        if let Some(b) = bias {
            self.weights.push((format!("{name}.bias"), b));
        }
        let mean_out = n.output.get(1).filter(|o| !o.is_empty());
        let inv_out = n.output.get(2).filter(|o| !o.is_empty());
        if mean_out.is_none() && inv_out.is_none() {
            return Ok(r);
        }
        let reduce_axes: Vec<isize> = (a as isize..rank as isize).collect();
        let base = sanitize(mean_out.or(inv_out).expect("one is used"));
        let mean_name = self.fresh_name(
            &mean_out
                .map(|o| sanitize(o))
                .unwrap_or(format!("{base}_mean")),
        );
        let mean = self.g.lambda_as(
            &mean_name,
            Reduce::mean(reduce_axes.clone()).keepdims(true),
            &[x],
            &[],
        )?;
        if let Some(o) = mean_out {
            self.values.insert(o.clone(), Value::Node(mean));
        }
        if let Some(o) = inv_out {
            let two = |k| Elementwise {
                kind: k,
                constant: None,
            };
            let centred = self.g.add_as(
                &self.fresh_name(&format!("{base}_centred")),
                two(BinaryKind::Sub),
                &[x, mean],
            )?;
            let squared = self.g.add_as(
                &self.fresh_name(&format!("{base}_squared")),
                two(BinaryKind::Mul),
                &[centred, centred],
            )?;
            let var = self.g.lambda_as(
                &self.fresh_name(&format!("{base}_variance")),
                Reduce::mean(reduce_axes).keepdims(true),
                &[squared],
                &[],
            )?;
            let eps_name = self.fresh_name(&format!("{base}_plus_epsilon"));
            let eps_const = Const {
                dims: vec![],
                data: Data::F32(vec![eps as f32]),
            };
            let plus = self.binary_of(
                n,
                &eps_name,
                BinaryKind::Add,
                &Value::Node(var),
                &Value::Const(eps_const),
            )?;
            let std = self.g.add_as(
                &self.fresh_name(&format!("{base}_std")),
                Activation::Sqrt,
                &[plus],
            )?;
            let inv = self.g.add_as(
                &self.fresh_name(&sanitize(o)),
                Activation::Reciprocal,
                &[std],
            )?;
            self.values.insert(o.clone(), Value::Node(inv));
        }
        Ok(r)
    }
}
