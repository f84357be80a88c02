//! The `layerlens` Python module (`layerlens._layerlens`, wrapped by the pure
//! Python package in `python/layerlens`). Every model and input spec goes
//! through `layerlens::spec`, the same code as the CLI, so the numbers agree.
//!
//! Rules kept here (docs/python.md):
//! - the GIL is released for every computation (`Python::detach`);
//! - each model runs on its own rayon pool of `threads` workers (`threads=`,
//!   else `LAYERLENS_NUM_THREADS`, else `OMP_NUM_THREADS`, else the cores),
//!   rebuilt when the process id changes, since a forked child (Spark's
//!   Python workers) inherits the pool but not its threads;
//! - numpy arrays come out without a copy beyond the one out of the tensor.

use layerlens::candle_core::{DType, Device, Tensor};
use layerlens::prelude::*;
use layerlens::spec::{self, Apply, Preset};
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{IntoPyArray, PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{
    PyConnectionError, PyFileNotFoundError, PyOSError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pyo3::create_exception!(
    _layerlens,
    LayerlensError,
    PyValueError,
    "A layerlens error: bad input, unknown layer, shape mismatch, unsupported op."
);

/// A layerlens error as a Python exception: I/O failures are `OSError`, the
/// rest `LayerlensError` (a `ValueError`), with the library's one-line message.
fn to_py(e: layerlens::Error) -> PyErr {
    match e {
        layerlens::Error::Io { ref source, .. }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            PyFileNotFoundError::new_err(e.to_string())
        }
        layerlens::Error::Io { .. } => PyOSError::new_err(e.to_string()),
        layerlens::Error::Download { .. } => PyConnectionError::new_err(e.to_string()),
        _ => LayerlensError::new_err(e.to_string()),
    }
}

fn candle_to_py(e: layerlens::candle_core::Error) -> PyErr {
    to_py(layerlens::Error::from(e))
}

/// The thread count: explicit, else `LAYERLENS_NUM_THREADS`, else
/// `OMP_NUM_THREADS` (Ray and Spark set it per worker), else the cores.
fn thread_count(explicit: Option<usize>) -> PyResult<usize> {
    if let Some(n) = explicit {
        if n == 0 {
            return Err(PyValueError::new_err("threads must be at least 1"));
        }
        return Ok(n);
    }
    for var in ["LAYERLENS_NUM_THREADS", "OMP_NUM_THREADS"] {
        if let Ok(v) = std::env::var(var) {
            // OMP_NUM_THREADS may be a list ("4,2"): its first level counts.
            let first = v.split(',').next().unwrap_or("").trim();
            match first.parse::<usize>() {
                Ok(n) if n > 0 => return Ok(n),
                _ => {
                    return Err(PyValueError::new_err(format!(
                        "{var}={v:?} is not a positive thread count"
                    )))
                }
            }
        }
    }
    Ok(std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// A rayon pool that belongs to one process: after a `fork` the child builds
/// its own (the parent's worker threads do not exist in the child).
struct Pool {
    threads: usize,
    inner: Mutex<Option<(u32, Arc<rayon::ThreadPool>)>>,
}

impl Pool {
    fn new(threads: usize) -> Self {
        Pool {
            threads,
            inner: Mutex::new(None),
        }
    }

    fn get(&self) -> PyResult<Arc<rayon::ThreadPool>> {
        let pid = std::process::id();
        let mut slot = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((owner, pool)) = slot.as_ref() {
            if *owner == pid {
                return Ok(pool.clone());
            }
            // Inherited through fork: its threads are gone, and dropping it
            // would signal threads that do not exist. Leak it.
            if let Some((_, old)) = slot.take() {
                std::mem::forget(old);
            }
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads)
            .thread_name(|i| format!("layerlens-{i}"))
            .build()
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start threads: {e}")))?;
        let pool = Arc::new(pool);
        *slot = Some((pid, pool.clone()));
        Ok(pool)
    }
}

/// A float32 array (any layout, read-only accepted) as a tensor.
fn tensor_from(x: &PyReadonlyArrayDyn<'_, f32>) -> PyResult<Tensor> {
    let shape = x.shape().to_vec();
    let t = match x.as_slice() {
        Ok(s) => Tensor::from_slice(s, shape.as_slice(), &Device::Cpu),
        Err(_) => {
            let owned: Vec<f32> = x.as_array().iter().copied().collect();
            Tensor::from_vec(owned, shape.as_slice(), &Device::Cpu)
        }
    };
    t.map_err(candle_to_py)
}

/// Any array-like as a tensor: float32 arrays as they are (no conversion),
/// anything else through `numpy.asarray(x, dtype=float32)`.
fn tensor_from_any(x: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    if let Ok(a) = x.extract::<PyReadonlyArrayDyn<'_, f32>>() {
        return tensor_from(&a);
    }
    let np = x.py().import("numpy")?;
    let f32_type = np.getattr("float32")?;
    let kwargs = PyDict::new(x.py());
    kwargs.set_item("dtype", f32_type)?;
    let a = np.call_method("asarray", (x,), Some(&kwargs))?;
    tensor_from(&a.extract::<PyReadonlyArrayDyn<'_, f32>>()?)
}

/// A tensor as an owned float32 array (one copy, out of the tensor's storage).
fn array_from(t: &Tensor) -> layerlens::Result<ArrayD<f32>> {
    let dims = t.dims().to_vec();
    let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    ArrayD::from_shape_vec(IxDyn(&dims), values)
        .map_err(|e| layerlens::Error::invalid("numpy", e.to_string()))
}

/// Layer selectors from a string (`"conv*, dense"`, `"all"`) or a list of strings.
fn selectors(layers: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if let Ok(s) = layers.cast::<PyString>() {
        let s = s.to_str()?;
        return Ok(spec::parse_layers(s)
            .map_err(to_py)?
            .into_iter()
            .map(String::from)
            .collect());
    }
    let list: Vec<String> = layers
        .extract()
        .map_err(|_| PyTypeError::new_err("layers must be a string or a list of strings"))?;
    if list.is_empty() {
        return Err(to_py(layerlens::Error::invalid(
            "layers",
            "no layers given: use node names, globs or `all`",
        )));
    }
    Ok(list)
}

fn apply_from(apply: Option<&str>) -> PyResult<Option<Apply>> {
    apply.map(Apply::parse).transpose().map_err(to_py)
}

/// An image given as a path (str or os.PathLike) or as encoded bytes.
enum ImageArg {
    Path(PathBuf),
    Bytes(Vec<u8>, String),
}

fn image_args(images: &Bound<'_, PyAny>) -> PyResult<Vec<ImageArg>> {
    let one = |item: &Bound<'_, PyAny>, i: usize| -> PyResult<ImageArg> {
        if let Ok(b) = item.cast::<PyBytes>() {
            return Ok(ImageArg::Bytes(
                b.as_bytes().to_vec(),
                format!("image[{i}]"),
            ));
        }
        if let Ok(b) = item.extract::<Vec<u8>>() {
            if !item.is_instance_of::<PyString>() {
                return Ok(ImageArg::Bytes(b, format!("image[{i}]")));
            }
        }
        item.extract::<PathBuf>().map(ImageArg::Path).map_err(|_| {
            PyTypeError::new_err(format!(
                "image[{i}]: expected a path (str, os.PathLike) or encoded bytes, got {}",
                item.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })
    };
    // A single path or bytes object is a batch of one.
    if images.is_instance_of::<PyString>() || images.is_instance_of::<PyBytes>() {
        return Ok(vec![one(images, 0)?]);
    }
    if let Ok(p) = images.extract::<PathBuf>() {
        return Ok(vec![ImageArg::Path(p)]);
    }
    let mut out = Vec::new();
    for (i, item) in images.try_iter()?.enumerate() {
        out.push(one(&item?, i)?);
    }
    Ok(out)
}

/// A removable forward hook, as PyTorch's `RemovableHandle`.
#[pyclass(module = "layerlens._layerlens")]
struct HookHandle {
    inner: Mutex<Option<layerlens::hooks::HookHandle>>,
}

#[pymethods]
impl HookHandle {
    /// Removes the hook (idempotent).
    fn remove(&self) {
        if let Some(h) = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take() {
            h.remove();
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        _t: Option<Bound<'_, PyAny>>,
        _v: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) {
        self.remove();
    }
}

/// A layerlens model: a graph whose every node is an output.
#[pyclass(module = "layerlens._layerlens", frozen)]
struct Model {
    model: layerlens::Model,
    /// For an ONNX file of symbolic input size: its imports by size, sharing
    /// `model`'s weights and hooks; arrays of another size run on theirs.
    sizes: Option<Arc<layerlens::onnx::ShapeCache>>,
    /// How it was opened, when it was (for `repr`).
    spec: Option<String>,
    pool: Pool,
    /// Hooks' Python exceptions, raised again after the pass.
    hook_errors: Arc<Mutex<Vec<PyErr>>>,
}

impl Model {
    fn wrap(model: layerlens::Model, spec: Option<String>, threads: usize) -> Self {
        Model {
            model,
            sizes: None,
            spec,
            pool: Pool::new(threads),
            hook_errors: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The model for the batch `x`: this one, or for an ONNX file of symbolic
    /// input size whose arrays come at another size, its import at that size
    /// (made once, cached, sharing weights and hooks).
    fn sized_for(&self, x: &Tensor) -> layerlens::Result<layerlens::Model> {
        let g = self.model.graph();
        let same = g
            .inputs()
            .first()
            .is_some_and(|&id| g.node(id).shape.dims() == x.dims().get(1..).unwrap_or(&[]));
        match &self.sizes {
            Some(cache) if !same => cache.model_for_inputs(std::slice::from_ref(x)),
            _ => Ok(self.model.clone()),
        }
    }

    /// Runs `f` on this model's pool with the GIL released; a hook's Python
    /// exception is raised in preference to the error it caused.
    fn compute<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce() -> layerlens::Result<T> + Send,
    ) -> PyResult<T> {
        let pool = self.pool.get()?;
        let r = py.detach(|| pool.install(f));
        let mut errors = self.hook_errors.lock().unwrap_or_else(|e| e.into_inner());
        if !errors.is_empty() {
            let first = errors.remove(0);
            errors.clear();
            return Err(first);
        }
        r.map_err(to_py)
    }

    fn to_dict<'py>(
        py: Python<'py>,
        arrays: Vec<(String, ArrayD<f32>)>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, a) in arrays {
            d.set_item(name, a.into_pyarray(py))?;
        }
        Ok(d)
    }

    /// Runs the extraction model over `x` in batches of `batch_size`.
    fn run_batches(
        xmodel: &layerlens::Model,
        names: &[String],
        x: &Tensor,
        batch_size: Option<usize>,
    ) -> layerlens::Result<Vec<(String, ArrayD<f32>)>> {
        let n = x.dim(0)?;
        let step = batch_size.unwrap_or(n).max(1);
        let mut parts: Vec<Vec<Tensor>> = vec![Vec::new(); names.len()];
        let mut start = 0;
        while start < n {
            let len = step.min(n - start);
            // Batch-first, so that batches join along axis 0; each is then
            // laid out as the model's tensor is (its ONNX view).
            let outs = xmodel.forward_batch_first(&[x.narrow(0, start, len)?])?;
            for (p, o) in parts.iter_mut().zip(outs) {
                p.push(o);
            }
            start += len;
        }
        let views = xmodel.output_views();
        names
            .iter()
            .zip(parts)
            .zip(views)
            .map(|((name, p), view)| {
                let t = match <[Tensor; 1]>::try_from(p) {
                    Ok([t]) => t,
                    Err(p) => Tensor::cat(&p, 0)?,
                };
                let t = match view {
                    Some(v) => v.present(&t, name)?,
                    None => t,
                };
                Ok((name.clone(), array_from(&t)?))
            })
            .collect()
    }

    fn preset(preprocess: &str) -> PyResult<Preset> {
        Preset::parse(preprocess).map_err(to_py)
    }

    /// Decodes and preprocesses images in parallel, in Rust, as the CLI does.
    fn load_images(&self, images: &[ImageArg], preset: Preset) -> layerlens::Result<Tensor> {
        use rayon::prelude::*;
        let loader = layerlens::preprocess::ImageLoader::for_model(&self.model, preset)?;
        let tensors: Vec<Tensor> = images
            .par_iter()
            .map(|img| match img {
                ImageArg::Path(p) => loader.load(p),
                ImageArg::Bytes(b, what) => loader.load_bytes(b, what),
            })
            .collect::<layerlens::Result<_>>()?;
        if tensors.is_empty() {
            return Err(layerlens::Error::invalid(
                "extract_images",
                "no images given",
            ));
        }
        Ok(Tensor::cat(&tensors, 0)?)
    }
}

#[pymethods]
impl Model {
    /// Opens a model: an `.onnx` file, a directory written by `save`, or
    /// `zoo:NAME[=WEIGHTS]` (the CLI's MODEL argument). For an ONNX file whose
    /// input sizes are symbolic, `input_shape` gives the per-sample shape
    /// (`(3, 640, 640)`, or `{"images": (3, 640, 640)}` for several inputs)
    /// and `dims` sizes by ONNX name (`{"height": 640}`), like the CLI's
    /// `--input-shape` and `--dim`. For a Keras file, `bind` runs layerlens
    /// Lambdas in place of Keras Lambda layers (never executed):
    /// `{"spatial_mean": 'mean({"axes": [2, 3]})'}`, like `--bind`.
    #[staticmethod]
    #[pyo3(signature = (spec, *, threads=None, input_shape=None, dims=None, bind=None))]
    fn load(
        py: Python<'_>,
        spec: &str,
        threads: Option<usize>,
        input_shape: Option<&Bound<'_, PyAny>>,
        dims: Option<std::collections::HashMap<String, usize>>,
        bind: Option<std::collections::BTreeMap<String, String>>,
    ) -> PyResult<Self> {
        let threads = thread_count(threads)?;
        let mut shapes = spec::OpenOptions::default();
        if let Some(s) = input_shape {
            if let Ok(d) = s.cast::<PyDict>() {
                for (k, v) in d.iter() {
                    shapes.input_shapes.insert(k.extract()?, v.extract()?);
                }
            } else {
                let shape: Vec<usize> = s.extract().map_err(|_| {
                    PyTypeError::new_err(
                        "input_shape: a tuple of sizes (C, H, W) or a dict of them by input name",
                    )
                })?;
                shapes.input_shapes.insert(String::new(), shape);
            }
        }
        if let Some(d) = dims {
            shapes.dims = d;
        }
        for (layer, lambda) in bind.unwrap_or_default() {
            shapes
                .add_binding(&format!("{layer}={lambda}"))
                .map_err(to_py)?;
        }
        if let Some(w) = spec::random_weights_warning(spec) {
            PyErr::warn(
                py,
                &py.get_type::<pyo3::exceptions::PyRuntimeWarning>(),
                &std::ffi::CString::new(w).unwrap_or_default(),
                1,
            )?;
        }
        let spec_owned = spec.to_string();
        let (sizes, model) = py
            .detach(|| match spec::open_onnx_sizes(&spec_owned, &shapes, 4)? {
                Some((cache, model)) => Ok((Some(cache), model)),
                None => spec::open_model_with(&spec_owned, &shapes).map(|m| (None, m)),
            })
            .map_err(to_py)?;
        let mut wrapped = Model::wrap(model, Some(spec.to_string()), threads);
        wrapped.sizes = sizes;
        Ok(wrapped)
    }

    /// The model's name.
    #[getter]
    fn name(&self) -> String {
        self.model.name().to_string()
    }

    /// Worker threads of this model's pool.
    #[getter]
    fn threads(&self) -> usize {
        self.pool.threads
    }

    /// Every node's name, in graph order (inputs first).
    #[getter]
    fn node_names(&self) -> Vec<String> {
        self.model
            .graph()
            .nodes()
            .iter()
            .map(|n| n.name.clone())
            .collect()
    }

    /// The inputs as `(name, shape)`, the shape with `None` for the batch axis.
    #[getter]
    fn inputs<'py>(&self, py: Python<'py>) -> PyResult<Vec<(String, Bound<'py, PyAny>)>> {
        self.shapes(py, self.model.graph().inputs())
    }

    /// The outputs as `(name, shape)`, the shape with `None` for the batch axis.
    #[getter]
    fn outputs<'py>(&self, py: Python<'py>) -> PyResult<Vec<(String, Bound<'py, PyAny>)>> {
        self.shapes(py, self.model.graph().outputs())
    }

    /// The table `layerlens summary` prints: name, op, shape, parameters, MACs.
    fn summary(&self) -> String {
        self.model.summary().to_string()
    }

    /// Activations of the selected layers for a float32 batch `x` (NCHW for
    /// image models), as `{node name: array}` in selector order. `layers` is
    /// a name, a glob, `"all"`, a comma-separated string of them, or a list;
    /// `apply` is a built-in Lambda (`mean`, `max`, `l2_normalize`, `flatten`).
    #[pyo3(signature = (x, layers, *, apply=None, batch_size=None))]
    fn extract<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        layers: &Bound<'py, PyAny>,
        apply: Option<&str>,
        batch_size: Option<usize>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let sel = selectors(layers)?;
        let apply = apply_from(apply)?;
        let x = tensor_from_any(x)?;
        let arrays = self.compute(py, || {
            let refs: Vec<&str> = sel.iter().map(String::as_str).collect();
            let model = self.sized_for(&x)?;
            let (xmodel, names) = spec::extraction_model(&model, &refs, apply)?;
            Self::run_batches(&xmodel, &names, &x, batch_size)
        })?;
        Self::to_dict(py, arrays)
    }

    /// As `extract`, from images: paths or encoded bytes (PNG, JPEG), decoded,
    /// resized and normalised in Rust exactly as the CLI's `--preprocess`
    /// (`unit`, `imagenet`, `efficientnet-lite`, Keras' `caffe`, `tf`, `raw`).
    #[pyo3(signature = (images, layers, *, preprocess="unit", apply=None, batch_size=None))]
    fn extract_images<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        layers: &Bound<'py, PyAny>,
        preprocess: &str,
        apply: Option<&str>,
        batch_size: Option<usize>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let sel = selectors(layers)?;
        let apply = apply_from(apply)?;
        let preset = Self::preset(preprocess)?;
        let images = image_args(images)?;
        let arrays = self.compute(py, || {
            let x = self.load_images(&images, preset)?;
            let refs: Vec<&str> = sel.iter().map(String::as_str).collect();
            let model = self.sized_for(&x)?;
            let (xmodel, names) = spec::extraction_model(&model, &refs, apply)?;
            Self::run_batches(&xmodel, &names, &x, batch_size)
        })?;
        Self::to_dict(py, arrays)
    }

    /// Images decoded and preprocessed as `extract_images` sees them, `(N, C, H, W)`.
    #[pyo3(signature = (images, *, preprocess="unit"))]
    fn preprocess<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        preprocess: &str,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let preset = Self::preset(preprocess)?;
        let images = image_args(images)?;
        let a = self.compute(py, || array_from(&self.load_images(&images, preset)?))?;
        Ok(a.into_pyarray(py))
    }

    /// A class activation map: `image` is a path, encoded bytes, or a float32
    /// `(1, C, H, W)` array already preprocessed. Returns a dict with
    /// `heatmap` (`(H, W)` in [0, 1], at the input's size), `raw` (at the
    /// layer's size), `class_index` and `score`.
    #[pyo3(signature = (image, layer, *, method="gradcam++", class_index=None, preprocess="unit"))]
    fn cam<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
        layer: &str,
        method: &str,
        class_index: Option<usize>,
        preprocess: &str,
    ) -> PyResult<Bound<'py, PyDict>> {
        use layerlens::viz::cam::{cam, CamMethod, CamOptions};
        let method = CamMethod::parse(method).map_err(to_py)?;
        let x = match image.extract::<PyReadonlyArrayDyn<'py, f32>>() {
            Ok(a) => Some(tensor_from(&a)?),
            Err(_) => None,
        };
        let images = if x.is_none() {
            image_args(image)?
        } else {
            Vec::new()
        };
        let preset = Self::preset(preprocess)?;
        let layer = layer.to_string();
        let (class, score, heat, raw) = self.compute(py, || {
            let x = match x {
                Some(x) => x,
                None => self.load_images(&images, preset)?,
            };
            let opts = CamOptions {
                class: class_index,
                ..CamOptions::new(method, &layer)
            };
            let c = cam(&self.sized_for(&x)?, &x, &opts)?.remove(0);
            Ok((
                c.class,
                c.score,
                array_from(&c.heatmap)?,
                array_from(&c.raw)?,
            ))
        })?;
        let d = PyDict::new(py);
        d.set_item("heatmap", heat.into_pyarray(py))?;
        d.set_item("raw", raw.into_pyarray(py))?;
        d.set_item("class_index", class)?;
        d.set_item("score", score)?;
        Ok(d)
    }

    /// Gradients of a scalar with respect to activations (and inputs): the
    /// scalar is `target`'s value summed over the batch, at `class_index` when
    /// given (a class logit), else over every element. Returns `{wrt: grad}`.
    #[pyo3(signature = (x, target, wrt, *, class_index=None))]
    fn gradients<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        target: &str,
        wrt: &Bound<'py, PyAny>,
        class_index: Option<usize>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let wrt = selectors(wrt)?;
        let x = tensor_from_any(x)?;
        let target = target.to_string();
        let arrays = self.compute(py, || {
            let g = self.sized_for(&x)?.gradients(
                std::slice::from_ref(&x),
                &[target.as_str()],
                &wrt,
                Mode::Eval,
                |acts| {
                    let t = acts.get(&target)?;
                    let t = match class_index {
                        Some(c) => {
                            let classes = t.dim(1)?;
                            if c >= classes {
                                return Err(layerlens::Error::invalid(
                                    &target,
                                    format!("class_index {c} out of range: {classes} classes"),
                                ));
                            }
                            t.narrow(1, c, 1)?
                        }
                        None => t.clone(),
                    };
                    Ok(t.sum_all()?)
                },
            )?;
            g.grads
                .into_vec()
                .into_iter()
                .map(|(n, t)| Ok((n, array_from(&t)?)))
                .collect::<layerlens::Result<Vec<_>>>()
        })?;
        Self::to_dict(py, arrays)
    }

    /// A model whose outputs are the selected layers, sharing these weights.
    fn submodel(&self, layers: &Bound<'_, PyAny>) -> PyResult<Self> {
        let sel = selectors(layers)?;
        let m = self.model.submodel(&sel).map_err(to_py)?;
        Ok(Model::wrap(m, None, self.pool.threads))
    }

    /// Saves the model (`model.json` + `model.safetensors`) into `dir`;
    /// `Model.load(dir)` reads it back.
    fn save(&self, py: Python<'_>, dir: PathBuf) -> PyResult<()> {
        self.compute(py, || self.model.save(&dir))
    }

    /// Registers `fn(node_name, array)` on the nodes `selector` picks (a name,
    /// a glob, a shared layer's name). It runs after each such node, with the
    /// GIL held; returning an array of the same shape replaces the activation
    /// downstream (as a PyTorch forward hook returning a value). Exceptions
    /// it raises are raised again from the call that ran the model.
    fn register_forward_hook(&self, selector: &str, hook: Py<PyAny>) -> PyResult<HookHandle> {
        let errors = self.hook_errors.clone();
        let hook = Arc::new(hook);
        let handle = self
            .model
            .register_forward_hook(selector, move |ctx, t| {
                let failed = |e: PyErr| {
                    errors.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                    layerlens::Error::Lambda(format!(
                        "{}: the Python forward hook raised an exception",
                        ctx.node
                    ))
                };
                let a = array_from(t)?;
                Python::attach(|py| -> layerlens::Result<Option<Tensor>> {
                    let r = hook
                        .call1(py, (ctx.node, a.into_pyarray(py)))
                        .map_err(failed)?;
                    if r.is_none(py) {
                        return Ok(None);
                    }
                    let arr = r.extract::<PyReadonlyArrayDyn<'_, f32>>(py).map_err(|_| {
                        failed(PyTypeError::new_err(format!(
                            "forward hook on {}: return None or a float32 array",
                            ctx.node
                        )))
                    })?;
                    if arr.shape() != t.dims() {
                        return Err(failed(PyValueError::new_err(format!(
                            "forward hook on {}: returned shape {:?}, the activation is {:?}",
                            ctx.node,
                            arr.shape(),
                            t.dims()
                        ))));
                    }
                    Ok(Some(tensor_from(&arr).map_err(failed)?))
                })
            })
            .map_err(to_py)?;
        Ok(HookHandle {
            inner: Mutex::new(Some(handle)),
        })
    }

    /// Pickling: the graph and the weights, as `save` writes them.
    fn __getstate__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (json, weights) = self.compute(py, || {
            let dir = scratch_dir()?;
            let r = (|| {
                self.model.save(&dir)?;
                let read = |name: &str| {
                    std::fs::read(dir.join(name)).map_err(|source| layerlens::Error::Io {
                        path: dir.join(name).display().to_string(),
                        source,
                    })
                };
                Ok((read("model.json")?, read("model.safetensors")?))
            })();
            let _ = std::fs::remove_dir_all(&dir);
            r
        })?;
        let d = PyDict::new(py);
        d.set_item("model.json", PyBytes::new(py, &json))?;
        d.set_item("model.safetensors", PyBytes::new(py, &weights))?;
        d.set_item("spec", self.spec.clone())?;
        d.set_item("threads", self.pool.threads)?;
        Ok(d)
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let state = slf.get().__getstate__(py)?;
        let rebuild = py
            .import("layerlens._layerlens")?
            .getattr("_model_from_state")?;
        (rebuild, (state,)).into_pyobject(py).map(|t| t.into_any())
    }

    fn __repr__(&self) -> String {
        let g = self.model.graph();
        match &self.spec {
            Some(s) => format!("Model({s:?}, nodes={})", g.nodes().len()),
            None => format!(
                "Model(name={:?}, nodes={})",
                self.model.name(),
                g.nodes().len()
            ),
        }
    }
}

