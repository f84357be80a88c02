//! Element-wise arithmetic with NumPy broadcasting, between two nodes or a node
//! and a constant (ONNX `Add`/`Sub`/`Mul`/`Div`/`Max`/`Min`: residual sums, squeeze-excite
//! gates `(N, C, H, W) * (N, C, 1, 1)`, a bias after `MatMul`).

use super::{ForwardCtx, InferCtx, LayerOp};
use crate::error::{Error, NodeContext, Result};
use crate::params::{Init, ParamKind, ParamSpec};
use crate::shape::Shape;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Which arithmetic operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryKind {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b`.
    Div,
    /// `max(a, b)` (Keras `Maximum`, ONNX `Max`).
    Max,
    /// `min(a, b)` (Keras `Minimum`, ONNX `Min`).
    Min,
    /// `a ^ b` element by element (ONNX `Pow` with a tensor exponent), as C's
    /// `powf` computes it: negative bases with integral exponents included.
    /// Not differentiable here: a pass that tracks gradients through it is
    /// refused.
    Pow,
}

/// Where a constant operand sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// `constant ∘ x`.
    Lhs,
    /// `x ∘ constant`.
    Rhs,
}

/// A constant operand, stored as the parameter `<layer>.constant`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConstOperand {
    /// Its full shape (no batch axis; a leading 1 is allowed and dropped).
    pub shape: Vec<usize>,
    /// Its side.
    pub side: Side,
}

/// `a ∘ b` with NumPy broadcasting over the per-sample axes (the batch axis of
/// node operands must agree).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Elementwise {
    /// The operation.
    pub kind: BinaryKind,
    /// A constant operand, or `None` for two node operands.
    pub constant: Option<ConstOperand>,
}

fn broadcast(node: &str, a: (&str, &[usize]), b: (&str, &[usize])) -> Result<Vec<usize>> {
    let n = a.1.len().max(b.1.len());
    let pad = |d: &[usize]| -> Vec<usize> {
        std::iter::repeat_n(1, n - d.len())
            .chain(d.iter().copied())
            .collect()
    };
    let (x, y) = (pad(a.1), pad(b.1));
    x.iter()
        .zip(&y)
        .map(|(&p, &q)| match (p, q) {
            (p, q) if p == q => Ok(p),
            (1, q) => Ok(q),
            (p, 1) => Ok(p),
            _ => Err(Error::shape(
                node,
                format!(
                    "cannot broadcast '{}' {:?} with '{}' {:?} (per sample)",
                    a.0, a.1, b.0, b.1
                ),
            )),
        })
        .collect()
}

impl Elementwise {
    /// Per-sample dims of the constant as it broadcasts (a leading batch-like 1 dropped).
    fn const_dims(&self, sample_rank: usize) -> Option<Vec<usize>> {
        self.constant.as_ref().map(|c| {
            let mut d = c.shape.clone();
            while d.len() > sample_rank && d.first() == Some(&1) {
                d.remove(0);
            }
            d
        })
    }
}

impl LayerOp for Elementwise {
    fn base_name(&self) -> &'static str {
        match self.kind {
            BinaryKind::Add => "add",
            BinaryKind::Sub => "subtract",
            BinaryKind::Mul => "multiply",
            BinaryKind::Div => "divide",
            BinaryKind::Max => "maximum",
            BinaryKind::Min => "minimum",
            BinaryKind::Pow => "power",
        }
    }

    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        match &self.constant {
            None => {
                ctx.expect_inputs(2)?;
                let (a, b) = (&ctx.input_shapes[0], &ctx.input_shapes[1]);
                let out = broadcast(
                    ctx.node,
                    (&ctx.input_names[0], a.dims()),
                    (&ctx.input_names[1], b.dims()),
                )?;
                if out.len() != a.rank().max(b.rank()) {
                    return Err(Error::shape(ctx.node, "broadcast result lost an axis"));
                }
                Ok(Shape::new(out))
            }
            Some(c) => {
                ctx.expect_inputs(1)?;
                let a = &ctx.input_shapes[0];
                let cd = self.const_dims(a.rank()).expect("constant");
                if cd.len() > a.rank() {
                    return Err(Error::shape(
                        ctx.node,
                        format!(
                            "constant {:?} has more axes than input '{}' {a}",
                            c.shape, ctx.input_names[0]
                        ),
                    ));
                }
                Ok(Shape::new(broadcast(
                    ctx.node,
                    (&ctx.input_names[0], a.dims()),
                    ("constant", &cd),
                )?))
            }
        }
    }

    fn param_specs(&self) -> Vec<ParamSpec> {
        match &self.constant {
            Some(c) => vec![ParamSpec {
                name: "constant".into(),
                shape: c.shape.clone(),
                kind: ParamKind::Constant,
                init: Init::Zeros,
            }],
            None => Vec::new(),
        }
    }

    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        let (a, b) = match &self.constant {
            None => (inputs[0].clone(), inputs[1].clone()),
            Some(c) => {
                let k = ctx.param("constant")?;
                let k = k.reshape(self.const_dims(inputs[0].rank() - 1).expect("constant"))?;
                match c.side {
                    Side::Lhs => (k, inputs[0].clone()),
                    Side::Rhs => (inputs[0].clone(), k),
                }
            }
        };
        match self.kind {
            BinaryKind::Add => a.broadcast_add(&b),
            BinaryKind::Sub => a.broadcast_sub(&b),
            BinaryKind::Mul => a.broadcast_mul(&b),
            BinaryKind::Div => a.broadcast_div(&b),
            BinaryKind::Max => a.broadcast_maximum(&b),
            BinaryKind::Min => a.broadcast_minimum(&b),
            BinaryKind::Pow => return elementwise_pow(&a, &b, ctx.node),
        }
        .at_node(ctx.node)
    }
}

/// `a ^ b` with broadcasting, each value by `f32::powf` (candle's `pow` is
/// `exp(b · ln a)`, which is NaN for a negative base and rounds differently).
fn elementwise_pow(a: &Tensor, b: &Tensor, node: &str) -> Result<Tensor> {
    if a.track_op() || b.track_op() {
        return Err(Error::invalid(
            node,
            "gradients through Pow with a tensor exponent are not supported",
        ));
    }
    let shape = a
        .shape()
        .broadcast_shape_binary_op(b.shape(), "pow")
        .at_node(node)?;
    let flat = |t: &Tensor| -> Result<Vec<f32>> {
        t.broadcast_as(shape.clone())
            .and_then(|t| t.to_dtype(candle_core::DType::F32))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .at_node(node)
    };
    let (x, y) = (flat(a)?, flat(b)?);
    let v: Vec<f32> = x.iter().zip(&y).map(|(&p, &q)| p.powf(q)).collect();
    Tensor::from_vec(v, shape, a.device())
        .and_then(|t| t.to_dtype(a.dtype()))
        .at_node(node)
}

#[cfg(test)]
mod pow_tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Negative bases with integral exponents are real numbers (candle's
    /// `exp(b · ln a)` would give NaN), and a tracked pass is refused rather
    /// than giving a gradient that silently stops here.
    #[test]
    fn pow_by_a_tensor_is_exact_and_refuses_gradients() {
        let a = Tensor::new(&[[-2f32, 3.0], [0.5, -1.0]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[3f32, 2.0], &Device::Cpu).unwrap();
        let y: Vec<Vec<f32>> = elementwise_pow(&a, &b, "pow").unwrap().to_vec2().unwrap();
        assert_eq!(y, [[-8.0, 9.0], [0.125, 1.0]]);
        let tracked = Var::from_tensor(&a).unwrap();
        let e = elementwise_pow(tracked.as_tensor(), &b, "pow").unwrap_err();
        assert!(e.to_string().contains("gradients through Pow"), "{e}");
    }
}
