//! The fixed vocabulary of operations.

use crate::lambda::LambdaNode;
use crate::ops::{
    Activation, Add, BatchNorm, Concat, Conv2d, Dense, Dropout, Flatten, GlobalAvgPool, LayerOp,
    Mul, Pool2d, Reshape,
};
use crate::ops::{
    BatchConstant, ConvTranspose2d, Crop2d, Elementwise, LayerNorm, MatMul, PRelu, Pad2d, Permute,
    Resize, Slice, Upsample,
};
use crate::shape::Shape;
use serde::{Deserialize, Serialize};

/// An operation, generic over how a Lambda is represented: [`LambdaNode`] in a
/// live graph, a name + arguments record in a saved file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", content = "args", rename_all = "snake_case")]
pub enum OpT<L> {
    /// A graph input with its per-sample shape.
    Input(Shape),
    /// 2-D convolution.
    Conv2d(Conv2d),
    /// Fully connected layer.
    Dense(Dense),
    /// Batch normalisation.
    BatchNorm(BatchNorm),
    /// Element-wise activation.
    Activation(Activation),
    /// Max or average pooling.
    Pool2d(Pool2d),
    /// Spatial mean.
    GlobalAvgPool(GlobalAvgPool),
    /// Flatten to `(N, features)`.
    Flatten(Flatten),
    /// Per-sample reshape.
    Reshape(Reshape),
    /// Concatenation.
    Concat(Concat),
    /// Element-wise sum.
    Add(Add),
    /// Element-wise product.
    Mul(Mul),
    /// Dropout.
    Dropout(Dropout),
    /// Broadcasting arithmetic, with an optional constant operand.
    Elementwise(Elementwise),
    /// Transposed convolution.
    ConvTranspose2d(ConvTranspose2d),
    /// Spatial padding.
    Pad2d(Pad2d),
    /// Per-sample axis permutation.
    Permute(Permute),
    /// Spatial resizing.
    Upsample(Upsample),
    /// A Lambda or custom layer.
    Lambda(L),
    /// Layer normalisation.
    LayerNorm(LayerNorm),
    /// Parametric ReLU.
    PRelu(PRelu),
    /// Spatial cropping.
    Crop2d(Crop2d),
    /// Spatial resizing with ONNX `Resize` semantics.
    Resize(Resize),
    /// Strided slicing of per-sample axes.
    Slice(Slice),
    /// Matrix product of two activations.
    MatMul(MatMul),
    /// A per-sample constant repeated along the batch.
    BatchConstant(BatchConstant),
}

/// An operation in a live graph.
pub type Op = OpT<LambdaNode>;

impl<L> OpT<L> {
    /// The built-in layer behind this op, if it is one.
    pub fn as_layer(&self) -> Option<&dyn LayerOp> {
        Some(match self {
            OpT::Conv2d(l) => l,
            OpT::Dense(l) => l,
            OpT::BatchNorm(l) => l,
            OpT::Activation(l) => l,
            OpT::Pool2d(l) => l,
            OpT::GlobalAvgPool(l) => l,
            OpT::Flatten(l) => l,
            OpT::Reshape(l) => l,
            OpT::Concat(l) => l,
            OpT::Add(l) => l,
            OpT::Mul(l) => l,
            OpT::Dropout(l) => l,
            OpT::Elementwise(l) => l,
            OpT::ConvTranspose2d(l) => l,
            OpT::Pad2d(l) => l,
            OpT::Permute(l) => l,
            OpT::Upsample(l) => l,
            OpT::LayerNorm(l) => l,
            OpT::PRelu(l) => l,
            OpT::Crop2d(l) => l,
            OpT::Resize(l) => l,
            OpT::Slice(l) => l,
            OpT::MatMul(l) => l,
            OpT::BatchConstant(l) => l,
            OpT::Input(_) | OpT::Lambda(_) => return None,
        })
    }

    /// Mutable access to the built-in layer behind this op.
    pub fn as_layer_mut(&mut self) -> Option<&mut dyn LayerOp> {
        Some(match self {
            OpT::Conv2d(l) => l,
            OpT::Dense(l) => l,
            OpT::BatchNorm(l) => l,
            OpT::Activation(l) => l,
            OpT::Pool2d(l) => l,
            OpT::GlobalAvgPool(l) => l,
            OpT::Flatten(l) => l,
            OpT::Reshape(l) => l,
            OpT::Concat(l) => l,
            OpT::Add(l) => l,
            OpT::Mul(l) => l,
            OpT::Dropout(l) => l,
            OpT::Elementwise(l) => l,
            OpT::ConvTranspose2d(l) => l,
            OpT::Pad2d(l) => l,
            OpT::Permute(l) => l,
            OpT::Upsample(l) => l,
            OpT::LayerNorm(l) => l,
            OpT::PRelu(l) => l,
            OpT::Crop2d(l) => l,
            OpT::Resize(l) => l,
            OpT::Slice(l) => l,
            OpT::MatMul(l) => l,
            OpT::BatchConstant(l) => l,
            OpT::Input(_) | OpT::Lambda(_) => return None,
        })
    }

