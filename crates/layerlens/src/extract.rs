//! Extraction over whole datasets: images stream from disk through the model
//! into output shards, with bounded memory, resumable after a crash, and
//! splittable over machines.
//!
//! The output is a directory:
//!
//! ```text
//! OUT/run.json                  what the run is (model, layers, format, shard size, inputs)
//! OUT/shard-00000.safetensors   activations of rows 0.. of shard 0, one tensor per layer
//! OUT/shard-00000.json          the shard's rows (input paths) and skipped inputs
//! ...
//! OUT/manifest.jsonl            one line per input: path, shard file and row, or why skipped
//! ```
//!
//! Inputs are walked in a fixed order ([`ImageSource`]: directories
//! recursively, entries sorted by file name; never listed whole in memory)
//! and cut into shards of [`DatasetOptions::rows_per_shard`] inputs. Each shard is computed
//! in memory, written to a temporary file, synced, and renamed into place, and
//! its `.json` index is renamed after it: a shard whose index exists is
//! complete. `manifest.jsonl` is written last; a directory without it is an
//! unfinished run, which [`DatasetOptions::resume`] continues, skipping the
//! complete shards. Shard `s` belongs to part `K = s % N + 1` of a [`ShardSpec`] `K/N`,
//! so `N` jobs given the same inputs write disjoint shard files whose union is
//! the whole run. `OUT/.layerlens.lock` ([`layerlens_core::fsio::DirLock`]) is
//! held (`flock`) while a job writes into `OUT`, so a second job on the same
//! directory fails at once; the kernel releases it when the job dies.
//!
//! Decoding runs on its own threads, a few batches ahead of the model (a
//! bounded channel), so memory is bounded by the shard size and the prefetch
//! depth, whatever the number of inputs.

pub use crate::nonfinite::{NonFinite, NonFiniteReport};
use crate::preprocess::ImageLoader;
use layerlens_core::candle_core::{DType, Tensor};
use layerlens_core::fsio::{DirLock, LOCK_FILE};
use layerlens_core::{Error, Model, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file format of written activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One `.safetensors` file per shard, a float32 tensor per layer named by
    /// node name, batch first.
    Safetensors,
    /// NumPy: one `.npz` archive per shard holding `<layer>.npy` per layer
    /// (`np.load(f)["conv2d"]`); a single-file output may also be one `.npy`
    /// when one layer is extracted.
    Npy,
    /// Parquet: one `.parquet` file per shard, a row per input with its `path`
    /// and, per layer, a `list<float>` column of the flattened activation; the
    /// per-sample shapes are in the file's key-value metadata `layerlens`.
    Parquet,
}

impl OutputFormat {
    /// Parses `safetensors`, `npy` (or `npz`) or `parquet`.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "safetensors" => OutputFormat::Safetensors,
            "npy" | "npz" => OutputFormat::Npy,
            "parquet" => OutputFormat::Parquet,
            other => {
                return Err(Error::invalid(
                    "format",
                    format!("unknown format '{other}' (safetensors, npy, parquet)"),
                ))
            }
        })
    }

    /// The format a file name's extension asks for, if any.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()? {
            "safetensors" => Some(OutputFormat::Safetensors),
            "npy" | "npz" => Some(OutputFormat::Npy),
            "parquet" => Some(OutputFormat::Parquet),
            _ => None,
        }
    }

    /// The extension of a shard file in this format.
    pub fn shard_extension(self) -> &'static str {
        match self {
            OutputFormat::Safetensors => "safetensors",
            OutputFormat::Npy => "npz",
            OutputFormat::Parquet => "parquet",
        }
    }
}

/// Which part of a dataset a job processes: `K/N` on the command line, the
/// K-th (from 1) of N disjoint parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    /// The part, from 0.
    pub index: usize,
    /// How many parts.
    pub count: usize,
}

impl ShardSpec {
    /// The whole dataset: part 1 of 1.
    pub const ALL: ShardSpec = ShardSpec { index: 0, count: 1 };

    /// Parses `K/N` with `1 <= K <= N` (GNU `split -n K/N`'s convention).
    ///
    /// ```
    /// use layerlens::extract::ShardSpec;
    ///
    /// let third = ShardSpec::parse("3/8")?;
    /// assert_eq!((third.index, third.count), (2, 8));
    /// assert!(third.owns(2) && third.owns(10) && !third.owns(3)); // every 8th shard
    /// assert!(ShardSpec::parse("0/8").is_err() && ShardSpec::parse("9/8").is_err());
    /// # Ok::<(), layerlens::Error>(())
    /// ```
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "shard",
                format!("'{s}' is not K/N with 1 <= K <= N (e.g. 2/8 for the second of 8 parts)"),
            )
        };
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (k, n): (usize, usize) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if n == 0 || k == 0 || k > n {
            return Err(bad());
        }
        Ok(ShardSpec {
            index: k - 1,
            count: n,
        })
    }

    /// Whether shard number `shard` belongs to this part.
    pub fn owns(&self, shard: usize) -> bool {
        shard % self.count == self.index
    }
}

impl std::fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index + 1, self.count)
    }
}

