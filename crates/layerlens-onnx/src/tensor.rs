//! Decoding `TensorProto`s (inline or external data) into values.

use crate::proto::{data_type, TensorProto};
use std::path::Path;

/// A decoded tensor: its dims and its data, as f32 or i64.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Const {
    pub dims: Vec<usize>,
    pub data: Data,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// The batch entry of a folded `Shape`: unknown until run time. Multiples of
/// it, `N·k` (a batch axis merged with others, `N·12` heads), are the values
/// just above: see [`batch_times`] and [`batch_factor`].
pub(crate) const BATCH: i64 = i64::MIN;

/// The largest `k` of a batch multiple `N·k` shape arithmetic may build.
const MAX_BATCH_FACTOR: i64 = 1 << 40;

/// `N·k` as a folded shape value (`k ≥ 1`), or `None` past the largest factor.
pub(crate) fn batch_times(k: i64) -> Option<i64> {
    (1..=MAX_BATCH_FACTOR).contains(&k).then(|| BATCH + (k - 1))
}

/// The most negative integer a file's constant keeps: values below it (the
/// `INT64_MIN + 1` exporters write for "to the start" in a reversed `Slice`)
/// would read as batch multiples, so they are raised to it, which means the
/// same wherever such values are clamped to a dimension.
pub(crate) const MOST_NEGATIVE: i64 = BATCH + MAX_BATCH_FACTOR;

/// A constant from the file with its integers kept out of the batch multiples
/// ([`MOST_NEGATIVE`]).
pub(crate) fn from_file(mut c: Const) -> Const {
    if let Data::I64(v) = &mut c.data {
        for x in v.iter_mut() {
            *x = (*x).max(MOST_NEGATIVE);
        }
    }
    c
}

/// `k` if `v` is the folded value of `N·k`.
pub(crate) fn batch_factor(v: i64) -> Option<i64> {
    (v < BATCH + MAX_BATCH_FACTOR).then(|| v - BATCH + 1)
}

impl Const {
    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }
    pub fn ints(&self) -> Vec<i64> {
        match &self.data {
            Data::F32(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I64(v) => v.clone(),
        }
    }
    pub fn floats(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
    pub fn i64s(dims: Vec<usize>, v: Vec<i64>) -> Self {
        Const {
            dims,
            data: Data::I64(v),
        }
    }
}

fn le_chunks<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    raw.chunks_exact(N)
        .map(|c| c.try_into().expect("chunk size"))
}

/// The bytes of an external-data tensor: `location` must be a relative path
/// inside `base` (no `..`, not absolute), and only `offset..offset + length`
/// of the file is read, after checking that the file holds it.
fn read_external(t: &TensorProto, base: &Path) -> Result<Vec<u8>, String> {
    use std::io::{Read, Seek, SeekFrom};
    let get = |k: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == k)
            .map(|e| e.value.clone())
    };
    let loc = get("location").ok_or("external data without a location")?;
    let rel = Path::new(&loc);
    if loc.is_empty()
        || !rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!(
            "external data location '{}' is not a relative path inside the model's directory",
            loc.escape_debug()
        ));
    }
    let path = base.join(rel);
    let mut f = std::fs::File::open(&path)
        .map_err(|e| format!("external data file {}: {e}", path.display()))?;
    let size = f
        .metadata()
        .map_err(|e| format!("external data file {}: {e}", path.display()))?
        .len();
    let number = |k: &str| -> Result<Option<u64>, String> {
        get(k)
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("bad {k} '{}'", v.escape_debug()))
            })
            .transpose()
    };
    let offset = number("offset")?.unwrap_or(0);
    let length = match number("length")? {
        Some(l) => l,
        None => size.saturating_sub(offset),
    };
    let end = offset
        .checked_add(length)
        .filter(|&e| e <= size)
        .ok_or_else(|| {
            format!(
            "external data {}: {length} bytes at offset {offset} lie past its end ({size} bytes)",
            path.display()
        )
        })?;
    let mut bytes = Vec::with_capacity((end - offset) as usize);
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.take(length).read_to_end(&mut bytes))
        .map_err(|e| format!("external data file {}: {e}", path.display()))?;
    if bytes.len() as u64 != length {
        return Err(format!(
            "external data {}: the file is shorter than it was",
            path.display()
        ));
    }
    Ok(bytes)
}

/// Decodes `t`; `base` is the directory external data paths are relative to.
pub(crate) fn decode(t: &TensorProto, base: &Path) -> Result<Const, String> {
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
        .collect::<Result<_, _>>()?;
    let n = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("dims {dims:?}: the element count overflows"))?;
    let external;
    let raw: &[u8] = if t.data_location == 1 {
        external = read_external(t, base)?;
        &external
    } else {
        &t.raw_data
    };
    let elem = match t.data_type {
        data_type::FLOAT | data_type::INT32 => 4,
        data_type::DOUBLE | data_type::INT64 => 8,
        _ => 1,
    };
    if !raw.len().is_multiple_of(elem) {
        return Err(format!(
            "raw data of {} bytes is not a whole number of {elem}-byte values",
            raw.len()
        ));
    }
    let data = match t.data_type {
        data_type::FLOAT if !raw.is_empty() => Data::F32(le_chunks::<4>(raw).map(f32::from_le_bytes).collect()),
        data_type::FLOAT => Data::F32(t.float_data.clone()),
        data_type::DOUBLE if !raw.is_empty() => Data::F32(le_chunks::<8>(raw).map(|b| f64::from_le_bytes(b) as f32).collect()),
        data_type::DOUBLE => Data::F32(t.double_data.iter().map(|&x| x as f32).collect()),
        data_type::INT64 if !raw.is_empty() => Data::I64(le_chunks::<8>(raw).map(i64::from_le_bytes).collect()),
        data_type::INT64 => Data::I64(t.int64_data.clone()),
        data_type::INT32 if !raw.is_empty() => Data::I64(le_chunks::<4>(raw).map(|b| i32::from_le_bytes(b) as i64).collect()),
        data_type::INT32 | data_type::INT8 | data_type::UINT8 | data_type::BOOL if raw.is_empty() => {
            Data::I64(t.int32_data.iter().map(|&x| x as i64).collect())
        }
        data_type::INT8 => Data::I64(raw.iter().map(|&b| b as i8 as i64).collect()),
        data_type::UINT8 | data_type::BOOL => Data::I64(raw.iter().map(|&b| b as i64).collect()),
        other => return Err(format!("unsupported tensor data type {other} (float32, float64, int64, int32, int8, uint8, bool are)")),
    };
    let c = Const { dims, data };
    if c.len() != n {
        return Err(format!(
            "holds {} values but its dims {:?} need {n}",
            c.len(),
            c.dims
        ));
    }
    Ok(c)
}

/// Decodes a `TensorProto` (inline data only) into a tensor on the CPU: float
/// types as `f32`, integer and boolean types as `i64`. This reads the
/// `input_0.pb` / `output_0.pb` files of ONNX test data sets.
pub fn tensor_from_proto(t: &TensorProto) -> layerlens_core::Result<candle_core::Tensor> {
    let bad = |message: String| layerlens_core::Error::Format {
        path: format!("tensor '{}'", t.name),
        message,
    };
    if t.data_location == 1 {
        return Err(bad("external data is not read here".into()));
    }
    let c = decode(t, Path::new(".")).map_err(bad)?;
    let dev = &candle_core::Device::Cpu;
    Ok(match c.data {
        Data::F32(v) => candle_core::Tensor::from_vec(v, c.dims, dev)?,
        Data::I64(v) => candle_core::Tensor::from_vec(v, c.dims, dev)?,
    })
}
