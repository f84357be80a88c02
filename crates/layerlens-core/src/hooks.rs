//! Forward hooks: code that observes or replaces a node's activation during a
//! forward pass, like PyTorch's `register_forward_hook`. A hook lives as long as
//! its [`HookHandle`].

use crate::error::Result;
use candle_core::Tensor;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};

/// What a hook is told about the activation it sees.
#[derive(Debug, Clone, Copy)]
pub struct HookCtx<'a> {
    /// The node that produced it (for a shared layer, this call's node).
    pub node: &'a str,
    /// The layer (parameter scope) of the node.
    pub layer: &'a str,
    /// Whether the pass runs in training mode.
    pub train: bool,
}

/// A hook: return `Ok(None)` to observe, `Ok(Some(t))` to replace the activation
/// with `t` (same shape) for everything downstream.
pub type HookFn = dyn Fn(&HookCtx, &Tensor) -> Result<Option<Tensor>> + Send + Sync;

pub(crate) struct HookEntry {
    id: u64,
    /// The names of the nodes it fires on: names, not ids, so that the models
    /// derived from one (sub-models, extensions) share its hooks.
    pub(crate) nodes: HashSet<String>,
    pub(crate) f: Arc<HookFn>,
}

/// The hooks registered on one model.
#[derive(Default)]
pub(crate) struct HookTable {
    next: AtomicU64,
    pub(crate) entries: RwLock<Vec<HookEntry>>,
}

impl HookTable {
    pub(crate) fn add(self: &Arc<Self>, nodes: HashSet<String>, f: Arc<HookFn>) -> HookHandle {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(HookEntry { id, nodes, f });
        HookHandle {
            table: Arc::downgrade(self),
            id,
        }
    }

    /// The hooks that fire on the node named `node`, in registration order.
    pub(crate) fn for_node(&self, node: &str) -> Vec<Arc<HookFn>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .filter(|e| e.nodes.contains(node))
            .map(|e| e.f.clone())
            .collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }
}

/// Keeps a hook registered; dropping it (or calling [`remove`](Self::remove))
/// removes the hook.
#[must_use = "the hook is removed as soon as its handle is dropped"]
pub struct HookHandle {
    table: Weak<HookTable>,
    id: u64,
}

impl HookHandle {
    /// Removes the hook now.
    pub fn remove(self) {}
}

impl Drop for HookHandle {
    fn drop(&mut self) {
        if let Some(t) = self.table.upgrade() {
            t.entries
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|e| e.id != self.id);
        }
    }
}

impl std::fmt::Debug for HookHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HookHandle({})", self.id)
    }
}
