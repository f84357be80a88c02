//! Graph IR behaviour: names, shared layers, selectors, plans, sub-models,
//! hooks, summaries and the errors users hit.

use layerlens_core::prelude::*;
use std::sync::{Arc, Mutex};

fn seed_cnn() -> Model {
    layerlens_core::zoo::seed_cnn(true).unwrap()
}

fn input(n: usize) -> Tensor {
    Tensor::rand(0f32, 1f32, (n, 1, 28, 28), &Device::Cpu).unwrap()
}

fn names(m: &Model) -> Vec<String> {
    m.graph().nodes().iter().map(|n| n.name.clone()).collect()
}

#[test]
fn keras_style_automatic_names_and_inferred_shapes() {
    let m = seed_cnn();
    assert_eq!(
        names(&m),
        [
            "input",
            "conv2d",
            "max_pooling2d",
            "conv2d_1",
            "max_pooling2d_1",
            "flatten",
            "dense"
        ]
    );
    let shape = |n: &str| m.graph().node(m.graph().find(n).unwrap()).shape.clone();
    assert_eq!(shape("conv2d"), Shape::new([32, 26, 26]));
    assert_eq!(shape("max_pooling2d_1"), Shape::new([64, 5, 5]));
    assert_eq!(shape("flatten"), Shape::new([1600]));
    let keys: Vec<&str> = m.params().iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "conv2d.bias",
            "conv2d.weight",
            "conv2d_1.bias",
            "conv2d_1.weight",
            "dense.bias",
            "dense.weight"
        ]
    );
}

#[test]
fn duplicate_and_invalid_names_are_rejected() {
    let mut g = Functional::new("m");
    let x = g.input("input", [3, 8, 8]).unwrap();
    g.add_as("c", Conv2d::new(4, 3), &[x]).unwrap();
    let e = g.add_as("c", Conv2d::new(4, 3), &[x]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "duplicate node name 'c': node names must be unique"
    );
    assert!(g.add_as("a*b", Conv2d::new(4, 3), &[x]).is_err());
    // An automatic name skips names already taken explicitly.
    g.add_as("conv2d", Conv2d::new(4, 3), &[x]).unwrap();
    let auto = g.add(Conv2d::new(4, 3), &[x]).unwrap();
    assert_eq!(g.name(auto), "conv2d_1");
}

#[test]
fn unknown_layer_names_list_close_matches() {
    let m = seed_cnn();
    let e = m.extract(&input(1), &["conv2"]).unwrap_err().to_string();
    assert!(
        e.starts_with("unknown node 'conv2'; did you mean 'conv2d'"),
        "{e}"
    );
    assert!(e.contains("'conv2d_1'"), "{e}");
    let e = m.extract(&input(1), &["dense_9"]).unwrap_err().to_string();
    assert!(e.contains("'dense'"), "{e}");
    let e = m.extract(&input(1), &["block*"]).unwrap_err().to_string();
    assert!(e.starts_with("unknown node pattern 'block*'"), "{e}");
}

#[test]
fn selectors_exact_glob_all_keep_request_order() {
    let m = seed_cnn();
    let x = input(2);
    let acts = m.extract(&x, &["dense", "conv2d*"]).unwrap();
    assert_eq!(acts.names(), ["dense", "conv2d", "conv2d_1"]);
    let all = m.extract(&x, &["all"]).unwrap();
    assert_eq!(all.len(), 7);
    assert_eq!(all.get("max_pooling2d").unwrap().dims(), &[2, 32, 13, 13]);
    // Duplicates collapse.
    assert_eq!(m.extract(&x, &["conv2d", "conv2d"]).unwrap().len(), 1);
}

