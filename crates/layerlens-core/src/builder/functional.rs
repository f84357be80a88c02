use crate::error::{Error, NodeContext, Result};
use crate::ir::{BatchView, Graph, Node, NodeId, Op, OpT};
use crate::lambda::{Closure, CustomOp, LambdaCtx, LambdaNode, RefMode, ShapeCtx, WeightRef};
use crate::model::Model;
use crate::ops::InferCtx;
use crate::params::{Initializer, ParamKind, ParamSpec, ParamStore};
use crate::shape::Shape;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// A handle to a node being built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeRef(pub NodeId);

/// A layer that can be called several times; every call is its own node and all
/// calls share one parameter set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedLayer(usize);

struct SharedEntry {
    name: String,
    op: Op,
    calls: usize,
}

/// A reusable piece of graph with its own name scope, the analogue of a Keras
/// subclassed layer or a PyTorch module: nodes it adds are named
/// `scope.child`, and the scope name itself resolves to the block's output.
///
/// ```
/// use layerlens_core::builder::{Block, Functional, NodeRef};
/// use layerlens_core::ops::{Activation, BatchNorm, Conv2d, Padding, Add};
/// use layerlens_core::Result;
///
/// struct Residual { channels: usize }
/// impl Block for Residual {
///     fn build(&self, g: &mut Functional, x: &[NodeRef]) -> Result<NodeRef> {
///         let y = g.add_as("conv1", Conv2d::new(self.channels, 3).padding(Padding::Same), &[x[0]])?;
///         let y = g.add_as("bn1", BatchNorm::new(), &[y])?;
///         let y = g.add_as("add", Add, &[y, x[0]])?;
///         g.add_as("relu", Activation::Relu, &[y])
///     }
/// }
/// let mut g = Functional::new("net");
/// let x = g.input("input", [8, 16, 16])?;
/// let y = g.block("layer1.0", &Residual { channels: 8 }, &[x])?;
/// let model = g.build(&[y])?;
/// assert!(model.graph().find("layer1.0").is_ok());
/// assert!(model.graph().find("layer1.0.conv1").is_ok());
/// # Ok::<(), layerlens_core::Error>(())
/// ```
pub trait Block {
    /// Adds the block's nodes and returns its output.
    fn build(&self, g: &mut Functional, inputs: &[NodeRef]) -> Result<NodeRef>;
}

/// The functional builder: add layers to node handles, then [`build`](Self::build)
/// a [`Model`] with chosen outputs.
///
/// ```
/// use layerlens_core::builder::Functional;
/// use layerlens_core::ops::{Activation, Conv2d, Dense, Flatten, Pool2d};
///
/// let mut g = Functional::new("seed_cnn");
/// let x = g.input("input", [1, 28, 28])?;
/// let c1 = g.add(Conv2d::new(32, 3).activation(Activation::Relu), &[x])?;
/// let p1 = g.add(Pool2d::max(2), &[c1])?;
/// let c2 = g.add(Conv2d::new(64, 3).activation(Activation::Relu), &[p1])?;
/// let f = g.add(Flatten, &[c2])?;
/// let y = g.add(Dense::new(10).activation(Activation::SOFTMAX), &[f])?;
/// let model = g.build(&[y])?;
/// assert_eq!(g_names(&model), ["input", "conv2d", "max_pooling2d", "conv2d_1", "flatten", "dense"]);
/// # fn g_names(m: &layerlens_core::Model) -> Vec<String> { m.graph().nodes().iter().map(|n| n.name.clone()).collect() }
/// # Ok::<(), layerlens_core::Error>(())
/// ```
pub struct Functional {
    graph: Graph,
    params: ParamStore,
    device: Device,
    init: Initializer,
    counters: HashMap<String, usize>,
    scopes: Vec<String>,
    /// The forward hooks of the model this one extends, shared with it.
    hooks: Option<Arc<crate::hooks::HookTable>>,
    shared: Vec<SharedEntry>,
    /// When loading: parameters must already exist (they came from the file).
    preset: bool,
    claimed: BTreeSet<String>,
}

impl Functional {
    /// A new builder on the CPU with seed 42 for weight initialisation.
    pub fn new(name: impl Into<String>) -> Self {
        Functional {
            graph: Graph {
                name: name.into(),
                ..Default::default()
            },
            params: ParamStore::new(),
            device: Device::Cpu,
            init: Initializer::new(42),
            counters: HashMap::new(),
            hooks: None,
            scopes: Vec::new(),
            shared: Vec::new(),
            preset: false,
            claimed: BTreeSet::new(),
        }
    }

