//! The importer's op vocabulary against ONNX Runtime, on two small synthetic
//! models (opsets 11 and 13) that chain Conv, ConvTranspose, Pad, Resize,
//! Transpose, Clip, pooling with padding, constant arithmetic, Concat,
//! ReduceMean, Squeeze/Unsqueeze, Gemm and Softmax (tests/fixtures/gen_ops_models.py).
//! Every node output is compared in full, within 1e-5 + 1e-4 relative.

use candle_core::Device;

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
}

#[test]
fn every_node_of_the_op_models_matches_onnx_runtime() {
    let refs =
        candle_core::safetensors::load(fixture("ops_refs.safetensors"), &Device::Cpu).unwrap();
    for opset in [11, 13] {
        let model = layerlens_onnx::import(fixture(&format!("ops_opset{opset}.onnx"))).unwrap();
        let prefix = format!("opset{opset}/");
        // Constant nodes' outputs become weights, not activations.
        let names: Vec<String> = refs
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string))
            .filter(|k| k != "div_c" && k != "gb")
            .collect();
        assert_eq!(names.len(), 29, "opset {opset}");
        let acts = model.extract(&refs["x"], &names).unwrap();
        for name in &names {
            let want = &refs[&format!("{prefix}{name}")];
            let got = acts.get(name).unwrap();
            assert_eq!(got.dims(), want.dims(), "opset {opset} {name}");
            let g: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
            let w: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
            for (i, (a, b)) in g.iter().zip(&w).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 + 1e-4 * b.abs(),
                    "opset {opset} {name}[{i}]: {a} vs ONNX Runtime {b}"
                );
            }
        }
    }
}

#[test]
fn an_unsupported_op_names_the_op_the_node_and_the_opset() {
    let e = layerlens_onnx::import(fixture("unsupported.onnx"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "node 'lp_norm' (LpNormalization, opset 13): unsupported ONNX op 'LpNormalization'"
        ),
        "{e}"
    );
}
