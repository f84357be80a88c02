//! Cases that used to import and compute something else (issue: any ONNX
//! model): binary ops whose first operand is the constant, and nearest
//! resizing whose rounding mode picks another pixel; the first must match ONNX
//! Runtime (tests/fixtures/gen_semantics_models.py, within 1e-5 + 1e-4
//! relative), the others must be refused naming the node and what is missing.

use candle_core::Device;

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
}

#[test]
fn constant_first_operands_and_nearest_rounding_match_onnx_runtime() {
    let refs = candle_core::safetensors::load(fixture("semantics_refs.safetensors"), &Device::Cpu)
        .unwrap();
    let model = layerlens_onnx::import(fixture("const_first.onnx")).unwrap();
    let names = ["s", "a", "m", "sg", "y", "r"];
    let acts = model.extract(&refs["x"], &names).unwrap();
    for name in names {
        let want = &refs[&format!("const_first/{name}")];
        let got = acts.get(name).unwrap();
        assert_eq!(got.dims(), want.dims(), "{name}");
        let g: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
        let w: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 + 1e-4 * b.abs(),
                "{name}[{i}]: {a} vs ONNX Runtime {b}"
            );
        }
    }
}

#[test]
fn what_cannot_be_computed_exactly_is_refused_by_name() {
    for (file, needles) in [
        (
            "refuse_bn_training.onnx",
            &["'bn_train' (BatchNormalization", "training_mode=1"][..],
        ),
        (
            "refuse_dropout_training.onnx",
            &["'dropout_train' (Dropout", "training_mode=1"],
        ),
        (
            "refuse_resize_ceil.onnx",
            &["'nearest_ceil_x2' (Resize", "round_prefer_ceil"],
        ),
        (
            "refuse_resize_round_x3.onnx",
            &["'nearest_round_x3' (Resize", "round_prefer_floor"],
        ),
        (
            "refuse_resize_down.onnx",
            &["'linear_down' (Resize", "downscaling (8x8 to 4x4)"],
        ),
    ] {
        let e = layerlens_onnx::import(fixture(file))
            .unwrap_err()
            .to_string();
        for needle in needles {
            assert!(e.contains(needle), "{file}: {e}");
        }
        assert_eq!(e.lines().count(), 1, "{file}: {e}");
    }
}
