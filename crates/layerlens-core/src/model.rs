//! [`Model`]: a graph plus its parameters, with extraction, sub-models, hooks
//! and activation gradients.

use crate::error::{Error, Result};
use crate::hooks::{HookCtx, HookHandle, HookTable};
use crate::ir::{Graph, NodeId, OpT};
use crate::params::ParamStore;
use crate::plan::{Plan, PlanCache};
use crate::select::Selector;
use candle_core::{Device, Tensor};
use std::collections::HashSet;
use std::sync::Arc;

/// Evaluation or training behaviour of batch-norm and dropout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Running statistics, no dropout (PyTorch `model.eval()`).
    #[default]
    Eval,
    /// Batch statistics (and running-statistics updates), dropout active.
    Train,
}

/// How a forward pass runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Eval or train behaviour.
    pub mode: Mode,
    /// Build the autograd graph through trainable parameters so that
    /// `loss.backward()` reaches them. Off for plain extraction, which then keeps
    /// no graph and frees every intermediate after its last use.
    pub track_params: bool,
}

impl RunOptions {
    /// Training: train mode with gradients to the trainable parameters.
    pub fn training() -> Self {
        RunOptions {
            mode: Mode::Train,
            track_params: true,
        }
    }
}

/// Activations by node name, in the order they were requested.
#[derive(Clone, Debug, Default)]
pub struct Activations {
    entries: Vec<(String, Tensor)>,
}

impl Activations {
    pub(crate) fn new(entries: Vec<(String, Tensor)>) -> Self {
        Activations { entries }
    }
    /// Activations from `(name, tensor)` pairs.
    pub fn from_pairs(entries: Vec<(String, Tensor)>) -> Self {
        Activations { entries }
    }
    /// The activation of `name`, or an error listing the names present.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                Error::unknown(
                    "activation",
                    name,
                    self.entries.iter().map(|(n, _)| n.as_str()),
                )
            })
    }
    /// `(name, tensor)` pairs in request order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }
    /// The names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|(n, _)| n.as_str()).collect()
    }
    /// Number of activations.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// The pairs, by value.
    pub fn into_vec(self) -> Vec<(String, Tensor)> {
        self.entries
    }
}

impl std::ops::Index<&str> for Activations {
    type Output = Tensor;
    fn index(&self, name: &str) -> &Tensor {
        match self.get(name) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }
}

/// Gradients of a scalar with respect to activations.
#[derive(Debug)]
pub struct Gradients {
    /// The forward values of the target and `wrt` nodes.
    pub values: Activations,
    /// `d scalar / d activation` for each `wrt` node, same shape as the activation.
    pub grads: Activations,
}

/// A model: a shared graph and parameters, plus hooks and cached plans.
///
/// Cloning is cheap and shares everything, parameters included.
#[derive(Clone)]
pub struct Model {
    graph: Arc<Graph>,
    params: ParamStore,
    device: Device,
    pub(crate) hooks: Arc<HookTable>,
    plans: Arc<PlanCache>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.graph.name)
            .field("nodes", &self.graph.nodes.len())
            .field("params", &self.params.len())
            .finish()
    }
}

pub(crate) struct ExecOutput {
    pub(crate) values: Vec<Tensor>,
    pub(crate) cuts: Vec<(NodeId, Tensor, candle_core::Var)>,
    pub(crate) peak_live: usize,
}

impl Model {
    pub(crate) fn from_parts(graph: Graph, params: ParamStore, device: Device) -> Result<Model> {
        Ok(Model {
            graph: Arc::new(graph),
            params,
            device,
            hooks: Arc::default(),
            plans: Arc::default(),
        })
    }

