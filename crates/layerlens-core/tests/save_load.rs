//! Saving and loading: round trips, safety and the errors for damaged files.

use layerlens_core::lambda::{LambdaCtx, LambdaRegistry};
use layerlens_core::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("layerlens-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Shift {
    by: f64,
}

impl CustomOp for Shift {
    fn type_name(&self) -> &str {
        "shift"
    }
    fn args(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap()
    }
    fn forward(&self, inputs: &[Tensor], _ctx: &LambdaCtx) -> Result<Tensor> {
        Ok((&inputs[0] + self.by)?)
    }
}

fn rich_model() -> Model {
    let mut g = Functional::new("rich").seed(3);
    let x = g.input("input", [3, 12, 12]).unwrap();
    let c = g
        .add(
            Conv2d::new(6, 3)
                .padding(Padding::Same)
                .activation(Activation::Relu),
            &[x],
        )
        .unwrap();
    let b = g.add(BatchNorm::new(), &[c]).unwrap();
    let shared = g
        .shared("shared_conv", Conv2d::new(6, 3).padding(Padding::Same))
        .unwrap();
    let s1 = g.call(shared, &[b]).unwrap();
    let s2 = g.call(shared, &[s1]).unwrap();
    let r = g
        .lambda(
            Conv2dRef::new(Padding::Same),
            &[s2],
            &[
                WeightRef::live("shared_conv.weight"),
                WeightRef::frozen("shared_conv.bias"),
            ],
        )
        .unwrap();
    let sh = g.lambda(Shift { by: 0.5 }, &[r], &[]).unwrap();
    let n = g.lambda(L2Normalize::new(1), &[sh], &[]).unwrap();
    let p = g.add(Pool2d::max(2), &[n]).unwrap();
    let m = g.lambda(Reduce::mean([2, 3]), &[p], &[]).unwrap();
    let f = g
        .add(Dense::new(4).activation(Activation::SOFTMAX), &[m])
        .unwrap();
    g.alias("features", p).unwrap();
    g.build(&[f, p]).unwrap()
}

fn registry() -> LambdaRegistry {
    let mut r = LambdaRegistry::with_builtins();
    r.register_serde::<Shift>("shift");
    r
}

