//! ONNX graph -> layerlens graph.

mod resize;

use crate::fold::fold;
use crate::proto::{AttributeProto, ModelProto, NodeProto};
use crate::tensor::{decode, Const, Data, BATCH};
use candle_core::{Device, Tensor};
use layerlens_core::builder::{Functional, NodeRef};
use layerlens_core::lambda::Reduce;
use layerlens_core::ops::{
    Activation, BatchNorm, BinaryKind, Concat, ConstOperand, Conv2d, ConvTranspose2d, Dense,
    Elementwise, Flatten, GlobalAvgPool, LayerNorm, PRelu, Pad2d, PadMode, Padding, Permute,
    Pool2d, PoolKind, Reshape, Side, Slice,
};
use layerlens_core::{Error, Model, Result, Shape};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Ops the importer maps onto layerlens nodes (besides the folded shape arithmetic).
pub const SUPPORTED_OPS: &[&str] = &[
    "Conv",
    "BatchNormalization",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "HardSigmoid",
    "HardSwish",
    "Clip",
    "Softmax",
    "LogSoftmax",
    "Elu",
    "Celu",
    "Selu",
    "Gelu",
    "Softplus",
    "Softsign",
    "Exp",
    "Mish",
    "Shrink",
    "Abs",
    "Neg",
    "Sqrt",
    "Reciprocal",
    "Erf",
    "Log",
    "Pow",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Gemm",
    "MatMul",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Concat",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "ReduceMean",
    "Identity",
    "Dropout",
    "Shape",
    "Gather",
    "Slice",
    "Split",
    "Cast",
    "Constant",
    "ConvTranspose",
    "Pad",
    "Transpose",
    "Resize",
    "Upsample",
    "Sum",
    "Max",
    "Min",
    "Mean",
    "PRelu",
    "LayerNormalization",
    "GlobalMaxPool",
    "LRN",
    "ConstantOfShape",
];

/// Import settings: what fixes the symbolic dimensions of the graph inputs.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Per-sample shapes (without the batch axis) by graph input name; the
    /// name `""` stands for the only input of a one-input model. Dimensions
    /// the file fixes must agree.
    pub input_shapes: HashMap<String, Vec<usize>>,
    /// Values of symbolic dimensions by their ONNX `dim_param` name
    /// (`height` = 320), for every input that uses the name.
    pub dims: HashMap<String, usize>,
}

/// One dimension of a graph input as the file declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputDim {
    /// A fixed size.
    Fixed(usize),
    /// A symbolic size with its `dim_param` name.
    Named(String),
    /// A size the file leaves open without a name.
    Unknown,
}

impl std::fmt::Display for InputDim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputDim::Fixed(n) => write!(f, "{n}"),
            InputDim::Named(s) => f.write_str(s),
            InputDim::Unknown => f.write_str("?"),
        }
    }
}

/// A graph input (not an initializer) and its declared dimensions, batch first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphInput {
    /// The input's name in the file.
    pub name: String,
    /// Its dimensions as declared, the batch axis first.
    pub dims: Vec<InputDim>,
}

impl GraphInput {
    /// Whether a non-batch dimension is left open by the file.
    pub fn is_symbolic(&self) -> bool {
        self.dims
            .iter()
            .skip(1)
            .any(|d| !matches!(d, InputDim::Fixed(_)))
    }

    /// `(N, 3, height, width)`.
    pub fn dims_string(&self) -> String {
        let d: Vec<String> = self.dims.iter().map(|d| d.to_string()).collect();
        format!("({})", d.join(", "))
    }
}

fn declared_dims(vi: &crate::proto::ValueInfoProto) -> Vec<InputDim> {
    vi.r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .and_then(|t| t.shape.as_ref())
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match (d.dim_value, d.dim_param.as_deref()) {
                    (Some(v), _) if v > 0 => InputDim::Fixed(v as usize),
                    (_, Some(p)) if !p.is_empty() => InputDim::Named(p.to_string()),
                    _ => InputDim::Unknown,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The graph inputs of an ONNX file (initializers excluded) with their
/// declared dimensions, without importing it: what `summary` shows for a
/// model whose sizes come from the input.
pub fn graph_inputs(path: impl AsRef<Path>) -> Result<Vec<GraphInput>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let model = ModelProto::decode(bytes.as_slice()).map_err(|e| Error::Format {
        path: path.display().to_string(),
        message: format!("not an ONNX model (protobuf decoding failed: {e})"),
    })?;
    Ok(model.graph.as_ref().map(inputs_of).unwrap_or_default())
}

/// A graph's inputs that are not initializers.
fn inputs_of(graph: &crate::proto::GraphProto) -> Vec<GraphInput> {
    let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    graph
        .input
        .iter()
        .filter(|vi| !inits.contains(vi.name.as_str()))
        .map(|vi| GraphInput {
            name: vi.name.clone(),
            dims: declared_dims(vi),
        })
        .collect()
}

/// The per-sample shape of `input` from the file and the options, or a
/// message naming what is unresolved and how to give it.
fn resolve_input(
    input: &GraphInput,
    only: bool,
    opts: &ImportOptions,
) -> std::result::Result<Vec<usize>, String> {
    let declared = &input.dims;
    let given = opts
        .input_shapes
        .get(&input.name)
        .or_else(|| opts.input_shapes.get("").filter(|_| only));
    if let Some(shape) = given {
        if !declared.is_empty() && shape.len() + 1 != declared.len() {
            return Err(format!(
                "input '{}' is declared {} ({} dims after the batch), but its shape is given as {:?}",
                input.name,
                input.dims_string(),
                declared.len().saturating_sub(1),
                shape
            ));
        }
        for (i, (d, &v)) in declared.iter().skip(1).zip(shape).enumerate() {
            if matches!(d, InputDim::Fixed(f) if *f != v) || v == 0 {
                return Err(format!(
                    "input '{}' is declared {}: dim {} cannot be {v}",
                    input.name,
                    input.dims_string(),
                    i + 1
                ));
            }
        }
        return Ok(shape.clone());
    }
    let mut open = Vec::new();
    let shape: Vec<usize> = declared
        .iter()
        .skip(1)
        .map(|d| match d {
            InputDim::Fixed(v) => *v,
            InputDim::Named(p) => match opts.dims.get(p) {
                Some(&v) if v > 0 => v,
                _ => {
                    open.push(p.clone());
                    0
                }
            },
            InputDim::Unknown => {
                open.push("?".into());
                0
            }
        })
        .collect();
    if open.is_empty() {
        return Ok(shape);
    }
    let named: Vec<&String> = open.iter().filter(|p| *p != "?").collect();
    let per_dim = if named.len() == open.len() {
        let d: Vec<String> = named.iter().map(|p| format!("--dim {p}=V")).collect();
        format!(" or {}", d.join(" "))
    } else {
        String::new()
    };
    let example: Vec<String> = declared
        .iter()
        .skip(1)
        .map(|d| match d {
            InputDim::Fixed(v) => v.to_string(),
            InputDim::Named(p) => p.to_uppercase(),
            InputDim::Unknown => "D".into(),
        })
        .collect();
    Err(format!(
        "input '{}' has symbolic dimensions {} ({} unresolved): give its shape with --input-shape {}={}{per_dim} \
         (ImportOptions::input_shapes / dims), or an input tensor of that shape",
        input.name,
        input.dims_string(),
        open.join(", "),
        input.name,
        example.join(","),
    ))
}

/// Imports an ONNX file.
pub fn import(path: impl AsRef<Path>) -> Result<Model> {
    import_with(path, &ImportOptions::default())
}

/// Imports an ONNX file with options.
pub fn import_with(path: impl AsRef<Path>, opts: &ImportOptions) -> Result<Model> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    import_bytes(&bytes, base, &path.display().to_string(), opts)
}

#[derive(Clone)]
enum Value {
    Node(NodeRef),
    Const(Const),
}

struct Importer<'a> {
    what: &'a str,
    opset: i64,
    g: Functional,
    values: HashMap<String, Value>,
    weights: Vec<(String, Tensor)>,
    /// The batch size the graph inputs fix in the file (torch's dynamo
    /// exporter writes a static 1): a reshape target starting with it keeps
    /// the batch axis.
    static_batch: Option<i64>,
    /// The file comes from `torch.onnx`, whose node names carry module paths.
    torch_names: bool,
    /// PyTorch module paths the nodes name ([`torch_module_scopes`]):
    /// reserved for [`Importer::module_aliases`].
    module_paths: HashSet<String>,
    /// Module paths that may name more than one module: TorchScript names
    /// the second call of `relu` `relu_1`, so `relu` would be its first call
    /// (a forward hook sees the last) unless `relu_1` is a module of its own.
    ambiguous_modules: HashSet<String>,
    /// Each module path with the last activation node inside it so far.
    module_outputs: Vec<(String, NodeRef)>,
}

