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
                                // The batch size stays the batch size only through
                                // + 0, · 1 and / 1; anything else (N·3, N/2) would
                                // reshape across samples, which must not pass as N.
                                let other = if p == BATCH { q } else { p };
                                let keeps = match op {
                                    "Add" => other == 0,
                                    "Sub" => q == 0 && p == BATCH,
                                    "Mul" => other == 1,
                                    _ => q == 1 && p == BATCH,
                                };
                                return if keeps {
                                    Ok(BATCH)
                                } else {
                                    Err(format!(
                                        "{op} of the batch size and {other}: arithmetic on the batch size is not supported"
                                    ))
                                };
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

/// `Max`, `Min` or `Sum` of two equal-size or scalar constants. The batch size
/// is only known to be at least 1, so it takes part only as `Max(N, 1)`,
/// `Min(N, N)`-like identities: anything else is refused.
fn fold_extremum(op: &str, a: &Const, b: &Const) -> Result<Const, String> {
    let (n, m) = (a.len(), b.len());
    if n == 0 || m == 0 {
        return Err(format!("{op} of an empty constant is not folded"));
    }
    if n != m && n != 1 && m != 1 {
        return Err(format!(
            "only equal-size or scalar constants are folded ({op})"
        ));
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
                        let other = if p == BATCH { q } else { p };
                        return match op {
                            _ if other == BATCH && op != "Sum" => Ok(BATCH),
                            "Max" if other <= 1 => Ok(BATCH),
                            _ => Err(format!(
                                "{op} of the batch size and {other}: arithmetic on the batch size is not supported"
                            )),
                        };
                    }
                    match op {
                        "Max" => Ok(p.max(q)),
                        "Min" => Ok(p.min(q)),
                        _ => p
                            .checked_add(q)
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
                    let (p, q) = (x[i % n], y[i % m]);
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

    /// The batch size passes only through identities; `N·3` as a reshape
    /// target would move values across samples.
    #[test]
    fn arithmetic_on_the_batch_size_is_refused_except_identities() {
        assert_eq!(run("Mul", &[BATCH], &[1]).unwrap(), [BATCH]);
        assert_eq!(run("Add", &[0], &[BATCH]).unwrap(), [BATCH]);
        assert_eq!(run("Div", &[BATCH], &[1]).unwrap(), [BATCH]);
        for (op, a, b) in [
            ("Mul", BATCH, 3),
            ("Div", BATCH, 2),
            ("Add", BATCH, 1),
            ("Sub", 0, BATCH),
            ("Div", 1, BATCH),
        ] {
            let e = run(op, &[a], &[b]).unwrap_err();
            assert!(e.contains("arithmetic on the batch size"), "{op}: {e}");
        }
        assert_eq!(run("Mul", &[4, 5], &[2]).unwrap(), [8, 10]);
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
