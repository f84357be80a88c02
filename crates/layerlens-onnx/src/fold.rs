//! Folding of ONNX ops whose inputs are all known at import (the shape
//! arithmetic exporters emit around `Reshape`).

#[cfg(test)]
use crate::tensor::BATCH;
use crate::tensor::{batch_factor, batch_times, Const, Data, MOST_NEGATIVE};

/// Whether an integer constant holds the batch size or a multiple of it.
fn holds_batch(c: &Const) -> bool {
    matches!(&c.data, Data::I64(v) if v.iter().any(|&x| batch_factor(x).is_some()))
}

fn axis(a: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let x = if a < 0 { a + r } else { a };
    if (0..r).contains(&x) {
        Ok(x as usize)
    } else {
        Err(format!("axis {a} out of range for rank {rank}"))
    }
}

/// Squeeze / Unsqueeze axes: each in range for `rank` (negative counts from
/// the end), none twice; sorted.
pub(crate) fn unique_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, String> {
    let mut ax: Vec<usize> = axes
        .iter()
        .map(|&a| axis(a, rank))
        .collect::<Result<_, _>>()?;
    ax.sort_unstable();
    if ax.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("axes {axes:?} name an axis twice"));
    }
    Ok(ax)
}

/// `dims` with a 1 inserted at each of the sorted, unique `axes` of the result.
pub(crate) fn unsqueeze(dims: &[usize], axes: &[usize]) -> Vec<usize> {
    let mut out = dims.to_vec();
    for &a in axes {
        out.insert(a, 1);
    }
    out
}

/// `dims` without the sorted, unique `axes`, each of which must be a 1.
pub(crate) fn squeeze(dims: &[usize], axes: &[usize]) -> Result<Vec<usize>, String> {
    if let Some(&a) = axes.iter().find(|&&a| dims[a] != 1) {
        return Err(format!(
            "cannot squeeze axis {a} of size {} (dims {dims:?})",
            dims[a]
        ));
    }
    Ok(dims
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &d)| d)
        .collect())
}