#[test]
fn round_trip_preserves_structure_weights_and_outputs() {
    let m = rich_model();
    let dir = tmpdir("roundtrip");
    m.save(&dir).unwrap();
    let json = std::fs::read_to_string(dir.join("model.json")).unwrap();
    assert!(
        json.contains("\"type\": \"shift\"") && json.contains("\"by\": 0.5"),
        "Lambdas are stored by name and arguments"
    );
    assert!(json.contains("\"mode\": \"frozen\"") && json.contains("\"layer\": \"shared_conv\""));

    let back = Model::load_with(&dir, &registry(), &Device::Cpu).unwrap();
    let names = |m: &Model| {
        m.graph()
            .nodes()
            .iter()
            .map(|n| (n.name.clone(), n.layer.clone(), n.shape.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&m), names(&back));
    assert_eq!(
        back.graph().find("features").unwrap(),
        m.graph().find("max_pooling2d").unwrap()
    );
    let x = Tensor::rand(0f32, 1f32, (2, 3, 12, 12), &Device::Cpu).unwrap();
    let (a, b) = (
        m.forward(&[x.clone()]).unwrap(),
        back.forward(&[x]).unwrap(),
    );
    for (a, b) in a.iter().zip(&b) {
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
    assert_eq!(back.params().len(), m.params().len());
    assert_eq!(back.summary().trainable, m.summary().trainable);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn frozen_snapshots_survive_training_and_reload_while_live_references_follow() {
    let m = rich_model();
    let bias0 = m
        .params()
        .tensor("shared_conv.bias")
        .unwrap()
        .copy()
        .unwrap();
    // "Train": change the referenced parameters after the model was built.
    m.params()
        .set("shared_conv.bias", &(&bias0 + 1.0).unwrap())
        .unwrap();
    let dir = tmpdir("frozen");
    m.save(&dir).unwrap();
    let back = Model::load_with(&dir, &registry(), &Device::Cpu).unwrap();
    let snap = back.params().tensor("lambda.frozen1").unwrap();
    assert_eq!(
        snap.to_vec1::<f32>().unwrap(),
        bias0.to_vec1::<f32>().unwrap(),
        "the snapshot is the value at build time"
    );
    assert_eq!(
        back.params()
            .tensor("shared_conv.bias")
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        (&bias0 + 1.0).unwrap().to_vec1::<f32>().unwrap(),
        "the live parameter is the trained value"
    );
    // Trainable flags survive too.
    let mut frozen = m.clone();
    frozen.set_trainable("conv2d", false).unwrap();
    frozen.save(&dir).unwrap();
    let back = Model::load_with(&dir, &registry(), &Device::Cpu).unwrap();
    assert!(!back.params().get("conv2d.weight").unwrap().trainable);
    assert!(back.params().get("dense.weight").unwrap().trainable);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn closures_cannot_be_saved_and_nothing_is_written() {
    let mut g = Functional::new("m");
    let x = g.input("input", [4]).unwrap();
    let y = g.closure("double", &[x], |xs| &xs[0] * 2.0).unwrap();
    let m = g.build(&[y]).unwrap();
    let dir = tmpdir("closure");
    let e = m.save(&dir).unwrap_err().to_string();
    assert!(
        e.starts_with("node 'double' is a closure Lambda ('double') and cannot be saved"),
        "{e}"
    );
    assert!(!dir.exists(), "no partial output");
}

#[test]
fn loading_never_runs_unknown_lambdas() {
    let m = rich_model();
    let dir = tmpdir("unknown");
    m.save(&dir).unwrap();
    let e = Model::load(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("unknown Lambda type 'shift'"), "{e}");
    assert!(e.contains("node 6 ('lambda_1')"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn damaged_files_say_what_is_wrong_and_where() {
    let m = rich_model();
    let dir = tmpdir("damaged");
    m.save(&dir).unwrap();
    let reg = registry();
    let weights = dir.join("model.safetensors");
    let graph = dir.join("model.json");
    let good = std::fs::read(&weights).unwrap();

    std::fs::write(&weights, &good[..good.len() / 2]).unwrap();
    let e = Model::load_with(&dir, &reg, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with(&weights.display().to_string()), "{e}");

    std::fs::write(&weights, b"not a safetensors file").unwrap();
    assert!(Model::load_with(&dir, &reg, &Device::Cpu)
        .unwrap_err()
        .to_string()
        .starts_with(&weights.display().to_string()));
    std::fs::write(&weights, &good).unwrap();

    let text = std::fs::read_to_string(&graph).unwrap();
    std::fs::write(&graph, &text[..text.len() / 3]).unwrap();
    let e = Model::load_with(&dir, &reg, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&graph.display().to_string()) && e.contains("line"),
        "{e}"
    );

    // A node whose saved arguments no longer fit its weights.
    std::fs::write(&graph, text.replacen("\"filters\": 6", "\"filters\": 7", 1)).unwrap();
    let e = Model::load_with(&dir, &reg, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("conv2d") && e.contains("[6, 3, 3, 3]") && e.contains("[7, 3, 3, 3]"),
        "{e}"
    );

    std::fs::write(&graph, &text).unwrap();
    std::fs::remove_file(&weights).unwrap();
    let e = Model::load_with(&dir, &reg, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn custom_registered_constructors_are_the_only_code_loading_runs() {
    let mut reg = LambdaRegistry::empty();
    reg.register("shift", |args| {
        let by = args
            .get("by")
            .and_then(|v| v.as_f64())
            .ok_or_else(|| Error::Lambda("shift needs 'by'".into()))?;
        Ok(Arc::new(Shift { by: by * 2.0 }) as Arc<dyn CustomOp>)
    });
    let mut g = Functional::new("m");
    let x = g.input("input", [2]).unwrap();
    let y = g.lambda(Shift { by: 1.0 }, &[x], &[]).unwrap();
    let m = g.build(&[y]).unwrap();
    let dir = tmpdir("custom");
    m.save(&dir).unwrap();
    let back = Model::load_with(&dir, &reg, &Device::Cpu).unwrap();
    let y = back
        .predict(&Tensor::zeros((1, 2), DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(
        y.to_vec2::<f32>().unwrap(),
        [[2.0, 2.0]],
        "the registry's constructor decided"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_graph_whose_inputs_do_not_match_its_input_nodes_is_refused() {
    let m = rich_model();
    let dir = tmpdir("inputs");
    m.save(&dir).unwrap();
    let graph = dir.join("model.json");
    let text = std::fs::read_to_string(&graph).unwrap();
    std::fs::write(
        &graph,
        text.replacen("\"inputs\": [\n    \"input\"\n  ]", "\"inputs\": []", 1),
    )
    .unwrap();
    let e = Model::load_with(&dir, &registry(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("input node 'input' is missing from the graph's inputs"),
        "{e}"
    );
    std::fs::write(
        &graph,
        text.replacen(
            "\"inputs\": [\n    \"input\"\n  ]",
            "\"inputs\": [\n    \"conv2d\"\n  ]",
            1,
        ),
    )
    .unwrap();
    let e = Model::load_with(&dir, &registry(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("graph input 'conv2d' is not an input node"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
