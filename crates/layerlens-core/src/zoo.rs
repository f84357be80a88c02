//! The seed CNN, the reference model of the docs and tests. Larger models
//! (ResNet-18, VGG16, EfficientNet-Lite0) live in `layerlens::zoo`.

use crate::builder::{Functional, Sequential};
use crate::error::Result;
use crate::model::Model;
use crate::ops::{Activation, Conv2d, Dense, Flatten, Pool2d};

/// The CNN of seeds 000/001/004 (Keras): 28×28×1 → conv 32 3×3 ReLU → max-pool 2
/// → conv 64 3×3 ReLU → max-pool 2 → flatten → dense 10, named as Keras names
/// them: `conv2d`, `max_pooling2d`, `conv2d_1`, `max_pooling2d_1`, `flatten`,
/// `dense`. With `softmax` the last layer outputs probabilities, otherwise logits
/// (what losses from logits and Grad-CAM want). Weights: seeded Glorot init.
///
/// ```
/// let m = layerlens_core::zoo::seed_cnn(true)?;
/// assert_eq!(m.summary().trainable, 34_826);
/// # Ok::<(), layerlens_core::Error>(())
/// ```
pub fn seed_cnn(softmax: bool) -> Result<Model> {
    seed_cnn_seeded(softmax, 42)
}

/// [`seed_cnn`] with initial weights drawn from `seed`.
pub fn seed_cnn_seeded(softmax: bool, seed: u64) -> Result<Model> {
    let dense = Dense::new(10);
    let dense = if softmax {
        dense.activation(Activation::SOFTMAX)
    } else {
        dense
    };
    Sequential::from_functional(Functional::new("seed_cnn").seed(seed), [1, 28, 28])
        .add(Conv2d::new(32, 3).activation(Activation::Relu))?
        .add(Pool2d::max(2))?
        .add(Conv2d::new(64, 3).activation(Activation::Relu))?
        .add(Pool2d::max(2))?
        .add(Flatten)?
        .add(dense)?
        .build()
}
