//! The training loop: shuffled mini-batches, a loss over any activations,
//! validation with accuracy, an indicatif progress bar, early stopping,
//! checkpoints and resume.

use crate::data::{Batch, Dataset};
use crate::loss::{Loss, Targets};
use crate::optim::{LrSchedule, Optimizer};
use candle_core::{DType, Tensor};
use layerlens_core::{Activations, Error, Model, Result, RunOptions};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Which validation number decides early stopping and the best checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Monitor {
    /// Lower validation loss is better.
    ValLoss,
    /// Higher validation accuracy is better.
    ValAccuracy,
}

/// Stop when the monitored number has not improved for `patience` epochs.
#[derive(Debug, Clone, Copy)]
pub struct EarlyStopping {
    /// What to watch.
    pub monitor: Monitor,
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// Smallest change that counts as an improvement.
    pub min_delta: f64,
}

/// Training settings.
#[derive(Debug, Clone)]
pub struct FitConfig {
    /// Epochs to train (including any already done when resuming).
    pub epochs: usize,
    /// Samples per step.
    pub batch_size: usize,
    /// Shuffle seed (same seed, same batches).
    pub seed: u64,
    /// Shuffle the training set every epoch.
    pub shuffle: bool,
    /// The logits/probabilities node whose argmax is compared with labels for accuracy.
    pub accuracy_node: Option<String>,
    /// Learning-rate schedule over epochs, from the optimiser's initial rate.
    pub schedule: LrSchedule,
    /// Early stopping on validation numbers.
    pub early_stopping: Option<EarlyStopping>,
    /// Directory for `last.safetensors` (every epoch) and `best.safetensors`.
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue from `checkpoint_dir/last.safetensors` when it exists.
    pub resume: bool,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            epochs: 1,
            batch_size: 64,
            seed: 0,
            shuffle: true,
            accuracy_node: None,
            schedule: LrSchedule::Constant,
            early_stopping: None,
            checkpoint_dir: None,
            resume: false,
            progress: true,
        }
    }
}

/// Numbers of one epoch.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochStats {
    /// 0-based epoch.
    pub epoch: usize,
    /// Learning rate used.
    pub lr: f64,
    /// Mean training loss.
    pub loss: f64,
    /// Training accuracy, when measured.
    pub accuracy: Option<f64>,
    /// Validation loss.
    pub val_loss: Option<f64>,
    /// Validation accuracy.
    pub val_accuracy: Option<f64>,
}

/// What `fit` did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct History {
    /// One entry per epoch run (or restored from a checkpoint).
    pub epochs: Vec<EpochStats>,
    /// Whether early stopping ended training.
    pub stopped_early: bool,
}

/// Evaluation numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Mean loss.
    pub loss: f64,
    /// Accuracy, when an accuracy node was given and the data has labels.
    pub accuracy: Option<f64>,
}

fn correct(pred: &Tensor, labels: &Tensor) -> Result<usize> {
    let am = pred.argmax(candle_core::D::Minus1)?.to_dtype(DType::U32)?;
    Ok(am
        .eq(labels)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()? as usize)
}

fn taps<'a>(loss: &'a Loss, acc: Option<&'a str>) -> Vec<&'a str> {
    let mut t = loss.taps();
    if let Some(a) = acc {
        if !t.contains(&a) {
            t.push(a);
        }
    }
    t
}

/// Mean loss (and accuracy) over a dataset in evaluation mode, in batches.
pub fn evaluate(
    model: &Model,
    loss: &Loss,
    data: &dyn Dataset,
    batch_size: usize,
    accuracy_node: Option<&str>,
) -> Result<Evaluation> {
    let taps = taps(loss, accuracy_node);
    let (mut total, mut right, mut seen) = (0f64, 0usize, 0usize);
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let b = data.batch(chunk)?;
        let acts = model.run(&[b.inputs.clone()], &taps, RunOptions::default())?;
        let (l, _) = loss.compute(
            &acts,
            Targets {
                labels: b.labels.as_ref(),
                values: b.values.as_ref(),
            },
        )?;
        total += l.to_scalar::<f32>()? as f64 * chunk.len() as f64;
        if let (Some(a), Some(y)) = (accuracy_node, &b.labels) {
            right += correct(acts.get(a)?, y)?;
        }
        seen += chunk.len();
    }
    if seen == 0 {
        return Err(Error::invalid("evaluate", "the dataset is empty"));
    }
    Ok(Evaluation {
        loss: total / seen as f64,
        accuracy: accuracy_node.map(|_| right as f64 / seen as f64),
    })
}

