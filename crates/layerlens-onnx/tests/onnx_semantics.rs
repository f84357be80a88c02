//! Cases that used to import and compute something else (issue: any ONNX
//! model): binary ops whose first operand is the constant, and resizing that
//! the fast upsampling kernel cannot compute (other roundings, shrinking,
//! antialiasing, cubic): both must match ONNX Runtime
//! (tests/fixtures/gen_semantics_models.py, within 1e-5 + 1e-4 relative);
//! training-mode BatchNorm and Dropout must be refused naming the node.

mod common;
use common::assert_close;
use common::fixture;

use candle_core::Device;

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
fn resizes_slices_gathers_splits_pools_and_activations_match_onnx_runtime_and_survive_save_and_load(
) {
    let refs = candle_core::safetensors::load(fixture("semantics_refs.safetensors"), &Device::Cpu)
        .unwrap();
    for stem in [
        "resize_nearest_ceil_x2",
        "resize_nearest_round_x3",
        "resize_linear_down",
        "resize_linear_antialias_sizes",
        "resize_cubic_down_up",
        "resize_nearest_half_pixel_x1_4",
        "slice_strided",
        "slice_opset9",
        "pool_max_ceil",
        "pool_avg_ceil_pads",
        "gather_channel_scalar",
        "gather_list_axis3",
        "split_uneven_concat",
        "act_softplus",
        "act_softsign",
        "act_mish",
        "act_shrink_hard",
        "act_shrink_soft",
        "act_gelu_tanh",
        "act_selu",
        "act_pow_cube",
        "act_pow_square_int",
        "variadic_sum_max_min_mean",
        "prelu_channel",
        "prelu_full",
        "globalmaxpool",
        "layernorm_axis2_no_bias",
    ] {
        let model = layerlens_onnx::import(fixture(&format!("{stem}.onnx"))).unwrap();
        let x = &refs[&format!("{stem}/x")];
        let want = &refs[&format!("{stem}/y")];
        assert_close(
            stem,
            &model.forward(std::slice::from_ref(x)).unwrap()[0],
            want,
        );
        let dir = std::env::temp_dir().join(format!("layerlens-{stem}-{}", std::process::id()));
        model.save(&dir).unwrap();
        let back = layerlens_core::Model::load(&dir, &Device::Cpu).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_close(
            &format!("{stem} (reloaded)"),
            &back.forward(std::slice::from_ref(x)).unwrap()[0],
            want,
        );
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
