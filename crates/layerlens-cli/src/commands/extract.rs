//! `layerlens extract`: activations of chosen layers into one file, or
//! streamed over whole datasets into a directory of shards.

use anyhow::{bail, Context, Result};
use layerlens::extract::OutputFormat;
use layerlens::prelude::*;
use layerlens::spec::{extraction_model, load_inputs, parse_layers, Apply};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
#[derive(clap::Args, Clone)]
pub struct Args {
    /// An .onnx file, a Keras .keras / .h5 file, a saved layerlens model directory, or
    /// zoo:NAME[=WEIGHTS] (a .pth / .safetensors / Keras weights file, `imagenet` for the
    /// published weights, `random` for none).
    model: String,
    #[command(flatten)]
    shapes: super::OpenArgs,
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
    /// Preprocessing of image inputs: unit ([0, 1]), imagenet, efficientnet-lite, or Keras' caffe (VGG16, ResNet50), tf (x/127.5-1: MobileNet, Xception, Inception), raw (0..255: EfficientNet, ConvNeXt).
    /// `auto` (the default): what the zoo model's weights were trained with (`zoo:vgg16=imagenet`: caffe), else unit.
    /// Images of the model's input size are used as they are; others are resized
    /// (and centre-cropped for square inputs).
    #[arg(long, default_value = "auto")]
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
    /// For an ONNX model whose input size is symbolic: run every image at its
    /// own size instead of resizing, one import per size (the file is decoded
    /// once and the imports share their weights), into one directory of shards
    /// per size, OUT/HxW/.
    #[arg(long)]
    keep_size: bool,
}

/// Runs the extraction.
pub fn run(a: &Args) -> Result<()> {
    let a = &Args {
        preprocess: super::resolve_preprocess(&a.preprocess, &a.model),
        ..a.clone()
    };
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let format = a.format.as_deref().map(OutputFormat::parse).transpose()?;
    if a.keep_size {
        return extract_keep_size(a, format);
    }
    let model = super::open_model(&a.model, &a.shapes, &a.input)?;
    let apply = a.apply.as_deref().map(Apply::parse).transpose()?;
    let (xmodel, names) = extraction_model(&model, &parse_layers(&a.layers)?, apply)?;
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
    a: &Args,
    model: &Model,
    xmodel: &Model,
    names: &[String],
    format: OutputFormat,
) -> Result<()> {
    let mut parts: Vec<Vec<Tensor>> = vec![Vec::new(); names.len()];
    let mut rows = Vec::new();
    let mut non_finite = layerlens::extract::NonFiniteReport::default();
    for spec in &a.input {
        let (x, labels) = load_inputs(spec, model, super::preset(&a.preprocess)?)?;
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

/// The inputs as image files and directories; a tensor or embedded input is
/// refused with `why`.
fn image_inputs(inputs: &[String], why: &str) -> Result<Vec<PathBuf>> {
    inputs
        .iter()
        .map(|spec| {
            let p = Path::new(spec);
            if spec.starts_with("embedded:")
                || p.extension()
                    .is_some_and(|e| e == "npy" || e == "safetensors")
            {
                bail!("{spec}: {why}");
            }
            Ok(p.to_path_buf())
        })
        .collect()
}

/// `--keep-size`: images grouped by their size, each group streamed through
/// the import at that size into OUT/HxW/.
fn extract_keep_size(a: &Args, format: Option<OutputFormat>) -> Result<()> {
    use layerlens::onnx::{InputDim, OnnxModel, ShapeCache};
    if OutputFormat::from_path(&a.out).is_some() {
        bail!(
            "--keep-size writes one directory of shards per image size (OUT/HxW/): give --out a directory, not {}",
            a.out.display()
        );
    }
    if !a.shapes.input_shape.is_empty() {
        bail!("--keep-size runs each image at its own size; --input-shape resizes them all to one: drop one of them");
    }
    if Path::new(&a.model).extension().is_none_or(|e| e != "onnx") {
        bail!(
            "--keep-size is for an ONNX model whose input size is symbolic; {} is not an .onnx file",
            a.model
        );
    }
    let source = OnnxModel::open(&a.model)?;
    let channels = match source.inputs() {
        [only] if only.is_symbolic() && only.dims.len() == 4 => match &only.dims[1] {
            InputDim::Fixed(c) => *c,
            other => bail!(
                "--keep-size: input '{}' is declared {}: its channel count ({other}) must be fixed",
                only.name,
                only.dims_string()
            ),
        },
        [only] => bail!(
            "--keep-size needs one (N, C, H, W) input whose size is symbolic; '{}' is declared {}",
            only.name,
            only.dims_string()
        ),
        many => bail!(
            "--keep-size needs a model with one input; this one has {}",
            many.len()
        ),
    };
    let paths = image_inputs(
        &a.input,
        "--keep-size is for images; a tensor input already runs at its own size",
    )?;
    // Group by the size in each file's header; an unreadable image joins the
    // first group, whose run skips and lists it like any other.
    let mut groups: BTreeMap<(u32, u32), Vec<String>> = BTreeMap::new();
    let mut unreadable = Vec::new();
    for item in layerlens::extract::list_images(&paths)? {
        let file = item.path.display().to_string();
        match layerlens::preprocess::image_size(&item.path) {
            Ok((w, h)) => groups.entry((h, w)).or_default().push(file),
            Err(_) => unreadable.push(file),
        }
    }
    let Some(first) = groups.values_mut().next() else {
        bail!("no readable image among the inputs");
    };
    first.extend(unreadable);
    let cache = ShapeCache::new(source, 4);
    let apply = a.apply.as_deref().map(Apply::parse).transpose()?;
    let layers = parse_layers(&a.layers)?;
    eprintln!(
        "{} image size(s): one directory of shards each",
        groups.len()
    );
    for ((h, w), files) in groups {
        let model = cache.model_for(&[vec![channels, h as usize, w as usize]])?;
        let (xmodel, names) = extraction_model(&model, &layers, apply)?;
        let group = Args {
            input: files,
            out: a.out.join(format!("{h}x{w}")),
            ..a.clone()
        };
        extract_to_dir(
            &group,
            &model,
            &xmodel,
            &names,
            format.unwrap_or(OutputFormat::Safetensors),
        )
        .with_context(|| format!("images of {w}x{h}"))?;
    }
    Ok(())
}

/// Whole datasets: streamed into shards, resumable, splittable.
fn extract_to_dir(
    a: &Args,
    model: &Model,
    xmodel: &Model,
    names: &[String],
    format: OutputFormat,
) -> Result<()> {
    use layerlens::extract::{extract_dataset, DatasetOptions, ImageSource, ShardSpec};
    use layerlens::preprocess::{ImageLoader, Preset};
    let paths = image_inputs(
        &a.input,
        "tensor inputs are extracted into one file: give --out FILE.safetensors (or .npz, .parquet)",
    )?;
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