/// One input image: where it is and the name recorded for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageItem {
    /// The file.
    pub path: PathBuf,
    /// Its path relative to the input directory it was found under (with `/`
    /// separators), or the file as given for a file input; the manifest's `path`.
    pub name: String,
}

/// Reads a tensor input from a `.safetensors` file: its first tensor (by
/// name), as float32. See [`read_safetensors_input_bytes`].
pub fn read_safetensors_input(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    read_safetensors_input_bytes(&bytes, &path.display().to_string())
}

/// The first tensor (by name) of safetensors bytes, as float32; `what` names
/// the file in errors. The header's offsets are checked against the bytes by
/// the `safetensors` crate before anything is read; only that tensor is
/// converted.
pub fn read_safetensors_input_bytes(bytes: &[u8], what: &str) -> Result<Tensor> {
    use layerlens_core::candle_core::safetensors::Load;
    let bad = |m: String| Error::Format {
        path: what.to_string(),
        message: m,
    };
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("not a readable safetensors file: {e}")))?;
    let mut names = st.names();
    names.sort();
    let first = names
        .first()
        .ok_or_else(|| bad("no tensors in file".into()))?;
    let view = st.tensor(first).map_err(|e| bad(e.to_string()))?;
    if view.shape().contains(&0) {
        return Err(bad(format!(
            "tensor '{first}' of shape {:?} holds no values",
            view.shape()
        )));
    }
    view.load(&layerlens_core::candle_core::Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F32))
        .map_err(|e| bad(format!("tensor '{first}': {e}")))
}

/// Whether a file name has an image extension layerlens decodes.
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// The images under some inputs, in a fixed order, walked lazily: files as
/// given, directories recursively (following symbolic links, each directory's
/// entries in file-name order), inputs in the order given. Nothing is listed
/// up front, so a dataset of any size costs no memory to enumerate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSource {
    inputs: Vec<PathBuf>,
}

impl ImageSource {
    /// Checks that every input is a directory or an image file.
    pub fn new(inputs: Vec<PathBuf>) -> Result<Self> {
        for input in &inputs {
            let meta = std::fs::metadata(input).map_err(|e| io_error(input, e))?;
            if !meta.is_dir() && !is_image_file(input) {
                return Err(Error::invalid(
                    "input",
                    format!(
                        "{}: not an image (.png, .jpg) or a directory",
                        input.display()
                    ),
                ));
            }
        }
        Ok(ImageSource { inputs })
    }

    /// The images, in order. An item's name is its path relative to the input
    /// directory it was found under (with `/` separators), or the file as given;
    /// with more than one input, names are prefixed by the input as given, so
    /// they stay unique.
    pub fn iter(&self) -> impl Iterator<Item = Result<ImageItem>> + '_ {
        let several = self.inputs.len() > 1;
        self.inputs.iter().flat_map(move |input| {
            walkdir::WalkDir::new(input)
                .follow_links(true)
                .sort_by_file_name()
                .into_iter()
                .filter_map(move |entry| {
                    let entry = match entry {
                        Ok(e) => e,
                        Err(e) => {
                            let path = e.path().unwrap_or(input).to_path_buf();
                            return Some(Err(match e.into_io_error() {
                                Some(io) => io_error(&path, io),
                                None => Error::invalid(
                                    "input",
                                    format!("{}: directory loop", path.display()),
                                ),
                            }));
                        }
                    };
                    if !entry.file_type().is_file() || !is_image_file(entry.path()) {
                        return None;
                    }
                    let rel = entry
                        .path()
                        .strip_prefix(input)
                        .ok()
                        .filter(|r| !r.as_os_str().is_empty())
                        .map(|r| r.to_string_lossy().replace('\\', "/"));
                    let name = match (rel, several) {
                        (Some(rel), false) => rel,
                        (Some(rel), true) => {
                            format!("{}/{rel}", input.to_string_lossy().trim_end_matches('/'))
                        }
                        // The input is the file itself.
                        (None, _) => input.to_string_lossy().replace('\\', "/"),
                    };
                    Some(Ok(ImageItem {
                        path: entry.into_path(),
                        name,
                    }))
                })
        })
    }

    /// How many images there are, and a checksum of their names (so that a
    /// resumed run notices changed inputs): one pass over the directories.
    pub fn census(&self) -> Result<(usize, u32)> {
        let mut crc = crc32fast::Hasher::new();
        let mut count = 0;
        for item in self.iter() {
            let item = item?;
            crc.update(item.name.as_bytes());
            crc.update(b"\n");
            count += 1;
        }
        Ok((count, crc.finalize()))
    }
}

/// All the images of [`ImageSource`] at once, in its order.
pub fn list_images(inputs: &[PathBuf]) -> Result<Vec<ImageItem>> {
    ImageSource::new(inputs.to_vec())?.iter().collect()
}

