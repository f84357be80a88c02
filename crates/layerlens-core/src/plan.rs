//! Extraction plans: which nodes to run, in which order, and when each value
//! can be freed. A plan for a set of requested outputs runs only their
//! ancestors and drops every intermediate right after its last use. Plans are
//! cached per output set.

use crate::ir::{Graph, NodeId, OpT};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// An execution plan for a set of requested nodes.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Nodes to run, in topological order.
    pub(crate) steps: Vec<NodeId>,
    /// After step `i`, these values are no longer needed.
    pub(crate) free_after: Vec<Vec<NodeId>>,
    /// The requested nodes, in request order.
    pub(crate) outputs: Vec<NodeId>,
    /// Step names, for inspection.
    names: Vec<String>,
    /// Largest number of values alive at once (requested outputs included).
    peak_live: usize,
    /// Largest sum of per-sample elements alive at once (requested outputs included).
    peak_live_elements: usize,
    /// The same plan with convolution chains fused, for plain inference.
    pub(crate) fused: Option<FusedSteps>,
}

/// `conv → [batch norm] → [add] → [activation]`, run as one convolution with an
/// epilogue at the position of its last node (so the residual is computed by then).
#[derive(Debug, Clone)]
pub(crate) struct ConvChain {
    pub(crate) conv: NodeId,
    pub(crate) bn: Option<NodeId>,
    /// The add node and its other operand.
    pub(crate) add: Option<(NodeId, NodeId)>,
    pub(crate) act: Option<NodeId>,
    /// The node whose value the chain produces.
    pub(crate) last: NodeId,
}

/// One step of a fused plan.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    Node(NodeId),
    Chain(ConvChain),
}

/// An inference plan in which chains run as single steps.
#[derive(Debug, Clone)]
pub(crate) struct FusedSteps {
    pub(crate) steps: Vec<Step>,
    pub(crate) free_after: Vec<Vec<NodeId>>,
}

/// Values read by a step.
fn step_inputs(g: &Graph, s: &Step) -> Vec<NodeId> {
    match s {
        Step::Node(id) => g.nodes[*id].inputs.clone(),
        Step::Chain(c) => {
            let mut v = g.nodes[c.conv].inputs.clone();
            v.extend(c.add.map(|(_, other)| other));
            v
        }
    }
}

fn step_output(s: &Step) -> NodeId {
    match s {
        Step::Node(id) => *id,
        Step::Chain(c) => c.last,
    }
}

/// When each value can be freed: after the last step that reads it; requested
/// outputs are kept.
fn frees(g: &Graph, steps: &[Step], outputs: &[NodeId]) -> Vec<Vec<NodeId>> {
    let mut last_use: HashMap<NodeId, usize> = HashMap::new();
    for (i, s) in steps.iter().enumerate() {
        for v in step_inputs(g, s) {
            last_use.insert(v, i);
        }
    }
    let mut free_after = vec![Vec::new(); steps.len()];
    for (i, s) in steps.iter().enumerate() {
        let id = step_output(s);
        if outputs.contains(&id) {
            continue;
        }
        // A value nobody reads (possible only for inputs) is freed at once.
        free_after[*last_use.get(&id).unwrap_or(&i)].push(id);
    }
    free_after
}

