//! Convolutions and matrix products with constant weights: `Conv`,
//! `ConvTranspose`, `Gemm`, `MatMul`.

use super::{attr, Importer};
use crate::proto::NodeProto;
use crate::tensor::Const;
use layerlens_core::builder::NodeRef;
use layerlens_core::ops::{Conv2d, ConvTranspose2d, Dense};
use layerlens_core::Result;

impl Importer<'_> {
    /// `Conv`.
    pub(super) fn conv(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        let w = self.constant(n, 1)?;
        if w.dims.len() != 4 {
            return Err(self.err(
                n,
                format!(
                    "only 2-D convolutions are supported (weight dims {:?})",
                    w.dims
                ),
            ));
        }
        let b = self.opt_constant(n, 2)?;
        let k = [w.dims[2], w.dims[3]];
        let s = self.pair(n, Self::ints(n, "strides"), 1, "strides")?;
        let d = self.pair(n, Self::ints(n, "dilations"), 1, "dilations")?;
        let pad = self.padding(n, self.spatial(x), k, s, d)?;
        let groups = Self::int(n, "group").unwrap_or(1).max(1) as usize;
        let conv = Conv2d {
            filters: w.dims[0],
            kernel: k,
            stride: s,
            padding: pad,
            dilation: d,
            groups,
            bias: b.is_some(),
            activation: None,
            in_channels: 0,
        };
        let r = self.g.add_as(name, conv, &[x])?;
        self.push_weight_and_bias(name, &w, b.as_ref())?;
        Ok(r)
    }

    /// `Gemm`.
    pub(super) fn gemm(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        if Self::int(n, "transA").unwrap_or(0) != 0 {
            return Err(self.err(n, "Gemm with transA=1 is not supported".into()));
        }
        let (alpha, beta) = (
            Self::float(n, "alpha").unwrap_or(1.0),
            Self::float(n, "beta").unwrap_or(1.0),
        );
        let b = self.constant(n, 1)?;
        let w = Self::tensor(&b)?;
        let w = if Self::int(n, "transB").unwrap_or(0) == 1 {
            w
        } else {
            w.t()?.contiguous()?
        };
        let w = (w * alpha as f64)?;
        let c = self.opt_constant(n, 2)?;
        let units = w.dim(0)?;
        // Rows that are not one per sample (`(197·N, 768)` in attention) are
        // multiplied along their last per-sample axis.
        let dense = Dense::new(units).bias(c.is_some());
        let dense = if self.g.shape(x).rank() > 1 {
            dense.on_last_axis()
        } else {
            dense
        };
        let r = self.g.add_as(name, dense, &[x])?;
        self.weights.push((format!("{name}.weight"), w));
        if let Some(c) = c {
            // C broadcasts to (batch, units): only a C that is the same for every
            // sample (dims [], [1], [units] or [1, units]) is a bias.
            let per_unit = c.dims.iter().rev().skip(1).all(|&d| d == 1)
                && c.dims.len() <= 2
                && c.dims.last().is_none_or(|&d| d == 1 || d == units);
            if !per_unit {
                return Err(self.err(n, format!("Gemm input C of dims {:?} differs between samples (rows of the batch); only a bias of dims [{units}] or [1, {units}] is supported", c.dims)));
            }
            let bias = Self::tensor(&c)?
                .flatten_all()?
                .broadcast_as(units)?
                .contiguous()?;
            self.weights
                .push((format!("{name}.bias"), (bias * beta as f64)?));
        }
        Ok(r)
    }

    /// `MatMul`.
    pub(super) fn matmul(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        let b = self.constant(n, 1)?;
        if b.dims.len() != 2 {
            return Err(self.err(
                n,
                format!(
                    "MatMul with a constant of dims {:?}: only 2-D weights are supported",
                    b.dims
                ),
            ));
        }
        // On an N-D activation MatMul multiplies along the last axis.
        let r = self
            .g
            .add_as(name, Dense::new(b.dims[1]).bias(false).on_last_axis(), &[x])?;
        self.weights.push((
            format!("{name}.weight"),
            Self::tensor(&b)?.t()?.contiguous()?,
        ));
        Ok(r)
    }

    /// `ConvTranspose`.
    pub(super) fn conv_transpose(
        &mut self,
        n: &NodeProto,
        name: &str,
        x: NodeRef,
    ) -> Result<NodeRef> {
        let w = self.constant(n, 1)?;
        if w.dims.len() != 4 || w.dims[2] != w.dims[3] {
            return Err(self.err(
                n,
                format!(
                    "only square 2-D transposed convolutions are supported (weight dims {:?})",
                    w.dims
                ),
            ));
        }
        if Self::int(n, "group").unwrap_or(1) != 1 || attr(n, "output_shape").is_some() {
            return Err(self.err(n, "groups > 1 and output_shape are not supported".into()));
        }
        let auto = attr(n, "auto_pad")
            .map(|a| String::from_utf8_lossy(&a.s).to_string())
            .unwrap_or_default();
        if !matches!(auto.as_str(), "" | "NOTSET" | "VALID") {
            return Err(self.err(
                n,
                format!("auto_pad '{auto}' is not supported for ConvTranspose"),
            ));
        }
        let uniform = |v: Option<Vec<i64>>, d: i64, what: &str| -> Result<usize> {
            let v = v.unwrap_or_else(|| vec![d; 2]);
            match v.first() {
                Some(&first) if first >= 0 && v.iter().all(|&x| x == first) => Ok(first as usize),
                _ => Err(self.err(
                    n,
                    format!("{what} {v:?}: only equal, non-negative values are supported"),
                )),
            }
        };
        let b = self.opt_constant(n, 2)?;
        let ct = ConvTranspose2d {
            filters: w.dims[1],
            kernel: w.dims[2],
            stride: uniform(Self::ints(n, "strides"), 1, "strides")?,
            padding: uniform(Self::ints(n, "pads"), 0, "pads")?,
            output_padding: uniform(Self::ints(n, "output_padding"), 0, "output_padding")?,
            dilation: uniform(Self::ints(n, "dilations"), 1, "dilations")?,
            bias: b.is_some(),
            in_channels: 0,
        };
        let r = self.g.add_as(name, ct, &[x])?;
        self.push_weight_and_bias(name, &w, b.as_ref())?;
        Ok(r)
    }

    /// Records a node's `weight` and optional `bias` from the file's constants.
    fn push_weight_and_bias(&mut self, name: &str, w: &Const, b: Option<&Const>) -> Result<()> {
        self.weights
            .push((format!("{name}.weight"), Self::tensor(w)?));
        if let Some(b) = b {
            self.weights
                .push((format!("{name}.bias"), Self::tensor(b)?));
        }
        Ok(())
    }
}