/// How a dataset extraction runs.
#[derive(Debug, Clone)]
pub struct DatasetOptions {
    /// The output directory.
    pub out: PathBuf,
    /// Shard file format.
    pub format: OutputFormat,
    /// Images per forward pass.
    pub batch: usize,
    /// Inputs per shard; `None` picks up to 1024, fewer when a row is so large
    /// that a shard would pass 256 MiB.
    pub rows_per_shard: Option<usize>,
    /// The part of the dataset this job does.
    pub shard: ShardSpec,
    /// Continue an unfinished run in `out` (it must have been started with the
    /// same settings and inputs); complete shards are kept as they are.
    pub resume: bool,
    /// Stop at the first unreadable image instead of skipping it, and at the
    /// first NaN or infinite value in a decoded input or an extracted layer
    /// (before its shard is written) instead of counting it.
    pub strict: bool,
    /// Decoding threads (0: half the available cores, at least 1).
    pub decode_threads: usize,
    /// Show a progress bar (images/s, ETA) and warnings on stderr.
    pub progress: bool,
    /// Settings recorded in `run.json` and checked on resume (the model, the
    /// layers, the preprocessing: whatever determines the activations).
    pub settings: BTreeMap<String, String>,
}

impl DatasetOptions {
    /// Defaults: safetensors, batch 64, automatic shard size, the whole
    /// dataset, no resume, skip unreadable images, no progress bar.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        DatasetOptions {
            out: out.into(),
            format: OutputFormat::Safetensors,
            batch: 64,
            rows_per_shard: None,
            shard: ShardSpec::ALL,
            resume: false,
            strict: false,
            decode_threads: 0,
            progress: false,
            settings: BTreeMap::new(),
        }
    }
}

/// An input that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The input's name (as in the manifest).
    pub path: String,
    /// Why.
    pub error: String,
}

/// What a dataset extraction did.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetReport {
    /// Inputs in this part of the dataset.
    pub inputs: usize,
    /// Rows written by this job (not counting shards kept from an earlier run).
    pub rows_written: usize,
    /// Shards computed by this job.
    pub shards_written: usize,
    /// Complete shards found from an earlier run and kept.
    pub shards_kept: usize,
    /// Inputs per shard.
    pub rows_per_shard: usize,
    /// Unreadable inputs of this part (also those of kept shards), in input order.
    pub skipped: Vec<Skipped>,
    /// The manifest written.
    pub manifest: PathBuf,
    /// NaN and infinite values of this part (also those of kept shards), per
    /// input image and per layer; also in each shard's `.json` index.
    pub non_finite: NonFiniteReport,
}

/// `run.json`: everything that must agree for a resumed run to continue the
/// same output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunRecord {
    layerlens_extract: u32,
    settings: BTreeMap<String, String>,
    layers: Vec<(String, Vec<usize>)>,
    format: OutputFormat,
    batch: usize,
    rows_per_shard: usize,
    part: String,
    inputs: usize,
    inputs_crc32: String,
}

/// A write that failed (a full disk, a file size limit, an I/O error) leaves
/// the run unfinished: says so, and how to finish it, on the same line.
fn interrupted(e: Error) -> Error {
    let e = match e {
        Error::InvalidArgument { node, message } if node == "extract" => message,
        other => other.to_string(),
    };
    Error::invalid(
        "extract",
        format!(
            "{e}; the run is unfinished (complete shards are kept, nothing partial is): make room, then run the same command with --resume"
        ),
    )
}

/// `shard-NNNNN.json`: the shard's inputs in order, each with its row in the
/// shard file or why it was skipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ShardIndex {
    rows: usize,
    inputs: Vec<IndexEntry>,
    /// Absent when every value of the shard is finite.
    #[serde(default, skip_serializing_if = "NonFiniteReport::is_clean")]
    non_finite: NonFiniteReport,
}

/// One input of a shard; with the shard file's name, a manifest line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct IndexEntry {
    path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shard: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    row: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
}

const DEFAULT_ROWS_PER_SHARD: usize = 1024;
const MAX_SHARD_BYTES: usize = 256 << 20;
/// Decoded batches waiting for the model; bounds the decoder's lead.
const PREFETCH_BATCHES: usize = 2;

