//! The fit loop on real (embedded) Fashion-MNIST: it learns, resumes exactly,
//! stops early, and leaves frozen layers alone.

use layerlens_core::prelude::*;
use layerlens_train::data::{embedded_fashion_mnist, Split};
use layerlens_train::fit::{evaluate, fit, EarlyStopping, FitConfig, Monitor};
use layerlens_train::loss::Loss;
use layerlens_train::optim::{Adam, LrSchedule};

fn seed_cnn(seed: u64) -> Model {
    Sequential::from_functional(Functional::new("seed_cnn").seed(seed), [1, 28, 28])
        .add(Conv2d::new(32, 3).activation(Activation::Relu))
        .unwrap()
        .add(Pool2d::max(2))
        .unwrap()
        .add(Conv2d::new(64, 3).activation(Activation::Relu))
        .unwrap()
        .add(Pool2d::max(2))
        .unwrap()
        .add(Flatten)
        .unwrap()
        .add(Dense::new(10))
        .unwrap()
        .build()
        .unwrap()
}

fn cfg(epochs: usize) -> FitConfig {
    FitConfig {
        epochs,
        batch_size: 64,
        seed: 1,
        accuracy_node: Some("dense".into()),
        progress: false,
        ..Default::default()
    }
}

fn params_vec(m: &Model) -> Vec<f32> {
    m.params()
        .iter()
        .flat_map(|(_, p)| p.var.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

#[test]
fn learns_fashion_mnist_with_an_activation_penalty() {
    let train = embedded_fashion_mnist(Split::Train).unwrap();
    let test = embedded_fashion_mnist(Split::Test).unwrap();
    let m = seed_cnn(0);
    let loss = Loss::cross_entropy("dense") + 0.1 * Loss::mean_square("conv2d");
    let before = evaluate(&m, &loss, &test, 250, Some("dense")).unwrap();
    let mut opt = Adam::new(m.params(), 2e-3);
    let h = fit(&m, &loss, &mut opt, &train, Some(&test), &cfg(3)).unwrap();
    assert_eq!(h.epochs.len(), 3);
    let last = h.epochs.last().unwrap();
    // 2000 training images, 3 epochs: chance is 10 %.
    assert!(last.val_accuracy.unwrap() > 0.70, "{h:?}");
    assert!(
        last.val_loss.unwrap() < before.loss * 0.6,
        "{h:?} vs {before:?}"
    );
    assert!(h.epochs[2].loss < h.epochs[0].loss);
}

#[test]
fn resuming_from_a_checkpoint_equals_an_uninterrupted_run() {
    let data = embedded_fashion_mnist(Split::Train)
        .unwrap()
        .take(256)
        .unwrap();
    let loss = Loss::cross_entropy("dense");
    let dir = std::env::temp_dir().join(format!("layerlens-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    let full = seed_cnn(5);
    let mut opt = Adam::new(full.params(), 1e-3);
    let schedule = LrSchedule::Step {
        step_size: 1,
        gamma: 0.5,
    };
    fit(
        &full,
        &loss,
        &mut opt,
        &data,
        None,
        &FitConfig { schedule, ..cfg(3) },
    )
    .unwrap();

    // Killed after epoch 1 (only its checkpoint survives), then resumed in a new process.
    let part = seed_cnn(5);
    let mut opt = Adam::new(part.params(), 1e-3);
    let c = FitConfig {
        schedule,
        checkpoint_dir: Some(dir.clone()),
        ..cfg(1)
    };
    fit(&part, &loss, &mut opt, &data, None, &c).unwrap();
    let resumed = seed_cnn(99); // different initial weights: the checkpoint must overwrite them
    let mut opt = Adam::new(resumed.params(), 1e-3);
    let h = fit(
        &resumed,
        &loss,
        &mut opt,
        &data,
        None,
        &FitConfig {
            epochs: 3,
            resume: true,
            ..c
        },
    )
    .unwrap();
    assert_eq!(h.epochs.len(), 3);
    assert!(
        (h.epochs[2].lr - 0.25e-3).abs() < 1e-12,
        "schedule continues: {h:?}"
    );
    let (a, b) = (params_vec(&full), params_vec(&resumed));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-6, "resumed weights differ by {worst}");
    assert!(dir.join("last.safetensors").exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn early_stopping_and_frozen_layers() {
    let data = embedded_fashion_mnist(Split::Train)
        .unwrap()
        .take(128)
        .unwrap();
    let mut m = seed_cnn(2);
    m.set_trainable("conv2d*", false).unwrap();
    let conv_before = m.params().tensor("conv2d.weight").unwrap().copy().unwrap();
    let dense_before = m.params().tensor("dense.weight").unwrap().copy().unwrap();
    let loss = Loss::cross_entropy("dense");
    let mut opt = Adam::new(m.params(), 1e-3);
    let es = EarlyStopping {
        monitor: Monitor::ValAccuracy,
        patience: 1,
        min_delta: 10.0,
    };
    let h = fit(
        &m,
        &loss,
        &mut opt,
        &data,
        Some(&data),
        &FitConfig {
            early_stopping: Some(es),
            ..cfg(5)
        },
    )
    .unwrap();
    assert!(h.stopped_early);
    assert_eq!(
        h.epochs.len(),
        2,
        "no epoch can improve by 10, so it stops after patience 1"
    );
    let same = |a: &Tensor, b: &Tensor| {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(
        same(&m.params().tensor("conv2d.weight").unwrap(), &conv_before),
        0.0,
        "frozen layer untouched"
    );
    assert!(
        same(&m.params().tensor("dense.weight").unwrap(), &dense_before) > 0.0,
        "trainable layer trained"
    );
}

#[test]
fn bad_training_input_is_a_clear_error() {
    let data = embedded_fashion_mnist(Split::Train)
        .unwrap()
        .take(8)
        .unwrap();
    let m = seed_cnn(0);
    let mut opt = Adam::new(m.params(), 1e-3);
    let e = fit(
        &m,
        &Loss::cross_entropy("dense_1"),
        &mut opt,
        &data,
        None,
        &cfg(1),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("unknown node 'dense_1'; did you mean 'dense'"),
        "{e}"
    );
    let e = fit(
        &m,
        &Loss::cross_entropy("conv2d"),
        &mut opt,
        &data,
        None,
        &cfg(1),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("expects (N, classes) predictions"), "{e}");
}
