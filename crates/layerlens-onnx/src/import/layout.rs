//! ONNX tensors whose batch axis is not first: `Transpose`, `Reshape`,
//! `Squeeze` / `Unsqueeze`, `Flatten` and `Shape` on any layout, and the axis
//! mapping the other ops use.
//!
//! A layerlens node always holds its value batch-first, `(N, per-sample...)`.
//! The ONNX tensor it stands for is described by the node's
//! [`BatchView`]: its axes are runs of the per-sample axes with the batch
//! inserted somewhere — `(197, N, 768)` after attention's `Transpose`,
//! `(N·12, 197, 64)` after its heads are merged into the batch, `(197·N, 768)`
//! before the output projection. Here an ONNX tensor is a list of [`Axis`]
//! values: every axis but the batch axis is one per-sample axis; the batch
//! axis holds the batch and the per-sample axes merged with it (outer ones
//! before it, inner ones after). Ops that keep samples apart move those lists
//! around; an op that would need samples mixed is refused by name.

use super::{attr, Importer, Value};
use crate::proto::NodeProto;
use crate::tensor::{batch_factor, batch_times, Const};
use layerlens_core::builder::NodeRef;
use layerlens_core::ir::BatchView;
use layerlens_core::ops::{Permute, Reshape};
use layerlens_core::Result;

/// One axis of an ONNX tensor: per-sample axes (indices into the node's
/// per-sample dims) and, for the batch axis, where the batch sits among them.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Axis {
    /// Per-sample axes before the batch (all of them for a non-batch axis).
    pub before: Vec<usize>,
    /// Whether this is the batch axis.
    pub batch: bool,
    /// Per-sample axes after the batch.
    pub after: Vec<usize>,
}

impl Axis {
    fn plain(i: usize) -> Self {
        Axis {
            before: vec![i],
            batch: false,
            after: vec![],
        }
    }
}

/// The per-sample dims and the view of a list of ONNX axes over `dims` (the
/// per-sample dims the indices refer to): the order of the per-sample axes
/// and the node's new dims.
fn realise(axes: &[Axis], dims: &[usize]) -> (Vec<usize>, Vec<usize>, BatchView) {
    let mut order = Vec::new();
    let mut groups = Vec::with_capacity(axes.len());
    let mut batch_pos = 0;
    for a in axes {
        order.extend(&a.before);
        if a.batch {
            batch_pos = order.len();
        }
        order.extend(&a.after);
        groups.push(a.before.len() + a.after.len() + usize::from(a.batch));
    }
    let new_dims = order.iter().map(|&i| dims[i]).collect();
    (order, new_dims, BatchView { batch_pos, groups })
}

/// The product of sizes, `None` on overflow.
fn product<'a>(sizes: impl IntoIterator<Item = &'a i64>) -> Option<i64> {
    sizes
        .into_iter()
        .try_fold(1i64, |acc, &d| acc.checked_mul(d))
}

