//! Ready-made models with the layer names users already know.

use layerlens_core::prelude::*;

/// The CNN of seeds 000/001/004 (Keras): 28×28×1 → conv 32 3×3 ReLU → max-pool 2
/// → conv 64 3×3 ReLU → max-pool 2 → flatten → dense 10, named as Keras names
/// them: `conv2d`, `max_pooling2d`, `conv2d_1`, `max_pooling2d_1`, `flatten`,
/// `dense`. With `softmax` the last layer outputs probabilities, otherwise logits
/// (what losses from logits and Grad-CAM want).
pub fn seed_cnn(softmax: bool) -> Result<Model> {
    let dense = Dense::new(10);
    let dense = if softmax {
        dense.activation(Activation::SOFTMAX)
    } else {
        dense
    };
    Sequential::new("seed_cnn", [1, 28, 28])
        .add(Conv2d::new(32, 3).activation(Activation::Relu))?
        .add(Pool2d::max(2))?
        .add(Conv2d::new(64, 3).activation(Activation::Relu))?
        .add(Pool2d::max(2))?
        .add(Flatten)?
        .add(dense)?
        .build()
}