#[test]
fn plans_run_only_ancestors_are_cached_and_free_intermediates() {
    let m = seed_cnn();
    let plan = m.plan(&["max_pooling2d"]).unwrap();
    assert_eq!(plan.steps(), ["input", "conv2d", "max_pooling2d"]);
    assert_eq!(m.cached_plans(), 1, "plan() builds and caches");
    let x = input(1);
    m.extract(&x, &["conv2d_1"]).unwrap();
    let n = m.cached_plans();
    m.extract(&x, &["conv2d_1"]).unwrap();
    assert_eq!(m.cached_plans(), n, "same outputs reuse the cached plan");
    m.extract(&x, &["dense"]).unwrap();
    assert_eq!(m.cached_plans(), n + 1);

    // A 30-layer chain: only the value being computed and its input are ever alive.
    let mut s = Sequential::new("chain", [2, 8, 8]);
    for _ in 0..30 {
        s = s
            .add(
                Conv2d::new(2, 3)
                    .padding(Padding::Same)
                    .activation(Activation::Relu),
            )
            .unwrap();
    }
    let chain = s.build().unwrap();
    let x = Tensor::rand(0f32, 1f32, (1, 2, 8, 8), &Device::Cpu).unwrap();
    assert_eq!(
        chain
            .peak_live_activations(&[x.clone()], &["conv2d_29"])
            .unwrap(),
        2
    );
    assert_eq!(chain.plan(&["conv2d_29"]).unwrap().peak_live(), 2);
    // Two requested outputs stay alive on top of the working pair.
    assert_eq!(
        chain
            .peak_live_activations(&[x], &["conv2d_3", "conv2d_29"])
            .unwrap(),
        3
    );
}

#[test]
fn extraction_matches_the_full_forward_and_submodels_share_weights() {
    let m = seed_cnn();
    let x = input(3);
    let full = m.predict(&x).unwrap();
    let tapped = m.extract(&x, &["dense"]).unwrap();
    assert_eq!(
        full.to_vec2::<f32>().unwrap(),
        tapped.get("dense").unwrap().to_vec2::<f32>().unwrap()
    );

    let sub = m.submodel(&["conv2d", "conv2d_1"]).unwrap();
    assert_eq!(
        names(&sub),
        ["input", "conv2d", "max_pooling2d", "conv2d_1"]
    );
    assert_eq!(sub.params().len(), 4, "only the weights its nodes use");
    let outs = sub.forward(&[x.clone()]).unwrap();
    assert_eq!(outs.len(), 2);
    assert_eq!(outs[1].dims(), &[3, 64, 11, 11]);

    // Shared weights: a change through the original is seen by the sub-model.
    let before = sub.forward(&[x.clone()]).unwrap()[0]
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let w = m.params().tensor("conv2d.bias").unwrap();
    m.params().set("conv2d.bias", &(w + 1.0).unwrap()).unwrap();
    let after = sub.forward(&[x]).unwrap()[0]
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        after > before + 1.0,
        "sub-model sees the updated bias ({before} -> {after})"
    );
}

#[test]
fn shared_layer_calls_are_separate_nodes_with_one_parameter_set() {
    let mut g = Functional::new("siamese");
    let a = g.input("a", [16]).unwrap();
    let b = g.input("b", [16]).unwrap();
    let enc = g
        .shared("encoder", Dense::new(4).activation(Activation::Tanh))
        .unwrap();
    let ea = g.call(enc, &[a]).unwrap();
    let eb = g.call(enc, &[b]).unwrap();
    let d = g.add(Add, &[ea, eb]).unwrap();
    // A third call on an incompatible input names the node and both sizes.
    let c = g.input("c", [8]).unwrap();
    let e = g.call(enc, &[c]).unwrap_err().to_string();
    assert!(
        e.contains("encoder@2")
            && e.contains("expects 16 input features")
            && e.contains("'c' has 8"),
        "{e}"
    );
    let m = g.build(&[d]).unwrap();
    assert_eq!(g_nodes(&m), ["a", "b", "encoder", "encoder@1", "add", "c"]);
    assert_eq!(m.params().len(), 2, "one weight and one bias");
    let summary = m.summary();
    assert_eq!(summary.rows[2].params, 16 * 4 + 4);
    assert_eq!(
        summary.rows[3].params, 0,
        "the second call owns no new parameters"
    );

    // A hook on the layer fires once per call, with that call's node name.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let _h = m
        .register_forward_hook("encoder", move |ctx, _| {
            s2.lock()
                .unwrap()
                .push(format!("{}<{}>", ctx.node, ctx.layer));
            Ok(None)
        })
        .unwrap();
    let xa = Tensor::ones((2, 16), DType::F32, &Device::Cpu).unwrap();
    let xb = Tensor::zeros((2, 16), DType::F32, &Device::Cpu).unwrap();
    let xc = Tensor::zeros((2, 8), DType::F32, &Device::Cpu).unwrap();
    let acts = m
        .run(
            &[xa, xb, xc],
            &["encoder", "encoder@1"],
            RunOptions::default(),
        )
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        ["encoder<encoder>", "encoder@1<encoder>"]
    );
    // Same weights, different inputs, different activations.
    assert_ne!(
        acts.get("encoder").unwrap().to_vec2::<f32>().unwrap(),
        acts.get("encoder@1").unwrap().to_vec2::<f32>().unwrap()
    );
}

