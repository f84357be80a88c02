//! Mapping activation values to `[0, 1]` for display.

use layerlens_core::ops::Activation;

/// How values become colours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Norm {
    /// Each channel from its own min to its own max.
    PerChannel,
    /// One range for all channels of the layer.
    Shared,
    /// A fixed range.
    Fixed(f32, f32),
    /// From what produced the values: ReLU-like → `[0, max]`, tanh → `[-1, 1]`,
    /// sigmoid/softmax → `[0, 1]`, anything signed → symmetric `[-m, m]`.
    Auto,
}

/// A display range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    /// Value shown at 0.
    pub lo: f32,
    /// Value shown at 1.
    pub hi: f32,
}

impl Range {
    /// `[0, 1]` position of `v`. A flat range (`hi <= lo`) shows every value at
    /// the bottom if it is `[0, 0]`, in the middle otherwise: never NaN.
    pub fn t(&self, v: f32) -> f32 {
        let span = self.hi - self.lo;
        let tiny = f32::EPSILON * self.hi.abs().max(self.lo.abs()).max(1.0);
        if span.is_nan() || span <= tiny {
            return if self.lo == 0.0 && self.hi == 0.0 {
                0.0
            } else {
                0.5
            };
        }
        ((v - self.lo) / span).clamp(0.0, 1.0)
    }

    /// Min and max of finite values (`[0, 0]` for none).
    pub fn of(values: &[f32]) -> Range {
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for &v in values.iter().filter(|v| v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if lo > hi {
            Range { lo: 0.0, hi: 0.0 }
        } else {
            Range { lo, hi }
        }
    }
}

/// The range `Auto` picks, given the whole layer's values and its activation,
/// and whether a diverging colormap suits it.
pub(crate) fn auto_range(values: &[f32], activation: Option<Activation>) -> (Range, bool) {
    let observed = Range::of(values);
    match activation.map(|a| a.range()) {
        // Bounded both ways (tanh, sigmoid, softmax, ReLU6): the activation's own range,
        // so that maps of different inputs are comparable; tanh's is signed.
        Some((Some(lo), Some(hi))) => (Range { lo, hi }, lo < 0.0),
        // Bounded below (ReLU): from the bound to the largest value seen.
        Some((Some(lo), None)) => (
            Range {
                lo,
                hi: observed.hi.max(lo),
            },
            false,
        ),
        // Unknown and signed: symmetric around zero.
        _ if observed.lo < 0.0 && observed.hi > 0.0 => {
            let m = observed.lo.abs().max(observed.hi);
            (Range { lo: -m, hi: m }, true)
        }
        _ => (observed, false),
    }
}
