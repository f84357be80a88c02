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
    last: NodeRef,
}

impl Sequential {
    /// A stack whose input (named `input`) has the per-sample shape `input`.
    pub fn new(name: &str, input: impl Into<Shape>) -> Self {
        Self::from_functional(Functional::new(name), input)
    }

    /// Like [`new`](Self::new) but building with a configured [`Functional`]
    /// (device, seed).
    pub fn from_functional(mut g: Functional, input: impl Into<Shape>) -> Self {
        // An input name cannot clash in a fresh builder, and an empty shape is
        // reported by `build` through the stored error below.
        let last = g.input("input", input).unwrap_or(NodeRef(usize::MAX));
        Sequential { g, last }
    }

    /// Builds on `device`.
    pub fn on_device(mut self, device: &Device) -> Self {
        self.g = std::mem::replace(&mut self.g, Functional::new("")).on_device(device);
        self
    }

    fn check_input(&self) -> Result<()> {
        if self.last.0 == usize::MAX {
            return Err(crate::Error::invalid(
                "input",
                "the input shape must be non-empty with no zero dims",
            ));
        }
        Ok(())
    }

    /// Appends a layer with an automatic name.
    #[allow(clippy::should_implement_trait)] // Keras' name; not an arithmetic `+`.
    pub fn add(mut self, layer: impl Into<Op>) -> Result<Self> {
        self.check_input()?;
        self.last = self.g.add(layer, &[self.last])?;
        Ok(self)
    }

    /// Appends a layer with an explicit name.
    pub fn add_as(mut self, name: &str, layer: impl Into<Op>) -> Result<Self> {
        self.check_input()?;
        self.last = self.g.add_as(name, layer, &[self.last])?;
        Ok(self)
    }

    /// Appends a Lambda or custom layer.
    pub fn lambda(mut self, op: impl CustomOp + 'static, weights: &[WeightRef]) -> Result<Self> {
        self.check_input()?;
        self.last = self.g.lambda(op, &[self.last], weights)?;
        Ok(self)
    }

    /// The functional builder underneath, for wiring beyond a stack.
    pub fn functional(&mut self) -> (&mut Functional, NodeRef) {
        (&mut self.g, self.last)
    }

    /// Finishes the model; its output is the last layer.
    pub fn build(self) -> Result<Model> {
        self.check_input()?;
        let last = self.last;
        self.g.build(&[last])
    }
}
