//! Saving and loading: the structure as readable JSON (`model.json`), the
//! parameters as safetensors (`model.safetensors`), in one directory.
//!
//! Lambdas are stored by registered type name and JSON arguments, never as
//! code; loading rebuilds the graph through the same builder (so every shape is
//! checked again) and constructs Lambdas only through a [`LambdaRegistry`].
//! Files are written under temporary names, synced and renamed into place
//! ([`crate::fsio`]; their mode follows the umask), JSON last, so
//! an interrupted save never leaves a directory that looks complete.

use crate::builder::Functional;
use crate::builder::NodeRef;
use crate::error::{Error, Result};
use crate::fsio::{write_atomic, write_atomic_with};
use crate::ir::{BatchView, NodeId, OpT};
use crate::lambda::{LambdaNode, LambdaRegistry, WeightRef};
use crate::model::Model;
use crate::params::{ParamKind, ParamStore};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The structure file's name inside a saved model directory.
pub const GRAPH_FILE: &str = "model.json";
/// The weights file's name inside a saved model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
const FORMAT: &str = "layerlens-model";
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct LambdaRecord {
    #[serde(rename = "type")]
    type_name: String,
    #[serde(default)]
    args: serde_json::Value,
    #[serde(default)]
    weights: Vec<WeightRef>,
}

#[derive(Serialize, Deserialize)]
struct NodeRecord {
    name: String,
    #[serde(flatten)]
    op: OpT<LambdaRecord>,
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layer: Option<String>,
    /// Where the batch sits in the node's outside tensor, when not first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    view: Option<BatchView>,
}

#[derive(Serialize, Deserialize)]
struct ParamRecord {
    kind: ParamKind,
    trainable: bool,
    shape: Vec<usize>,
}

#[derive(Serialize, Deserialize)]
struct GraphFile {
    format: String,
    version: u32,
    name: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    nodes: Vec<NodeRecord>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
    params: BTreeMap<String, ParamRecord>,
}

