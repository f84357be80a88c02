//! Datasets: the idx format of MNIST / Fashion-MNIST, and the small real
//! Fashion-MNIST subset embedded in the binary for demos and tests.

use candle_core::{Device, Tensor};
use layerlens_core::{Error, Result};
use std::io::Read;
use std::path::Path;

/// Fashion-MNIST's class names, by label.
pub const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Where Debian's `dataset-fashion-mnist` installs the full dataset.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Images and labels.
#[derive(Debug, Clone)]
pub struct LabelledImages {
    /// `(N, 1, H, W)` float32 in `[0, 1]`.
    pub images: Tensor,
    /// One label per image.
    pub labels: Vec<u8>,
}

impl LabelledImages {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Which part of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training images.
    Train,
    /// Test images.
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

fn gunzip_if_needed(what: &str, bytes: &[u8]) -> Result<Vec<u8>> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| Error::Format {
                path: what.into(),
                message: format!("corrupt gzip data: {e}"),
            })?;
        Ok(out)
    } else {
        Ok(bytes.to_vec())
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses idx3 images (optionally gzipped) into `(N, 1, H, W)` in `[0, 1]`.
/// `what` names the source in errors.
pub fn parse_idx_images(what: &str, bytes: &[u8]) -> Result<Tensor> {
    let b = gunzip_if_needed(what, bytes)?;
    let bad = |m: String| Error::Format {
        path: what.into(),
        message: m,
    };
    if b.len() < 16 || be_u32(&b, 0) != 2051 {
        return Err(bad(
            "not an idx3 image file (magic number 2051 expected in the first 4 bytes)".into(),
        ));
    }
    let (n, h, w) = (
        be_u32(&b, 4) as usize,
        be_u32(&b, 8) as usize,
        be_u32(&b, 12) as usize,
    );
    let need = 16 + n * h * w;
    if b.len() != need {
        return Err(bad(format!(
            "header says {n} images of {h}x{w} ({need} bytes) but the file has {} bytes",
            b.len()
        )));
    }
    let px: Vec<f32> = b[16..].iter().map(|&v| v as f32 / 255.0).collect();
    Ok(Tensor::from_vec(px, (n, 1, h, w), &Device::Cpu)?)
}

/// Parses idx1 labels (optionally gzipped).
pub fn parse_idx_labels(what: &str, bytes: &[u8]) -> Result<Vec<u8>> {
    let b = gunzip_if_needed(what, bytes)?;
    let bad = |m: String| Error::Format {
        path: what.into(),
        message: m,
    };
    if b.len() < 8 || be_u32(&b, 0) != 2049 {
        return Err(bad(
            "not an idx1 label file (magic number 2049 expected in the first 4 bytes)".into(),
        ));
    }
    let n = be_u32(&b, 4) as usize;
    if b.len() != 8 + n {
        return Err(bad(format!(
            "header says {n} labels but the file has {} bytes of labels",
            b.len() - 8
        )));
    }
    Ok(b[8..].to_vec())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Loads Fashion-MNIST (or MNIST) idx files from `dir`: `train-*` or `t10k-*`,
/// gzipped or not.
pub fn load_idx_dir(dir: impl AsRef<Path>, split: Split) -> Result<LabelledImages> {
    let dir = dir.as_ref();
    let find = |stem: &str| {
        let gz = dir.join(format!("{}-{stem}.gz", split.prefix()));
        if gz.exists() {
            gz
        } else {
            dir.join(format!("{}-{stem}", split.prefix()))
        }
    };
    let (ip, lp) = (find("images-idx3-ubyte"), find("labels-idx1-ubyte"));
    let images = parse_idx_images(&ip.display().to_string(), &read(&ip)?)?;
    let labels = parse_idx_labels(&lp.display().to_string(), &read(&lp)?)?;
    check_pair(images, labels, &ip.display().to_string())
}

fn check_pair(images: Tensor, labels: Vec<u8>, what: &str) -> Result<LabelledImages> {
    if images.dim(0)? != labels.len() {
        return Err(Error::Format {
            path: what.into(),
            message: format!("{} images but {} labels", images.dim(0)?, labels.len()),
        });
    }
    Ok(LabelledImages { images, labels })
}

/// The embedded subset of the real Fashion-MNIST: the first 2000 training and
/// 500 test images (made by `scripts/make-fashion-subset.py`).
pub fn embedded_fashion_mnist(split: Split) -> Result<LabelledImages> {
    let (img, lab): (&[u8], &[u8]) = match split {
        Split::Train => (
            include_bytes!("../assets/fashion-mnist/train-images-idx3-ubyte.gz"),
            include_bytes!("../assets/fashion-mnist/train-labels-idx1-ubyte.gz"),
        ),
        Split::Test => (
            include_bytes!("../assets/fashion-mnist/t10k-images-idx3-ubyte.gz"),
            include_bytes!("../assets/fashion-mnist/t10k-labels-idx1-ubyte.gz"),
        ),
    };
    let images = parse_idx_images("embedded Fashion-MNIST images", img)?;
    let labels = parse_idx_labels("embedded Fashion-MNIST labels", lab)?;
    check_pair(images, labels, "embedded Fashion-MNIST")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_subset_is_the_real_data() {
        let d = embedded_fashion_mnist(Split::Test).unwrap();
        assert_eq!(d.images.dims(), &[500, 1, 28, 28]);
        // The first Fashion-MNIST test labels are: ankle boot, pullover, trouser, trouser, shirt.
        assert_eq!(&d.labels[..5], &[9, 2, 1, 1, 6]);
        let max = d.images.max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(max > 0.99 && max <= 1.0);
    }

    #[test]
    fn corrupt_idx_files_say_what_is_wrong() {
        let e = parse_idx_images(
            "x.idx",
            b"\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00\x00\x1c\x00\x00\x00\x1c",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "x.idx: header says 2 images of 28x28 (1584 bytes) but the file has 16 bytes"
        );
        let e = parse_idx_labels("y.idx", b"hello world").unwrap_err();
        assert!(e.to_string().starts_with("y.idx: not an idx1 label file"));
        let e = parse_idx_images("z.gz", &[0x1f, 0x8b, 1, 2, 3]).unwrap_err();
        assert!(e.to_string().starts_with("z.gz: corrupt gzip data"));
    }
}

/// A mini-batch: inputs and what the loss compares them with.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(B, C, H, W)` float32 inputs.
    pub inputs: Tensor,
    /// Class labels `(B,)` as u32, when the dataset has them.
    pub labels: Option<Tensor>,
    /// Regression targets (for an MSE loss), when the dataset has them.
    pub values: Option<Tensor>,
}

/// Random access to samples, so the training loop can shuffle and batch.
pub trait Dataset: Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The samples at `indices`, as one batch.
    fn batch(&self, indices: &[usize]) -> Result<Batch>;
}

