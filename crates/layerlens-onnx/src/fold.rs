//! Folding of ONNX ops whose inputs are all known at import (the shape
//! arithmetic exporters emit around `Reshape`).

use crate::tensor::{Const, Data, BATCH};

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
            if data.dims.len() != 1 || attr_int("axis").unwrap_or(0) != 0 {
                return Err("only 1-D Gather on axis 0 is folded".into());
            }
            let n = data.dims[0] as i64;
            let vals = data.ints();
            let out: Result<Vec<i64>, String> = idx
                .ints()
                .iter()
                .map(|&i| {
                    let j = if i < 0 { i + n } else { i };
                    vals.get(j as usize)
                        .copied()
                        .ok_or_else(|| format!("index {i} out of range {n}"))
                })
                .collect();
            Ok(Const::i64s(idx.dims.clone(), out?))
        }
        "Slice" => {
            let data = &inputs[0];
            if data.dims.len() != 1 {
                return Err("only 1-D Slice is folded".into());
            }
            let pick =
                |i: usize, name: &str| inputs.get(i).map(|c| c.ints()).or_else(|| attr_ints(name));
            let starts = pick(1, "starts").ok_or("Slice without starts")?;
            let ends = pick(2, "ends").ok_or("Slice without ends")?;
            let steps = inputs.get(4).map(|c| c.ints()).unwrap_or_else(|| vec![1]);
            if starts.len() != 1 || ends.len() != 1 || steps != [1] {
                return Err("only a single-axis, step-1 Slice is folded".into());
            }
            let n = data.dims[0] as i64;
            let clamp = |v: i64| if v < 0 { (v + n).max(0) } else { v.min(n) };
            let (s, e) = (clamp(starts[0]), clamp(ends[0]));
            let v: Vec<i64> = data.ints()[s as usize..e.max(s) as usize].to_vec();
            Ok(Const::i64s(vec![v.len()], v))
        }
        "Concat" => {
            if inputs.iter().any(|c| c.dims.len() > 1) {
                return Err("only 1-D Concat is folded".into());
            }
            let v: Vec<i64> = inputs.iter().flat_map(|c| c.ints()).collect();
            Ok(Const::i64s(vec![v.len()], v))
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
            let (n, m) = (a.len(), b.len());
            if n == 0 || m == 0 {
                return Err("arithmetic on an empty constant is not folded".into());
            }
            if n != m && n != 1 && m != 1 {
                return Err("only equal-size or scalar constant arithmetic is folded".into());
            }
            let len = n.max(m);
            let dims = if n >= m {
                a.dims.clone()
            } else {
                b.dims.clone()
            };
            match (&a.data, &b.data) {
                (Data::I64(x), Data::I64(y)) => {
                    let v: Vec<i64> = (0..len)
                        .map(|i| {
                            let (p, q) = (x[i % n], y[i % m]);
                            if p == BATCH || q == BATCH {
                                return Ok(BATCH);
                            }
                            match op {
                                "Add" => p.checked_add(q),
                                "Sub" => p.checked_sub(q),
                                "Mul" => p.checked_mul(q),
                                _ if q == 0 => Some(0),
                                _ => p.checked_div(q),
                            }
                            .ok_or_else(|| format!("{op} of {p} and {q} overflows 64 bits"))
                        })
                        .collect::<Result<_, _>>()?;
                    Ok(Const::i64s(dims, v))
                }
                _ => {
                    let (x, y) = (a.floats(), b.floats());
                    let v: Vec<f32> = (0..len)
                        .map(|i| {
                            let (p, q) = (x[i % n], y[i % m]);
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
        other => Err(format!("'{other}' cannot be folded")),
    }
}
