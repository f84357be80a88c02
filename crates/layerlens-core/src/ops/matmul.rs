//! Products and constants between activations: `MatMul` of two activations
//! (attention's `Q·Kᵀ` and `softmax·V`) and a per-sample constant repeated
//! for every sample (ViT's class token, expanded to the batch).

use super::{ForwardCtx, InferCtx, LayerOp};
use crate::error::{Error, NodeContext, Result};
use crate::params::{Init, ParamKind, ParamSpec};
use crate::shape::Shape;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Matrix product of two activations over their last two per-sample axes,
/// the axes before them broadcast NumPy-style (`torch.matmul`, ONNX
/// `MatMul`): per sample `(..., m, k) · (..., k, n) → (..., m, n)`.
///
/// ```
/// use layerlens_core::builder::Functional;
/// use layerlens_core::ops::MatMul;
/// let mut g = Functional::new("attention");
/// let q = g.input("q", [12, 197, 64])?;
/// let k = g.input("k", [12, 64, 197])?;
/// let scores = g.add(MatMul, &[q, k])?;
/// assert_eq!(g.shape(scores).dims(), &[12, 197, 197]);
/// # Ok::<(), layerlens_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MatMul;

impl LayerOp for MatMul {
    fn base_name(&self) -> &'static str {
        "matmul"
    }

    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        ctx.expect_inputs(2)?;
        let (a, b) = (ctx.input_shapes[0].dims(), ctx.input_shapes[1].dims());
        let (na, nb) = (ctx.input_names[0].as_str(), ctx.input_names[1].as_str());
        if a.len() < 2 || b.len() < 2 {
            return Err(Error::shape(
                ctx.node,
                format!("a product of activations needs two matrices per sample; '{na}' is {a:?} and '{nb}' is {b:?}"),
            ));
        }
        let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
        let (k2, n) = (b[b.len() - 2], b[b.len() - 1]);
        if k != k2 {
            return Err(Error::shape(
                ctx.node,
                format!(
                    "cannot multiply '{na}' {a:?} by '{nb}' {b:?}: inner sizes {k} and {k2} differ"
                ),
            ));
        }
        let (la, lb) = (&a[..a.len() - 2], &b[..b.len() - 2]);
        let rank = la.len().max(lb.len());
        let pad = |d: &[usize]| -> Vec<usize> {
            std::iter::repeat_n(1, rank - d.len())
                .chain(d.iter().copied())
                .collect()
        };
        let (pa, pb) = (pad(la), pad(lb));
        let mut out = Vec::with_capacity(rank + 2);
        for (&p, &q) in pa.iter().zip(&pb) {
            out.push(match (p, q) {
                (p, q) if p == q => p,
                (1, q) => q,
                (p, 1) => p,
                _ => {
                    return Err(Error::shape(
                        ctx.node,
                        format!(
                            "cannot broadcast the leading axes of '{na}' {a:?} and '{nb}' {b:?}"
                        ),
                    ))
                }
            });
        }
        out.extend([m, n]);
        Ok(Shape::new(out))
    }

    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        let node = ctx.node;
        let (a, b) = (&inputs[0], &inputs[1]);
        let (ra, rb) = (a.rank(), b.rank());
        // The leading axes (batch included) broadcast; candle multiplies at most
        // two of them, so they are flattened into one.
        let rank = ra.max(rb);
        let pad = |t: &Tensor| -> Vec<usize> {
            std::iter::repeat_n(1, rank - t.rank())
                .chain(t.dims().iter().copied())
                .collect()
        };
        let (da, db) = (pad(a), pad(b));
        let lead: Vec<usize> = da[..rank - 2]
            .iter()
            .zip(&db[..rank - 2])
            .map(|(&p, &q)| p.max(q))
            .collect();
        let count: usize = lead.iter().product();
        let (m, k, n) = (da[rank - 2], da[rank - 1], db[rank - 1]);
        let flat = |t: &Tensor, d: &[usize], rows: usize, cols: usize| -> Result<Tensor> {
            let mut full = lead.clone();
            full.extend([rows, cols]);
            t.reshape(d)
                .and_then(|t| t.broadcast_as(full))
                .and_then(|t| t.contiguous())
                .and_then(|t| t.reshape((count, rows, cols)))
                .at_node(node)
        };
        let y = flat(a, &da, m, k)?
            .matmul(&flat(b, &db, k, n)?)
            .at_node(node)?;
        let mut out = lead;
        out.extend([m, n]);
        y.reshape(out).at_node(node)
    }

    fn macs(&self, inputs: &[Shape], output: &Shape) -> u64 {
        let k = inputs[0].dims().last().copied().unwrap_or(0);
        (output.elem_count() * k) as u64
    }
}

/// The same tensor for every sample: the trainable parameter `value`
/// (per-sample shape `shape`) repeated along the batch of its one input, which
/// gives only the batch size (ONNX `Expand` of a constant to the batch, as
/// ViT's class token before it is concatenated with the patches).
///
/// ```
/// use layerlens_core::builder::Functional;
/// use layerlens_core::ops::BatchConstant;
/// let mut g = Functional::new("vit");
/// let x = g.input("x", [196, 768])?;
/// let cls = g.add(BatchConstant { shape: vec![1, 768] }, &[x])?;
/// assert_eq!(g.shape(cls).dims(), &[1, 768]);
/// # Ok::<(), layerlens_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchConstant {
    /// Per-sample shape of the value.
    pub shape: Vec<usize>,
}

impl LayerOp for BatchConstant {
    fn base_name(&self) -> &'static str {
        "batch_constant"
    }

    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        ctx.expect_inputs(1)?;
        Ok(Shape::new(self.shape.clone()))
    }

    fn param_specs(&self) -> Vec<ParamSpec> {
        vec![ParamSpec {
            name: "value".into(),
            shape: self.shape.clone(),
            kind: ParamKind::Trainable,
            init: Init::Zeros,
        }]
    }

    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        let batch = inputs[0].dims().first().copied().unwrap_or(1);
        let mut dims = vec![batch];
        dims.extend(&self.shape);
        ctx.param("value")?
            .unsqueeze(0)
            .and_then(|v| v.broadcast_as(dims))
            .and_then(|v| v.contiguous())
            .at_node(ctx.node)
    }
}
