//! The fit loop on real (embedded) Fashion-MNIST: it learns, resumes exactly,
//! stops early, and leaves frozen layers alone.

use layerlens_core::prelude::*;
use layerlens_train::data::{embedded_fashion_mnist, Split};
use layerlens_train::fit::{evaluate, fit, EarlyStopping, FitConfig, Monitor};
use layerlens_train::loss::Loss;
use layerlens_train::optim::{Adam, LrSchedule};

fn seed_cnn(seed: u64) -> Model {
    layerlens_core::zoo::seed_cnn_seeded(false, seed).unwrap()
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

#[test]
fn auxiliary_heads_and_regression_targets() {
    // Deep supervision: an auxiliary classifier on the first conv block trains with the main one.
    let mut g = Functional::new("aux").seed(4);
    let x = g.input("input", [1, 28, 28]).unwrap();
    let c1 = g
        .add(Conv2d::new(8, 3).activation(Activation::Relu), &[x])
        .unwrap();
    let p1 = g.add(Pool2d::max(2), &[c1]).unwrap();
    let aux = g.add(GlobalAvgPool::default(), &[p1]).unwrap();
    let aux = g.add_as("aux_head", Dense::new(10), &[aux]).unwrap();
    let c2 = g
        .add(Conv2d::new(16, 3).activation(Activation::Relu), &[p1])
        .unwrap();
    let f = g.add(GlobalAvgPool::default(), &[c2]).unwrap();
    let main = g.add_as("head", Dense::new(10), &[f]).unwrap();
    let m = g.build(&[main, aux]).unwrap();
    let data = embedded_fashion_mnist(Split::Train)
        .unwrap()
        .take(256)
        .unwrap();
    let loss = Loss::cross_entropy("head")
        + 0.3 * Loss::cross_entropy("aux_head")
        + 1e-3 * Loss::activity_l2("conv2d");
    let aux_before = m
        .params()
        .tensor("aux_head.weight")
        .unwrap()
        .copy()
        .unwrap();
    let mut opt = Adam::new(m.params(), 3e-3);
    let h = fit(
        &m,
        &loss,
        &mut opt,
        &data,
        None,
        &FitConfig {
            accuracy_node: Some("head".into()),
            ..cfg(3)
        },
    )
    .unwrap();
    assert!(h.epochs[2].loss < h.epochs[0].loss, "{h:?}");
    let moved = (m.params().tensor("aux_head.weight").unwrap() - aux_before)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(
        moved.to_scalar::<f32>().unwrap() > 0.0,
        "the auxiliary head is trained"
    );

    // Regression targets reach an MSE term: fit y = 2x with one dense unit.
    let mut g = Functional::new("lin");
    let i = g.input("input", [1]).unwrap();
    let d = g.add_as("out", Dense::new(1), &[i]).unwrap();
    let lin = g.build(&[d]).unwrap();
    let xs = Tensor::arange(0f32, 32.0, &Device::Cpu)
        .unwrap()
        .reshape((32, 1))
        .unwrap();
    let xs = (xs / 32.0).unwrap();
    let data = layerlens_train::data::Regression {
        inputs: xs.clone(),
        targets: (&xs * 2.0).unwrap(),
    };
    let mut opt = layerlens_train::optim::Sgd::new(lin.params(), 0.5).momentum(0.9);
    let c = FitConfig {
        batch_size: 8,
        accuracy_node: None,
        ..cfg(60)
    };
    let h = fit(&lin, &Loss::mse("out"), &mut opt, &data, None, &c).unwrap();
    assert!(
        h.epochs.last().unwrap().loss < 1e-3,
        "{:?}",
        h.epochs.last()
    );
}

#[test]
fn image_folder_dataset_reads_png_and_jpeg_by_class() {
    let root = std::env::temp_dir().join(format!("layerlens-folder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for (class, shade) in [("bright", 230u8), ("dark", 20u8)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for k in 0..3 {
            let img = image::RgbImage::from_pixel(40, 30, image::Rgb([shade, shade, shade]));
            let ext = if k == 0 { "jpg" } else { "png" };
            img.save(root.join(class).join(format!("{k}.{ext}")))
                .unwrap();
        }
    }
    std::fs::write(root.join("dark").join("notes.txt"), "ignored").unwrap();
    let ds = layerlens_train::data::ImageFolder::open(&root, 1, (28, 28)).unwrap();
    use layerlens_train::data::Dataset;
    assert_eq!(ds.classes, ["bright", "dark"]);
    assert_eq!(ds.len(), 6);
    let b = ds.batch(&[0, 5]).unwrap();
    assert_eq!(b.inputs.dims(), &[2, 1, 28, 28]);
    assert_eq!(b.labels.unwrap().to_vec1::<u32>().unwrap(), [0, 1]);
    let mean: Vec<f32> = b.inputs.mean((1, 2, 3)).unwrap().to_vec1().unwrap();
    assert!(mean[0] > 0.85 && mean[1] < 0.15, "{mean:?}");
    // A corrupt image names the file.
    std::fs::write(root.join("dark").join("9.png"), b"not a png").unwrap();
    let ds = layerlens_train::data::ImageFolder::open(&root, 3, (8, 8)).unwrap();
    let e = ds.batch(&[6]).unwrap_err().to_string();
    assert!(
        e.contains("9.png") && e.contains("cannot decode image"),
        "{e}"
    );
    std::fs::remove_dir_all(root).unwrap();
}
