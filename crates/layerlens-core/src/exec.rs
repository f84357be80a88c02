//! The executor: runs a [`Plan`] over a model's nodes, applying hooks, cutting
//! the autograd graph at requested nodes, and freeing each value after its last use.

use crate::builder::functional_frozen_key;
use crate::error::{Error, NodeContext, Result};
use crate::hooks::HookCtx;
use crate::ir::{Node, NodeId, OpT};
use crate::kernels::conv::FusedActivation;
use crate::kernels::{self, ChannelAffine};
use crate::lambda::{LambdaCtx, RefMode};
use crate::model::{ExecOutput, Mode, Model, RunOptions};
use crate::ops::ForwardCtx;
use crate::plan::{ConvChain, FusedSteps, Plan, Step};
use crate::shape::Shape;
use candle_core::{Tensor, Var};

impl Model {
    pub(crate) fn execute(
        &self,
        plan: &Plan,
        inputs: &[Tensor],
        opts: RunOptions,
        cut: &[NodeId],
    ) -> Result<ExecOutput> {
        let g = self.graph();
        if inputs.len() != g.inputs().len() {
            return Err(Error::invalid(
                g.name(),
                format!(
                    "model takes {} input(s) ({}), got {}",
                    g.inputs().len(),
                    g.names(g.inputs()).join(", "),
                    inputs.len()
                ),
            ));
        }
        let train = opts.mode == Mode::Train;
        let hooks_on = !self.hooks.is_empty();
        if let Some(fused) = &plan.fused {
            // Plain inference: nothing observes the absorbed intermediates.
            if !train && !opts.track_params && !hooks_on && cut.is_empty() {
                return self.execute_fused(plan, fused, inputs, opts);
            }
        }
        let mut slots: Vec<Option<Tensor>> = vec![None; g.nodes().len()];
        let mut cuts = Vec::new();
        let (mut live, mut peak_live) = (0usize, 0usize);
        for (step, &id) in plan.steps.iter().enumerate() {
            let node = g.node(id);
            let mut y = match &node.op {
                OpT::Input(shape) => {
                    let slot = g
                        .inputs()
                        .iter()
                        .position(|&i| i == id)
                        .expect("input node is a graph input");
                    self.check_input(node, shape, &inputs[slot])?
                }
                _ => {
                    let xs: Vec<Tensor> = node
                        .inputs
                        .iter()
                        .map(|&i| slots[i].clone().expect("plan runs inputs first"))
                        .collect();
                    self.run_node(node, &xs, opts)?
                }
            };
            if hooks_on {
                for hook in self.hooks.for_node(&node.name) {
                    let ctx = HookCtx {
                        node: &node.name,
                        layer: &node.layer,
                        train,
                    };
                    if let Some(r) = hook(&ctx, &y)? {
                        if r.dims() != y.dims() {
                            return Err(Error::shape(
                                &node.name,
                                format!("a forward hook returned shape {:?}, but the node's output is {:?}", r.dims(), y.dims()),
                            ));
                        }
                        y = r;
                    }
                }
            }
            if cut.contains(&id) {
                let var = Var::from_tensor(&y.detach()).at_node(&node.name)?;
                let leaf = var.as_tensor().clone();
                cuts.push((id, y, var));
                y = leaf;
            }
            slots[id] = Some(y);
            live += 1;
            peak_live = peak_live.max(live);
            for &f in &plan.free_after[step] {
                slots[f] = None;
                live -= 1;
            }
        }
        let values = plan
            .outputs
            .iter()
            .map(|&o| slots[o].clone().expect("outputs are kept"))
            .collect();
        Ok(ExecOutput {
            values,
            cuts,
            peak_live,
        })
    }

    fn execute_fused(
        &self,
        plan: &Plan,
        fused: &FusedSteps,
        inputs: &[Tensor],
        opts: RunOptions,
    ) -> Result<ExecOutput> {
        let g = self.graph();
        let mut slots: Vec<Option<Tensor>> = vec![None; g.nodes().len()];
        let (mut live, mut peak_live) = (0usize, 0usize);
        let value = |slots: &[Option<Tensor>], i: NodeId| -> Tensor {
            slots[i].clone().expect("plan runs inputs first")
        };
        for (step, s) in fused.steps.iter().enumerate() {
            let (id, y) = match s {
                Step::Node(id) => {
                    let node = g.node(*id);
                    let y = match &node.op {
                        OpT::Input(shape) => {
                            let slot = g
                                .inputs()
                                .iter()
                                .position(|i| i == id)
                                .expect("input node is a graph input");
                            self.check_input(node, shape, &inputs[slot])?
                        }
                        _ => {
                            let xs: Vec<Tensor> =
                                node.inputs.iter().map(|&i| value(&slots, i)).collect();
                            self.run_node(node, &xs, opts)?
                        }
                    };
                    (*id, y)
                }
                Step::Chain(c) => {
                    let x = value(&slots, g.node(c.conv).inputs[0]);
                    let residual = c.add.map(|(_, other)| value(&slots, other));
                    (c.last, self.run_chain(c, &x, residual.as_ref())?)
                }
            };
            slots[id] = Some(y);
            live += 1;
            peak_live = peak_live.max(live);
            for &f in &fused.free_after[step] {
                if slots[f].take().is_some() {
                    live -= 1;
                }
            }
        }
        let values = plan
            .outputs
            .iter()
            .map(|&o| slots[o].clone().expect("outputs are kept"))
            .collect();
        Ok(ExecOutput {
            values,
            cuts: Vec::new(),
            peak_live,
        })
    }

