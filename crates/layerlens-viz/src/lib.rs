//! # layerlens-viz
//!
//! Pictures of what a layerlens model computes: feature-map grids with
//! activation-aware normalisation ([`grid`]), colormaps ([`Colormap`]),
//! first-layer filters, class activation maps — Grad-CAM, Grad-CAM++, Score-CAM,
//! Eigen-CAM, LayerCAM — overlaid on the input ([`cam`]), and per-layer
//! activation statistics and histograms ([`stats`]), and a self-contained HTML
//! report of all of it ([`report`]).

pub mod cam;
mod colormap;
pub mod grid;
mod normalize;
pub mod report;
pub mod stats;
mod text;

pub use colormap::Colormap;
pub use normalize::{Norm, Range};
