//! The graph as the page draws it: nodes with op, shape, parameters and MACs,
//! edges, and blocks (`layer1.0`, `_blocks.15`) the page can collapse.

use layerlens::ir::OpT;
use layerlens::Model;
use serde::Serialize;
use std::collections::BTreeMap;

/// One node of `/api/graph`.
#[derive(Debug, Clone, Serialize)]
pub struct GraphNode {
    /// Node name.
    pub name: String,
    /// Op label (`Conv2d`).
    pub op: String,
    /// Per-sample output shape.
    pub shape: Vec<usize>,
    /// Parameters first owned by the node.
    pub params: usize,
    /// Multiply-accumulates per sample.
    pub macs: u64,
    /// Input node names.
    pub inputs: Vec<String>,
    /// The innermost block holding the node, if any.
    pub block: Option<String>,
    /// `(C, H, W)` and not an input: it has a feature-map grid and a CAM.
    pub cam_capable: bool,
}

/// A block: a named group of nodes whose name resolves to its output.
#[derive(Debug, Clone, Serialize)]
pub struct GraphBlock {
    /// Block name (`_blocks.15`).
    pub name: String,
    /// The node giving the block's output.
    pub output: String,
    /// How many nodes it holds.
    pub size: usize,
}

/// `/api/graph`: the model's structure.
#[derive(Debug, Clone, Serialize)]
pub struct GraphJson {
    /// Model name.
    pub model: String,
    /// Nodes in topological order.
    pub nodes: Vec<GraphNode>,
    /// Blocks, by name.
    pub blocks: Vec<GraphBlock>,
    /// Output node names.
    pub outputs: Vec<String>,
    /// Trainable parameters.
    pub trainable: usize,
}

/// Builds the page's view of `model`'s graph. A block is an alias `B` whose
/// output node is named `B.…` and that at least two nodes share as a prefix;
/// a node belongs to the longest such prefix.
pub fn graph_json(model: &Model) -> GraphJson {
    let g = model.graph();
    let summary = model.summary();
    let mut blocks: BTreeMap<String, GraphBlock> = BTreeMap::new();
    for (alias, &id) in g.aliases() {
        let prefix = format!("{alias}.");
        let size = g
            .nodes()
            .iter()
            .filter(|n| n.name.starts_with(&prefix))
            .count();
        if size >= 2 && g.node(id).name.starts_with(&prefix) {
            blocks.insert(
                alias.clone(),
                GraphBlock {
                    name: alias.clone(),
                    output: g.node(id).name.clone(),
                    size,
                },
            );
        }
    }
    let block_of = |name: &str| -> Option<String> {
        blocks
            .keys()
            .filter(|b| name.starts_with(&format!("{b}.")))
            .max_by_key(|b| b.len())
            .cloned()
    };
    let nodes: Vec<GraphNode> = g
        .nodes()
        .iter()
        .zip(&summary.rows)
        .map(|(n, row)| GraphNode {
            name: n.name.clone(),
            op: row.op.clone(),
            shape: n.shape.dims().to_vec(),
            params: row.params,
            macs: row.macs,
            inputs: row.inputs.clone(),
            block: block_of(&n.name),
            cam_capable: n.shape.rank() == 3 && !matches!(n.op, OpT::Input(_)),
        })
        .collect();
    // Sizes count only the nodes whose innermost block it is.
    for b in blocks.values_mut() {
        b.size = nodes
            .iter()
            .filter(|n| n.block.as_deref() == Some(b.name.as_str()))
            .count();
    }
    blocks.retain(|_, b| b.size >= 1);
    GraphJson {
        model: summary.name.clone(),
        nodes,
        blocks: blocks.into_values().collect(),
        outputs: g.names(g.outputs()),
        trainable: summary.trainable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet_blocks_collapse_and_every_node_is_listed() {
        let m = layerlens::zoo::resnet18(10).unwrap();
        let j = graph_json(&m);
        assert_eq!(j.nodes.len(), m.graph().nodes().len());
        let b = j.blocks.iter().find(|b| b.name == "layer1.0").unwrap();
        assert!(b.output.starts_with("layer1.0."), "{}", b.output);
        let conv = j.nodes.iter().find(|n| n.name == "layer1.0.conv1").unwrap();
        assert_eq!(conv.block.as_deref(), Some("layer1.0"));
        assert!(conv.cam_capable && conv.params == 64 * 64 * 9);
        // `layer1` holds blocks, not nodes of its own: it is no block.
        assert!(j.blocks.iter().all(|b| b.name != "layer1"));
    }
}
