//! Image loading and the preprocessing presets of common model families, plus
//! ImageNet's class names so a prediction prints a label.

use layerlens_core::candle_core::{Device, Tensor};
use layerlens_core::{Error, Result};
use std::path::Path;

/// How pixel values are normalised after resizing and cropping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Preset {
    /// torchvision's ImageNet: `[0, 1]`, then per channel `(x - mean) / std` with
    /// mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
    ImageNet,
    /// EfficientNet-Lite: `(x - 127) / 128` on 0..255 pixels.
    EfficientNetLite,
    /// Plain `[0, 1]`.
    UnitRange,
    /// Keras' `caffe` mode (`keras.applications.vgg16/resnet.preprocess_input`):
    /// RGB to BGR, then minus the BGR means (103.939, 116.779, 123.68) on
    /// 0..255 pixels.
    Caffe,
    /// Keras' `tf` mode (MobileNet, Xception, Inception): `x / 127.5 - 1`.
    Tf,
    /// 0..255 pixels as they are (Keras models with their own preprocessing
    /// layers: EfficientNet, ConvNeXt).
    Raw,
}

impl Preset {
    /// Parses `imagenet`, `efficientnet-lite`, `unit`, `caffe`, `tf` or `raw`.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "imagenet" | "torch" => Preset::ImageNet,
            "efficientnet-lite" => Preset::EfficientNetLite,
            "unit" => Preset::UnitRange,
            "caffe" => Preset::Caffe,
            "tf" => Preset::Tf,
            "raw" => Preset::Raw,
            other => {
                return Err(Error::invalid(
                    "preprocess",
                    format!("unknown preset '{other}' (imagenet (alias torch), efficientnet-lite, unit, caffe, tf, raw)"),
                ))
            }
        })
    }
}

/// Loads an image as a `(1, C, size, size)` tensor: the shorter side resized to
/// `size * 256 / 224` (bilinear), a centred `size × size` crop, then `preset`.
/// `channels` is 3 (RGB) or 1 (grayscale).
pub fn load_image(
    path: impl AsRef<Path>,
    channels: usize,
    size: usize,
    preset: Preset,
) -> Result<Tensor> {
    let img = decode_image(path.as_ref())?;
    from_image(&fit_image(img, size, size), channels, preset)
}

/// An image file's `(width, height)` from its header, without decoding it.
pub fn image_size(path: &Path) -> Result<(u32, u32)> {
    image::image_dimensions(path).map_err(|e| Error::Format {
        path: path.display().to_string(),
        message: format!("cannot read the image size: {e}"),
    })
}

/// Decodes an image file (png, jpg), naming the file in the error.
pub fn decode_image(path: &Path) -> Result<image::DynamicImage> {
    image::open(path).map_err(|e| Error::Format {
        path: path.display().to_string(),
        message: format!("cannot decode image: {e}"),
    })
}

/// Decodes an encoded image in memory (PNG or JPEG, told apart by its first
/// bytes); `what` names it in errors (a path, a row of a dataset).
pub fn decode_image_bytes(bytes: &[u8], what: &str) -> Result<image::DynamicImage> {
    image::load_from_memory(bytes).map_err(|e| Error::Format {
        path: what.to_string(),
        message: format!("cannot decode image: {e}"),
    })
}

/// Brings an image to `width × height`: unchanged when it already has that
/// size (a Fashion-MNIST PNG fed to a 28×28 model is used as it is); for a
/// square target, the shorter side resized to `size * 256 / 224` and a centred
/// crop (torchvision's `Resize(256)` + `CenterCrop(224)`); otherwise resized
/// to exactly `width × height`.
pub fn fit_image(img: image::DynamicImage, width: usize, height: usize) -> image::DynamicImage {
    use image::imageops::FilterType;
    let (tw, th) = (width as u32, height as u32);
    if img.width() == tw && img.height() == th {
        return img;
    }
    if tw != th {
        return img.resize_exact(tw, th, FilterType::Triangle);
    }
    // torchvision's arithmetic: the longer side is truncated, and the crop
    // offset rounded half to even (Python's round).
    let short = (width as f64 * 256.0 / 224.0).round() as u64;
    let (w, h) = (img.width() as u64, img.height() as u64);
    let (nw, nh) = if w <= h {
        (short, short * h / w)
    } else {
        (short * w / h, short)
    };
    let (nw, nh) = ((nw as u32).max(tw), (nh as u32).max(th));
    let img = img.resize_exact(nw, nh, FilterType::Triangle);
    let offset = |n: u32, t: u32| ((n - t) as f64 / 2.0).round_ties_even() as u32;
    img.crop_imm(offset(nw, tw), offset(nh, th), tw, th)
}