impl Model {
    /// Saves the model into directory `dir` (created if missing) as `model.json`
    /// and `model.safetensors`. Fails, writing nothing, if a node is a closure Lambda.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let g = self.graph();
        let mut nodes = Vec::with_capacity(g.nodes().len());
        for n in g.nodes() {
            let op = n.op.clone().map_lambda(|l: LambdaNode| {
                if !l.op.saveable() {
                    return Err(Error::Lambda(format!(
                        "node '{}' is a closure Lambda ('{}') and cannot be saved: implement CustomOp for it and register it in a LambdaRegistry",
                        n.name,
                        l.op.type_name()
                    )));
                }
                Ok(LambdaRecord { type_name: l.op.type_name().to_string(), args: l.op.args(), weights: l.weights })
            })?;
            nodes.push(NodeRecord {
                name: n.name.clone(),
                op,
                inputs: g.names(&n.inputs),
                layer: (n.layer != n.name).then(|| n.layer.clone()),
                view: n.view.clone(),
            });
        }
        let file = GraphFile {
            format: FORMAT.into(),
            version: VERSION,
            name: g.name().to_string(),
            inputs: g.names(g.inputs()),
            outputs: g.names(g.outputs()),
            nodes,
            aliases: g
                .aliases()
                .iter()
                .map(|(a, &i)| (a.clone(), g.node(i).name.clone()))
                .collect(),
            params: self
                .params()
                .iter()
                .map(|(k, p)| {
                    (
                        k.to_string(),
                        ParamRecord {
                            kind: p.kind,
                            trainable: p.trainable,
                            shape: p.var.dims().to_vec(),
                        },
                    )
                })
                .collect(),
        };
        let json = serde_json::to_string_pretty(&file)
            .map_err(|e| Error::Lambda(format!("cannot serialise model: {e}")))?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        // An older complete save must not survive next to new weights.
        let graph_path = dir.join(GRAPH_FILE);
        if graph_path.exists() {
            std::fs::remove_file(&graph_path).map_err(|e| Error::io(&graph_path, e))?;
        }
        let tensors: HashMap<String, Tensor> = self
            .params()
            .iter()
            .map(|(k, p)| (k.to_string(), p.var.as_detached_tensor()))
            .collect();
        let wpath = dir.join(WEIGHTS_FILE);
        write_atomic_with(&wpath, |tmp| {
            candle_core::safetensors::save(&tensors, tmp)
                .map_err(|e| Error::format(tmp, e.to_string()))
        })?;
        write_atomic(&graph_path, |f| {
            std::io::Write::write_all(f, json.as_bytes())
        })
    }

    /// Loads a model saved by [`save`](Self::save), with the built-in Lambdas only.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Model> {
        Self::load_with(dir, &LambdaRegistry::with_builtins(), device)
    }

    /// Loads a model, constructing its Lambdas through `registry`.
    pub fn load_with(
        dir: impl AsRef<Path>,
        registry: &LambdaRegistry,
        device: &Device,
    ) -> Result<Model> {
        let dir = dir.as_ref();
        let gpath = dir.join(GRAPH_FILE);
        let text = std::fs::read_to_string(&gpath).map_err(|e| Error::io(&gpath, e))?;
        let file: GraphFile =
            serde_json::from_str(&text).map_err(|e| Error::format(&gpath, e.to_string()))?;
        if file.format != FORMAT || file.version != VERSION {
            return Err(Error::format(
                &gpath,
                format!(
                    "not a {FORMAT} v{VERSION} file (format '{}', version {})",
                    file.format, file.version
                ),
            ));
        }
        let wpath = dir.join(WEIGHTS_FILE);
        if !wpath.exists() {
            return Err(Error::format(
                &wpath,
                "missing: the weights file of this model is not there",
            ));
        }
        let tensors = candle_core::safetensors::load(&wpath, device)
            .map_err(|e| Error::format(&wpath, e.to_string()))?;
        let mut params = ParamStore::new();
        for (k, t) in tensors {
            let rec = file.params.get(&k).ok_or_else(|| {
                Error::format(
                    &wpath,
                    format!("tensor '{k}' is not listed in {GRAPH_FILE}"),
                )
            })?;
            if rec.shape != t.dims() {
                return Err(Error::format(
                    &wpath,
                    format!(
                        "tensor '{k}' has shape {:?} but {GRAPH_FILE} says {:?}",
                        t.dims(),
                        rec.shape
                    ),
                ));
            }
            params.insert(k.clone(), t, rec.kind)?;
        }
        let input_nodes: Vec<String> = file
            .nodes
            .iter()
            .filter(|n| matches!(n.op, OpT::Input(_)))
            .map(|n| n.name.clone())
            .collect();
        let mut g = Functional::with_params(&file.name, params, device);
        let mut ids: HashMap<String, NodeId> = HashMap::new();
        for (i, n) in file.nodes.into_iter().enumerate() {
            let ctx = |m: String| Error::format(&gpath, format!("node {i} ('{}'): {m}", n.name));
            let inputs = n
                .inputs
                .iter()
                .map(|name| {
                    ids.get(name)
                        .copied()
                        .ok_or_else(|| ctx(format!("input '{name}' is not defined before it")))
                })
                .collect::<Result<Vec<_>>>()?;
            let op = n.op.map_lambda(|r| {
                registry
                    .build(&r.type_name, &r.args)
                    .map(|op| LambdaNode {
                        op,
                        weights: r.weights,
                    })
                    .map_err(|e| ctx(e.to_string()))
            })?;
            let id = g.push_raw(n.name.clone(), op, &inputs, n.layer)?;
            g.set_view(NodeRef(id), n.view)
                .map_err(|e| ctx(e.to_string()))?;
            ids.insert(n.name, id);
        }
        let find = |name: &String| {
            ids.get(name)
                .copied()
                .ok_or_else(|| Error::format(&gpath, format!("'{name}' names no node")))
        };
        for (a, target) in &file.aliases {
            g.alias_raw(a, find(target)?);
        }
        let inputs = file.inputs.iter().map(find).collect::<Result<Vec<_>>>()?;
        let declared: Vec<&str> = input_nodes.iter().map(String::as_str).collect();
        for name in &file.inputs {
            if !declared.contains(&name.as_str()) {
                return Err(Error::format(
                    &gpath,
                    format!("graph input '{name}' is not an input node"),
                ));
            }
        }
        if let Some(missing) = declared
            .iter()
            .find(|d| !file.inputs.iter().any(|i| i == *d))
        {
            return Err(Error::format(
                &gpath,
                format!("input node '{missing}' is missing from the graph's inputs"),
            ));
        }
        g.set_inputs(inputs);
        let outputs = file.outputs.iter().map(find).collect::<Result<Vec<_>>>()?;
        let mut model = g.build_raw(outputs)?;
        for (k, rec) in &file.params {
            if !model.params().contains(k) {
                return Err(Error::format(
                    &wpath,
                    format!("missing tensor '{k}' listed in {GRAPH_FILE}"),
                ));
            }
            if rec.kind == ParamKind::Trainable {
                model.params_mut().set_trainable(k, rec.trainable);
            }
        }
        Ok(model)
    }
}