/// What one optimisation step produced.
#[derive(Debug)]
pub struct StepOutput {
    /// The total loss.
    pub loss: f32,
    /// Each weighted term's value.
    pub terms: Vec<(String, f32)>,
    /// The activations the loss (and `extra_taps`) read, detached.
    pub activations: Activations,
}

/// One optimisation step on a batch in training mode; `extra_taps` are
/// returned as well (e.g. the logits for accuracy).
pub fn train_step(
    model: &Model,
    loss: &Loss,
    opt: &mut dyn Optimizer,
    batch: &Batch,
    extra_taps: &[&str],
) -> Result<StepOutput> {
    let mut taps = loss.taps();
    taps.extend(extra_taps.iter().filter(|t| !loss.taps().contains(t)));
    let acts = model.run(&[batch.inputs.clone()], &taps, RunOptions::training())?;
    let targets = Targets {
        labels: batch.labels.as_ref(),
        values: batch.values.as_ref(),
    };
    let (total, terms) = loss.compute(&acts, targets)?;
    let grads = total.backward()?;
    opt.step(&model.params().grads(&grads))?;
    let loss = total.to_scalar::<f32>()?;
    let activations = Activations::from_pairs(
        acts.into_vec()
            .into_iter()
            .map(|(n, t)| (n, t.detach()))
            .collect(),
    );
    Ok(StepOutput {
        loss,
        terms,
        activations,
    })
}

const LAST: &str = "last.safetensors";
const BEST: &str = "best.safetensors";

fn save_checkpoint(
    path: &Path,
    model: &Model,
    opt: &dyn Optimizer,
    history: &History,
) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (k, p) in model.params().iter() {
        tensors.insert(format!("param.{k}"), p.var.as_detached_tensor());
    }
    for (k, t) in opt.state()? {
        tensors.insert(format!("optim.{k}"), t);
    }
    let hist =
        serde_json::to_string(history).map_err(|e| Error::invalid("checkpoint", e.to_string()))?;
    tensors.insert(
        "history".into(),
        Tensor::new(hist.as_bytes(), &candle_core::Device::Cpu)?,
    );
    layerlens_core::fsio::write_atomic_with(path, |tmp| {
        candle_core::safetensors::save(&tensors, tmp).map_err(|e| Error::Format {
            path: tmp.display().to_string(),
            message: e.to_string(),
        })
    })
}

/// Restores parameters and optimiser state from a checkpoint written by `fit`;
/// returns the history it recorded.
pub fn load_checkpoint(path: &Path, model: &Model, opt: &mut dyn Optimizer) -> Result<History> {
    let bad = |m: String| Error::Format {
        path: path.display().to_string(),
        message: m,
    };
    let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .map_err(|e| bad(e.to_string()))?;
    for (k, _) in model.params().iter() {
        let t = tensors
            .get(&format!("param.{k}"))
            .ok_or_else(|| bad(format!("no tensor for parameter '{k}'")))?;
        model.params().set(k, t).map_err(|e| bad(e.to_string()))?;
    }
    let state: HashMap<String, Tensor> = tensors
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("optim.").map(|k| (k.to_string(), v.clone())))
        .collect();
    opt.load_state(&state)?;
    let hist = tensors
        .get("history")
        .ok_or_else(|| bad("no training history".into()))?
        .to_vec1::<u8>()?;
    serde_json::from_slice(&hist).map_err(|e| bad(format!("bad training history: {e}")))
}

fn improved(m: Monitor, best: Option<f64>, now: f64, min_delta: f64) -> bool {
    match (m, best) {
        (_, None) => true,
        (Monitor::ValLoss, Some(b)) => now < b - min_delta,
        (Monitor::ValAccuracy, Some(b)) => now > b + min_delta,
    }
}