/// Folds `op` over constant inputs, or says why it cannot.
pub(crate) fn fold(
    op: &str,
    inputs: &[Const],
    attr_ints: &dyn Fn(&str) -> Option<Vec<i64>>,
    attr_int: &dyn Fn(&str) -> Option<i64>,
) -> Result<Const, String> {
    let need = |k: usize| {
        if inputs.len() < k {
            Err(format!("needs {k} inputs, has {}", inputs.len()))
        } else {
            Ok(())
        }
    };
    need(1)?;
    match op {
        "Cast" if holds_batch(&inputs[0]) && matches!(attr_int("to"), Some(1 | 10 | 11 | 16)) => {
            Err("Cast of the batch size to a float type is not folded".into())
        }
        "Identity" | "Cast" => Ok(match (op, attr_int("to")) {
            ("Cast", Some(1)) | ("Cast", Some(11)) => Const {
                dims: inputs[0].dims.clone(),
                data: Data::F32(inputs[0].floats()),
            },
            ("Cast", Some(_)) => Const::i64s(inputs[0].dims.clone(), inputs[0].ints()),
            _ => inputs[0].clone(),
        }),
        "Gather" => {
            need(2)?;
            let (data, idx) = (&inputs[0], &inputs[1]);
            let rank = data.dims.len();
            if rank == 0 {
                return Err("Gather of a scalar".into());
            }
            let a = axis(attr_int("axis").unwrap_or(0), rank)?;
            let n = data.dims[a] as i64;
            let picks: Vec<usize> = idx
                .ints()
                .iter()
                .map(|&i| {
                    let j = if i < 0 { i + n } else { i };
                    if (0..n).contains(&j) {
                        Ok(j as usize)
                    } else {
                        Err(format!("index {i} out of range {n}"))
                    }
                })
                .collect::<Result<_, String>>()?;
            let mut dims = data.dims[..a].to_vec();
            dims.extend(&idx.dims);
            dims.extend(&data.dims[a + 1..]);
            let outer: usize = data.dims[..a].iter().product();
            let inner: usize = data.dims[a + 1..].iter().product();
            let total = outer * picks.len() * inner;
            if total > MAX_FOLDED_ELEMENTS {
                return Err("Gather result too large to fold".into());
            }
            let index = |flat: usize| {
                let (o, rest) = (flat / (picks.len() * inner), flat % (picks.len() * inner));
                let (p, i) = (rest / inner, rest % inner);
                (o * data.dims[a] + picks[p]) * inner + i
            };
            Ok(Const {
                dims,
                data: gather_data(&data.data, total, index),
            })
        }
        "GatherND" => {
            need(2)?;
            let (data, idx) = (&inputs[0], &inputs[1]);
            if attr_int("batch_dims").unwrap_or(0) != 0 {
                return Err("GatherND with batch_dims is not folded".into());
            }
            let k = *idx
                .dims
                .last()
                .ok_or("GatherND indices must have a last axis")?;
            if k == 0 || k > data.dims.len() {
                return Err(format!(
                    "GatherND indices of dims {:?} do not fit data of dims {:?}",
                    idx.dims, data.dims
                ));
            }
            let slice: usize = data.dims[k..].iter().product();
            let offsets = nd_offsets("GatherND", &data.dims, &idx.ints(), k)?;
            let mut dims = idx.dims[..idx.dims.len() - 1].to_vec();
            dims.extend(&data.dims[k..]);
            let total = offsets.len() * slice;
            Ok(Const {
                dims,
                data: gather_data(&data.data, total, |f| {
                    offsets[f / slice.max(1)] + f % slice.max(1)
                }),
            })
        }
        "Slice" => {
            let data = &inputs[0];
            let rank = data.dims.len();
            let pick =
                |i: usize, name: &str| inputs.get(i).map(|c| c.ints()).or_else(|| attr_ints(name));
            let starts = pick(1, "starts").ok_or("Slice without starts")?;
            let ends = pick(2, "ends").ok_or("Slice without ends")?;
            let axes = pick(3, "axes").unwrap_or_else(|| (0..starts.len() as i64).collect());
            let steps = inputs
                .get(4)
                .map(|c| c.ints())
                .unwrap_or_else(|| vec![1; starts.len()]);
            if [ends.len(), axes.len(), steps.len()]
                .iter()
                .any(|&l| l != starts.len())
            {
                return Err("Slice starts, ends, axes and steps differ in length".into());
            }
            if [&starts, &ends, &steps]
                .iter()
                .any(|v| v.iter().any(|&x| batch_factor(x).is_some()))
            {
                return Err("Slice of a constant at the batch size is not folded".into());
            }
            // Per axis: the picked indices, as ONNX clamps them.
            let mut picked: Vec<Vec<usize>> = data.dims.iter().map(|&d| (0..d).collect()).collect();
            let mut seen = vec![false; rank];
            for k in 0..starts.len() {
                let a = axis(axes[k], rank)?;
                if std::mem::replace(&mut seen[a], true) {
                    return Err(format!("Slice names axis {} twice", axes[k]));
                }
                let d = data.dims[a] as i64;
                let step = steps[k];
                if step == 0 {
                    return Err("Slice with a step of 0".into());
                }
                let norm = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
                let (s, e) = (norm(starts[k]), norm(ends[k]));
                let (s, e) = if step > 0 {
                    (s.clamp(0, d), e.clamp(0, d))
                } else {
                    (s.clamp(0, d - 1), e.clamp(-1, d - 1))
                };
                let mut idx = Vec::new();
                let mut i = s;
                while (step > 0 && i < e) || (step < 0 && i > e) {
                    idx.push(i as usize);
                    i = match i.checked_add(step) {
                        Some(v) => v,
                        None => break,
                    };
                }
                picked[a] = idx;
            }
            let out_dims: Vec<usize> = picked.iter().map(Vec::len).collect();
            let n: usize = out_dims.iter().product();
            let st = strides(&data.dims);
            let out_st = strides(&out_dims);
            let index = |flat: usize| {
                (0..rank)
                    .map(|a| picked[a][(flat / out_st[a]) % out_dims[a].max(1)] * st[a])
                    .sum()
            };
            Ok(Const {
                dims: out_dims.clone(),
                data: gather_data(&data.data, n, index),
            })
        }
        "Concat" => {
            let rank = inputs[0].dims.len();
            if rank == 0 || inputs.iter().any(|c| c.dims.len() != rank) {
                return Err("Concat of constants of different or zero ranks".into());
            }
            let a = axis(attr_int("axis").unwrap_or(0), rank)?;
            let fits = inputs
                .iter()
                .all(|c| (0..rank).all(|i| i == a || c.dims[i] == inputs[0].dims[i]));
            if !fits {
                return Err(format!(
                    "Concat of constants whose dims differ off axis {a}: {:?}",
                    inputs.iter().map(|c| c.dims.clone()).collect::<Vec<_>>()
                ));
            }
            let mut dims = inputs[0].dims.clone();
            dims[a] = inputs.iter().map(|c| c.dims[a]).sum();
            // Blocks of `inner` values per input, `outer` times.
            let outer: usize = dims[..a].iter().product();
            let inner = |c: &Const| c.dims[a..].iter().product::<usize>();
            // Integers stay integers (shapes); anything else is concatenated as
            // floats (Resize scales), never truncated.
            if inputs.iter().all(|c| matches!(c.data, Data::I64(_))) {
                let parts: Vec<Vec<i64>> = inputs.iter().map(|c| c.ints()).collect();
                let mut v = Vec::new();
                for o in 0..outer {
                    for (c, p) in inputs.iter().zip(&parts) {
                        let k = inner(c);
                        v.extend_from_slice(&p[o * k..(o + 1) * k]);
                    }
                }
                Ok(Const::i64s(dims, v))
            } else {
                if inputs.iter().any(holds_batch) {
                    return Err("Concat of the batch size with floats is not folded".into());
                }
                let parts: Vec<Vec<f32>> = inputs.iter().map(|c| c.floats()).collect();
                let mut v = Vec::new();
                for o in 0..outer {
                    for (c, p) in inputs.iter().zip(&parts) {
                        let k = inner(c);
                        v.extend_from_slice(&p[o * k..(o + 1) * k]);
                    }
                }
                Ok(Const {
                    dims,
                    data: Data::F32(v),
                })
            }
        }
        "Not" => {
            let c = &inputs[0];
            Ok(Const::i64s(
                c.dims.clone(),
                c.ints().iter().map(|&x| i64::from(x == 0)).collect(),
            ))
        }
        "And" | "Or" | "Xor" => {
            need(2)?;
            let (a, b) = (&inputs[0], &inputs[1]);
            let (len, dims, ia, ib) = pairing(op, a, b)?;
            let (x, y) = (a.ints(), b.ints());
            let v = (0..len)
                .map(|i| {
                    let (p, q) = (x[ia[i]] != 0, y[ib[i]] != 0);
                    i64::from(match op {
                        "And" => p && q,
                        "Or" => p || q,
                        _ => p != q,
                    })
                })
                .collect();
            Ok(Const::i64s(dims, v))
        }
        "Reshape" => {
            need(2)?;
            let (c, target) = (&inputs[0], inputs[1].ints());
            // A shape vector holding the batch size may be reshaped (its values
            // only move); a target holding it would give dims that depend on it.
            if holds_batch(&inputs[1]) {
                return Err("Reshape of a constant involving the batch size is not folded".into());
            }
            let allow_zero = attr_int("allowzero").unwrap_or(0) == 1;
            let mut dims: Vec<i64> = target
                .iter()
                .enumerate()
                .map(|(i, &d)| match d {
                    0 if !allow_zero => c.dims.get(i).map(|&v| v as i64).ok_or_else(|| {
                        format!("0 in reshape target {target:?} copies a dim the constant lacks")
                    }),
                    d => Ok(d),
                })
                .collect::<Result<_, String>>()?;
            let known: i64 = dims.iter().filter(|&&d| d != -1).product();
            match dims.iter().filter(|&&d| d == -1).count() {
                0 => {}
                1 if known > 0 && c.len() as i64 % known == 0 => {
                    let inferred = c.len() as i64 / known;
                    dims.iter_mut()
                        .filter(|d| **d == -1)
                        .for_each(|d| *d = inferred);
                }
                _ => {
                    return Err(format!(
                        "reshape target {target:?} cannot be resolved for {} values",
                        c.len()
                    ))
                }
            }
            if dims.iter().any(|&d| d < 0) || dims.iter().product::<i64>() != c.len() as i64 {
                return Err(format!(
                    "cannot reshape a constant of dims {:?} to {target:?}",
                    c.dims
                ));
            }
            Ok(Const {
                dims: dims.iter().map(|&d| d as usize).collect(),
                data: c.data.clone(),
            })
        }
        "Transpose" => {
            let c = &inputs[0];
            let rank = c.dims.len();
            let perm: Vec<usize> = match attr_ints("perm") {
                Some(p) => p.iter().map(|&a| axis(a, rank)).collect::<Result<_, _>>()?,
                None => (0..rank).rev().collect(),
            };
            let mut seen = perm.clone();
            seen.sort_unstable();
            if seen != (0..rank).collect::<Vec<_>>() {
                return Err(format!("perm {perm:?} is not a permutation of {rank} axes"));
            }
            let out_dims: Vec<usize> = perm.iter().map(|&p| c.dims[p]).collect();
            let src_strides = strides(&c.dims);
            let index = |flat: usize| -> usize {
                // The source offset of output element `flat`.
                let mut rest = flat;
                let mut off = 0;
                for (k, &d) in out_dims.iter().enumerate().rev() {
                    let i = rest % d;
                    rest /= d;
                    off += i * src_strides[perm[k]];
                }
                off
            };
            Ok(Const {
                dims: out_dims.clone(),
                data: gather_data(&c.data, c.len(), index),
            })
        }
        "Expand" => {
            need(2)?;
            let (c, shape) = (&inputs[0], inputs[1].ints());
            if holds_batch(&inputs[1]) {
                return Err("Expand of a constant to the batch size is not folded".into());
            }
            if shape.iter().any(|&d| d < 0) {
                return Err(format!("Expand to a negative size {shape:?}"));
            }
            let rank = shape.len().max(c.dims.len());
            let pad = |d: &[usize]| -> Vec<usize> {
                std::iter::repeat_n(1, rank - d.len())
                    .chain(d.iter().copied())
                    .collect()
            };
            let a = pad(&c.dims);
            let b = pad(&shape.iter().map(|&d| d as usize).collect::<Vec<_>>());
            let mut out_dims = Vec::with_capacity(rank);
            for (&x, &y) in a.iter().zip(&b) {
                out_dims.push(match (x, y) {
                    (x, y) if x == y || y == 1 => x,
                    (1, y) => y,
                    _ => return Err(format!("cannot expand dims {:?} to {shape:?}", c.dims)),
                });
            }
            let total: usize = out_dims.iter().product();
            if total > MAX_FOLDED_ELEMENTS {
                return Err(format!(
                    "Expand to {out_dims:?} ({total} values) is too large to fold"
                ));
            }
            let src_strides = strides(&a);
            let index = |flat: usize| -> usize {
                let mut rest = flat;
                let mut off = 0;
                for k in (0..rank).rev() {
                    let i = rest % out_dims[k];
                    rest /= out_dims[k];
                    if a[k] != 1 {
                        off += i * src_strides[k];
                    }
                }
                off
            };
            Ok(Const {
                dims: out_dims.clone(),
                data: gather_data(&c.data, total, index),
            })
        }
        "Unsqueeze" | "Squeeze" => {
            let c = &inputs[0];
            let axes = inputs
                .get(1)
                .map(|a| a.ints())
                .or_else(|| attr_ints("axes"))
                .unwrap_or_default();
            let mut dims = c.dims.clone();
            if op == "Unsqueeze" {
                dims = unsqueeze(&dims, &unique_axes(&axes, dims.len() + axes.len())?);
            } else if axes.is_empty() {
                dims.retain(|&d| d != 1);
            } else {
                dims = squeeze(&dims, &unique_axes(&axes, dims.len())?)?;
            }
            Ok(Const {
                dims,
                data: c.data.clone(),
            })
        }
        "Add" | "Sub" | "Mul" | "Div" => {
            need(2)?;
            let (a, b) = (&inputs[0], &inputs[1]);
            let (len, dims, ia, ib) = pairing(op, a, b)?;
            match (&a.data, &b.data) {
                (Data::I64(x), Data::I64(y)) => {
                    let v: Vec<i64> = (0..len)
                        .map(|i| {
                            let (p, q) = (x[ia[i]], y[ib[i]]);
                            if batch_factor(p).is_some() || batch_factor(q).is_some() {
                                return batch_arithmetic(op, p, q);
                            }
                            match op {
                                "Add" => p.checked_add(q),
                                "Sub" => p.checked_sub(q),
                                "Mul" => p.checked_mul(q),
                                _ if q == 0 => Some(0),
                                _ => p.checked_div(q),
                            }
                            .filter(|&v| v >= MOST_NEGATIVE)
                            .ok_or_else(|| format!("{op} of {p} and {q} overflows 64 bits"))
                        })
                        .collect::<Result<_, _>>()?;
                    Ok(Const::i64s(dims, v))
                }
                _ => {
                    let (x, y) = (a.floats(), b.floats());
                    let v: Vec<f32> = (0..len)
                        .map(|i| {
                            let (p, q) = (x[ia[i]], y[ib[i]]);
                            match op {
                                "Add" => p + q,
                                "Sub" => p - q,
                                "Mul" => p * q,
                                _ => p / q,
                            }
                        })
                        .collect();
                    Ok(Const {
                        dims,
                        data: Data::F32(v),
                    })
                }
            }
        }
        "Mod" => {
            need(2)?;
            let (a, b) = (&inputs[0], &inputs[1]);
            let (len, dims, ia, ib) = pairing(op, a, b)?;
            if holds_batch(a) || holds_batch(b) {
                return Err("Mod of the batch size is not folded".into());
            }
            let fmod = attr_int("fmod").unwrap_or(0) == 1;
            match (&a.data, &b.data) {
                (Data::I64(x), Data::I64(y)) if !fmod => {
                    let v: Vec<i64> = (0..len)
                        .map(|i| {
                            let (p, q) = (x[ia[i]], y[ib[i]]);
                            if q == 0 {
                                return Err(format!("Mod of {p} by zero"));
                            }
                            // The result takes the divisor's sign (Python's %).
                            Ok(p.checked_rem(q).map_or(0, |r| {
                                if r != 0 && (r < 0) != (q < 0) {
                                    r + q
                                } else {
                                    r
                                }
                            }))
                        })
                        .collect::<Result<_, String>>()?;
                    Ok(Const::i64s(dims, v))
                }
                _ => Err("only integer Mod with fmod=0 is folded".into()),
            }
        }
        "Equal" => {
            need(2)?;
            let (a, b) = (&inputs[0], &inputs[1]);
            let (len, dims, ia, ib) = pairing(op, a, b)?;
            if matches!(a.data, Data::F32(_)) || matches!(b.data, Data::F32(_)) {
                if holds_batch(a) || holds_batch(b) {
                    return Err("Equal of the batch size with floats is not folded".into());
                }
                let (x, y) = (a.floats(), b.floats());
                let v = (0..len).map(|i| i64::from(x[ia[i]] == y[ib[i]])).collect();
                return Ok(Const::i64s(dims, v));
            }
            let (x, y) = (a.ints(), b.ints());
            let v: Vec<i64> = (0..len)
                .map(|i| {
                    let (p, q) = (x[ia[i]], y[ib[i]]);
                    match (batch_factor(p), batch_factor(q)) {
                        (None, None) => Ok(i64::from(p == q)),
                        (Some(a), Some(b)) if a == b => Ok(1),
                        // N·k ≥ 1: never a zero or a negative number (the -1 of a
                        // shape with an inferred size).
                        (Some(_), None) if q < 1 => Ok(0),
                        (None, Some(_)) if p < 1 => Ok(0),
                        _ => Err(format!(
                            "Equal of {} and {} depends on the batch size",
                            show(p),
                            show(q)
                        )),
                    }
                })
                .collect::<Result<_, String>>()?;
            Ok(Const::i64s(dims, v))
        }
        "Range" => {
            need(3)?;
            if inputs.iter().any(|c| c.len() != 1) {
                return Err("Range needs scalar start, limit and delta".into());
            }
            if inputs.iter().any(holds_batch) {
                return Err("Range up to the batch size is not folded".into());
            }
            if inputs.iter().all(|c| matches!(c.data, Data::I64(_))) {
                let (s0, l, d) = (
                    inputs[0].ints()[0],
                    inputs[1].ints()[0],
                    inputs[2].ints()[0],
                );
                if d == 0 {
                    return Err("Range with a delta of 0".into());
                }
                // ONNX: max(ceil((limit - start) / delta), 0) values.
                let span = l.checked_sub(s0).ok_or("Range overflows 64 bits")?;
                let count = if (span > 0) == (d > 0) && span != 0 {
                    (span.unsigned_abs().div_ceil(d.unsigned_abs())) as usize
                } else {
                    0
                };
                if count > MAX_FOLDED_ELEMENTS {
                    return Err(format!("Range of {count} values is too large to fold"));
                }
                let v: Vec<i64> = (0..count as i64).map(|i| s0 + i * d).collect();
                Ok(Const::i64s(vec![v.len()], v))
            } else {
                let (s0, l, d) = (
                    inputs[0].floats()[0],
                    inputs[1].floats()[0],
                    inputs[2].floats()[0],
                );
                let count = ((l - s0) / d).ceil();
                if !count.is_finite() || count > MAX_FOLDED_ELEMENTS as f32 {
                    return Err("Range with a non-finite or too large count".into());
                }
                let count = count.max(0.0) as usize;
                // Accumulated, as the ONNX function body (and ONNX Runtime) does.
                let v: Vec<f32> = std::iter::successors(Some(s0), |&x| Some(x + d))
                    .take(count)
                    .collect();
                Ok(Const {
                    dims: vec![v.len()],
                    data: Data::F32(v),
                })
            }
        }
        "Where" => {
            need(3)?;
            let (c, a, b) = (&inputs[0], &inputs[1], &inputs[2]);
            let len = c.len();
            let same = |x: &Const| x.len() == 1 || x.dims == c.dims;
            if !same(a) || !same(b) || len == 0 {
                return Err("only Where of equal dims or scalars is folded".into());
            }
            let cond = c.ints();
            let pick = |i: usize| {
                if cond[i] != 0 {
                    (a, i % a.len())
                } else {
                    (b, i % b.len())
                }
            };
            Ok(match (&a.data, &b.data) {
                (Data::I64(_), Data::I64(_)) => Const::i64s(
                    c.dims.clone(),
                    (0..len)
                        .map(|i| {
                            let (t, j) = pick(i);
                            t.ints()[j]
                        })
                        .collect(),
                ),
                _ if holds_batch(a) || holds_batch(b) => {
                    return Err("Where of the batch size with floats is not folded".into())
                }
                _ => Const {
                    dims: c.dims.clone(),
                    data: Data::F32(
                        (0..len)
                            .map(|i| {
                                let (t, j) = pick(i);
                                t.floats()[j]
                            })
                            .collect(),
                    ),
                },
            })
        }
        "MatMul" => {
            need(2)?;
            fold_matmul(&inputs[0], &inputs[1])
        }
        "Clip" => {
            let c = &inputs[0];
            if holds_batch(c) {
                return Err("Clip of the batch size is not folded".into());
            }
            // Opset 11+: min and max as optional inputs (an empty name is absent).
            let bound = |i: usize| -> Result<Option<f32>, String> {
                match inputs.get(i) {
                    Some(b) if b.len() == 1 => Ok(Some(b.floats()[0])),
                    Some(b) => Err(format!("Clip bound of {} values", b.len())),
                    None => Ok(None),
                }
            };
            let (lo, hi) = (bound(1)?, bound(2)?);
            match &c.data {
                Data::I64(v) => {
                    // Integer bounds as integers (an f32 would round past 2^24);
                    // a float bound (the -∞ of an omitted min) as itself.
                    let int_bound = |i: usize, f: Option<f32>| match inputs.get(i).map(|b| &b.data)
                    {
                        Some(Data::I64(b)) => Some(b[0]),
                        _ => f.filter(|x| x.is_finite()).map(|x| x as i64),
                    };
                    let (lo, hi) = (int_bound(1, lo), int_bound(2, hi));
                    Ok(Const::i64s(
                        c.dims.clone(),
                        v.iter()
                            .map(|&x| {
                                let x = lo.map_or(x, |l| x.max(l));
                                hi.map_or(x, |h| x.min(h))
                            })
                            .collect(),
                    ))
                }
                Data::F32(v) => Ok(Const {
                    dims: c.dims.clone(),
                    data: Data::F32(
                        v.iter()
                            .map(|&x| {
                                let x = lo.map_or(x, |l| if x < l { l } else { x });
                                hi.map_or(x, |h| if x > h { h } else { x })
                            })
                            .collect(),
                    ),
                }),
            }
        }
        "Relu" | "Sigmoid" | "Tanh" => {
            let c = &inputs[0];
            if holds_batch(c) || matches!(c.data, Data::I64(_)) {
                return Err(format!("{op} of integers is not folded"));
            }
            let v: Vec<f32> = c
                .floats()
                .iter()
                .map(|&x| match op {
                    "Relu" => x.max(0.0),
                    "Sigmoid" => 1.0 / (1.0 + (-x).exp()),
                    _ => x.tanh(),
                })
                .collect();
            Ok(Const {
                dims: c.dims.clone(),
                data: Data::F32(v),
            })
        }
        "Sqrt" | "Reciprocal" | "Exp" | "Log" | "Floor" | "Ceil" | "Neg" | "Abs" => {
            let c = &inputs[0];
            if holds_batch(c) {
                return Err(format!("{op} of the batch size is not folded"));
            }
            Ok(match &c.data {
                Data::I64(v) if matches!(op, "Neg" | "Abs") => Const::i64s(
                    c.dims.clone(),
                    v.iter()
                        .map(|&x| {
                            if op == "Neg" {
                                x.checked_neg()
                            } else {
                                x.checked_abs()
                            }
                        })
                        .collect::<Option<_>>()
                        .ok_or_else(|| format!("{op} overflows 64 bits"))?,
                ),
                Data::I64(_) => return Err(format!("integer {op} is not folded")),
                Data::F32(v) => Const {
                    dims: c.dims.clone(),
                    data: Data::F32(
                        v.iter()
                            .map(|&x| match op {
                                "Sqrt" => x.sqrt(),
                                "Reciprocal" => 1.0 / x,
                                "Exp" => x.exp(),
                                "Log" => x.ln(),
                                "Floor" => x.floor(),
                                "Ceil" => x.ceil(),
                                "Neg" => -x,
                                _ => x.abs(),
                            })
                            .collect(),
                    ),
                },
            })
        }
        "Pow" => {
            need(2)?;
            let (a, b) = (&inputs[0], &inputs[1]);
            let (len, dims, ia, ib) = pairing(op, a, b)?;
            if holds_batch(a) || holds_batch(b) {
                return Err("Pow of the batch size is not folded".into());
            }
            Ok(match (&a.data, &b.data) {
                (Data::I64(x), Data::I64(y)) => Const::i64s(
                    dims,
                    (0..len)
                        .map(|i| {
                            let (p, q) = (x[ia[i]], y[ib[i]]);
                            u32::try_from(q).ok().and_then(|q| p.checked_pow(q))
                        })
                        .collect::<Option<_>>()
                        .ok_or("integer Pow with a negative or too large result is not folded")?,
                ),
                (Data::I64(_), Data::F32(_)) => {
                    return Err("Pow of an integer by a float is not folded".into())
                }
                _ => {
                    let (x, y) = (a.floats(), b.floats());
                    Const {
                        dims,
                        data: Data::F32((0..len).map(|i| x[ia[i]].powf(y[ib[i]])).collect()),
                    }
                }
            })
        }
        "ScatterND" => {
            need(3)?;
            let (data, idx, upd) = (&inputs[0], &inputs[1], &inputs[2]);
            // (A `reduction` other than "none" is refused by the importer.)
            let q = idx.dims.len();
            let k = *idx
                .dims
                .last()
                .ok_or("ScatterND indices must have a last axis")?;
            if q == 0 || k > data.dims.len() {
                return Err(format!(
                    "ScatterND indices of dims {:?} do not fit data of dims {:?}",
                    idx.dims, data.dims
                ));
            }
            let mut want = idx.dims[..q - 1].to_vec();
            want.extend(&data.dims[k..]);
            if upd.dims != want {
                return Err(format!(
                    "ScatterND updates of dims {:?}, expected {want:?}",
                    upd.dims
                ));
            }
            if holds_batch(data) || holds_batch(idx) || holds_batch(upd) {
                return Err("ScatterND of the batch size is not folded".into());
            }
            let slice: usize = data.dims[k..].iter().product();
            let targets = nd_offsets("ScatterND", &data.dims, &idx.ints(), k)?;
            let mut out = data.clone();
            let put = |out: &mut Data| match (out, &upd.data) {
                (Data::F32(o), _) => {
                    let u = upd.floats();
                    for (t, &base) in targets.iter().enumerate() {
                        o[base..base + slice].copy_from_slice(&u[t * slice..(t + 1) * slice]);
                    }
                }
                (Data::I64(o), _) => {
                    let u = upd.ints();
                    for (t, &base) in targets.iter().enumerate() {
                        o[base..base + slice].copy_from_slice(&u[t * slice..(t + 1) * slice]);
                    }
                }
            };
            put(&mut out.data);
            Ok(out)
        }
        "Max" | "Min" | "Sum" => {
            let mut acc = inputs[0].clone();
            for b in &inputs[1..] {
                acc = fold_extremum(op, &acc, b)?;
            }
            Ok(acc)
        }
        other => Err(format!("'{other}' cannot be folded")),
    }
}

