//! Name → constructor table used when loading saved Lambdas.

use super::builtins::{Conv2dRef, L2Normalize, Reduce, Scale, ScaleByWeight};
use super::CustomOp;
use crate::error::{Error, Result};
use crate::ops::{Concat, Flatten, Reshape};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::sync::Arc;

type Ctor = Arc<dyn Fn(&serde_json::Value) -> Result<Arc<dyn CustomOp>> + Send + Sync>;

/// Maps saved Lambda type names to constructors. Loading a model only ever
/// calls these constructors with the saved JSON arguments: no code is read from
/// the file.
///
/// ```
/// use layerlens_core::lambda::LambdaRegistry;
/// let reg = LambdaRegistry::with_builtins();
/// assert!(reg.contains("l2_normalize"));
/// ```
#[derive(Clone)]
pub struct LambdaRegistry {
    ctors: BTreeMap<String, Ctor>,
}

impl Default for LambdaRegistry {
    fn default() -> Self {
        Self::with_builtins()
    }
}

impl LambdaRegistry {
    /// An empty registry.
    pub fn empty() -> Self {
        LambdaRegistry {
            ctors: BTreeMap::new(),
        }
    }

    /// The built-in Lambdas: mean, sum, max, l2_normalize, scale,
    /// scale_by_weight, conv2d_ref, concat, reshape, flatten.
    pub fn with_builtins() -> Self {
        let mut r = Self::empty();
        for name in ["mean", "sum", "max"] {
            r.register_serde::<Reduce>(name);
        }
        r.register_serde::<L2Normalize>("l2_normalize");
        r.register_serde::<Scale>("scale");
        r.register_serde::<ScaleByWeight>("scale_by_weight");
        r.register_serde::<Conv2dRef>("conv2d_ref");
        r.register_serde::<Concat>("concat");
        r.register_serde::<Reshape>("reshape");
        r.register("flatten", |_| Ok(Arc::new(Flatten)));
        r
    }

    /// Registers a constructor under `name` (the op's [`CustomOp::type_name`]).
    pub fn register(
        &mut self,
        name: impl Into<String>,
        ctor: impl Fn(&serde_json::Value) -> Result<Arc<dyn CustomOp>> + Send + Sync + 'static,
    ) -> &mut Self {
        self.ctors.insert(name.into(), Arc::new(ctor));
        self
    }

    /// Registers an op whose arguments are its serde representation.
    pub fn register_serde<T: CustomOp + DeserializeOwned + 'static>(
        &mut self,
        name: &str,
    ) -> &mut Self {
        let owned = name.to_string();
        self.register(name, move |args| {
            let op: T = serde_json::from_value(args.clone())
                .map_err(|e| Error::Lambda(format!("bad arguments for Lambda '{owned}': {e}")))?;
            Ok(Arc::new(op) as Arc<dyn CustomOp>)
        })
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.ctors.keys().cloned().collect();
        v.sort();
        v
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.ctors.contains_key(name)
    }

    /// Builds the op saved as `name` with `args`.
    pub fn build(&self, name: &str, args: &serde_json::Value) -> Result<Arc<dyn CustomOp>> {
        let ctor = self.ctors.get(name).ok_or_else(|| {
            let close = crate::select::closest(name, self.ctors.keys().map(|s| s.as_str()), 3);
            Error::Lambda(format!(
                "unknown Lambda type '{name}': register it with LambdaRegistry::register before loading{}",
                if close.is_empty() { String::new() } else { format!(" (registered and close: {})", close.join(", ")) }
            ))
        })?;
        ctor(args)
    }
}