/// The PyTorch module paths a node belongs to, outermost first. The dynamo
/// exporter writes them in the `pkg.torch.onnx.name_scopes` metadata (a list
/// whose first entry is the root module `''` and whose last is the FX node's
/// own name); the TorchScript exporter (`torch_names`: producer "pytorch")
/// in the node name, `/features/features.17/conv/conv.0/Conv`, each scope a
/// child of the one before or an index of it.
fn torch_module_scopes(n: &NodeProto, torch_names: bool) -> Vec<String> {
    let items: Vec<String> = if let Some(p) = n
        .metadata_props
        .iter()
        .find(|p| p.key == "pkg.torch.onnx.name_scopes")
    {
        let all: Vec<&str> = p
            .value
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .map(|s| s.trim().trim_matches(|c| c == '\'' || c == '"'))
            .collect();
        if all.len() < 3 {
            return Vec::new();
        }
        all[1..all.len() - 1]
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else if torch_names && n.name.starts_with('/') {
        // A scope extends the one before either as a child (`conv1` under
        // `layer1.0`) or as an index of it (`conv.0` under `conv`, written
        // with the earlier scope's own name).
        let parts: Vec<&str> = n.name[1..].split('/').collect();
        let mut qualified: Vec<String> = Vec::new();
        let mut local = "";
        for part in &parts[..parts.len().saturating_sub(1)] {
            let q = match qualified.last() {
                None => part.to_string(),
                Some(prev) => match part.strip_prefix(local).filter(|r| r.starts_with('.')) {
                    Some(index) if !local.is_empty() => format!("{prev}{index}"),
                    _ => format!("{prev}.{part}"),
                },
            };
            qualified.push(q);
            local = part;
        }
        // Constant folding merges a BatchNorm into the Conv before it and
        // names the result after the Conv: the node then computes the BN's
        // output, not the Conv module's. A folded weight gets a new name
        // (`onnx::Conv_193`), so the Conv's own scope is kept only when its
        // weight is still the module's parameter.
        let weighted = matches!(
            n.op_type.as_str(),
            "Conv" | "ConvTranspose" | "Gemm" | "MatMul"
        );
        if weighted {
            let own = qualified
                .last()
                .is_some_and(|q| n.input.get(1) == Some(&format!("{q}.weight")));
            if !own {
                qualified.pop();
            }
        }
        qualified
    } else {
        return Vec::new();
    };
    items
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| sanitize(s))
        .collect()
}

fn attr<'n>(n: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if matches!(c, '*' | '?' | '[' | ']' | ',') {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// Imports an ONNX model from bytes; `base` is where external data files are
/// looked up and `what` names the source in errors.
pub fn import_bytes(bytes: &[u8], base: &Path, what: &str, opts: &ImportOptions) -> Result<Model> {
    build(&Decoded::new(bytes, base, what)?, opts, None)
}

/// An ONNX file decoded once: the protobuf, its opset checked, and every
/// initializer read (external data included), ready to be imported at any
/// input shape by [`build`].
pub(crate) struct Decoded {
    pub(crate) what: String,
    model: ModelProto,
    opset: i64,
    initializers: Vec<(String, Const)>,
}

impl Decoded {
    pub(crate) fn new(bytes: &[u8], base: &Path, what: &str) -> Result<Self> {
        let bad = |m: String| Error::Format {
            path: what.to_string(),
            message: m,
        };
        let model = ModelProto::decode(bytes)
            .map_err(|e| bad(format!("not an ONNX model (protobuf decoding failed: {e})")))?;
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| bad("the model has no graph".into()))?;
        let opset = model
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .ok_or_else(|| bad("no default-domain opset in opset_import".into()))?;
        // Opsets 22-25 change only the data types of the ops translated here;
        // before 7 a few ops and attributes meant other things (refused by name in
        // `check_legacy_opset`).
        if !(1..=25).contains(&opset) {
            return Err(bad(format!("opset {opset} is not supported (1 to 25 are)")));
        }
        let initializers = graph
            .initializer
            .iter()
            .map(|t| {
                decode(t, base)
                    .map(|c| (t.name.clone(), c))
                    .map_err(|m| bad(format!("initializer '{}': {m}", t.name)))
            })
            .collect::<Result<_>>()?;
        Ok(Decoded {
            what: what.to_string(),
            model,
            opset,
            initializers,
        })
    }

    /// The graph inputs that are not initializers, with their declared dims.
    pub(crate) fn inputs(&self) -> Vec<GraphInput> {
        self.model.graph.as_ref().map(inputs_of).unwrap_or_default()
    }
}

/// Translates a decoded model at the input shapes `opts` resolve. With
/// `shared`, parameters of the same key and shape are `shared`'s own (one
/// storage) and so are its hooks: another specialisation of the same file.
pub(crate) fn build(
    decoded: &Decoded,
    opts: &ImportOptions,
    shared: Option<&Model>,
) -> Result<Model> {
    let what = decoded.what.as_str();
    let bad = |m: String| Error::Format {
        path: what.to_string(),
        message: m,
    };
    let model = &decoded.model;
    let graph = model.graph.as_ref().expect("checked when decoded");
    let opset = decoded.opset;
    let name = if graph.name.is_empty() {
        "onnx_model".to_string()
    } else {
        sanitize(&graph.name)
    };
    let g = match shared {
        Some(m) => Functional::new(&name).sharing(m),
        None => Functional::new(&name),
    };
    let mut im = Importer {
        what,
        opset,
        g,
        values: HashMap::new(),
        weights: Vec::new(),
        static_batch: None,
        torch_names: model.producer_name == "pytorch",
        module_paths: HashSet::new(),
        ambiguous_modules: HashSet::new(),
        module_outputs: Vec::new(),
    };
    im.module_paths = graph
        .node
        .iter()
        .flat_map(|n| torch_module_scopes(n, im.torch_names))
        .collect();
    // `P.relu_1` without parameters of its own is the second call of `P.relu`.
    im.ambiguous_modules = im
        .module_paths
        .iter()
        .filter_map(|p| {
            let (base, k) = p.rsplit_once('_')?;
            let call = !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit());
            let own_params = graph
                .initializer
                .iter()
                .any(|t| t.name.starts_with(&format!("{p}.")));
            (call && !own_params && im.module_paths.contains(base)).then(|| base.to_string())
        })
        .collect();
    for (name, c) in &decoded.initializers {
        im.values.insert(name.clone(), Value::Const(c.clone()));
    }
    let real_inputs: Vec<_> = graph
        .input
        .iter()
        .filter(|vi| !im.values.contains_key(&vi.name))
        .collect();
    let only = real_inputs.len() == 1;
    if opts.input_shapes.contains_key("") && !only {
        let names: Vec<&str> = real_inputs.iter().map(|vi| vi.name.as_str()).collect();
        return Err(bad(format!(
            "an input shape without a name needs a one-input model; this one has {}: give NAME=C,H,W",
            names.join(", ")
        )));
    }
    for name in opts.input_shapes.keys().filter(|k| !k.is_empty()) {
        if !real_inputs.iter().any(|vi| &vi.name == name) {
            let names: Vec<&str> = real_inputs.iter().map(|vi| vi.name.as_str()).collect();
            return Err(bad(format!(
                "a shape is given for input '{name}', which the model does not have; its inputs: '{}'",
                names.join("', '")
            )));
        }
    }
    for vi in real_inputs {
        let input = GraphInput {
            name: vi.name.clone(),
            dims: declared_dims(vi),
        };
        if let Some(InputDim::Fixed(b)) = input.dims.first() {
            im.static_batch = Some(*b as i64);
        }
        let per_sample = resolve_input(&input, only, opts).map_err(bad)?;
        let r =
            im.g.input(&sanitize(&vi.name), per_sample)
                .map_err(|e| bad(format!("input '{}': {e}", vi.name)))?;
        im.values.insert(vi.name.clone(), Value::Node(r));
    }
    for (i, n) in graph.node.iter().enumerate() {
        if !n.domain.is_empty() && n.domain != "ai.onnx" {
            return Err(bad(format!(
                "node {i} ('{}'): op '{}' of domain '{}' is not supported",
                n.name, n.op_type, n.domain
            )));
        }
        im.node(n).map_err(|e| match e {
            Error::Format { .. } => e,
            other => bad(format!(
                "node {i} ('{}', {}, opset {}): {}",
                n.name, n.op_type, im.opset, other
            )),
        })?;
    }
    let mut outputs = Vec::new();
    for o in &graph.output {
        match im.values.get(&o.name) {
            Some(Value::Node(r)) => outputs.push(*r),
            Some(Value::Const(_)) => {
                return Err(bad(format!("graph output '{}' is a constant", o.name)))
            }
            None => {
                return Err(bad(format!(
                    "graph output '{}' is produced by no node",
                    o.name
                )))
            }
        }
    }
    im.module_aliases()?;
    let Importer { g, weights, .. } = im;
    let model = g.build(&outputs)?;
    for (k, t) in weights {
        // A shared parameter already holds the file's value, or whatever training
        // has made of it since: it is not reset.
        if shared.is_some_and(|m| {
            m.params()
                .get(&k)
                .is_ok_and(|p| p.kind != layerlens_core::params::ParamKind::Constant)
        }) {
            continue;
        }
        model
            .params()
            .set(&k, &t)
            .map_err(|e| bad(format!("weight '{k}': {e}")))?;
    }
    Ok(model)
}