/// Finds the chains among `steps`: each intermediate node of a chain must have
/// the next as its only consumer and must not be requested.
fn fuse(g: &Graph, steps: &[NodeId], outputs: &[NodeId]) -> Option<FusedSteps> {
    let in_plan: std::collections::HashSet<NodeId> = steps.iter().copied().collect();
    let mut consumers: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    for &id in steps {
        for &i in &g.nodes[id].inputs {
            consumers.entry(i).or_default().push(id);
        }
    }
    // The single consumer of `id`, when `id` is an intermediate that may be absorbed.
    let mut chains: HashMap<NodeId, ConvChain> = HashMap::new();
    let mut absorbed: std::collections::HashSet<NodeId> = Default::default();
    // Nodes some chain already covers: a node joins at most one chain.
    let mut claimed: std::collections::HashSet<NodeId> = Default::default();
    for &id in steps {
        let sole = |id: NodeId| -> Option<NodeId> {
            if outputs.contains(&id) {
                return None;
            }
            match consumers.get(&id).map(Vec::as_slice) {
                Some(&[c]) if in_plan.contains(&c) && !claimed.contains(&c) => Some(c),
                _ => None,
            }
        };
        let OpT::Conv2d(conv) = &g.nodes[id].op else {
            continue;
        };
        if conv.activation.is_some() {
            continue;
        }
        let mut c = ConvChain {
            conv: id,
            bn: None,
            add: None,
            act: None,
            last: id,
        };
        if let Some(n) = sole(c.last) {
            if matches!(&g.nodes[n].op, OpT::BatchNorm(b) if g.nodes[n].shape.rank() == 3 && b.channels == conv.filters)
            {
                c.bn = Some(n);
                c.last = n;
            }
        }
        if let Some(n) = sole(c.last) {
            let node = &g.nodes[n];
            if matches!(node.op, OpT::Add(_))
                && node.inputs.len() == 2
                && node.inputs[0] != node.inputs[1]
            {
                let other = if node.inputs[0] == c.last {
                    node.inputs[1]
                } else {
                    node.inputs[0]
                };
                if g.nodes[other].shape == node.shape {
                    c.add = Some((n, other));
                    c.last = n;
                }
            }
        }
        if let Some(n) = sole(c.last) {
            if matches!(&g.nodes[n].op, OpT::Activation(a) if a.fusable().is_some()) {
                c.act = Some(n);
                c.last = n;
            }
        }
        if c.last != id {
            claimed.extend(
                [Some(id), c.bn, c.add.map(|(a, _)| a), c.act]
                    .into_iter()
                    .flatten(),
            );
            absorbed.insert(id);
            absorbed.extend(c.bn);
            absorbed.extend(c.add.map(|(a, _)| a));
            absorbed.extend(c.act);
            absorbed.remove(&c.last);
            chains.insert(c.last, c);
        }
    }
    if chains.is_empty() {
        return None;
    }
    let steps: Vec<Step> = steps
        .iter()
        .filter(|id| !absorbed.contains(id))
        .map(|&id| match chains.remove(&id) {
            Some(c) => Step::Chain(c),
            None => Step::Node(id),
        })
        .collect();
    let free_after = frees(g, &steps, outputs);
    Some(FusedSteps { steps, free_after })
}

impl Plan {
    /// Builds the plan for `outputs`.
    pub fn new(g: &Graph, outputs: &[NodeId]) -> Plan {
        let keep = g.ancestors(outputs);
        let steps: Vec<NodeId> = (0..g.nodes.len()).filter(|&i| keep[i]).collect();
        let mut last_use: HashMap<NodeId, usize> = HashMap::new();
        for (step, &id) in steps.iter().enumerate() {
            for &i in &g.nodes[id].inputs {
                last_use.insert(i, step);
            }
        }
        let mut free_after = vec![Vec::new(); steps.len()];
        for (step, &id) in steps.iter().enumerate() {
            if outputs.contains(&id) {
                continue;
            }
            // A value nobody reads (possible only for inputs) is freed at once.
            free_after[*last_use.get(&id).unwrap_or(&step)].push(id);
        }
        let mut live = 0usize;
        let mut peak_live = 0usize;
        let (mut elems, mut peak_live_elements) = (0usize, 0usize);
        for (frees, &id) in free_after.iter().zip(&steps) {
            live += 1;
            peak_live = peak_live.max(live);
            live -= frees.len();
            elems += g.nodes[id].shape.elem_count();
            peak_live_elements = peak_live_elements.max(elems);
            elems -= frees
                .iter()
                .map(|&f| g.nodes[f].shape.elem_count())
                .sum::<usize>();
        }
        Plan {
            fused: fuse(g, &steps, outputs),
            names: g.names(&steps),
            steps,
            free_after,
            outputs: outputs.to_vec(),
            peak_live,
            peak_live_elements,
        }
    }

    /// Names of the nodes this plan runs, in order.
    pub fn steps(&self) -> &[String] {
        &self.names
    }

    /// How many steps plain inference runs (no gradients, hooks or training):
    /// each `conv → [batch norm] → [add] → [activation]` chain is one step.
    pub fn inference_steps(&self) -> usize {
        self.fused
            .as_ref()
            .map_or(self.steps.len(), |f| f.steps.len())
    }

    /// The most activation tensors alive at any point when running the plan.
    pub fn peak_live(&self) -> usize {
        self.peak_live
    }

    /// The most activation elements alive at once for one sample (requested
    /// outputs included): times the batch and 4 bytes, the plan's activation
    /// memory in float32, which the benchmark compares with the measured peak.
    pub fn peak_live_elements(&self) -> usize {
        self.peak_live_elements
    }
}

/// Plans keyed by their requested outputs.
#[derive(Debug, Default)]
pub(crate) struct PlanCache {
    plans: Mutex<HashMap<Vec<NodeId>, Arc<Plan>>>,
}

impl PlanCache {
    pub(crate) fn get(&self, g: &Graph, outputs: &[NodeId]) -> (Arc<Plan>, bool) {
        let mut m = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = m.get(outputs) {
            return (p.clone(), true);
        }
        let p = Arc::new(Plan::new(g, outputs));
        m.insert(outputs.to_vec(), p.clone());
        (p, false)
    }

    pub(crate) fn len(&self) -> usize {
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