/// `MatMul` of two float constants (NumPy `matmul`: 1-D operands are a row
/// and a column, leading axes broadcast), accumulated in f64.
fn fold_matmul(a: &Const, b: &Const) -> Result<Const, String> {
    if holds_batch(a)
        || holds_batch(b)
        || matches!(a.data, Data::I64(_))
        || matches!(b.data, Data::I64(_))
    {
        return Err("MatMul of integer constants is not folded".into());
    }
    let (ra, rb) = (a.dims.len(), b.dims.len());
    if ra == 0 || rb == 0 {
        return Err("MatMul of a scalar".into());
    }
    let da: Vec<usize> = if ra == 1 {
        vec![1, a.dims[0]]
    } else {
        a.dims.clone()
    };
    let db: Vec<usize> = if rb == 1 {
        vec![b.dims[0], 1]
    } else {
        b.dims.clone()
    };
    let (m, k) = (da[da.len() - 2], da[da.len() - 1]);
    let (k2, n) = (db[db.len() - 2], db[db.len() - 1]);
    if k != k2 {
        return Err(format!(
            "MatMul of dims {:?} and {:?}: inner sizes differ",
            a.dims, b.dims
        ));
    }
    let lead_a = Const {
        dims: da[..da.len() - 2].to_vec(),
        data: Data::I64(vec![0; da[..da.len() - 2].iter().product()]),
    };
    let lead_b = Const {
        dims: db[..db.len() - 2].to_vec(),
        data: Data::I64(vec![0; db[..db.len() - 2].iter().product()]),
    };
    let (count, lead, ia, ib) = pairing("MatMul", &lead_a, &lead_b)?;
    if count.saturating_mul(m).saturating_mul(n) > MAX_FOLDED_ELEMENTS {
        return Err("MatMul result too large to fold".into());
    }
    let (x, y) = (a.floats(), b.floats());
    let mut out = Vec::with_capacity(count * m * n);
    for t in 0..count {
        let (oa, ob) = (ia[t] * m * k, ib[t] * k * n);
        for i in 0..m {
            for j in 0..n {
                let acc: f64 = (0..k)
                    .map(|p| x[oa + i * k + p] as f64 * y[ob + p * n + j] as f64)
                    .sum();
                out.push(acc as f32);
            }
        }
    }
    let mut dims = lead;
    if ra > 1 {
        dims.push(m);
    }
    if rb > 1 {
        dims.push(n);
    }
    Ok(Const {
        dims,
        data: Data::F32(out),
    })
}

