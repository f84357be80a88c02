//! Activation statistics.
