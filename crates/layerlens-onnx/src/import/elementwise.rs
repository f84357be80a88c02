//! Broadcasting arithmetic: `Add`, `Sub`, `Mul`, `Div` with a constant on
//! either side, and the variadic `Sum`, `Max`, `Min`, `Mean`.

use super::{Importer, Value};
use crate::proto::NodeProto;
use crate::tensor::{Const, Data};
use layerlens_core::builder::NodeRef;
use layerlens_core::ops::{BinaryKind, ConstOperand, Elementwise, Side};
use layerlens_core::Result;

impl Importer<'_> {
    /// `Add`, `Sub`, `Mul`, `Div`: of two activations, or of an activation and
    /// a constant on either side.
    /// `Sum`, `Max`, `Min` and `Mean` of one or more inputs (NumPy broadcasting):
    /// a chain of binary nodes, the intermediate ones named `NAME_partialI`, the
    /// last one `NAME`; `Mean` divides the sum by the count (as the ONNX
    /// reference does, not multiplying by its reciprocal).
    pub(super) fn variadic(&mut self, n: &NodeProto, name: &str, op: &str) -> Result<NodeRef> {
        let vals: Vec<Value> = n
            .input
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .map(|(i, s)| {
                self.values
                    .get(s)
                    .cloned()
                    .ok_or_else(|| self.err(n, format!("input {i} is missing")))
            })
            .collect::<Result<_>>()?;
        let kind = match op {
            "Max" => BinaryKind::Max,
            "Min" => BinaryKind::Min,
            _ => BinaryKind::Add,
        };
        let count = vals.len();
        let steps = count - 1 + usize::from(op == "Mean");
        if steps == 0 {
            // One input: the value itself.
            return match &vals[0] {
                Value::Node(r) => {
                    if !self.module_paths.contains(name) && self.g.get(name).is_err() {
                        self.g.alias(name, *r)?;
                    }
                    Ok(*r)
                }
                Value::Const(_) => Err(self.err(n, "the only input is a constant".into())),
            };
        }
        // Nodes first, so that every step has a node operand (the operation is
        // commutative); two constants in a row are refused by `binary_of`.
        let mut ordered = vals;
        ordered.sort_by_key(|v| matches!(v, Value::Const(_)));
        let mut acc = ordered[0].clone();
        let mut step = 0;
        let step_name = |step: usize| {
            if step + 1 == steps {
                name.to_string()
            } else {
                format!("{name}_partial{step}")
            }
        };
        for v in &ordered[1..] {
            let r = self.binary_of(n, &step_name(step), kind, &acc, v)?;
            acc = Value::Node(r);
            step += 1;
        }
        if op == "Mean" {
            let divisor = Value::Const(Const {
                dims: vec![],
                data: Data::F32(vec![count as f32]),
            });
            let r = self.binary_of(n, &step_name(step), BinaryKind::Div, &acc, &divisor)?;
            acc = Value::Node(r);
        }
        match acc {
            Value::Node(r) => Ok(r),
            Value::Const(_) => unreachable!("every step made a node"),
        }
    }

    pub(super) fn binary(&mut self, n: &NodeProto, name: &str, op: &str) -> Result<NodeRef> {
        let kind = match op {
            "Add" => BinaryKind::Add,
            "Sub" => BinaryKind::Sub,
            "Mul" => BinaryKind::Mul,
            _ => BinaryKind::Div,
        };
        let vals: Vec<Value> = (0..2)
            .map(|i| {
                self.values
                    .get(&n.input[i])
                    .cloned()
                    .ok_or_else(|| self.err(n, format!("input {i} is missing")))
            })
            .collect::<Result<_>>()?;
        self.binary_of(n, name, kind, &vals[0], &vals[1])
    }

    /// One element-wise node `a ∘ b`, at most one of them a constant.
    pub(super) fn binary_of(
        &mut self,
        n: &NodeProto,
        name: &str,
        kind: BinaryKind,
        a: &Value,
        b: &Value,
    ) -> Result<NodeRef> {
        let vals = [a, b];
        Ok(match (vals[0], vals[1]) {
            (Value::Node(a), Value::Node(b)) => {
                let view = self.view_of(*a);
                let laid_out = !(self.batch_first(*a) && self.batch_first(*b));
                if laid_out
                    && (self.view_of(*b) != view
                        || self.g.shape(*a).rank() != self.g.shape(*b).rank())
                {
                    return Err(self.err(
                        n,
                        format!(
                            "operands {} and {}, laid out differently (the batch not first in one of them), are not supported",
                            self.show_dims(*a),
                            self.show_dims(*b)
                        ),
                    ));
                }
                let r = self.g.add_as(
                    name,
                    Elementwise {
                        kind,
                        constant: None,
                    },
                    &[*a, *b],
                )?;
                if laid_out {
                    self.g.set_view(r, Some(view))?;
                }
                r
            }
            (Value::Node(a), Value::Const(c)) | (Value::Const(c), Value::Node(a)) => {
                let side = if matches!(vals[0], Value::Node(_)) {
                    Side::Rhs
                } else {
                    Side::Lhs
                };
                let laid_out = !self.batch_first(*a);
                let c = if laid_out {
                    self.constant_for_view(n, *a, c)?
                } else {
                    c.clone()
                };
                let e = Elementwise {
                    kind,
                    constant: Some(ConstOperand {
                        shape: c.dims.clone(),
                        side,
                    }),
                };
                let r = self.g.add_as(name, e, &[*a])?;
                self.weights
                    .push((format!("{name}.constant"), Self::tensor(&c)?));
                if laid_out {
                    let view = self.view_of(*a);
                    self.g.set_view(r, Some(view))?;
                }
                r
            }
            (Value::Const(_), Value::Const(_)) => {
                return Err(self.err(
                    n,
                    "both operands are constants but another input is not".into(),
                ))
            }
        })
    }
}