impl Importer<'_> {
    /// The view of node `r`'s ONNX tensor (batch-first unless recorded).
    pub(super) fn view_of(&self, r: NodeRef) -> BatchView {
        self.g
            .view(r)
            .cloned()
            .unwrap_or_else(|| BatchView::batch_first(self.g.shape(r).rank()))
    }

    /// The view of `x`, which every node of `others` must share: an op on
    /// tensors laid out differently (one with the batch first, one without)
    /// is refused, naming both.
    pub(super) fn same_layout(
        &self,
        n: &NodeProto,
        x: NodeRef,
        others: &[NodeRef],
    ) -> Result<BatchView> {
        let view = self.view_of(x);
        match others.iter().find(|&&r| self.view_of(r) != view) {
            None => Ok(view),
            Some(&other) => Err(self.err(
                n,
                format!(
                    "{} of {} and {}, laid out differently (the batch not first in one of them), is not supported",
                    n.op_type,
                    self.show_dims(x),
                    self.show_dims(other)
                ),
            )),
        }
    }

    /// Whether node `r`'s ONNX tensor is batch-first.
    pub(super) fn batch_first(&self, r: NodeRef) -> bool {
        self.g.view(r).is_none()
    }

    /// The ONNX axes of node `r`.
    pub(super) fn axes_of(&self, r: NodeRef) -> Vec<Axis> {
        let view = self.view_of(r);
        let mut out = Vec::with_capacity(view.groups.len());
        let mut pos = 0;
        for &g in &view.groups {
            let mut a = Axis {
                before: vec![],
                batch: false,
                after: vec![],
            };
            for p in pos..pos + g {
                match p.cmp(&view.batch_pos) {
                    std::cmp::Ordering::Less => a.before.push(p),
                    std::cmp::Ordering::Equal => a.batch = true,
                    std::cmp::Ordering::Greater if a.batch => a.after.push(p - 1),
                    std::cmp::Ordering::Greater => a.before.push(p - 1),
                }
            }
            out.push(a);
            pos += g;
        }
        out
    }

    /// The ONNX dims of node `r`, the batch axis as the folded value of `N·k`.
    pub(super) fn onnx_dims(&self, r: NodeRef) -> Vec<i64> {
        let dims = self.g.shape(r).dims().to_vec();
        self.axes_of(r)
            .iter()
            .map(|a| {
                let k: usize = a.before.iter().chain(&a.after).map(|&i| dims[i]).product();
                if a.batch {
                    batch_times(k as i64).unwrap_or(i64::MIN)
                } else {
                    k as i64
                }
            })
            .collect()
    }

    /// The per-sample axis of node `r` that ONNX axis `axis` (negative counts
    /// from the end) of node `n` names; the batch axis is refused (the op
    /// would mix samples).
    pub(super) fn per_sample_axis(&self, n: &NodeProto, r: NodeRef, axis: i64) -> Result<usize> {
        let axes = self.axes_of(r);
        let rank = axes.len() as i64;
        let a = if axis < 0 { axis + rank } else { axis };
        if !(0..rank).contains(&a) {
            return Err(self.err(n, format!("axis {axis} is out of range for rank {rank}")));
        }
        let ax = &axes[a as usize];
        if ax.batch {
            return Err(self.err(
                n,
                format!(
                    "{} along axis {axis}, which holds the batch (ONNX dims {}), would mix samples; not supported",
                    n.op_type,
                    self.show_dims(r)
                ),
            ));
        }
        Ok(ax.before[0])
    }

    /// Node `r`'s ONNX dims for messages: `[197, N, 768]`, `[N·12, 197, 64]`.
    pub(super) fn show_dims(&self, r: NodeRef) -> String {
        let parts: Vec<String> = self
            .onnx_dims(r)
            .iter()
            .map(|&d| match batch_factor(d) {
                Some(1) => "N".to_string(),
                Some(k) => format!("N·{k}"),
                None => d.to_string(),
            })
            .collect();
        format!("[{}]", parts.join(", "))
    }

    /// A copy of `n` whose axis attributes `names` are rewritten from ONNX
    /// axes of `x` to the axes a batch-first tensor of `x`'s per-sample shape
    /// would have (per-sample axis + 1), so a translator written for
    /// batch-first tensors computes the same thing on any layout. With
    /// `to_end`, every axis from the named one on must be a per-sample axis
    /// (LayerNormalization and opset < 13 Softmax work on them all).
    pub(super) fn with_batch_first_axes(
        &self,
        n: &NodeProto,
        x: NodeRef,
        names: &[&str],
        to_end: bool,
    ) -> Result<NodeProto> {
        let mut m = n.clone();
        let rank = self.axes_of(x).len() as i64;
        for a in m
            .attribute
            .iter_mut()
            .filter(|a| names.contains(&a.name.as_str()))
        {
            let map = |v: i64| -> Result<i64> {
                let per = self.per_sample_axis(n, x, v)?;
                if to_end {
                    let first = if v < 0 { v + rank } else { v };
                    for later in first..rank {
                        self.per_sample_axis(n, x, later)?;
                    }
                }
                Ok(per as i64 + 1)
            };
            if a.ints.is_empty() {
                a.i = map(a.i)?;
            } else {
                a.ints = a.ints.iter().map(|&v| map(v)).collect::<Result<_>>()?;
            }
        }
        Ok(m)
    }

    /// A node `name` computing `x` with its per-sample axes in `order`
    /// (a permutation, or the identity) and the ONNX axes `axes`.
    fn arrange(&mut self, name: &str, x: NodeRef, axes: &[Axis]) -> Result<NodeRef> {
        let dims = self.g.shape(x).dims().to_vec();
        let (order, _, view) = realise(axes, &dims);
        let r = self.g.add_as(name, Permute { perm: order }, &[x])?;
        self.g.set_view(r, Some(view))?;
        Ok(r)
    }

    /// `Transpose` of any layout: the batch axis moves with its ONNX axis.
    pub(super) fn transpose(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        let axes = self.axes_of(x);
        let rank = axes.len();
        let perm = Self::ints(n, "perm").unwrap_or_else(|| (0..rank as i64).rev().collect());
        let mut seen = vec![false; rank];
        let valid = perm.len() == rank
            && perm.iter().all(|&p| {
                (0..rank as i64).contains(&p) && !std::mem::replace(&mut seen[p as usize], true)
            });
        if !valid {
            return Err(self.err(
                n,
                format!("perm {perm:?} is not a permutation of {rank} axes"),
            ));
        }
        let out: Vec<Axis> = perm.iter().map(|&p| axes[p as usize].clone()).collect();
        self.arrange(name, x, &out)
    }

    /// `Squeeze` / `Unsqueeze` of any layout: size-1 per-sample axes come and go;
    /// squeezing the batch axis is refused.
    pub(super) fn squeeze(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        let op = n.op_type.as_str();
        let given = match self.opt_constant(n, 1)? {
            Some(c) => Some(c.ints()),
            None => Self::ints(n, "axes").filter(|v| !v.is_empty()),
        };
        let axes = self.axes_of(x);
        let dims = self.g.shape(x).dims().to_vec();
        let mut sized: Vec<(Axis, usize)> = axes
            .iter()
            .map(|a| {
                let d = a.before.iter().chain(&a.after).map(|&i| dims[i]).product();
                (a.clone(), d)
            })
            .collect();
        let mut new_dims = dims.clone();
        if op == "Unsqueeze" {
            let Some(given) = given else {
                return Err(self.err(n, "Unsqueeze without axes".into()));
            };
            let out_rank = sized.len() + given.len();
            let ax = crate::fold::unique_axes(&given, out_rank).map_err(|m| self.err(n, m))?;
            for a in ax {
                new_dims.push(1);
                sized.insert(a, (Axis::plain(new_dims.len() - 1), 1));
            }
        } else {
            let rank = sized.len();
            let drop: Vec<usize> = match given {
                Some(g) => crate::fold::unique_axes(&g, rank).map_err(|m| self.err(n, m))?,
                None => (0..rank)
                    .filter(|&i| !sized[i].0.batch && sized[i].1 == 1)
                    .collect(),
            };
            for &a in drop.iter().rev() {
                let (axis, d) = &sized[a];
                if axis.batch {
                    return Err(self.err(
                        n,
                        format!(
                            "squeezing axis {a}, which holds the batch (ONNX dims {}), is not supported",
                            self.show_dims(x)
                        ),
                    ));
                }
                if *d != 1 {
                    return Err(self.err(
                        n,
                        format!(
                            "cannot squeeze axis {a} of size {d} (ONNX dims {})",
                            self.show_dims(x)
                        ),
                    ));
                }
                sized.remove(a);
            }
        }
        let axes: Vec<Axis> = sized.into_iter().map(|(a, _)| a).collect();
        let (_, target, view) = realise(&axes, &new_dims);
        let target: Vec<isize> = target.iter().map(|&d| d as isize).collect();
        let r = self.g.add_as(name, Reshape::new(target), &[x])?;
        self.g.set_view(r, Some(view))?;
        Ok(r)
    }

    /// `Flatten` of any layout: a reshape to `(prod(dims[..axis]), prod(dims[axis..]))`.
    pub(super) fn flatten(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        let dims = self.onnx_dims(x);
        let rank = dims.len() as i64;
        let axis = Self::int(n, "axis").unwrap_or(1);
        let a = if axis < 0 { axis + rank } else { axis };
        if !(0..=rank).contains(&a) {
            return Err(self.err(n, format!("axis {axis} is out of range for rank {rank}")));
        }
        let product = |part: &[i64]| -> Result<i64> {
            let mut k = 1i64;
            let mut batch = false;
            for &d in part {
                let f = match batch_factor(d) {
                    Some(f) => {
                        batch = true;
                        f
                    }
                    None => d,
                };
                k = k
                    .checked_mul(f)
                    .ok_or_else(|| self.err(n, "the flattened size overflows".into()))?;
            }
            if batch {
                batch_times(k).ok_or_else(|| self.err(n, "the flattened size overflows".into()))
            } else {
                Ok(k)
            }
        };
        let target = [product(&dims[..a as usize])?, product(&dims[a as usize..])?];
        self.reshape_to(n, name, x, &target)
    }

    /// `Reshape` of any layout.
    pub(super) fn reshape(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        if Self::int(n, "allowzero") == Some(1) && self.constant(n, 1)?.ints().contains(&0) {
            return Err(self.err(
                n,
                "allowzero=1 with a 0 in the target gives an empty tensor; not supported".into(),
            ));
        }
        let target = self.constant(n, 1)?.ints();
        self.reshape_to(n, name, x, &target)
    }

    /// Reshapes `x` to the ONNX `target` (0 copies a dim, one -1 is inferred,
    /// the batch size or a multiple `N·k` as folded). The batch must stay
    /// within one target axis with the per-sample elements before it in the
    /// axes before (row-major order): then every sample keeps its own values
    /// and the reshape is per sample; otherwise it is refused.
    pub(super) fn reshape_to(
        &mut self,
        n: &NodeProto,
        name: &str,
        x: NodeRef,
        target: &[i64],
    ) -> Result<NodeRef> {
        let bad = |m: String| self.err(n, m);
        if target.is_empty() {
            return Err(bad("empty reshape target".into()));
        }
        let dims = self.g.shape(x).dims().to_vec();
        let view = self.view_of(x);
        let before: usize = dims[..view.batch_pos].iter().product();
        let after: usize = dims[view.batch_pos..].iter().product();
        let onnx = self.onnx_dims(x);
        // 0 copies the input's dim at the same position.
        let mut t: Vec<i64> = target
            .iter()
            .enumerate()
            .map(|(i, &d)| match d {
                0 => onnx.get(i).copied().ok_or_else(|| {
                    bad(format!(
                        "0 in reshape target {target:?} copies a dim the input lacks"
                    ))
                }),
                d => Ok(d),
            })
            .collect::<Result<_>>()?;
        if t.iter().filter(|&&d| d == -1).count() > 1 {
            return Err(bad(format!(
                "reshape target {target:?} infers more than one size"
            )));
        }
        if let Some(&d) = t.iter().find(|&&d| d < -1 && batch_factor(d).is_none()) {
            return Err(bad(format!(
                "reshape target {target:?} has a negative size {d}"
            )));
        }
        let batch_at: Vec<usize> = (0..t.len())
            .filter(|&i| batch_factor(t[i]).is_some())
            .collect();
        let overflow = || bad(format!("reshape target {target:?} overflows"));
        let known = product(t.iter().filter(|&&d| d != -1 && batch_factor(d).is_none()))
            .ok_or_else(overflow)?;
        let per_sample = (before * after) as i64;
        let no_fit = || {
            bad(format!(
                "reshape of {} to {target:?} does not keep each sample's values together (the batch would be split or interleaved); not supported",
                self.show_dims(x)
            ))
        };
        // The target axis holding the batch and its factor k (N·k elements).
        let (j, k) = match (batch_at.as_slice(), self.static_batch) {
            ([j], _) => {
                let k = batch_factor(t[*j]).expect("a batch entry");
                if let Some(i) = t.iter().position(|&d| d == -1) {
                    let rest = known
                        .checked_mul(k)
                        .filter(|&r| r > 0 && per_sample % r == 0);
                    t[i] = per_sample / rest.ok_or_else(no_fit)?;
                }
                (*j, k)
            }
            ([], None) => {
                // A dynamic batch hides in the inferred size.
                let i = t.iter().position(|&d| d == -1).ok_or_else(|| {
                    bad(format!(
                        "reshape target {target:?} fixes every size, so it would only fit one batch size; not supported"
                    ))
                })?;
                if known <= 0 || per_sample % known != 0 {
                    return Err(no_fit());
                }
                (i, per_sample / known)
            }
            ([], Some(s)) => {
                // The file fixes the batch size s: pick the axis that can hold
                // it, preferring the batch alone, then the batch leading it.
                let s = s.max(1);
                if let Some(i) = t.iter().position(|&d| d == -1) {
                    let total = per_sample.checked_mul(s).ok_or_else(overflow)?;
                    if known <= 0 || total % known != 0 {
                        return Err(no_fit());
                    }
                    t[i] = total / known;
                }
                let mut candidates: Vec<(u8, usize, i64)> = Vec::new();
                let mut prefix = 1i64;
                for (j, &d) in t.iter().enumerate() {
                    if prefix > 0 && before as i64 % prefix == 0 {
                        let outer = before as i64 / prefix;
                        let unit = outer.checked_mul(s).filter(|&u| u > 0);
                        if let Some(inner) = unit.filter(|u| d % u == 0).map(|u| d / u) {
                            let rest = product(&t[j + 1..]);
                            if rest.and_then(|r| r.checked_mul(inner)) == Some(after as i64) {
                                let rank = match (outer, inner) {
                                    (1, 1) => 0,
                                    (1, _) => 1,
                                    _ => 2,
                                };
                                candidates.push((rank, j, outer * inner));
                            }
                        }
                    }
                    prefix = prefix.saturating_mul(d);
                }
                // Stable: among equals, the first axis.
                candidates.sort_by_key(|c| c.0);
                let fits = candidates
                    .iter()
                    .find(|c| self.readers_accept(&n.output[0], c.1, t.len(), c.0 > 0));
                let &(_, j, k) = fits.or(candidates.first()).ok_or_else(no_fit)?;
                (j, k)
            }
            _ => {
                return Err(bad(format!(
                    "reshape target {target:?} names the batch size twice; not supported"
                )))
            }
        };
        let prefix = product(&t[..j]).ok_or_else(overflow)?;
        if prefix <= 0 || before as i64 % prefix != 0 {
            return Err(no_fit());
        }
        let outer = before as i64 / prefix;
        if k % outer != 0 {
            return Err(no_fit());
        }
        let inner = k / outer;
        let rest = product(&t[j + 1..]).ok_or_else(overflow)?;
        if rest.checked_mul(inner) != Some(after as i64) || t.contains(&0) {
            return Err(no_fit());
        }
        // New per-sample dims: the target with the batch axis's own factors.
        let mut new_dims: Vec<usize> = t[..j].iter().map(|&d| d as usize).collect();
        let mut axes: Vec<Axis> = (0..j).map(Axis::plain).collect();
        let mut batch_axis = Axis {
            before: vec![],
            batch: true,
            after: vec![],
        };
        if outer > 1 {
            batch_axis.before.push(new_dims.len());
            new_dims.push(outer as usize);
        }
        if inner > 1 {
            batch_axis.after.push(new_dims.len());
            new_dims.push(inner as usize);
        }
        axes.push(batch_axis);
        for &d in &t[j + 1..] {
            axes.push(Axis::plain(new_dims.len()));
            new_dims.push(d as usize);
        }
        let (_, per, view) = realise(&axes, &new_dims);
        let per: Vec<isize> = per.iter().map(|&d| d as isize).collect();
        let r = self.g.add_as(name, Reshape::new(per), &[x])?;
        self.g.set_view(r, Some(view))?;
        Ok(r)
    }

    /// `Shape` of an activation (or of a constant): its ONNX dims, the batch axis as the folded
    /// `N·k` (with `start` / `end`, opset 15).
    pub(super) fn shape_of(&mut self, n: &NodeProto) -> Result<()> {
        let dims = match n.input.first().and_then(|i| self.values.get(i)) {
            Some(Value::Const(c)) => c.dims.iter().map(|&d| d as i64).collect(),
            _ => {
                let r = self.node_input(n, 0)?;
                self.onnx_dims(r)
            }
        };
        let rank = dims.len() as i64;
        let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
        let start = clamp(Self::int(n, "start").unwrap_or(0));
        let end = clamp(Self::int(n, "end").unwrap_or(rank));
        let part = dims[start..end.max(start)].to_vec();
        self.values.insert(
            n.output[0].clone(),
            Value::Const(Const::i64s(vec![part.len()], part)),
        );
        Ok(())
    }

    /// A constant broadcasting against node `r`'s ONNX tensor, rewritten to
    /// broadcast against its per-sample value: it must be the same for every
    /// sample (size 1 on the batch axis).
    pub(super) fn constant_for_view(&self, n: &NodeProto, r: NodeRef, c: &Const) -> Result<Const> {
        let axes = self.axes_of(r);
        if c.dims.len() > axes.len() {
            return Err(self.err(
                n,
                format!(
                    "a constant of dims {:?} has more axes than the activation {}",
                    c.dims,
                    self.show_dims(r)
                ),
            ));
        }
        let padded: Vec<usize> = std::iter::repeat_n(1, axes.len() - c.dims.len())
            .chain(c.dims.iter().copied())
            .collect();
        let per = self.g.shape(r).dims().to_vec();
        let mut dims = Vec::new();
        for (a, &d) in axes.iter().zip(&padded) {
            if a.batch {
                let merged: Vec<usize> = a.before.iter().chain(&a.after).map(|&i| per[i]).collect();
                // A file with a static batch of 1 may merge the batch with
                // per-sample axes and broadcast a constant along all of them:
                // per sample, it runs along those axes.
                if self.static_batch == Some(1) && d > 1 && d == merged.iter().product::<usize>() {
                    dims.extend(merged);
                    continue;
                }
                if d != 1 {
                    return Err(self.err(
                        n,
                        format!(
                            "a constant of dims {:?} varies along the batch axis of {}; not supported",
                            c.dims,
                            self.show_dims(r)
                        ),
                    ));
                }
                dims.extend(std::iter::repeat_n(1, a.before.len() + a.after.len()));
            } else {
                dims.push(d);
            }
        }
        Ok(Const {
            dims,
            data: c.data.clone(),
        })
    }

    /// Runs a translator written for batch-first tensors on `x` of any
    /// layout: element-wise ops keep the view; ops along one axis get their
    /// axis attributes mapped to per-sample axes and keep the view; every
    /// other op needs batch-first inputs and refuses the rest by name.
    pub(super) fn translate_on_layout(
        &mut self,
        n: &NodeProto,
        name: &str,
        x: NodeRef,
        translate: super::Translator,
    ) -> Result<NodeRef> {
        let op = n.op_type.as_str();
        if matches!(
            op,
            "Transpose" | "Reshape" | "Squeeze" | "Unsqueeze" | "Flatten" | "Expand" | "Einsum"
        ) {
            return translate(self, n, name, x);
        }
        let nodes: Vec<NodeRef> = n
            .input
            .iter()
            .filter_map(|i| match self.values.get(i) {
                Some(Value::Node(r)) => Some(*r),
                _ => None,
            })
            .collect();
        if nodes.iter().all(|&r| self.batch_first(r)) {
            return translate(self, n, name, x);
        }
        let view = self.same_layout(n, x, &nodes)?;
        let with_axis = |default: i64| {
            let mut m = n.clone();
            if !m.attribute.iter().any(|a| a.name == "axis") {
                m.attribute.push(crate::proto::AttributeProto {
                    name: "axis".into(),
                    r#type: 2,
                    i: default,
                    ..Default::default()
                });
            }
            m
        };
        let m = match op {
            "Relu" | "Sigmoid" | "Tanh" | "HardSwish" | "Softplus" | "Abs" | "Neg" | "Sqrt"
            | "Reciprocal" | "Erf" | "Log" | "Softsign" | "Exp" | "Mish" | "LeakyRelu"
            | "HardSigmoid" | "Clip" | "Elu" | "Celu" | "Selu" | "Gelu" | "Pow" | "Shrink" => {
                n.clone()
            }
            "Softmax" | "LogSoftmax" => {
                let default = if self.opset >= 13 { -1 } else { 1 };
                self.with_batch_first_axes(&with_axis(default), x, &["axis"], self.opset < 13)?
            }
            "LayerNormalization" => {
                self.with_batch_first_axes(&with_axis(-1), x, &["axis"], true)?
            }
            "MatMul" | "Gemm" => {
                // Along the last axis; the rows may hold the batch.
                self.per_sample_axis(n, x, -1)?;
                n.clone()
            }
            "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceL2"
                if Self::int(n, "keepdims").unwrap_or(1) == 1 =>
            {
                self.reduce_with_batch_first_axes(n, x)?
            }
            "Slice" if self.opset >= 10 => self.slice_with_batch_first_axes(n, x)?,
            "Slice" => self.with_batch_first_axes(n, x, &["axes"], false)?,
            "Gather" if self.gathers_within_a_sample(n, x) => {
                return self.gather_within_a_sample(n, name, x);
            }
            "Gather" => {
                let m = self.with_batch_first_axes(&with_axis(0), x, &["axis"], false)?;
                let r = translate(self, &m, name, x)?;
                let axis = Self::int(n, "axis").unwrap_or(0);
                let axes = self.axes_of(x);
                let rank = axes.len() as i64;
                let a = (if axis < 0 { axis + rank } else { axis }) as usize;
                let mut keep = axes.clone();
                if self.g.shape(r).rank() + 1 == self.g.shape(x).rank() {
                    // A scalar index drops the axis: later per-sample axes move up.
                    let dropped = axes[a].before[0];
                    keep.remove(a);
                    for k in &mut keep {
                        for i in k.before.iter_mut().chain(k.after.iter_mut()) {
                            if *i > dropped {
                                *i -= 1;
                            }
                        }
                    }
                }
                let dims = self.g.shape(r).dims().to_vec();
                let (_, _, v) = realise(&keep, &dims);
                self.g.set_view(r, Some(v))?;
                return Ok(r);
            }
            _ => {
                return Err(self.err(
                    n,
                    format!(
                        "{op} on {}, whose batch axis is not first, is not supported (only ops that keep samples apart along per-sample axes are)",
                        self.show_dims(x)
                    ),
                ))
            }
        };
        let r = translate(self, &m, name, x)?;
        if self.g.shape(r).rank() != self.g.shape(x).rank() {
            return Err(self.err(
                n,
                format!(
                    "{op} on {} changes the rank; not supported when the batch axis is not first",
                    self.show_dims(x)
                ),
            ));
        }
        self.g.set_view(r, Some(view))?;
        Ok(r)
    }

    /// `Slice` (opset 10+, axes as input 3) with its axes mapped to the
    /// per-sample axes, the new axes stored as a constant of their own.
    fn slice_with_batch_first_axes(&mut self, n: &NodeProto, x: NodeRef) -> Result<NodeProto> {
        let starts = self.constant(n, 1)?.ints();
        let axes = match self.opt_constant(n, 3)? {
            Some(c) => c.ints(),
            None => (0..starts.len() as i64).collect(),
        };
        self.with_batch_first_axes_input(n, x, 3, &axes)
    }

    /// A copy of `n` whose input `slot` is a new constant: the ONNX `axes`
    /// of `x` mapped to batch-first axes (per-sample axis + 1).
    fn with_batch_first_axes_input(
        &mut self,
        n: &NodeProto,
        x: NodeRef,
        slot: usize,
        axes: &[i64],
    ) -> Result<NodeProto> {
        let mapped: Vec<i64> = axes
            .iter()
            .map(|&a| Ok(self.per_sample_axis(n, x, a)? as i64 + 1))
            .collect::<Result<_>>()?;
        let key = format!("{}::batch_first_axes", n.output[0]);
        self.values.insert(
            key.clone(),
            Value::Const(Const::i64s(vec![mapped.len()], mapped)),
        );
        let mut m = n.clone();
        while m.input.len() <= slot {
            m.input.push(String::new());
        }
        m.input[slot] = key;
        Ok(m)
    }

    /// Whether `Expand(constant, shape)` expands to a shape holding the batch size.
    pub(super) fn expands_to_batch(&self, n: &NodeProto) -> bool {
        matches!(
            n.input.get(1).and_then(|s| self.values.get(s)),
            Some(Value::Const(c)) if c.ints().iter().any(|&d| batch_factor(d).is_some())
        )
    }

    /// `Expand(constant, [N, ...])`: the constant, broadcast to the other
    /// dims, repeated for every sample (ViT's class token). The batch must be
    /// the first dim, alone, and the constant the same for every sample.
    pub(super) fn expand_to_batch(&mut self, n: &NodeProto, name: &str) -> Result<NodeRef> {
        let c = self.constant(n, 0)?;
        let shape = self.constant(n, 1)?.ints();
        let rank = shape.len().max(c.dims.len());
        let padded: Vec<usize> = std::iter::repeat_n(1, rank - c.dims.len())
            .chain(c.dims.iter().copied())
            .collect();
        let full: Vec<i64> = std::iter::repeat_n(1, rank - shape.len())
            .chain(shape.iter().copied())
            .collect();
        if batch_factor(full[0]) != Some(1)
            || padded[0] != 1
            || full[1..].iter().any(|&d| batch_factor(d).is_some())
        {
            return Err(self.err(
                n,
                format!(
                    "Expand of a constant of dims {:?} to {:?}: only to the batch size on the first axis is supported",
                    c.dims, shape
                ),
            ));
        }
        let mut target = vec![1i64];
        target.extend(&full[1..]);
        let one = Const {
            dims: padded.clone(),
            data: c.data.clone(),
        };
        let per = crate::fold::fold(
            "Expand",
            &[one, Const::i64s(vec![target.len()], target)],
            &|_| None,
            &|_| None,
        )
        .map_err(|m| self.err(n, m))?;
        let per_dims = per.dims[1..].to_vec();
        let batch = self.first_input.ok_or_else(|| {
            self.err(
                n,
                "the model has no input to take the batch size from".into(),
            )
        })?;
        let r = self.g.add_as(
            name,
            layerlens_core::ops::BatchConstant {
                shape: per_dims.clone(),
            },
            &[batch],
        )?;
        let value = Self::tensor(&Const {
            dims: per_dims,
            data: per.data,
        })?;
        self.weights.push((format!("{name}.value"), value));
        Ok(r)
    }

    /// `MatMul` of two activations (attention): equal layouts, the batch in
    /// neither of the two multiplied axes.
    pub(super) fn matmul_of_activations(
        &mut self,
        n: &NodeProto,
        name: &str,
        a: NodeRef,
    ) -> Result<NodeRef> {
        let b = self.node_input(n, 1)?;
        let view = self.same_layout(n, a, &[b])?;
        for r in [a, b] {
            for axis in [-2, -1] {
                self.per_sample_axis(n, r, axis)?;
            }
        }
        let r = self.g.add_as(name, layerlens_core::ops::MatMul, &[a, b])?;
        if !view.is_batch_first() && self.g.shape(r).rank() != self.g.shape(a).rank() {
            return Err(self.err(
                n,
                "MatMul whose operands differ in rank is only supported batch-first".into(),
            ));
        }
        self.g.set_view(r, Some(view))?;
        Ok(r)
    }

    /// `Split` of any layout along a per-sample axis; each part keeps the view.
    pub(super) fn split_on_layout(&mut self, n: &NodeProto) -> Result<()> {
        let x = self.node_input(n, 0)?;
        if self.batch_first(x) {
            return self.split(n);
        }
        let mut m = n.clone();
        if !m.attribute.iter().any(|a| a.name == "axis") {
            m.attribute.push(crate::proto::AttributeProto {
                name: "axis".into(),
                r#type: 2,
                i: 0,
                ..Default::default()
            });
        }
        let m = self.with_batch_first_axes(&m, x, &["axis"], false)?;
        self.split(&m)?;
        let view = self.view_of(x);
        for out in &n.output {
            if let Some(Value::Node(r)) = self.values.get(out).cloned() {
                self.g.set_view(r, Some(view.clone()))?;
            }
        }
        Ok(())
    }

    /// `Concat` of activations of one layout and of per-sample constants
    /// (size 1 on the batch axis, the same for every sample: ViT's class
    /// token as a static batch-1 export writes it), each repeated along the batch.
    pub(super) fn concat_any(&mut self, n: &NodeProto, name: &str) -> Result<NodeRef> {
        let inputs: Vec<Value> = n
            .input
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .map(|(i, s)| {
                self.values.get(s).cloned().ok_or_else(|| {
                    self.err(
                        n,
                        format!("input {i} ('{s}') is produced by no earlier node"),
                    )
                })
            })
            .collect::<Result<_>>()?;
        let Some(x) = inputs.iter().find_map(|v| match v {
            Value::Node(r) => Some(*r),
            Value::Const(_) => None,
        }) else {
            return Err(self.err(n, "Concat of constants only".into()));
        };
        let rank = self.axes_of(x).len();
        let mut refs = Vec::with_capacity(inputs.len());
        for (k, v) in inputs.iter().enumerate() {
            refs.push(match v {
                Value::Node(r) => *r,
                Value::Const(c) => {
                    if !self.batch_first(x) || c.dims.len() != rank || c.dims[0] != 1 {
                        return Err(self.err(
                            n,
                            format!(
                                "Concat of a constant of dims {:?} with {}: only a constant with a batch size of 1 beside batch-first activations is supported",
                                c.dims,
                                self.show_dims(x)
                            ),
                        ));
                    }
                    let part = self.fresh_name(&format!("{name}_constant{k}"));
                    let per = c.dims[1..].to_vec();
                    let r = self.g.add_as(
                        &part,
                        layerlens_core::ops::BatchConstant { shape: per.clone() },
                        &[x],
                    )?;
                    let value = Self::tensor(&Const {
                        dims: per,
                        data: c.data.clone(),
                    })?;
                    self.weights.push((format!("{part}.value"), value));
                    r
                }
            });
        }
        let m = if self.batch_first(x) {
            n.clone()
        } else {
            self.with_batch_first_axes(n, x, &["axis"], false)?
        };
        let view = self.same_layout(n, x, &refs)?;
        let axis =
            Self::int(&m, "axis").ok_or_else(|| self.err(n, "Concat without axis".into()))?;
        let r = self
            .g
            .add_as(name, layerlens_core::ops::Concat::new(axis as isize), &refs)?;
        self.g.set_view(r, Some(view))?;
        Ok(r)
    }

    /// Whether `Gather` picks from a 1-D tensor that merges a static batch of
    /// 1 with one per-sample axis (`(N·768)` from `Reshape(x, [-1])`), with
    /// indices led by the batch (`(1, 768, 1, 1)`) inside one sample: what
    /// torch's dynamo exporter writes for `as_strided`.
    fn gathers_within_a_sample(&self, n: &NodeProto, x: NodeRef) -> bool {
        let axes = self.axes_of(x);
        let inside = axes.len() == 1
            && axes[0].before.is_empty()
            && axes[0].after.len() == 1
            && self.static_batch == Some(1)
            && Self::int(n, "axis").unwrap_or(0) == 0;
        let len = self.g.shape(x).dims().first().copied().unwrap_or(0) as i64;
        inside
            && matches!(
                n.input.get(1).and_then(|i| self.values.get(i)),
                Some(Value::Const(c)) if c.dims.first() == Some(&1)
                    && c.ints().iter().all(|&i| (0..len).contains(&i))
            )
    }

    /// The `Gather` of [`gathers_within_a_sample`](Self::gathers_within_a_sample):
    /// per sample, a gather along its one axis and a reshape to the indices'
    /// dims after the batch; the result is batch-first.
    fn gather_within_a_sample(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        let idx = self.constant(n, 1)?;
        let flat = idx.ints();
        let key = format!("{}::per_sample_indices", n.output[0]);
        self.values.insert(
            key.clone(),
            Value::Const(Const::i64s(vec![flat.len()], flat)),
        );
        let mut m = n.clone();
        m.input[1] = key;
        m.attribute.retain(|a| a.name != "axis");
        m.attribute.push(crate::proto::AttributeProto {
            name: "axis".into(),
            r#type: 2,
            i: 1,
            ..Default::default()
        });
        let picked_name = self.fresh_name(&format!("{name}_picked"));
        let picked = self.gather(&m, &picked_name, x)?;
        let target: Vec<isize> = idx.dims[1..].iter().map(|&d| d as isize).collect();
        self.g.add_as(name, Reshape::new(target), &[picked])
    }

    /// Whether every node reading `tensor` could take its batch on ONNX axis
    /// `batch` of `rank` (`merged`: with other axes): the ops that work
    /// along given axes must find the batch elsewhere, the ops that need
    /// batch-first tensors must get one.
    fn readers_accept(&self, tensor: &str, batch: usize, rank: usize, merged: bool) -> bool {
        let norm = |a: i64| if a < 0 { a + rank as i64 } else { a };
        let b = batch as i64;
        self.consumers.get(tensor).into_iter().flatten().all(|&i| {
            let c = &self.nodes[i];
            let int = |name: &str| Self::int(c, name);
            match c.op_type.as_str() {
                "Gemm" => b != 1,
                "MatMul" => {
                    let both = c
                        .input
                        .iter()
                        .all(|s| matches!(self.values.get(s), Some(Value::Node(_)) | None));
                    b != rank as i64 - 1 && !(both && b == rank as i64 - 2)
                }
                "Softmax" | "LogSoftmax" | "Hardmax" => {
                    let axis = norm(int("axis").unwrap_or(if self.opset >= 13 { -1 } else { 1 }));
                    if self.opset >= 13 {
                        b != axis
                    } else {
                        b < axis
                    }
                }
                "LayerNormalization" => b < norm(int("axis").unwrap_or(-1)),
                "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" => {
                    Self::ints(c, "axes").is_some_and(|ax| ax.iter().all(|&a| norm(a) != b))
                }
                "Conv"
                | "ConvTranspose"
                | "MaxPool"
                | "AveragePool"
                | "GlobalAveragePool"
                | "GlobalMaxPool"
                | "BatchNormalization"
                | "Resize"
                | "Upsample"
                | "Pad"
                | "LRN"
                | "PRelu"
                | "InstanceNormalization" => b == 0 && !merged,
                _ => true,
            }
        })
    }

    /// A reduction keeping its axes, with its axes (attribute or input 1)
    /// mapped to per-sample axes; no axes at all is left to the translator.
    fn reduce_with_batch_first_axes(&mut self, n: &NodeProto, x: NodeRef) -> Result<NodeProto> {
        if let Some(c) = self.opt_constant(n, 1)? {
            return self.with_batch_first_axes_input(n, x, 1, &c.ints());
        }
        self.with_batch_first_axes(n, x, &["axes"], false)
    }

    /// `Expand` of an activation: `x · ones`, the ones shaped to reach the
    /// target where `x` has size 1 (exact: `· 1` keeps every value, -0 and
    /// NaN included). The target may not add axes before the batch, nor grow
    /// the batch axis.
    pub(super) fn expand_activation(
        &mut self,
        n: &NodeProto,
        name: &str,
        x: NodeRef,
    ) -> Result<NodeRef> {
        let target = self.constant(n, 1)?.ints();
        let have = self.onnx_dims(x);
        if target.len() > have.len() {
            return Err(self.err(
                n,
                format!(
                    "Expand of {} to {target:?} adds axes before the batch; not supported",
                    self.show_dims(x)
                ),
            ));
        }
        let padded: Vec<i64> = std::iter::repeat_n(1, have.len() - target.len())
            .chain(target.iter().copied())
            .collect();
        let mut ones = Vec::with_capacity(have.len());
        for (i, (&h, &t)) in have.iter().zip(&padded).enumerate() {
            let batch = batch_factor(h).is_some();
            ones.push(match (batch, h, t) {
                // A file with a static batch of 1 writes the batch axis's size itself.
                (true, _, t)
                    if t == 1
                        || t == h
                        || (self.static_batch == Some(1) && Some(t) == batch_factor(h)) =>
                {
                    1
                }
                (true, _, _) => {
                    return Err(self.err(
                        n,
                        format!(
                            "Expand of {} to {target:?} changes the batch axis {i}",
                            self.show_dims(x)
                        ),
                    ))
                }
                (false, h, t) if t == 1 || t == h => 1,
                (false, 1, t) if t > 1 => t as usize,
                _ => {
                    return Err(self.err(
                        n,
                        format!("cannot expand {} to {target:?}", self.show_dims(x)),
                    ))
                }
            });
        }
        let total: usize = ones.iter().product();
        if total > 1 << 26 {
            return Err(self.err(n, format!("Expand to {target:?} is too large")));
        }
        let c = Const {
            dims: ones,
            data: crate::tensor::Data::F32(vec![1.0; total]),
        };
        self.binary_of(
            n,
            name,
            layerlens_core::ops::BinaryKind::Mul,
            &Value::Node(x),
            &Value::Const(c),
        )
    }

    /// `Einsum` of two activations that is a batched matrix product
    /// (MaxViT's attention: `BGHID,BGHJD->BGHIJ` and `BGHIJ,BGHJD->BGHID`):
    /// the same leading letters on both operands and the result, one letter
    /// contracted among the last two of each; the operands' last two axes
    /// are swapped where needed and the product is a [`MatMul`]. Anything
    /// else is refused with the equation.
    pub(super) fn einsum(&mut self, n: &NodeProto, name: &str, a: NodeRef) -> Result<NodeRef> {
        let eq = attr(n, "equation")
            .map(|e| String::from_utf8_lossy(&e.s).replace(' ', ""))
            .unwrap_or_default();
        let refuse = || {
            self.err(
                n,
                format!("Einsum '{eq}' is not supported (only a batched product of two activations, e.g. '...ij,...jk->...ik')"),
            )
        };
        let (lhs, out) = eq.split_once("->").ok_or_else(refuse)?;
        let ops: Vec<Vec<char>> = lhs.split(',').map(|t| t.chars().collect()).collect();
        let out: Vec<char> = out.chars().collect();
        if ops.len() != 2 || n.input.len() != 2 || eq.contains('.') {
            return Err(refuse());
        }
        let (ea, eb) = (&ops[0], &ops[1]);
        let r = ea.len();
        if r < 2
            || eb.len() != r
            || out.len() != r
            || ea[..r - 2] != eb[..r - 2]
            || out[..r - 2] != ea[..r - 2]
        {
            return Err(refuse());
        }
        let (a2, b2, o2) = (&ea[r - 2..], &eb[r - 2..], &out[r - 2..]);
        let Some(&c) = a2.iter().find(|ch| b2.contains(ch) && !o2.contains(ch)) else {
            return Err(refuse());
        };
        let free_a = *a2.iter().find(|&&ch| ch != c).ok_or_else(refuse)?;
        let free_b = *b2.iter().find(|&&ch| ch != c).ok_or_else(refuse)?;
        if o2 != [free_a, free_b] && o2 != [free_b, free_a] {
            return Err(refuse());
        }
        let b = self.node_input(n, 1)?;
        for x in [a, b] {
            for axis in [-2, -1] {
                self.per_sample_axis(n, x, axis)?;
            }
        }
        let view = self.same_layout(n, a, &[b])?;
        let swap_last = |im: &mut Self, x: NodeRef, what: &str| -> Result<NodeRef> {
            let k = im.g.shape(x).rank();
            let mut perm: Vec<usize> = (0..k).collect();
            perm.swap(k - 2, k - 1);
            let r = im.g.add_as(
                &im.fresh_name(&format!("{name}_{what}")),
                Permute { perm },
                &[x],
            )?;
            im.g.set_view(r, Some(view.clone()))?;
            Ok(r)
        };
        // A as (.., free_a, c), B as (.., c, free_b).
        let a = if a2[1] == c {
            a
        } else {
            swap_last(self, a, "lhs_t")?
        };
        let b = if b2[0] == c {
            b
        } else {
            swap_last(self, b, "rhs_t")?
        };
        let product = |im: &mut Self, nm: &str| -> Result<NodeRef> {
            let r = im.g.add_as(nm, layerlens_core::ops::MatMul, &[a, b])?;
            im.g.set_view(r, Some(view.clone()))?;
            Ok(r)
        };
        if o2 == [free_a, free_b] {
            product(self, name)
        } else {
            let p = product(self, &self.fresh_name(&format!("{name}_product")))?;
            let k = self.g.shape(p).rank();
            let mut perm: Vec<usize> = (0..k).collect();
            perm.swap(k - 2, k - 1);
            let r = self.g.add_as(name, Permute { perm }, &[p])?;
            self.g.set_view(r, Some(view))?;
            Ok(r)
        }
    }
}
