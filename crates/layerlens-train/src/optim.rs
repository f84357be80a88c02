//! Optimisers with PyTorch's update rules (so a step can be checked against
//! PyTorch to 1e-4) and learning-rate schedules. candle-nn has plain SGD and
//! AdamW only, without momentum, L2-style Adam or access to the state needed to
//! resume from a checkpoint, hence these.

use candle_core::{Tensor, Var};
use layerlens_core::{Error, ParamStore, Result};
use std::collections::{BTreeMap, HashMap};

/// Updates parameters from their gradients.
pub trait Optimizer {
    /// One update. `grads` maps parameter keys to gradients; parameters without a
    /// gradient are left alone.
    fn step(&mut self, grads: &BTreeMap<String, Tensor>) -> Result<()>;
    /// The current learning rate.
    fn lr(&self) -> f64;
    /// Sets the learning rate (schedules call this).
    fn set_lr(&mut self, lr: f64);
    /// The optimiser's state tensors, for checkpoints.
    fn state(&self) -> Result<HashMap<String, Tensor>>;
    /// Restores state saved by [`state`](Self::state).
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;
}

fn vars(params: &ParamStore) -> Vec<(String, Var)> {
    params.trainable_vars()
}

/// SGD with momentum, dampening-free, optional Nesterov, and L2 weight decay
/// (PyTorch's `torch.optim.SGD`).
pub struct Sgd {
    vars: Vec<(String, Var)>,
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor (0 for plain SGD).
    pub momentum: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    buf: HashMap<String, Tensor>,
}

impl Sgd {
    /// SGD over the trainable parameters of `params`.
    pub fn new(params: &ParamStore, lr: f64) -> Self {
        Sgd {
            vars: vars(params),
            lr,
            momentum: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            buf: HashMap::new(),
        }
    }
    /// Sets momentum.
    pub fn momentum(mut self, m: f64) -> Self {
        self.momentum = m;
        self
    }
    /// Sets weight decay.
    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }
    /// Enables Nesterov momentum.
    pub fn nesterov(mut self, n: bool) -> Self {
        self.nesterov = n;
        self
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &BTreeMap<String, Tensor>) -> Result<()> {
        for (key, var) in &self.vars {
            let Some(g) = grads.get(key).map(Tensor::detach) else {
                continue;
            };
            let p = &var.as_detached_tensor();
            let mut g = if self.weight_decay != 0.0 {
                (g + (p * self.weight_decay)?)?
            } else {
                g.clone()
            };
            if self.momentum != 0.0 {
                let b = match self.buf.get(key) {
                    Some(b) => ((b * self.momentum)? + &g)?,
                    None => g.clone(),
                };
                g = if self.nesterov {
                    (&g + (&b * self.momentum)?)?
                } else {
                    b.clone()
                };
                self.buf.insert(key.clone(), b);
            }
            var.set(&(p - (g * self.lr)?)?)?;
        }
        Ok(())
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn state(&self) -> Result<HashMap<String, Tensor>> {
        Ok(self
            .buf
            .iter()
            .map(|(k, v)| (format!("momentum.{k}"), v.clone()))
            .collect())
    }
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.buf = state
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("momentum.")
                    .map(|k| (k.to_string(), v.clone()))
            })
            .collect();
        Ok(())
    }
}

/// Adam (`torch.optim.Adam`, L2 weight decay added to the gradient) or AdamW
/// (`torch.optim.AdamW`, decoupled weight decay).
pub struct Adam {
    vars: Vec<(String, Var)>,
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Weight decay (L2 for Adam, decoupled for AdamW and Keras' Adam).
    pub weight_decay: f64,
    decoupled: bool,
    /// Keras' epsilon placement ([`Adam::keras`]) instead of PyTorch's.
    keras_epsilon: bool,
    t: u64,
    m: HashMap<String, Tensor>,
    v: HashMap<String, Tensor>,
}

impl Adam {
    /// Adam with PyTorch's defaults (betas 0.9/0.999, eps 1e-8, no weight decay).
    pub fn new(params: &ParamStore, lr: f64) -> Self {
        Adam {
            vars: vars(params),
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            keras_epsilon: false,
            t: 0,
            m: HashMap::new(),
            v: HashMap::new(),
        }
    }
    /// AdamW with PyTorch's defaults (weight decay 0.01).
    pub fn adamw(params: &ParamStore, lr: f64) -> Self {
        Adam {
            decoupled: true,
            weight_decay: 0.01,
            ..Adam::new(params, lr)
        }
    }
    /// `keras.optimizers.Adam` with its defaults (betas 0.9/0.999, epsilon
    /// 1e-7). Keras adds epsilon to the *uncorrected* `sqrt(v)` and folds both
    /// bias corrections into the step size, `lr·sqrt(1-β2^t)/(1-β1^t) · m /
    /// (sqrt(v) + ε)`, where PyTorch divides by `sqrt(v̂) + ε`: the same
    /// epsilon is effectively larger early on, which matters for small
    /// gradients. `weight_decay` is Keras' decoupled decay (`var -= var·wd·lr`).
    pub fn keras(params: &ParamStore, lr: f64) -> Self {
        Adam {
            eps: 1e-7,
            decoupled: true,
            keras_epsilon: true,
            ..Adam::new(params, lr)
        }
    }
    /// Sets weight decay.
    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }
}

