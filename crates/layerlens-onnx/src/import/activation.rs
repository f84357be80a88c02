//! Element-wise activations of one activation input (with their attributes),
//! `Softmax` / `LogSoftmax` and `PRelu`.

use super::{attr, Importer, Value};
use crate::proto::NodeProto;
use crate::tensor::{Const, Data};
use layerlens_core::builder::NodeRef;
use layerlens_core::ops::{Activation, BinaryKind, PRelu};
use layerlens_core::Result;

impl Importer<'_> {
    /// The activations without attributes: `Relu`, `Sigmoid`, `Exp`, ….
    pub(super) fn simple_activation(
        &mut self,
        n: &NodeProto,
        name: &str,
        x: NodeRef,
    ) -> Result<NodeRef> {
        let act = match n.op_type.as_str() {
            "Relu" => Activation::Relu,
            "Sigmoid" => Activation::Sigmoid,
            "Tanh" => Activation::Tanh,
            "HardSwish" => Activation::HardSwish,
            "Softplus" => Activation::Softplus,
            "Abs" => Activation::Abs,
            "Neg" => Activation::Neg,
            "Sqrt" => Activation::Sqrt,
            "Reciprocal" => Activation::Reciprocal,
            "Erf" => Activation::Erf,
            "Log" => Activation::Log,
            "Softsign" => Activation::Softsign,
            "Exp" => Activation::Exponential,
            "Mish" => Activation::Mish,
            other => unreachable!("the registry sends only simple activations here, not {other}"),
        };
        self.g.add_as(name, act, &[x])
    }

    /// `LeakyRelu`.
    pub(super) fn leaky_relu(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        self.g.add_as(
            name,
            Activation::LeakyRelu {
                slope: Self::float(n, "alpha").unwrap_or(0.01),
            },
            &[x],
        )
    }

    /// `HardSigmoid`.
    pub(super) fn hard_sigmoid(
        &mut self,
        n: &NodeProto,
        name: &str,
        x: NodeRef,
    ) -> Result<NodeRef> {
        let (alpha, beta) = (
            Self::float(n, "alpha").unwrap_or(0.2),
            Self::float(n, "beta").unwrap_or(0.5),
        );
        let act = if (alpha - 1.0 / 6.0).abs() < 1e-6 && beta == 0.5 {
            Activation::HardSigmoid
        } else {
            Activation::HardSigmoidAb { alpha, beta }
        };
        self.g.add_as(name, act, &[x])
    }

    /// `Clip`.
    pub(super) fn clip(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        let (min, max) = if self.opset >= 11 {
            let lo = self.opt_scalar(n, 1, "min")?.unwrap_or(f32::NEG_INFINITY);
            let hi = self.opt_scalar(n, 2, "max")?.unwrap_or(f32::INFINITY);
            (lo, hi)
        } else {
            (
                Self::float(n, "min").unwrap_or(f32::NEG_INFINITY),
                Self::float(n, "max").unwrap_or(f32::INFINITY),
            )
        };
        let act = if min == 0.0 && max == 6.0 {
            Activation::Relu6
        } else {
            Activation::Clip { min, max }
        };
        self.g.add_as(name, act, &[x])
    }

    /// `Elu` / `Celu`.
    pub(super) fn elu(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        let op = n.op_type.as_str();
        let alpha = Self::float(n, "alpha").unwrap_or(1.0);
        let act = if op == "Elu" {
            Activation::Elu { alpha }
        } else {
            Activation::Celu { alpha }
        };
        self.g.add_as(name, act, &[x])
    }

    /// `Selu`.
    pub(super) fn selu(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        let alpha = Self::float(n, "alpha").unwrap_or(1.673_263_2);
        let gamma = Self::float(n, "gamma").unwrap_or(1.050_701);
        Ok(
            if (alpha - 1.673_263_2).abs() <= 1e-6 && (gamma - 1.050_701).abs() <= 1e-6 {
                self.g.add_as(name, Activation::Selu, &[x])?
            } else {
                // Other constants: gamma · Elu_alpha(x), two nodes.
                let elu = self.fresh_name(&format!("{name}_elu"));
                let e = self.g.add_as(&elu, Activation::Elu { alpha }, &[x])?;
                let g = Value::Const(Const {
                    dims: vec![],
                    data: Data::F32(vec![gamma]),
                });
                self.binary_of(n, name, BinaryKind::Mul, &Value::Node(e), &g)?
            },
        )
    }

    /// `Gelu`.
    pub(super) fn gelu(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        let approx = attr(n, "approximate")
            .map(|a| String::from_utf8_lossy(&a.s).to_string())
            .unwrap_or_else(|| "none".into());
        let act = match approx.as_str() {
            "none" => Activation::Gelu,
            "tanh" => Activation::GeluTanh,
            other => {
                return Err(self.err(n, format!("Gelu approximate='{other}' is not supported")))
            }
        };
        self.g.add_as(name, act, &[x])
    }

    /// `Pow`.
    pub(super) fn pow(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        let exponent = self
            .values
            .get(n.input.get(1).map_or("", |s| s))
            .cloned()
            .ok_or_else(|| self.err(n, "Pow without an exponent (input 1)".into()))?;
        match &exponent {
            Value::Const(c) if c.len() == 1 => {
                let exponent = c.floats()[0];
                self.g.add_as(name, Activation::Pow { exponent }, &[x])
            }
            // A tensor exponent, constant or computed: element by element.
            _ => self.binary_of(n, name, BinaryKind::Pow, &Value::Node(x), &exponent),
        }
    }

    /// `Shrink`.
    pub(super) fn shrink(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        let lambd = Self::float(n, "lambd").unwrap_or(0.5);
        let bias = Self::float(n, "bias").unwrap_or(0.0);
        let act = if bias == 0.0 {
            Activation::HardShrink { threshold: lambd }
        } else if bias == lambd {
            Activation::SoftShrink { threshold: lambd }
        } else {
            return Err(self.err(
                n,
                format!("Shrink with bias {bias} other than 0 or lambd ({lambd}) is not supported"),
            ));
        };
        self.g.add_as(name, act, &[x])
    }

    /// `Softmax` / `LogSoftmax`.
    pub(super) fn softmax(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        let op = n.op_type.as_str();
        let rank = self.g.shape(x).rank() as i64 + 1;
        let default = if self.opset >= 13 { -1 } else { 1 };
        let axis = Self::int(n, "axis").unwrap_or(default);
        let last = axis == -1 || axis == rank - 1;
        let act = |axis: isize| {
            if op == "Softmax" {
                Activation::Softmax { axis }
            } else {
                Activation::LogSoftmax { axis }
            }
        };
        if self.opset < 13 && !last {
            // Before opset 13 the input is seen as 2-D, (dims[..axis],
            // dims[axis..]), normalised over its second axis: per sample, the
            // trailing axes flattened, normalised together, and put back.
            let a = if axis < 0 { axis + rank } else { axis };
            if !(1..rank).contains(&a) {
                return Err(self.err(
                    n,
                    format!("{op} before opset 13 over axis {axis} of a rank-{rank} tensor includes the batch; not supported"),
                ));
            }
            let dims = self.g.shape(x).dims().to_vec();
            let split = a as usize - 1;
            let lead: usize = dims[..split].iter().product();
            let cols: usize = dims[split..].iter().product();
            let flat = self.g.add_as(
                &self.fresh_name(&format!("{name}_rows")),
                layerlens_core::ops::Reshape::new(vec![lead as isize, cols as isize]),
                &[x],
            )?;
            let norm =
                self.g
                    .add_as(&self.fresh_name(&format!("{name}_flat")), act(-1), &[flat])?;
            let back: Vec<isize> = dims.iter().map(|&d| d as isize).collect();
            return self
                .g
                .add_as(name, layerlens_core::ops::Reshape::new(back), &[norm]);
        }
        self.g.add_as(name, act(axis as isize), &[x])
    }

    /// `PRelu(x, slope)` with a constant slope that broadcasts against `x`
    /// (one per channel `[C, 1, 1]`, a scalar, or a full per-sample shape).
    pub(super) fn prelu(&mut self, n: &NodeProto, name: &str, x: NodeRef) -> Result<NodeRef> {
        let slope = self.constant(n, 1)?;
        let per_sample = self.g.shape(x).rank();
        let mut dims = slope.dims.clone();
        if dims.len() == per_sample + 1 {
            if dims[0] != 1 {
                return Err(self.err(
                    n,
                    format!(
                        "slope of dims {:?} differs along the batch axis; not supported",
                        slope.dims
                    ),
                ));
            }
            dims.remove(0);
        }
        let t = Self::tensor(&slope)?.reshape(dims.as_slice())?;
        let r = self.g.add_as(name, PRelu { shape: dims }, &[x])?;
        self.weights.push((format!("{name}.weight"), t));
        Ok(r)
    }
}
