//! Losses as weighted sums of terms over any tapped activations:
//!
//! ```
//! use layerlens_train::loss::Loss;
//! // Seed 002 example 3: cross-entropy on the logits plus 0.1 × the mean square of
//! // the first convolution's output.
//! let loss = Loss::cross_entropy("dense") + 0.1 * Loss::mean_square("conv2d");
//! assert_eq!(loss.taps(), vec!["dense", "conv2d"]);
//! ```

use candle_core::{DType, Tensor, D};
use layerlens_core::{Activations, Error, Result};
use std::ops::{Add, Mul};

/// One term of a loss.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    /// Mean softmax cross-entropy of logits against class labels (PyTorch
    /// `F.cross_entropy`), or against one-hot / soft targets `(N, classes)` given
    /// as [`Targets::values`] when the batch has no labels: `-Σ t·log_softmax(x)`
    /// (PyTorch's probability targets, Keras' `from_logits=True`).
    CrossEntropy {
        /// The logits node.
        node: String,
    },
    /// Mean categorical cross-entropy of probabilities against class labels, with
    /// Keras' clipping of probabilities to `[1e-7, 1 - 1e-7]`; or against one-hot /
    /// soft targets `(N, classes)` given as [`Targets::values`] when the batch has
    /// no labels (Keras' `categorical_crossentropy(y_true, y_pred)` on one-hot
    /// `y_true`): `-Σ t·log(clip(p))`.
    CategoricalCrossEntropy {
        /// The probabilities node (after softmax).
        node: String,
    },
    /// Mean squared error against a target given with the batch.
    Mse {
        /// The prediction node.
        node: String,
    },
    /// `mean(x²)` of an activation (a penalty on intermediate activations).
    MeanSquare {
        /// The node.
        node: String,
    },
    /// Keras' `activity_regularizer=l2(1)`: `sum(x²) / batch`.
    ActivityL2 {
        /// The node.
        node: String,
    },
    /// Keras' `activity_regularizer=l1(1)`: `sum(|x|) / batch`.
    ActivityL1 {
        /// The node.
        node: String,
    },
}

impl Term {
    fn node(&self) -> &str {
        match self {
            Term::CrossEntropy { node }
            | Term::CategoricalCrossEntropy { node }
            | Term::Mse { node }
            | Term::MeanSquare { node }
            | Term::ActivityL2 { node }
            | Term::ActivityL1 { node } => node,
        }
    }

    fn label(&self) -> String {
        let kind = match self {
            Term::CrossEntropy { .. } => "cross_entropy",
            Term::CategoricalCrossEntropy { .. } => "categorical_crossentropy",
            Term::Mse { .. } => "mse",
            Term::MeanSquare { .. } => "mean_square",
            Term::ActivityL2 { .. } => "activity_l2",
            Term::ActivityL1 { .. } => "activity_l1",
        };
        format!("{kind}({})", self.node())
    }
}

/// What the loss compares predictions with.
#[derive(Debug, Clone, Copy)]
pub struct Targets<'a> {
    /// Class labels `(B,)` (u32).
    pub labels: Option<&'a Tensor>,
    /// Regression targets, same shape as the prediction; without `labels`, also
    /// the one-hot or soft class targets of the cross-entropies.
    pub values: Option<&'a Tensor>,
}

/// How per-sample loss values become the loss: Keras' and PyTorch's `reduction`.
///
/// Every term has one value per sample (cross-entropies: the sample's; `mse` and
/// `mean_square`: the mean over the sample's elements; activity regularisers: the
/// sum over them), and the reduction acts over the samples. `Mean` is what
/// [`Loss::compute`] did before reductions existed and what both frameworks
/// default to; `Sum` is Keras' `reduction="sum"` and PyTorch's `reduction="sum"`
/// for the cross-entropies (PyTorch's `mse_loss(reduction="sum")` sums every
/// element instead: multiply by the elements per sample); `None` keeps one value per
/// sample ([`Loss::per_sample`]), for weighting, hard-example mining or evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// Mean over the samples (Keras' `"sum_over_batch_size"`, PyTorch's `"mean"`).
    #[default]
    Mean,
    /// Sum over the samples.
    Sum,
    /// One value per sample; [`Loss::compute`] refuses it, use [`Loss::per_sample`].
    None,
}

