//! The `layerlens` command line: a thin layer over the `layerlens` library.

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use layerlens::data::{embedded_fashion_mnist, Split, FASHION_CLASSES};
use layerlens::extract::OutputFormat;
use layerlens::lambda::{CustomOp, L2Normalize, Reduce};
use layerlens::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Training allocates and frees the same large buffers every step. glibc's
/// defaults give blocks above a (dynamic) threshold their own mmap and trim
/// the heap's free top, so each step faulted its buffers in again: the demo's
/// 3 epochs took 6.0 s instead of 4.0 s (docs/performance.md). For training,
/// freed memory stays in the heap for reuse; extraction keeps the defaults,
/// which hand memory back and keep a long run's RSS flat.
fn keep_freed_memory_for_reuse() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before training
    // starts, on the main thread.
    unsafe {
        // 32 MiB is the largest mmap threshold glibc accepts on 64-bit.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}

#[derive(Parser)]
#[command(
    name = "layerlens",
    version,
    about = "Every intermediate layer of a CNN as a first-class output"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the main job on embedded data: build the seed CNN, tap two conv layers,
    /// apply Lambdas, save and reload everything into ./demo-out.
    ///
    /// Example: layerlens demo --out demo-out
    Demo {
        /// Output directory.
        #[arg(long, default_value = "demo-out")]
        out: PathBuf,
    },
    /// Prints every node: name, op, output shape, parameters and MACs.
    ///
    /// Example: layerlens summary zoo:seed_cnn
    Summary {
        /// An .onnx file, a saved layerlens model directory, or zoo:NAME[=WEIGHTS.pth].
        model: String,
    },
    /// Trains a model with cross-entropy on its output plus optional mean-square
    /// penalties on intermediate activations, and saves it.
    ///
    /// Example: layerlens train zoo:seed_cnn --data fashion-mnist --epochs 3 --aux conv2d=0.1 --out trained
    Train {
        /// An .onnx file, a saved layerlens model directory, or zoo:NAME[=WEIGHTS.pth].
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
        /// adam, adamw or sgd (momentum 0.9).
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
    },
    /// Draws the feature maps of one layer for one image as a PNG grid.
    ///
    /// Example: layerlens show zoo:efficientnet_lite0=lite0.pth --input cat.png --preprocess efficientnet-lite --layer _blocks.1 --top 16 --out grid.png
    Show {
        /// An .onnx file, a saved layerlens model directory, or zoo:NAME[=WEIGHTS.pth].
        model: String,
        /// An image (png, jpg), or a .npy / .safetensors tensor.
        #[arg(long)]
        input: String,
        /// The layer (node name).
        #[arg(long)]
        layer: String,
        /// Output PNG.
        #[arg(long)]
        out: PathBuf,
        /// Only the K channels with the highest mean activation.
        #[arg(long)]
        top: Option<usize>,
        /// gray, viridis, magma, inferno or rdbu (default: gray, rdbu for signed maps).
        #[arg(long)]
        cmap: Option<String>,
        /// auto (from the layer's activation), channel, shared.
        #[arg(long, default_value = "auto")]
        norm: String,
        /// Image preprocessing: unit ([0, 1]), imagenet, efficientnet-lite.
        #[arg(long, default_value = "unit")]
        preprocess: String,
    },
    /// Draws a class activation map over the input image.
    ///
    /// Example: layerlens cam zoo:efficientnet_lite0=lite0.pth --input cat.png --preprocess efficientnet-lite --layer _relu1 --method gradcam++ --out cam.png
    Cam {
        /// An .onnx file, a saved layerlens model directory, or zoo:NAME[=WEIGHTS.pth].
        model: String,
        /// An image (png, jpg).
        #[arg(long)]
        input: String,
        /// The layer whose activations are weighted (usually the last conv block).
        #[arg(long)]
        layer: String,
        /// The class to explain (default: the top prediction).
        #[arg(long)]
        class: Option<usize>,
        /// gradcam, gradcam++, scorecam, eigencam or layercam.
        #[arg(long, default_value = "gradcam")]
        method: String,
        /// Heat-map opacity.
        #[arg(long, default_value_t = 0.5)]
        alpha: f32,
        /// Image preprocessing: unit, imagenet, efficientnet-lite.
        #[arg(long, default_value = "unit")]
        preprocess: String,
        /// Output PNG.
        #[arg(long)]
        out: PathBuf,
    },
    /// Writes a self-contained HTML report: summary, Grad-CAM++, and per layer the
    /// feature maps, statistics and a histogram.
    ///
    /// Example: layerlens report zoo:seed_cnn --input boot.png --out report.html
    Report {
        /// An .onnx file, a saved layerlens model directory, or zoo:NAME[=WEIGHTS.pth].
        model: String,
        /// An image (png, jpg), or a .npy / .safetensors tensor.
        #[arg(long)]
        input: String,
        /// Comma-separated layers (default: up to 8 spread over the depth).
        #[arg(long)]
        layers: Option<String>,
        /// Image preprocessing: unit, imagenet, efficientnet-lite.
        #[arg(long, default_value = "unit")]
        preprocess: String,
        /// Output HTML file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Extracts activations of chosen layers (tensors named by node name), into one
    /// file or, streaming over whole datasets, into a directory of shards.
    ///
    /// --out with an extension (.safetensors, .npz, .npy, .parquet) writes one file,
    /// computed in memory. --out without one is a directory: inputs stream through
    /// the model (decoded in parallel, memory bounded) into shards written atomically,
    /// with run.json, one shard-NNNNN.json index per shard and, once all is done,
    /// manifest.jsonl (each input's path, shard file and row, or why it was skipped).
    ///
    /// Example: layerlens extract zoo:seed_cnn --input embedded:fashion-mnist-test --layers 'conv2d*' --apply mean --out feats.safetensors
    ///
    /// Example: layerlens extract model.onnx --input photos/ --layers 'layer*' --preprocess imagenet --out feats/ --shard 2/8 --resume
    Extract(ExtractArgs),
}

/// The version line: the crate version and the kernels' instruction-set path
/// (what `LAYERLENS_ISA` chose, or the best the CPU has).
fn version() -> String {
    use layerlens::kernels::isa::{self, Isa};
    format!(
        "{} (kernels: {}; CPU supports: {})",
        env!("CARGO_PKG_VERSION"),
        isa::process_isa(),
        Isa::supported()
            .iter()
            .map(|i| i.name())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn main() {
    // A kernel path the CPU lacks (or a typo) is refused before anything runs.
    if let Err(e) = layerlens::kernels::isa::Isa::from_env() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    // clap takes a 'static version string; this one is built once per process.
    let version: &'static str = Box::leak(version().into_boxed_str());
    let matches = Cli::command().version(version).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let r = match cli.command {
        Command::Demo { out } => demo(&out),
        Command::Summary { model } => load_model(&model).map(|m| println!("{}", m.summary())),
        Command::Extract(args) => extract(&args),
        Command::Show {
            model,
            input,
            layer,
            out,
            top,
            cmap,
            norm,
            preprocess,
        } => show(
            &model,
            &input,
            &layer,
            &out,
            top,
            cmap.as_deref(),
            &norm,
            &preprocess,
        ),
        Command::Cam {
            model,
            input,
            layer,
            class,
            method,
            alpha,
            preprocess,
            out,
        } => cam_cmd(
            &model,
            &input,
            &layer,
            class,
            &method,
            alpha,
            &preprocess,
            &out,
        ),
        Command::Report {
            model,
            input,
            layers,
            preprocess,
            out,
        } => report_cmd(&model, &input, layers.as_deref(), &preprocess, &out),
        Command::Train {
            model,
            data,
            epochs,
            batch,
            lr,
            optimizer,
            aux,
            checkpoints,
            resume,
            out,
        } => train(&TrainArgs {
            model,
            data,
            epochs,
            batch,
            lr,
            optimizer,
            aux,
            checkpoints,
            resume,
            out,
        }),
    };
    if let Err(e) = r {
        // One line, the whole chain of causes.
        eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
}

/// MODEL arguments: `zoo:NAME[=WEIGHTS]`, an `.onnx` file, or a saved model directory.
fn load_model(spec: &str) -> Result<Model> {
    if let Some(rest) = spec.strip_prefix("zoo:") {
        let (name, weights) = match rest.split_once('=') {
            Some((n, w)) => (n, Some(w)),
            None => (rest, None),
        };
        let model = match name {
            "seed_cnn" => layerlens::zoo::seed_cnn(true)?,
            "resnet18" => layerlens::zoo::resnet18(1000)?,
            "vgg16" => layerlens::zoo::vgg16(true, 1000)?,
            "vgg16_notop" => layerlens::zoo::vgg16(false, 1000)?,
            "efficientnet_lite0" => layerlens::zoo::efficientnet_lite0(1000)?,
            other => bail!("unknown zoo model '{other}' (available: seed_cnn, resnet18, vgg16, vgg16_notop, efficientnet_lite0)"),
        };
        if let Some(w) = weights {
            layerlens::weights::load_weights(&model, w)?;
        }
        return Ok(model);
    }
    let path = Path::new(spec);
    if path.extension().is_some_and(|e| e == "onnx") {
        return Ok(layerlens::onnx::import(path)?);
    }
    if !path.is_dir() {
        bail!("{spec}: not an .onnx file, a saved layerlens model directory (with model.json) or zoo:NAME[=WEIGHTS]");
    }
    Ok(Model::load(path, &Device::Cpu)?)
}

/// A tensor input (or one image) as a batch, with a label per row.
fn load_inputs(spec: &str, model: &Model, preset: &str) -> Result<(Tensor, Vec<String>)> {
    let rows = |t: &Tensor| -> Result<Vec<String>> {
        Ok((0..t.dim(0)?).map(|i| format!("{spec}[{i}]")).collect())
    };
    match spec {
        "embedded:fashion-mnist-test" | "embedded:fashion-mnist-train" => {
            let split = if spec.ends_with("test") {
                Split::Test
            } else {
                Split::Train
            };
            let t = embedded_fashion_mnist(split)?.images;
            let r = rows(&t)?;
            return Ok((t, r));
        }
        _ => {}
    }
    let path = Path::new(spec);
    let t = match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => layerlens::npy::read_npy(path)?,
        Some("safetensors") => layerlens::extract::read_safetensors_input(path)?,
        _ if layerlens::extract::is_image_file(path) => {
            let x = load_picture(path, model, preset)?.0;
            return Ok((x, vec![spec.to_string()]));
        }
        _ if path.is_dir() => bail!(
            "{spec} is a directory: directories stream into a directory of shards, so give --out a directory (no file extension)"
        ),
        _ => bail!(
            "{spec}: unsupported input (use .png, .jpg, a directory, .npy, .safetensors or embedded:fashion-mnist-test)"
        ),
    };
    let t = t.to_dtype(DType::F32)?;
    let r = rows(&t)?;
    Ok((t, r))
}

fn builtin_lambda(name: &str, rank: usize) -> Result<Box<dyn Fn() -> Box<dyn CustomOpBox>>> {
    let _ = rank;
    Ok(match name {
        "mean" => Box::new(|| Box::new(Reduce::mean([2, 3])) as Box<dyn CustomOpBox>),
        "max" => Box::new(|| Box::new(Reduce::max([2, 3])) as Box<dyn CustomOpBox>),
        "l2_normalize" => Box::new(|| Box::new(L2Normalize::new(1)) as Box<dyn CustomOpBox>),
        "flatten" => Box::new(|| Box::new(Flatten) as Box<dyn CustomOpBox>),
        other => {
            bail!("unknown --apply Lambda '{other}' (available: mean, max, l2_normalize, flatten)")
        }
    })
}

/// Object-safe adapter so the CLI can pick a built-in Lambda at run time.
trait CustomOpBox {
    fn add_to(
        self: Box<Self>,
        g: &mut Functional,
        name: &str,
        input: NodeRef,
    ) -> layerlens::Result<NodeRef>;
}

impl<T: CustomOp + 'static> CustomOpBox for T {
    fn add_to(
        self: Box<Self>,
        g: &mut Functional,
        name: &str,
        input: NodeRef,
    ) -> layerlens::Result<NodeRef> {
        g.lambda_as(name, *self, &[input], &[])
    }
}

/// The model whose outputs are the selected nodes, each passed through `apply`.
fn extraction_model(
    model: &Model,
    layers: &str,
    apply: Option<&str>,
) -> Result<(Model, Vec<String>)> {
    let selectors: Vec<&str> = layers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if selectors.is_empty() {
        bail!("--layers is empty: give node names, globs or `all`");
    }
    let named = model.graph().select_named(&selectors)?;
    let names: Vec<String> = named.iter().map(|(_, n)| n.clone()).collect();
    let Some(apply) = apply else {
        return Ok((model.submodel(&names)?, names));
    };
    let make = builtin_lambda(apply, 4)?;
    let mut g = Functional::extend(model);
    let mut outs = Vec::new();
    for name in &names {
        let node = g.get(name)?;
        // A spatial reduction of a layer without spatial axes is the layer itself.
        if matches!(apply, "mean" | "max") && g.shape(node).rank() != 3 {
            outs.push(node);
            continue;
        }
        outs.push(
            make()
                .add_to(&mut g, &format!("{name}:{apply}"), node)
                .with_context(|| format!("--apply {apply} on '{name}'"))?,
        );
    }
    Ok((g.build(&outs)?, names))
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

/// `layerlens extract`'s arguments.
#[derive(clap::Args)]
struct ExtractArgs {
    /// An .onnx file, a saved layerlens model directory, or zoo:NAME[=WEIGHTS.pth].
    model: String,
    /// Inputs: images (png, jpg), directories of images (recursive), .npy or
    /// .safetensors float32 NCHW tensors used as they are (the first tensor of a
    /// safetensors file), or embedded:fashion-mnist-test / embedded:fashion-mnist-train.
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<String>,
    /// Comma-separated node names or globs, or `all`.
    #[arg(long)]
    layers: String,
    /// Output file (.safetensors, .npz, .npy for one layer, .parquet) or directory.
    #[arg(long)]
    out: PathBuf,
    /// Samples per forward pass.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// A built-in Lambda applied to each extracted activation: mean (spatial
    /// mean), max (spatial max), l2_normalize (over channels), flatten. Layers
    /// without spatial axes are written as they are for mean and max.
    #[arg(long)]
    apply: Option<String>,
    /// Preprocessing of image inputs: unit ([0, 1]), imagenet, efficientnet-lite.
    /// Images of the model's input size are used as they are; others are resized
    /// (and centre-cropped for square inputs).
    #[arg(long, default_value = "unit")]
    preprocess: String,
    /// safetensors, npy (.npz archives of .npy) or parquet (a path column and a
    /// list<float> column per layer). Default: from --out's extension, else safetensors.
    #[arg(long)]
    format: Option<String>,
    /// Continue an unfinished run in the --out directory (same inputs and
    /// options); complete shards are kept, the rest is computed.
    #[arg(long)]
    resume: bool,
    /// Process only the K-th of N disjoint parts (1 <= K <= N), e.g. 3/8; give
    /// the N jobs the same inputs and options, and each its own --out.
    #[arg(long, value_name = "K/N")]
    shard: Option<String>,
    /// Inputs per output shard (default: up to 1024, fewer for large layers so
    /// that a shard stays under 256 MiB).
    #[arg(long)]
    shard_rows: Option<usize>,
    /// Stop at the first unreadable image, or at a NaN or infinite value in an
    /// input or an extracted layer, writing nothing for it (default: skip
    /// unreadable images, count non-finite values; both are listed at the end).
    #[arg(long)]
    strict: bool,
    /// Image decoding threads (default: half the cores).
    #[arg(long)]
    jobs: Option<usize>,
}

fn extract(a: &ExtractArgs) -> Result<()> {
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let format = a.format.as_deref().map(OutputFormat::parse).transpose()?;
    let model = load_model(&a.model)?;
    let (xmodel, names) = extraction_model(&model, &a.layers, a.apply.as_deref())?;
    match OutputFormat::from_path(&a.out) {
        Some(from_ext) => {
            if let Some(f) = format.filter(|&f| f != from_ext) {
                bail!(
                    "--format {f:?} disagrees with --out {} (drop one of them)",
                    a.out.display()
                );
            }
            for (set, flag) in [
                (a.resume, "--resume"),
                (a.shard.is_some(), "--shard"),
                (a.shard_rows.is_some(), "--shard-rows"),
            ] {
                if set {
                    bail!(
                        "{flag} is for a directory of shards: give --out a directory (no file extension), not {}",
                        a.out.display()
                    );
                }
            }
            extract_to_file(a, &model, &xmodel, &names, from_ext)
        }
        None => extract_to_dir(
            a,
            &model,
            &xmodel,
            &names,
            format.unwrap_or(OutputFormat::Safetensors),
        ),
    }
}

/// Small inputs: everything in memory, one output file.
fn extract_to_file(
    a: &ExtractArgs,
    model: &Model,
    xmodel: &Model,
    names: &[String],
    format: OutputFormat,
) -> Result<()> {
    let mut parts: Vec<Vec<Tensor>> = vec![Vec::new(); names.len()];
    let mut rows = Vec::new();
    let mut non_finite = layerlens::extract::NonFiniteReport::default();
    for spec in &a.input {
        let (x, labels) = load_inputs(spec, model, &a.preprocess)?;
        non_finite.add_input(spec, &x)?;
        non_finite.check(a.strict)?;
        let n = x.dim(0)?;
        let mut start = 0;
        while start < n {
            let len = a.batch.min(n - start);
            let outs = xmodel
                .forward(&[x.narrow(0, start, len)?])
                .with_context(|| format!("input {spec}"))?;
            for (p, o) in parts.iter_mut().zip(outs) {
                p.push(o);
            }
            start += len;
        }
        rows.extend(labels);
    }
    let mut tensors = Vec::new();
    for (name, p) in names.iter().zip(parts) {
        tensors.push((name.clone(), Tensor::cat(&p, 0)?));
        non_finite.add_layer(name, &tensors.last().expect("pushed").1)?;
    }
    non_finite.check(a.strict)?;
    let mut meta = BTreeMap::from([("layerlens.samples".to_string(), rows.len().to_string())]);
    if !non_finite.is_clean() {
        meta.insert("layerlens.non_finite".into(), non_finite.to_json());
    }
    if let Some(ap) = &a.apply {
        meta.insert("layerlens.apply".into(), ap.clone());
    }
    layerlens::extract::write_tensors(&a.out, format, &tensors, &rows, &meta)?;
    eprintln!(
        "wrote {} tensor(s) for {} sample(s) to {}",
        tensors.len(),
        rows.len(),
        a.out.display()
    );
    for (name, t) in &tensors {
        eprintln!("  {name}: {:?}", t.dims());
    }
    non_finite.warnings().iter().for_each(|w| eprintln!("{w}"));
    Ok(())
}

/// Whole datasets: streamed into shards, resumable, splittable.
fn extract_to_dir(
    a: &ExtractArgs,
    model: &Model,
    xmodel: &Model,
    names: &[String],
    format: OutputFormat,
) -> Result<()> {
    use layerlens::extract::{extract_dataset, DatasetOptions, ImageSource, ShardSpec};
    use layerlens::preprocess::{ImageLoader, Preset};
    let mut paths = Vec::new();
    for spec in &a.input {
        let p = Path::new(spec);
        if spec.starts_with("embedded:")
            || p.extension()
                .is_some_and(|e| e == "npy" || e == "safetensors")
        {
            bail!("{spec}: tensor inputs are extracted into one file: give --out FILE.safetensors (or .npz, .parquet)");
        }
        paths.push(p.to_path_buf());
    }
    let source = ImageSource::new(paths)?;
    let loader = ImageLoader::for_model(model, Preset::parse(&a.preprocess)?)?;
    let mut options = DatasetOptions::new(&a.out);
    options.format = format;
    options.batch = a.batch;
    options.rows_per_shard = a.shard_rows;
    options.shard = a
        .shard
        .as_deref()
        .map(ShardSpec::parse)
        .transpose()?
        .unwrap_or(ShardSpec::ALL);
    options.resume = a.resume;
    options.strict = a.strict;
    options.decode_threads = a.jobs.unwrap_or(0);
    options.progress = true;
    options.settings = BTreeMap::from([
        ("model".to_string(), a.model.clone()),
        ("layers".to_string(), a.layers.clone()),
        ("apply".to_string(), a.apply.clone().unwrap_or_default()),
        ("preprocess".to_string(), a.preprocess.clone()),
    ]);
    let report = extract_dataset(xmodel, names, &source, &loader, &options)?;
    eprintln!(
        "{} input(s) (part {}): {} row(s) in {} new shard(s){}, {} row(s) per shard, into {}",
        report.inputs,
        options.shard,
        report.rows_written,
        report.shards_written,
        if report.shards_kept > 0 {
            format!(" ({} kept from the earlier run)", report.shards_kept)
        } else {
            String::new()
        },
        report.rows_per_shard,
        a.out.display()
    );
    if !report.skipped.is_empty() {
        eprintln!("skipped {} unreadable image(s):", report.skipped.len());
        for s in &report.skipped {
            eprintln!("  {}: {}", s.path, s.error);
        }
    }
    report
        .non_finite
        .warnings()
        .iter()
        .for_each(|w| eprintln!("{w}"));
    eprintln!("manifest: {}", report.manifest.display());
    Ok(())
}

fn demo(out: &Path) -> Result<()> {
    keep_freed_memory_for_reuse();
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

struct TrainArgs {
    model: String,
    data: String,
    epochs: usize,
    batch: usize,
    lr: f64,
    optimizer: String,
    aux: Vec<String>,
    checkpoints: Option<PathBuf>,
    resume: bool,
    out: PathBuf,
}

fn train(a: &TrainArgs) -> Result<()> {
    keep_freed_memory_for_reuse();
    use layerlens::train::{data, fit, loss::Loss, optim};
    let model = load_model(&a.model)?;
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
        "sgd" => Box::new(optim::Sgd::new(model.params(), a.lr).momentum(0.9)),
        other => bail!("--optimizer {other}: use adam, adamw or sgd"),
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

/// Loads an image sized for the model's input: `(1, C, H, W)` with `preset`
/// applied, and the same crop as a picture for overlays.
fn load_picture(path: &Path, model: &Model, preset: &str) -> Result<(Tensor, image::RgbImage)> {
    use layerlens::preprocess::{decode_image, fit_image, from_image, ImageLoader, Preset};
    let loader = ImageLoader::for_model(model, Preset::parse(preset)?)?;
    let img = fit_image(decode_image(path)?, loader.width, loader.height);
    let x = from_image(&img, loader.channels, loader.preset)?;
    let display = from_image(&img, loader.channels, Preset::UnitRange)?;
    Ok((x, layerlens::viz::cam::to_rgb_image(&display)?))
}

fn input_tensor(spec: &str, model: &Model, preset: &str) -> Result<Tensor> {
    let (x, _) = load_inputs(spec, model, preset)?;
    Ok(if x.dim(0)? > 1 { x.narrow(0, 0, 1)? } else { x })
}

#[allow(clippy::too_many_arguments)]
fn show(
    model: &str,
    input: &str,
    layer: &str,
    out: &Path,
    top: Option<usize>,
    cmap: Option<&str>,
    norm: &str,
    preset: &str,
) -> Result<()> {
    use layerlens::viz::grid::{feature_grid, save_png, GridOptions, Select};
    use layerlens::viz::{Colormap, Norm};
    let model = load_model(model)?;
    let x = input_tensor(input, &model, preset)?;
    let id = model.graph().find(layer)?;
    let node = model.graph().node(id);
    let acts = model.extract(&x, &[layer])?;
    let norm = match norm {
        "auto" => Norm::Auto,
        "channel" => Norm::PerChannel,
        "shared" => Norm::Shared,
        other => bail!("--norm {other}: use auto, channel or shared"),
    };
    let opts = GridOptions {
        select: top.map_or(Select::All, Select::TopK),
        colormap: cmap.map(Colormap::parse).transpose()?,
        norm,
        activation: node.op.final_activation(),
        title: Some(format!("{layer} {}", node.shape)),
        ..Default::default()
    };
    save_png(&feature_grid(acts.get(layer)?, &opts)?, out)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn cam_cmd(
    model: &str,
    input: &str,
    layer: &str,
    class: Option<usize>,
    method: &str,
    alpha: f32,
    preset: &str,
    out: &Path,
) -> Result<()> {
    use layerlens::viz::cam::{cam, overlay, CamMethod, CamOptions};
    let model = load_model(model)?;
    let (x, picture) = load_picture(Path::new(input), &model, preset)?;
    let opts = CamOptions {
        class,
        ..CamOptions::new(CamMethod::parse(method)?, layer)
    };
    let c = cam(&model, &x, &opts)?.remove(0);
    if c.raw.max_all()?.to_scalar::<f32>()? <= 0.0 {
        eprintln!("warning: the {method} map is zero everywhere for class {} (every weighted sum is negative); try --method gradcam++ or layercam", c.class);
    }
    let mut img = overlay(
        &picture,
        &c.heatmap,
        layerlens::viz::Colormap::Inferno,
        alpha,
    )?;
    if img.width() < 224 {
        // Small inputs (28×28) are scaled up, pixel for pixel, to be readable.
        let k = 224u32.div_ceil(img.width());
        img = image::imageops::resize(
            &img,
            img.width() * k,
            img.height() * k,
            image::imageops::FilterType::Nearest,
        );
    }
    layerlens::viz::grid::save_png(&img, out)?;
    eprintln!(
        "wrote {} ({method} for class {}, score {:.3})",
        out.display(),
        c.class,
        c.score
    );
    Ok(())
}

fn report_cmd(
    model: &str,
    input: &str,
    layers: Option<&str>,
    preset: &str,
    out: &Path,
) -> Result<()> {
    use layerlens::viz::cam::{CamMethod, CamOptions};
    use layerlens::viz::report::{html_report, ReportOptions};
    let model = load_model(model)?;
    let is_image = ["png", "jpg", "jpeg"]
        .iter()
        .any(|e| input.to_ascii_lowercase().ends_with(e));
    let (x, picture) = if is_image {
        let (x, p) = load_picture(Path::new(input), &model, preset)?;
        (x, Some(p))
    } else {
        (input_tensor(input, &model, preset)?, None)
    };
    // Grad-CAM++ over the deepest image-shaped layer that is not a pooling.
    let g = model.graph();
    let last = g.nodes().iter().rev().find(|n| {
        n.shape.rank() == 3
            && !matches!(
                n.op,
                layerlens::ir::OpT::Input(_) | layerlens::ir::OpT::Pool2d(_)
            )
    });
    let opts = ReportOptions {
        title: format!("layerlens report: {} on {input}", model.name()),
        layers: layers.map(|l| {
            l.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        }),
        cam: last.map(|n| CamOptions::new(CamMethod::GradCamPlusPlus, &n.name)),
        ..Default::default()
    };
    let html = html_report(&model, &x, picture.as_ref(), &opts)?;
    write_atomic(out, html.as_bytes())?;
    eprintln!(
        "wrote {} (open it in a browser; it needs no network)",
        out.display()
    );
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(layerlens::fsio::write_atomic(path, |f| {
        std::io::Write::write_all(f, bytes)
    })?)
}
