//! # layerlens-train
//!
//! Training for layerlens models, with losses on any activations:
//! PyTorch-exact optimisers ([`optim`]), composable losses ([`loss`]), the
//! [`fit`](fit::fit) loop (shuffling, validation, accuracy, progress bar, early
//! stopping, checkpoints, resume) and datasets ([`data`]).
//!
//! ```no_run
//! use layerlens_train::{data, fit, loss::Loss, optim::Adam};
//! # fn model() -> layerlens_core::Model { unimplemented!() }
//! let model = model(); // e.g. layerlens::zoo::seed_cnn(false)
//! let train = data::embedded_fashion_mnist(data::Split::Train)?;
//! let loss = Loss::cross_entropy("dense") + 0.1 * Loss::mean_square("conv2d");
//! let mut opt = Adam::new(model.params(), 1e-3);
//! let cfg = fit::FitConfig { epochs: 3, accuracy_node: Some("dense".into()), ..Default::default() };
//! let history = fit::fit(&model, &loss, &mut opt, &train, None, &cfg)?;
//! # Ok::<(), layerlens_core::Error>(())
//! ```

pub mod data;
pub mod fit;
pub mod loss;
pub mod optim;

pub use fit::{evaluate, fit, train_step, EarlyStopping, FitConfig, History, Monitor};
pub use loss::Loss;
pub use optim::{Adam, LrSchedule, Optimizer, Sgd};
