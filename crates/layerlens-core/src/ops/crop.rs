//! Spatial cropping (Keras `Cropping2D`).

use super::{ForwardCtx, InferCtx, LayerOp};
use crate::error::{Error, NodeContext, Result};
use crate::shape::Shape;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Removes `[top, bottom, left, right]` rows and columns from an NCHW map.
///
/// ```
/// use layerlens_core::ops::Crop2d;
/// let c = Crop2d { crops: [1, 1, 2, 0] };
/// assert_eq!(c.crops[2], 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Crop2d {
    /// `[top, bottom, left, right]`.
    pub crops: [usize; 4],
}

impl LayerOp for Crop2d {
    fn base_name(&self) -> &'static str {
        "cropping2d"
    }

    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        let s = ctx.single_of_rank(3, "cropping")?;
        let (c, h, w) = s.chw().expect("rank checked");
        let [t, b, l, r] = self.crops;
        let left = |n: usize, a: usize, z: usize| {
            n.checked_sub(a)
                .and_then(|n| n.checked_sub(z))
                .filter(|&n| n > 0)
        };
        match (left(h, t, b), left(w, l, r)) {
            (Some(oh), Some(ow)) => Ok(Shape::new([c, oh, ow])),
            _ => Err(Error::shape(
                ctx.node,
                format!(
                    "crops {:?} remove all of input '{}' {s}",
                    self.crops, ctx.input_names[0]
                ),
            )),
        }
    }

    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        let x = &inputs[0];
        let (_, _, h, w) = x.dims4().at_node(ctx.node)?;
        let [t, b, l, r] = self.crops;
        x.narrow(2, t, h - t - b)
            .and_then(|y| y.narrow(3, l, w - l - r))
            .and_then(|y| y.contiguous())
            .at_node(ctx.node)
    }
}
