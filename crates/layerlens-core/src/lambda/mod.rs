//! Lambdas and custom layers: user computations inside the graph.
//!
//! A Lambda is a [`CustomOp`] node. It may read other layers' weights through
//! [`WeightRef`]s, either `frozen` (a constant snapshot taken when the node is
//! built) or `live` (the parameter itself, so gradients reach it). A custom layer
//! is a [`CustomOp`] that also declares parameters of its own.
//!
//! Saving stores a Lambda by its registered type name and JSON arguments, never
//! as code: loading looks the name up in a [`LambdaRegistry`], so loading a model
//! cannot execute anything that was not compiled into the program. A closure
//! Lambda ([`Closure`]) runs in-process but cannot be saved.

mod builtins;
mod registry;

pub use builtins::{Conv2dRef, L2Normalize, Reduce, ReduceKind, Scale, ScaleByWeight};
pub use registry::LambdaRegistry;

use crate::error::Result;
use crate::params::ParamSpec;
use crate::shape::Shape;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// How a Lambda refers to another layer's parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefMode {
    /// A constant copy taken when the Lambda node is built; later training of the
    /// layer does not change it and no gradient flows into it. Saved with the model.
    ///
    /// **Weights loaded after the build do not reach it either**: a Lambda built
    /// on a randomly initialised model and then given pretrained weights keeps the
    /// random snapshot. `load_state_dict` lists such snapshots in its report
    /// (`stale_frozen`); [`Model::refresh_frozen`](crate::Model::refresh_frozen)
    /// takes them again. Build after loading, or refresh, unless the old values
    /// are what you want.
    Frozen,
    /// The parameter itself: the Lambda sees every update, and gradients of a loss
    /// reach the parameter through both the layer and the Lambda.
    Live,
}

/// A reference from a Lambda to a parameter key such as `conv2d.weight`.
///
/// ```
/// use layerlens_core::lambda::{WeightRef, RefMode};
/// let w = WeightRef::live("conv2d.weight");
/// assert_eq!(w.mode, RefMode::Live);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightRef {
    /// The parameter key.
    pub key: String,
    /// Frozen snapshot or live parameter.
    pub mode: RefMode,
}

impl WeightRef {
    /// A frozen snapshot of `key`, taken when the Lambda node is built; see
    /// [`RefMode::Frozen`] for why weights loaded afterwards need
    /// [`Model::refresh_frozen`](crate::Model::refresh_frozen).
    pub fn frozen(key: impl Into<String>) -> Self {
        WeightRef {
            key: key.into(),
            mode: RefMode::Frozen,
        }
    }
    /// The live parameter `key`.
    pub fn live(key: impl Into<String>) -> Self {
        WeightRef {
            key: key.into(),
            mode: RefMode::Live,
        }
    }
}

/// What a [`CustomOp`] sees when its output shape is inferred.
#[derive(Debug)]
pub struct ShapeCtx<'a> {
    /// The node being built.
    pub node: &'a str,
    /// Input node names.
    pub input_names: &'a [String],
    /// Input per-sample shapes.
    pub input_shapes: &'a [Shape],
    /// Referenced weights: key and full dims, in the order given.
    pub weights: &'a [(String, Vec<usize>)],
}

/// What a [`CustomOp`] runs with.
pub struct LambdaCtx<'a> {
    /// The node being run.
    pub node: &'a str,
    /// Training mode.
    pub train: bool,
    /// Referenced weights, in the order given when the node was added.
    pub weights: &'a [Tensor],
    pub(crate) params: &'a dyn Fn(&str) -> Result<Tensor>,
}

impl LambdaCtx<'_> {
    /// One of this custom layer's own parameters by local name.
    pub fn param(&self, local: &str) -> Result<Tensor> {
        (self.params)(local)
    }
}

