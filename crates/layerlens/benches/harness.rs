//! The layerlens side of the benchmark harness (run everything through
//! `scripts/bench.sh`, which also runs the PyTorch / ONNX Runtime side,
//! `scripts/bench/reference.py`, on the same weights and thread count).
//!
//! `cargo bench -p layerlens --bench harness -- [WEIGHTS_DIR]` prints one JSON
//! object per case: `{"case", "framework", "median_ms", "min_ms", "peak_rss_mb"}`
//! plus, for extraction cases, the plan's activation memory
//! (`plan_activation_mb`: the largest live set, requested outputs included) and
//! the weights' size and the heap's live bytes before and at the peak of one
//! extraction (`heap_before_mb`, `heap_peak_mb`: a counting allocator around
//! mimalloc), so the peak can be checked against weights + 1.5 × activations +
//! outputs at allocation level. `WEIGHTS_DIR` holds `resnet18.safetensors` and
//! `resnet18.onnx` from `reference.py prepare`; without it ResNet-18 runs on its
//! seeded initial weights (timings do not depend on the values).
//!
//! Repetitions: `$REPS` (default 20; batch 8 and training run fewer).
//! `LAYERLENS_KERNELS=candle` runs candle's CPU convolution and pooling (and
//! training-mode batch norm composed from candle ops) instead of layerlens'
//! kernels (the "before" column of docs/performance.md).

use layerlens::candle_core::{Device, Tensor};
use layerlens::prelude::*;
use layerlens_train::loss::{Loss, Targets};
use layerlens_train::optim::{Adam, Optimizer};
use std::alloc::{GlobalAlloc, Layout};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// mimalloc, counting the bytes live on the heap and their peak, so that an
/// extraction's memory is measured at allocation level (weights, activations,
/// scratch buffers) rather than as process RSS (which also holds the binary, the
/// allocator's caches and whatever loading the weights touched).
struct CountingAlloc;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static PEAK_BYTES: AtomicUsize = AtomicUsize::new(0);

fn count_alloc(size: usize) {
    let now = LIVE_BYTES.fetch_add(size, Ordering::Relaxed) + size;
    PEAK_BYTES.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to mimalloc unchanged; the counters only
// observe the sizes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !p.is_null() {
            count_alloc(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            count_alloc(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
            count_alloc(new_size);
        }
        p
    }
}

/// Runs `f` once and returns the heap's live bytes before it and their peak
/// during it, in MB.
fn heap_peak_mb(f: impl FnOnce() -> layerlens::Result<()>) -> layerlens::Result<(f64, f64)> {
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    PEAK_BYTES.store(before, Ordering::Relaxed);
    f()?;
    let peak = PEAK_BYTES.load(Ordering::Relaxed);
    Ok((before as f64 / 1e6, peak as f64 / 1e6))
}

fn status_kb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(f64::NAN)
}

/// Resets the process's peak RSS to its current RSS (Linux), so that each case
/// reports its own peak.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

struct Timing {
    median: f64,
    min: f64,
    peak_mb: f64,
}

/// The process's CPU time (all threads) in ms.
fn cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

/// `TIMER=cpu` reports CPU time (all threads) instead of wall time: steadier
/// when other processes share the machine, for comparing two versions of a
/// kernel; the side-by-side tables use wall time.
fn use_cpu_time() -> bool {
    std::env::var("TIMER").is_ok_and(|t| t == "cpu")
}

