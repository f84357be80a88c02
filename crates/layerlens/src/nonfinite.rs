//! NaN and infinity counts of inputs and extracted layers.
//!
//! Extraction counts the non-finite values of every input and every tapped
//! layer ([`NonFiniteReport`]); the CLI prints one warning line per affected
//! input or layer, the counts go into the output's metadata, and `--strict`
//! ([`NonFiniteReport::check`]) turns the first one into an error before
//! anything is written.

use layerlens_core::candle_core::{DType, Tensor};
use layerlens_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How many values of some rows are NaN, `+Inf` or `-Inf`, and how many rows
/// (samples) hold at least one of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonFinite {
    /// NaN values.
    pub nan: u64,
    /// `+Inf` values.
    pub pos_inf: u64,
    /// `-Inf` values.
    pub neg_inf: u64,
    /// Rows (samples) with at least one non-finite value.
    pub rows: u64,
}

impl NonFinite {
    /// Counts `values`, `row_len` values per row (a `row_len` of 0 counts the
    /// whole slice as one row).
    ///
    /// ```
    /// use layerlens::extract::NonFinite;
    /// let c = NonFinite::count(&[1.0, f32::NAN, f32::INFINITY, 0.0, 2.0, 3.0], 3);
    /// assert_eq!((c.nan, c.pos_inf, c.neg_inf, c.rows), (1, 1, 0, 1));
    /// assert_eq!(c.to_string(), "2 non-finite values (1 NaN, 1 +Inf) in 1 sample");
    /// ```
    pub fn count(values: &[f32], row_len: usize) -> Self {
        let mut c = NonFinite::default();
        let row_len = if row_len == 0 {
            values.len().max(1)
        } else {
            row_len
        };
        for row in values.chunks(row_len) {
            // The common case, all finite, is one vectorisable pass.
            if row.iter().all(|v| v.is_finite()) {
                continue;
            }
            c.rows += 1;
            for &v in row {
                if v.is_nan() {
                    c.nan += 1;
                } else if v == f32::INFINITY {
                    c.pos_inf += 1;
                } else if v == f32::NEG_INFINITY {
                    c.neg_inf += 1;
                }
            }
        }
        c
    }

    /// Counts a batch-first tensor, one row per sample (converted to f32 first;
    /// integer tensors are always finite).
    pub fn of_tensor(t: &Tensor) -> Result<Self> {
        if t.dtype().is_int() {
            return Ok(NonFinite::default());
        }
        let rows = t.dims().first().copied().unwrap_or(1).max(1);
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(NonFinite::count(&values, values.len() / rows))
    }

    /// All non-finite values.
    pub fn total(&self) -> u64 {
        self.nan + self.pos_inf + self.neg_inf
    }

    /// Adds another count.
    pub fn add(&mut self, other: &NonFinite) {
        self.nan += other.nan;
        self.pos_inf += other.pos_inf;
        self.neg_inf += other.neg_inf;
        self.rows += other.rows;
    }
}

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [
            (self.nan, "NaN"),
            (self.pos_inf, "+Inf"),
            (self.neg_inf, "-Inf"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        let plural = |n: u64| if n == 1 { "" } else { "s" };
        write!(
            f,
            "{} non-finite value{} ({}) in {} sample{}",
            self.total(),
            plural(self.total()),
            parts.join(", "),
            self.rows,
            plural(self.rows)
        )
    }
}

/// The non-finite values of an extraction, per input and per layer; only
/// inputs and layers that have some are listed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonFiniteReport {
    /// Per input (a tensor file as given, or `input` for decoded images).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, NonFinite>,
    /// Per extracted layer (node name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub layers: BTreeMap<String, NonFinite>,
}

impl NonFiniteReport {
    /// Whether no value was NaN or infinite.
    pub fn is_clean(&self) -> bool {
        self.inputs.is_empty() && self.layers.is_empty()
    }

    fn add_to(map: &mut BTreeMap<String, NonFinite>, name: &str, c: NonFinite) {
        if c.total() > 0 {
            map.entry(name.to_string()).or_default().add(&c);
        }
    }

    /// Counts an input tensor (batch first).
    pub fn add_input(&mut self, name: &str, t: &Tensor) -> Result<()> {
        Self::add_to(&mut self.inputs, name, NonFinite::of_tensor(t)?);
        Ok(())
    }

    /// Counts a layer's activations (batch first).
    pub fn add_layer(&mut self, name: &str, t: &Tensor) -> Result<()> {
        Self::add_to(&mut self.layers, name, NonFinite::of_tensor(t)?);
        Ok(())
    }

    /// Adds a count already made for a layer.
    pub fn add_layer_count(&mut self, name: &str, c: NonFinite) {
        Self::add_to(&mut self.layers, name, c);
    }

    /// Adds a count already made for an input.
    pub fn add_input_count(&mut self, name: &str, c: NonFinite) {
        Self::add_to(&mut self.inputs, name, c);
    }

    /// Adds another report's counts.
    pub fn merge(&mut self, other: &NonFiniteReport) {
        for (n, c) in &other.inputs {
            Self::add_to(&mut self.inputs, n, *c);
        }
        for (n, c) in &other.layers {
            Self::add_to(&mut self.layers, n, *c);
        }
    }

    /// One line per affected input, then per affected layer:
    /// `warning: layer 'conv2d': 3 non-finite values (3 NaN) in 1 sample`.
    pub fn warnings(&self) -> Vec<String> {
        let inputs = self
            .inputs
            .iter()
            .map(|(n, c)| format!("warning: input '{n}': {c}"));
        let layers = self
            .layers
            .iter()
            .map(|(n, c)| format!("warning: layer '{n}': {c}"));
        inputs.chain(layers).collect()
    }

    /// With `strict`, an error for the first affected input, else the first
    /// affected layer (one line, naming it and the counts); `Ok` otherwise.
    ///
    /// ```
    /// use layerlens::extract::{NonFinite, NonFiniteReport};
    /// let mut r = NonFiniteReport::default();
    /// r.add_layer_count("conv2d", NonFinite::count(&[f32::NAN, 1.0], 0));
    /// assert!(r.check(false).is_ok());
    /// let e = r.check(true).unwrap_err().to_string();
    /// assert!(e.starts_with("extract: layer 'conv2d' has 1 non-finite value (1 NaN) in 1 sample"), "{e}");
    /// ```
    pub fn check(&self, strict: bool) -> Result<()> {
        if !strict {
            return Ok(());
        }
        let first = self
            .inputs
            .iter()
            .map(|(n, c)| ("input", n, c))
            .chain(self.layers.iter().map(|(n, c)| ("layer", n, c)))
            .next();
        match first {
            None => Ok(()),
            Some((what, name, c)) => Err(Error::invalid(
                "extract",
                format!("{what} '{name}' has {c} (--strict makes NaN and infinite values fatal)"),
            )),
        }
    }

    /// The report as compact JSON (sorted keys), for a file's metadata.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data serialises")
    }
}