/// The flat offset in data of `dims` of each `k`-tuple of `indices`
/// (GatherND / ScatterND; negative indices count from the end).
fn nd_offsets(op: &str, dims: &[usize], indices: &[i64], k: usize) -> Result<Vec<usize>, String> {
    let st = strides(dims);
    indices
        .chunks(k.max(1))
        .map(|tuple| {
            tuple.iter().enumerate().try_fold(0usize, |off, (a, &i)| {
                let d = dims[a] as i64;
                let j = if i < 0 { i + d } else { i };
                if (0..d).contains(&j) {
                    Ok(off + j as usize * st[a])
                } else {
                    Err(format!("{op} index {i} out of range {d}"))
                }
            })
        })
        .collect()
}

/// A folded shape value for messages: `N`, `N·12`, or the number.
pub(crate) fn show(v: i64) -> String {
    match batch_factor(v) {
        Some(1) => "the batch size".into(),
        Some(k) => format!("the batch size × {k}"),
        None => v.to_string(),
    }
}

/// `p op q` where at least one is the batch size or a multiple `N·k`: the
/// result stays a known multiple of N (`N·k·c`, `N·k / c` when `c` divides
/// `k`, `N·a / N·b`, `+ 0`), or the arithmetic is refused.
fn batch_arithmetic(op: &str, p: i64, q: i64) -> Result<i64, String> {
    let (a, b) = (batch_factor(p), batch_factor(q));
    let multiple = |k: Option<i64>| {
        k.and_then(batch_times).ok_or_else(|| {
            format!(
                "{op} of {} and {}: the batch multiple is too large",
                show(p),
                show(q)
            )
        })
    };
    let refused = || {
        Err(format!(
            "{op} of {} and {}: this arithmetic on the batch size is not supported",
            show(p),
            show(q)
        ))
    };
    match (op, a, b) {
        ("Add" | "Sub", Some(_), None) if q == 0 => Ok(p),
        ("Add", None, Some(_)) if p == 0 => Ok(q),
        ("Mul", Some(k), None) if q >= 1 => multiple(k.checked_mul(q)),
        ("Mul", None, Some(k)) if p >= 1 => multiple(k.checked_mul(p)),
        ("Div", Some(k), None) if q >= 1 && k % q == 0 => multiple(Some(k / q)),
        ("Div", Some(k), Some(j)) if k % j == 0 => Ok(k / j),
        _ => refused(),
    }
}

