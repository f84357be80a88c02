//! NaN and infinite values in `layerlens extract`: counted per input and per
//! extracted layer, one warning line each on stderr and the counts in the
//! output's metadata (file outputs) or shard indexes (directories); with
//! `--strict` the run fails with one line naming the input or layer and the
//! count, and leaves nothing complete-looking behind.

mod common;

use common::{fashion_picture, layerlens, s, scratch};
use layerlens::candle_core::{Device, Tensor};
use std::path::Path;

/// A float32 C-order `.npy` file (format 1.0).
fn write_npy(path: &Path, shape: &[usize], values: &[f32]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    for v in values {
        bytes.extend(v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// `(NaN, +Inf, -Inf, samples with any)` of a batch-first tensor.
fn counts(t: &Tensor) -> (u64, u64, u64, u64) {
    let n = t.dim(0).unwrap();
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    let mut c = (0, 0, 0, 0);
    for row in v.chunks(v.len() / n) {
        let before = c.0 + c.1 + c.2;
        for &x in row {
            if x.is_nan() {
                c.0 += 1;
            } else if x == f32::INFINITY {
                c.1 += 1;
            } else if x == f32::NEG_INFINITY {
                c.2 += 1;
            }
        }
        if c.0 + c.1 + c.2 > before {
            c.3 += 1;
        }
    }
    c
}

/// The warning line the CLI prints for these counts.
fn warning(what: &str, name: &str, (nan, pos, neg, rows): (u64, u64, u64, u64)) -> String {
    let parts: Vec<String> = [(nan, "NaN"), (pos, "+Inf"), (neg, "-Inf")]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, w)| format!("{n} {w}"))
        .collect();
    let total = nan + pos + neg;
    let pl = |n: u64| if n == 1 { "" } else { "s" };
    format!(
        "warning: {what} '{name}': {total} non-finite value{} ({}) in {rows} sample{}",
        pl(total),
        parts.join(", "),
        pl(rows)
    )
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Names of the files in a directory.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn nan_and_inf_in_tensor_inputs_are_counted_and_strict_is_fatal() {
    let root = scratch("nonfinite-tensors");
    // Three samples: one clean, one with a NaN pixel, one with two +Inf and a -Inf.
    let mut x: Vec<f32> = (0..3 * 28 * 28).map(|i| (i % 17) as f32 / 17.0).collect();
    x[784 + 3 * 28 + 4] = f32::NAN;
    x[2 * 784 + 10 * 28 + 10] = f32::INFINITY;
    x[2 * 784 + 20 * 28 + 5] = f32::INFINITY;
    x[2 * 784 + 27] = f32::NEG_INFINITY;
    let npy = root.join("x.npy");
    write_npy(&npy, &[3, 1, 28, 28], &x);
    let st = root.join("x.safetensors");
    let t = Tensor::from_vec(x.clone(), (3, 1, 28, 28), &Device::Cpu).unwrap();
    t.save_safetensors("x", &st).unwrap();

    for input in [&npy, &st] {
        let out = root.join("acts.safetensors");
        let args = [
            "extract",
            "zoo:seed_cnn",
            "--input",
            s(input),
            "--layers",
            "conv2d,conv2d_1",
            "--out",
            s(&out),
        ];
        let run = layerlens(&args);
        let err = stderr(&run);
        assert!(run.status.success(), "{err}");
        let want_input = warning("input", s(input), (1, 2, 1, 2));
        assert!(err.contains(&want_input), "want {want_input:?} in\n{err}");
        // The layers' counts, as the warnings and the metadata give them, are
        // those of the written activations.
        let acts = layerlens::candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let (_, st_meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let info: serde_json::Value =
            serde_json::from_str(&st_meta.metadata().as_ref().unwrap()["layerlens"]).unwrap();
        let nf: serde_json::Value =
            serde_json::from_str(info["layerlens.non_finite"].as_str().unwrap()).unwrap();
        assert_eq!(nf["inputs"][s(input)]["nan"], 1, "{nf}");
        assert_eq!(nf["inputs"][s(input)]["pos_inf"], 2, "{nf}");
        assert_eq!(nf["inputs"][s(input)]["neg_inf"], 1, "{nf}");
        let mut warned = 1;
        for layer in ["conv2d", "conv2d_1"] {
            let c = counts(&acts[layer]);
            if c.0 + c.1 + c.2 == 0 {
                assert!(!err.contains(&format!("layer '{layer}'")), "{err}");
                assert!(nf["layers"].get(layer).is_none(), "{nf}");
                continue;
            }
            warned += 1;
            let w = warning("layer", layer, c);
            assert!(err.contains(&w), "want {w:?} in\n{err}");
            assert_eq!(nf["layers"][layer]["nan"], c.0, "{nf}");
            assert_eq!(nf["layers"][layer]["pos_inf"], c.1, "{nf}");
            assert_eq!(nf["layers"][layer]["rows"], c.3, "{nf}");
        }
        // +Inf pixels reach conv2d through positive weights (ReLU keeps +Inf).
        assert!(warned >= 2, "{err}");
        assert_eq!(err.matches("warning: ").count(), warned, "{err}");

        // --strict: one line naming the input and the count, no output file.
        let strict_out = root.join("strict.safetensors");
        let mut strict = args.to_vec();
        strict[7] = s(&strict_out);
        strict.push("--strict");
        let run = layerlens(&strict);
        let err = stderr(&run);
        assert!(!run.status.success(), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!(
                "input '{}' has 4 non-finite values (1 NaN, 2 +Inf, 1 -Inf) in 2 samples",
                s(input)
            )),
            "{err}"
        );
        assert!(!strict_out.exists());
        assert!(
            !names(&root).iter().any(|n| n.starts_with("strict")),
            "{:?}",
            names(&root)
        );
        std::fs::remove_file(&out).unwrap();
    }
    // A clean input: no warning, no metadata entry, and --strict passes.
    let clean = root.join("clean.npy");
    write_npy(&clean, &[1, 1, 28, 28], &x[..784]);
    let out = root.join("clean.safetensors");
    let run = layerlens(&[
        "extract",
        "zoo:seed_cnn",
        "--input",
        s(&clean),
        "--layers",
        "conv2d",
        "--out",
        s(&out),
        "--strict",
    ]);
    let err = stderr(&run);
    assert!(run.status.success() && !err.contains("warning"), "{err}");
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn infinite_activations_in_a_dataset_run_are_counted_and_strict_leaves_no_shard() {
    let root = scratch("nonfinite-dataset");
    let images = root.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let d = layerlens::data::embedded_fashion_mnist(layerlens::data::Split::Test).unwrap();
    let n = 6;
    for i in 0..n {
        fashion_picture(&d, i)
            .save(images.join(format!("{i}.png")))
            .unwrap();
    }
    // The seed CNN with conv2d_1's first bias +Inf: that channel is +Inf
    // everywhere (11x11 per image), through the ReLU.
    let model = layerlens::zoo::seed_cnn(true).unwrap();
    let b = model
        .params()
        .get("conv2d_1.bias")
        .unwrap()
        .var
        .as_tensor()
        .clone();
    let mut bv: Vec<f32> = b.to_vec1().unwrap();
    bv[0] = f32::INFINITY;
    model
        .params()
        .set("conv2d_1.bias", &Tensor::new(bv, &Device::Cpu).unwrap())
        .unwrap();
    let dir = root.join("model");
    model.save(&dir).unwrap();

    let args = |out: &Path, extra: &[&'static str]| {
        let mut v: Vec<String> = [
            "extract",
            s(&dir),
            "--input",
            s(&images),
            "--layers",
            "conv2d,conv2d_1",
            "--batch",
            "2",
            "--shard-rows",
            "4",
            "--out",
            s(out),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        v.extend(extra.iter().map(|a| a.to_string()));
        v
    };
    let run_args = |v: Vec<String>| {
        let r: Vec<&str> = v.iter().map(String::as_str).collect();
        layerlens(&r)
    };
    let out = root.join("feats");
    let run = run_args(args(&out, &[]));
    let err = stderr(&run);
    assert!(run.status.success(), "{err}");
    let w = warning("layer", "conv2d_1", (0, 121 * n as u64, 0, n as u64));
    assert!(err.contains(&w), "want {w:?} in\n{err}");
    assert_eq!(err.matches("warning: ").count(), 1, "{err}");
    // Each shard's index holds its own counts (4 + 2 images).
    for (shard, rows) in [(0, 4u64), (1, 2)] {
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.join(format!("shard-{shard:05}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(
            index["non_finite"]["layers"]["conv2d_1"]["pos_inf"],
            121 * rows
        );
        assert_eq!(index["non_finite"]["layers"]["conv2d_1"]["rows"], rows);
        assert!(index["non_finite"].get("inputs").is_none(), "{index}");
    }

    // --strict: one line naming the layer and its count, and nothing that looks
    // complete (no shard, no index, no manifest).
    let strict = root.join("strict");
    let run = run_args(args(&strict, &["--strict"]));
    let err = stderr(&run);
    assert!(!run.status.success(), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("layer 'conv2d_1' has 242 non-finite values (242 +Inf) in 2 samples"),
        "{err}"
    );
    let left: Vec<String> = names(&strict)
        .into_iter()
        .filter(|n| n.starts_with("shard-") || n.starts_with("manifest"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    std::fs::remove_dir_all(root).unwrap();
}