    /// A convolution chain as one kernel call: the batch norm's running statistics
    /// and the conv bias become a per-channel scale and shift.
    fn run_chain(&self, c: &ConvChain, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let node = g_node(self, c.conv);
        let OpT::Conv2d(conv) = &node.op else {
            unreachable!("chains start at a convolution")
        };
        let at = |key: String| -> Result<Vec<f32>> {
            self.param_for(&key, false)?
                .to_vec1::<f32>()
                .at_node(&node.name)
        };
        let (_, _, h, w) = x.dims4().at_node(&node.name)?;
        let weight = self.param_for(&format!("{}.weight", node.layer), false)?;
        let bias = if conv.bias {
            Some(at(format!("{}.bias", node.layer))?)
        } else {
            None
        };
        let mut affine = ChannelAffine {
            scale: None,
            shift: bias.clone(),
        };
        if let Some(bn_id) = c.bn {
            let bn_node = g_node(self, bn_id);
            let OpT::BatchNorm(bn) = &bn_node.op else {
                unreachable!("chain batch norm")
            };
            let l = &bn_node.layer;
            let mean = at(format!("{l}.running_mean"))?;
            let var = at(format!("{l}.running_var"))?;
            let (gamma, beta) = if bn.affine {
                (at(format!("{l}.weight"))?, at(format!("{l}.bias"))?)
            } else {
                (vec![1.0; mean.len()], vec![0.0; mean.len()])
            };
            let scale: Vec<f32> = gamma
                .iter()
                .zip(&var)
                .map(|(g, v)| (*g as f64 / (*v as f64 + bn.eps).sqrt()) as f32)
                .collect();
            let shift = (0..scale.len())
                .map(|i| beta[i] + (bias.as_ref().map_or(0.0, |b| b[i]) - mean[i]) * scale[i])
                .collect();
            // y = (conv + b - mean) * scale + beta = conv * scale + shift
            affine = ChannelAffine {
                scale: Some(scale),
                shift: Some(shift),
            };
        }
        let act = match c.act.map(|a| &g_node(self, a).op) {
            Some(OpT::Activation(a)) => a.fusable().expect("chains hold fusable activations"),
            _ => FusedActivation::None,
        };
        kernels::conv2d_fused(x, &weight, &conv.conv_params((h, w)), affine, residual, act)
            .at_node(&g_node(self, c.last).name)
    }

    fn check_input(&self, node: &Node, shape: &Shape, x: &Tensor) -> Result<Tensor> {
        let d = x.dims();
        if d.len() != shape.rank() + 1 || &d[1..] != shape.dims() {
            let mut hint = String::new();
            if let (Some((c, h, w)), 4) = (shape.chw(), d.len()) {
                if d[1..] == [h, w, c] {
                    hint = " (this looks like NHWC; layerlens is NCHW: permute with x.permute((0, 3, 1, 2)))".into();
                }
            } else if d.len() == shape.rank() {
                hint = " (missing the batch dimension? use x.unsqueeze(0))".into();
            }
            return Err(Error::InputShape {
                input: node.name.clone(),
                expected: shape.clone(),
                got: format!("{d:?}"),
                hint,
            });
        }
        let x = x.to_device(self.device())?;
        Ok(if x.dtype() == candle_core::DType::F32 {
            x
        } else {
            x.to_dtype(candle_core::DType::F32)?
        })
    }

    fn param_for(&self, key: &str, track: bool) -> Result<Tensor> {
        let p = self.params().get(key)?;
        Ok(if track && p.trainable {
            p.var.as_tensor().clone()
        } else {
            p.var.as_detached_tensor()
        })
    }

    fn run_node(&self, node: &Node, xs: &[Tensor], opts: RunOptions) -> Result<Tensor> {
        let train = opts.mode == Mode::Train;
        let track = opts.track_params;
        let layer = node.layer.as_str();
        let params = |local: &str| self.param_for(&format!("{layer}.{local}"), track);
        match &node.op {
            OpT::Input(_) => unreachable!("inputs are handled by execute"),
            OpT::Lambda(l) => {
                let weights = l
                    .weights
                    .iter()
                    .enumerate()
                    .map(|(i, w)| match w.mode {
                        RefMode::Live => self.param_for(&w.key, track),
                        RefMode::Frozen => {
                            self.param_for(&functional_frozen_key(&node.name, i), false)
                        }
                    })
                    .collect::<Result<Vec<_>>>()?;
                let ctx = LambdaCtx {
                    node: &node.name,
                    train,
                    weights: &weights,
                    params: &params,
                };
                l.op.forward(xs, &ctx)
            }
            op => {
                let set = |local: &str, v: &Tensor| {
                    if train {
                        self.params().set(&format!("{layer}.{local}"), v)
                    } else {
                        Ok(())
                    }
                };
                let ctx = ForwardCtx {
                    node: &node.name,
                    train,
                    params: &params,
                    update_buffer: &set,
                };
                op.as_layer().expect("built-in layer").forward(xs, &ctx)
            }
        }
    }

    /// Runs `selectors` and reports the most activation tensors held at once
    /// (requested outputs included): a check that intermediates are freed.
    pub fn peak_live_activations<S: AsRef<str>>(
        &self,
        inputs: &[Tensor],
        selectors: &[S],
    ) -> Result<usize> {
        let plan = self.plan(selectors)?;
        Ok(self
            .execute(&plan, inputs, RunOptions::default(), &[])?
            .peak_live)
    }
}

/// A requested value as the node is known outside ([`Node::view`]).
pub(crate) fn present(node: &Node, t: Tensor) -> Result<Tensor> {
    match &node.view {
        Some(v) => v.present(&t, &node.name),
        None => Ok(t),
    }
}

fn g_node(model: &Model, id: NodeId) -> &Node {
    model.graph().node(id)
}
