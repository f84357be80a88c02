//! Extraction plans: which nodes to run, in which order, and when each value
//! can be freed. A plan for a set of requested outputs runs only their
//! ancestors and drops every intermediate right after its last use. Plans are
//! cached per output set.

use crate::ir::{Graph, NodeId};
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
        for frees in &free_after {
            live += 1;
            peak_live = peak_live.max(live);
            live -= frees.len();
        }
        Plan {
            names: g.names(&steps),
            steps,
            free_after,
            outputs: outputs.to_vec(),
            peak_live,
        }
    }

    /// Names of the nodes this plan runs, in order.
    pub fn steps(&self) -> &[String] {
        &self.names
    }

    /// The most activation tensors alive at any point when running the plan.
    pub fn peak_live(&self) -> usize {
        self.peak_live
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
