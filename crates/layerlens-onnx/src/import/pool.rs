//! Pooling and reductions: `MaxPool`, `AveragePool`, the global poolings,
//! `ReduceMean`, `ReduceSum`, `ReduceMax`, `ReduceL2`.

use super::Importer;
use crate::proto::NodeProto;
use layerlens_core::builder::NodeRef;
use layerlens_core::lambda::Reduce;
use layerlens_core::ops::{Activation, GlobalAvgPool, Padding, Pool2d, PoolKind};
use layerlens_core::Result;

impl Importer<'_> {
    /// `MaxPool` / `AveragePool`.
    pub(super) fn pool(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        let op = n.op_type.as_str();
        let k = self.pair(n, Self::ints(n, "kernel_shape"), 1, "kernel_shape")?;
        let s = self.pair(n, Self::ints(n, "strides"), 1, "strides")?;
        if self.pair(n, Self::ints(n, "dilations"), 1, "dilations")? != [1, 1] {
            return Err(self.err(n, "dilated pooling is not supported".into()));
        }
        let hw = self.spatial(x);
        let pad = self.padding(n, hw, k, s, [1, 1])?;
        let kind = if op == "MaxPool" {
            PoolKind::Max
        } else {
            PoolKind::Avg
        };
        let include = Self::int(n, "count_include_pad").unwrap_or(0) == 1;
        let mut pad = pad;
        if Self::int(n, "ceil_mode").unwrap_or(0) == 1 {
            // ceil_mode keeps a partial last window as long as it starts inside
            // the input or the leading padding (the ONNX and PyTorch rule). It is
            // exactly extra trailing padding, excluded from maxima and from
            // averages that do not count padding.
            let p = pad.resolve(hw, k, s, [1, 1]);
            let extra = |i: usize, lead: usize, trail: usize, kk: usize, ss: usize| {
                let span = i + lead + trail;
                if span < kk || (span - kk).is_multiple_of(ss) {
                    return 0; // A window larger than the input is refused by Pool2d.
                }
                let out = (span - kk) / ss + 2;
                if (out - 1) * ss >= i + lead {
                    0
                } else {
                    (out - 1) * ss + kk - span
                }
            };
            let (eh, ew) = (
                extra(hw.0, p[0], p[1], k[0], s[0]),
                extra(hw.1, p[2], p[3], k[1], s[1]),
            );
            if eh + ew > 0 {
                if matches!(kind, PoolKind::Avg) && include {
                    return Err(self.err(n, "ceil_mode=1 with count_include_pad=1 and a partial last window is not supported".into()));
                }
                pad = Padding::Explicit([p[0], p[1] + eh, p[2], p[3] + ew]);
            }
        }
        let p = Pool2d {
            kind,
            kernel: k,
            stride: s,
            padding: pad,
            count_include_pad: include,
        };
        self.g.add_as(name, p, &[x])
    }

    /// `GlobalAveragePool`.
    pub(super) fn global_average_pool(
        &mut self,
        _n: &NodeProto,
        name: &str,
        x: NodeRef,
    ) -> Result<NodeRef> {
        self.g.add_as(name, GlobalAvgPool { keepdims: true }, &[x])
    }

    /// `GlobalMaxPool`.
    pub(super) fn global_max_pool(
        &mut self,
        n: &NodeProto,
        name: &str,
        x: NodeRef,
    ) -> Result<NodeRef> {
        let Some((_, h, w)) = self.g.shape(x).chw() else {
            return Err(self.err(
                n,
                format!(
                    "GlobalMaxPool is supported on (N, C, H, W) inputs only, got per-sample {}",
                    self.g.shape(x)
                ),
            ));
        };
        let p = Pool2d {
            kind: PoolKind::Max,
            kernel: [h, w],
            stride: [1, 1],
            padding: Padding::Valid,
            count_include_pad: false,
        };
        self.g.add_as(name, p, &[x])
    }

    /// `ReduceMean`, `ReduceSum`, `ReduceMax`, and `ReduceL2` (the square root
    /// of `ReduceSum` of squares), over axes from the attribute or, from
    /// opset 18 (13 for ReduceSum), the second input. No axes means every
    /// axis, the batch included, which would mix samples: refused, except in
    /// a file that fixes the batch at 1 (then per sample is the same thing),
    /// or with `noop_with_empty_axes=1` (the identity).
    pub(super) fn reduce(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        let op = n.op_type.as_str();
        let rank = self.g.shape(x).rank() as i64 + 1;
        let given = match self.opt_constant(n, 1)? {
            Some(c) => Some(c.ints()),
            None => Self::ints(n, "axes"),
        }
        .filter(|a| !a.is_empty());
        let axes: Vec<i64> = match given {
            Some(a) => a,
            None if Self::int(n, "noop_with_empty_axes") == Some(1) => {
                let r = self.g.add_as(
                    name,
                    layerlens_core::ops::Reshape::new(
                        self.g
                            .shape(x)
                            .dims()
                            .iter()
                            .map(|&d| d as isize)
                            .collect::<Vec<_>>(),
                    ),
                    &[x],
                )?;
                return Ok(r);
            }
            None if self.static_batch == Some(1) => (1..rank).collect(),
            None => {
                return Err(self.err(
                    n,
                    format!(
                    "{op} over every axis, the batch included, would mix samples; not supported"
                ),
                ))
            }
        };
        let keep = Self::int(n, "keepdims").unwrap_or(1) == 1;
        let axes: Vec<isize> = axes.iter().map(|&a| a as isize).collect();
        match op {
            "ReduceL2" => {
                let sq = self.g.add_as(
                    &self.fresh_name(&format!("{name}_square")),
                    Activation::Pow { exponent: 2.0 },
                    &[x],
                )?;
                let sum = self.g.lambda_as(
                    &self.fresh_name(&format!("{name}_sum")),
                    Reduce::sum(axes).keepdims(keep),
                    &[sq],
                    &[],
                )?;
                self.g.add_as(name, Activation::Sqrt, &[sum])
            }
            _ => {
                let r = match op {
                    "ReduceSum" => Reduce::sum(axes),
                    "ReduceMax" => Reduce::max(axes),
                    _ => Reduce::mean(axes),
                };
                self.g.lambda_as(name, r.keepdims(keep), &[x], &[])
            }
        }
    }
}