/// Runs `model` over the images of `source` and writes the outputs, named
/// `names` (one per model output), as shards under `options.out`. `loader`
/// turns a file into a `(1, C, H, W)` input.
///
/// ```no_run
/// use layerlens::extract::{extract_dataset, DatasetOptions, ImageSource};
/// use layerlens::preprocess::{ImageLoader, Preset};
///
/// let model = layerlens::zoo::seed_cnn(true)?.submodel(&["conv2d_1"])?;
/// let source = ImageSource::new(vec!["photos/".into()])?;
/// let loader = ImageLoader::for_model(&model, Preset::UnitRange)?;
/// let report = extract_dataset(&model, &["conv2d_1".into()], &source, &loader, &DatasetOptions::new("feats"))?;
/// println!("{} rows, {} skipped", report.rows_written, report.skipped.len());
/// # Ok::<(), layerlens::Error>(())
/// ```
pub fn extract_dataset(
    model: &Model,
    names: &[String],
    source: &ImageSource,
    loader: &ImageLoader,
    options: &DatasetOptions,
) -> Result<DatasetReport> {
    let g = model.graph();
    if names.len() != g.outputs().len() {
        return Err(Error::invalid(
            "extract",
            format!(
                "{} names for {} model outputs",
                names.len(),
                g.outputs().len()
            ),
        ));
    }
    if options.batch == 0 || options.rows_per_shard == Some(0) {
        return Err(Error::invalid(
            "extract",
            "batch and rows per shard must be at least 1",
        ));
    }
    let layers: Vec<(String, Vec<usize>)> = names
        .iter()
        .zip(g.outputs())
        .map(|(n, &id)| (n.clone(), g.node(id).shape.dims().to_vec()))
        .collect();
    let row_bytes: usize = layers
        .iter()
        .map(|(_, d)| d.iter().product::<usize>() * 4)
        .sum::<usize>()
        .max(1);
    let rows_per_shard = options
        .rows_per_shard
        .unwrap_or_else(|| DEFAULT_ROWS_PER_SHARD.min((MAX_SHARD_BYTES / row_bytes).max(1)));
    let (count, crc) = source.census()?;
    if count == 0 {
        return Err(Error::invalid(
            "extract",
            "no images (.png, .jpg) found in the inputs",
        ));
    }
    let record = RunRecord {
        layerlens_extract: 1,
        settings: options.settings.clone(),
        layers: layers.clone(),
        format: options.format,
        batch: options.batch,
        rows_per_shard,
        part: options.shard.to_string(),
        inputs: count,
        inputs_crc32: format!("{crc:08x}"),
    };
    let out = &options.out;
    // One job per directory: a second one fails here at once. The kernel drops
    // the lock when this process ends, however it ends, so --resume after a
    // kill finds it free.
    std::fs::create_dir_all(out).map_err(|e| io_error(out, e))?;
    let _lock = DirLock::acquire(out, "extract")?;
    prepare_out_dir(out, &record, options.resume)?;

    let shard_count = count.div_ceil(rows_per_shard);
    let shard_len = |s: usize| rows_per_shard.min(count - s * rows_per_shard);
    let mine: Vec<usize> = (0..shard_count)
        .filter(|&s| options.shard.owns(s))
        .collect();
    let mut todo = vec![false; shard_count];
    for &s in &mine {
        todo[s] = !shard_complete(out, s, options.format);
    }
    let pending = todo.iter().filter(|&&t| t).count();
    let pending_inputs: usize = (0..shard_count).filter(|&s| todo[s]).map(shard_len).sum();

    let bar = progress_bar(options.progress, pending_inputs as u64);
    let threads = if options.decode_threads == 0 {
        (std::thread::available_parallelism().map_or(2, |n| n.get()) / 2).max(1)
    } else {
        options.decode_threads
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("layerlens-decode-{i}"))
        .build()
        .map_err(|e| Error::invalid("extract", format!("cannot start decoding threads: {e}")))?;

    let mut rows_written = 0;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<DecodedBatch>>(PREFETCH_BATCHES);
    std::thread::scope(|scope| -> Result<()> {
        // The decoder: walks the inputs again, decodes the pending shards'
        // images a batch at a time, in order, a few batches ahead of the model.
        let decoder = {
            let todo = &todo;
            let pool = &pool;
            scope.spawn(move || {
                let send = |msg| tx.send(msg).is_ok();
                let mut batch: Vec<ImageItem> = Vec::new();
                let mut first = 0;
                let mut check = crc32fast::Hasher::new();
                let mut seen = 0;
                for item in source.iter() {
                    let item = match item {
                        Ok(item) => item,
                        Err(e) => {
                            send(Err(e));
                            return;
                        }
                    };
                    check.update(item.name.as_bytes());
                    check.update(b"\n");
                    let (s, pos) = (seen / rows_per_shard, seen % rows_per_shard);
                    seen += 1;
                    if seen > count || !todo[s] {
                        continue;
                    }
                    if batch.is_empty() {
                        first = pos;
                    }
                    batch.push(item);
                    let last = pos + 1 == shard_len(s);
                    if batch.len() == options.batch || last {
                        let decoded: Vec<Result<Tensor>> = pool.install(|| {
                            use rayon::prelude::*;
                            batch.par_iter().map(|it| loader.load(&it.path)).collect()
                        });
                        let msg = DecodedBatch {
                            shard: s,
                            first,
                            names: batch.drain(..).map(|it| it.name).collect(),
                            decoded,
                            last,
                        };
                        if !send(Ok(msg)) {
                            return; // the model side stopped (an error): stop too
                        }
                    }
                }
                if seen != count || check.finalize() != crc {
                    send(Err(Error::invalid(
                        "extract",
                        format!("the inputs changed during the run ({count} images when it started, {seen} now)"),
                    )));
                }
            })
        };

        let mut current: Option<ShardBuffer> = None;
        // The shard buffers, reused from shard to shard rather than freed and
        // allocated again.
        let mut spare: Vec<Vec<u8>> = Vec::new();
        // Owned here: an early return drops the receiver, which stops the decoder.
        for msg in rx {
            let msg = msg?;
            let buf = current.get_or_insert_with(|| {
                ShardBuffer::new(
                    msg.shard,
                    &layers,
                    shard_len(msg.shard),
                    std::mem::take(&mut spare),
                )
            });
            let mut ok = Vec::new();
            let inputs = msg.names.len();
            for (name, r) in msg.names.into_iter().zip(msg.decoded) {
                match r {
                    Ok(t) => {
                        buf.non_finite.add_input(&name, &t)?;
                        buf.push_row(name, options.format);
                        ok.push(t);
                    }
                    Err(e) => {
                        if options.strict {
                            return Err(Error::invalid(
                                "extract",
                                format!("{e} (--strict stops at the first unreadable image)"),
                            ));
                        }
                        // The manifest names the input; the message need not again.
                        let error = match e {
                            Error::Format { message, .. } => message,
                            other => other.to_string(),
                        };
                        let s = Skipped { path: name, error };
                        if options.progress {
                            bar.suspend(|| eprintln!("warning: skipped {}: {}", s.path, s.error));
                        }
                        buf.push_skipped(s);
                    }
                }
            }
            debug_assert_eq!(buf.inputs.len(), msg.first + inputs);
            if !ok.is_empty() {
                let x = Tensor::cat(&ok, 0)?;
                drop(ok);
                // One row per sample: batch-first values (a tensor whose ONNX
                // layout puts the batch elsewhere is stored per sample).
                buf.push_outputs(model.forward_batch_first(&[x])?, &layers)?;
            }
            // Before the shard is written: with --strict a shard holding a
            // NaN or an infinity never appears.
            buf.non_finite.check(options.strict)?;
            bar.inc(inputs as u64);
            if msg.last {
                let buf = current.take().expect("a shard in progress");
                rows_written += buf.rows.len();
                spare = buf
                    .write(out, options.format, &layers)
                    .map_err(interrupted)?;
            }
        }
        decoder
            .join()
            .map_err(|_| Error::invalid("extract", "the decoding thread panicked"))?;
        Ok(())
    })?;
    bar.finish_and_clear();

    // Every shard of this part is complete: the manifest, written last, marks
    // the run done. It is streamed from the shard indexes.
    let mut skipped = Vec::new();
    let mut non_finite = NonFiniteReport::default();
    let manifest_path = out.join("manifest.jsonl");
    write_file_atomic(&manifest_path, |f| {
        for &s in &mine {
            let index = read_index(out, s).map_err(std::io::Error::other)?;
            non_finite.merge(&index.non_finite);
            for entry in index.inputs {
                serde_json::to_writer(&mut *f, &entry)?;
                f.write_all(b"\n")?;
                if let Some(error) = entry.skipped {
                    skipped.push(Skipped {
                        path: entry.path,
                        error,
                    });
                }
            }
        }
        Ok(())
    })
    .map_err(interrupted)?;
    Ok(DatasetReport {
        inputs: mine.iter().map(|&s| shard_len(s)).sum(),
        rows_written,
        shards_written: pending,
        shards_kept: mine.len() - pending,
        rows_per_shard,
        skipped,
        manifest: manifest_path,
        non_finite,
    })
}

