//! The exporter matrix's representative subset (fixtures and references:
//! `fixtures/gen_exporter_subset.py`): torchvision's ViT, Swin and ConvNeXt
//! classes at toy sizes, exported with both PyTorch exporters, match ONNX
//! Runtime at every float tensor within `1e-5 + 1e-4·max|ref|` (the matrix's
//! tolerance) — TorchScript files at a batch of 2, dynamo files (a static
//! batch of 1) at 1, and their output at a batch of 3 equal to three
//! one-sample runs. These graphs move the batch axis (attention's transposes,
//! heads and windows merged into the batch, class tokens expanded to it).

mod common;
use common::fixture;

use candle_core::{Device, Tensor};

fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    let g: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    let w: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    g.iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs() - (1e-5 + 1e-4 * scale))
        .fold(f32::MIN, f32::max)
}

#[test]
fn toy_vit_swin_and_convnext_from_both_exporters_match_onnx_runtime_at_every_tensor() {
    let refs =
        candle_core::safetensors::load(fixture("exporter_subset_refs.safetensors"), &Device::Cpu)
            .unwrap();
    for arch in ["vit", "swin", "convnext"] {
        for exporter in ["torchscript", "dynamo"] {
            let case = format!("{arch}_{exporter}");
            // The TorchScript files leave H and W open: sized from the input.
            let source = layerlens_onnx::OnnxModel::open(fixture(&format!("subset_{case}.onnx")))
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            let models = layerlens_onnx::ShapeCache::new(source, 2);
            let list: Vec<u8> = refs[&format!("{case}/tensors")].to_vec1().unwrap();
            let names: Vec<String> = String::from_utf8(list)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect();
            assert!(names.len() > 30, "{case}: {} tensors", names.len());
            let x = &refs[&format!("{case}/x")];
            let model = models
                .model_for_inputs(std::slice::from_ref(x))
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            let acts = model
                .extract(x, &names)
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            for n in &names {
                let (got, want) = (acts.get(n).unwrap(), &refs[&format!("{case}/{n}")]);
                assert_eq!(got.dims(), want.dims(), "{case} '{n}'");
                let excess = rel_err(got, want);
                assert!(
                    excess <= 0.0,
                    "{case} '{n}': off by {excess} past the tolerance"
                );
            }
            if exporter == "dynamo" {
                let y3 = model.predict(&refs[&format!("{case}/x3")]).unwrap();
                let excess = rel_err(&y3, &refs[&format!("{case}/y3")]);
                assert!(excess <= 0.0, "{case} batch of 3: off by {excess}");
            }
        }
    }
}