impl Model {
    fn shapes<'py>(
        &self,
        py: Python<'py>,
        ids: &[layerlens::ir::NodeId],
    ) -> PyResult<Vec<(String, Bound<'py, PyAny>)>> {
        let g = self.model.graph();
        ids.iter()
            .map(|&id| {
                let n = g.node(id);
                let mut dims: Vec<Option<usize>> = vec![None];
                dims.extend(n.shape.dims().iter().map(|&d| Some(d)));
                let t = pyo3::types::PyTuple::new(py, dims)?;
                Ok((n.name.clone(), t.into_any()))
            })
            .collect()
    }
}

/// A fresh private directory for pickling through `save`/`load`.
fn scratch_dir() -> layerlens::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "layerlens-pickle-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|source| layerlens::Error::Io {
        path: dir.display().to_string(),
        source,
    })?;
    Ok(dir)
}

/// Rebuilds a pickled model (see `Model.__reduce__`).
#[pyfunction]
fn _model_from_state(py: Python<'_>, state: &Bound<'_, PyDict>) -> PyResult<Model> {
    let item = |k: &str| -> PyResult<Bound<'_, PyAny>> {
        state
            .get_item(k)?
            .ok_or_else(|| PyValueError::new_err(format!("pickled model without '{k}'")))
    };
    let json: Vec<u8> = item("model.json")?.extract()?;
    let weights: Vec<u8> = item("model.safetensors")?.extract()?;
    let spec: Option<String> = item("spec")?.extract()?;
    let threads: usize = item("threads")?.extract()?;
    // A pickle made on a bigger machine does not carry its thread count over
    // an explicit environment setting of this one.
    let threads = match std::env::var_os("LAYERLENS_NUM_THREADS")
        .or_else(|| std::env::var_os("OMP_NUM_THREADS"))
    {
        Some(_) => thread_count(None)?,
        None => threads,
    };
    let model = py
        .detach(|| {
            let dir = scratch_dir()?;
            let r = (|| {
                let write = |name: &str, bytes: &[u8]| {
                    std::fs::write(dir.join(name), bytes).map_err(|source| layerlens::Error::Io {
                        path: dir.join(name).display().to_string(),
                        source,
                    })
                };
                write("model.json", &json)?;
                write("model.safetensors", &weights)?;
                layerlens::Model::load(&dir, &Device::Cpu)
            })();
            let _ = std::fs::remove_dir_all(&dir);
            r
        })
        .map_err(to_py)?;
    Ok(Model::wrap(model, spec, threads))
}

