//! ONNX graph -> layerlens graph.

mod activation;
mod conv;
mod elementwise;
mod layout;
mod norm;
mod pool;
mod resize;
mod shape;

use crate::fold::fold;
use crate::proto::{AttributeProto, ModelProto, NodeProto};
use crate::tensor::{decode, Const, Data};
use candle_core::{Device, Tensor};
use layerlens_core::builder::{Functional, NodeRef};
use layerlens_core::ops::Padding;
use layerlens_core::{Error, Model, Result};
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
    "Expand",
    "Einsum",
    "ReduceSum",
    "ReduceMax",
    "ReduceL2",
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
    crate::OnnxModel::open(path)?.import(opts)
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
    /// The first graph input: the batch size of a constant expanded to it.
    first_input: Option<NodeRef>,
    /// The graph's nodes, and for each tensor name the nodes reading it: a
    /// static batch-1 reshape that could put the batch in more than one
    /// axis looks at what reads the result.
    nodes: &'a [NodeProto],
    consumers: HashMap<String, Vec<usize>>,
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
        let mut model = ModelProto::decode(bytes)
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
                    .map(|c| (t.name.clone(), crate::tensor::from_file(c)))
                    .map_err(|m| bad(format!("initializer '{}': {m}", t.name)))
            })
            .collect::<Result<_>>()?;
        // The values now live in `initializers`: the protobuf keeps only the
        // names, so a model held for several imports is not stored twice.
        if let Some(g) = model.graph.as_mut() {
            for t in &mut g.initializer {
                t.raw_data = Vec::new();
                t.float_data = Vec::new();
                t.int32_data = Vec::new();
                t.int64_data = Vec::new();
                t.double_data = Vec::new();
            }
        }
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
        first_input: None,
        nodes: &graph.node,
        consumers: HashMap::new(),
    };
    for (i, n) in graph.node.iter().enumerate() {
        for input in n.input.iter().filter(|s| !s.is_empty()) {
            im.consumers.entry(input.clone()).or_default().push(i);
        }
    }
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
        im.first_input.get_or_insert(r);
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