/// A user-defined computation in the graph: a Lambda or a custom layer.
///
/// Implement it (and register a constructor in a [`LambdaRegistry`]) for a
/// Lambda that can be saved. A minimal custom layer with a trainable scale:
///
/// ```
/// use layerlens_core::lambda::{CustomOp, LambdaCtx, ShapeCtx};
/// use layerlens_core::params::{Init, ParamKind, ParamSpec};
/// use layerlens_core::{Result, Shape};
/// use candle_core::Tensor;
///
/// #[derive(Debug)]
/// struct ChannelScale;
/// impl CustomOp for ChannelScale {
///     fn type_name(&self) -> &str { "channel_scale" }
///     fn param_specs(&self, inputs: &[Shape]) -> Result<Vec<ParamSpec>> {
///         let c = inputs[0].dims()[0];
///         Ok(vec![ParamSpec { name: "gamma".into(), shape: vec![1, c, 1, 1], kind: ParamKind::Trainable, init: Init::Ones }])
///     }
///     fn forward(&self, inputs: &[Tensor], ctx: &LambdaCtx) -> Result<Tensor> {
///         Ok(inputs[0].broadcast_mul(&ctx.param("gamma")?)?)
///     }
/// }
/// ```
pub trait CustomOp: Send + Sync + fmt::Debug {
    /// The registry name this op is saved and loaded under.
    fn type_name(&self) -> &str;
    /// Arguments saved with the model and given back to the registry's constructor.
    fn args(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Whether the op can be saved (closures cannot).
    fn saveable(&self) -> bool {
        true
    }
    /// Base for automatic node names (`lambda`, `lambda_1`, ...).
    fn base_name(&self) -> &str {
        "lambda"
    }
    /// Parameters owned by this node (a custom layer); none for a Lambda.
    fn param_specs(&self, _inputs: &[Shape]) -> Result<Vec<ParamSpec>> {
        Ok(Vec::new())
    }
    /// The output shape, or `None` to let the builder find it by running the op
    /// once on a zero batch of one (so shape errors still surface at build time).
    fn output_shape(&self, _ctx: &ShapeCtx) -> Option<Result<Shape>> {
        None
    }
    /// Runs the op on full (batched) tensors.
    fn forward(&self, inputs: &[Tensor], ctx: &LambdaCtx) -> Result<Tensor>;
    /// Multiply-accumulates per sample, for `summary()`.
    fn macs(&self, _inputs: &[Shape], _output: &Shape) -> u64 {
        0
    }
}

/// A Lambda node in the graph: the op and the weights it references.
#[derive(Clone, Debug)]
pub struct LambdaNode {
    /// The computation.
    pub op: Arc<dyn CustomOp>,
    /// Referenced weights, passed to the op in this order.
    pub weights: Vec<WeightRef>,
}

/// A Lambda made from a Rust closure, for in-process use. It cannot be saved:
/// implement [`CustomOp`] and register it to save one.
///
/// ```
/// use layerlens_core::lambda::Closure;
/// let double = Closure::new("double", |xs| Ok((&xs[0] * 2.0)?));
/// ```
#[derive(Clone)]
pub struct Closure {
    label: String,
    #[allow(clippy::type_complexity)]
    f: Arc<dyn Fn(&[Tensor]) -> candle_core::Result<Tensor> + Send + Sync>,
}

impl Closure {
    /// A closure Lambda with a label (shown in summaries and errors).
    pub fn new(
        label: impl Into<String>,
        f: impl Fn(&[Tensor]) -> candle_core::Result<Tensor> + Send + Sync + 'static,
    ) -> Self {
        Closure {
            label: label.into(),
            f: Arc::new(f),
        }
    }
}

impl fmt::Debug for Closure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Closure({})", self.label)
    }
}

impl CustomOp for Closure {
    fn type_name(&self) -> &str {
        &self.label
    }
    fn saveable(&self) -> bool {
        false
    }
    fn forward(&self, inputs: &[Tensor], ctx: &LambdaCtx) -> Result<Tensor> {
        use crate::error::NodeContext;
        (self.f)(inputs).at_node(ctx.node)
    }
}