/// The metadata string layerlens' Parquet files carry under the key
/// `layerlens` (settings plus each layer's per-sample shape), so tables built
/// in Python (Ray, Spark) describe themselves as the CLI's files do.
#[pyfunction]
fn parquet_metadata(
    settings: std::collections::BTreeMap<String, String>,
    shapes: std::collections::BTreeMap<String, Vec<usize>>,
) -> PyResult<String> {
    layerlens::extract::parquet_metadata(&settings, &shapes).map_err(to_py)
}

/// The kernels' instruction-set path in use and those the CPU supports.
#[pyfunction]
fn cpu_paths() -> (String, Vec<String>) {
    use layerlens::kernels::isa::{self, Isa};
    (
        isa::process_isa().name().to_string(),
        Isa::supported()
            .iter()
            .map(|i| i.name().to_string())
            .collect(),
    )
}

/// The native half of the `layerlens` package.
#[pymodule]
fn _layerlens(m: &Bound<'_, PyModule>) -> PyResult<()> {
    if let Err(e) = layerlens::kernels::isa::Isa::from_env() {
        return Err(PyValueError::new_err(e.to_string()));
    }
    m.add_class::<Model>()?;
    m.add_class::<HookHandle>()?;
    m.add("LayerlensError", m.py().get_type::<LayerlensError>())?;
    m.add_function(wrap_pyfunction!(_model_from_state, m)?)?;
    m.add_function(wrap_pyfunction!(parquet_metadata, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_paths, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
