//! One decode, one import per input size: `ShapeCache` over the dynamic-size
//! fixture (`dynamic_hw.onnx`, declared `(N, 3, height, width)`; ONNX Runtime
//! outputs at 16×20 and 24×12 from tests/fixtures/gen_semantics_models.py,
//! within 1e-5 + 1e-4 relative), with shared weights and hooks and LRU eviction.

mod common;
use common::assert_close;
use common::fixture;

use candle_core::Device;
use layerlens_onnx::{InputDim, OnnxModel, ShapeCache};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn conv1_weight(m: &layerlens_core::Model) -> Vec<f32> {
    m.params()
        .tensor("conv1.weight")
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn each_size_is_imported_once_and_all_share_weights_and_hooks() {
    let refs = candle_core::safetensors::load(fixture("semantics_refs.safetensors"), &Device::Cpu)
        .unwrap();
    let source = OnnxModel::open(fixture("dynamic_hw.onnx")).unwrap();
    assert!(source.is_dynamic());
    assert_eq!(
        source.inputs()[0].dims[2..],
        [
            InputDim::Named("height".into()),
            InputDim::Named("width".into())
        ],
        "dim_param names are kept"
    );
    let cache = ShapeCache::new(source, 2);
    for round in 0..2 {
        for tag in ["16x20", "24x12"] {
            let x = &refs[&format!("dynamic_hw_{tag}/x")];
            let m = cache.model_for_inputs(std::slice::from_ref(x)).unwrap();
            let y = &m.forward(std::slice::from_ref(x)).unwrap()[0];
            assert_close(
                &format!("{tag} round {round}"),
                y,
                &refs[&format!("dynamic_hw_{tag}/y")],
            );
        }
    }
    assert_eq!(cache.imports(), 2, "the second round hits the cache");

    let small = cache.model_for(&[vec![3, 16, 20]]).unwrap();
    let tall = cache.model_for(&[vec![3, 24, 12]]).unwrap();
    // A hook registered on one size fires on the other.
    let fired = Arc::new(AtomicUsize::new(0));
    let f = fired.clone();
    let _handle = small
        .register_forward_hook("relu1", move |_, _| {
            f.fetch_add(1, Ordering::Relaxed);
            Ok(None)
        })
        .unwrap();
    tall.forward(&[refs["dynamic_hw_24x12/x"].clone()]).unwrap();
    assert_eq!(fired.load(Ordering::Relaxed), 1);
    // One storage for the weights: a change through one is seen by the other.
    let w = small.params().tensor("conv1.weight").unwrap();
    small
        .params()
        .set("conv1.weight", &(w * 0.5).unwrap())
        .unwrap();
    let changed: Vec<f32> = conv1_weight(&small);
    let seen: Vec<f32> = conv1_weight(&tall);
    assert_eq!(changed, seen);

    // A third size evicts the least recently used (16×20, used before 24×12);
    // bringing it back imports again, with the current (halved) weights.
    cache.model_for(&[vec![3, 8, 8]]).unwrap();
    assert_eq!(cache.imports(), 3);
    cache.model_for(&[vec![3, 24, 12]]).unwrap();
    assert_eq!(cache.imports(), 3, "24×12 is still cached");
    let back = cache.model_for(&[vec![3, 16, 20]]).unwrap();
    assert_eq!(cache.imports(), 4, "16×20 was evicted");
    let again: Vec<f32> = conv1_weight(&back);
    assert_eq!(again, changed, "not reset to the file's weights");

    // Shapes the file contradicts, or the wrong count, are errors.
    let e = cache.model_for(&[vec![4, 16, 16]]).unwrap_err().to_string();
    assert!(
        e.contains("input 'x' is declared (N, 3, height, width): dim 1 cannot be 4"),
        "{e}"
    );
    let e = cache.model_for(&[]).unwrap_err().to_string();
    assert!(
        e.contains(
            "0 input shape(s) given for a model with 1 input(s) ('x' (N, 3, height, width))"
        ),
        "{e}"
    );
}