struct DecodedBatch {
    shard: usize,
    /// Position of the batch's first item in its shard.
    first: usize,
    /// The items' names (manifest paths).
    names: Vec<String>,
    decoded: Vec<Result<Tensor>>,
    last: bool,
}

/// The activations of one shard, batch by batch, until it is written.
struct ShardBuffer {
    shard: usize,
    rows: Vec<String>,
    inputs: Vec<IndexEntry>,
    /// Per layer, the rows so far as little-endian float32 bytes: the file's
    /// bytes, so writing copies nothing, and reserved once, so they never move.
    outputs: Vec<Vec<u8>>,
    /// NaN and infinite values of the shard's inputs and layers so far.
    non_finite: NonFiniteReport,
}

impl ShardBuffer {
    /// A buffer for `capacity_rows` rows, in `spare`'s allocations if given.
    fn new(
        shard: usize,
        layers: &[(String, Vec<usize>)],
        capacity_rows: usize,
        mut spare: Vec<Vec<u8>>,
    ) -> Self {
        spare.resize_with(layers.len(), Vec::new);
        for (buf, (_, d)) in spare.iter_mut().zip(layers) {
            buf.clear();
            buf.reserve_exact(capacity_rows * d.iter().product::<usize>() * 4);
        }
        ShardBuffer {
            shard,
            rows: Vec::new(),
            inputs: Vec::new(),
            outputs: spare,
            non_finite: NonFiniteReport::default(),
        }
    }

    fn push_outputs(&mut self, outs: Vec<Tensor>, layers: &[(String, Vec<usize>)]) -> Result<()> {
        for ((buf, o), (name, dims)) in self.outputs.iter_mut().zip(outs).zip(layers) {
            let values = o.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            self.non_finite
                .add_layer_count(name, NonFinite::count(&values, dims.iter().product()));
            buf.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        }
        Ok(())
    }

    fn push_row(&mut self, path: String, format: OutputFormat) {
        self.inputs.push(IndexEntry {
            path: path.clone(),
            shard: Some(shard_file_name(self.shard, format)),
            row: Some(self.rows.len()),
            skipped: None,
        });
        self.rows.push(path);
    }

