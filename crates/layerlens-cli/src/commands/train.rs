//! `layerlens train`: cross-entropy plus penalties on intermediate activations.

use anyhow::{bail, Context, Result};
use layerlens::prelude::*;
use std::path::PathBuf;

/// Trains a model with cross-entropy on its output plus optional mean-square
/// penalties on intermediate activations, and saves it.
///
/// Example: layerlens train zoo:seed_cnn --data fashion-mnist --epochs 3 --aux conv2d=0.1 --out trained
#[derive(clap::Args)]
pub struct Args {
    /// An .onnx file, a Keras .keras / .h5 file, a saved layerlens model directory, or
    /// zoo:NAME[=WEIGHTS] (a .pth / .safetensors / Keras weights file, `imagenet` for the
    /// published weights, `random` for none).
    model: String,
    /// fashion-mnist (the full set, scripts/install-fashion-mnist.sh), embedded
    /// (the 2 000 / 500 image subset), or folder:PATH (one sub-folder per class).
    #[arg(long, default_value = "embedded")]
    data: String,
    /// Epochs.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// adam (PyTorch's), adamw, keras-adam (Keras' epsilon 1e-7 and its placement)
    /// or sgd (momentum 0.9).
    #[arg(long, default_value = "adam")]
    optimizer: String,
    /// Extra loss terms NODE=WEIGHT: WEIGHT * mean(square(NODE)) (seed 002).
    #[arg(long)]
    aux: Vec<String>,
    /// Checkpoint directory (last.safetensors every epoch, best.safetensors).
    #[arg(long)]
    checkpoints: Option<PathBuf>,
    /// Continue from the checkpoint directory's last.safetensors.
    #[arg(long)]
    resume: bool,
    /// Where to save the trained model.
    #[arg(long)]
    out: PathBuf,
}

/// Runs the training.
pub fn run(a: &Args) -> Result<()> {
    super::keep_freed_memory_for_reuse();
    use layerlens::train::{data, fit, loss::Loss, optim};
    let model = super::open_model(&a.model, &super::OpenArgs::default(), &[])?;
    let g = model.graph();
    let out_node = g.node(g.outputs()[0]);
    let head = out_node.name.clone();
    // A softmax head is trained on probabilities, a linear one on logits.
    let mut loss = match out_node.op.final_activation() {
        Some(Activation::Softmax { .. }) => Loss::categorical_crossentropy(&head),
        _ => Loss::cross_entropy(&head),
    };
    for spec in &a.aux {
        let (node, w) = spec
            .split_once('=')
            .with_context(|| format!("--aux {spec}: expected NODE=WEIGHT"))?;
        let w: f64 = w
            .parse()
            .with_context(|| format!("--aux {spec}: '{w}' is not a number"))?;
        g.find(node)?;
        loss = loss + w * Loss::mean_square(node);
    }
    let (train_set, test_set): (Box<dyn data::Dataset>, Option<Box<dyn data::Dataset>>) =
        match a.data.as_str() {
            "fashion-mnist" => (
                Box::new(data::fashion_mnist(data::Split::Train)?),
                Some(Box::new(data::fashion_mnist(data::Split::Test)?)),
            ),
            "embedded" => (
                Box::new(data::embedded_fashion_mnist(data::Split::Train)?),
                Some(Box::new(data::embedded_fashion_mnist(data::Split::Test)?)),
            ),
            other => match other.strip_prefix("folder:") {
                Some(path) => {
                    let shape = g.node(g.inputs()[0]).shape.clone();
                    let (c, h, w) = shape
                        .chw()
                        .with_context(|| format!("model input {shape} is not an image"))?;
                    (Box::new(data::ImageFolder::open(path, c, (h, w))?), None)
                }
                None => bail!("--data {other}: use fashion-mnist, embedded or folder:PATH"),
            },
        };
    let mut opt: Box<dyn optim::Optimizer> = match a.optimizer.as_str() {
        "adam" => Box::new(optim::Adam::new(model.params(), a.lr)),
        "adamw" => Box::new(optim::Adam::adamw(model.params(), a.lr)),
        "keras-adam" => Box::new(optim::Adam::keras(model.params(), a.lr)),
        "sgd" => Box::new(optim::Sgd::new(model.params(), a.lr).momentum(0.9)),
        other => bail!("--optimizer {other}: use adam, adamw, keras-adam or sgd"),
    };
    let cfg = fit::FitConfig {
        epochs: a.epochs,
        batch_size: a.batch,
        accuracy_node: Some(head.clone()),
        checkpoint_dir: a.checkpoints.clone(),
        resume: a.resume,
        ..Default::default()
    };
    let start = std::time::Instant::now();
    let history = fit::fit(
        &model,
        &loss,
        opt.as_mut(),
        train_set.as_ref(),
        test_set.as_deref(),
        &cfg,
    )?;
    let secs = start.elapsed().as_secs_f64();
    model.save(&a.out)?;
    for e in &history.epochs {
        println!(
            "epoch {}: loss {:.4}, accuracy {:.4}{}",
            e.epoch + 1,
            e.loss,
            e.accuracy.unwrap_or(f64::NAN),
            e.val_accuracy
                .map(|v| format!(", test accuracy {v:.4}"))
                .unwrap_or_default()
        );
    }
    println!(
        "trained {} epoch(s) in {secs:.1} s; saved to {}",
        history.epochs.len(),
        a.out.display()
    );
    Ok(())
}