    /// Builds on `device` (parameters are created there).
    pub fn on_device(mut self, device: &Device) -> Self {
        self.device = device.clone();
        self
    }

    /// Seeds weight initialisation (same seed, same weights).
    pub fn seed(mut self, seed: u64) -> Self {
        self.init = Initializer::new(seed);
        self
    }

    /// A builder that starts with every node of `model` (same names, shared
    /// weights), to grow new outputs from its intermediate nodes: the analogue of
    /// Keras' `Model(model.input, Lambda(f)(model.get_layer("conv2d").output))`.
    ///
    /// ```
    /// use layerlens_core::prelude::*;
    /// let base = Sequential::new("m", [1, 28, 28]).add(Conv2d::new(8, 3))?.add(Flatten)?.build()?;
    /// let mut g = Functional::extend(&base);
    /// let conv = g.get("conv2d")?;
    /// let mean = g.lambda(Reduce::mean([2, 3]), &[conv], &[])?;
    /// let m = g.build(&[mean])?;
    /// assert_eq!(m.graph().nodes().len(), 3, "input, conv2d, lambda: unused nodes are dropped");
    /// # Ok::<(), layerlens_core::Error>(())
    /// ```
    pub fn extend(model: &Model) -> Self {
        let g = model.graph();
        let mut f = Functional::new(g.name()).on_device(model.device());
        f.graph = g.clone();
        f.graph.outputs.clear();
        f.params = model.params().clone();
        f.hooks = Some(model.hooks.clone());
        f
    }

    /// Builds a new graph that shares `model`'s trainable parameters and buffers
    /// (same key and shape: one storage, so training either model trains both)
    /// and its hooks (registered on node names), while constants stay its own:
    /// another specialisation of one file, such as an ONNX model imported at a
    /// second input size.
    pub fn sharing(mut self, model: &Model) -> Self {
        for (k, p) in model.params().iter() {
            if p.kind != ParamKind::Constant {
                self.params.insert_param(k.to_string(), p.clone());
            }
        }
        self.hooks = Some(model.hooks.clone());
        self
    }

    /// A builder whose parameters come from `params` (used when loading).
    pub(crate) fn with_params(name: &str, params: ParamStore, device: &Device) -> Self {
        let mut f = Functional::new(name).on_device(device);
        f.params = params;
        f.preset = true;
        f
    }

    /// The parameters created so far.
    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    /// The name of a node.
    pub fn name(&self, r: NodeRef) -> &str {
        &self.graph.nodes[r.0].name
    }

    /// The inferred per-sample shape of a node.
    pub fn shape(&self, r: NodeRef) -> &Shape {
        &self.graph.nodes[r.0].shape
    }

    /// Records where the batch sits in the tensor node `r` is known by outside
    /// (an importer's tensor whose batch axis is not first); `None` or a
    /// batch-first view clears it.
    pub fn set_view(&mut self, r: NodeRef, view: Option<BatchView>) -> Result<()> {
        let node = &mut self.graph.nodes[r.0];
        let view = view.filter(|v| !v.is_batch_first());
        if let Some(v) = &view {
            v.check(node.shape.rank())
                .map_err(|m| Error::invalid(&node.name, m))?;
        }
        node.view = view;
        Ok(())
    }

    /// The recorded outside view of node `r` ([`set_view`](Self::set_view)).
    pub fn view(&self, r: NodeRef) -> Option<&BatchView> {
        self.graph.nodes[r.0].view.as_ref()
    }

    /// The node named `name` (or aliased so), for wiring by name.
    pub fn get(&self, name: &str) -> Result<NodeRef> {
        self.graph.find(name).map(NodeRef)
    }

    fn prefix(&self) -> String {
        self.scopes.iter().map(|s| format!("{s}.")).collect()
    }

    fn name_taken(&self, name: &str) -> bool {
        self.graph.index.contains_key(name)
            || self.graph.aliases.contains_key(name)
            || self.shared.iter().any(|s| s.name == name)
    }

    fn auto_name(&mut self, base: &str) -> String {
        let full = format!("{}{base}", self.prefix());
        let n = self.counters.entry(full.clone()).or_insert(0);
        loop {
            let candidate = if *n == 0 {
                full.clone()
            } else {
                format!("{full}_{n}")
            };
            *n += 1;
            if !(self.graph.index.contains_key(&candidate)
                || self.graph.aliases.contains_key(&candidate)
                || self.shared.iter().any(|s| s.name == candidate))
            {
                return candidate;
            }
        }
    }

