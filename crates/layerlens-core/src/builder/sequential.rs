use super::functional::{Functional, NodeRef};
use crate::error::Result;
use crate::ir::Op;
use crate::lambda::{CustomOp, WeightRef};
use crate::model::Model;
use crate::shape::Shape;
use candle_core::Device;

/// A stack of layers, each fed by the previous one (Keras `Sequential`).
///
/// Unlike Keras 3's `Sequential`, whose `.input` fails before the model has been
/// called, every node here exists and is addressable as soon as it is added.
///
/// ```
/// use layerlens_core::builder::Sequential;
/// use layerlens_core::ops::{Activation, Conv2d, Dense, Flatten, Pool2d};
///
/// let model = Sequential::new("seed_cnn", [1, 28, 28])
///     .add(Conv2d::new(32, 3).activation(Activation::Relu))?
///     .add(Pool2d::max(2))?
///     .add(Conv2d::new(64, 3).activation(Activation::Relu))?
///     .add(Pool2d::max(2))?
///     .add(Flatten)?
///     .add(Dense::new(10).activation(Activation::SOFTMAX))?
///     .build()?;
/// assert_eq!(model.graph().node(model.graph().find("conv2d_1")?).shape.dims(), &[64, 11, 11]);
/// # Ok::<(), layerlens_core::Error>(())
/// ```
pub struct Sequential {
    g: Functional,
    /// The last node, or why the stack could not start (a bad input shape),
    /// reported by the next call.
    last: std::result::Result<NodeRef, String>,
}

impl Sequential {
    /// A stack whose input (named `input`) has the per-sample shape `input`.
    pub fn new(name: &str, input: impl Into<Shape>) -> Self {
        Self::from_functional(Functional::new(name), input)
    }

    /// Like [`new`](Self::new) but building with a configured [`Functional`]
    /// (device, seed).
    pub fn from_functional(mut g: Functional, input: impl Into<Shape>) -> Self {
        let last = g.input("input", input).map_err(|e| e.to_string());
        Sequential { g, last }
    }

    /// Builds on `device`.
    pub fn on_device(mut self, device: &Device) -> Self {
        self.g = std::mem::replace(&mut self.g, Functional::new("")).on_device(device);
        self
    }

    fn last(&self) -> Result<NodeRef> {
        self.last
            .clone()
            .map_err(|m| crate::Error::invalid("input", m))
    }

    /// Appends a layer with an automatic name.
    #[allow(clippy::should_implement_trait)] // Keras' name; not an arithmetic `+`.
    pub fn add(mut self, layer: impl Into<Op>) -> Result<Self> {
        let last = self.last()?;
        self.last = Ok(self.g.add(layer, &[last])?);
        Ok(self)
    }

    /// Appends a layer with an explicit name.
    pub fn add_as(mut self, name: &str, layer: impl Into<Op>) -> Result<Self> {
        let last = self.last()?;
        self.last = Ok(self.g.add_as(name, layer, &[last])?);
        Ok(self)
    }

    /// Appends a Lambda or custom layer.
    pub fn lambda(mut self, op: impl CustomOp + 'static, weights: &[WeightRef]) -> Result<Self> {
        let last = self.last()?;
        self.last = Ok(self.g.lambda(op, &[last], weights)?);
        Ok(self)
    }

    /// Finishes the model; its output is the last layer.
    pub fn build(self) -> Result<Model> {
        let last = self.last()?;
        self.g.build(&[last])
    }
}