fn timed(reps: usize, mut f: impl FnMut() -> layerlens::Result<()>) -> layerlens::Result<Timing> {
    for _ in 0..3 {
        f()?;
    }
    reset_peak();
    let cpu = use_cpu_time();
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        if cpu {
            let t0 = cpu_ms();
            f()?;
            t.push(cpu_ms() - t0);
        } else {
            let t0 = Instant::now();
            f()?;
            t.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    t.sort_by(f64::total_cmp);
    Ok(Timing {
        median: t[t.len() / 2],
        min: t[0],
        peak_mb: status_kb("VmHWM:") / 1024.0,
    })
}

/// Prints one case's JSON line; the framework is labelled with the kernels'
/// instruction-set path (`layerlens [avx512]`), so runs under different
/// `LAYERLENS_ISA` values sit side by side in one table.
fn report(case: &str, framework: &str, t: &Timing, extra: &str) {
    let isa = layerlens::kernels::isa::process_isa();
    println!(
        "{{\"case\": \"{case}\", \"framework\": \"{framework} [{isa}]\", \"median_ms\": {:.3}, \"min_ms\": {:.3}, \"peak_rss_mb\": {:.1}{extra}}}",
        t.median, t.min, t.peak_mb
    );
}

fn resnet18(dir: Option<&Path>) -> layerlens::Result<Model> {
    let model = layerlens::zoo::resnet18(1000)?;
    if let Some(d) = dir {
        layerlens::weights::load_weights(&model, d.join("resnet18.safetensors"))?;
    }
    Ok(model)
}

fn weights_mb(model: &Model) -> f64 {
    let elems: usize = model
        .params()
        .iter()
        .map(|(_, p)| p.var.as_tensor().elem_count())
        .sum();
    elems as f64 * 4.0 / 1e6
}

/// One step: forward in training mode, cross-entropy, backward, Adam.
fn train_step(
    model: &Model,
    out: &str,
    x: &Tensor,
    y: &Tensor,
    opt: &mut Adam,
) -> layerlens::Result<()> {
    let acts = model.run(&[x.clone()], &[out], RunOptions::training())?;
    let (loss, _) = Loss::cross_entropy(out).compute(
        &acts,
        Targets {
            labels: Some(y),
            values: None,
        },
    )?;
    let _ = loss.to_scalar::<f32>()?;
    let grads = model.params().grads(&loss.backward()?);
    opt.step(&grads)?;
    Ok(())
}

const CASES: [&str; 10] = [
    "resnet18_full_b1",
    "resnet18_full_b8",
    "resnet18_layer2_b1",
    "resnet18_taps4_b1",
    "resnet18_onnx_full_b1",
    "resnet50_onnx_b16",
    "mobilenetv2_onnx_b16",
    "seed_cnn_forward_b64",
    "seed_cnn_train_b64",
    "resnet18_train_b8",
];

/// Without `--case`, runs every case in a fresh child process (so that each peak
/// RSS is the case's own) and passes their lines through.
fn main() -> layerlens::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let case_at = args.iter().position(|a| a == "--case");
    let dir: Option<PathBuf> = args
        .iter()
        .enumerate()
        .find(|(i, a)| !a.starts_with('-') && case_at.is_none_or(|c| *i != c + 1))
        .map(|(_, a)| a)
        .map(PathBuf::from)
        .filter(|d| d.join("resnet18.safetensors").exists());
    if let Some(i) = case_at {
        let case = args.get(i + 1).map(String::as_str).unwrap_or("");
        return run_case(case, dir.as_deref());
    }
    // A header line: the CPU and the kernels' path (bench.sh prints it).
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!(
        "{{\"machine\": {{\"cpu\": \"{cpu}\", \"isa\": \"{}\", \"supported\": \"{}\", \"threads\": \"{}\"}}}}",
        layerlens::kernels::isa::process_isa(),
        layerlens::kernels::isa::Isa::supported()
            .iter()
            .map(|i| i.name())
            .collect::<Vec<_>>()
            .join(","),
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all cores".into())
    );
    let only: Option<Vec<String>> = std::env::var("CASES")
        .ok()
        .map(|s| s.split(',').map(str::to_string).collect());
    let exe =
        std::env::current_exe().map_err(|e| layerlens::Error::invalid("harness", e.to_string()))?;
    for case in CASES {
        if only.as_ref().is_some_and(|o| !o.iter().any(|c| c == case)) {
            continue;
        }
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["--case", case]);
        if let Some(d) = &dir {
            cmd.arg(d);
        }
        let status = cmd
            .status()
            .map_err(|e| layerlens::Error::invalid("harness", e.to_string()))?;
        if !status.success() {
            eprintln!("case {case} failed: {status}");
        }
    }
    Ok(())
}