    fn explicit_name(&self, name: &str) -> Result<String> {
        if name.is_empty() || name.contains(['*', '?', '[', ',']) || name == "all" {
            return Err(Error::invalid(
                name,
                "node names must be non-empty, not 'all', and contain no '*', '?', '[' or ','",
            ));
        }
        let full = format!("{}{name}", self.prefix());
        if self.name_taken(&full) {
            return Err(Error::DuplicateName(full));
        }
        Ok(full)
    }

    /// Declares an input with a per-sample NCHW shape (`[C, H, W]` for images).
    pub fn input(&mut self, name: &str, shape: impl Into<Shape>) -> Result<NodeRef> {
        let name = self.explicit_name(name)?;
        let id = self.push(name, OpT::Input(shape.into()), &[], None)?;
        self.graph.inputs.push(id);
        Ok(NodeRef(id))
    }

    /// Adds a layer with an automatic Keras-style name (`conv2d`, `conv2d_1`, ...).
    pub fn add(&mut self, layer: impl Into<Op>, inputs: &[NodeRef]) -> Result<NodeRef> {
        let op = layer.into();
        let name = self.auto_name(&base_name(&op));
        self.push(name, op, &ids(inputs), None).map(NodeRef)
    }

    /// Adds a layer with an explicit name (prefixed by the enclosing block scopes).
    pub fn add_as(
        &mut self,
        name: &str,
        layer: impl Into<Op>,
        inputs: &[NodeRef],
    ) -> Result<NodeRef> {
        let name = self.explicit_name(name)?;
        self.push(name, layer.into(), &ids(inputs), None)
            .map(NodeRef)
    }

    /// Adds a Lambda or custom layer, with the weights it references.
    pub fn lambda(
        &mut self,
        op: impl CustomOp + 'static,
        inputs: &[NodeRef],
        weights: &[WeightRef],
    ) -> Result<NodeRef> {
        let name = self.auto_name(op.base_name());
        let node = LambdaNode {
            op: Arc::new(op),
            weights: weights.to_vec(),
        };
        self.push(name, OpT::Lambda(node), &ids(inputs), None)
            .map(NodeRef)
    }

    /// Adds a named Lambda or custom layer.
    pub fn lambda_as(
        &mut self,
        name: &str,
        op: impl CustomOp + 'static,
        inputs: &[NodeRef],
        weights: &[WeightRef],
    ) -> Result<NodeRef> {
        let name = self.explicit_name(name)?;
        let node = LambdaNode {
            op: Arc::new(op),
            weights: weights.to_vec(),
        };
        self.push(name, OpT::Lambda(node), &ids(inputs), None)
            .map(NodeRef)
    }

    /// Adds a closure Lambda (in-process only; it cannot be saved).
    pub fn closure(
        &mut self,
        name: &str,
        inputs: &[NodeRef],
        f: impl Fn(&[Tensor]) -> candle_core::Result<Tensor> + Send + Sync + 'static,
    ) -> Result<NodeRef> {
        self.lambda_as(name, Closure::new(name, f), inputs, &[])
    }

    /// Declares a layer to be called several times with shared weights. The
    /// first call's node is named `name`; later calls are `name@1`, `name@2`, ...
    pub fn shared(&mut self, name: &str, layer: impl Into<Op>) -> Result<SharedLayer> {
        let name = self.explicit_name(name)?;
        self.shared.push(SharedEntry {
            name,
            op: layer.into(),
            calls: 0,
        });
        Ok(SharedLayer(self.shared.len() - 1))
    }

    /// Calls a shared layer on `inputs`.
    pub fn call(&mut self, layer: SharedLayer, inputs: &[NodeRef]) -> Result<NodeRef> {
        let e = &self.shared[layer.0];
        let layer_name = e.name.clone();
        let name = if e.calls == 0 {
            layer_name.clone()
        } else {
            format!("{layer_name}@{}", e.calls)
        };
        let op = e.op.clone();
        let id = self.push(name, op, &ids(inputs), Some(layer_name))?;
        let e = &mut self.shared[layer.0];
        e.calls += 1;
        // Later calls are checked against the layer as resolved by the first call.
        e.op = self.graph.nodes[id].op.clone();
        Ok(NodeRef(id))
    }