    /// Replaces the Lambda representation, keeping every other op.
    pub fn map_lambda<M, E>(self, f: impl FnOnce(L) -> Result<M, E>) -> Result<OpT<M>, E> {
        Ok(match self {
            OpT::Input(s) => OpT::Input(s),
            OpT::Conv2d(l) => OpT::Conv2d(l),
            OpT::Dense(l) => OpT::Dense(l),
            OpT::BatchNorm(l) => OpT::BatchNorm(l),
            OpT::Activation(l) => OpT::Activation(l),
            OpT::Pool2d(l) => OpT::Pool2d(l),
            OpT::GlobalAvgPool(l) => OpT::GlobalAvgPool(l),
            OpT::Flatten(l) => OpT::Flatten(l),
            OpT::Reshape(l) => OpT::Reshape(l),
            OpT::Concat(l) => OpT::Concat(l),
            OpT::Add(l) => OpT::Add(l),
            OpT::Mul(l) => OpT::Mul(l),
            OpT::Dropout(l) => OpT::Dropout(l),
            OpT::Elementwise(l) => OpT::Elementwise(l),
            OpT::ConvTranspose2d(l) => OpT::ConvTranspose2d(l),
            OpT::Pad2d(l) => OpT::Pad2d(l),
            OpT::Permute(l) => OpT::Permute(l),
            OpT::Upsample(l) => OpT::Upsample(l),
            OpT::Lambda(l) => OpT::Lambda(f(l)?),
            OpT::LayerNorm(l) => OpT::LayerNorm(l),
            OpT::PRelu(l) => OpT::PRelu(l),
            OpT::Crop2d(l) => OpT::Crop2d(l),
            OpT::Resize(l) => OpT::Resize(l),
            OpT::Slice(l) => OpT::Slice(l),
            OpT::MatMul(l) => OpT::MatMul(l),
            OpT::BatchConstant(l) => OpT::BatchConstant(l),
        })
    }
}

impl Op {
    /// A short type label for summaries: `Conv2d`, `Lambda(mean)`.
    pub fn type_label(&self) -> String {
        match self {
            OpT::Input(_) => "Input".into(),
            OpT::Conv2d(_) => "Conv2d".into(),
            OpT::Dense(_) => "Dense".into(),
            OpT::BatchNorm(_) => "BatchNorm".into(),
            OpT::Activation(a) => format!("Activation({})", a.base_name()),
            OpT::Pool2d(p) => match p.kind {
                crate::ops::PoolKind::Max => "MaxPool2d".into(),
                crate::ops::PoolKind::Avg => "AvgPool2d".into(),
            },
            OpT::GlobalAvgPool(_) => "GlobalAvgPool".into(),
            OpT::Flatten(_) => "Flatten".into(),
            OpT::Reshape(_) => "Reshape".into(),
            OpT::Concat(_) => "Concat".into(),
            OpT::Add(_) => "Add".into(),
            OpT::Mul(_) => "Mul".into(),
            OpT::Dropout(_) => "Dropout".into(),
            OpT::Elementwise(e) => format!("Elementwise({:?})", e.kind),
            OpT::ConvTranspose2d(_) => "ConvTranspose2d".into(),
            OpT::Pad2d(_) => "Pad2d".into(),
            OpT::Permute(_) => "Permute".into(),
            OpT::Upsample(u) => format!("Upsample({:?})", u.mode),
            OpT::Lambda(l) => format!("Lambda({})", l.op.type_name()),
            OpT::LayerNorm(_) => "LayerNorm".into(),
            OpT::PRelu(_) => "PRelu".into(),
            OpT::Crop2d(_) => "Crop2d".into(),
            OpT::Resize(r) => format!("Resize({:?})", r.kernel),
            OpT::Slice(_) => "Slice".into(),
            OpT::MatMul(_) => "MatMul".into(),
            OpT::BatchConstant(_) => "BatchConstant".into(),
        }
    }

    /// The activation applied last by this op, if known (for visualisation defaults).
    pub fn final_activation(&self) -> Option<Activation> {
        match self {
            OpT::Conv2d(c) => c.activation,
            OpT::Dense(d) => d.activation,
            OpT::Activation(a) => Some(*a),
            _ => None,
        }
    }
}

macro_rules! into_op {
    ($($t:ident),*) => {$(
        impl From<$t> for Op {
            fn from(l: $t) -> Op { OpT::$t(l) }
        }
    )*};
}
into_op!(
    Conv2d,
    Dense,
    BatchNorm,
    Activation,
    Pool2d,
    GlobalAvgPool,
    Flatten,
    Reshape,
    Concat,
    Add,
    Mul,
    Dropout,
    Elementwise,
    ConvTranspose2d,
    Pad2d,
    Permute,
    Upsample,
    LayerNorm,
    PRelu,
    Crop2d,
    Resize,
    Slice,
    MatMul,
    BatchConstant
);