impl Dataset for LabelledImages {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn batch(&self, indices: &[usize]) -> Result<Batch> {
        let idx: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
        let idx = Tensor::from_vec(idx, indices.len(), self.images.device())?;
        let labels: Vec<u32> = indices.iter().map(|&i| self.labels[i] as u32).collect();
        Ok(Batch {
            inputs: self.images.index_select(&idx, 0)?,
            labels: Some(Tensor::from_vec(
                labels,
                indices.len(),
                self.images.device(),
            )?),
            values: None,
        })
    }
}

impl LabelledImages {
    /// The first `n` samples (all if fewer).
    pub fn take(&self, n: usize) -> Result<LabelledImages> {
        let n = n.min(self.len());
        Ok(LabelledImages {
            images: self.images.narrow(0, 0, n)?,
            labels: self.labels[..n].to_vec(),
        })
    }
}

/// Inputs with regression targets (for losses such as MSE), all in memory.
#[derive(Debug, Clone)]
pub struct Regression {
    /// `(N, ...)` inputs.
    pub inputs: Tensor,
    /// `(N, ...)` targets.
    pub targets: Tensor,
}

impl Dataset for Regression {
    fn len(&self) -> usize {
        self.inputs.dim(0).unwrap_or(0)
    }
    fn batch(&self, indices: &[usize]) -> Result<Batch> {
        let idx: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
        let idx = Tensor::from_vec(idx, indices.len(), self.inputs.device())?;
        Ok(Batch {
            inputs: self.inputs.index_select(&idx, 0)?,
            labels: None,
            values: Some(self.targets.index_select(&idx, 0)?),
        })
    }
}

