//! torchvision's ResNet-18 exported to ONNX (tests/fixtures/gen_onnx_resnet.py)
//! and imported: every node output matches ONNX Runtime within 1e-4 of its
//! largest magnitude, and the import agrees with the zoo's ResNet-18 on the same
//! weights. The 46 MB of weights are ONNX external data, written here from the
//! same formula the export used (tests/fixtures/synth.py).

mod common;

use common::{synth, synth_input};
use layerlens::onnx::proto::ModelProto;
use layerlens::onnx::Message;
use layerlens::prelude::*;
use std::io::{Seek, SeekFrom, Write};

fn fixture_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

/// Copies the graph to a scratch directory and writes its external weights file.
fn materialise() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("layerlens-onnx-resnet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let graph = std::fs::read(fixture_dir().join("resnet18.onnx")).unwrap();
    std::fs::write(dir.join("resnet18.onnx"), &graph).unwrap();
    let model = ModelProto::decode(graph.as_slice()).unwrap();
    let mut f = std::fs::File::create(dir.join("resnet18.weights")).unwrap();
    for t in &model.graph.unwrap().initializer {
        let get = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == k)
                .map(|e| e.value.clone())
        };
        assert_eq!(
            get("location").as_deref(),
            Some("resnet18.weights"),
            "{}",
            t.name
        );
        let offset: u64 = get("offset").map_or(0, |v| v.parse().unwrap());
        let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        let values = synth(&t.name, &dims)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            get("length").map(|v| v.parse::<usize>().unwrap()),
            Some(bytes.len()),
            "{}",
            t.name
        );
        f.write_all(&bytes).unwrap();
    }
    dir
}

#[test]
fn resnet18_from_onnx_matches_onnx_runtime_at_every_node_and_the_zoo_model() {
    let dir = materialise();
    let model = layerlens::onnx::import(dir.join("resnet18.onnx")).unwrap();
    let fx = layerlens::candle_core::safetensors::load(
        fixture_dir().join("resnet18_onnx_refs.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let names: Vec<String> = fx
        .keys()
        .filter_map(|k| k.strip_prefix("sample/").map(str::to_string))
        .collect();
    assert_eq!(names.len(), 69);
    let x = synth_input(&[1, 3, 224, 224]);
    let acts = model.extract(&x, &names).unwrap();
    for name in &names {
        let idx = fx[&format!("index/{name}")].to_dtype(DType::U32).unwrap();
        let got = acts
            .get(name)
            .unwrap()
            .flatten_all()
            .unwrap()
            .index_select(&idx, 0)
            .unwrap();
        let scale = fx[&format!("absmax/{name}")].to_vec1::<f32>().unwrap()[0].max(1e-6);
        let d = (&got - &fx[&format!("sample/{name}")])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d <= 1e-4 * scale, "{name}: max |diff| {d}, scale {scale}");
    }
    // The imported graph and the zoo's hand-built ResNet-18 agree on the same weights.
    let zoo = layerlens::zoo::resnet18(1000).unwrap();
    for (k, p) in zoo.params().iter() {
        zoo.params().set(k, &synth(k, p.var.dims())).unwrap();
    }
    let a = zoo.predict(&x).unwrap();
    let b = acts.get("logits").unwrap();
    let d = (&a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let s = a
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        d <= 1e-4 * s,
        "zoo vs ONNX logits differ by {d} (scale {s})"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_missing_external_data_file_is_named() {
    let dir = std::env::temp_dir().join(format!("layerlens-onnx-noweights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixture_dir().join("resnet18.onnx"),
        dir.join("resnet18.onnx"),
    )
    .unwrap();
    let e = layerlens::onnx::import(dir.join("resnet18.onnx"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("initializer 'conv1.weight'") && e.contains("resnet18.weights"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
