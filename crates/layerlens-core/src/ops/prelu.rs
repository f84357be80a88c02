//! Parametric ReLU (Keras `PReLU`, PyTorch `nn.PReLU`).

use super::{ForwardCtx, InferCtx, LayerOp};
use crate::error::{Error, NodeContext, Result};
use crate::params::{Init, ParamKind, ParamSpec};
use crate::shape::Shape;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// `max(x, 0) + weight * min(x, 0)`, with a learned `weight` that broadcasts
/// against one sample (per-sample shape with 1 on shared axes: `[C, 1, 1]`
/// is one slope per channel of an NCHW map).
///
/// ```
/// use layerlens_core::ops::PRelu;
/// let p = PRelu { shape: vec![8, 1, 1] };
/// assert_eq!(p.shape.len(), 3);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PRelu {
    /// Per-sample shape of the slopes.
    pub shape: Vec<usize>,
}

impl LayerOp for PRelu {
    fn base_name(&self) -> &'static str {
        "p_re_lu"
    }

    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        ctx.expect_inputs(1)?;
        let s = &ctx.input_shapes[0];
        let fits = self.shape.len() <= s.rank()
            && self
                .shape
                .iter()
                .rev()
                .zip(s.dims().iter().rev())
                .all(|(&p, &d)| p == 1 || p == d);
        if !fits {
            return Err(Error::shape(
                ctx.node,
                format!(
                    "slopes of shape {:?} do not broadcast against input '{}' {s}",
                    self.shape, ctx.input_names[0]
                ),
            ));
        }
        Ok(s.clone())
    }

    fn param_specs(&self) -> Vec<ParamSpec> {
        vec![ParamSpec {
            name: "weight".into(),
            shape: self.shape.clone(),
            kind: ParamKind::Trainable,
            init: Init::Zeros,
        }]
    }

    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        let node = ctx.node;
        let x = &inputs[0];
        let w = ctx.param("weight")?.unsqueeze(0).at_node(node)?;
        let neg = x
            .minimum(0f32)
            .and_then(|n| n.broadcast_mul(&w))
            .at_node(node)?;
        (x.relu().at_node(node)? + neg).at_node(node)
    }
}