    /// Applies the layer of an existing node again, with the same weights, to new
    /// inputs (Keras' `model.layers[2](x)`, PyTorch's calling a module twice). The
    /// new node is named `layer@1`, `layer@2`, ...
    pub fn reuse(&mut self, node: &str, inputs: &[NodeRef]) -> Result<NodeRef> {
        let id = self.graph.find(node)?;
        let n = &self.graph.nodes[id];
        if matches!(n.op, OpT::Input(_)) {
            return Err(Error::invalid(
                node,
                "an input is not a layer that can be applied again",
            ));
        }
        let (layer, op) = (n.layer.clone(), n.op.clone());
        let mut k = 1;
        while self.name_taken(&format!("{layer}@{k}")) {
            k += 1;
        }
        self.push(format!("{layer}@{k}"), op, &ids(inputs), Some(layer))
            .map(NodeRef)
    }

    /// Adds a [`Block`] under the name scope `scope`; `scope` then names its output.
    pub fn block(&mut self, scope: &str, block: &dyn Block, inputs: &[NodeRef]) -> Result<NodeRef> {
        let full = self.explicit_name(scope)?;
        self.scopes.push(scope.to_string());
        let out = block.build(self, inputs);
        self.scopes.pop();
        let out = out?;
        if !self.graph.index.contains_key(&full) {
            self.graph.aliases.insert(full, out.0);
        }
        Ok(out)
    }

    /// Inlines `model` as a sub-network under `scope` (seed 001's "layer that
    /// wraps a sub-network"). Its nodes become `scope.node`, its parameters are
    /// shared with `model` (training either trains both), and `scope` names its
    /// (first) output.
    pub fn call_model(
        &mut self,
        scope: &str,
        model: &Model,
        inputs: &[NodeRef],
    ) -> Result<Vec<NodeRef>> {
        let full = self.explicit_name(scope)?;
        let g = model.graph();
        if inputs.len() != g.inputs.len() {
            return Err(Error::invalid(
                &full,
                format!(
                    "model '{}' takes {} input(s), got {}",
                    g.name,
                    g.inputs.len(),
                    inputs.len()
                ),
            ));
        }
        let pre = format!("{full}.");
        for (k, p) in model.params().iter() {
            self.params.insert_param(format!("{pre}{k}"), p.clone());
        }
        let mut map: Vec<NodeId> = vec![usize::MAX; g.nodes.len()];
        for (slot, (&gi, r)) in g.inputs.iter().zip(inputs).enumerate() {
            let want = &g.nodes[gi].shape;
            let got = &self.graph.nodes[r.0].shape;
            if want != got {
                return Err(Error::shape(
                    &full,
                    format!(
                        "input {slot} of model '{}' ('{}') expects {want}, but '{}' is {got}",
                        g.name, g.nodes[gi].name, self.graph.nodes[r.0].name
                    ),
                ));
            }
            map[gi] = r.0;
        }
        for (id, n) in g.nodes.iter().enumerate() {
            if matches!(n.op, OpT::Input(_)) {
                continue;
            }
            let mut op = n.op.clone();
            if let OpT::Lambda(l) = &mut op {
                for w in &mut l.weights {
                    w.key = format!("{pre}{}", w.key);
                }
            }
            let inputs: Vec<NodeId> = n.inputs.iter().map(|&i| map[i]).collect();
            map[id] = self.push(
                format!("{pre}{}", n.name),
                op,
                &inputs,
                Some(format!("{pre}{}", n.layer)),
            )?;
        }
        for (a, &id) in &g.aliases {
            self.graph.aliases.insert(format!("{pre}{a}"), map[id]);
        }
        let outs: Vec<NodeRef> = g.outputs.iter().map(|&o| NodeRef(map[o])).collect();
        if let Some(first) = outs.first() {
            self.graph.aliases.insert(full, first.0);
        }
        Ok(outs)
    }

    /// Makes `alias` another name for `node`.
    pub fn alias(&mut self, alias: &str, node: NodeRef) -> Result<()> {
        let full = self.explicit_name(alias)?;
        self.graph.aliases.insert(full, node.0);
        Ok(())
    }

