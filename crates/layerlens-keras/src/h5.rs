//! The little of HDF5 a Keras file needs, behind a small trait so the reader
//! (today the pure-Rust `hdf5-reader`, no libhdf5) can be swapped.

use hdf5_reader::{Datatype, Hdf5File};

/// Read-only access to an HDF5 file's groups, attributes and float datasets.
/// Paths are `/`-separated from the root (`"model_weights/conv2d"`, `""` is the root).
pub(crate) trait H5Read {
    /// Names of the child groups of `path`, as stored (sorted by name).
    fn groups(&self, path: &str) -> Result<Vec<String>, String>;
    /// Names of the datasets directly in `path`.
    fn datasets(&self, path: &str) -> Result<Vec<String>, String>;
    /// Whether `path` is a group.
    fn is_group(&self, path: &str) -> bool;
    /// A string attribute (scalar, fixed- or variable-length); `None` if absent.
    fn attr_string(&self, path: &str, name: &str) -> Result<Option<String>, String>;
    /// A string-array attribute, joining Keras' split form (`name0`, `name1`, ...)
    /// used for attributes over HDF5's 64 KB header limit; `None` if absent.
    fn attr_strings(&self, path: &str, name: &str) -> Result<Option<Vec<String>>, String>;
    /// A float dataset as f32 (f64 is narrowed), with its dims.
    fn read_f32(&self, path: &str) -> Result<(Vec<usize>, Vec<f32>), String>;
}

/// HDF5's signature, at offset 0 of every file Keras writes.
pub(crate) const SIGNATURE: &[u8; 8] = b"\x89HDF\r\n\x1a\n";

/// An HDF5 file read from memory by `hdf5-reader`.
pub(crate) struct PureH5 {
    file: Hdf5File,
}

impl PureH5 {
    /// Parses `bytes` as HDF5.
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Result<Self, String> {
        if !bytes.starts_with(SIGNATURE) {
            return Err("not an HDF5 file (no HDF5 signature)".into());
        }
        let len = bytes.len() as u64;
        let file = Hdf5File::from_vec(bytes).map_err(|e| format!("unreadable HDF5 file: {e}"))?;
        // A cut-off file can still parse when what was lost is free space or
        // data read later; the superblock's end-of-file address tells.
        let sb = file.superblock();
        let declared = sb.base_address.saturating_add(sb.eof_address);
        if declared > len {
            return Err(format!(
                "truncated HDF5 file: its superblock declares {declared} bytes, the file holds {len}"
            ));
        }
        Ok(PureH5 { file })
    }

    fn group(&self, path: &str) -> Result<hdf5_reader::group::Group, String> {
        let r = if path.is_empty() || path == "/" {
            self.file.root_group()
        } else {
            self.file.group(path)
        };
        r.map_err(|e| format!("HDF5 group '/{path}': {e}"))
    }

    fn attribute(&self, path: &str, name: &str) -> Result<Option<hdf5_reader::Attribute>, String> {
        let attrs = match self.group(path) {
            Ok(g) => g.attributes(),
            Err(_) => match self.file.dataset(path) {
                Ok(d) => Ok(d.attributes()),
                Err(e) => return Err(format!("HDF5 object '/{path}': {e}")),
            },
        }
        .map_err(|e| format!("attributes of '/{path}': {e}"))?;
        Ok(attrs.into_iter().find(|a| a.name == name))
    }
}

fn strings_of(a: &hdf5_reader::Attribute) -> Result<Vec<String>, String> {
    a.read_strings()
        .or_else(|_| a.read_string().map(|s| vec![s]))
        .map_err(|e| format!("attribute '{}' is not a string: {e}", a.name))
}

impl H5Read for PureH5 {
    fn groups(&self, path: &str) -> Result<Vec<String>, String> {
        let (gs, _) = self
            .group(path)?
            .member_names()
            .map_err(|e| format!("members of '/{path}': {e}"))?;
        Ok(gs)
    }

    fn datasets(&self, path: &str) -> Result<Vec<String>, String> {
        let (_, ds) = self
            .group(path)?
            .member_names()
            .map_err(|e| format!("members of '/{path}': {e}"))?;
        Ok(ds)
    }

    fn is_group(&self, path: &str) -> bool {
        self.group(path).is_ok()
    }

    fn attr_string(&self, path: &str, name: &str) -> Result<Option<String>, String> {
        match self.attribute(path, name)? {
            None => Ok(None),
            Some(a) => {
                let v = strings_of(&a)?;
                match v.as_slice() {
                    [s] => Ok(Some(s.clone())),
                    _ => Err(format!(
                        "attribute '{name}' of '/{path}' holds {} strings, expected one",
                        v.len()
                    )),
                }
            }
        }
    }

    fn attr_strings(&self, path: &str, name: &str) -> Result<Option<Vec<String>>, String> {
        if let Some(a) = self.attribute(path, name)? {
            return strings_of(&a).map(Some);
        }
        let mut out = Vec::new();
        for k in 0.. {
            match self.attribute(path, &format!("{name}{k}"))? {
                Some(a) => out.extend(strings_of(&a)?),
                None if k == 0 => return Ok(None),
                None => break,
            }
        }
        Ok(Some(out))
    }

    fn read_f32(&self, path: &str) -> Result<(Vec<usize>, Vec<f32>), String> {
        let d = self
            .file
            .dataset(path)
            .map_err(|e| format!("dataset '/{path}': {e}"))?;
        let dims: Vec<usize> = d.shape().iter().map(|&v| v as usize).collect();
        let values: Vec<f32> = match d.dtype() {
            Datatype::FloatingPoint { size: 4, .. } => d.read_array::<f32>().map(|a| a.iter().copied().collect()),
            Datatype::FloatingPoint { size: 8, .. } => d
                .read_array::<f64>()
                .map(|a| a.iter().map(|&v| v as f32).collect()),
            // Counters stored beside weights (Normalization's `count`, int64).
            Datatype::FixedPoint { size: 8, signed: true, .. } => d
                .read_array::<i64>()
                .map(|a| a.iter().map(|&v| v as f32).collect()),
            Datatype::FixedPoint { size: 4, signed: true, .. } => d
                .read_array::<i32>()
                .map(|a| a.iter().map(|&v| v as f32).collect()),
            other => {
                return Err(format!(
                    "dataset '/{path}' has element type {other:?}; only float32, float64, int32 and int64 weights are supported"
                ))
            }
        }
        .map_err(|e| format!("dataset '/{path}': {e}"))?;
        let n: usize = dims.iter().product();
        if values.len() != n {
            return Err(format!(
                "dataset '/{path}' has {} values for dims {dims:?}",
                values.len()
            ));
        }
        Ok((dims, values))
    }
}
