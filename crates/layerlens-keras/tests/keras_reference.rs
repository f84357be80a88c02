//! layerlens-keras against Keras itself: fixtures and references made by
//! `tests/fixtures/gen_fixtures.py` (keras 3.15.1, tensorflow-cpu 2.21, the
//! reference env of scripts/setup-reference-env.sh). Every layer's output must
//! match Keras' `predict` within 1e-5 absolute + 1e-4 relative.

mod common;

use common::{cache_dir, check, fixture, refs};
use layerlens_core::candle_core::Tensor;
use layerlens_core::Model;
use layerlens_keras::layout::nhwc_to_nchw;
use std::collections::BTreeMap;

/// Extracts every reference layer and compares it; returns how many were checked.
fn compare_all(model: &Model, inputs: &[Tensor], refs: &BTreeMap<String, Tensor>) -> usize {
    let names: Vec<&str> = refs
        .keys()
        .filter(|k| !k.starts_with("input"))
        .map(String::as_str)
        .collect();
    let acts = model
        .run(inputs, &names, layerlens_core::RunOptions::default())
        .unwrap();
    let mut worst = 0f32;
    for n in &names {
        let want = nhwc_to_nchw(&refs[*n]).unwrap();
        worst = worst.max(check(n, acts.get(n).unwrap(), &want));
    }
    eprintln!("{} layers match, worst |diff| {worst:e}", names.len());
    names.len()
}

fn layers_inputs(r: &BTreeMap<String, Tensor>) -> Vec<Tensor> {
    vec![
        nhwc_to_nchw(&r["input:img"]).unwrap(),
        r["input:vec"].clone(),
    ]
}

#[test]
fn every_layer_of_the_keras_file_matches_keras() {
    let r = refs("layers_ref.safetensors");
    let m = layerlens_keras::import(fixture("layers.keras")).unwrap();
    assert_eq!(compare_all(&m, &layers_inputs(&r), &r), r.len() - 2);
}

#[test]
fn every_layer_of_the_legacy_h5_file_matches_keras() {
    let r = refs("layers_ref.safetensors");
    let m = layerlens_keras::import(fixture("layers.h5")).unwrap();
    assert_eq!(compare_all(&m, &layers_inputs(&r), &r), r.len() - 2);
}

#[test]
fn fer_emotion_model_matches_keras_at_every_layer() {
    let path = cache_dir().join("assets/fer_emotion_model.hdf5");
    assert!(
        path.exists(),
        "run scripts/fetch-models.sh ({} missing)",
        path.display()
    );
    let r = refs("fer_ref.safetensors");
    let m = layerlens_keras::import(&path).unwrap();
    let n = compare_all(&m, &[nhwc_to_nchw(&r["input"]).unwrap()], &r);
    assert_eq!(n, r.len() - 1);
}

#[test]
fn a_lambda_is_never_run_and_can_be_bound_to_a_builtin() {
    let r = refs("lambda_ref.safetensors");
    let x = nhwc_to_nchw(&r["input"]).unwrap();
    let m = layerlens_keras::import(fixture("lambda.keras")).unwrap();
    // Layers before the Lambda still extract.
    let before = m.extract(&x, &["before"]).unwrap();
    check(
        "before",
        before.get("before").unwrap(),
        &nhwc_to_nchw(&r["before"]).unwrap(),
    );
    let e = m.extract(&x, &["after"]).unwrap_err().to_string();
    assert!(
        e.contains("spatial_mean") && e.contains("--bind") && e.contains("mean"),
        "{e}"
    );
    // Bound to layerlens' spatial mean, the whole model matches Keras.
    let reg = layerlens_core::lambda::LambdaRegistry::with_builtins();
    let op = reg
        .build("mean", &serde_json::json!({"kind": "mean", "axes": [2, 3]}))
        .unwrap();
    let mut opts = layerlens_keras::ImportOptions::default();
    opts.bind.insert("spatial_mean".into(), op);
    let m = layerlens_keras::import_with(fixture("lambda.keras"), &opts).unwrap();
    assert_eq!(compare_all(&m, &[x], &r), r.len() - 1);
}

#[test]
fn truncated_and_corrupt_files_give_one_line_errors() {
    let dir = std::env::temp_dir().join(format!("llk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for src in ["layers.keras", "layers.h5"] {
        let bytes = std::fs::read(fixture(src)).unwrap();
        let mut cases = vec![("truncated", bytes[..bytes.len() / 2].to_vec())];
        // A .keras zip has a CRC per member; HDF5 keeps no checksum of raw weight
        // bytes, so flipped weight bytes in a .h5 cannot be detected by any reader.
        if src.ends_with(".keras") {
            let mut b = bytes.clone();
            for v in &mut b[bytes.len() / 3..bytes.len() / 3 + 4096] {
                *v ^= 0x5a;
            }
            cases.push(("corrupt", b));
        }
        for (what, data) in cases {
            let p = dir.join(format!("{what}-{src}"));
            std::fs::write(&p, &data).unwrap();
            let e = layerlens_keras::import(&p).unwrap_err().to_string();
            assert!(
                !e.contains('\n') && e.contains(&format!("{what}-{src}")),
                "{what} {src}: {e}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A Conv2DTranspose whose config says kernel 0 or a dilation that overflows is
/// refused naming the layer, never a panic (the file is what the user brings).
#[test]
fn a_transposed_convolution_with_impossible_geometry_is_refused() {
    use std::io::{Read, Write};
    let bytes = std::fs::read(fixture("layers.keras")).unwrap();
    let mut zin = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    for (from, to) in [
        (r#""kernel_size": [3, 3]"#, r#""kernel_size": [0, 0]"#),
        (
            r#""dilation_rate": [2, 2]"#,
            r#""dilation_rate": [18446744073709551615, 18446744073709551615]"#,
        ),
    ] {
        let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for i in 0..zin.len() {
            let mut f = zin.by_index(i).unwrap();
            let name = f.name().unwrap().to_string();
            let mut data = Vec::new();
            f.read_to_end(&mut data).unwrap();
            if name == "config.json" {
                // Only the transposed convolutions' configs: from "deconv_same" /
                // "deconv_dilated" up to the next layer.
                let text = String::from_utf8(data).unwrap();
                let key = if from.contains("kernel") {
                    "\"deconv_same\""
                } else {
                    "\"deconv_dilated\""
                };
                let at = text.find(key).unwrap();
                let end = at + text[at..].find("\"inbound_nodes\"").unwrap();
                let patched = text[at..end].replacen(from, to, 1);
                assert_ne!(patched, text[at..end], "{from} not in {key}'s config");
                data = format!("{}{}{}", &text[..at], patched, &text[end..]).into_bytes();
            }
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            out.start_file(name, opts).unwrap();
            out.write_all(&data).unwrap();
        }
        let patched = out.finish().unwrap().into_inner();
        let e = layerlens_keras::import_bytes(&patched, "bad.keras", &Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("deconv_") && e.contains("must be positive"),
            "{e}"
        );
    }
}
