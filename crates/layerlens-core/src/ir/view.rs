//! Where the batch sits in the tensor a node is known by outside.
//!
//! Every node computes batch-first: `(N, per-sample...)`. An imported graph may
//! name tensors whose batch axis is elsewhere or merged with other axes — ONNX
//! attention reshapes `(N, 197, 768)` into `(197, N, 768)`, `(N·12, 197, 64)`
//! or `(197·N, 768)`, and Swin's windows into `(N·64, 49, 96)`. Such a node
//! keeps its batch-first value and records a [`BatchView`]: the outside tensor
//! is the per-sample axes with the batch inserted at [`BatchView::batch_pos`],
//! runs of consecutive axes merged into one ([`BatchView::groups`]). Samples
//! stay independent: nothing in a view mixes them.

use crate::error::{Error, NodeContext, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// How a node's outside tensor places the batch (see the module docs).
///
/// ```
/// use layerlens_core::ir::BatchView;
/// // (N, 197, 768) seen as (197, N, 768), then as (197·N, 768).
/// let moved = BatchView { batch_pos: 1, groups: vec![1, 1, 1] };
/// assert_eq!(moved.outside_dims(&[197, 768], 2), [197, 2, 768]);
/// let merged = BatchView { batch_pos: 1, groups: vec![2, 1] };
/// assert_eq!(merged.outside_dims(&[197, 768], 2), [394, 768]);
/// assert_eq!(merged.batch_axis(), 0);
/// assert_eq!(merged.describe(&[197, 768]), "(197·N, 768)");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BatchView {
    /// Where the batch goes among the per-sample axes: 0 puts it before the
    /// first, the per-sample rank after the last.
    pub batch_pos: usize,
    /// The outside tensor's axes, each a run of this many consecutive axes of
    /// the per-sample shape with the batch inserted (the runs add up to the
    /// per-sample rank + 1; every run has at least one axis).
    pub groups: Vec<usize>,
}

impl BatchView {
    /// The batch-first view of a per-sample rank: `(N, per-sample...)`.
    pub fn batch_first(rank: usize) -> Self {
        BatchView {
            batch_pos: 0,
            groups: vec![1; rank + 1],
        }
    }

    /// Whether this is the batch-first view (the node's own value).
    pub fn is_batch_first(&self) -> bool {
        self.batch_pos == 0 && self.groups.iter().all(|&g| g == 1)
    }

    /// Checks the view against a per-sample rank.
    pub fn check(&self, rank: usize) -> std::result::Result<(), String> {
        if self.batch_pos > rank
            || self.groups.contains(&0)
            || self.groups.iter().sum::<usize>() != rank + 1
        {
            return Err(format!(
                "batch view {self:?} does not fit a per-sample rank of {rank}"
            ));
        }
        Ok(())
    }

    /// The outside axis that holds the batch.
    pub fn batch_axis(&self) -> usize {
        let mut start = 0;
        for (axis, &g) in self.groups.iter().enumerate() {
            if (start..start + g).contains(&self.batch_pos) {
                return axis;
            }
            start += g;
        }
        self.groups.len().saturating_sub(1)
    }

    /// The per-sample axes each outside axis covers, in order; the batch
    /// axis's own list leaves the batch out (it may be empty).
    pub fn axes_of_groups(&self) -> Vec<Vec<usize>> {
        let mut out = Vec::with_capacity(self.groups.len());
        let mut pos = 0;
        for &g in &self.groups {
            let mut axes = Vec::with_capacity(g);
            for p in pos..pos + g {
                match p.cmp(&self.batch_pos) {
                    std::cmp::Ordering::Less => axes.push(p),
                    std::cmp::Ordering::Equal => {}
                    std::cmp::Ordering::Greater => axes.push(p - 1),
                }
            }
            out.push(axes);
            pos += g;
        }
        out
    }

    /// The outside tensor's dims for per-sample dims and a batch size.
    pub fn outside_dims(&self, per_sample: &[usize], batch: usize) -> Vec<usize> {
        let mut all = per_sample.to_vec();
        all.insert(self.batch_pos.min(all.len()), batch);
        let mut out = Vec::with_capacity(self.groups.len());
        let mut pos = 0;
        for &g in &self.groups {
            out.push(all[pos..(pos + g).min(all.len())].iter().product());
            pos += g;
        }
        out
    }

    /// The outside shape with the batch as `N`, as a summary prints it:
    /// `(197, N, 768)`, `(N·12, 197, 64)`, `(197·N, 768)`.
    pub fn describe(&self, per_sample: &[usize]) -> String {
        let mut all: Vec<String> = per_sample.iter().map(|d| d.to_string()).collect();
        all.insert(self.batch_pos.min(all.len()), "N".into());
        let mut parts = Vec::with_capacity(self.groups.len());
        let mut pos = 0;
        for &g in &self.groups {
            let end = (pos + g).min(all.len());
            parts.push(all[pos..end].join("·"));
            pos += g;
        }
        format!("({})", parts.join(", "))
    }

    /// The outside tensor of a batch-first value `t` (`(N, per-sample...)`).
    pub fn present(&self, t: &Tensor, node: &str) -> Result<Tensor> {
        if self.is_batch_first() {
            return Ok(t.clone());
        }
        let dims = t.dims();
        let rank = dims.len().saturating_sub(1);
        self.check(rank).map_err(|m| Error::invalid(node, m))?;
        let mut perm: Vec<usize> = (1..=rank).collect();
        perm.insert(self.batch_pos, 0);
        let moved = t.permute(perm).at_node(node)?;
        let outside = self.outside_dims(&dims[1..], dims[0]);
        moved
            .contiguous()
            .and_then(|m| m.reshape(outside))
            .at_node(node)
    }
}