    fn push_skipped(&mut self, s: Skipped) {
        self.inputs.push(IndexEntry {
            path: s.path,
            shard: None,
            row: None,
            skipped: Some(s.error),
        });
    }

    fn write(
        self,
        out: &Path,
        format: OutputFormat,
        layers: &[(String, Vec<usize>)],
    ) -> Result<Vec<Vec<u8>>> {
        let n = self.rows.len();
        let data: Vec<LayerBytes> = layers
            .iter()
            .zip(&self.outputs)
            .map(|((name, dims), bytes)| LayerBytes {
                name,
                shape: std::iter::once(n).chain(dims.iter().copied()).collect(),
                bytes,
            })
            .collect();
        // Nothing part-specific: a shard is the same file whichever job wrote it.
        let meta = BTreeMap::from([("shard".to_string(), self.shard.to_string())]);
        let path = out.join(shard_file_name(self.shard, format));
        write_layers(&path, format, &data, &self.rows, &meta)?;
        let index = ShardIndex {
            rows: self.rows.len(),
            inputs: self.inputs,
            non_finite: self.non_finite,
        };
        let json = serde_json::to_vec_pretty(&index)
            .map_err(|e| Error::invalid("extract", e.to_string()))?;
        write_file_atomic(&out.join(index_file_name(self.shard)), |f| {
            f.write_all(&json)
        })?;
        Ok(self.outputs)
    }
}

fn shard_file_name(shard: usize, format: OutputFormat) -> String {
    format!("shard-{shard:05}.{}", format.shard_extension())
}

fn index_file_name(shard: usize) -> String {
    format!("shard-{shard:05}.json")
}

fn shard_complete(out: &Path, shard: usize, format: OutputFormat) -> bool {
    out.join(index_file_name(shard)).is_file() && out.join(shard_file_name(shard, format)).is_file()
}

fn read_index(out: &Path, shard: usize) -> Result<ShardIndex> {
    let path = out.join(index_file_name(shard));
    let bytes = std::fs::read(&path).map_err(|e| io_error(&path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Format {
        path: path.display().to_string(),
        message: format!("not a shard index: {e}"),
    })
}

/// Creates `out` for a new run, or checks that it holds the same run when
/// resuming; removes temporary files a killed run left behind.
fn prepare_out_dir(out: &Path, record: &RunRecord, resume: bool) -> Result<()> {
    let run_path = out.join("run.json");
    let json =
        serde_json::to_vec_pretty(record).map_err(|e| Error::invalid("extract", e.to_string()))?;
    let exists_non_empty = std::fs::read_dir(out)
        .map(|mut d| d.any(|e| e.map_or(true, |e| e.file_name() != LOCK_FILE)))
        .unwrap_or(false);
    if exists_non_empty {
        if !resume {
            return Err(Error::invalid(
                "extract",
                format!(
                    "{} exists and is not empty: pass --resume to continue the run in it, or choose another output",
                    out.display()
                ),
            ));
        }
        let Ok(before) = std::fs::read(&run_path) else {
            return Err(Error::invalid(
                "extract",
                format!(
                    "{} has no run.json: it is not a layerlens extraction to resume",
                    out.display()
                ),
            ));
        };
        let before: RunRecord = serde_json::from_slice(&before).map_err(|e| Error::Format {
            path: run_path.display().to_string(),
            message: format!("not a layerlens run record: {e}"),
        })?;
        if &before != record {
            return Err(Error::invalid(
                "extract",
                format!(
                    "cannot resume {}: {}",
                    out.display(),
                    describe_difference(&before, record)
                ),
            ));
        }
        for entry in std::fs::read_dir(out).map_err(|e| io_error(out, e))? {
            let path = entry.map_err(|e| io_error(out, e))?.path();
            if is_stray_temporary(&path) {
                std::fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
            }
        }
        return Ok(());
    }
    std::fs::create_dir_all(out).map_err(|e| io_error(out, e))?;
    write_file_atomic(&run_path, |f| f.write_all(&json))
}

/// A file an interrupted run left half-written: layerlens' own `NAME.tmp`, or
/// the `.tmpXXXXXX` sibling the safetensors writer creates before renaming it
/// onto layerlens' `.tmp` (a job killed inside that write leaves it behind).
fn is_stray_temporary(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    path.extension().is_some_and(|e| e == "tmp") || (name.starts_with(".tmp") && path.is_file())
}

fn describe_difference(before: &RunRecord, now: &RunRecord) -> String {
    if before.inputs != now.inputs || before.inputs_crc32 != now.inputs_crc32 {
        return format!(
            "the inputs changed since it started ({} images then, {} now)",
            before.inputs, now.inputs
        );
    }
    let mut diffs = Vec::new();
    if before.settings != now.settings {
        for (k, v) in &now.settings {
            let was = before.settings.get(k).map_or("(none)", String::as_str);
            if was != v {
                diffs.push(format!("{k} was '{was}', now '{v}'"));
            }
        }
    }
    if before.layers != now.layers {
        diffs.push("the extracted layers differ".into());
    }
    if before.format != now.format {
        diffs.push(format!(
            "format was {:?}, now {:?}",
            before.format, now.format
        ));
    }
    if before.batch != now.batch {
        diffs.push(format!("batch was {}, now {}", before.batch, now.batch));
    }
    if before.rows_per_shard != now.rows_per_shard {
        diffs.push(format!(
            "rows per shard was {}, now {}",
            before.rows_per_shard, now.rows_per_shard
        ));
    }
    if before.part != now.part {
        diffs.push(format!("shard was {}, now {}", before.part, now.part));
    }
    if diffs.is_empty() {
        "its run.json differs".into()
    } else {
        format!("it was started with other settings: {}", diffs.join("; "))
    }
}

fn progress_bar(show: bool, total: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:32} {pos}/{len} images  {rate}  ETA {eta}")
    {
        bar.set_style(style.with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0} images/s", state.per_sec());
            },
        ));
    }
    bar
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes a file through `PATH.tmp`: filled by `fill`, synced, renamed into
/// place, with the umask's mode ([`layerlens_core::fsio::write_atomic`]). A
/// reader never sees a partial file under `path`; on error the temporary file
/// is removed.
pub use layerlens_core::fsio::write_atomic as write_file_atomic;

