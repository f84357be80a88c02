//! A bounded reader for NumPy `.npy` files (tensor inputs).
//!
//! candle's `Tensor::read_npy` trusts the header: it allocates what the shape
//! declares before reading, and parses the header dictionary loosely. This
//! reader checks everything against the bytes first: the magic and version
//! (1.0, 2.0, 3.0), the header length, the header dictionary (exactly the keys
//! `descr`, `fortran_order`, `shape`, as Python literals), the dtype, at most
//! [`MAX_RANK`] dimensions with a checked product, and that the data is
//! exactly `product × itemsize` bytes. Only then does it convert the values,
//! to float32 (the inputs' type).

use layerlens_core::candle_core::{Device, Tensor};
use layerlens_core::{Error, Result};

/// The most dimensions a `.npy` input may have.
pub const MAX_RANK: usize = 16;

/// The element types read (little- or big-endian, `<`, `>`, `|` or `=`):
/// `f2`, `f4`, `f8`, `i1`, `i2`, `i4`, `i8`, `u1`, `u2`, `u4`, `u8`, `b1`.
pub const DTYPES: &[&str] = &[
    "f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1",
];

/// Reads a `.npy` file as a float32 tensor.
pub fn read_npy(path: impl AsRef<std::path::Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    read_npy_bytes(&bytes, &path.display().to_string())
}

/// Reads the bytes of a `.npy` file as a float32 tensor of its shape (C
/// order; a Fortran-order array is transposed into C order). `what` names the
/// file in errors. A zero-sized array is refused.
///
/// ```
/// let mut f = b"\x93NUMPY\x01\x00".to_vec();
/// let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
/// let header = format!("{header:<117}\n");
/// f.extend((header.len() as u16).to_le_bytes());
/// f.extend(header.as_bytes());
/// f.extend(1.5f32.to_le_bytes());
/// f.extend((-2f32).to_le_bytes());
/// let t = layerlens::npy::read_npy_bytes(&f, "x.npy")?;
/// assert_eq!(t.to_vec1::<f32>()?, [1.5, -2.0]);
/// let e = layerlens::npy::read_npy_bytes(&f[..f.len() - 1], "x.npy").unwrap_err();
/// assert!(e.to_string().contains("holds 7 bytes of data, but shape [2] of <f4 needs 8"), "{e}");
/// # Ok::<(), layerlens::Error>(())
/// ```
pub fn read_npy_bytes(bytes: &[u8], what: &str) -> Result<Tensor> {
    let bad = |m: String| Error::Format {
        path: what.to_string(),
        message: m,
    };
    let rest = bytes
        .strip_prefix(b"\x93NUMPY")
        .ok_or_else(|| bad("not a .npy file (no \\x93NUMPY magic)".into()))?;
    let major = *rest.first().ok_or_else(|| bad("truncated".into()))?;
    let rest = rest.get(2..).ok_or_else(|| bad("truncated".into()))?;
    let (len_bytes, utf8) = match major {
        1 => (2, false),
        2 => (4, false),
        3 => (4, true),
        v => return Err(bad(format!("unsupported .npy version {v}"))),
    };
    let len_field = rest
        .get(..len_bytes)
        .ok_or_else(|| bad("truncated header length".into()))?;
    let header_len = len_field
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | b as usize);
    let rest = &rest[len_bytes..];
    if header_len > rest.len() {
        return Err(bad(format!(
            "header declares {header_len} bytes but the file has {} after it",
            rest.len()
        )));
    }
    let (header, data) = rest.split_at(header_len);
    if !utf8 && !header.is_ascii() {
        return Err(bad("header is not ASCII".into()));
    }
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not UTF-8".into()))?;
    let h = parse_header(header).map_err(|m| bad(format!("header: {m}")))?;
    let (order, kind, size) = parse_descr(&h.descr).map_err(|m| bad(format!("header: {m}")))?;
    let overflow = || bad(format!("shape {:?} overflows", h.shape));
    let count = h
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;
    if count == 0 {
        return Err(bad(format!("shape {:?} holds no values", h.shape)));
    }
    let need = count.checked_mul(size).ok_or_else(overflow)?;
    if data.len() != need {
        return Err(bad(format!(
            "holds {} bytes of data, but shape {:?} of {} needs {need}",
            data.len(),
            h.shape,
            h.descr
        )));
    }
    let values: Vec<f32> = data
        .chunks_exact(size)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..size].copy_from_slice(c);
            if order == '>' {
                b[..size].reverse();
            }
            convert(kind, size, b)
        })
        .collect();
    let dev = Device::Cpu;
    let t = if h.fortran_order && h.shape.len() > 1 {
        let rev: Vec<usize> = h.shape.iter().rev().copied().collect();
        let perm: Vec<usize> = (0..rev.len()).rev().collect();
        Tensor::from_vec(values, rev, &dev)?
            .permute(perm)?
            .contiguous()?
    } else {
        Tensor::from_vec(values, h.shape.clone(), &dev)?
    };
    Ok(t)
}