impl std::str::FromStr for Reduction {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" | "sum_over_batch_size" => Ok(Reduction::Mean),
            "sum" => Ok(Reduction::Sum),
            "none" => Ok(Reduction::None),
            other => Err(Error::invalid(
                "loss",
                format!("reduction '{other}': use mean, sum or none"),
            )),
        }
    }
}

/// A weighted sum of [`Term`]s.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Loss {
    /// `(weight, term, reduction)`: each term reduces its per-sample values
    /// itself, so `ce + 0.1 * penalty.reduction(Reduction::Sum)` keeps both.
    pub terms: Vec<(f64, Term, Reduction)>,
}

impl Loss {
    fn one(t: Term) -> Self {
        Loss {
            terms: vec![(1.0, t, Reduction::Mean)],
        }
    }
    /// The same loss with every term reduced by `reduction`:
    /// `Loss::cross_entropy("fc").reduction(Reduction::Sum)`.
    pub fn reduction(mut self, reduction: Reduction) -> Self {
        for (_, _, r) in &mut self.terms {
            *r = reduction;
        }
        self
    }
    /// Cross-entropy from logits.
    pub fn cross_entropy(node: &str) -> Self {
        Self::one(Term::CrossEntropy { node: node.into() })
    }
    /// Categorical cross-entropy from probabilities.
    pub fn categorical_crossentropy(node: &str) -> Self {
        Self::one(Term::CategoricalCrossEntropy { node: node.into() })
    }
    /// Mean squared error.
    pub fn mse(node: &str) -> Self {
        Self::one(Term::Mse { node: node.into() })
    }
    /// Mean of squares of an activation.
    pub fn mean_square(node: &str) -> Self {
        Self::one(Term::MeanSquare { node: node.into() })
    }
    /// Keras-style L2 activity regularisation of a layer.
    pub fn activity_l2(node: &str) -> Self {
        Self::one(Term::ActivityL2 { node: node.into() })
    }
    /// Keras-style L1 activity regularisation of a layer.
    pub fn activity_l1(node: &str) -> Self {
        Self::one(Term::ActivityL1 { node: node.into() })
    }

    /// The nodes the loss reads, in first-use order.
    pub fn taps(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (_, t, _) in &self.terms {
            if !out.contains(&t.node()) {
                out.push(t.node());
            }
        }
        out
    }

    /// The total (a scalar tensor that can be differentiated) and each weighted
    /// term's value, each reduced over the samples by its [`Reduction`]
    /// ([`Reduction::None`] is refused here: see [`Loss::per_sample`]).
    pub fn compute(
        &self,
        acts: &Activations,
        targets: Targets,
    ) -> Result<(Tensor, Vec<(String, f32)>)> {
        if let Some((_, t, _)) = self.terms.iter().find(|(_, _, r)| *r == Reduction::None) {
            return Err(Error::invalid(
                t.node(),
                format!(
                    "{} has reduction none, one value per sample, not a loss to minimise: \
                     use Loss::per_sample, or reduction mean or sum",
                    t.label()
                ),
            ));
        }
        let mut total: Option<Tensor> = None;
        let mut parts = Vec::with_capacity(self.terms.len());
        for ((w, per_sample), (_, _, reduction)) in self
            .weighted_terms(acts, targets)?
            .into_iter()
            .zip(&self.terms)
        {
            let reduced = match reduction {
                Reduction::Sum => per_sample.sum_all()?,
                _ => per_sample.mean_all()?,
            };
            parts.push((w, reduced.to_dtype(DType::F32)?.to_scalar::<f32>()?));
            total = Some(match total {
                None => reduced,
                Some(t) => (t + reduced)?,
            });
        }
        Ok((total.expect("at least one term"), parts))
    }