/// Writes named tensors (batch first, one row per entry of `rows`) to `path`
/// in `format`, atomically. `meta` goes into the file's metadata where the
/// format has some (safetensors: one entry `layerlens` holding `meta` as JSON;
/// parquet: the same, plus the per-sample shapes). The bytes depend only on
/// the arguments, so reruns produce identical files.
pub fn write_tensors(
    path: &Path,
    format: OutputFormat,
    tensors: &[(String, Tensor)],
    rows: &[String],
    meta: &BTreeMap<String, String>,
) -> Result<()> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        owned.push((name.as_str(), t.dims().to_vec(), bytes));
    }
    let layers: Vec<LayerBytes> = owned
        .iter()
        .map(|(name, shape, bytes)| LayerBytes {
            name,
            shape: shape.clone(),
            bytes,
        })
        .collect();
    write_layers(path, format, &layers, rows, meta)
}

/// One layer's activations: float32, little-endian, C order, batch first.
struct LayerBytes<'a> {
    name: &'a str,
    shape: Vec<usize>,
    bytes: &'a [u8],
}

impl safetensors::View for &LayerBytes<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn write_layers(
    path: &Path,
    format: OutputFormat,
    layers: &[LayerBytes],
    rows: &[String],
    meta: &BTreeMap<String, String>,
) -> Result<()> {
    let json_err = |e: serde_json::Error| Error::invalid("extract", e.to_string());
    match format {
        OutputFormat::Safetensors => {
            // One metadata entry holding sorted JSON: safetensors serialises its
            // metadata map in hash order, which would differ from run to run.
            let info = std::collections::HashMap::from([(
                "layerlens".to_string(),
                serde_json::to_string(meta).map_err(json_err)?,
            )]);
            // safetensors writes a 0600 temporary file of its own and renames
            // it to `tmp`; write_atomic_with gives the result the umask's mode.
            layerlens_core::fsio::write_atomic_with(path, |tmp| {
                safetensors::serialize_to_file(layers.iter().map(|l| (l.name, l)), Some(info), tmp)
                    .map_err(|e| Error::invalid("extract", format!("{}: {e}", path.display())))
            })
        }
        OutputFormat::Npy if path.extension().is_some_and(|e| e == "npy") => {
            let [layer] = layers else {
                return Err(Error::invalid(
                    "extract",
                    format!(
                        "{}: a .npy file holds one array but {} layers are extracted; use .npz or .safetensors",
                        path.display(),
                        layers.len()
                    ),
                ));
            };
            write_file_atomic(path, |f| write_npy(f, &layer.shape, layer.bytes))
        }
        OutputFormat::Npy => write_file_atomic(path, |f| write_npz(f, layers)),
        OutputFormat::Parquet => write_file_atomic(path, |f| {
            write_parquet(f, layers, rows, meta).map_err(std::io::Error::other)
        }),
    }
}

/// One array in NumPy's `.npy` format (version 1.0, little-endian float32, C order).
fn write_npy<W: Write>(w: &mut W, shape: &[usize], bytes: &[u8]) -> std::io::Result<()> {
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    // Magic (6) + version (2) + length (2) + header, padded to 64 bytes, ending in '\n'.
    let total = (10 + header.len() + 1).div_ceil(64) * 64;
    header.push_str(&" ".repeat(total - 10 - header.len() - 1));
    header.push('\n');
    w.write_all(b"\x93NUMPY\x01\x00")?;
    w.write_all(&(header.len() as u16).to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    w.write_all(bytes)
}

/// NumPy's `.npz`: a zip of `.npy` files, stored (not compressed), with a
/// fixed timestamp so reruns are byte-identical.
fn write_npz<W: Write + std::io::Seek>(w: &mut W, layers: &[LayerBytes]) -> std::io::Result<()> {
    let mut zip = zip::ZipWriter::new(w);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default())
        .large_file(true);
    for layer in layers {
        zip.start_file(format!("{}.npy", layer.name), options)
            .map_err(std::io::Error::other)?;
        write_npy(&mut zip, &layer.shape, layer.bytes)?;
    }
    zip.finish().map_err(std::io::Error::other)?;
    Ok(())
}