/// How two constants pair element-wise (NumPy broadcasting): the length and
/// dims of the result and, for each result value, the index of its operands.
type Pairing = (usize, Vec<usize>, Vec<usize>, Vec<usize>);

fn pairing(op: &str, a: &Const, b: &Const) -> Result<Pairing, String> {
    let what = if matches!(op, "Add" | "Sub" | "Mul" | "Div") {
        "arithmetic"
    } else {
        op
    };
    if a.len() == 0 || b.len() == 0 {
        return Err(format!("{what} on an empty constant is not folded"));
    }
    let rank = a.dims.len().max(b.dims.len());
    let pad = |d: &[usize]| -> Vec<usize> {
        std::iter::repeat_n(1, rank - d.len())
            .chain(d.iter().copied())
            .collect()
    };
    let (da, db) = (pad(&a.dims), pad(&b.dims));
    let mut dims = Vec::with_capacity(rank);
    for (&x, &y) in da.iter().zip(&db) {
        dims.push(match (x, y) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(format!(
                    "{what} of constants of dims {:?} and {:?}, which do not broadcast",
                    a.dims, b.dims
                ))
            }
        });
    }
    let len: usize = dims.iter().product();
    if len > MAX_FOLDED_ELEMENTS {
        return Err(format!("{what} to {len} values is too large to fold"));
    }
    let (sa, sb, so) = (strides(&da), strides(&db), strides(&dims));
    let index = |d: &[usize], s: &[usize], flat: usize| -> usize {
        (0..rank)
            .map(|k| {
                if d[k] == 1 {
                    0
                } else {
                    (flat / so[k]) % dims[k] * s[k]
                }
            })
            .sum()
    };
    let ia = (0..len).map(|i| index(&da, &sa, i)).collect();
    let ib = (0..len).map(|i| index(&db, &sb, i)).collect();
    Ok((len, dims, ia, ib))
}