/// Turns image files into model inputs: decoded, fitted to the model's input
/// size with [`fit_image`], normalised with a [`Preset`]. It is `Sync`, so
/// dataset extraction decodes with it on several threads at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageLoader {
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// Target height.
    pub height: usize,
    /// Target width.
    pub width: usize,
    /// Normalisation.
    pub preset: Preset,
}

impl ImageLoader {
    /// A loader for a model's first input, which must be an image `(C, H, W)`.
    pub fn for_model(model: &layerlens_core::Model, preset: Preset) -> Result<Self> {
        let g = model.graph();
        let input = g.node(g.inputs()[0]);
        let (channels, height, width) = input.shape.chw().ok_or_else(|| {
            Error::invalid(
                &input.name,
                format!(
                    "the model's input {} is not an image (C, H, W)",
                    input.shape
                ),
            )
        })?;
        Ok(ImageLoader {
            channels,
            height,
            width,
            preset,
        })
    }

    /// Loads one image as a `(1, C, H, W)` tensor.
    pub fn load(&self, path: &Path) -> Result<Tensor> {
        let img = fit_image(decode_image(path)?, self.width, self.height);
        from_image(&img, self.channels, self.preset)
    }

    /// Loads one encoded image held in memory as a `(1, C, H, W)` tensor, with
    /// exactly the arithmetic of [`ImageLoader::load`].
    pub fn load_bytes(&self, bytes: &[u8], what: &str) -> Result<Tensor> {
        let img = fit_image(decode_image_bytes(bytes, what)?, self.width, self.height);
        from_image(&img, self.channels, self.preset)
    }
}

/// An image, as it is, to a `(1, C, H, W)` tensor with `preset` applied.
pub fn from_image(img: &image::DynamicImage, channels: usize, preset: Preset) -> Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw: Vec<u8> = match channels {
        1 => img.to_luma8().into_raw(),
        3 => img.to_rgb8().into_raw(),
        c => {
            return Err(Error::invalid(
                "load_image",
                format!("channels must be 1 or 3, got {c}"),
            ))
        }
    };
    let px: Vec<f32> = raw.iter().map(|&v| v as f32).collect();
    let x = Tensor::from_vec(px, (h, w, channels), &Device::Cpu)?
        .permute((2, 0, 1))?
        .contiguous()?;
    let need_rgb = |what: &str| {
        if channels != 3 {
            Err(Error::invalid(
                "load_image",
                format!("the {what} preset needs 3 channels"),
            ))
        } else {
            Ok(())
        }
    };
    let x = match preset {
        Preset::EfficientNetLite => ((x - 127.0)? / 128.0)?,
        Preset::UnitRange => (x / 255.0)?,
        Preset::Tf => ((x / 127.5)? - 1.0)?,
        Preset::Raw => x,
        Preset::Caffe => {
            need_rgb("caffe")?;
            let bgr = Tensor::cat(
                &[x.narrow(0, 2, 1)?, x.narrow(0, 1, 1)?, x.narrow(0, 0, 1)?],
                0,
            )?;
            let mean =
                Tensor::new(&[103.939f32, 116.779, 123.68], &Device::Cpu)?.reshape((3, 1, 1))?;
            bgr.broadcast_sub(&mean)?
        }
        Preset::ImageNet => {
            need_rgb("ImageNet")?;
            let mean = Tensor::new(&[0.485f32, 0.456, 0.406], &Device::Cpu)?.reshape((3, 1, 1))?;
            let std = Tensor::new(&[0.229f32, 0.224, 0.225], &Device::Cpu)?.reshape((3, 1, 1))?;
            (x / 255.0)?.broadcast_sub(&mean)?.broadcast_div(&std)?
        }
    };
    Ok(x.unsqueeze(0)?)
}

/// ImageNet-1k class names by index (torchvision's list).
pub fn imagenet_classes() -> Vec<&'static str> {
    include_str!("../assets/imagenet_classes.txt")
        .lines()
        .collect()
}

/// The `k` best `(class, probability)` pairs of one row of logits.
pub fn top_k(logits: &Tensor, k: usize) -> Result<Vec<(usize, f32)>> {
    let p: Vec<f32> =
        layerlens_core::candle_core::Tensor::to_vec1(&candle_nn_softmax(&logits.flatten_all()?)?)?;
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    Ok(idx.into_iter().take(k).map(|i| (i, p[i])).collect())
}

fn candle_nn_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(0)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(0)?)?)
}