fn run_case(case: &str, dir: Option<&Path>) -> layerlens::Result<()> {
    // `LAYERLENS_KERNELS=candle` measures candle's own CPU convolution and pooling
    // (and composed training-mode batch norm).
    if std::env::var("LAYERLENS_KERNELS").is_ok_and(|k| k == "candle") {
        layerlens::kernels::set_kernel_path(layerlens::kernels::KernelPath::Candle);
    }
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dev = Device::Cpu;
    let x1 = || Tensor::randn(0f32, 1f32, (1, 3, 224, 224), &dev);
    let x8 = || Tensor::randn(0f32, 1f32, (8, 3, 224, 224), &dev);
    let seed_batch = || -> layerlens::Result<(Tensor, Tensor)> {
        let labels: Vec<u32> = (0..64).map(|i| i % 10).collect();
        Ok((
            Tensor::rand(0f32, 1f32, (64, 1, 28, 28), &dev)?,
            Tensor::from_vec(labels, 64, &dev)?,
        ))
    };
    let taps: &[&str] = match case {
        "resnet18_layer2_b1" => &["layer2"],
        _ => &["layer1", "layer2", "layer3", "layer4"],
    };
    let t = match case {
        "resnet18_full_b1" | "resnet18_full_b8" => {
            let model = resnet18(dir)?;
            let (x, reps) = if case.ends_with("b1") {
                (x1()?, reps)
            } else {
                (x8()?, (reps / 2).max(5))
            };
            timed(reps, || model.forward(&[x.clone()]).map(|_| ()))?
        }
        "resnet18_layer2_b1" | "resnet18_taps4_b1" => {
            let model = resnet18(dir)?;
            let x = x1()?;
            let t = timed(reps, || model.extract(&x, taps).map(|_| ()))?;
            // Heap at rest (weights, input, warm scratch buffers) and its peak
            // during one more extraction whose outputs are kept until it returns.
            let (heap_before, heap_peak) = heap_peak_mb(|| model.extract(&x, taps).map(|_| ()))?;
            let plan = model.plan(taps)?;
            let outputs: usize = taps
                .iter()
                .map(|n| {
                    let g = model.graph();
                    g.find(n).map(|id| g.node(id).shape.elem_count())
                })
                .sum::<layerlens::Result<usize>>()?;
            report(
                case,
                "layerlens",
                &t,
                &format!(
                    ", \"weights_mb\": {:.1}, \"heap_before_mb\": {heap_before:.1}, \"heap_peak_mb\": {heap_peak:.1}, \"plan_activation_mb\": {:.1}, \"outputs_mb\": {:.1}, \"plan_steps\": {}",
                    weights_mb(&model),
                    plan.peak_live_elements() as f64 * 4.0 / 1e6,
                    outputs as f64 * 4.0 / 1e6,
                    plan.steps().len()
                ),
            );
            return Ok(());
        }
        "resnet18_onnx_full_b1" => {
            let Some(d) = dir else {
                return Ok(());
            };
            let onnx = layerlens::onnx::import(d.join("resnet18.onnx"))?;
            let x = x1()?;
            let t = timed(reps, || onnx.forward(&[x.clone()]).map(|_| ()))?;
            report("resnet18_full_b1", "layerlens (ONNX import)", &t, "");
            return Ok(());
        }
        "resnet50_onnx_b16" | "mobilenetv2_onnx_b16" => {
            let file = if case.starts_with("resnet50") {
                "resnet50.onnx"
            } else {
                "mobilenet_v2.onnx"
            };
            let Some(path) = dir.map(|d| d.join(file)).filter(|p| p.exists()) else {
                return Ok(());
            };
            let onnx = layerlens::onnx::import(path)?;
            let x = Tensor::randn(0f32, 1f32, (16, 3, 224, 224), &dev)?;
            let t = timed((reps / 4).max(5), || onnx.forward(&[x.clone()]).map(|_| ()))?;
            report(case, "layerlens (ONNX import)", &t, "");
            return Ok(());
        }
        "seed_cnn_forward_b64" => {
            let seed = layerlens::zoo::seed_cnn(false)?;
            let (x, _) = seed_batch()?;
            timed(reps, || seed.forward(&[x.clone()]).map(|_| ()))?
        }
        "seed_cnn_train_b64" => {
            let seed = layerlens::zoo::seed_cnn(false)?;
            let (x, y) = seed_batch()?;
            let mut opt = Adam::new(seed.params(), 1e-3);
            timed(reps, || train_step(&seed, "dense", &x, &y, &mut opt))?
        }
        "resnet18_train_b8" => {
            let model = resnet18(dir)?;
            let mut opt = Adam::new(model.params(), 1e-3);
            let (x, y) = (x8()?, Tensor::arange(0u32, 8u32, &dev)?);
            timed((reps / 4).max(5), || {
                train_step(&model, "fc", &x, &y, &mut opt)
            })?
        }
        other => {
            return Err(layerlens::Error::invalid(
                "harness",
                format!("unknown case '{other}' (cases: {})", CASES.join(", ")),
            ))
        }
    };
    report(case, "layerlens", &t, "");
    Ok(())
}