/// Full Fashion-MNIST from Debian's `dataset-fashion-mnist`
/// (`scripts/install-fashion-mnist.sh` installs it), or a clear error saying how to get it.
pub fn fashion_mnist(split: Split) -> Result<LabelledImages> {
    let dir = Path::new(FASHION_MNIST_DIR);
    if !dir
        .join(format!("{}-images-idx3-ubyte.gz", split.prefix()))
        .exists()
    {
        return Err(Error::Format {
            path: FASHION_MNIST_DIR.into(),
            message: "Fashion-MNIST is not installed: run scripts/install-fashion-mnist.sh (Debian package dataset-fashion-mnist)".into(),
        });
    }
    load_idx_dir(dir, split)
}

/// Images in one sub-folder per class (`root/cat/1.png`, `root/dog/7.jpg`), class
/// indices in sorted folder-name order, decoded on demand and resized to a fixed size.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    /// Class names (sub-folder names), sorted.
    pub classes: Vec<String>,
    /// `(path, class index)` for every image, sorted by path.
    pub samples: Vec<(std::path::PathBuf, u8)>,
    /// Channels: 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// Output `(height, width)`.
    pub size: (usize, usize),
}

impl ImageFolder {
    /// Indexes `root`; files other than PNG and JPEG are ignored.
    pub fn open(root: impl AsRef<Path>, channels: usize, size: (usize, usize)) -> Result<Self> {
        let root = root.as_ref();
        let io = |p: &Path, e| Error::Io {
            path: p.display().to_string(),
            source: e,
        };
        if channels != 1 && channels != 3 {
            return Err(Error::invalid(
                "image folder",
                format!("channels must be 1 or 3, got {channels}"),
            ));
        }
        let mut classes = Vec::new();
        for entry in std::fs::read_dir(root).map_err(|e| io(root, e))? {
            let entry = entry.map_err(|e| io(root, e))?;
            if entry.path().is_dir() {
                classes.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        classes.sort();
        if classes.is_empty() || classes.len() > 256 {
            return Err(Error::Format {
                path: root.display().to_string(),
                message: format!(
                    "expected 1 to 256 class sub-folders, found {}",
                    classes.len()
                ),
            });
        }
        let mut samples = Vec::new();
        for (ci, c) in classes.iter().enumerate() {
            let dir = root.join(c);
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .map_err(|e| io(&dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                        matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg")
                    })
                })
                .collect();
            files.sort();
            samples.extend(files.into_iter().map(|p| (p, ci as u8)));
        }
        Ok(ImageFolder {
            classes,
            samples,
            channels,
            size,
        })
    }

    /// Decodes one image to `(C, H, W)` float32 in `[0, 1]`.
    pub fn load(&self, path: &Path) -> Result<Tensor> {
        let img = image::open(path).map_err(|e| Error::Format {
            path: path.display().to_string(),
            message: format!("cannot decode image: {e}"),
        })?;
        let (h, w) = self.size;
        let img = img.resize_exact(w as u32, h as u32, image::imageops::FilterType::Triangle);
        let (data, c) = if self.channels == 1 {
            (img.to_luma8().into_raw(), 1)
        } else {
            (img.to_rgb8().into_raw(), 3)
        };
        let px: Vec<f32> = data.iter().map(|&v| v as f32 / 255.0).collect();
        // HWC -> CHW.
        Ok(Tensor::from_vec(px, (h, w, c), &Device::Cpu)?
            .permute((2, 0, 1))?
            .contiguous()?)
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn batch(&self, indices: &[usize]) -> Result<Batch> {
        let imgs = indices
            .iter()
            .map(|&i| self.load(&self.samples[i].0))
            .collect::<Result<Vec<_>>>()?;
        let labels: Vec<u32> = indices.iter().map(|&i| self.samples[i].1 as u32).collect();
        Ok(Batch {
            inputs: Tensor::stack(&imgs, 0)?,
            labels: Some(Tensor::from_vec(labels, indices.len(), &Device::Cpu)?),
            values: None,
        })
    }
}