    /// The weighted sum of the terms for each sample, `(N,)`: Keras'
    /// `reduction=None`, PyTorch's `reduction="none"` (for `mse`, followed by the
    /// mean over each sample's elements). Differentiable, whatever the terms'
    /// reductions say.
    pub fn per_sample(&self, acts: &Activations, targets: Targets) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for (_, v) in self.weighted_terms(acts, targets)? {
            total = Some(match total {
                None => v,
                Some(t) => {
                    if t.dims() != v.dims() {
                        return Err(Error::shape(
                            "loss",
                            format!(
                                "per-sample terms disagree on the batch: {:?} and {:?}",
                                t.dims(),
                                v.dims()
                            ),
                        ));
                    }
                    (t + v)?
                }
            });
        }
        Ok(total.expect("at least one term"))
    }

    /// Each term's label and weighted per-sample values `(N,)`.
    fn weighted_terms(
        &self,
        acts: &Activations,
        targets: Targets,
    ) -> Result<Vec<(String, Tensor)>> {
        if self.terms.is_empty() {
            return Err(Error::invalid("loss", "a loss needs at least one term"));
        }
        self.terms
            .iter()
            .map(|(w, term, _)| {
                let x = acts.get(term.node())?;
                let v = (term_per_sample(term, x, targets)? * *w)?;
                Ok((format!("{w}*{}", term.label()), v))
            })
            .collect()
    }
}

fn labels_for<'a>(term: &Term, x: &Tensor, targets: Targets<'a>) -> Result<&'a Tensor> {
    let y = targets.labels.ok_or_else(|| {
        Error::invalid(
            term.node(),
            format!("{} needs class labels, the batch has none", term.label()),
        )
    })?;
    if x.rank() != 2 || y.dims() != [x.dim(0)?] {
        return Err(Error::shape(
            term.node(),
            format!(
                "{} expects (N, classes) predictions and (N,) labels, got {:?} and {:?}",
                term.label(),
                x.dims(),
                y.dims()
            ),
        ));
    }
    Ok(y)
}

/// One-hot or soft targets `(N, classes)` matching the predictions, used when
/// the batch has no labels.
fn soft_targets<'a>(term: &Term, x: &Tensor, targets: Targets<'a>) -> Result<Option<&'a Tensor>> {
    match (targets.labels, targets.values) {
        (None, Some(t)) => {
            if x.rank() != 2 || t.dims() != x.dims() {
                return Err(Error::shape(
                    term.node(),
                    format!(
                        "{} expects (N, classes) predictions and targets of the same shape, got {:?} and {:?}",
                        term.label(),
                        x.dims(),
                        t.dims()
                    ),
                ));
            }
            Ok(Some(t))
        }
        _ => Ok(None),
    }
}

/// A term's value for each sample, `(N,)`.
fn term_per_sample(term: &Term, x: &Tensor, targets: Targets) -> Result<Tensor> {
    // (N, everything else), so element-wise terms reduce per sample.
    let rows = |t: &Tensor| -> Result<Tensor> {
        let n = t.dim(0)?;
        Ok(t.reshape((n, t.elem_count() / n.max(1)))?)
    };
    if x.rank() == 0 {
        return Err(Error::shape(
            term.node(),
            format!("{} needs a batch axis, got a scalar", term.label()),
        ));
    }
    Ok(match term {
        Term::CrossEntropy { .. } if soft_targets(term, x, targets)?.is_some() => {
            let t = soft_targets(term, x, targets)?.expect("checked");
            let logp = candle_nn_log_softmax(x)?;
            (t * logp)?.sum(1)?.neg()?
        }
        Term::CategoricalCrossEntropy { .. } if soft_targets(term, x, targets)?.is_some() => {
            let t = soft_targets(term, x, targets)?.expect("checked");
            let p = x.clamp(1e-7f32, 1.0 - 1e-7f32)?;
            (t * p.log()?)?.sum(1)?.neg()?
        }
        Term::CrossEntropy { .. } => {
            let y = labels_for(term, x, targets)?;
            let logp = candle_core::Tensor::log_sum_exp(x, D::Minus1)?;
            let picked = x.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)?;
            (logp - picked)?
        }
        Term::CategoricalCrossEntropy { .. } => {
            let y = labels_for(term, x, targets)?;
            let p = x.clamp(1e-7f32, 1.0 - 1e-7f32)?;
            let picked = p.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)?;
            picked.log()?.neg()?
        }
        Term::Mse { .. } => {
            let t = targets.values.ok_or_else(|| {
                Error::invalid(
                    term.node(),
                    "mse needs regression targets, the batch has none",
                )
            })?;
            if t.dims() != x.dims() {
                return Err(Error::shape(
                    term.node(),
                    format!("mse: prediction {:?} vs target {:?}", x.dims(), t.dims()),
                ));
            }
            rows(&(x - t)?.sqr()?)?.mean(1)?
        }
        Term::MeanSquare { .. } => rows(&x.sqr()?)?.mean(1)?,
        Term::ActivityL2 { .. } => rows(&x.sqr()?)?.sum(1)?,
        Term::ActivityL1 { .. } => rows(&x.abs()?)?.sum(1)?,
    })
}

