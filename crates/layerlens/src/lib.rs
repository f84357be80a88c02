//! # layerlens
//!
//! The library users depend on. It re-exports the core (graph IR, builders,
//! extraction, hooks, Lambdas) and, as they land, the importers, the model zoo,
//! training and visualisation.
//!
//! ```
//! use layerlens::prelude::*;
//! let model = Sequential::new("tiny", [3, 8, 8]).add(Conv2d::new(4, 3))?.build()?;
//! println!("{}", model.summary());
//! # Ok::<(), layerlens::Error>(())
//! ```

pub use layerlens_core::*;