    /// Finishes the model with the given outputs.
    pub fn build(mut self, outputs: &[NodeRef]) -> Result<Model> {
        if outputs.is_empty() {
            return Err(Error::invalid(
                &self.graph.name,
                "a model needs at least one output",
            ));
        }
        if self.graph.inputs.is_empty() {
            return Err(Error::invalid(
                &self.graph.name,
                "a model needs at least one input",
            ));
        }
        if self.preset {
            let unused: Vec<&str> = self
                .params
                .iter()
                .map(|(k, _)| k)
                .filter(|k| !self.claimed.contains(*k))
                .collect();
            if !unused.is_empty() {
                return Err(Error::invalid(
                    &self.graph.name,
                    format!(
                        "weights file has tensors no node uses: {}",
                        unused.join(", ")
                    ),
                ));
            }
        }
        self.graph.outputs = ids(outputs);
        // Nodes no output depends on are dropped (declared inputs stay), and so are
        // the parameters only they used.
        let graph = self.graph.prune(&self.graph.outputs);
        let params = crate::model::used_params(&graph, &self.params);
        let mut model = Model::from_parts(graph, params, self.device)?;
        if let Some(hooks) = self.hooks {
            model.hooks = hooks;
        }
        Ok(model)
    }

    fn push(
        &mut self,
        name: String,
        mut op: Op,
        inputs: &[NodeId],
        layer: Option<String>,
    ) -> Result<NodeId> {
        let layer = layer.unwrap_or_else(|| name.clone());
        let input_names: Vec<String> = inputs
            .iter()
            .map(|&i| self.graph.nodes[i].name.clone())
            .collect();
        let input_shapes: Vec<Shape> = inputs
            .iter()
            .map(|&i| self.graph.nodes[i].shape.clone())
            .collect();
        let shape = match &mut op {
            OpT::Input(s) => {
                if s.dims().contains(&0) {
                    return Err(Error::invalid(
                        &name,
                        format!("input shape {s} has a dimension of size 0"),
                    ));
                }
                s.clone()
            }
            OpT::Lambda(l) => {
                let l = l.clone();
                self.lambda_node(&name, &layer, &l, &input_names, &input_shapes)?
            }
            op => {
                let lo = op.as_layer_mut().expect("built-in layer");
                let ctx = InferCtx {
                    node: &name,
                    input_names: &input_names,
                    input_shapes: &input_shapes,
                };
                let shape = lo.infer(&ctx)?;
                for spec in lo.param_specs() {
                    self.claim_param(&name, &layer, &spec)?;
                }
                shape
            }
        };
        if shape.dims().contains(&0) {
            let inputs: Vec<String> = input_names
                .iter()
                .zip(&input_shapes)
                .map(|(n, s)| format!("'{n}' {s}"))
                .collect();
            return Err(Error::shape(
                &name,
                format!(
                    "output shape {shape} is empty (from {}): every axis must have at least one element",
                    inputs.join(", ")
                ),
            ));
        }
        if shape
            .checked_elem_count()
            .is_none_or(|n| n > crate::shape::MAX_ELEMENTS)
        {
            return Err(Error::invalid(
                &name,
                format!(
                    "output shape {shape} has more than {} elements per sample",
                    crate::shape::MAX_ELEMENTS
                ),
            ));
        }
        let id = self.graph.nodes.len();
        self.graph.index.insert(name.clone(), id);
        self.graph.nodes.push(Node {
            name,
            op,
            inputs: inputs.to_vec(),
            shape,
            layer,
            view: None,
        });
        Ok(id)
    }

    /// Creates (or, for a shared layer or a loaded model, checks) one parameter.
    fn claim_param(&mut self, node: &str, layer: &str, spec: &ParamSpec) -> Result<String> {
        let key = format!("{layer}.{}", spec.name);
        if self.params.contains(&key) {
            let have = self.params.get(&key)?.var.dims().to_vec();
            if have != spec.shape {
                return Err(Error::shape(
                    node,
                    format!(
                        "parameter '{key}' has shape {have:?}, but this call needs {:?}",
                        spec.shape
                    ),
                ));
            }
        } else if self.preset {
            return Err(Error::invalid(
                node,
                format!(
                    "weights file has no tensor '{key}' (shape {:?})",
                    spec.shape
                ),
            ));
        } else {
            let t = self.init.make(spec, &self.device)?;
            self.params.insert(key.clone(), t, spec.kind)?;
        }
        self.claimed.insert(key.clone());
        Ok(key)
    }

