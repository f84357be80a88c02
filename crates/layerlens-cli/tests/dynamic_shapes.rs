//! ONNX files whose input sizes are symbolic (declared `(N, 3, height,
//! width)`, as detection and segmentation exports are): the sizes come from a
//! tensor input as it is, from `--input-shape` (images are resized to it) or
//! from `--dim`; `summary` lists the symbolic dims and the flags; an
//! unresolved or contradictory size is a one-line error naming it. Outputs are
//! compared with ONNX Runtime (crates/layerlens-onnx/tests/fixtures/
//! gen_semantics_models.py, within 1e-5 + 1e-4 relative).

use layerlens::candle_core::{self as candle_core, Device, Tensor};
use std::path::PathBuf;
use std::process::Command;

fn fixture(name: &str) -> String {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../layerlens-onnx/tests/fixtures"
    ))
    .join(name)
    .to_str()
    .unwrap()
    .to_string()
}

fn layerlens(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_layerlens"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("layerlens-dyn-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn refs() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("semantics_refs.safetensors"), &Device::Cpu).unwrap()
}

fn assert_close(got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims());
    let g: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    let w: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 + 1e-4 * b.abs(),
            "[{i}]: {a} vs ONNX Runtime {b}"
        );
    }
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn one_line_error(out: &std::process::Output) -> String {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

#[test]
fn sizes_come_from_tensor_inputs_and_match_onnx_runtime_at_two_sizes() {
    let model = fixture("dynamic_hw.onnx");
    let refs = refs();
    let dir = scratch("tensors");
    for tag in ["16x20", "24x12"] {
        let x = dir.join(format!("{tag}.safetensors"));
        candle_core::safetensors::save(
            &[(
                "x".to_string(),
                refs[&format!("dynamic_hw_{tag}/x")].clone(),
            )]
            .into_iter()
            .collect(),
            &x,
        )
        .unwrap();
        let out = dir.join(format!("{tag}-out.safetensors"));
        ok(&layerlens(&[
            "extract",
            &model,
            "--input",
            x.to_str().unwrap(),
            "--layers",
            "y",
            "--out",
            out.to_str().unwrap(),
        ]));
        let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
        assert_close(&got["y"], &refs[&format!("dynamic_hw_{tag}/y")]);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn input_shape_and_dim_flags_size_images_and_summary() {
    let model = fixture("dynamic_hw.onnx");
    let text = ok(&layerlens(&["summary", &model]));
    assert!(text.contains("x: (N, 3, height, width)"), "{text}");
    assert!(
        text.contains("--input-shape 3,224,224")
            && text.contains("--dim height=224 --dim width=224"),
        "{text}"
    );
    for flags in [
        vec!["--input-shape", "3,24,12"],
        vec!["--input-shape", "x=3,24,12"],
        vec!["--dim", "height=24", "--dim", "width=12"],
    ] {
        let mut args = vec!["summary", model.as_str()];
        args.extend(&flags);
        let text = ok(&layerlens(&args));
        assert!(text.contains("(N, 2, 24, 12)"), "{flags:?}: {text}");
    }
    // An image is resized to the given size.
    let dir = scratch("image");
    let png = dir.join("in.png");
    image::RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 8) as u8, 100])
    })
    .save(&png)
    .unwrap();
    let out = dir.join("out.safetensors");
    ok(&layerlens(&[
        "extract",
        &model,
        "--input",
        png.to_str().unwrap(),
        "--input-shape",
        "3,24,12",
        "--layers",
        "y,pool1",
        "--out",
        out.to_str().unwrap(),
    ]));
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    assert_eq!(got["y"].dims(), &[1, 2, 24, 12]);
    assert_eq!(got["pool1"].dims(), &[1, 4, 12, 6]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unresolved_or_contradictory_sizes_are_one_line_errors_naming_them() {
    let model = fixture("dynamic_hw.onnx");
    let png = scratch("errors").join("in.png");
    image::RgbImage::new(8, 8).save(&png).unwrap();
    let png = png.to_str().unwrap();
    let extract = |extra: &[&str]| {
        let mut args = vec![
            "extract",
            model.as_str(),
            "--input",
            png,
            "--layers",
            "y",
            "--out",
            "/tmp/never-written.safetensors",
        ];
        args.extend(extra);
        one_line_error(&layerlens(&args))
    };
    let e = extract(&[]);
    assert!(
        e.contains("height, width unresolved") && e.contains("--input-shape x=3,HEIGHT,WIDTH"),
        "{e}"
    );
    let e = extract(&["--dim", "height=24"]);
    assert!(
        e.contains("(width unresolved)") && e.contains("--dim width=V"),
        "{e}"
    );
    let e = extract(&["--input-shape", "4,24,12"]);
    assert!(
        e.contains("dim 1 cannot be 4") && e.contains("(N, 3, height, width)"),
        "{e}"
    );
    let e = extract(&["--input-shape", "3,24"]);
    assert!(e.contains("3 dims after the batch"), "{e}");
    let e = extract(&["--input-shape", "images=3,24,12"]);
    assert!(e.contains("images") && e.contains("'x'"), "{e}");
    let e = extract(&["--input-shape", "3,x,12"]);
    assert!(e.contains("[NAME=]C,H,W"), "{e}");
    let e = one_line_error(&layerlens(&[
        "summary",
        "zoo:seed_cnn",
        "--input-shape",
        "1,28,28",
    ]));
    assert!(e.contains("fixed input shapes"), "{e}");
    assert!(!std::path::Path::new("/tmp/never-written.safetensors").exists());
}

/// `--keep-size`: a directory of images of two sizes runs each image at its own
/// size, one directory of shards per size, each row equal to a one-image
/// extraction at that size (`--input-shape`, which then resizes nothing); an
/// unreadable image is skipped and listed; misuse is a one-line error.
#[test]
fn keep_size_groups_images_by_size_into_one_directory_each() {
    let model = fixture("dynamic_hw.onnx");
    let dir = scratch("keep-size");
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let sizes = [("a.png", 20, 16), ("b.png", 12, 24), ("c.png", 20, 16)];
    for (i, (name, w, h)) in sizes.iter().enumerate() {
        image::RgbImage::from_fn(*w, *h, |x, y| {
            image::Rgb([(x * 9 + i as u32 * 40) as u8, (y * 7) as u8, 30])
        })
        .save(images.join(name))
        .unwrap();
    }
    std::fs::write(images.join("broken.png"), b"not a png").unwrap();
    let out = dir.join("out");
    let text = layerlens(&[
        "extract",
        &model,
        "--input",
        images.to_str().unwrap(),
        "--layers",
        "y",
        "--keep-size",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let stderr = String::from_utf8_lossy(&text.stderr);
    assert!(stderr.contains("2 image size(s)"), "{stderr}");
    assert!(
        stderr.contains("broken.png"),
        "the unreadable image is listed: {stderr}"
    );
    for (sub, files, h, w) in [
        ("16x20", vec!["a.png", "c.png"], 16, 20),
        ("24x12", vec!["b.png"], 24, 12),
    ] {
        let shard = candle_core::safetensors::load(
            out.join(sub).join("shard-00000.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(shard["y"].dims(), &[files.len(), 2, h, w], "{sub}");
        assert!(out.join(sub).join("manifest.jsonl").exists());
        for (row, name) in files.iter().enumerate() {
            let one = dir.join(format!("{name}.safetensors"));
            ok(&layerlens(&[
                "extract",
                &model,
                "--input",
                images.join(name).to_str().unwrap(),
                "--input-shape",
                &format!("3,{h},{w}"),
                "--layers",
                "y",
                "--out",
                one.to_str().unwrap(),
            ]));
            let want = candle_core::safetensors::load(&one, &Device::Cpu).unwrap();
            assert_close(&shard["y"].narrow(0, row, 1).unwrap(), &want["y"]);
        }
    }
    let manifest = std::fs::read_to_string(out.join("16x20/manifest.jsonl")).unwrap();
    assert!(manifest.contains("broken.png"), "{manifest}");
    for (extra, needle) in [
        (
            vec!["--out", "/tmp/x.safetensors"],
            "give --out a directory",
        ),
        (
            vec!["--out", "/tmp/never", "--input-shape", "3,8,8"],
            "drop one of them",
        ),
    ] {
        let mut args = vec![
            "extract",
            model.as_str(),
            "--input",
            images.to_str().unwrap(),
            "--layers",
            "y",
            "--keep-size",
        ];
        args.extend(extra);
        let e = one_line_error(&layerlens(&args));
        assert!(e.contains(needle), "{e}");
    }
    let e = one_line_error(&layerlens(&[
        "extract",
        "zoo:seed_cnn",
        "--input",
        images.to_str().unwrap(),
        "--layers",
        "conv2d",
        "--keep-size",
        "--out",
        "/tmp/never",
    ]));
    assert!(
        e.contains("--keep-size is for an ONNX model whose input size is symbolic"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A directory of images through a model whose tensor puts the batch second
/// (the toy ViT's attention input, ONNX `(17, N, 16)`): each shard row is that
/// image's own tensor — the tensor of the image alone without its batch axis —
/// never a slice across the images of a batch.
#[test]
fn dataset_rows_of_a_tensor_whose_batch_is_not_first_are_per_image() {
    let model = fixture("subset_vit_torchscript.onnx");
    let dir = scratch("vit-rows");
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    for i in 0..3u32 {
        image::RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb([
                (x * 7 + i * 50) as u8,
                (y * 5 + x) as u8,
                (i * 80 + y) as u8,
            ])
        })
        .save(imgs.join(format!("{i}.png")))
        .unwrap();
    }
    let layer = "/encoder/layers/encoder_layer_0/self_attention/Transpose_output_0";
    let shards = dir.join("shards");
    ok(&layerlens(&[
        "extract",
        &model,
        "--input",
        imgs.to_str().unwrap(),
        "--input-shape",
        "3,32,32",
        "--layers",
        layer,
        "--batch",
        "3",
        "--out",
        shards.to_str().unwrap(),
    ]));
    let rows = candle_core::safetensors::load(shards.join("shard-00000.safetensors"), &Device::Cpu)
        .unwrap();
    let rows = &rows[layer];
    assert_eq!(rows.dims(), &[3, 17, 16]);
    for i in 0..3usize {
        let one = dir.join(format!("{i}.safetensors"));
        ok(&layerlens(&[
            "extract",
            &model,
            "--input",
            imgs.join(format!("{i}.png")).to_str().unwrap(),
            "--input-shape",
            "3,32,32",
            "--layers",
            layer,
            "--out",
            one.to_str().unwrap(),
        ]));
        let alone = candle_core::safetensors::load(&one, &Device::Cpu).unwrap();
        let alone = &alone[layer];
        assert_eq!(alone.dims(), &[17, 1, 16], "the ONNX layout, batch second");
        assert_close(&rows.get(i).unwrap(), &alone.squeeze(1).unwrap());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
