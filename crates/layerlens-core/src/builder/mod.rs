//! Model builders: [`Functional`] (node handles you wire, any number of inputs
//! and outputs), [`Sequential`] (a stack), [`Block`] (a reusable piece of graph
//! with its own name scope: the analogue of Keras subclassing and of PyTorch
//! modules), shared layers and inlining of a whole model as a sub-network.
//!
//! Every node's shape is inferred as it is added, so shape errors surface while
//! building and name the nodes involved.

mod functional;
mod sequential;

pub(crate) use functional::frozen_key as functional_frozen_key;
pub use functional::{Block, Functional, NodeRef, SharedLayer};
pub use sequential::Sequential;
