//! `layerlens demo`: the main job on embedded data, end to end.

use super::write_atomic;
use anyhow::{bail, Context, Result};
use layerlens::data::{embedded_fashion_mnist, Split, FASHION_CLASSES};
use layerlens::extract::OutputFormat;
use layerlens::lambda::{L2Normalize, Reduce};
use layerlens::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Runs the main job on embedded data: build the seed CNN, tap two conv layers,
/// apply Lambdas, save and reload everything into ./demo-out.
///
/// Example: layerlens demo --out demo-out
#[derive(clap::Args)]
pub struct Args {
    /// Output directory.
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
}

/// Runs the demo.
pub fn run(a: &Args) -> Result<()> {
    let out = a.out.as_path();
    super::keep_freed_memory_for_reuse();
    use layerlens::train::{fit, loss::Loss, optim::Adam};
    use layerlens::viz::cam::{cam, overlay, to_rgb_image, CamMethod, CamOptions};
    use layerlens::viz::grid::{feature_grid, save_png, GridOptions};
    use layerlens::viz::report::{html_report, ReportOptions};
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let train = embedded_fashion_mnist(Split::Train)?;
    let test = embedded_fashion_mnist(Split::Test)?;

    // 0. Train the seed CNN (logits head) on the embedded 2 000 real images, with
    //    seed 002's extra loss on the first convolution's activations.
    let model = layerlens::zoo::seed_cnn(false)?;
    println!("{}\n", model.summary());
    let loss = Loss::cross_entropy("dense") + 0.1 * Loss::mean_square("conv2d");
    let mut opt = Adam::new(model.params(), 2e-3);
    let cfg = fit::FitConfig {
        epochs: 3,
        accuracy_node: Some("dense".into()),
        progress: false,
        ..Default::default()
    };
    let start = std::time::Instant::now();
    let history = fit::fit(&model, &loss, &mut opt, &train, Some(&test), &cfg)?;
    let last = history.epochs.last().context("no epoch ran")?;
    println!(
        "Trained 3 epochs on 2 000 Fashion-MNIST images in {:.1} s: test accuracy {:.1} % on 500 held-out images",
        start.elapsed().as_secs_f64(),
        100.0 * last.val_accuracy.unwrap_or(0.0)
    );

    model.save(out.join("seed-cnn"))?;
    let x = test.images.narrow(0, 0, 8)?;
    let labels: Vec<&str> = test.labels[..8]
        .iter()
        .map(|&l| FASHION_CLASSES[l as usize])
        .collect();
    println!(
        "Input: 8 real Fashion-MNIST test images ({})",
        labels.join(", ")
    );

    // 1. Two intermediate layers from one forward pass that stops at conv2d_1.
    let acts = model.extract(&x, &["conv2d", "conv2d_1"])?;
    for (name, t) in acts.iter() {
        println!("  extract {name:<9} -> {:?}", t.dims());
    }
    // 2. Lambdas on them, as a new model sharing the weights (seed 000 ex. 1 and 3).
    let mut g = Functional::extend(&model);
    let conv = g.get("conv2d")?;
    let conv1 = g.get("conv2d_1")?;
    let mean = g.lambda_as("conv2d_mean", Reduce::mean([2, 3]), &[conv], &[])?;
    let mean1 = g.lambda_as("conv2d_1_mean", Reduce::mean([2, 3]), &[conv1], &[])?;
    let both = g.add_as("concat", Concat::default(), &[mean, mean1])?;
    let emb = g.lambda_as("embedding", L2Normalize::new(1), &[both], &[])?;
    let features = g.build(&[emb, mean, mean1])?;
    let f = features.forward(&[x.clone()])?;
    println!(
        "  lambda  embedding (spatial means of both, concatenated, L2-normalised) -> {:?}",
        f[0].dims()
    );

    // 3. Save everything; reload it and check nothing changed.
    let model_dir = out.join("features-model");
    features.save(&model_dir)?;
    let back = Model::load(&model_dir, &Device::Cpu)?;
    let again = back.forward(&[x.clone()])?;
    let diff = (&f[0] - &again[0])?.abs()?.max_all()?.to_scalar::<f32>()?;
    if diff != 0.0 {
        bail!("reloaded model differs from the saved one by {diff}");
    }
    let mut tensors: HashMap<String, Tensor> = acts.clone().into_vec().into_iter().collect();
    tensors.insert("embedding".into(), f[0].clone());
    tensors.insert("input".into(), x.clone());
    let act_path = out.join("activations.safetensors");
    write_safetensors_atomic(
        &act_path,
        &tensors,
        HashMap::from([("labels".into(), labels.join(","))]),
    )?;
    let summary_path = out.join("summary.txt");
    write_atomic(
        &summary_path,
        format!("{}\n\n{}\n", model.summary(), features.summary()).as_bytes(),
    )?;

    // 4. Pictures: both conv layers' feature maps for the first image, a Grad-CAM, a report.
    let first = x.narrow(0, 0, 1)?;
    for name in ["conv2d", "conv2d_1"] {
        let opts = GridOptions {
            activation: Some(Activation::Relu),
            title: Some(format!("{name} on a {}", labels[0])),
            ..Default::default()
        };
        save_png(
            &feature_grid(&acts.get(name)?.narrow(0, 0, 1)?, &opts)?,
            out.join(format!("{name}.png")),
        )?;
    }
    let picture = image::imageops::resize(
        &to_rgb_image(&first)?,
        224,
        224,
        image::imageops::FilterType::Nearest,
    );
    // Grad-CAM++: plain Grad-CAM is zero everywhere on this small net (all weighted sums negative).
    let c = cam(
        &model,
        &first,
        &CamOptions::new(CamMethod::GradCamPlusPlus, "conv2d_1"),
    )?
    .remove(0);
    let heat = c
        .heatmap
        .unsqueeze(0)?
        .unsqueeze(0)?
        .upsample_nearest2d(224, 224)?
        .squeeze(0)?
        .squeeze(0)?;
    save_png(
        &overlay(&picture, &heat, layerlens::viz::Colormap::Inferno, 0.5)?,
        out.join("cam.png"),
    )?;
    let report = ReportOptions {
        title: format!("seed CNN on a Fashion-MNIST {}", labels[0]),
        cam: Some(CamOptions::new(CamMethod::GradCamPlusPlus, "conv2d_1")),
        class_names: Some(FASHION_CLASSES.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    };
    let html = html_report(&model, &first, Some(&to_rgb_image(&first)?), &report)?;
    write_atomic(&out.join("report.html"), html.as_bytes())?;

    println!("\nWrote into {}:", out.display());
    println!("  conv2d.png, conv2d_1.png   feature maps of the first image, one tile per channel");
    println!(
        "  cam.png                    Grad-CAM++ over conv2d_1 for the predicted class ({})",
        FASHION_CLASSES[c.class]
    );
    println!("  report.html                summary, CAM, grids, statistics and histograms; open it in any browser, offline");
    println!("  activations.safetensors    input, conv2d, conv2d_1 and embedding tensors (safetensors in Python or Rust)");
    println!("  seed-cnn/                  the trained seed CNN (model.json + model.safetensors)");
    println!("  features-model/            the Lambda model (model.json + model.safetensors), reloaded and verified");
    println!("  summary.txt                both models' summaries");
    println!("\nNext: layerlens report zoo:seed_cnn --input some.png --out report.html   (layerlens --help for all commands)");
    Ok(())
}

fn write_safetensors_atomic(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    meta: HashMap<String, String>,
) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let named: Vec<(String, Tensor)> = names
        .into_iter()
        .map(|n| (n.clone(), tensors[n].clone()))
        .collect();
    layerlens::extract::write_tensors(
        path,
        OutputFormat::Safetensors,
        &named,
        &[],
        &meta.into_iter().collect(),
    )?;
    Ok(())
}
