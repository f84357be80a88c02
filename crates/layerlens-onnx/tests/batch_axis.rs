//! ONNX tensors whose batch axis moves or merges with other axes (attention's
//! `(5, N, 8)`, `(N·2, 5, 12)` and `(5·N, 8)`, Swin's `(N·4, 4, 3)` windows, a
//! class token expanded to the batch, a static batch-1 export flattening the
//! batch into the features, MaxViT's Einsum products) match ONNX Runtime at
//! every tensor, at two batch sizes, and after a save and load; the fixtures
//! and references come from `fixtures/gen_batch_axis_models.py`. Tolerance
//! `1e-5 + 1e-4·|ref|`.

mod common;
use common::assert_close;
use common::fixture;

use candle_core::{Device, Tensor};
use std::collections::HashMap;

fn refs() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("batch_axis_refs.safetensors"), &Device::Cpu).unwrap()
}

const CASES: &[(&str, &[&str], &[usize])] = &[
    (
        "batch_attention",
        &[
            "t", "proj_b", "heads", "heads_t", "q", "scores", "attn", "ctx", "ctx_t", "rows_2d",
            "out_proj", "back", "y",
        ],
        &[2, 3],
    ),
    ("batch_cls_token", &["cls_n", "tokens", "y"], &[2, 3]),
    (
        "batch_windows",
        &["split_t", "win", "win_ln", "win_sm", "merged", "y"],
        &[2, 3],
    ),
    (
        "batch_einsum",
        &["scores", "attn", "ctx", "scores_t"],
        &[2, 3],
    ),
    // Static batch 1 in the file, run at batch 3: each sample as ONNX Runtime
    // computes it alone.
    (
        "batch_static_flatten",
        &["flat_r", "scaled", "row_r", "y"],
        &[3],
    ),
];

#[test]
fn tensors_that_move_or_merge_the_batch_axis_match_onnx_runtime_at_every_node() {
    let refs = refs();
    for &(stem, tensors, batches) in CASES {
        let model = layerlens_onnx::import(fixture(&format!("{stem}.onnx"))).unwrap();
        let dir = std::env::temp_dir().join(format!("layerlens-{stem}-{}", std::process::id()));
        model.save(&dir).unwrap();
        let back = layerlens_core::Model::load(&dir, &Device::Cpu).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        for &b in batches {
            let x = &refs[&format!("{stem}/{b}/x")];
            for (which, m) in [("imported", &model), ("reloaded", &back)] {
                let acts = m.extract(x, tensors).unwrap();
                for &t in tensors {
                    assert_close(
                        &format!("{stem} {which} batch {b} '{t}'"),
                        acts.get(t).unwrap(),
                        &refs[&format!("{stem}/{b}/{t}")],
                    );
                }
            }
        }
    }
}

/// Hooks see every node batch-first (the executor's own value), whatever the
/// ONNX layout of the tensor extraction returns.
#[test]
fn hooks_see_batch_first_values_and_extraction_the_onnx_layout() {
    let refs = refs();
    let model = layerlens_onnx::import(fixture("batch_attention.onnx")).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let _h = model
        .register_forward_hook("rows_2d", move |_, t| {
            s.lock().unwrap().push(t.dims().to_vec());
            Ok(None)
        })
        .unwrap();
    let x = &refs["batch_attention/3/x"];
    let acts = model.extract(x, &["rows_2d"]).unwrap();
    assert_eq!(acts.get("rows_2d").unwrap().dims(), &[15, 8]);
    assert_eq!(*seen.lock().unwrap(), vec![vec![3, 5, 8]]);
}

/// Gradients with respect to a tensor whose batch is merged come back in its
/// ONNX layout, equal to the batch-first gradient rearranged.
#[test]
fn gradients_of_merged_batch_tensors_take_their_onnx_layout() {
    let refs = refs();
    let model = layerlens_onnx::import(fixture("batch_attention.onnx")).unwrap();
    let x = &refs["batch_attention/2/x"];
    let g = model
        .gradients(
            std::slice::from_ref(x),
            &["y"],
            &["heads_t", "t"],
            layerlens_core::Mode::Eval,
            |a| Ok(a.get("y")?.sqr()?.sum_all()?),
        )
        .unwrap();
    assert_eq!(g.grads.get("heads_t").unwrap().dims(), &[4, 5, 12]);
    assert_eq!(g.grads.get("t").unwrap().dims(), &[5, 2, 8]);
}

/// What would mix samples is refused by name, with the tensor's ONNX dims.
#[test]
fn ops_across_the_batch_axis_are_refused_by_name() {
    for (stem, want) in [
        (
            "refuse_batch_softmax",
            "Softmax along axis 1, which holds the batch (ONNX dims [5, N, 8]), would mix samples",
        ),
        (
            "refuse_batch_reshape",
            "reshape of [N, 4] to [2, -1] does not keep each sample's values together",
        ),
        (
            "refuse_batch_gather",
            "Gather on the batch axis is not supported",
        ),
    ] {
        let e = layerlens_onnx::import(fixture(&format!("{stem}.onnx")))
            .err()
            .unwrap_or_else(|| panic!("{stem} imported"))
            .to_string();
        assert!(e.contains(want), "{stem}: {e}");
        assert_eq!(e.lines().count(), 1, "{stem}: {e}");
    }
}