/// One little-endian element of `size` bytes (in `b[..size]`) as f32.
fn convert(kind: char, size: usize, b: [u8; 8]) -> f32 {
    let u = u64::from_le_bytes(b);
    match (kind, size) {
        ('f', 2) => half_to_f32(u as u16),
        ('f', 4) => f32::from_bits(u as u32),
        ('f', 8) => f64::from_bits(u) as f32,
        ('i', 1) => u as u8 as i8 as f32,
        ('i', 2) => u as u16 as i16 as f32,
        ('i', 4) => u as u32 as i32 as f32,
        ('i', 8) => u as i64 as f32,
        ('b', _) => (u != 0) as u8 as f32,
        _ => u as f32, // unsigned, checked by parse_descr
    }
}

/// IEEE half to single precision.
fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: f · 2^-24.
            let v = f as f32 * 2f32.powi(-24);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, f) => sign | 0x7fc0_0000 | (f << 13),
        (e, f) => sign | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// `(byte order, kind, item size)` of a dtype string such as `<f4`.
fn parse_descr(d: &str) -> std::result::Result<(char, char, usize), String> {
    let not_understood = || format!("dtype '{d}' is not understood");
    let mut c = d.chars();
    let (Some(order), Some(kind)) = (c.next(), c.next()) else {
        return Err(not_understood());
    };
    let size: usize = c.as_str().parse().map_err(|_| not_understood())?;
    let order = match order {
        '<' | '|' => '<',
        '=' if cfg!(target_endian = "little") => '<',
        '=' | '>' => '>',
        _ => return Err(not_understood()),
    };
    if !DTYPES.contains(&format!("{kind}{size}").as_str()) {
        return Err(format!(
            "dtype '{d}' is not supported (floats, integers and booleans: {})",
            DTYPES.join(", ")
        ));
    }
    Ok((order, kind, size))
}

struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parses the header dictionary: `{'descr': '<f4', 'fortran_order': False,
/// 'shape': (3, 4), }` with optional trailing commas and padding.
fn parse_header(h: &str) -> std::result::Result<Header, String> {
    let mut p = Parser {
        s: h.as_bytes(),
        i: 0,
    };
    p.ws();
    p.expect(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        p.ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.ws();
        p.expect(b':')?;
        p.ws();
        match key.as_str() {
            "descr" if descr.is_none() => descr = Some(p.string()?),
            "fortran_order" if fortran.is_none() => fortran = Some(p.boolean()?),
            "shape" if shape.is_none() => shape = Some(p.tuple()?),
            k => return Err(format!("unexpected or repeated key '{k}'")),
        }
        p.ws();
        if !p.eat(b',') {
            p.ws();
            p.expect(b'}')?;
            break;
        }
    }
    p.ws();
    if p.i != p.s.len() {
        return Err("text after the dictionary".into());
    }
    match (descr, fortran, shape) {
        (Some(descr), Some(fortran_order), Some(shape)) => Ok(Header {
            descr,
            fortran_order,
            shape,
        }),
        _ => Err("needs the keys 'descr', 'fortran_order' and 'shape'".into()),
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.i))
        }
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        let q = match self.s.get(self.i) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("expected a string at byte {}", self.i)),
        };
        self.i += 1;
        let start = self.i;
        while self.s.get(self.i).is_some_and(|&c| c != q && c != b'\\') {
            self.i += 1;
        }
        if !self.eat(q) {
            return Err(format!("unterminated or escaped string at byte {start}"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i - 1]).into_owned())
    }
    fn boolean(&mut self) -> std::result::Result<bool, String> {
        for (word, v) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if self.s[self.i..].starts_with(word) {
                self.i += word.len();
                return Ok(v);
            }
        }
        Err(format!("expected True or False at byte {}", self.i))
    }
    fn tuple(&mut self) -> std::result::Result<Vec<usize>, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            self.ws();
            if self.eat(b')') {
                return Ok(dims);
            }
            let start = self.i;
            while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                self.i += 1;
            }
            let d: usize = std::str::from_utf8(&self.s[start..self.i])
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| format!("expected a dimension at byte {start}"))?;
            dims.push(d);
            if dims.len() > MAX_RANK {
                return Err(format!("more than {MAX_RANK} dimensions"));
            }
            self.ws();
            if !self.eat(b',') {
                self.ws();
                self.expect(b')')?;
                return Ok(dims);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let f = if fortran { "True" } else { "False" };
        let header = format!("{{'descr': '{descr}', 'fortran_order': {f}, 'shape': {shape}, }}\n");
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend((header.len() as u16).to_le_bytes());
        v.extend(header.as_bytes());
        v.extend(data);
        v
    }

    #[test]
    fn dtypes_orders_and_layouts() {
        let f4: Vec<u8> = [1f32, 2., 3., 4., 5., 6.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let t = read_npy_bytes(&npy("<f4", false, "(2, 3)", &f4), "x").unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), [[1., 2., 3.], [4., 5., 6.]]);
        // Fortran order: the same bytes are the transpose's C order.
        let t = read_npy_bytes(&npy("<f4", true, "(3, 2)", &f4), "x").unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), [[1., 4.], [2., 5.], [3., 6.]]);
        let be: Vec<u8> = [1f64, -2.5].iter().flat_map(|v| v.to_be_bytes()).collect();
        let t = read_npy_bytes(&npy(">f8", false, "(2,)", &be), "x").unwrap();
        assert_eq!(t.to_vec1::<f32>().unwrap(), [1.0, -2.5]);
        let t = read_npy_bytes(&npy("|u1", false, "(3,)", &[0, 7, 255]), "x").unwrap();
        assert_eq!(t.to_vec1::<f32>().unwrap(), [0.0, 7.0, 255.0]);
        let t = read_npy_bytes(&npy("|i1", false, "(2,)", &[0xff, 3]), "x").unwrap();
        assert_eq!(t.to_vec1::<f32>().unwrap(), [-1.0, 3.0]);
        let h: Vec<u8> = [0x3c00u16, 0xc000, 0x7c00, 0x0001]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let t = read_npy_bytes(&npy("<f2", false, "(4,)", &h), "x").unwrap();
        assert_eq!(
            t.to_vec1::<f32>().unwrap(),
            [1.0, -2.0, f32::INFINITY, 2f32.powi(-24)]
        );
        // A scalar is shape ().
        let t = read_npy_bytes(&npy("<f4", false, "()", &f4[..4]), "x").unwrap();
        assert_eq!(t.dims(), &[] as &[usize]);
    }

    #[test]
    fn malformed_files_are_refused_before_allocating() {
        let f4 = 1f32.to_le_bytes();
        let deep = format!("({})", vec!["1"; 17].join(", "));
        for (bytes, want) in [
            (b"NUMPY".to_vec(), "magic"),
            (
                npy("<f4", false, "(4294967296, 4294967296)", &f4),
                "overflows",
            ),
            (
                npy("<f4", false, "(1000000000000,)", &f4),
                "needs 4000000000000",
            ),
            (npy("<f4", false, "(0, 3)", &[]), "holds no values"),
            (npy("<c8", false, "(1,)", &f4), "not supported"),
            (npy("O", false, "(1,)", &f4), "not understood"),
            (npy("<f4", false, &deep, &f4), "dimensions"),
            (npy("<f4", false, "(-1,)", &f4), "dimension"),
        ] {
            let e = read_npy_bytes(&bytes, "x.npy").unwrap_err().to_string();
            assert!(e.contains(want) && e.starts_with("x.npy: "), "{want}: {e}");
        }
        let mut short = npy("<f4", false, "(1,)", &f4);
        short[8] = 0xff; // header length past the end
        assert!(read_npy_bytes(&short, "x").is_err());
        // A key given twice.
        let mut dup = npy("<f4", false, "(1,)", &f4);
        let at = dup.windows(5).position(|w| w == b"'fort").unwrap();
        dup[at..at + 15].copy_from_slice(b"'descr': '<f4',");
        let e = read_npy_bytes(&dup, "x").unwrap_err().to_string();
        assert!(e.contains("repeated"), "{e}");
    }
}