/// `log_softmax` over the last axis, stable: `x - logsumexp(x)`.
fn candle_nn_log_softmax(x: &Tensor) -> Result<Tensor> {
    let lse = Tensor::log_sum_exp(x, D::Minus1)?.unsqueeze(1)?;
    Ok(x.broadcast_sub(&lse)?)
}

impl Add for Loss {
    type Output = Loss;
    fn add(mut self, rhs: Loss) -> Loss {
        self.terms.extend(rhs.terms);
        self
    }
}

impl Mul<Loss> for f64 {
    type Output = Loss;
    fn mul(self, mut rhs: Loss) -> Loss {
        for (w, _, _) in &mut rhs.terms {
            *w *= self;
        }
        rhs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn value(term: &Term, x: &Tensor, targets: Targets) -> f32 {
        term_per_sample(term, x, targets)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// One-hot targets give exactly the label form; soft targets the definition.
    #[test]
    fn one_hot_and_soft_targets_match_the_label_form_and_the_definition() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[2.0f32, -1.0, 0.5], [0.1, 0.2, 3.0]], &dev).unwrap();
        let probs = candle_core::Tensor::exp(&candle_nn_log_softmax(&logits).unwrap()).unwrap();
        let labels = Tensor::new(&[0u32, 2], &dev).unwrap();
        let one_hot = Tensor::new(&[[1.0f32, 0.0, 0.0], [0.0, 0.0, 1.0]], &dev).unwrap();
        let soft = Tensor::new(&[[0.7f32, 0.2, 0.1], [0.0, 0.5, 0.5]], &dev).unwrap();
        let by_labels = Targets {
            labels: Some(&labels),
            values: None,
        };
        let by_one_hot = Targets {
            labels: None,
            values: Some(&one_hot),
        };
        let by_soft = Targets {
            labels: None,
            values: Some(&soft),
        };
        for (term, x) in [
            (Term::CrossEntropy { node: "fc".into() }, &logits),
            (
                Term::CategoricalCrossEntropy {
                    node: "probs".into(),
                },
                &probs,
            ),
        ] {
            let a = value(&term, x, by_labels);
            let b = value(&term, x, by_one_hot);
            assert!((a - b).abs() < 1e-6, "{term:?}: {a} vs {b}");
            // -mean over rows of sum t * log softmax, in f64 by hand.
            let l: Vec<Vec<f32>> = logits.to_vec2().unwrap();
            let t: Vec<Vec<f32>> = soft.to_vec2().unwrap();
            let mut want = 0f64;
            for (row, tr) in l.iter().zip(&t) {
                let lse = row.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
                want -= row
                    .iter()
                    .zip(tr)
                    .map(|(&v, &w)| w as f64 * (v as f64 - lse))
                    .sum::<f64>();
            }
            want /= 2.0;
            let got = value(&term, x, by_soft);
            assert!(
                (got as f64 - want).abs() < 1e-5,
                "{term:?}: {got} vs {want}"
            );
        }
        // Targets of the wrong shape: a shape error naming the term.
        let bad = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
        let e = term_per_sample(
            &Term::CrossEntropy { node: "fc".into() },
            &logits,
            Targets {
                labels: None,
                values: Some(&bad),
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("cross_entropy(fc)") && e.contains("[2, 4]"),
            "{e}"
        );
    }
}
