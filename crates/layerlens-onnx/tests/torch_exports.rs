//! Both PyTorch exporters (fixtures: tests/fixtures/gen_torch_exports.py):
//! torch 2.15's default dynamo exporter (static batch 1, module paths in node
//! metadata) and the TorchScript one (module paths in node names). Every
//! PyTorch module path that layerlens resolves in the imported model must
//! equal that module's forward-hook output, at a batch of 3 (the dynamo file
//! fixes 1), within 1e-5 + 1e-4 relative; the ones it cannot resolve (a Conv
//! whose BatchNorm the exporter folded into it, a module called twice under
//! TorchScript's names) are listed, so a name that silently moves fails.

use candle_core::{Device, Tensor};
use std::collections::{BTreeMap, BTreeSet};

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
}

fn max_excess(got: &Tensor, want: &Tensor) -> f32 {
    let g: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    let w: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(g.len(), w.len());
    g.iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs() - (1e-5 + 1e-4 * b.abs()))
        .fold(f32::MIN, f32::max)
}

fn check(file: &str, unresolved: &[&str]) {
    let refs =
        candle_core::safetensors::load(fixture("torch_exports_refs.safetensors"), &Device::Cpu)
            .unwrap();
    let model = layerlens_onnx::import(fixture(file)).unwrap();
    let x = &refs["x"];
    let logits = &model.forward(std::slice::from_ref(x)).unwrap()[0];
    assert!(max_excess(logits, &refs["logits"]) <= 0.0, "{file}: logits");
    let hooks: BTreeMap<&str, &Tensor> = refs
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("hook/").map(|m| (m, v)))
        .collect();
    let mut missing = BTreeSet::new();
    for (module, want) in &hooks {
        match model.extract(x, &[*module]) {
            Ok(acts) => {
                let got = acts.get(module).unwrap();
                assert_eq!(got.elem_count(), want.elem_count(), "{file}: {module}");
                let got = got.reshape(want.dims()).unwrap();
                let e = max_excess(&got, want);
                assert!(
                    e <= 0.0,
                    "{file}: module '{module}' is not its hook output (off by {e} past tolerance)"
                );
            }
            Err(e) => {
                assert!(
                    e.to_string().contains("unknown node"),
                    "{file}: {module}: {e}"
                );
                missing.insert(*module);
            }
        }
    }
    let expected: BTreeSet<&str> = unresolved.iter().copied().collect();
    assert_eq!(missing, expected, "{file}: modules that do not resolve");
}

#[test]
fn dynamo_exports_run_at_any_batch_and_name_modules_as_hooks_see_them() {
    // The exporter folds each Conv into the BatchNorm after it (scoped as the
    // BatchNorm), so the Convs have no output of their own.
    check(
        "tiny_dynamo.onnx",
        &[
            "conv1",
            "layer1.0.conv1",
            "layer1.0.conv2",
            "layer1.1.conv1",
            "layer1.1.conv2",
            "layer1.1.downsample.0",
            "features.0",
        ],
    );
}

#[test]
fn torchscript_exports_name_modules_as_hooks_see_them() {
    // Folded Conv+BatchNorm pairs are named after the Conv but compute the
    // BatchNorm: neither name is given. `relu` is called twice per block
    // (TorchScript names the second call `relu_1`): refused, not guessed.
    check(
        "tiny_torchscript.onnx",
        &[
            "conv1",
            "bn1",
            "layer1.0.conv1",
            "layer1.0.bn1",
            "layer1.0.conv2",
            "layer1.0.bn2",
            "layer1.0.relu",
            "layer1.1.conv1",
            "layer1.1.bn1",
            "layer1.1.conv2",
            "layer1.1.bn2",
            "layer1.1.relu",
            "layer1.1.downsample.0",
            "layer1.1.downsample.1",
            "features.0",
            "features.1",
        ],
    );
}
