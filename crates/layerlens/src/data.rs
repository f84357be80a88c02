//! Datasets: the idx format of MNIST / Fashion-MNIST, and the small real
//! Fashion-MNIST subset embedded in the binary for demos and tests.

use layerlens_core::candle_core::{Device, Tensor};
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
