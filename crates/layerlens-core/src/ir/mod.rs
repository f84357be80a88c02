//! The graph IR: the one source of truth every builder and importer produces and
//! every executor consumes. A [`Graph`] is a list of named [`Node`]s in
//! topological order; each node has an [`Op`], input edges and an inferred
//! per-sample [`Shape`]. Parameters live apart, in a
//! [`ParamStore`](crate::params::ParamStore), under `layer.param` keys, where
//! `layer` is the node's [`Node::layer`] (shared by every call of a shared layer).

mod op;
mod view;

pub use op::{Op, OpT};
pub use view::BatchView;

use crate::error::{Error, Result};
use crate::select::Selector;
use crate::shape::Shape;
use std::collections::{BTreeMap, HashMap};

/// Index of a node in its graph.
pub type NodeId = usize;

/// One node: a layer call.
#[derive(Clone, Debug)]
pub struct Node {
    /// Unique name (`conv2d`, `layer1.0.conv1`, `dense@1` for a shared layer's second call).
    pub name: String,
    /// What it computes.
    pub op: Op,
    /// Input nodes, in order.
    pub inputs: Vec<NodeId>,
    /// Inferred per-sample output shape.
    pub shape: Shape,
    /// Parameter scope: keys of this node's parameters are `layer.param`. Equal to
    /// the name except for the second and later calls of a shared layer.
    pub layer: String,
    /// Where the batch sits in the tensor this node is known by outside, when
    /// that is not batch-first (an imported ONNX tensor `(197, N, 768)`):
    /// extraction returns that tensor; hooks and the executor see batch-first.
    pub view: Option<BatchView>,
}

/// A computation graph with named nodes.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub(crate) name: String,
    pub(crate) nodes: Vec<Node>,
    pub(crate) index: HashMap<String, NodeId>,
    pub(crate) aliases: BTreeMap<String, NodeId>,
    pub(crate) inputs: Vec<NodeId>,
    pub(crate) outputs: Vec<NodeId>,
}

impl Graph {
    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// All nodes in topological order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    /// The node with id `id`.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }
    /// Input node ids, in the order inputs are passed.
    pub fn inputs(&self) -> &[NodeId] {
        &self.inputs
    }
    /// Output node ids.
    pub fn outputs(&self) -> &[NodeId] {
        &self.outputs
    }
    /// Extra names that resolve to nodes (a block's name to its output, an ONNX
    /// tensor name to its producer).
    pub fn aliases(&self) -> &BTreeMap<String, NodeId> {
        &self.aliases
    }

    /// Every name a user may type: node names and aliases.
    pub fn all_names(&self) -> impl Iterator<Item = &str> {
        self.nodes
            .iter()
            .map(|n| n.name.as_str())
            .chain(self.aliases.keys().map(|s| s.as_str()))
    }

    /// The node called `name` (or aliased so), or an error listing the closest names.
    pub fn find(&self, name: &str) -> Result<NodeId> {
        self.index
            .get(name)
            .or_else(|| self.aliases.get(name))
            .copied()
            .ok_or_else(|| Error::unknown("node", name, self.all_names()))
    }

    /// Resolves selectors (exact names, globs such as `layer*.conv1`, or `all`)
    /// to node ids, in the order given, without duplicates.
    pub fn select<S: AsRef<str>>(&self, selectors: &[S]) -> Result<Vec<NodeId>> {
        Ok(self
            .select_named(selectors)?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// Like [`select`](Self::select), with the name each node was asked for by:
    /// an alias given exactly (`layer1.0`) keeps that name, a glob gives node names.
    pub fn select_named<S: AsRef<str>>(&self, selectors: &[S]) -> Result<Vec<(NodeId, String)>> {
        let mut out: Vec<(NodeId, String)> = Vec::new();
        for s in selectors {
            let sel = Selector::parse(s.as_ref())?;
            for id in sel.resolve(self)? {
                let name = match &sel {
                    Selector::Exact(name) => name.clone(),
                    _ => self.nodes[id].name.clone(),
                };
                // Two names of one node (an alias and the node) are both answered.
                if !out.iter().any(|(i, n)| *i == id && *n == name) {
                    out.push((id, name));
                }
            }
        }
        Ok(out)
    }

    /// Ids of `targets` and all their ancestors, as a mask.
    pub fn ancestors(&self, targets: &[NodeId]) -> Vec<bool> {
        let mut keep = vec![false; self.nodes.len()];
        let mut stack: Vec<NodeId> = targets.to_vec();
        while let Some(id) = stack.pop() {
            if !keep[id] {
                keep[id] = true;
                stack.extend(&self.nodes[id].inputs);
            }
        }
        keep
    }

    /// A copy holding only `outputs`, their ancestors and the graph inputs, with
    /// `outputs` as the graph outputs. Node names and layer scopes are unchanged,
    /// so the copy can share a parameter store with the original.
    pub fn prune(&self, outputs: &[NodeId]) -> Graph {
        let mut keep = self.ancestors(outputs);
        for &i in &self.inputs {
            keep[i] = true;
        }
        let mut remap = vec![usize::MAX; self.nodes.len()];
        let mut g = Graph {
            name: self.name.clone(),
            ..Default::default()
        };
        for (id, n) in self.nodes.iter().enumerate().filter(|(i, _)| keep[*i]) {
            let mut n = n.clone();
            n.inputs = n.inputs.iter().map(|&i| remap[i]).collect();
            remap[id] = g.nodes.len();
            g.index.insert(n.name.clone(), g.nodes.len());
            g.nodes.push(n);
        }
        g.inputs = self
            .inputs
            .iter()
            .filter(|&&i| keep[i])
            .map(|&i| remap[i])
            .collect();
        g.outputs = outputs.iter().map(|&i| remap[i]).collect();
        g.aliases = self
            .aliases
            .iter()
            .filter(|(_, &i)| keep[i])
            .map(|(k, &i)| (k.clone(), remap[i]))
            .collect();
        g
    }

    /// Names of the nodes in `ids`.
    pub fn names(&self, ids: &[NodeId]) -> Vec<String> {
        ids.iter().map(|&i| self.nodes[i].name.clone()).collect()
    }
}