/// Translates one ONNX node whose first input is the activation `x` into
/// layerlens nodes, returning the node its first output names.
type Translator = fn(&mut Importer<'_>, &NodeProto, &str, NodeRef) -> Result<NodeRef>;

/// The translator of each op that runs on an activation (the op families live
/// in `import/`: activation, conv, elementwise, norm, pool, resize, shape).
/// Constants, `Shape` of constants and the other folded ops never get here.
fn translator(op: &str) -> Option<Translator> {
    Some(match op {
        "Conv" => |im, n, name, x| im.conv(n, name, x),
        "BatchNormalization" => |im, n, name, x| im.batch_norm(n, name, x),
        "Relu" | "Sigmoid" | "Tanh" | "HardSwish" | "Softplus" | "Abs" | "Neg" | "Sqrt"
        | "Reciprocal" | "Erf" | "Log" | "Softsign" | "Exp" | "Mish" => {
            |im, n, name, x| im.simple_activation(n, name, x)
        }
        "LeakyRelu" => |im, n, name, x| im.leaky_relu(n, name, x),
        "HardSigmoid" => |im, n, name, x| im.hard_sigmoid(n, name, x),
        "Clip" => |im, n, name, x| im.clip(n, name, x),
        "Elu" | "Celu" => |im, n, name, x| im.elu(n, name, x),
        "Selu" => |im, n, name, x| im.selu(n, name, x),
        "Gelu" => |im, n, name, x| im.gelu(n, name, x),
        "Pow" => |im, n, name, x| im.pow(n, name, x),
        "Shrink" => |im, n, name, x| im.shrink(n, name, x),
        "Softmax" | "LogSoftmax" => |im, n, name, x| im.softmax(n, name, x),
        "MaxPool" | "AveragePool" => |im, n, name, x| im.pool(n, name, x),
        "GlobalAveragePool" => |im, n, name, x| im.global_average_pool(n, name, x),
        "GlobalMaxPool" => |im, n, name, x| im.global_max_pool(n, name, x),
        "PRelu" => |im, n, name, x| im.prelu(n, name, x),
        "LRN" => |im, n, name, x| im.lrn(n, name, x),
        "LayerNormalization" => |im, n, name, x| im.layer_norm(n, name, x),
        "Flatten" => |im, n, name, x| im.flatten(n, name, x),
        "Reshape" => |im, n, name, x| im.reshape(n, name, x),
        "Squeeze" | "Unsqueeze" => |im, n, name, x| im.squeeze(n, name, x),
        "Gemm" => |im, n, name, x| im.gemm(n, name, x),
        "MatMul" => |im, n, name, x| im.matmul(n, name, x),
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceL2" => {
            |im, n, name, x| im.reduce(n, name, x)
        }
        "ConvTranspose" => |im, n, name, x| im.conv_transpose(n, name, x),
        "Pad" => |im, n, name, x| im.pad(n, name, x),
        "Transpose" => |im, n, name, x| im.transpose(n, name, x),
        "Expand" => |im, n, name, x| im.expand_activation(n, name, x),
        "Einsum" => |im, n, name, x| im.einsum(n, name, x),
        "Resize" | "Upsample" => |im, n, name, x| im.resize(n, name, &n.op_type, x),
        "Slice" => |im, n, name, x| im.slice(n, name, x),
        "Gather" => |im, n, name, x| im.gather(n, name, x),
        _ => return None,
    })
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
        for (i, o) in n.output.iter().enumerate() {
            // A translator that computes further outputs itself (LayerNormalization's
            // Mean and InvStdDev) has set them already.
            if i > 0 && self.values.contains_key(o) {
                continue;
            }
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
            self.values.insert(
                n.output[0].clone(),
                Value::Const(crate::tensor::from_file(c)),
            );
            return Ok(());
        }
        if op == "Shape" {
            return self.shape_of(n);
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
        if all_const && op == "Expand" && self.expands_to_batch(n) {
            let name = self.name_for(n);
            let r = self.expand_to_batch(n, &name)?;
            return self.finish(n, r);
        }
        if all_const && !matches!(op, "Conv" | "Gemm" | "BatchNormalization") {
            let inputs: Vec<Const> = present
                .iter()
                .map(|s| match &self.values[*s] {
                    Value::Const(c) => c.clone(),
                    Value::Node(_) => unreachable!(),
                })
                .collect();
            // Folding takes the present inputs in order: an omitted optional
            // input before a given one (Clip's min with a max, Slice's axes with
            // steps) would shift the later ones.
            let last = n.input.iter().rposition(|s| !s.is_empty()).unwrap_or(0);
            if op == "Clip" && n.input.get(1).is_some_and(|s| s.is_empty()) && last == 2 {
                // Clip(x, "", max): the missing min is -∞.
                let lo = Const {
                    dims: vec![],
                    data: Data::F32(vec![f32::NEG_INFINITY]),
                };
                let mut with_min = inputs.clone();
                with_min.insert(1, lo);
                let c = fold(op, &with_min, &|k| Self::ints(n, k), &|k| Self::int(n, k))
                    .map_err(|m| self.err(n, m))?;
                self.values.insert(n.output[0].clone(), Value::Const(c));
                return Ok(());
            }
            if n.input[..last].iter().any(|s| s.is_empty()) {
                return Err(self.err(
                    n,
                    format!(
                        "{op} of constants with an omitted input before a given one is not folded"
                    ),
                ));
            }
            if op == "Clip" && (attr(n, "min").is_some() || attr(n, "max").is_some()) {
                return Err(self.err(
                    n,
                    "Clip of constants with min/max attributes (opset < 11) is not folded".into(),
                ));
            }
            if let Some(r) = attr(n, "reduction").filter(|a| a.s != b"none") {
                return Err(self.err(
                    n,
                    format!(
                        "{op} with reduction '{}' is not folded",
                        String::from_utf8_lossy(&r.s)
                    ),
                ));
            }
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
            return self.split_on_layout(n);
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
        if op == "Concat" {
            let r = self.concat_any(n, &name)?;
            return self.finish(n, r);
        }
        if matches!(op, "Sum" | "Max" | "Min" | "Mean") {
            let r = self.variadic(n, &name, op)?;
            return self.finish(n, r);
        }
        let x = self.node_input(n, 0)?;
        if op == "MatMul" && matches!(self.values.get(&n.input[1]), Some(Value::Node(_))) {
            let r = self.matmul_of_activations(n, &name, x)?;
            return self.finish(n, r);
        }
        let translate = translator(op).ok_or_else(|| {
            self.err(
                n,
                format!(
                    "unsupported ONNX op '{op}' (supported: {})",
                    SUPPORTED_OPS.join(", ")
                ),
            )
        })?;
        let r = self.translate_on_layout(n, &name, x, translate)?;
        self.finish(n, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every claimed op is either handled before dispatch (constants, folding,
    /// aliases, arithmetic, Split) or has a translator: the list and the
    /// registry cannot drift apart.
    #[test]
    fn every_supported_op_is_translated_or_handled_before_dispatch() {
        let before_dispatch = [
            "Constant",
            "ConstantOfShape",
            "Identity",
            "Dropout",
            "Cast",
            "Split",
            "Add",
            "Sub",
            "Mul",
            "Div",
            "Sum",
            "Max",
            "Min",
            "Mean",
            "Concat",
            "Shape",
            "Expand",
        ];
        for op in SUPPORTED_OPS {
            assert!(
                translator(op).is_some() || before_dispatch.contains(op),
                "{op} is claimed but has no translator"
            );
        }
        assert!(translator("LpNormalization").is_none());
    }
}
