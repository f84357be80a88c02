//! Ops that move values without arithmetic on batch-first tensors or along
//! per-sample axes: `Pad`, `Slice`, `Split`, `Gather` (`Transpose`,
//! `Reshape`, `Squeeze` / `Unsqueeze`, `Flatten` of any layout are in `layout.rs`).

use super::{attr, sanitize, Importer, Value};
use crate::proto::NodeProto;
use layerlens_core::builder::NodeRef;
use layerlens_core::ops::{Concat, Pad2d, PadMode, Permute, Reshape, Slice};
use layerlens_core::Result;

impl Importer<'_> {
    /// `Pad` (constant or edge) of up to two per-sample axes, on any axes
    /// (NHWC's H and W as well as NCHW's; opset 18's `axes` input too): the
    /// padded axes are moved last, merged with the rest into one leading
    /// axis, padded as a 2-D map and moved back. Negative pads (cropping) and
    /// padding the batch are refused.
    pub(super) fn pad(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        let mode = attr(n, "mode")
            .map(|a| String::from_utf8_lossy(&a.s).to_string())
            .unwrap_or_else(|| "constant".into());
        let (pads, value) = if self.opset >= 11 {
            let v = self.opt_scalar(n, 2, "constant_value")?.unwrap_or(0.0);
            (self.constant(n, 1)?.ints(), v)
        } else {
            (
                Self::ints(n, "pads").unwrap_or_default(),
                Self::float(n, "value").unwrap_or(0.0),
            )
        };
        let dims = self.g.shape(x).dims().to_vec();
        let rank = dims.len() + 1;
        let axes: Vec<usize> = match self.opt_constant(n, 3)? {
            Some(c) => c
                .ints()
                .iter()
                .map(|&a| {
                    let r = rank as i64;
                    let v = if a < 0 { a + r } else { a };
                    (0..r).contains(&v).then_some(v as usize).ok_or_else(|| {
                        self.err(n, format!("axis {a} is out of range for rank {rank}"))
                    })
                })
                .collect::<Result<_>>()?,
            None => (0..rank).collect(),
        };
        if pads.len() != 2 * axes.len() {
            return Err(self.err(
                n,
                format!(
                    "pads {pads:?} do not give a begin and an end for each of {} axes",
                    axes.len()
                ),
            ));
        }
        if pads.iter().any(|&p| p < 0) {
            return Err(self.err(
                n,
                format!("pads {pads:?}: negative pads (cropping) are not supported"),
            ));
        }
        let mode = match mode.as_str() {
            "constant" => PadMode::Constant(value),
            "edge" => PadMode::Edge,
            other => {
                return Err(self.err(
                    n,
                    format!("pad mode '{other}' is not supported (constant, edge are)"),
                ))
            }
        };
        // (per-sample axis, begin, end) of each padded axis, in axis order.
        let mut padded: Vec<(usize, usize, usize)> = Vec::new();
        for (k, &a) in axes.iter().enumerate() {
            let (b, e) = (pads[k] as usize, pads[k + axes.len()] as usize);
            if b + e == 0 {
                continue;
            }
            if a == 0 {
                return Err(self.err(
                    n,
                    format!("pads {pads:?} pad the batch axis; not supported"),
                ));
            }
            padded.push((a - 1, b, e));
        }
        padded.sort_unstable();
        if padded.len() > 2 {
            return Err(self.err(
                n,
                format!("pads {pads:?}: padding more than two axes is not supported"),
            ));
        }
        if padded.is_empty() {
            let same: Vec<isize> = dims.iter().map(|&d| d as isize).collect();
            return self.g.add_as(name, Reshape::new(same), &[x]);
        }
        let [(ha, t, b), (wa, l, r)] = match padded.as_slice() {
            [one] => [(usize::MAX, 0, 0), *one],
            [a, b] => [*a, *b],
            _ => unreachable!("one or two padded axes"),
        };
        let pad = Pad2d {
            pads: [t, b, l, r],
            mode,
        };
        let is_nchw = dims.len() == 3 && (ha == 1 || ha == usize::MAX) && wa == 2;
        if is_nchw && ha == 1 {
            return self.g.add_as(name, pad, &[x]);
        }
        // Move the padded axes last, merge the others, pad, and undo it.
        let moved: Vec<usize> = [ha, wa].into_iter().filter(|&a| a != usize::MAX).collect();
        let others: Vec<usize> = (0..dims.len()).filter(|a| !moved.contains(a)).collect();
        let perm: Vec<usize> = others.iter().chain(&moved).copied().collect();
        let identity = perm.iter().enumerate().all(|(i, &p)| i == p);
        let mut cur = x;
        if !identity {
            cur = self.g.add_as(
                &self.fresh_name(&format!("{name}_moved")),
                Permute { perm: perm.clone() },
                &[cur],
            )?;
        }
        let lead: usize = others.iter().map(|&a| dims[a]).product();
        let h = if ha == usize::MAX { 1 } else { dims[ha] };
        let w = dims[wa];
        cur = self.g.add_as(
            &self.fresh_name(&format!("{name}_as_map")),
            Reshape::new(vec![lead as isize, h as isize, w as isize]),
            &[cur],
        )?;
        let out_h = h + t + b;
        let out_w = w + l + r;
        cur = self
            .g
            .add_as(&self.fresh_name(&format!("{name}_map")), pad, &[cur])?;
        let mut back: Vec<isize> = others.iter().map(|&a| dims[a] as isize).collect();
        if ha != usize::MAX {
            back.push(out_h as isize);
        }
        back.push(out_w as isize);
        if identity {
            return self.g.add_as(name, Reshape::new(back), &[cur]);
        }
        cur = self.g.add_as(
            &self.fresh_name(&format!("{name}_unmerged")),
            Reshape::new(back),
            &[cur],
        )?;
        let mut inverse = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        self.g.add_as(name, Permute { perm: inverse }, &[cur])
    }

    /// `Slice`.
    pub(super) fn slice(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        let rank = self.g.shape(x).rank() as i64 + 1;
        let (starts, ends, axes, steps) = if self.opset < 10 {
            (
                Self::ints(n, "starts"),
                Self::ints(n, "ends"),
                Self::ints(n, "axes"),
                None,
            )
        } else {
            let get = |i: usize| -> Result<Option<Vec<i64>>> {
                Ok(self.opt_constant(n, i)?.map(|c| c.ints()))
            };
            (get(1)?, get(2)?, get(3)?, get(4)?)
        };
        let (Some(starts), Some(ends)) = (starts, ends) else {
            return Err(self.err(n, "Slice needs constant starts and ends".into()));
        };
        let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
        let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
        if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
            return Err(self.err(n, format!("starts {starts:?}, ends {ends:?}, axes {axes:?} and steps {steps:?} differ in length")));
        }
        let mut slice = Slice {
            axes: vec![],
            starts: vec![],
            ends: vec![],
            steps: vec![],
        };
        for i in 0..axes.len() {
            let a = if axes[i] < 0 { axes[i] + rank } else { axes[i] };
            if !(0..rank).contains(&a) {
                return Err(self.err(
                    n,
                    format!("axis {} is out of range for rank {rank}", axes[i]),
                ));
            }
            if a == 0 {
                // `x[0:]`-style full slices of the batch axis are common in exports.
                if starts[i] == 0 && ends[i] >= i32::MAX as i64 && steps[i] == 1 {
                    continue;
                }
                return Err(self.err(
                    n,
                    format!(
                        "Slice of the batch axis (starts {}, ends {}, step {}) is not supported",
                        starts[i], ends[i], steps[i]
                    ),
                ));
            }
            slice.axes.push((a - 1) as usize);
            slice.starts.push(starts[i]);
            slice.ends.push(ends[i]);
            slice.steps.push(steps[i]);
        }
        self.g.add_as(name, slice, &[x])
    }

    /// `Gather` of an activation with constant indices along a non-batch axis:
    /// a scalar index picks one slice and drops the axis (`x[:, 0]`); a 1-D
    /// list keeps the axis, one Slice per run of consecutive indices,
    /// concatenated when there are several.
    pub(super) fn gather(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        let idx = self
            .constant(n, 1)
            .map_err(|_| self.err(n, "Gather of an activation needs constant indices".into()))?;
        let dims = self.g.shape(x).dims().to_vec();
        let rank = dims.len() as i64 + 1;
        let axis = Self::int(n, "axis").unwrap_or(0);
        let a = if axis < 0 { axis + rank } else { axis };
        if !(0..rank).contains(&a) {
            return Err(self.err(n, format!("axis {axis} is out of range for rank {rank}")));
        }
        if a == 0 {
            return Err(self.err(n, "Gather on the batch axis is not supported".into()));
        }
        let ax = (a - 1) as usize;
        let len = dims[ax] as i64;
        if idx.dims.len() > 1 {
            return Err(self.err(n, format!("Gather of an activation with indices of dims {:?}: only a scalar or a 1-D list is supported", idx.dims)));
        }
        let list: Vec<i64> = idx
            .ints()
            .iter()
            .map(|&i| {
                let j = if i < 0 { i + len } else { i };
                if (0..len).contains(&j) {
                    Ok(j)
                } else {
                    Err(self.err(n, format!("index {i} is out of range for an axis of {len}")))
                }
            })
            .collect::<Result<_>>()?;
        if list.is_empty() {
            return Err(self.err(
                n,
                "Gather with no indices gives an empty tensor; not supported".into(),
            ));
        }
        let mut runs: Vec<(i64, i64)> = Vec::new();
        for &j in &list {
            match runs.last_mut() {
                Some((_, end)) if *end == j => *end += 1,
                _ => runs.push((j, j + 1)),
            }
        }
        let scalar = idx.dims.is_empty();
        let slice = |(s, e): (i64, i64)| Slice {
            axes: vec![ax],
            starts: vec![s],
            ends: vec![e],
            steps: vec![1],
        };
        if runs.len() == 1 && !scalar {
            return self.g.add_as(name, slice(runs[0]), &[x]);
        }
        if scalar {
            let picked = self
                .g
                .add_as(&format!("{name}_slice"), slice(runs[0]), &[x])?;
            let target: Vec<isize> = dims
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != ax)
                .map(|(_, &d)| d as isize)
                .collect();
            return self.g.add_as(name, Reshape::new(target), &[picked]);
        }
        let parts = runs
            .iter()
            .enumerate()
            .map(|(k, &r)| self.g.add_as(&format!("{name}_part{k}"), slice(r), &[x]))
            .collect::<Result<Vec<_>>>()?;
        self.g.add_as(name, Concat::new(a as isize), &parts)
    }

    /// `Split` of an activation along a non-batch axis: one Slice node per
    /// output, named after the output tensor. Sizes from the `split` input
    /// (attribute before opset 13), else `num_outputs` (opset 18: chunks of
    /// ceil(len / n), the last smaller), else equal parts of the outputs' count.
    pub(super) fn split(&mut self, n: &NodeProto) -> Result<()> {
        let x = self.node_input(n, 0)?;
        let shape = self.g.shape(x).clone();
        let rank = shape.rank() as i64 + 1;
        let axis = Self::int(n, "axis").unwrap_or(0);
        let a = if axis < 0 { axis + rank } else { axis };
        if !(0..rank).contains(&a) {
            return Err(self.err(n, format!("axis {axis} is out of range for rank {rank}")));
        }
        if a == 0 {
            return Err(self.err(n, "Split of the batch axis is not supported".into()));
        }
        let len = shape.dims()[(a - 1) as usize];
        let outputs = n.output.len();
        let given = if self.opset < 13 {
            Self::ints(n, "split").filter(|v| !v.is_empty())
        } else {
            self.opt_constant(n, 1)?.map(|c| c.ints())
        };
        let sizes: Vec<usize> = match (given, Self::int(n, "num_outputs")) {
            (Some(v), _) => {
                if v.len() != outputs || v.iter().any(|&s| s < 0) {
                    return Err(self.err(n, format!("split {v:?} does not give one non-negative size per output ({outputs})")));
                }
                v.iter().map(|&s| s as usize).collect()
            }
            (None, Some(k)) if self.opset >= 18 => {
                if k < 1 || k as usize != outputs {
                    return Err(self.err(n, format!("num_outputs {k} but {outputs} outputs")));
                }
                let chunk = len.div_ceil(outputs);
                (0..outputs)
                    .map(|i| chunk.min(len.saturating_sub(i * chunk)))
                    .collect()
            }
            (None, _) => {
                if outputs == 0 || !len.is_multiple_of(outputs) {
                    return Err(self.err(
                        n,
                        format!("an axis of {len} does not split into {outputs} equal parts"),
                    ));
                }
                vec![len / outputs; outputs]
            }
        };
        if sizes.iter().sum::<usize>() != len || sizes.contains(&0) {
            return Err(self.err(
                n,
                format!(
                    "split sizes {sizes:?} must be positive and add up to the axis length {len}"
                ),
            ));
        }
        let mut start = 0;
        for (out, size) in n.output.iter().zip(sizes) {
            let base = sanitize(out);
            let mut name = base.clone();
            let mut k = 1;
            while self.g.get(&name).is_ok() {
                name = format!("{base}_{k}");
                k += 1;
            }
            let slice = Slice {
                axes: vec![(a - 1) as usize],
                starts: vec![start as i64],
                ends: vec![(start + size) as i64],
                steps: vec![1],
            };
            let r = self.g.add_as(&name, slice, &[x])?;
            self.values.insert(out.clone(), Value::Node(r));
            start += size;
        }
        Ok(())
    }
}
