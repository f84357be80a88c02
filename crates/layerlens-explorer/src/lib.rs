//! # layerlens-explorer
//!
//! `layerlens explore`: a local web page over a model — its graph as a layered
//! DAG, and for any node its feature maps, statistics, histogram and a class
//! activation map for the inputs given — served by a small synchronous HTTP
//! server bound to loopback ([`server`]), with a JSON + PNG API a notebook can
//! use too (docs/explorer.md). [`page::static_page`] writes the same page as
//! one self-contained file.

pub mod graph;
pub mod page;
pub mod server;
pub mod session;

pub use session::{GridRequest, Input, Session};

/// What can go wrong in the explorer; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ExplorerError {
    /// A request names something that does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// A request or an input is malformed or unsuitable (400).
    #[error("{0}")]
    Input(String),
    /// A path that tries to leave the served set (`..`) (400).
    #[error("path traversal refused: {0}")]
    Traversal(String),
    /// A computation failed (500).
    #[error("{0}")]
    Compute(String),
    /// Encoding a picture failed (500).
    #[error("{0}")]
    Render(String),
    /// The library refused (400: it reports bad requests such as unknown channels).
    #[error(transparent)]
    Layerlens(#[from] layerlens::Error),
    /// Binding or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<layerlens::candle_core::Error> for ExplorerError {
    fn from(e: layerlens::candle_core::Error) -> Self {
        ExplorerError::Compute(e.to_string())
    }
}

/// The explorer's result type.
pub type Result<T> = std::result::Result<T, ExplorerError>;

/// The class names of a model opened from `spec`, when layerlens knows them:
/// Fashion-MNIST for the seed CNN, ImageNet for the other zoo models.
pub fn known_labels(spec: &str) -> Option<Vec<String>> {
    let name = spec.strip_prefix("zoo:")?;
    let name = name.split_once('=').map_or(name, |(n, _)| n);
    match name {
        "seed_cnn" => Some(
            layerlens::data::FASHION_CLASSES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ),
        "resnet18" | "vgg16" | "efficientnet_lite0" => Some(
            layerlens::preprocess::imagenet_classes()
                .into_iter()
                .map(String::from)
                .collect(),
        ),
        _ => None,
    }
}

/// Reads class names from a file, one per line (blank lines at the end ignored).
pub fn read_labels(path: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ExplorerError::Input(format!("{}: {e}", path.display())))?;
    let labels: Vec<String> = text
        .trim_end()
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    if labels.is_empty() || labels.iter().all(String::is_empty) {
        return Err(ExplorerError::Input(format!(
            "{}: no class names (one per line)",
            path.display()
        )));
    }
    Ok(labels)
}

/// The preprocessing a zoo model's weights were trained with
/// ([`layerlens::spec::default_preprocess`]: `caffe` for Keras' VGG16
/// `=imagenet`, `efficientnet-lite`, `imagenet`), `unit` otherwise.
pub fn default_preprocess(spec: &str) -> &'static str {
    layerlens::spec::default_preprocess(spec).unwrap_or("unit")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zoo_models_name_their_classes_and_preprocessing() {
        let l = known_labels("zoo:efficientnet_lite0=w.pth").unwrap();
        assert_eq!((l.len(), l[282].as_str()), (1000, "tiger cat"));
        assert_eq!(known_labels("zoo:seed_cnn").unwrap()[9], "Ankle boot");
        assert!(known_labels("model.onnx").is_none());
        assert_eq!(
            default_preprocess("zoo:efficientnet_lite0=w.pth"),
            "efficientnet-lite"
        );
        assert_eq!(default_preprocess("zoo:resnet18"), "imagenet");
        assert_eq!(default_preprocess("zoo:vgg16=imagenet"), "caffe");
        assert_eq!(default_preprocess("m.onnx"), "unit");
    }

    #[test]
    fn label_files_are_read_and_must_match_the_output() {
        let dir = std::env::temp_dir().join(format!("layerlens-labels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let three = dir.join("three.txt");
        std::fs::write(&three, "cat\ndog\nbird\n\n").unwrap();
        assert_eq!(read_labels(&three).unwrap(), ["cat", "dog", "bird"]);
        let empty = dir.join("empty.txt");
        std::fs::write(&empty, "\n").unwrap();
        assert!(read_labels(&empty)
            .unwrap_err()
            .to_string()
            .contains("no class names"));
        assert!(read_labels(&dir.join("missing.txt")).is_err());
        // The seed CNN has 10 classes: 3 names are refused by count.
        let model = layerlens::zoo::seed_cnn(false).unwrap();
        let x = layerlens::candle_core::Tensor::zeros(
            (1, 1, 28, 28),
            layerlens::candle_core::DType::F32,
            &layerlens::candle_core::Device::Cpu,
        )
        .unwrap();
        let input = || Input {
            label: "zeros".into(),
            tensor: x.clone(),
            picture: None,
        };
        let e = Session::new(model, vec![input()], Some(read_labels(&three).unwrap()))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("3 class labels") && e.contains("10 classes"),
            "{e}"
        );
        let model = layerlens::zoo::seed_cnn(false).unwrap();
        assert!(Session::new(model, vec![], None).is_err(), "no input");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