impl Optimizer for Adam {
    fn step(&mut self, grads: &BTreeMap<String, Tensor>) -> Result<()> {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        for (key, var) in &self.vars {
            let Some(g) = grads.get(key).map(Tensor::detach) else {
                continue;
            };
            let mut p = var.as_detached_tensor();
            let mut g = g.clone();
            if self.weight_decay != 0.0 {
                if self.decoupled {
                    p = (&p * (1.0 - self.lr * self.weight_decay))?;
                } else {
                    g = (g + (&p * self.weight_decay)?)?;
                }
            }
            let m = match self.m.get(key) {
                Some(m) => ((m * self.beta1)? + (&g * (1.0 - self.beta1))?)?,
                None => (&g * (1.0 - self.beta1))?,
            };
            let v = match self.v.get(key) {
                Some(v) => ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?,
                None => (g.sqr()? * (1.0 - self.beta2))?,
            };
            let update = if self.keras_epsilon {
                let alpha = self.lr * bc2.sqrt() / bc1;
                ((&m / (v.sqrt()? + self.eps)?)? * alpha)?
            } else {
                let denom = ((&v / bc2)?.sqrt()? + self.eps)?;
                (((&m / bc1)? / denom)? * self.lr)?
            };
            var.set(&(p - update)?)?;
            self.m.insert(key.clone(), m);
            self.v.insert(key.clone(), v);
        }
        Ok(())
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut s: HashMap<String, Tensor> = HashMap::new();
        for (k, t) in &self.m {
            s.insert(format!("m.{k}"), t.clone());
        }
        for (k, t) in &self.v {
            s.insert(format!("v.{k}"), t.clone());
        }
        s.insert(
            "t".into(),
            Tensor::new(&[self.t as f32], &candle_core::Device::Cpu)?,
        );
        Ok(s)
    }
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let t = state
            .get("t")
            .ok_or_else(|| Error::invalid("optimizer", "checkpoint has no Adam step count 't'"))?;
        self.t = t.to_vec1::<f32>()?[0] as u64;
        let pick = |p: &str| {
            state
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(p).map(|k| (k.to_string(), v.clone())))
                .collect()
        };
        self.m = pick("m.");
        self.v = pick("v.");
        Ok(())
    }
}

/// Learning rate as a function of the epoch (0-based).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrSchedule {
    /// Always the base rate.
    Constant,
    /// Multiply by `gamma` every `step_size` epochs (`torch.optim.lr_scheduler.StepLR`).
    Step {
        /// Epochs between decays.
        step_size: usize,
        /// Decay factor.
        gamma: f64,
    },
    /// Cosine annealing from the base rate to `eta_min` over `t_max` epochs (`CosineAnnealingLR`).
    Cosine {
        /// Epochs of one half cosine.
        t_max: usize,
        /// Final rate.
        eta_min: f64,
    },
}

impl LrSchedule {
    /// The rate for `epoch` given the base rate.
    pub fn lr(&self, base: f64, epoch: usize) -> f64 {
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::Step { step_size, gamma } => {
                base * gamma.powi((epoch / step_size.max(1)) as i32)
            }
            LrSchedule::Cosine { t_max, eta_min } => {
                let t = (epoch.min(t_max)) as f64 / t_max.max(1) as f64;
                eta_min + (base - eta_min) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LrSchedule;

    #[test]
    fn schedules_follow_pytorch_formulas() {
        let step = LrSchedule::Step {
            step_size: 2,
            gamma: 0.1,
        };
        let got: Vec<f64> = (0..5).map(|e| step.lr(1.0, e)).collect();
        for (g, w) in got.iter().zip([1.0, 1.0, 0.1, 0.1, 0.01]) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        // CosineAnnealingLR(T_max=4, eta_min=0.1) from 1.0: 1.0, 0.8682, 0.55, 0.2318, 0.1.
        let cos = LrSchedule::Cosine {
            t_max: 4,
            eta_min: 0.1,
        };
        let want = [1.0, 0.868_198, 0.55, 0.231_802, 0.1];
        for (e, w) in want.iter().enumerate() {
            assert!(
                (cos.lr(1.0, e) - w).abs() < 1e-6,
                "epoch {e}: {}",
                cos.lr(1.0, e)
            );
        }
        assert_eq!(LrSchedule::Constant.lr(0.3, 7), 0.3);
    }
}