/// The largest constant folding may create (Expand): 64 Mi values.
const MAX_FOLDED_ELEMENTS: usize = 1 << 26;

/// Row-major strides of `dims`.
fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for k in (0..dims.len().saturating_sub(1)).rev() {
        s[k] = s[k + 1] * dims[k + 1];
    }
    s
}

/// `n` values, the `i`-th taken from `data[index(i)]`.
fn gather_data(data: &Data, n: usize, index: impl Fn(usize) -> usize) -> Data {
    match data {
        Data::F32(v) => Data::F32((0..n).map(|i| v[index(i)]).collect()),
        Data::I64(v) => Data::I64((0..n).map(|i| v[index(i)]).collect()),
    }
}

/// `Max`, `Min` or `Sum` of two equal-size or scalar constants. The batch size
/// is only known to be at least 1, so it takes part only as `Max(N, 1)`,
/// `Min(N, N)`-like identities: anything else is refused.
fn fold_extremum(op: &str, a: &Const, b: &Const) -> Result<Const, String> {
    let (len, dims, ia, ib) = pairing(op, a, b)?;
    match (&a.data, &b.data) {
        (Data::I64(x), Data::I64(y)) => {
            let v: Vec<i64> = (0..len)
                .map(|i| {
                    let (p, q) = (x[ia[i]], y[ib[i]]);
                    match (batch_factor(p), batch_factor(q)) {
                        (None, None) => {}
                        (Some(a), Some(b)) if a == b && op != "Sum" => return Ok(p),
                        // N ≥ 1, so N·k ≥ k ≥ any c ≤ 1.
                        (Some(_), None) if op == "Max" && q <= 1 => return Ok(p),
                        (None, Some(_)) if op == "Max" && p <= 1 => return Ok(q),
                        _ => {
                            return Err(format!(
                                "{op} of {} and {}: arithmetic on the batch size is not supported",
                                show(p),
                                show(q)
                            ))
                        }
                    }
                    match op {
                        "Max" => Ok(p.max(q)),
                        "Min" => Ok(p.min(q)),
                        _ => p
                            .checked_add(q)
                            .filter(|&v| v >= MOST_NEGATIVE)
                            .ok_or_else(|| format!("Sum of {p} and {q} overflows 64 bits")),
                    }
                })
                .collect::<Result<_, String>>()?;
            Ok(Const::i64s(dims, v))
        }
        _ => {
            let (x, y) = (a.floats(), b.floats());
            let v: Vec<f32> = (0..len)
                .map(|i| {
                    let (p, q) = (x[ia[i]], y[ib[i]]);
                    match op {
                        // ONNX propagates NaN; f32::max would drop it.
                        _ if p.is_nan() || q.is_nan() => f32::NAN,
                        "Max" => p.max(q),
                        "Min" => p.min(q),
                        _ => p + q,
                    }
                })
                .collect();
            Ok(Const {
                dims,
                data: Data::F32(v),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(v: &[i64]) -> Const {
        Const::i64s(vec![v.len()], v.to_vec())
    }

    fn run(op: &str, a: &[i64], b: &[i64]) -> Result<Vec<i64>, String> {
        fold(op, &[ints(a), ints(b)], &|_| None, &|_| None).map(|c| c.ints())
    }

    /// The batch size stays a known multiple `N·k` through identities,
    /// products and exact divisions (the batch axis merged with heads or
    /// windows, and split again); anything else (`N + 1`, `N / 2`, `1 / N`)
    /// is refused rather than passed off as a multiple of N.
    #[test]
    fn arithmetic_on_the_batch_size_keeps_multiples_or_is_refused() {
        let n = |k| batch_times(k).unwrap();
        assert_eq!(run("Mul", &[BATCH], &[1]).unwrap(), [BATCH]);
        assert_eq!(run("Add", &[0], &[BATCH]).unwrap(), [BATCH]);
        assert_eq!(run("Div", &[BATCH], &[1]).unwrap(), [BATCH]);
        assert_eq!(run("Mul", &[BATCH], &[12]).unwrap(), [n(12)]);
        assert_eq!(run("Mul", &[3], &[n(4)]).unwrap(), [n(12)]);
        assert_eq!(run("Div", &[n(64)], &[64]).unwrap(), [BATCH]);
        assert_eq!(run("Div", &[n(64)], &[BATCH]).unwrap(), [64]);
        assert_eq!(batch_factor(n(197)), Some(197));
        assert_eq!(batch_factor(197), None);
        for (op, a, b) in [
            ("Div", BATCH, 2),
            ("Div", n(6), 4),
            ("Add", BATCH, 1),
            ("Sub", 0, BATCH),
            ("Div", 1, BATCH),
            ("Mul", BATCH, BATCH),
            ("Mul", BATCH, 0),
        ] {
            let e = run(op, &[a], &[b]).unwrap_err();
            assert!(e.contains("arithmetic on the batch size"), "{op}: {e}");
        }
        assert_eq!(run("Mul", &[4, 5], &[2]).unwrap(), [8, 10]);
    }

    /// Folding follows NumPy broadcasting ((2, 1) + (2,) is (2, 2), not an
    /// element-wise sum of two length-2 lists), N-D Concat and strided Slice.
    #[test]
    fn folds_broadcast_concatenate_and_slice_any_rank() {
        let none = |_: &str| None;
        let no_int = |_: &str| None;
        let col = Const::i64s(vec![2, 1], vec![0, 10]);
        let row = Const::i64s(vec![2], vec![1, 2]);
        let sum = fold("Add", &[col.clone(), row.clone()], &none, &no_int).unwrap();
        assert_eq!(
            (sum.dims.clone(), sum.ints()),
            (vec![2, 2], vec![1, 2, 11, 12])
        );
        let wide = Const::i64s(vec![2, 2], vec![5, 6, 7, 8]);
        let axis1 = |k: &str| (k == "axis").then_some(1);
        let cat = fold("Concat", &[col, wide.clone()], &none, &axis1).unwrap();
        assert_eq!(
            (cat.dims.clone(), cat.ints()),
            (vec![2, 3], vec![0, 5, 6, 10, 7, 8])
        );
        let rev = fold(
            "Slice",
            &[
                wide,
                ints(&[-1]),
                ints(&[i64::MIN + (1 << 40)]),
                ints(&[1]),
                ints(&[-1]),
            ],
            &none,
            &no_int,
        )
        .unwrap();
        assert_eq!(
            (rev.dims.clone(), rev.ints()),
            (vec![2, 2], vec![6, 5, 8, 7])
        );
        let range = fold(
            "Range",
            &[ints(&[1]), ints(&[8]), ints(&[3])],
            &none,
            &no_int,
        )
        .unwrap();
        assert_eq!(range.ints(), [1, 4, 7]);
    }

    /// Constant sub-networks (Swin V2's position-bias MLP) fold: MatMul with
    /// broadcast leading axes and 1-D operands, then Relu / Sigmoid.
    #[test]
    fn matmul_and_activations_of_constants_fold() {
        let none = |_: &str| None;
        let no_int = |_: &str| None;
        let f = |dims: Vec<usize>, v: Vec<f32>| Const {
            dims,
            data: Data::F32(v),
        };
        let a = f(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]);
        let b = f(vec![3, 2], vec![1., 0., 0., 1., 1., -1.]);
        let c = fold("MatMul", &[a.clone(), b], &none, &no_int).unwrap();
        assert_eq!(
            (c.dims.clone(), c.floats()),
            (vec![2, 2], vec![4., -1., 10., -1.])
        );
        let v = fold(
            "MatMul",
            &[a.clone(), f(vec![3], vec![1., 1., 1.])],
            &none,
            &no_int,
        )
        .unwrap();
        assert_eq!((v.dims.clone(), v.floats()), (vec![2], vec![6., 15.]));
        let rows = f(vec![2, 1, 3], a.floats());
        let batched = fold(
            "MatMul",
            &[rows, f(vec![3, 1], vec![1., 0., 0.])],
            &none,
            &no_int,
        );
        assert_eq!(batched.unwrap().dims, vec![2, 1, 1]);
        let r = fold("Relu", &[f(vec![2], vec![-1., 2.])], &none, &no_int).unwrap();
        assert_eq!(r.floats(), [0., 2.]);
    }

    /// `Equal` / `Where` as torch writes `Expand(x, where(shape == -1, 1, shape))`:
    /// a batch multiple is never -1 or 0; comparing it with another number is refused.
    #[test]
    fn equal_where_and_mod_fold_around_the_batch_size() {
        assert_eq!(run("Equal", &[BATCH, 1, -1], &[-1]).unwrap(), [0, 0, 1]);
        assert!(run("Equal", &[BATCH], &[4]).is_err());
        let w = fold(
            "Where",
            &[ints(&[0, 1]), ints(&[1]), ints(&[BATCH, -1])],
            &|_| None,
            &|_| None,
        )
        .unwrap();
        assert_eq!(w.ints(), [BATCH, 1]);
        assert_eq!(run("Mod", &[7, -7, 7], &[3, 3, -3]).unwrap(), [1, 2, -2]);
        assert!(run("Mod", &[BATCH], &[7]).is_err());
    }

    fn floats(dims: Vec<usize>, v: Vec<f32>) -> Const {
        Const {
            dims,
            data: Data::F32(v),
        }
    }

    #[test]
    fn reshape_transpose_expand_and_float_concat_fold_exactly() {
        let none = |_: &str| -> Option<Vec<i64>> { None };
        let no_int = |_: &str| -> Option<i64> { None };
        let c = floats(vec![2, 3], vec![0., 1., 2., 3., 4., 5.]);
        let r = fold("Reshape", &[c.clone(), ints(&[3, -1])], &none, &no_int).unwrap();
        assert_eq!((r.dims.clone(), r.floats()), (vec![3, 2], c.floats()));
        let r = fold("Reshape", &[c.clone(), ints(&[0, 3])], &none, &no_int).unwrap();
        assert_eq!(r.dims, [2, 3]);
        assert!(fold("Reshape", &[c.clone(), ints(&[4, -1])], &none, &no_int).is_err());
        assert!(fold("Reshape", &[c.clone(), ints(&[BATCH, 6])], &none, &no_int).is_err());
        let t = fold("Transpose", &[c.clone()], &none, &no_int).unwrap();
        assert_eq!(
            (t.dims.clone(), t.floats()),
            (vec![3, 2], vec![0., 3., 1., 4., 2., 5.])
        );
        let perm = |k: &str| (k == "perm").then(|| vec![0, 1]);
        assert_eq!(fold("Transpose", &[c.clone()], &perm, &no_int).unwrap(), c);
        let e = fold(
            "Expand",
            &[floats(vec![3, 1], vec![1., 2., 3.]), ints(&[2, 3, 2])],
            &none,
            &no_int,
        )
        .unwrap();
        assert_eq!(e.dims, [2, 3, 2]);
        assert_eq!(e.floats(), [1., 1., 2., 2., 3., 3., 1., 1., 2., 2., 3., 3.]);
        assert!(fold("Expand", &[c.clone(), ints(&[BATCH, 2, 3])], &none, &no_int).is_err());
        assert!(fold("Expand", &[c.clone(), ints(&[4, 3])], &none, &no_int).is_err());
        // Float scales stay floats (they were truncated to integers once).
        let cat = fold(
            "Concat",
            &[
                floats(vec![2], vec![1., 1.]),
                floats(vec![2], vec![1.5, 2.5]),
            ],
            &none,
            &no_int,
        )
        .unwrap();
        assert_eq!(cat.floats(), [1., 1., 1.5, 2.5]);
        assert_eq!(
            fold("Concat", &[ints(&[1]), ints(&[BATCH])], &none, &no_int)
                .unwrap()
                .ints(),
            [1, BATCH]
        );
    }

    #[test]
    fn max_min_and_sum_fold_and_keep_nan() {
        assert_eq!(run("Max", &[1, 7, -2], &[3, 2, -5]).unwrap(), [3, 7, -2]);
        assert_eq!(run("Min", &[1, 7, -2], &[0]).unwrap(), [0, 0, -2]);
        assert_eq!(run("Sum", &[1, 2], &[3, 4]).unwrap(), [4, 6]);
        assert_eq!(run("Max", &[BATCH], &[1]).unwrap(), [BATCH]);
        assert!(run("Min", &[BATCH], &[4]).is_err());
        let f = |v: Vec<f32>| Const {
            dims: vec![v.len()],
            data: Data::F32(v),
        };
        let c = fold(
            "Max",
            &[f(vec![f32::NAN, 1.0]), f(vec![0.0, 2.0])],
            &|_| None,
            &|_| None,
        )
        .unwrap();
        let v = c.floats();
        assert!(v[0].is_nan() && v[1] == 2.0, "{v:?}");
    }
}