    /// The graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }
    /// The parameters (a state dict).
    pub fn params(&self) -> &ParamStore {
        &self.params
    }
    /// Mutable parameters, e.g. to freeze layers with [`ParamStore::set_trainable`].
    pub fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }
    /// The device parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The model's name.
    pub fn name(&self) -> &str {
        &self.graph.name
    }

    /// Freezes (or unfreezes) every trainable parameter of the nodes matching
    /// `selector`; training leaves frozen parameters alone.
    pub fn set_trainable(&mut self, selector: &str, trainable: bool) -> Result<usize> {
        let sel = Selector::parse(selector)?;
        let ids = sel.resolve(&self.graph)?;
        let layers: HashSet<String> = ids
            .iter()
            .map(|&i| self.graph.nodes[i].layer.clone())
            .collect();
        Ok(layers
            .iter()
            .map(|l| self.params.set_trainable(l, trainable))
            .sum())
    }

    /// Every frozen weight reference of the model's Lambdas as
    /// `(snapshot key, source key)`, e.g. `("proj.frozen0", "conv2d.weight")`.
    ///
    /// A snapshot is taken when the Lambda node is built and then never follows
    /// its source: weights loaded into the model afterwards (a state dict, a
    /// Keras file) leave it stale until [`Model::refresh_frozen`] is called.
    pub fn frozen_snapshots(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for node in self.graph.nodes() {
            if let crate::ir::Op::Lambda(l) = &node.op {
                for (i, w) in l.weights.iter().enumerate() {
                    if w.mode == crate::lambda::RefMode::Frozen {
                        out.push((
                            crate::builder::functional_frozen_key(&node.name, i),
                            w.key.clone(),
                        ));
                    }
                }
            }
        }
        out
    }

    /// Copies each frozen snapshot's source parameter into the snapshot again, as
    /// if the Lambdas were built now, and returns the snapshot keys refreshed.
    /// Call it after loading weights into a model whose Lambdas hold
    /// [`WeightRef::frozen`](crate::lambda::WeightRef::frozen) references.
    pub fn refresh_frozen(&self) -> Result<Vec<String>> {
        let mut refreshed = Vec::new();
        for (snapshot, source) in self.frozen_snapshots() {
            let value = self.params.get(&source)?.var.as_detached_tensor().copy()?;
            self.params.set(&snapshot, &value)?;
            refreshed.push(snapshot);
        }
        Ok(refreshed)
    }

    /// A copy on `device` with its own parameter storage.
    pub fn to_device(&self, device: &Device) -> Result<Model> {
        Ok(Model {
            graph: self.graph.clone(),
            params: self.params.to_device(device)?,
            device: device.clone(),
            hooks: Arc::default(),
            plans: self.plans.clone(),
        })
    }

    /// The (cached) plan that computes the nodes picked by `selectors`.
    pub fn plan<S: AsRef<str>>(&self, selectors: &[S]) -> Result<Arc<Plan>> {
        let ids = self.graph.select(selectors)?;
        Ok(self.plans.get(&self.graph, &ids).0)
    }

    /// How many distinct plans are cached.
    pub fn cached_plans(&self) -> usize {
        self.plans.len()
    }

    /// Runs the whole model in evaluation mode and returns its outputs.
    pub fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let plan = self.plans.get(&self.graph, &self.graph.outputs).0;
        let values = self
            .execute(&plan, inputs, RunOptions::default(), &[])?
            .values;
        self.present(&plan.outputs, values)
    }

    /// Like [`forward`](Self::forward), but every output batch-first,
    /// `(N, per-sample...)`, whatever its outside view ([`Node::view`](crate::ir::Node::view)):
    /// what per-sample rows (dataset shards) and joining batches need. The
    /// per-sample value is the outside tensor without its batch (a merged batch
    /// axis `N·12` leaves its own axis of 12).
    pub fn forward_batch_first(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let plan = self.plans.get(&self.graph, &self.graph.outputs).0;
        Ok(self
            .execute(&plan, inputs, RunOptions::default(), &[])?
            .values)
    }

    /// The outside view of each graph output (`None`: batch-first).
    pub fn output_views(&self) -> Vec<Option<crate::ir::BatchView>> {
        self.graph
            .outputs
            .iter()
            .map(|&o| self.graph.node(o).view.clone())
            .collect()
    }

    /// Batch-first values of nodes `ids` as they are known outside.
    fn present(&self, ids: &[NodeId], values: Vec<Tensor>) -> Result<Vec<Tensor>> {
        ids.iter()
            .zip(values)
            .map(|(&id, t)| crate::exec::present(self.graph.node(id), t))
            .collect()
    }

    /// One input, one output: the model's prediction for `x`.
    pub fn predict(&self, x: &Tensor) -> Result<Tensor> {
        let mut out = self.forward(std::slice::from_ref(x))?;
        Ok(out.swap_remove(0))
    }

    /// The activations of the nodes picked by `selectors` (names, globs or
    /// `all`) for a single-input model, from one evaluation-mode pass that runs
    /// only what they need.
    ///
    /// ```
    /// # use layerlens_core::builder::Sequential;
    /// # use layerlens_core::ops::{Conv2d, Pool2d, Activation};
    /// # use candle_core::{Tensor, Device, DType};
    /// let model = Sequential::new("m", [1, 28, 28])
    ///     .add(Conv2d::new(8, 3).activation(Activation::Relu))?
    ///     .add(Pool2d::max(2))?
    ///     .build()?;
    /// let x = Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu)?;
    /// let acts = model.extract(&x, &["conv2d", "max_pooling2d"])?;
    /// assert_eq!(acts.get("max_pooling2d")?.dims(), &[2, 8, 13, 13]);
    /// # Ok::<(), layerlens_core::Error>(())
    /// ```
    pub fn extract<S: AsRef<str>>(&self, x: &Tensor, selectors: &[S]) -> Result<Activations> {
        self.run(std::slice::from_ref(x), selectors, RunOptions::default())
    }

    /// The general form of [`extract`](Self::extract): several inputs, and a
    /// choice of mode and gradient tracking (for losses on activations).
    pub fn run<S: AsRef<str>>(
        &self,
        inputs: &[Tensor],
        selectors: &[S],
        opts: RunOptions,
    ) -> Result<Activations> {
        let named = self.graph.select_named(selectors)?;
        let ids: Vec<NodeId> = named.iter().map(|(id, _)| *id).collect();
        let plan = self.plans.get(&self.graph, &ids).0;
        let out = self.execute(&plan, inputs, opts, &[])?;
        let values = self.present(&plan.outputs, out.values)?;
        Ok(Activations::new(
            named.into_iter().map(|(_, n)| n).zip(values).collect(),
        ))
    }

    /// A model whose outputs are the nodes picked by `selectors`; it contains
    /// only their ancestors and shares this model's weights (updates to either
    /// are seen by both) and its forward hooks (a hook registered on either
    /// fires in both, as a PyTorch hook fires wherever its module runs).
    pub fn submodel<S: AsRef<str>>(&self, selectors: &[S]) -> Result<Model> {
        let ids = self.graph.select(selectors)?;
        let g = self.graph.prune(&ids);
        let params = used_params(&g, &self.params);
        let mut sub = Model::from_parts(g, params, self.device.clone())?;
        sub.hooks = self.hooks.clone();
        Ok(sub)
    }

    /// Registers a forward hook on the nodes picked by `selector` (a name, a
    /// glob, or a shared layer's name, which matches each of its calls). The
    /// hook fires once per node per pass, after the node runs, and may replace
    /// the activation. It stays until the returned handle is dropped. Models
    /// derived from this one ([`submodel`](Self::submodel),
    /// [`Functional::extend`](crate::builder::Functional::extend)) share it.
    ///
    /// ```
    /// # use layerlens_core::builder::Sequential;
    /// # use layerlens_core::ops::{Conv2d, Activation};
    /// # use candle_core::{Tensor, Device, DType};
    /// # use std::sync::{Arc, Mutex};
    /// let model = Sequential::new("m", [1, 8, 8]).add(Conv2d::new(4, 3).activation(Activation::Relu))?.build()?;
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let s = seen.clone();
    /// let handle = model.register_forward_hook("conv2d", move |ctx, t| {
    ///     s.lock().unwrap().push((ctx.node.to_string(), t.dims().to_vec()));
    ///     Ok(None)
    /// })?;
    /// model.predict(&Tensor::zeros((1, 1, 8, 8), DType::F32, &Device::Cpu)?)?;
    /// drop(handle);
    /// model.predict(&Tensor::zeros((1, 1, 8, 8), DType::F32, &Device::Cpu)?)?;
    /// assert_eq!(seen.lock().unwrap().len(), 1);
    /// # Ok::<(), layerlens_core::Error>(())
    /// ```
    pub fn register_forward_hook(
        &self,
        selector: &str,
        f: impl Fn(&HookCtx, &Tensor) -> Result<Option<Tensor>> + Send + Sync + 'static,
    ) -> Result<HookHandle> {
        let sel = Selector::parse(selector)?;
        let nodes: HashSet<String> = (0..self.graph.nodes.len())
            .filter(|&i| sel.matches_node(&self.graph, i))
            .map(|i| self.graph.nodes[i].name.clone())
            .collect();
        if nodes.is_empty() {
            let names = self
                .graph
                .all_names()
                .chain(self.graph.nodes.iter().map(|n| n.layer.as_str()));
            return Err(Error::unknown("node", selector, names));
        }
        Ok(self.hooks.add(nodes, Arc::new(f)))
    }

    /// The gradient of a scalar with respect to activations (and inputs: name the
    /// input node). `targets` are computed and passed to `scalar`, which returns a
    /// one-element tensor (a class logit, a loss). Gradients do not flow into the
    /// weights here; for weight gradients run with
    /// [`RunOptions::training`] and call `backward()`.
    pub fn gradients<S: AsRef<str>, T: AsRef<str>>(
        &self,
        inputs: &[Tensor],
        targets: &[S],
        wrt: &[T],
        mode: Mode,
        scalar: impl FnOnce(&Activations) -> Result<Tensor>,
    ) -> Result<Gradients> {
        let target_named = self.graph.select_named(targets)?;
        let wrt_named = self.graph.select_named(wrt)?;
        let target_ids: Vec<NodeId> = target_named.iter().map(|(i, _)| *i).collect();
        let wrt_ids: Vec<NodeId> = wrt_named.iter().map(|(i, _)| *i).collect();
        let mut request = target_ids.clone();
        request.extend(wrt_ids.iter().filter(|i| !target_ids.contains(i)));
        let plan = self.plans.get(&self.graph, &request).0;
        let opts = RunOptions {
            mode,
            track_params: false,
        };
        let mut out = self.execute(&plan, inputs, opts, &wrt_ids)?;
        out.values = self.present(&plan.outputs, out.values)?;
        // Results carry the names they were asked by (an alias stays an alias).
        let targets_acts = Activations::new(
            target_named
                .iter()
                .map(|(_, n)| n.clone())
                .zip(out.values.iter().cloned())
                .collect(),
        );
        let s = scalar(&targets_acts)?;
        if s.elem_count() != 1 {
            return Err(Error::invalid(
                "gradients",
                format!(
                    "the scalar function must return one element, got shape {:?}",
                    s.dims()
                ),
            ));
        }
        let mut grads = s.backward()?;
        // Each `wrt` node was cut into a leaf variable. Walk them from the last to
        // the first and push each one's gradient further up into earlier cuts, so
        // that a tap on the path of another still gets its full gradient.
        let mut cuts = out.cuts;
        cuts.sort_by_key(|(id, _, _)| std::cmp::Reverse(*id));
        let mut result = Vec::with_capacity(cuts.len());
        for (id, orig, var) in &cuts {
            let g = match grads.get(var.as_tensor()) {
                Some(g) => g.clone(),
                None => var.as_tensor().zeros_like()?,
            };
            if orig.track_op() {
                // `g` is a constant in this vector-Jacobian product: without the
                // detach, backward would also differentiate the gradient itself.
                let more = (orig * g.detach())?.sum_all()?.backward()?;
                for (_, _, earlier) in cuts.iter().filter(|(j, _, _)| j < id) {
                    if let Some(extra) = more.get(earlier.as_tensor()) {
                        let sum = match grads.get(earlier.as_tensor()) {
                            Some(prev) => (prev + extra)?,
                            None => extra.clone(),
                        };
                        grads.insert(earlier.as_tensor(), sum);
                    }
                }
            }
            // Shaped as the activation is returned: the node's outside view.
            result.push((*id, crate::exec::present(self.graph.node(*id), g.detach())?));
        }
        let grads = Activations::new(
            wrt_named
                .iter()
                .map(|(w, name)| {
                    let g = result
                        .iter()
                        .find(|(id, _)| id == w)
                        .expect("every wrt node is cut")
                        .1
                        .clone();
                    (name.clone(), g)
                })
                .collect(),
        );
        let request_names = target_named
            .iter()
            .chain(wrt_named.iter().filter(|(i, _)| !target_ids.contains(i)))
            .map(|(_, n)| n.clone());
        let values = Activations::new(
            request_names
                .zip(out.values.into_iter().map(|t| t.detach()))
                .collect(),
        );
        Ok(Gradients { values, grads })
    }
}

/// The parameters of `params` that the nodes of `g` use: their layers' own
/// parameters, frozen snapshots and live references. They stay shared.
pub(crate) fn used_params(g: &Graph, params: &ParamStore) -> ParamStore {
    let used: HashSet<&str> = g
        .nodes
        .iter()
        .map(|n| n.layer.as_str())
        .chain(g.nodes.iter().map(|n| n.name.as_str()))
        .collect();
    let mut live_refs: HashSet<&str> = HashSet::new();
    for n in &g.nodes {
        if let OpT::Lambda(l) = &n.op {
            live_refs.extend(l.weights.iter().map(|w| w.key.as_str()));
        }
    }
    let mut out = ParamStore::new();
    for (k, p) in params.iter() {
        let scope_hit = k
            .rsplit_once('.')
            .is_some_and(|(scope, _)| used.contains(scope));
        if scope_hit || live_refs.contains(k) {
            out.insert_param(k.to_string(), p.clone());
        }
    }
    out
}
