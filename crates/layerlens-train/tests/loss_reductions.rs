//! Per-sample loss reductions against PyTorch and Keras
//! (tests/fixtures/gen_loss_reductions.py): `none`, `sum` and `mean` of
//! cross-entropy with labels and with soft targets (`F.cross_entropy`), Keras'
//! `CategoricalCrossentropy` on one-hot targets and `MeanSquaredError`.
//! Tolerance 1e-5 absolute + 1e-5 relative (float32).

use layerlens_core::candle_core::{DType, Device, Tensor};
use layerlens_core::Activations;
use layerlens_train::loss::{Loss, Reduction, Targets};
use std::collections::BTreeMap;

fn fixture() -> BTreeMap<String, Tensor> {
    layerlens_core::candle_core::safetensors::load(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/loss_reductions.safetensors"
        ),
        &Device::Cpu,
    )
    .unwrap()
    .into_iter()
    .collect()
}

fn close(got: &Tensor, want: &Tensor, what: &str) {
    let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(g.len(), w.len(), "{what}: {g:?} vs {w:?}");
    for (a, b) in g.iter().zip(&w) {
        assert!(
            (a - b).abs() <= 1e-5 + 1e-5 * b.abs(),
            "{what}: {g:?} vs {w:?}"
        );
    }
}

#[test]
fn reductions_match_pytorch_and_keras() {
    let fx = fixture();
    let labels = fx["labels"].to_dtype(DType::U32).unwrap();
    let acts = Activations::from_pairs(
        ["logits", "probs", "pred"]
            .iter()
            .map(|k| (k.to_string(), fx[*k].clone()))
            .collect(),
    );
    let by_labels = Targets {
        labels: Some(&labels),
        values: None,
    };
    let by = |k: &str| Targets {
        labels: None,
        values: Some(&fx[k]),
    };
    let cases: [(&str, Loss, Targets); 4] = [
        ("ce", Loss::cross_entropy("logits"), by_labels),
        ("ce_soft", Loss::cross_entropy("logits"), by("soft")),
        (
            "cce",
            Loss::categorical_crossentropy("probs"),
            by("one_hot"),
        ),
        ("mse", Loss::mse("pred"), by("target")),
    ];
    for (name, loss, targets) in cases {
        close(
            &loss.per_sample(&acts, targets).unwrap(),
            &fx[&format!("{name}.none")],
            &format!("{name} none"),
        );
        for (r, reduction) in [("sum", Reduction::Sum), ("mean", Reduction::Mean)] {
            let (total, parts) = loss
                .clone()
                .reduction(reduction)
                .compute(&acts, targets)
                .unwrap();
            close(&total, &fx[&format!("{name}.{r}")], &format!("{name} {r}"));
            assert_eq!(parts.len(), 1);
        }
        // The default is the mean, as in both frameworks.
        let (total, _) = loss.compute(&acts, targets).unwrap();
        close(
            &total,
            &fx[&format!("{name}.mean")],
            &format!("{name} default"),
        );
    }
}

#[test]
fn each_term_keeps_its_own_reduction_and_none_is_refused_by_compute() {
    let fx = fixture();
    let labels = fx["labels"].to_dtype(DType::U32).unwrap();
    let acts = Activations::from_pairs(vec![
        ("logits".to_string(), fx["logits"].clone()),
        ("pred".to_string(), fx["pred"].clone()),
    ]);
    let targets = Targets {
        labels: Some(&labels),
        values: None,
    };
    // Mean cross-entropy plus a summed activity penalty: 0.5 · Σ_samples mean(x²).
    let loss =
        Loss::cross_entropy("logits") + 0.5 * Loss::mean_square("pred").reduction(Reduction::Sum);
    let (total, parts) = loss.compute(&acts, targets).unwrap();
    let pred = fx["pred"].flatten_from(1).unwrap();
    let penalty = pred.sqr().unwrap().mean(1).unwrap().sum_all().unwrap();
    let want = (fx["ce.mean"].clone() + (penalty * 0.5).unwrap()).unwrap();
    close(&total, &want, "mixed reductions");
    assert_eq!(parts[1].0, "0.5*mean_square(pred)");

    let e = Loss::cross_entropy("logits")
        .reduction(Reduction::None)
        .compute(&acts, targets)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cross_entropy(logits) has reduction none") && e.contains("per_sample"),
        "{e}"
    );
    let e = "max".parse::<Reduction>().unwrap_err().to_string();
    assert!(e.contains("reduction 'max': use mean, sum or none"), "{e}");
    assert_eq!(
        "sum_over_batch_size".parse::<Reduction>().unwrap(),
        Reduction::Mean
    );
}