/// The JSON a Parquet file of layerlens carries under the key-value metadata
/// key `layerlens`: `meta`'s entries plus `shapes`, each layer's per-sample
/// shape. Public so that tables built elsewhere (the Python module's Ray and
/// Spark writers) describe themselves exactly as the CLI's files do.
pub fn parquet_metadata<K: AsRef<str> + Ord>(
    meta: &BTreeMap<String, String>,
    shapes: &BTreeMap<K, Vec<usize>>,
) -> Result<String> {
    let shapes: BTreeMap<&str, &Vec<usize>> = shapes.iter().map(|(k, v)| (k.as_ref(), v)).collect();
    let mut all_meta: BTreeMap<&str, serde_json::Value> = meta
        .iter()
        .map(|(k, v)| (k.as_str(), serde_json::Value::from(v.as_str())))
        .collect();
    all_meta.insert("shapes", serde_json::json!(shapes));
    serde_json::to_string(&all_meta).map_err(|e| Error::invalid("extract", e.to_string()))
}

/// A parquet file: a `path` column and a `list<float>` column per layer.
fn write_parquet<W: Write + Send>(
    w: W,
    layers: &[LayerBytes],
    rows: &[String],
    meta: &BTreeMap<String, String>,
) -> Result<()> {
    use parquet::basic::{LogicalType, Repetition, Type as Physical};
    use parquet::data_type::{ByteArray, ByteArrayType, FloatType};
    use parquet::file::metadata::KeyValue;
    use parquet::file::properties::{EnabledStatistics, WriterProperties};
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::types::Type;
    use std::sync::Arc;

    let err = |e: parquet::errors::ParquetError| Error::invalid("extract", format!("parquet: {e}"));
    let mut fields = vec![Arc::new(
        Type::primitive_type_builder("path", Physical::BYTE_ARRAY)
            .with_repetition(Repetition::REQUIRED)
            .with_logical_type(Some(LogicalType::String))
            .build()
            .map_err(err)?,
    )];
    let mut shapes = BTreeMap::new();
    for layer in layers {
        if layer.shape[0] != rows.len() {
            return Err(Error::invalid(
                "extract",
                format!(
                    "{}: {} rows for {} inputs",
                    layer.name,
                    layer.shape[0],
                    rows.len()
                ),
            ));
        }
        shapes.insert(layer.name, layer.shape[1..].to_vec());
        let element = Type::primitive_type_builder("element", Physical::FLOAT)
            .with_repetition(Repetition::REQUIRED)
            .build()
            .map_err(err)?;
        let list = Type::group_type_builder("list")
            .with_repetition(Repetition::REPEATED)
            .with_fields(vec![Arc::new(element)])
            .build()
            .map_err(err)?;
        fields.push(Arc::new(
            Type::group_type_builder(layer.name)
                .with_repetition(Repetition::REQUIRED)
                .with_logical_type(Some(LogicalType::List))
                .with_fields(vec![Arc::new(list)])
                .build()
                .map_err(err)?,
        ));
    }
    let schema = Arc::new(
        Type::group_type_builder("layerlens")
            .with_fields(fields)
            .build()
            .map_err(err)?,
    );
    let kv = parquet_metadata(meta, &shapes)?;
    let props = WriterProperties::builder()
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::None)
        .set_key_value_metadata(Some(vec![KeyValue::new("layerlens".into(), kv)]))
        .build();
    let mut writer = SerializedFileWriter::new(w, schema, Arc::new(props)).map_err(err)?;
    let mut group = writer.next_row_group().map_err(err)?;
    let mut column = 0;
    while let Some(mut col) = group.next_column().map_err(err)? {
        if column == 0 {
            let values: Vec<ByteArray> = rows.iter().map(|r| ByteArray::from(r.as_str())).collect();
            col.typed::<ByteArrayType>()
                .write_batch(&values, None, None)
                .map_err(err)?;
        } else {
            let layer = &layers[column - 1];
            let per_row: usize = layer.shape[1..].iter().product();
            // A few rows at a time: bounded conversion buffers.
            let rows_per_write = (1 << 20) / per_row.max(1) + 1;
            for chunk in layer.bytes.chunks(rows_per_write * per_row * 4) {
                let values: Vec<f32> = chunk
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let def = vec![1i16; values.len()];
                let rep: Vec<i16> = (0..values.len())
                    .map(|i| i16::from(i % per_row != 0))
                    .collect();
                col.typed::<FloatType>()
                    .write_batch(&values, Some(&def), Some(&rep))
                    .map_err(err)?;
            }
        }
        col.close().map_err(err)?;
        column += 1;
    }
    group.close().map_err(err)?;
    writer.close().map_err(err)?;
    Ok(())
}
