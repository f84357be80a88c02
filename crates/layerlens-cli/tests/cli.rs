//! The `layerlens` binary end to end: each command writes what it says, and bad
//! input is one line on stderr, a non-zero exit, and no output file.

mod common;

use common::{fashion_picture, layerlens, s, scratch};
use std::path::{Path, PathBuf};

/// A real Fashion-MNIST test image (an ankle boot) as a PNG.
fn boot_png(dir: &Path) -> PathBuf {
    let d = layerlens::data::embedded_fashion_mnist(layerlens::data::Split::Test).unwrap();
    let p = dir.join("boot.png");
    fashion_picture(&d, 0).save(&p).unwrap();
    p
}

#[test]
fn commands_write_what_they_say() {
    let dir = scratch("ok");
    let img = boot_png(&dir);
    let out = layerlens(&["summary", "zoo:seed_cnn"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("conv2d_1 (Conv2d)"));

    let feats = dir.join("feats.safetensors");
    let out = layerlens(&[
        "extract",
        "zoo:seed_cnn",
        "--input",
        s(&img),
        "--layers",
        "conv2d*,dense",
        "--apply",
        "mean",
        "--out",
        s(&feats),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = layerlens::candle_core::safetensors::load(&feats, &layerlens::candle_core::Device::Cpu)
        .unwrap();
    assert_eq!(t["conv2d"].dims(), &[1, 32]);
    assert_eq!(t["conv2d_1"].dims(), &[1, 64]);

    for (cmd, file) in [("show", "grid.png"), ("cam", "cam.png")] {
        let p = dir.join(file);
        let out = layerlens(&[
            cmd,
            "zoo:seed_cnn",
            "--input",
            s(&img),
            "--layer",
            "conv2d_1",
            "--out",
            s(&p),
        ]);
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            image::open(&p).unwrap().width() > 28,
            "{cmd} wrote a picture"
        );
    }
    let report = dir.join("report.html");
    let out = layerlens(&[
        "report",
        "zoo:seed_cnn",
        "--input",
        s(&img),
        "--out",
        s(&report),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&report).unwrap();
    // The explorer's static export: its answers inline, CAMs named as people
    // write them, classes by their Fashion-MNIST names.
    assert!(html.contains("window.LAYERLENS_STATIC") && html.contains("data:image/png;base64,"));
    assert!(
        html.contains(r#""method":"Grad-CAM++""#),
        "Grad-CAM++ by name"
    );
    assert!(
        layerlens::data::FASHION_CLASSES
            .iter()
            .any(|c| html.contains(&format!(r#""class_name":"{c}""#))),
        "a Fashion-MNIST class name"
    );
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "nothing external"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn errors_are_one_line_and_leave_no_output() {
    let dir = scratch("err");
    let img = boot_png(&dir);
    let out_file = dir.join("x.safetensors");
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "extract",
                "zoo:seed_cnn",
                "--input",
                s(&img),
                "--layers",
                "conv3",
                "--out",
                s(&out_file),
            ],
            "unknown node 'conv3'; did you mean 'conv2d'",
        ),
        (
            &[
                "extract",
                "zoo:nope",
                "--input",
                s(&img),
                "--layers",
                "all",
                "--out",
                s(&out_file),
            ],
            "unknown zoo model 'nope'",
        ),
        (
            &[
                "extract",
                "missing.onnx",
                "--input",
                s(&img),
                "--layers",
                "all",
                "--out",
                s(&out_file),
            ],
            "missing.onnx",
        ),
        (
            &[
                "cam",
                "zoo:seed_cnn",
                "--input",
                s(&img),
                "--layer",
                "conv2d_1",
                "--method",
                "gradcam3",
                "--out",
                s(&out_file),
            ],
            "unknown CAM method 'gradcam3'",
        ),
        (
            &[
                "show",
                "zoo:seed_cnn",
                "--input",
                "nope.png",
                "--layer",
                "conv2d",
                "--out",
                s(&out_file),
            ],
            "nope.png",
        ),
    ];
    for (args, needle) in cases {
        let out = layerlens(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
        assert!(!out_file.exists(), "no output file after an error");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn zoo_models_without_their_weights_warn_on_every_run() {
    let warned = |spec: &str| {
        let out = layerlens(&["summary", spec]);
        assert!(out.status.success(), "{spec}");
        String::from_utf8_lossy(&out.stderr).contains("has random weights")
    };
    assert!(warned("zoo:resnet18"));
    assert!(!warned("zoo:resnet18=random"));
    assert!(
        !warned("zoo:seed_cnn"),
        "the seed CNN has no pretrained weights to miss"
    );
}

#[test]
fn published_weights_by_name_come_from_the_cache_and_offline_is_one_line() {
    let dir = scratch("hub");
    let run = |hub: &Path, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_layerlens"))
            .args(args)
            .env("LAYERLENS_HUB_DIR", hub)
            .env("LAYERLENS_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let (empty, filled) = (dir.join("empty"), dir.join("filled"));
    std::fs::create_dir_all(&filled).unwrap();
    // What the offline error tells a user to do: put the verified file in the cache.
    let lite = layerlens::hub::find("efficientnet_lite0", "imagenet").unwrap();
    std::fs::copy(
        common::asset("efficientnet-lite0.pth"),
        filled.join(lite.file),
    )
    .unwrap();
    let cam = dir.join("cam.png");
    let cat = common::asset("chelsea.png");
    let out = run(
        &filled,
        &[
            "cam",
            "zoo:efficientnet_lite0=imagenet",
            "--input",
            s(&cat),
            "--layer",
            "_relu1",
            "--out",
            s(&cam),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // `--preprocess auto` chose efficientnet-lite, so the real weights see a cat.
    assert!(err.contains("cat)"), "{err}");
    assert!(!err.contains("random weights"), "{err}");
    assert!(cam.exists());

    let out = run(&empty, &["summary", "zoo:resnet18=imagenet"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("error: https://download.pytorch.org/models/resnet18-f37072fd.pth: ")
            && err.contains("LAYERLENS_OFFLINE is set"),
        "{err}"
    );
    assert!(!empty.join("resnet18-f37072fd.pth").exists());
    std::fs::remove_dir_all(dir).unwrap();
}