/// Trains `model` on `train`, evaluating on `val` after every epoch.
pub fn fit(
    model: &Model,
    loss: &Loss,
    opt: &mut dyn Optimizer,
    train: &dyn Dataset,
    val: Option<&dyn Dataset>,
    cfg: &FitConfig,
) -> Result<History> {
    if train.is_empty() {
        return Err(Error::invalid("fit", "the training set is empty"));
    }
    if cfg.batch_size == 0 {
        return Err(Error::invalid("fit", "batch_size must be at least 1"));
    }
    let acc = cfg.accuracy_node.as_deref();
    if let Some(a) = acc {
        model.graph().find(a)?;
    }
    for t in loss.taps() {
        model.graph().find(t)?;
    }
    let base_lr = opt.lr();
    let mut history = History::default();
    if let (true, Some(dir)) = (cfg.resume, &cfg.checkpoint_dir) {
        let last = dir.join(LAST);
        if last.exists() {
            history = load_checkpoint(&last, model, opt)?;
        }
    }
    if let Some(dir) = &cfg.checkpoint_dir {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let monitor_of = |s: &EpochStats, m: Monitor| match m {
        Monitor::ValLoss => s.val_loss,
        Monitor::ValAccuracy => s.val_accuracy,
    };
    let monitor = cfg
        .early_stopping
        .map(|e| e.monitor)
        .unwrap_or(Monitor::ValLoss);
    let mut best: Option<f64> = None;
    let mut since_best = 0usize;
    for s in &history.epochs {
        if let Some(v) = monitor_of(s, monitor) {
            let d = cfg.early_stopping.map_or(0.0, |e| e.min_delta);
            if improved(monitor, best, v, d) {
                best = Some(v);
                since_best = 0;
            } else {
                since_best += 1;
            }
        }
    }
    let mut order: Vec<usize> = (0..train.len()).collect();
    for epoch in history.epochs.len()..cfg.epochs {
        let lr = cfg.schedule.lr(base_lr, epoch);
        opt.set_lr(lr);
        if cfg.shuffle {
            // A per-epoch seed makes a resumed run draw the same batches as an uninterrupted one.
            let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed.wrapping_add(epoch as u64));
            order = (0..train.len()).collect();
            order.shuffle(&mut rng);
        }
        let steps = order.len().div_ceil(cfg.batch_size);
        let bar = if cfg.progress {
            let b = indicatif::ProgressBar::new(steps as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} {bar:30} {pos}/{len} [{elapsed}<{eta}] {msg}",
                )
                .expect("valid template"),
            );
            b.set_prefix(format!("{}/{}", epoch + 1, cfg.epochs));
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        let (mut sum_loss, mut right, mut seen) = (0f64, 0usize, 0usize);
        for chunk in order.chunks(cfg.batch_size) {
            let batch = train.batch(chunk)?;
            let out = train_step(model, loss, opt, &batch, acc.as_slice())?;
            let l = out.loss as f64;
            if !l.is_finite() {
                return Err(Error::invalid(
                    "fit",
                    format!("the loss became {l} at epoch {epoch}; lower the learning rate"),
                ));
            }
            sum_loss += l * chunk.len() as f64;
            if let (Some(a), Some(y)) = (acc, &batch.labels) {
                right += correct(out.activations.get(a)?, y)?;
            }
            seen += chunk.len();
            bar.inc(1);
            let acc_msg = acc
                .map(|_| format!(" acc {:.4}", right as f64 / seen as f64))
                .unwrap_or_default();
            bar.set_message(format!("loss {:.4}{acc_msg}", sum_loss / seen as f64));
        }
        let v = match val {
            Some(v) => Some(evaluate(model, loss, v, cfg.batch_size, acc)?),
            None => None,
        };
        let stats = EpochStats {
            epoch,
            lr,
            loss: sum_loss / seen as f64,
            accuracy: acc.map(|_| right as f64 / seen as f64),
            val_loss: v.map(|v| v.loss),
            val_accuracy: v.and_then(|v| v.accuracy),
        };
        bar.finish_with_message(format!(
            "loss {:.4}{}{}",
            stats.loss,
            stats
                .val_loss
                .map(|l| format!(" val_loss {l:.4}"))
                .unwrap_or_default(),
            stats
                .val_accuracy
                .map(|a| format!(" val_acc {a:.4}"))
                .unwrap_or_default()
        ));
        let now = monitor_of(&stats, monitor);
        history.epochs.push(stats);
        let mut is_best = false;
        if let Some(now) = now {
            let d = cfg.early_stopping.map_or(0.0, |e| e.min_delta);
            if improved(monitor, best, now, d) {
                best = Some(now);
                since_best = 0;
                is_best = true;
            } else {
                since_best += 1;
            }
        }
        if let Some(dir) = &cfg.checkpoint_dir {
            save_checkpoint(&dir.join(LAST), model, opt, &history)?;
            if is_best {
                save_checkpoint(&dir.join(BEST), model, opt, &history)?;
            }
        }
        if let Some(es) = cfg.early_stopping {
            if since_best >= es.patience {
                history.stopped_early = true;
                break;
            }
        }
    }
    Ok(history)
}