impl Importer<'_> {
    fn constant(&self, n: &NodeProto, i: usize) -> Result<Const> {
        match n
            .input
            .get(i)
            .filter(|s| !s.is_empty())
            .and_then(|s| self.values.get(s))
        {
            Some(Value::Const(c)) => Ok(c.clone()),
            Some(Value::Node(_)) => Err(self.err(
                n,
                format!(
                    "input {i} ('{}') must be a constant (an initializer)",
                    n.input[i]
                ),
            )),
            None => Err(self.err(n, format!("input {i} is missing"))),
        }
    }

    fn opt_constant(&self, n: &NodeProto, i: usize) -> Result<Option<Const>> {
        match n.input.get(i).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(_) => self.constant(n, i).map(Some),
        }
    }

    /// Optional input `i` as one number (a scalar or one-element constant).
    fn opt_scalar(&self, n: &NodeProto, i: usize, what: &str) -> Result<Option<f32>> {
        match self.opt_constant(n, i)? {
            None => Ok(None),
            Some(c) => match c.floats().as_slice() {
                [v] => Ok(Some(*v)),
                other => Err(self.err(
                    n,
                    format!(
                        "{what} (input {i}) must hold one value, holds {}",
                        other.len()
                    ),
                )),
            },
        }
    }

    fn node_input(&self, n: &NodeProto, i: usize) -> Result<NodeRef> {
        match n.input.get(i).and_then(|s| self.values.get(s)) {
            Some(Value::Node(r)) => Ok(*r),
            Some(Value::Const(_)) => Err(self.err(
                n,
                format!(
                    "input {i} ('{}') is a constant; layerlens expects an activation here",
                    n.input[i]
                ),
            )),
            None => Err(self.err(
                n,
                format!(
                    "input {i} ('{}') is produced by no earlier node",
                    n.input.get(i).map_or("", |s| s)
                ),
            )),
        }
    }

    fn err(&self, n: &NodeProto, m: String) -> Error {
        Error::Format {
            path: self.what.to_string(),
            message: format!(
                "node '{}' ({}, opset {}): {m}",
                n.name, n.op_type, self.opset
            ),
        }
    }

    fn name_for(&self, n: &NodeProto) -> String {
        let base = sanitize(if n.name.is_empty() {
            n.output.first().map_or("node", |s| s)
        } else {
            &n.name
        });
        let mut name = base.clone();
        let mut k = 1;
        while self.g.get(&name).is_ok() {
            name = format!("{base}_{k}");
            k += 1;
        }
        name
    }

    /// `want`, or `want_1`, `want_2`, ... if the graph has a node of that name.
    fn fresh_name(&self, want: &str) -> String {
        let mut v = want.to_string();
        let mut k = 1;
        while self.g.get(&v).is_ok() {
            v = format!("{want}_{k}");
            k += 1;
        }
        v
    }

    fn tensor(c: &Const) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            c.floats(),
            c.dims.as_slice(),
            &Device::Cpu,
        )?)
    }

    fn finish(&mut self, n: &NodeProto, r: NodeRef) -> Result<()> {
        let node_name = self.g.name(r).to_string();
        for o in &n.output {
            self.values.insert(o.clone(), Value::Node(r));
            let alias = sanitize(o);
            if alias != node_name
                && !self.module_paths.contains(&alias)
                && self.g.get(&alias).is_err()
            {
                self.g.alias(&alias, r)?;
            }
        }
        for scope in torch_module_scopes(n, self.torch_names) {
            self.module_outputs.push((scope, r));
        }
        Ok(())
    }

    /// Names each PyTorch module path (`layer2`, `layer2.0.conv1`) after the
    /// last node computed inside it, which is the module's output, as a
    /// forward hook on that module sees it (for a module called twice, its
    /// last call). The module's own name wins over an FX tensor name.
    fn module_aliases(&mut self) -> Result<()> {
        let mut last: HashMap<String, NodeRef> = HashMap::new();
        let mut order = Vec::new();
        for (scope, r) in std::mem::take(&mut self.module_outputs) {
            if last.insert(scope.clone(), r).is_none() {
                order.push(scope);
            }
        }
        for scope in order {
            if !self.ambiguous_modules.contains(&scope) && self.g.get(&scope).is_err() {
                self.g.alias(&scope, last[&scope])?;
            }
        }
        Ok(())
    }

    fn ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
        attr(n, name).map(|a| a.ints.clone())
    }

    /// Opset 6 attributes whose meaning changed in opset 7, refused by name
    /// unless they keep the later meaning.
    /// Opsets 1-6: the ops whose meaning changed since are refused by name;
    /// the rest (element-wise ops, convolution, pooling, ...) only lost the
    /// `consumed_inputs` hint, which changes nothing.
    fn check_legacy_opset(&self, n: &NodeProto, op: &str) -> Result<()> {
        let opset = self.opset;
        let refuse =
            |what: &str| Err(self.err(n, format!("{what} (opset {opset}) is not supported")));
        match op {
            "Reshape" if opset < 5 => refuse("Reshape with its target as a 'shape' attribute"),
            "Pad" if opset < 2 => refuse("Pad with a 'paddings' attribute"),
            "Split" if opset < 2 => refuse("Split with its sizes as an input"),
            "Cast" if opset < 6 => refuse("Cast with a string 'to' attribute"),
            "Concat" if opset < 4 && attr(n, "axis").is_none() => {
                refuse("Concat without an axis attribute (axis 1 before opset 4)")
            }
            "PRelu" => refuse("PRelu before opset 7 (slopes per channel, not broadcast)"),
            "Add" | "Sub" | "Mul" | "Div" | "Gemm" if attr(n, "axis").is_some() => {
                refuse("broadcasting along an 'axis' attribute")
            }
            "BatchNormalization" if Self::int(n, "spatial") == Some(0) => {
                refuse("per-activation statistics (spatial=0)")
            }
            "BatchNormalization" | "Dropout" if Self::int(n, "is_test") == Some(0) => {
                refuse("training mode (is_test=0)")
            }
            "Upsample" => refuse("Upsample before opset 7"),
            _ => Ok(()),
        }
    }

    fn int(n: &NodeProto, name: &str) -> Option<i64> {
        attr(n, name).map(|a| a.i)
    }

    fn float(n: &NodeProto, name: &str) -> Option<f32> {
        attr(n, name).map(|a| a.f)
    }

    fn pair(
        &self,
        n: &NodeProto,
        v: Option<Vec<i64>>,
        default: usize,
        what: &str,
    ) -> Result<[usize; 2]> {
        match v.as_deref() {
            None => Ok([default, default]),
            // Strides, dilations and kernel sizes of 0 have no meaning (and
            // would divide by zero in the window arithmetic).
            Some([a, b]) if *a >= 1 && *b >= 1 => Ok([*a as usize, *b as usize]),
            Some(other) => Err(self.err(
                n,
                format!("{what} {other:?}: only 2-D (two positive values) is supported"),
            )),
        }
    }

    /// ONNX `pads` / `auto_pad` -> layerlens padding.
    fn padding(
        &self,
        n: &NodeProto,
        hw: (usize, usize),
        k: [usize; 2],
        s: [usize; 2],
        d: [usize; 2],
    ) -> Result<Padding> {
        let auto = attr(n, "auto_pad")
            .map(|a| String::from_utf8_lossy(&a.s).to_string())
            .unwrap_or_default();
        match auto.as_str() {
            "" | "NOTSET" => match Self::ints(n, "pads").as_deref() {
                None => Ok(Padding::Valid),
                Some([t, l, b, r]) if [*t, *l, *b, *r].iter().all(|&p| p >= 0) => {
                    Ok(Padding::Explicit([
                        *t as usize,
                        *b as usize,
                        *l as usize,
                        *r as usize,
                    ]))
                }
                Some(p) => Err(self.err(
                    n,
                    format!("pads {p:?}: only 2-D non-negative pads are supported"),
                )),
            },
            "VALID" => Ok(Padding::Valid),
            "SAME_UPPER" => Ok(Padding::Same),
            "SAME_LOWER" => {
                let [t, b, l, r] = Padding::Same.resolve(hw, k, s, d);
                Ok(Padding::Explicit([b, t, r, l]))
            }
            other => Err(self.err(n, format!("unknown auto_pad '{other}'"))),
        }
    }

    fn spatial(&self, r: NodeRef) -> (usize, usize) {
        let s = self.g.shape(r);
        match s.chw() {
            Some((_, h, w)) => (h, w),
            None => (0, 0),
        }
    }

    fn node(&mut self, n: &NodeProto) -> Result<()> {
        let op = n.op_type.as_str();
        if n.output.is_empty() || n.output[0].is_empty() {
            return Err(self.err(n, "the node has no output".into()));
        }
        // Before folding anything: a legacy op that means something else now
        // must not be folded or translated either.
        if self.opset < 7 {
            self.check_legacy_opset(n, op)?;
        }
        let arity = match op {
            "Add" | "Sub" | "Mul" | "Div" | "Conv" | "ConvTranspose" | "Gemm" | "MatMul"
            | "Reshape" => 2,
            "BatchNormalization" => 5,
            "Constant" => 0,
            _ => 1,
        };
        if n.input.iter().filter(|i| !i.is_empty()).count() < arity {
            return Err(self.err(
                n,
                format!("expects at least {arity} input(s), has {}", n.input.len()),
            ));
        }
        // Constants and shape arithmetic are folded.
        if op == "Constant" {
            let a = n
                .attribute
                .first()
                .ok_or_else(|| self.err(n, "Constant without a value".into()))?;
            let c = match a.name.as_str() {
                "value" => decode(
                    a.t.as_ref()
                        .ok_or_else(|| self.err(n, "value is not a tensor".into()))?,
                    Path::new("."),
                )
                .map_err(|m| self.err(n, m))?,
                "value_float" => Const {
                    dims: vec![],
                    data: Data::F32(vec![a.f]),
                },
                "value_floats" => Const {
                    dims: vec![a.floats.len()],
                    data: Data::F32(a.floats.clone()),
                },
                "value_int" => Const::i64s(vec![], vec![a.i]),
                "value_ints" => Const::i64s(vec![a.ints.len()], a.ints.clone()),
                other => {
                    return Err(
                        self.err(n, format!("Constant attribute '{other}' is not supported"))
                    )
                }
            };
            self.values.insert(n.output[0].clone(), Value::Const(c));
            return Ok(());
        }
        if op == "Shape" {
            let r = self.node_input(n, 0)?;
            let mut dims = vec![BATCH];
            dims.extend(self.g.shape(r).dims().iter().map(|&d| d as i64));
            self.values.insert(
                n.output[0].clone(),
                Value::Const(Const::i64s(vec![dims.len()], dims)),
            );
            return Ok(());
        }
        if op == "ConstantOfShape" {
            let shape = self.constant(n, 0)?.ints();
            if shape.iter().any(|&d| d < 0) {
                return Err(self.err(
                    n,
                    format!("ConstantOfShape of {shape:?}: the batch size or a negative size is not supported"),
                ));
            }
            let total = shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
                .filter(|&t| t <= 1 << 26)
                .ok_or_else(|| self.err(n, format!("ConstantOfShape of {shape:?} is too large")))?;
            let value = match attr(n, "value").and_then(|a| a.t.as_ref()) {
                Some(t) => decode(t, Path::new(".")).map_err(|m| self.err(n, m))?,
                None => Const {
                    dims: vec![1],
                    data: Data::F32(vec![0.0]),
                },
            };
            if value.len() != 1 {
                return Err(self.err(n, "ConstantOfShape's value must hold one element".into()));
            }
            let data = match value.data {
                Data::F32(v) => Data::F32(vec![v[0]; total]),
                Data::I64(v) => Data::I64(vec![v[0]; total]),
            };
            let dims = shape.iter().map(|&d| d as usize).collect();
            self.values
                .insert(n.output[0].clone(), Value::Const(Const { dims, data }));
            return Ok(());
        }
        let present: Vec<&String> = n.input.iter().filter(|s| !s.is_empty()).collect();
        let all_const = !present.is_empty()
            && present
                .iter()
                .all(|s| matches!(self.values.get(*s), Some(Value::Const(_))));
        if all_const && !matches!(op, "Conv" | "Gemm" | "MatMul" | "BatchNormalization") {
            let inputs: Vec<Const> = present
                .iter()
                .map(|s| match &self.values[*s] {
                    Value::Const(c) => c.clone(),
                    Value::Node(_) => unreachable!(),
                })
                .collect();
            let c = fold(op, &inputs, &|k| Self::ints(n, k), &|k| Self::int(n, k))
                .map_err(|m| self.err(n, m))?;
            self.values.insert(n.output[0].clone(), Value::Const(c));
            return Ok(());
        }
        if op == "Dropout" {
            // Opset 12+: a third input `training_mode`; true drops units at random,
            // which inference must not pretend to do.
            if let Some(t) = n.input.get(2).filter(|s| !s.is_empty()) {
                match self.values.get(t) {
                    Some(Value::Const(c)) if c.ints().iter().all(|&v| v == 0) => {}
                    Some(Value::Const(_)) => {
                        return Err(self.err(n, "training_mode=1 (random dropout) is not supported; export the model in eval mode".into()))
                    }
                    _ => {
                        return Err(self.err(n, "a training_mode computed at run time is not supported; export the model in eval mode".into()))
                    }
                }
            }
        }
        if op == "Cast" {
            // Activations are float32: a cast to float32 changes nothing; any other
            // target type would round or truncate, which is refused.
            match Self::int(n, "to") {
                Some(1) => {}
                Some(t) => {
                    return Err(self.err(n, format!("Cast of an activation to ONNX type {t} is not supported (only to FLOAT, type 1)")))
                }
                None => return Err(self.err(n, "Cast without a 'to' attribute".into())),
            }
        }
        if op == "Split" {
            return self.split(n);
        }
        if matches!(op, "Identity" | "Dropout" | "Cast") {
            let r = self.node_input(n, 0)?;
            let name = sanitize(if n.name.is_empty() {
                &n.output[0]
            } else {
                &n.name
            });
            if !self.module_paths.contains(&name) && self.g.get(&name).is_err() {
                self.g.alias(&name, r)?;
            }
            return self.finish(n, r);
        }
        let name = self.name_for(n);
        // A binary op's constant may come first (`Mul(Constant, x)`, a bias-first
        // `Add`): its operands are sorted out before input 0 is taken as the activation.
        if matches!(op, "Add" | "Sub" | "Mul" | "Div") {
            let r = self.binary(n, &name, op)?;
            return self.finish(n, r);
        }
        if matches!(op, "Sum" | "Max" | "Min" | "Mean") {
            let r = self.variadic(n, &name, op)?;
            return self.finish(n, r);
        }
        let x = self.node_input(n, 0)?;
        let r = match op {
            "Conv" => {
                let w = self.constant(n, 1)?;
                if w.dims.len() != 4 {
                    return Err(self.err(
                        n,
                        format!(
                            "only 2-D convolutions are supported (weight dims {:?})",
                            w.dims
                        ),
                    ));
                }
                let b = self.opt_constant(n, 2)?;
                let k = [w.dims[2], w.dims[3]];
                let s = self.pair(n, Self::ints(n, "strides"), 1, "strides")?;
                let d = self.pair(n, Self::ints(n, "dilations"), 1, "dilations")?;
                let pad = self.padding(n, self.spatial(x), k, s, d)?;
                let groups = Self::int(n, "group").unwrap_or(1).max(1) as usize;
                let conv = Conv2d {
                    filters: w.dims[0],
                    kernel: k,
                    stride: s,
                    padding: pad,
                    dilation: d,
                    groups,
                    bias: b.is_some(),
                    activation: None,
                    in_channels: 0,
                };
                let r = self.g.add_as(&name, conv, &[x])?;
                self.weights
                    .push((format!("{name}.weight"), Self::tensor(&w)?));
                if let Some(b) = b {
                    self.weights
                        .push((format!("{name}.bias"), Self::tensor(&b)?));
                }
                r
            }
            "BatchNormalization" => {
                // Opset 14+: training_mode=1 normalises with the batch's own
                // statistics; computing it with the running ones would be wrong.
                if Self::int(n, "training_mode").unwrap_or(0) != 0 {
                    return Err(self.err(n, "training_mode=1 (batch statistics) is not supported; export the model in eval mode".into()));
                }
                if n.output.iter().skip(1).any(|o| !o.is_empty()) {
                    return Err(self.err(
                        n,
                        "the running-statistics outputs (training mode) are not supported".into(),
                    ));
                }
                let eps = Self::float(n, "epsilon").unwrap_or(1e-5) as f64;
                let momentum = 1.0 - Self::float(n, "momentum").unwrap_or(0.9) as f64;
                let r = self.g.add_as(
                    &name,
                    BatchNorm::new().eps(eps).momentum(momentum.clamp(0.0, 1.0)),
                    &[x],
                )?;
                for (i, p) in ["weight", "bias", "running_mean", "running_var"]
                    .iter()
                    .enumerate()
                {
                    let c = self.constant(n, i + 1)?;
                    self.weights
                        .push((format!("{name}.{p}"), Self::tensor(&c)?));
                }
                r
            }
            "Relu" => self.g.add_as(&name, Activation::Relu, &[x])?,
            "Sigmoid" => self.g.add_as(&name, Activation::Sigmoid, &[x])?,
            "Tanh" => self.g.add_as(&name, Activation::Tanh, &[x])?,
            "HardSwish" => self.g.add_as(&name, Activation::HardSwish, &[x])?,
            "LeakyRelu" => self.g.add_as(
                &name,
                Activation::LeakyRelu {
                    slope: Self::float(n, "alpha").unwrap_or(0.01),
                },
                &[x],
            )?,
            "HardSigmoid" => {
                let (alpha, beta) = (
                    Self::float(n, "alpha").unwrap_or(0.2),
                    Self::float(n, "beta").unwrap_or(0.5),
                );
                let act = if (alpha - 1.0 / 6.0).abs() < 1e-6 && beta == 0.5 {
                    Activation::HardSigmoid
                } else {
                    Activation::HardSigmoidAb { alpha, beta }
                };
                self.g.add_as(&name, act, &[x])?
            }
            "Clip" => {
                let (min, max) = if self.opset >= 11 {
                    let lo = self.opt_scalar(n, 1, "min")?.unwrap_or(f32::NEG_INFINITY);
                    let hi = self.opt_scalar(n, 2, "max")?.unwrap_or(f32::INFINITY);
                    (lo, hi)
                } else {
                    (
                        Self::float(n, "min").unwrap_or(f32::NEG_INFINITY),
                        Self::float(n, "max").unwrap_or(f32::INFINITY),
                    )
                };
                let act = if min == 0.0 && max == 6.0 {
                    Activation::Relu6
                } else {
                    Activation::Clip { min, max }
                };
                self.g.add_as(&name, act, &[x])?
            }
            "Elu" | "Celu" => {
                let alpha = Self::float(n, "alpha").unwrap_or(1.0);
                let act = if op == "Elu" {
                    Activation::Elu { alpha }
                } else {
                    Activation::Celu { alpha }
                };
                self.g.add_as(&name, act, &[x])?
            }
            "Selu" => {
                let alpha = Self::float(n, "alpha").unwrap_or(1.673_263_2);
                let gamma = Self::float(n, "gamma").unwrap_or(1.050_701);
                if (alpha - 1.673_263_2).abs() <= 1e-6 && (gamma - 1.050_701).abs() <= 1e-6 {
                    self.g.add_as(&name, Activation::Selu, &[x])?
                } else {
                    // Other constants: gamma · Elu_alpha(x), two nodes.
                    let elu = self.fresh_name(&format!("{name}_elu"));
                    let e = self.g.add_as(&elu, Activation::Elu { alpha }, &[x])?;
                    let g = Value::Const(Const {
                        dims: vec![],
                        data: Data::F32(vec![gamma]),
                    });
                    self.binary_of(n, &name, BinaryKind::Mul, &Value::Node(e), &g)?
                }
            }
            "Gelu" => {
                let approx = attr(n, "approximate")
                    .map(|a| String::from_utf8_lossy(&a.s).to_string())
                    .unwrap_or_else(|| "none".into());
                let act = match approx.as_str() {
                    "none" => Activation::Gelu,
                    "tanh" => Activation::GeluTanh,
                    other => {
                        return Err(
                            self.err(n, format!("Gelu approximate='{other}' is not supported"))
                        )
                    }
                };
                self.g.add_as(&name, act, &[x])?
            }
            "Softplus" => self.g.add_as(&name, Activation::Softplus, &[x])?,
            "Abs" => self.g.add_as(&name, Activation::Abs, &[x])?,
            "Neg" => self.g.add_as(&name, Activation::Neg, &[x])?,
            "Sqrt" => self.g.add_as(&name, Activation::Sqrt, &[x])?,
            "Reciprocal" => self.g.add_as(&name, Activation::Reciprocal, &[x])?,
            "Erf" => self.g.add_as(&name, Activation::Erf, &[x])?,
            "Log" => self.g.add_as(&name, Activation::Log, &[x])?,
            "Pow" => {
                let exponent = match self.values.get(n.input.get(1).map_or("", |s| s)) {
                    Some(Value::Const(_)) => self.opt_scalar(n, 1, "the exponent")?,
                    _ => None,
                }
                .ok_or_else(|| self.err(n, "Pow needs a constant scalar exponent".into()))?;
                self.g.add_as(&name, Activation::Pow { exponent }, &[x])?
            }
            "Softsign" => self.g.add_as(&name, Activation::Softsign, &[x])?,
            "Exp" => self.g.add_as(&name, Activation::Exponential, &[x])?,
            "Mish" => self.g.add_as(&name, Activation::Mish, &[x])?,
            "Shrink" => {
                let lambd = Self::float(n, "lambd").unwrap_or(0.5);
                let bias = Self::float(n, "bias").unwrap_or(0.0);
                let act = if bias == 0.0 {
                    Activation::HardShrink { threshold: lambd }
                } else if bias == lambd {
                    Activation::SoftShrink { threshold: lambd }
                } else {
                    return Err(self.err(n, format!("Shrink with bias {bias} other than 0 or lambd ({lambd}) is not supported")));
                };
                self.g.add_as(&name, act, &[x])?
            }
            "Softmax" | "LogSoftmax" => {
                let rank = self.g.shape(x).rank() as i64 + 1;
                let default = if self.opset >= 13 { -1 } else { 1 };
                let axis = Self::int(n, "axis").unwrap_or(default);
                let last = axis == -1 || axis == rank - 1;
                if self.opset < 13 && !last {
                    return Err(self.err(n, format!("{op} before opset 13 over axis {axis} of a rank-{rank} tensor flattens trailing axes; not supported")));
                }
                let axis = axis as isize;
                let act = if op == "Softmax" {
                    Activation::Softmax { axis }
                } else {
                    Activation::LogSoftmax { axis }
                };
                self.g.add_as(&name, act, &[x])?
            }
            "MaxPool" | "AveragePool" => {
                let k = self.pair(n, Self::ints(n, "kernel_shape"), 1, "kernel_shape")?;
                let s = self.pair(n, Self::ints(n, "strides"), 1, "strides")?;
                if self.pair(n, Self::ints(n, "dilations"), 1, "dilations")? != [1, 1] {
                    return Err(self.err(n, "dilated pooling is not supported".into()));
                }
                let hw = self.spatial(x);
                let pad = self.padding(n, hw, k, s, [1, 1])?;
                let kind = if op == "MaxPool" {
                    PoolKind::Max
                } else {
                    PoolKind::Avg
                };
                let include = Self::int(n, "count_include_pad").unwrap_or(0) == 1;
                let mut pad = pad;
                if Self::int(n, "ceil_mode").unwrap_or(0) == 1 {
                    // ceil_mode keeps a partial last window as long as it starts inside
                    // the input or the leading padding (the ONNX and PyTorch rule). It is
                    // exactly extra trailing padding, excluded from maxima and from
                    // averages that do not count padding.
                    let p = pad.resolve(hw, k, s, [1, 1]);
                    let extra = |i: usize, lead: usize, trail: usize, kk: usize, ss: usize| {
                        let span = i + lead + trail;
                        if span < kk || (span - kk).is_multiple_of(ss) {
                            return 0; // A window larger than the input is refused by Pool2d.
                        }
                        let out = (span - kk) / ss + 2;
                        if (out - 1) * ss >= i + lead {
                            0
                        } else {
                            (out - 1) * ss + kk - span
                        }
                    };
                    let (eh, ew) = (
                        extra(hw.0, p[0], p[1], k[0], s[0]),
                        extra(hw.1, p[2], p[3], k[1], s[1]),
                    );
                    if eh + ew > 0 {
                        if matches!(kind, PoolKind::Avg) && include {
                            return Err(self.err(n, "ceil_mode=1 with count_include_pad=1 and a partial last window is not supported".into()));
                        }
                        pad = Padding::Explicit([p[0], p[1] + eh, p[2], p[3] + ew]);
                    }
                }
                let p = Pool2d {
                    kind,
                    kernel: k,
                    stride: s,
                    padding: pad,
                    count_include_pad: include,
                };
                self.g.add_as(&name, p, &[x])?
            }
            "GlobalAveragePool" => self
                .g
                .add_as(&name, GlobalAvgPool { keepdims: true }, &[x])?,
            "GlobalMaxPool" => {
                let Some((_, h, w)) = self.g.shape(x).chw() else {
                    return Err(self.err(
                        n,
                        format!(
                            "GlobalMaxPool is supported on (N, C, H, W) inputs only, got per-sample {}",
                            self.g.shape(x)
                        ),
                    ));
                };
                let p = Pool2d {
                    kind: PoolKind::Max,
                    kernel: [h, w],
                    stride: [1, 1],
                    padding: Padding::Valid,
                    count_include_pad: false,
                };
                self.g.add_as(&name, p, &[x])?
            }
            "PRelu" => self.prelu(n, &name, x)?,
            "LRN" => self.lrn(n, &name, x)?,
            "LayerNormalization" => return self.layer_norm(n, &name, x),
            "Flatten" => {
                if Self::int(n, "axis").unwrap_or(1) != 1 {
                    return Err(self.err(n, "Flatten is supported on axis 1 only".into()));
                }
                self.g.add_as(&name, Flatten, &[x])?
            }
            "Reshape" => {
                let target = self.constant(n, 1)?.ints();
                let input = self.g.shape(x).clone();
                let per = self.per_sample_reshape(n, &target, &input)?;
                self.g.add_as(&name, Reshape::new(per), &[x])?
            }
            "Squeeze" | "Unsqueeze" => {
                let axes = match self.opt_constant(n, 1)? {
                    Some(c) => c.ints(),
                    None => Self::ints(n, "axes").unwrap_or_default(),
                };
                let dims = self.g.shape(x).dims().to_vec();
                let full: Vec<usize> = std::iter::once(1).chain(dims.iter().copied()).collect();
                let out_rank = if op == "Unsqueeze" {
                    full.len() + axes.len()
                } else {
                    full.len()
                };
                let ax = crate::fold::unique_axes(&axes, out_rank).map_err(|m| self.err(n, m))?;
                if ax.contains(&0) {
                    return Err(self.err(
                        n,
                        "squeezing or unsqueezing the batch axis is not supported".into(),
                    ));
                }
                let full = if op == "Unsqueeze" {
                    crate::fold::unsqueeze(&full, &ax)
                } else if ax.is_empty() {
                    std::iter::once(1)
                        .chain(dims.iter().copied().filter(|&d| d != 1))
                        .collect()
                } else {
                    crate::fold::squeeze(&full, &ax).map_err(|m| self.err(n, m))?
                };
                let target: Vec<isize> = full[1..].iter().map(|&d| d as isize).collect();
                self.g.add_as(&name, Reshape::new(target), &[x])?
            }
            "Gemm" => {
                if Self::int(n, "transA").unwrap_or(0) != 0 {
                    return Err(self.err(n, "Gemm with transA=1 is not supported".into()));
                }
                let (alpha, beta) = (
                    Self::float(n, "alpha").unwrap_or(1.0),
                    Self::float(n, "beta").unwrap_or(1.0),
                );
                let b = self.constant(n, 1)?;
                let w = Self::tensor(&b)?;
                let w = if Self::int(n, "transB").unwrap_or(0) == 1 {
                    w
                } else {
                    w.t()?.contiguous()?
                };
                let w = (w * alpha as f64)?;
                let c = self.opt_constant(n, 2)?;
                let units = w.dim(0)?;
                let r = self
                    .g
                    .add_as(&name, Dense::new(units).bias(c.is_some()), &[x])?;
                self.weights.push((format!("{name}.weight"), w));
                if let Some(c) = c {
                    // C broadcasts to (batch, units): only a C that is the same for every
                    // sample (dims [], [1], [units] or [1, units]) is a bias.
                    let per_unit = c.dims.iter().rev().skip(1).all(|&d| d == 1)
                        && c.dims.len() <= 2
                        && c.dims.last().is_none_or(|&d| d == 1 || d == units);
                    if !per_unit {
                        return Err(self.err(n, format!("Gemm input C of dims {:?} differs between samples (rows of the batch); only a bias of dims [{units}] or [1, {units}] is supported", c.dims)));
                    }
                    let bias = Self::tensor(&c)?
                        .flatten_all()?
                        .broadcast_as(units)?
                        .contiguous()?;
                    self.weights
                        .push((format!("{name}.bias"), (bias * beta as f64)?));
                }
                r
            }
            "MatMul" => {
                let b = self.constant(n, 1)?;
                if b.dims.len() != 2 {
                    return Err(self.err(
                        n,
                        format!(
                            "MatMul with a constant of dims {:?}: only 2-D weights are supported",
                            b.dims
                        ),
                    ));
                }
                // On an N-D activation MatMul multiplies along the last axis.
                let r = self.g.add_as(
                    &name,
                    Dense::new(b.dims[1]).bias(false).on_last_axis(),
                    &[x],
                )?;
                self.weights.push((
                    format!("{name}.weight"),
                    Self::tensor(&b)?.t()?.contiguous()?,
                ));
                r
            }
            "Concat" => {
                let axis = Self::int(n, "axis")
                    .ok_or_else(|| self.err(n, "Concat without axis".into()))?;
                let refs = (0..n.input.len())
                    .map(|i| self.node_input(n, i))
                    .collect::<Result<Vec<_>>>()?;
                self.g.add_as(&name, Concat::new(axis as isize), &refs)?
            }
            "ReduceMean" => {
                let axes = match self.opt_constant(n, 1)? {
                    Some(c) => c.ints(),
                    None => Self::ints(n, "axes")
                        .unwrap_or_else(|| (1..=self.g.shape(x).rank() as i64).collect()),
                };
                let keep = Self::int(n, "keepdims").unwrap_or(1) == 1;
                let axes: Vec<isize> = axes.iter().map(|&a| a as isize).collect();
                self.g
                    .lambda_as(&name, Reduce::mean(axes).keepdims(keep), &[x], &[])?
            }
            "ConvTranspose" => {
                let w = self.constant(n, 1)?;
                if w.dims.len() != 4 || w.dims[2] != w.dims[3] {
                    return Err(self.err(n, format!("only square 2-D transposed convolutions are supported (weight dims {:?})", w.dims)));
                }
                if Self::int(n, "group").unwrap_or(1) != 1 || attr(n, "output_shape").is_some() {
                    return Err(self.err(n, "groups > 1 and output_shape are not supported".into()));
                }
                let auto = attr(n, "auto_pad")
                    .map(|a| String::from_utf8_lossy(&a.s).to_string())
                    .unwrap_or_default();
                if !matches!(auto.as_str(), "" | "NOTSET" | "VALID") {
                    return Err(self.err(
                        n,
                        format!("auto_pad '{auto}' is not supported for ConvTranspose"),
                    ));
                }
                let uniform = |v: Option<Vec<i64>>, d: i64, what: &str| -> Result<usize> {
                    let v = v.unwrap_or_else(|| vec![d; 2]);
                    match v.first() {
                        Some(&first) if first >= 0 && v.iter().all(|&x| x == first) => {
                            Ok(first as usize)
                        }
                        _ => Err(self.err(
                            n,
                            format!("{what} {v:?}: only equal, non-negative values are supported"),
                        )),
                    }
                };
                let b = self.opt_constant(n, 2)?;
                let ct = ConvTranspose2d {
                    filters: w.dims[1],
                    kernel: w.dims[2],
                    stride: uniform(Self::ints(n, "strides"), 1, "strides")?,
                    padding: uniform(Self::ints(n, "pads"), 0, "pads")?,
                    output_padding: uniform(Self::ints(n, "output_padding"), 0, "output_padding")?,
                    dilation: uniform(Self::ints(n, "dilations"), 1, "dilations")?,
                    bias: b.is_some(),
                    in_channels: 0,
                };
                let r = self.g.add_as(&name, ct, &[x])?;
                self.weights
                    .push((format!("{name}.weight"), Self::tensor(&w)?));
                if let Some(b) = b {
                    self.weights
                        .push((format!("{name}.bias"), Self::tensor(&b)?));
                }
                r
            }
            "Pad" => {
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
                if pads.len() != 8
                    || pads[0] != 0
                    || pads[1] != 0
                    || pads[4] != 0
                    || pads[5] != 0
                    || pads.iter().any(|&p| p < 0)
                {
                    return Err(self.err(n, format!("pads {pads:?}: only non-negative padding of the two spatial axes of an NCHW tensor is supported")));
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
                let p = |i: usize| pads[i] as usize;
                self.g.add_as(
                    &name,
                    Pad2d {
                        pads: [p(2), p(6), p(3), p(7)],
                        mode,
                    },
                    &[x],
                )?
            }
            "Transpose" => {
                let rank = self.g.shape(x).rank() + 1;
                let perm =
                    Self::ints(n, "perm").unwrap_or_else(|| (0..rank as i64).rev().collect());
                if perm.first() != Some(&0) {
                    return Err(self.err(
                        n,
                        format!("perm {perm:?} moves the batch axis; not supported"),
                    ));
                }
                let per: Vec<usize> = perm[1..].iter().map(|&p| (p - 1).max(0) as usize).collect();
                self.g.add_as(&name, Permute { perm: per }, &[x])?
            }
            "Resize" | "Upsample" => self.resize(n, &name, op, x)?,
            "Slice" => {
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
                if ends.len() != starts.len()
                    || axes.len() != starts.len()
                    || steps.len() != starts.len()
                {
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
                        return Err(self.err(n, format!("Slice of the batch axis (starts {}, ends {}, step {}) is not supported", starts[i], ends[i], steps[i])));
                    }
                    slice.axes.push((a - 1) as usize);
                    slice.starts.push(starts[i]);
                    slice.ends.push(ends[i]);
                    slice.steps.push(steps[i]);
                }
                self.g.add_as(&name, slice, &[x])?
            }
            "Gather" => self.gather(n, &name, x)?,
            "Shape" => {
                return Err(self.err(n, format!("{op} of an activation is not supported (only of constants, which are folded)")));
            }
            other => {
                return Err(self.err(
                    n,
                    format!(
                        "unsupported ONNX op '{other}' (supported: {})",
                        SUPPORTED_OPS.join(", ")
                    ),
                ));
            }
        };
        self.finish(n, r)
    }

    /// `Gather` of an activation with constant indices along a non-batch axis:
    /// a scalar index picks one slice and drops the axis (`x[:, 0]`); a 1-D
    /// list keeps the axis, one Slice per run of consecutive indices,
    /// concatenated when there are several.
    fn gather(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
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
    fn split(&mut self, n: &NodeProto) -> Result<()> {
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

    /// `Add`, `Sub`, `Mul`, `Div`: of two activations, or of an activation and
    /// a constant on either side.
    /// `Sum`, `Max`, `Min` and `Mean` of one or more inputs (NumPy broadcasting):
    /// a chain of binary nodes, the intermediate ones named `NAME_partialI`, the
    /// last one `NAME`; `Mean` divides the sum by the count (as the ONNX
    /// reference does, not multiplying by its reciprocal).
    fn variadic(&mut self, n: &NodeProto, name: &str, op: &str) -> Result<NodeRef> {
        let vals: Vec<Value> = n
            .input
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .map(|(i, s)| {
                self.values
                    .get(s)
                    .cloned()
                    .ok_or_else(|| self.err(n, format!("input {i} is missing")))
            })
            .collect::<Result<_>>()?;
        let kind = match op {
            "Max" => BinaryKind::Max,
            "Min" => BinaryKind::Min,
            _ => BinaryKind::Add,
        };
        let count = vals.len();
        let steps = count - 1 + usize::from(op == "Mean");
        if steps == 0 {
            // One input: the value itself.
            return match &vals[0] {
                Value::Node(r) => {
                    if !self.module_paths.contains(name) && self.g.get(name).is_err() {
                        self.g.alias(name, *r)?;
                    }
                    Ok(*r)
                }
                Value::Const(_) => Err(self.err(n, "the only input is a constant".into())),
            };
        }
        // Nodes first, so that every step has a node operand (the operation is
        // commutative); two constants in a row are refused by `binary_of`.
        let mut ordered = vals;
        ordered.sort_by_key(|v| matches!(v, Value::Const(_)));
        let mut acc = ordered[0].clone();
        let mut step = 0;
        let step_name = |step: usize| {
            if step + 1 == steps {
                name.to_string()
            } else {
                format!("{name}_partial{step}")
            }
        };
        for v in &ordered[1..] {
            let r = self.binary_of(n, &step_name(step), kind, &acc, v)?;
            acc = Value::Node(r);
            step += 1;
        }
        if op == "Mean" {
            let divisor = Value::Const(Const {
                dims: vec![],
                data: Data::F32(vec![count as f32]),
            });
            let r = self.binary_of(n, &step_name(step), BinaryKind::Div, &acc, &divisor)?;
            acc = Value::Node(r);
        }
        match acc {
            Value::Node(r) => Ok(r),
            Value::Const(_) => unreachable!("every step made a node"),
        }
    }

    /// `LRN` (local response normalisation across channels, AlexNet/GoogLeNet):
    /// `x / (bias + alpha/size · Σ x²)^beta`, the sum over the `size` channels
    /// around each one (⌊(size−1)/2⌋ before, ⌈(size−1)/2⌉ after, zeros past the
    /// ends). Composed from existing nodes: the squares reshaped to one
    /// `(1, C, H·W)` plane, averaged over `size` rows with zero padding counted
    /// (so `Σ/size`), reshaped back, scaled, shifted, raised to `beta`, divided
    /// into `x`; the intermediate nodes are named `NAME_square`, … .
    fn lrn(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        let Some((c, h, w)) = self.g.shape(x).chw() else {
            return Err(self.err(
                n,
                format!(
                    "LRN is supported on (N, C, H, W) inputs only, got per-sample {}",
                    self.g.shape(x)
                ),
            ));
        };
        let size = match Self::int(n, "size") {
            Some(s) if s >= 1 => s as usize,
            other => {
                return Err(self.err(
                    n,
                    format!("LRN needs a positive 'size' attribute, has {other:?}"),
                ))
            }
        };
        let alpha = Self::float(n, "alpha").unwrap_or(1e-4);
        let beta = Self::float(n, "beta").unwrap_or(0.75);
        let bias = Self::float(n, "bias").unwrap_or(1.0);
        let scalar = |v: f32| {
            Value::Const(Const {
                dims: vec![],
                data: Data::F32(vec![v]),
            })
        };
        let two = Elementwise {
            kind: BinaryKind::Mul,
            constant: None,
        };
        let sq = self
            .g
            .add_as(&self.fresh_name(&format!("{name}_square")), two, &[x, x])?;
        let plane = self.g.add_as(
            &self.fresh_name(&format!("{name}_plane")),
            Reshape::new([1, c as isize, (h * w) as isize]),
            &[sq],
        )?;
        let window = Pool2d {
            kind: PoolKind::Avg,
            kernel: [size, 1],
            stride: [1, 1],
            padding: Padding::Explicit([(size - 1) / 2, size / 2, 0, 0]),
            count_include_pad: true,
        };
        let avg = self.g.add_as(
            &self.fresh_name(&format!("{name}_window_mean")),
            window,
            &[plane],
        )?;
        let back = self.g.add_as(
            &self.fresh_name(&format!("{name}_window_mean_chw")),
            Reshape::new([c as isize, h as isize, w as isize]),
            &[avg],
        )?;
        let scaled_name = self.fresh_name(&format!("{name}_scaled"));
        let scaled = self.binary_of(
            n,
            &scaled_name,
            BinaryKind::Mul,
            &Value::Node(back),
            &scalar(alpha),
        )?;
        let shifted_name = self.fresh_name(&format!("{name}_shifted"));
        let shifted = self.binary_of(
            n,
            &shifted_name,
            BinaryKind::Add,
            &Value::Node(scaled),
            &scalar(bias),
        )?;
        let denom = self.g.add_as(
            &self.fresh_name(&format!("{name}_denominator")),
            Activation::Pow { exponent: beta },
            &[shifted],
        )?;
        let div = Elementwise {
            kind: BinaryKind::Div,
            constant: None,
        };
        self.g.add_as(name, div, &[x, denom])
    }

    /// `PRelu(x, slope)` with a constant slope that broadcasts against `x`
    /// (one per channel `[C, 1, 1]`, a scalar, or a full per-sample shape).
    fn prelu(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        let slope = self.constant(n, 1)?;
        let per_sample = self.g.shape(x).rank();
        let mut dims = slope.dims.clone();
        if dims.len() == per_sample + 1 {
            if dims[0] != 1 {
                return Err(self.err(
                    n,
                    format!(
                        "slope of dims {:?} differs along the batch axis; not supported",
                        slope.dims
                    ),
                ));
            }
            dims.remove(0);
        }
        let t = Self::tensor(&slope)?.reshape(dims.as_slice())?;
        let r = self.g.add_as(name, PRelu { shape: dims }, &[x])?;
        self.weights.push((format!("{name}.weight"), t));
        Ok(r)
    }

    /// `LayerNormalization` (opset 17) over the axes from `axis` to the last,
    /// with its Scale and optional B broadcast to the normalised shape. The
    /// optional Mean and InvStdDev outputs, when used, are computed by nodes of
    /// their own named after them: the mean over the axes, and
    /// `1 / sqrt(mean((x - mean)²) + epsilon)`.
    fn layer_norm(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<()> {
        if let Some(t) = Self::int(n, "stash_type").filter(|&t| t != 1) {
            return Err(self.err(
                n,
                format!("stash_type {t} is not supported (only 1, float32 statistics)"),
            ));
        }
        let dims = self.g.shape(x).dims().to_vec();
        let rank = dims.len() as i64 + 1;
        let axis = Self::int(n, "axis").unwrap_or(-1);
        let a = if axis < 0 { axis + rank } else { axis };
        if !(0..rank).contains(&a) {
            return Err(self.err(n, format!("axis {axis} is out of range for rank {rank}")));
        }
        if a == 0 {
            return Err(self.err(
                n,
                format!("axis {axis} normalises over the batch axis; not supported"),
            ));
        }
        let axes: Vec<usize> = (a as usize..rank as usize).collect();
        let norm_dims = dims[a as usize - 1..].to_vec();
        let expand = |c: &Const, what: &str| -> Result<Tensor> {
            let t = Self::tensor(c)?;
            t.broadcast_as(norm_dims.as_slice())
                .and_then(|t| t.contiguous())
                .map_err(|_| {
                    self.err(
                        n,
                        format!(
                            "{what} of dims {:?} does not broadcast to the normalised shape {norm_dims:?}",
                            c.dims
                        ),
                    )
                })
        };
        let scale = expand(&self.constant(n, 1)?, "Scale")?;
        let bias = match self.opt_constant(n, 2)? {
            Some(b) => Some(expand(&b, "B")?),
            None => None,
        };
        let eps = Self::float(n, "epsilon").unwrap_or(1e-5) as f64;
        let mut ln = LayerNorm::new(axes).eps(eps);
        ln.center = bias.is_some();
        let r = self.g.add_as(name, ln, &[x])?;
        self.weights.push((format!("{name}.weight"), scale));
        if let Some(b) = bias {
            self.weights.push((format!("{name}.bias"), b));
        }
        let mut main = n.clone();
        main.output.truncate(1);
        self.finish(&main, r)?;
        let mean_out = n.output.get(1).filter(|o| !o.is_empty());
        let inv_out = n.output.get(2).filter(|o| !o.is_empty());
        if mean_out.is_none() && inv_out.is_none() {
            return Ok(());
        }
        let reduce_axes: Vec<isize> = (a as isize..rank as isize).collect();
        let base = sanitize(mean_out.or(inv_out).expect("one is used"));
        let mean_name = self.fresh_name(
            &mean_out
                .map(|o| sanitize(o))
                .unwrap_or(format!("{base}_mean")),
        );
        let mean = self.g.lambda_as(
            &mean_name,
            Reduce::mean(reduce_axes.clone()).keepdims(true),
            &[x],
            &[],
        )?;
        if let Some(o) = mean_out {
            self.values.insert(o.clone(), Value::Node(mean));
        }
        if let Some(o) = inv_out {
            let two = |k| Elementwise {
                kind: k,
                constant: None,
            };
            let centred = self.g.add_as(
                &self.fresh_name(&format!("{base}_centred")),
                two(BinaryKind::Sub),
                &[x, mean],
            )?;
            let squared = self.g.add_as(
                &self.fresh_name(&format!("{base}_squared")),
                two(BinaryKind::Mul),
                &[centred, centred],
            )?;
            let var = self.g.lambda_as(
                &self.fresh_name(&format!("{base}_variance")),
                Reduce::mean(reduce_axes).keepdims(true),
                &[squared],
                &[],
            )?;
            let eps_name = self.fresh_name(&format!("{base}_plus_epsilon"));
            let eps_const = Const {
                dims: vec![],
                data: Data::F32(vec![eps as f32]),
            };
            let plus = self.binary_of(
                n,
                &eps_name,
                BinaryKind::Add,
                &Value::Node(var),
                &Value::Const(eps_const),
            )?;
            let std = self.g.add_as(
                &self.fresh_name(&format!("{base}_std")),
                Activation::Sqrt,
                &[plus],
            )?;
            let inv = self.g.add_as(
                &self.fresh_name(&sanitize(o)),
                Activation::Reciprocal,
                &[std],
            )?;
            self.values.insert(o.clone(), Value::Node(inv));
        }
        Ok(())
    }

    fn binary(&mut self, n: &NodeProto, name: &str, op: &str) -> Result<NodeRef> {
        let kind = match op {
            "Add" => BinaryKind::Add,
            "Sub" => BinaryKind::Sub,
            "Mul" => BinaryKind::Mul,
            _ => BinaryKind::Div,
        };
        let vals: Vec<Value> = (0..2)
            .map(|i| {
                self.values
                    .get(&n.input[i])
                    .cloned()
                    .ok_or_else(|| self.err(n, format!("input {i} is missing")))
            })
            .collect::<Result<_>>()?;
        self.binary_of(n, name, kind, &vals[0], &vals[1])
    }

    /// One element-wise node `a ∘ b`, at most one of them a constant.
    fn binary_of(
        &mut self,
        n: &NodeProto,
        name: &str,
        kind: BinaryKind,
        a: &Value,
        b: &Value,
    ) -> Result<NodeRef> {
        let vals = [a, b];
        Ok(match (vals[0], vals[1]) {
            (Value::Node(a), Value::Node(b)) => self.g.add_as(
                name,
                Elementwise {
                    kind,
                    constant: None,
                },
                &[*a, *b],
            )?,
            (Value::Node(a), Value::Const(c)) | (Value::Const(c), Value::Node(a)) => {
                let side = if matches!(vals[0], Value::Node(_)) {
                    Side::Rhs
                } else {
                    Side::Lhs
                };
                let e = Elementwise {
                    kind,
                    constant: Some(ConstOperand {
                        shape: c.dims.clone(),
                        side,
                    }),
                };
                let r = self.g.add_as(name, e, &[*a])?;
                self.weights
                    .push((format!("{name}.constant"), Self::tensor(c)?));
                r
            }
            (Value::Const(_), Value::Const(_)) => {
                return Err(self.err(
                    n,
                    "both operands are constants but another input is not".into(),
                ))
            }
        })
    }

    /// ONNX Reshape targets include the batch axis; layerlens reshapes per sample.
    fn per_sample_reshape(
        &self,
        n: &NodeProto,
        target: &[i64],
        input: &Shape,
    ) -> Result<Vec<isize>> {
        if target.is_empty() {
            return Err(self.err(n, "empty reshape target".into()));
        }
        let first_ok = matches!(target[0], BATCH | 0 | -1) || Some(target[0]) == self.static_batch;
        let rest_has_infer = target[1..].contains(&-1);
        if !first_ok || (target[0] == -1 && rest_has_infer) {
            return Err(self.err(
                n,
                format!(
                    "reshape target {target:?} does not keep the batch axis first; not supported"
                ),
            ));
        }
        target[1..]
            .iter()
            .enumerate()
            .map(|(i, &d)| match d {
                0 => input.dims().get(i).map(|&v| v as isize).ok_or_else(|| {
                    self.err(
                        n,
                        format!("0 in reshape target {target:?} copies a dim the input lacks"),
                    )
                }),
                BATCH => Err(self.err(
                    n,
                    "the batch size appears after the first axis of a reshape target".into(),
                )),
                d => Ok(d as isize),
            })
            .collect()
    }
}
