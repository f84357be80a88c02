//! The `layerlens` command line: a thin layer over the `layerlens` library.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use layerlens::data::{embedded_fashion_mnist, Split, FASHION_CLASSES};
use layerlens::lambda::{CustomOp, L2Normalize, Reduce};
use layerlens::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

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
    /// Extracts activations of chosen layers into a safetensors file (tensors named
    /// by node name).
    ///
    /// Example: layerlens extract zoo:seed_cnn --input embedded:fashion-mnist-test --layers 'conv2d*' --apply mean --out feats.safetensors
    Extract {
        /// An .onnx file, a saved layerlens model directory, or zoo:NAME[=WEIGHTS.pth].
        model: String,
        /// Inputs: .npy or .safetensors float32 NCHW tensors (the first tensor of a
        /// safetensors file), or embedded:fashion-mnist-test / embedded:fashion-mnist-train.
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<String>,
        /// Comma-separated node names or globs, or `all`.
        #[arg(long)]
        layers: String,
        /// Output safetensors file (written atomically).
        #[arg(long)]
        out: PathBuf,
        /// Samples per forward pass.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// A built-in Lambda applied to each extracted activation: mean (spatial
        /// mean), max (spatial max), l2_normalize (over channels), flatten.
        #[arg(long)]
        apply: Option<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Demo { out } => demo(&out),
        Command::Summary { model } => load_model(&model).map(|m| println!("{}", m.summary())),
        Command::Extract {
            model,
            input,
            layers,
            out,
            batch,
            apply,
        } => extract(&model, &input, &layers, &out, batch, apply.as_deref()),
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

fn load_inputs(spec: &str) -> Result<Tensor> {
    match spec {
        "embedded:fashion-mnist-test" => return Ok(embedded_fashion_mnist(Split::Test)?.images),
        "embedded:fashion-mnist-train" => return Ok(embedded_fashion_mnist(Split::Train)?.images),
        _ => {}
    }
    let path = Path::new(spec);
    let t = match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => {
            Tensor::read_npy(path).with_context(|| format!("{spec}: cannot read .npy"))?
        }
        Some("safetensors") => {
            let map = layerlens::candle_core::safetensors::load(path, &Device::Cpu)
                .with_context(|| format!("{spec}: cannot read safetensors"))?;
            let mut keys: Vec<_> = map.keys().cloned().collect();
            keys.sort();
            let first = keys
                .first()
                .with_context(|| format!("{spec}: no tensors in file"))?;
            map[first].clone()
        }
        _ => bail!(
            "{spec}: unsupported input (use .npy, .safetensors or embedded:fashion-mnist-test)"
        ),
    };
    Ok(t.to_dtype(DType::F32)?)
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
    let tmp = path.with_extension("safetensors.tmp");
    let r = safetensors::serialize_to_file(tensors.iter(), Some(meta), &tmp)
        .with_context(|| format!("{}: cannot write", tmp.display()))
        .and_then(|_| {
            std::fs::rename(&tmp, path)
                .with_context(|| format!("{}: cannot rename into place", path.display()))
        });
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn extract(
    model: &str,
    inputs: &[String],
    layers: &str,
    out: &Path,
    batch: usize,
    apply: Option<&str>,
) -> Result<()> {
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let model = load_model(model)?;
    let (xmodel, names) = extraction_model(&model, layers, apply)?;
    let mut parts: Vec<Vec<Tensor>> = vec![Vec::new(); names.len()];
    let mut count = 0;
    for spec in inputs {
        let x = load_inputs(spec)?;
        let n = x.dim(0)?;
        let mut start = 0;
        while start < n {
            let len = batch.min(n - start);
            let outs = xmodel
                .forward(&[x.narrow(0, start, len)?])
                .with_context(|| format!("input {spec}"))?;
            for (p, o) in parts.iter_mut().zip(outs) {
                p.push(o);
            }
            start += len;
        }
        count += n;
    }
    let mut tensors = HashMap::new();
    for (name, p) in names.iter().zip(parts) {
        tensors.insert(name.clone(), Tensor::cat(&p, 0)?);
    }
    let mut meta = HashMap::from([("layerlens.samples".to_string(), count.to_string())]);
    if let Some(a) = apply {
        meta.insert("layerlens.apply".into(), a.into());
    }
    write_safetensors_atomic(out, &tensors, meta)?;
    eprintln!(
        "wrote {} tensor(s) for {count} sample(s) to {}",
        tensors.len(),
        out.display()
    );
    for name in &names {
        eprintln!("  {name}: {:?}", tensors[name].dims());
    }
    Ok(())
}

fn demo(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let model = layerlens::zoo::seed_cnn(true)?;
    println!("{}\n", model.summary());
    let test = embedded_fashion_mnist(Split::Test)?;
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
    let mut tensors: HashMap<String, Tensor> = acts.into_vec().into_iter().collect();
    tensors.insert("embedding".into(), f[0].clone());
    tensors.insert("input".into(), x);
    let act_path = out.join("activations.safetensors");
    write_safetensors_atomic(
        &act_path,
        &tensors,
        HashMap::from([("labels".into(), labels.join(","))]),
    )?;
    let summary_path = out.join("summary.txt");
    std::fs::write(
        &summary_path,
        format!("{}\n\n{}\n", model.summary(), features.summary()),
    )
    .with_context(|| format!("{}: cannot write", summary_path.display()))?;

    println!("\nWrote:");
    println!("  {}  input, conv2d, conv2d_1 and embedding tensors (open with safetensors in Python or Rust)", act_path.display());
    println!("  {}/  the feature model with its Lambdas (model.json + model.safetensors), reloaded and verified", model_dir.display());
    println!("  {}  both models' summaries", summary_path.display());
    println!("\nThe weights are the seeded initialisation: `layerlens train zoo:seed_cnn --out trained` trains them; pictures, CAMs and HTML reports are in the library (layerlens::viz, see docs/visualisation.md).");
    println!("Try: layerlens extract {} --input embedded:fashion-mnist-test --layers embedding --out emb.safetensors", model_dir.display());
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