    fn lambda_node(
        &mut self,
        name: &str,
        layer: &str,
        l: &LambdaNode,
        input_names: &[String],
        input_shapes: &[Shape],
    ) -> Result<Shape> {
        // Referenced weights must exist now; frozen ones are snapshotted now.
        let mut weights = Vec::with_capacity(l.weights.len());
        let mut weight_shapes = Vec::with_capacity(l.weights.len());
        for (i, w) in l.weights.iter().enumerate() {
            let src = self.params.get(&w.key).map_err(|e| match e {
                Error::UnknownName { suggestions, .. } => Error::UnknownName {
                    kind: "parameter (referenced by a Lambda)",
                    name: w.key.clone(),
                    suggestions,
                },
                e => e,
            })?;
            let t = src.var.as_detached_tensor();
            weight_shapes.push((w.key.clone(), t.dims().to_vec()));
            if w.mode == RefMode::Frozen {
                let key = frozen_key(name, i);
                if !self.params.contains(&key) {
                    if self.preset {
                        return Err(Error::invalid(
                            name,
                            format!("weights file has no frozen snapshot '{key}'"),
                        ));
                    }
                    self.params
                        .insert(key.clone(), t.copy()?, ParamKind::Constant)?;
                }
                self.claimed.insert(key.clone());
                self.claimed.insert(w.key.clone());
                weights.push(self.params.get(&key)?.var.as_detached_tensor());
            } else {
                self.claimed.insert(w.key.clone());
                weights.push(t);
            }
        }
        let specs = l.op.param_specs(input_shapes)?;
        for spec in &specs {
            self.claim_param(name, layer, spec)?;
        }
        let sctx = ShapeCtx {
            node: name,
            input_names,
            input_shapes,
            weights: &weight_shapes,
        };
        if let Some(shape) = l.op.output_shape(&sctx) {
            return shape;
        }
        // No declared shape rule: run once on a zero batch of one, like Keras traces a Lambda.
        let xs = input_shapes
            .iter()
            .map(|s| Tensor::zeros(s.with_batch(1), DType::F32, &self.device))
            .collect::<candle_core::Result<Vec<_>>>()
            .at_node(name)?;
        let params = &self.params;
        let lookup = |local: &str| {
            params
                .tensor(&format!("{layer}.{local}"))
                .map(|t| t.detach())
        };
        let ctx = LambdaCtx {
            node: name,
            train: false,
            weights: &weights,
            params: &lookup,
        };
        let y = l.op.forward(&xs, &ctx).map_err(|e| {
            let ins: Vec<String> = input_names
                .iter()
                .zip(input_shapes)
                .map(|(n, s)| format!("'{n}' {s}"))
                .collect();
            Error::shape(
                name,
                format!(
                    "Lambda '{}' failed on inputs {}: {e}",
                    l.op.type_name(),
                    ins.join(", ")
                ),
            )
        })?;
        if y.rank() == 0 || y.dim(0)? != 1 {
            return Err(Error::shape(
                name,
                format!(
                    "Lambda '{}' must keep the batch axis first; on a batch of 1 it returned {:?}",
                    l.op.type_name(),
                    y.dims()
                ),
            ));
        }
        Ok(Shape::from_tensor_dims(y.dims()))
    }
}

/// Key of the constant snapshot for a Lambda's `i`-th frozen weight reference.
pub(crate) fn frozen_key(node: &str, i: usize) -> String {
    format!("{node}.frozen{i}")
}

fn base_name(op: &Op) -> String {
    match op {
        OpT::Input(_) => "input".into(),
        OpT::Lambda(l) => l.op.base_name().to_string(),
        op => op.as_layer().expect("built-in").base_name().to_string(),
    }
}

fn ids(r: &[NodeRef]) -> Vec<NodeId> {
    r.iter().map(|r| r.0).collect()
}

// Raw access for the loader, which replays a saved graph node by node.
impl Functional {
    pub(crate) fn push_raw(
        &mut self,
        name: String,
        op: Op,
        inputs: &[NodeId],
        layer: Option<String>,
    ) -> Result<NodeId> {
        if self.name_taken(&name) {
            return Err(Error::DuplicateName(name));
        }
        self.push(name, op, inputs, layer)
    }

    pub(crate) fn alias_raw(&mut self, alias: &str, id: NodeId) {
        self.graph.aliases.insert(alias.to_string(), id);
    }

    pub(crate) fn set_inputs(&mut self, inputs: Vec<NodeId>) {
        self.graph.inputs = inputs;
    }

    pub(crate) fn build_raw(self, outputs: Vec<NodeId>) -> Result<Model> {
        let refs: Vec<NodeRef> = outputs.into_iter().map(NodeRef).collect();
        self.build(&refs)
    }
}