fn g_nodes(m: &Model) -> Vec<String> {
    names(m)
}

#[test]
fn hooks_observe_replace_and_go_away_when_dropped() {
    let m = seed_cnn();
    let x = input(2);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c2 = calls.clone();
    let observe = m
        .register_forward_hook("conv2d*", move |ctx, t| {
            c2.lock()
                .unwrap()
                .push((ctx.node.to_string(), t.dims().to_vec()));
            Ok(None)
        })
        .unwrap();
    m.predict(&x).unwrap();
    assert_eq!(
        *calls.lock().unwrap(),
        [
            ("conv2d".to_string(), vec![2, 32, 26, 26]),
            ("conv2d_1".to_string(), vec![2, 64, 11, 11])
        ]
    );
    drop(observe);
    m.predict(&x).unwrap();
    assert_eq!(
        calls.lock().unwrap().len(),
        2,
        "a dropped hook no longer fires"
    );

    // Replacing an activation changes everything downstream: zeroing the last conv's
    // output makes the softmax uniform whatever the input.
    let zero = m
        .register_forward_hook("conv2d_1", |_, t| Ok(Some(t.zeros_like()?)))
        .unwrap();
    let y = m.predict(&x).unwrap();
    let w = m.params().tensor("dense.bias").unwrap();
    let expect = candle_nn::ops::softmax(&w.unsqueeze(0).unwrap(), 1).unwrap();
    assert!(
        (y.get(0).unwrap().unsqueeze(0).unwrap() - expect)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            < 1e-6
    );
    drop(zero);

    // A replacement of the wrong shape is an error naming the node.
    let _bad = m
        .register_forward_hook("conv2d", |_, t| Ok(Some(t.narrow(1, 0, 3)?)))
        .unwrap();
    let e = m.predict(&x).unwrap_err().to_string();
    assert!(
        e.starts_with("conv2d: a forward hook returned shape [2, 3, 26, 26]"),
        "{e}"
    );
    // Hooking a node that does not exist names the close ones.
    let e = m
        .register_forward_hook("conv", |_, _| Ok(None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("did you mean"), "{e}");
}

#[test]
fn input_shape_errors_explain_nhwc_and_missing_batch() {
    let m = seed_cnn();
    let nhwc = Tensor::zeros((1, 28, 28, 1), DType::F32, &Device::Cpu).unwrap();
    let e = m.predict(&nhwc).unwrap_err().to_string();
    assert!(
        e.starts_with("input 'input' expects (N, 1, 28, 28), got [1, 28, 28, 1]"),
        "{e}"
    );
    assert!(e.contains("NHWC"), "{e}");
    let unbatched = Tensor::zeros((1, 28, 28), DType::F32, &Device::Cpu).unwrap();
    assert!(m
        .predict(&unbatched)
        .unwrap_err()
        .to_string()
        .contains("batch dimension"));
    let e = m.forward(&[]).unwrap_err().to_string();
    assert!(e.contains("takes 1 input(s)"), "{e}");
}

#[test]
fn build_time_shape_errors_name_nodes_and_shapes() {
    // Seed 000 example 2: concatenating maps of different spatial sizes on channels.
    let mut g = Functional::new("m");
    let x = g.input("input", [3, 32, 32]).unwrap();
    let c1 = g
        .add(Conv2d::new(32, 3).activation(Activation::Relu), &[x])
        .unwrap();
    let p1 = g.add(Pool2d::max(2), &[c1]).unwrap();
    let c2 = g
        .add(Conv2d::new(64, 3).activation(Activation::Relu), &[p1])
        .unwrap();
    let e = g.add(Concat::default(), &[c1, c2]).unwrap_err().to_string();
    assert_eq!(
        e,
        "concatenate: cannot concatenate 'conv2d' (N, 32, 30, 30) and 'conv2d_1' (N, 64, 13, 13) along axis 1 (channels): \
         all other dimensions must match. Pool, resize or flatten the inputs to a common size first"
    );
    // A convolution applied to a tensor with the wrong channel count (shared layer).
    let conv = g.shared("shared_conv", Conv2d::new(8, 3)).unwrap();
    g.call(conv, &[c1]).unwrap();
    let e = g.call(conv, &[x]).unwrap_err().to_string();
    assert_eq!(e, "shared_conv@1: this conv2d's kernel expects 32 input channels, but input 'input' has 3 channels (shape (N, 3, 32, 32))");
    // Pooling windows of zero (seed 003 example 3) and windows larger than the map.
    let e = g.add(Pool2d::avg(0), &[x]).unwrap_err().to_string();
    assert_eq!(
        e,
        "average_pooling2d: pool size must be at least 1 in each dimension, got 0x0"
    );
    let e = g.add(Pool2d::max(64), &[x]).unwrap_err().to_string();
    assert!(
        e.contains("window 64x64 is larger than the padded input 32x32"),
        "{e}"
    );
    // Dense straight after a conv map.
    let e = g.add(Dense::new(10), &[c2]).unwrap_err().to_string();
    assert!(e.contains("add a Flatten or GlobalAvgPool"), "{e}");
    // Adding mismatched maps.
    let e = g.add(Add, &[c1, c2]).unwrap_err().to_string();
    assert!(
        e.contains("'conv2d' (N, 32, 30, 30)") && e.contains("'conv2d_1' (N, 64, 13, 13)"),
        "{e}"
    );
}

#[test]
fn summary_counts_parameters_and_macs() {
    let m = seed_cnn();
    let s = m.summary();
    let row = |n: &str| s.rows.iter().find(|r| r.name == n).unwrap().clone();
    assert_eq!(row("conv2d").params, 32 * 9 + 32);
    assert_eq!(row("conv2d").macs, 26 * 26 * 32 * 9);
    assert_eq!(row("conv2d_1").params, 64 * 32 * 9 + 64);
    assert_eq!(row("conv2d_1").macs, 11 * 11 * 64 * 32 * 9);
    assert_eq!(row("dense").params, 1600 * 10 + 10);
    assert_eq!(s.trainable, 320 + 18496 + 16010);
    let text = s.to_string();
    assert!(
        text.contains("conv2d_1 (Conv2d)")
            && text.contains("(N, 64, 11, 11)")
            && text.contains("Total params: 34,826"),
        "{text}"
    );
}

struct Residual;

impl Block for Residual {
    fn build(&self, g: &mut Functional, x: &[NodeRef]) -> Result<NodeRef> {
        let y = g.add_as(
            "conv1",
            Conv2d::new(4, 3).padding(Padding::Same).bias(false),
            &[x[0]],
        )?;
        let y = g.add_as("bn1", BatchNorm::new(), &[y])?;
        let y = g.add_as("relu", Activation::Relu, &[y])?;
        let y = g.add_as(
            "conv2",
            Conv2d::new(4, 3).padding(Padding::Same).bias(false),
            &[y],
        )?;
        let y = g.add(Add, &[y, x[0]])?;
        g.add(Activation::Relu, &[y])
    }
}

#[test]
fn blocks_scope_names_and_inlined_models_share_weights() {
    let mut g = Functional::new("net");
    let x = g.input("input", [4, 8, 8]).unwrap();
    let b0 = g.block("layer1.0", &Residual, &[x]).unwrap();
    let b1 = g.block("layer1.1", &Residual, &[b0]).unwrap();
    let m = g.build(&[b1]).unwrap();
    assert!(names(&m).contains(&"layer1.1.conv1".to_string()));
    assert_eq!(
        names(&m)
            .iter()
            .filter(|n| n.starts_with("layer1.0."))
            .count(),
        6
    );
    assert!(m.params().contains("layer1.0.bn1.running_var"));
    let x = Tensor::rand(0f32, 1f32, (2, 4, 8, 8), &Device::Cpu).unwrap();
    let acts = m.extract(&x, &["layer1.0", "layer*.conv1"]).unwrap();
    assert_eq!(
        acts.names(),
        ["layer1.0", "layer1.0.conv1", "layer1.1.conv1"]
    );
    // The block name resolves to its output: the ReLU after the residual add.
    let out = m.extract(&x, &["layer1.0.relu_1"]).unwrap();
    assert_eq!(
        acts.get("layer1.0")
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        out.get("layer1.0.relu_1")
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    );

    // Inline the whole net as a sub-network of a bigger model (seed 001 ex. 2's wrapper).
    let mut outer = Functional::new("outer");
    let i = outer.input("image", [4, 8, 8]).unwrap();
    let feats = outer.call_model("backbone", &m, &[i]).unwrap();
    let gap = outer.add(GlobalAvgPool::default(), &feats).unwrap();
    let big = outer.build(&[gap]).unwrap();
    let inner = big.extract(&x, &["backbone.layer1.1"]).unwrap();
    assert_eq!(
        inner
            .get("backbone.layer1.1")
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        m.predict(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    );
    // Parameters are shared, not copied.
    m.params()
        .set(
            "layer1.0.bn1.bias",
            &Tensor::ones(4, DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
    assert_eq!(
        big.params()
            .tensor("backbone.layer1.0.bn1.bias")
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        vec![1.0; 4]
    );
}

#[test]
fn frozen_layers_keep_their_parameters_out_of_training() {
    let mut m = seed_cnn();
    let n = m.set_trainable("conv2d*", false).unwrap();
    assert_eq!(n, 4);
    let trainable: Vec<String> = m
        .params()
        .trainable_vars()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(trainable, ["dense.bias", "dense.weight"]);
    // A training pass reaches only the trainable parameters.
    let acts = m
        .run(&[input(2)], &["dense"], RunOptions::training())
        .unwrap();
    let grads = acts
        .get("dense")
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = m.params().grads(&grads);
    assert_eq!(
        g.keys().cloned().collect::<Vec<_>>(),
        ["dense.bias", "dense.weight"]
    );
}

#[test]
fn a_bad_sequential_input_is_reported_by_the_next_call() {
    let e = Sequential::new("m", [0, 28, 28])
        .add(Flatten)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("input shape (N, 0, 28, 28) has a dimension of size 0"),
        "{e}"
    );
}

#[test]
fn hooks_are_shared_with_submodels_and_extensions() {
    let m = seed_cnn();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c2 = calls.clone();
    let h = m
        .register_forward_hook("conv2d", move |ctx, _| {
            c2.lock().unwrap().push(ctx.node.to_string());
            Ok(None)
        })
        .unwrap();
    // A sub-model, and an extension with a Lambda on top, run the hooked node.
    let sub = m.submodel(&["conv2d_1"]).unwrap();
    sub.predict(&input(1)).unwrap();
    let mut g = Functional::extend(&m);
    let conv = g.get("conv2d_1").unwrap();
    let mean = g.lambda(Reduce::mean([2, 3]), &[conv], &[]).unwrap();
    g.build(&[mean]).unwrap().predict(&input(1)).unwrap();
    assert_eq!(*calls.lock().unwrap(), ["conv2d", "conv2d"]);
    // A hook registered on the sub-model fires in the parent too, and removing
    // a hook removes it everywhere.
    let c3 = calls.clone();
    let h2 = sub
        .register_forward_hook("conv2d_1", move |ctx, _| {
            c3.lock().unwrap().push(ctx.node.to_string());
            Ok(None)
        })
        .unwrap();
    m.predict(&input(1)).unwrap();
    assert_eq!(calls.lock().unwrap()[2..], ["conv2d", "conv2d_1"]);
    drop(h);
    drop(h2);
    sub.predict(&input(1)).unwrap();
    assert_eq!(calls.lock().unwrap().len(), 4);
}
