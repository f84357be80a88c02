//! Activation shapes. A [`Shape`] is the shape of one sample: the batch dimension
//! is implicit and always first at run time, like Keras' `(None, ...)`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The most elements one sample of any node may have (2^32, 16 GiB of
/// float32). Graphs whose shapes exceed it, from a builder, an ONNX file or a
/// `model.json`, are refused when the node is added, before anything is
/// allocated.
pub const MAX_ELEMENTS: usize = 1 << 32;

/// The per-sample shape of an activation, in NCHW order without the N.
///
/// ```
/// use layerlens_core::Shape;
/// let s = Shape::new([32, 26, 26]);
/// assert_eq!(s.to_string(), "(N, 32, 26, 26)");
/// assert_eq!(s.with_batch(4), vec![4, 32, 26, 26]);
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    /// A shape from per-sample dims.
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }

    /// The per-sample dims.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// Number of per-sample dims (the full tensor has one more).
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Elements in one sample.
    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
    }

    /// The number of elements per sample, or `None` when the product overflows.
    pub fn checked_elem_count(&self) -> Option<usize> {
        self.0.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
    }

    /// The full tensor dims for a batch of `n`.
    pub fn with_batch(&self, n: usize) -> Vec<usize> {
        let mut d = Vec::with_capacity(self.0.len() + 1);
        d.push(n);
        d.extend_from_slice(&self.0);
        d
    }

    /// `(C, H, W)` if this is an image-like shape.
    pub fn chw(&self) -> Option<(usize, usize, usize)> {
        match self.0.as_slice() {
            [c, h, w] => Some((*c, *h, *w)),
            _ => None,
        }
    }

    /// The per-sample shape of a full tensor's dims (drops the batch dim).
    pub fn from_tensor_dims(dims: &[usize]) -> Self {
        Shape(dims.iter().skip(1).copied().collect())
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(N")?;
        for d in &self.0 {
            write!(f, ", {d}")?;
        }
        write!(f, ")")
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<const K: usize> From<[usize; K]> for Shape {
    fn from(d: [usize; K]) -> Self {
        Shape(d.to_vec())
    }
}

impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}

/// Resolves a possibly negative axis of a full (batched) tensor of rank `full_rank`.
pub(crate) fn resolve_axis(axis: isize, full_rank: usize) -> Option<usize> {
    let r = full_rank as isize;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}
