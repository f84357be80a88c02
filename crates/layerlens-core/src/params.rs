//! Parameters, kept apart from the graph like a PyTorch state dict: a flat map
//! from `layer.param` keys (`conv2d.weight`, `batch_normalization.running_mean`)
//! to tensors. Cloning a [`ParamStore`] shares the tensors, which is how a
//! sub-model shares weights with the model it came from.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a parameter is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    /// Learned by gradient descent (kernels, biases, batch-norm scale and shift).
    Trainable,
    /// State updated by the forward pass in training mode (batch-norm running statistics).
    Buffer,
    /// A constant snapshot, e.g. a frozen weight reference taken when a Lambda was built.
    Constant,
}

/// How a new parameter is initialised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Glorot/Xavier uniform with the given fan-in and fan-out (Keras' default kernel init).
    GlorotUniform {
        /// Inputs feeding one output.
        fan_in: usize,
        /// Outputs fed by one input.
        fan_out: usize,
    },
}

/// A parameter a layer asks for when it is built.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    /// Local name inside the layer: `weight`, `bias`, `running_mean`.
    pub name: String,
    /// Full tensor shape.
    pub shape: Vec<usize>,
    /// Trainable, buffer or constant.
    pub kind: ParamKind,
    /// Initial value.
    pub init: Init,
}

/// One stored parameter.
#[derive(Clone, Debug)]
pub struct Param {
    /// The tensor. A [`Var`] so that gradients can reach it and optimisers update it
    /// in place; every clone of the store sees updates.
    pub var: Var,
    /// Its role.
    pub kind: ParamKind,
    /// Whether training updates it (a frozen layer's parameters have `false`).
    pub trainable: bool,
}

/// Parameters by `layer.param` key.
#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    map: BTreeMap<String, Param>,
}

impl ParamStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts (or replaces) a parameter.
    pub fn insert(
        &mut self,
        key: impl Into<String>,
        tensor: Tensor,
        kind: ParamKind,
    ) -> Result<()> {
        let var = Var::from_tensor(&tensor.to_dtype(DType::F32)?.contiguous()?)?;
        self.map.insert(
            key.into(),
            Param {
                var,
                kind,
                trainable: kind == ParamKind::Trainable,
            },
        );
        Ok(())
    }

    pub(crate) fn insert_param(&mut self, key: String, p: Param) {
        self.map.insert(key, p);
    }

    /// The parameter under `key`, or an error listing close keys.
    pub fn get(&self, key: &str) -> Result<&Param> {
        self.map
            .get(key)
            .ok_or_else(|| Error::unknown("parameter", key, self.map.keys().map(|s| s.as_str())))
    }

    /// The tensor under `key` (shares storage with the store).
    pub fn tensor(&self, key: &str) -> Result<Tensor> {
        Ok(self.get(key)?.var.as_tensor().clone())
    }

    /// Whether `key` exists.
    pub fn contains(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// Iterates `(key, param)` in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Param)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of stored tensors.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Copies `value` into the parameter `key` in place (all sharers see it).
    /// The shape must match.
    pub fn set(&self, key: &str, value: &Tensor) -> Result<()> {
        let p = self.get(key)?;
        if p.var.dims() != value.dims() {
            return Err(Error::shape(
                key,
                format!(
                    "cannot load a tensor of shape {:?} into parameter of shape {:?}",
                    value.dims(),
                    p.var.dims()
                ),
            ));
        }
        p.var
            .set(&value.to_dtype(DType::F32)?.to_device(p.var.device())?)?;
        Ok(())
    }

    /// Marks the parameters whose key starts with `prefix.` (or equals it) as
    /// trainable or frozen. Returns how many matched.
    pub fn set_trainable(&mut self, prefix: &str, trainable: bool) -> usize {
        let mut n = 0;
        for (k, p) in self.map.iter_mut() {
            if p.kind == ParamKind::Trainable && key_in_scope(k, prefix) {
                p.trainable = trainable;
                n += 1;
            }
        }
        n
    }

    /// The trainable variables, for an optimiser.
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.map
            .iter()
            .filter(|(_, p)| p.trainable)
            .map(|(k, p)| (k.clone(), p.var.clone()))
            .collect()
    }

    /// Gradients of the parameters found in a candle gradient store, detached.
    ///
    /// candle's gradients can still be attached to the forward graph (a kernel's
    /// gradient is computed from tracked activations); an optimiser that kept
    /// them in its state would keep every step's graph alive.
    pub fn grads(&self, store: &candle_core::backprop::GradStore) -> BTreeMap<String, Tensor> {
        self.map
            .iter()
            .filter_map(|(k, p)| {
                store
                    .get(p.var.as_tensor())
                    .map(|g| (k.clone(), g.detach()))
            })
            .collect()
    }

    /// A deep copy: new storage, same values.
    pub fn deep_clone(&self) -> Result<Self> {
        let mut out = ParamStore::new();
        for (k, p) in &self.map {
            out.map.insert(
                k.clone(),
                Param {
                    var: Var::from_tensor(&p.var.as_tensor().copy()?)?,
                    kind: p.kind,
                    trainable: p.trainable,
                },
            );
        }
        Ok(out)
    }

    /// Moves every tensor to `device` (new storage).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        let mut out = ParamStore::new();
        for (k, p) in &self.map {
            out.map.insert(
                k.clone(),
                Param {
                    var: Var::from_tensor(&p.var.as_tensor().to_device(device)?)?,
                    kind: p.kind,
                    trainable: p.trainable,
                },
            );
        }
        Ok(out)
    }

    /// Total number of scalars in trainable parameters.
    pub fn trainable_count(&self) -> usize {
        self.map
            .values()
            .filter(|p| p.kind == ParamKind::Trainable)
            .map(|p| p.var.elem_count())
            .sum()
    }
}

/// Whether `key` (`layer1.0.conv1.weight`) belongs to the scope `prefix` (`layer1.0`).
pub(crate) fn key_in_scope(key: &str, prefix: &str) -> bool {
    key == prefix
        || (key.len() > prefix.len()
            && key.starts_with(prefix)
            && key.as_bytes()[prefix.len()] == b'.')
}

/// A seeded source of initial values so that a model built twice with the same
/// seed has the same weights.
pub(crate) struct Initializer {
    rng: rand::rngs::StdRng,
}

impl Initializer {
    pub(crate) fn new(seed: u64) -> Self {
        Initializer {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    pub(crate) fn make(&mut self, spec: &ParamSpec, device: &Device) -> Result<Tensor> {
        let n: usize = spec.shape.iter().product();
        let t = match spec.init {
            Init::Zeros => Tensor::zeros(spec.shape.as_slice(), DType::F32, device)?,
            Init::Ones => Tensor::ones(spec.shape.as_slice(), DType::F32, device)?,
            Init::GlorotUniform { fan_in, fan_out } => {
                let limit = (6.0 / (fan_in + fan_out).max(1) as f64).sqrt() as f32;
                let v: Vec<f32> = (0..n)
                    .map(|_| self.rng.random_range(-limit..limit))
                    .collect();
                Tensor::from_vec(v, spec.shape.as_slice(), device)?
            }
        };
        Ok(t)
    }
}
