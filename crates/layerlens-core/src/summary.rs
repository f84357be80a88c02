//! `Model::summary()`: a table like Keras' `model.summary()`, plus MACs.

use crate::ir::OpT;
use crate::model::Model;
use crate::params::ParamKind;
use crate::shape::Shape;
use std::collections::HashSet;
use std::fmt;

/// One row of a summary.
#[derive(Clone, Debug)]
pub struct SummaryRow {
    /// Node name.
    pub name: String,
    /// Op label (`Conv2d`, `Lambda(mean)`).
    pub op: String,
    /// Per-sample output shape.
    pub shape: Shape,
    /// The output as extraction returns it, when the batch is not first
    /// (an imported ONNX tensor): `(197, N, 768)`.
    pub outside: Option<String>,
    /// Parameters first owned by this node (0 for later calls of a shared layer).
    pub params: usize,
    /// Multiply-accumulates per sample.
    pub macs: u64,
    /// Input node names.
    pub inputs: Vec<String>,
}

/// A model summary; `Display` prints the table.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Model name.
    pub name: String,
    /// One row per node, in order.
    pub rows: Vec<SummaryRow>,
    /// Trainable parameters.
    pub trainable: usize,
    /// Parameters that training leaves alone (buffers, constants, frozen layers).
    pub non_trainable: usize,
    /// Also print each shape as Keras gives it (`(None, H, W, C)` for a map):
    /// set for models imported from Keras files, see [`Summary::with_keras_shapes`].
    pub keras_shapes: bool,
}

impl Summary {
    /// Adds a "Keras shape" column: channel-last `(None, H, W, C)` for maps,
    /// `(None, …)` otherwise, as Keras' `model.summary()` prints them.
    pub fn with_keras_shapes(mut self) -> Self {
        self.keras_shapes = true;
        self
    }
}

/// A per-sample shape as Keras prints it: the batch as `None`, maps channel-last.
pub fn keras_shape(s: &Shape) -> String {
    let d = s.dims();
    let dims: Vec<usize> = match d {
        [c, h, w] => vec![*h, *w, *c],
        _ => d.to_vec(),
    };
    let mut out = String::from("(None");
    for v in dims {
        out += &format!(", {v}");
    }
    out + ")"
}

impl Model {
    /// Node name, op, output shape, parameters and MACs for every node.
    pub fn summary(&self) -> Summary {
        let g = self.graph();
        let mut counted: HashSet<&str> = HashSet::new();
        let mut rows = Vec::new();
        for n in g.nodes() {
            let in_shapes: Vec<Shape> = n.inputs.iter().map(|&i| g.node(i).shape.clone()).collect();
            let macs = match &n.op {
                OpT::Input(_) => 0,
                OpT::Lambda(l) => l.op.macs(&in_shapes, &n.shape),
                op => op.as_layer().map_or(0, |l| l.macs(&in_shapes, &n.shape)),
            };
            let mut params = 0;
            for scope in [n.layer.as_str(), n.name.as_str()] {
                if counted.insert(scope) {
                    params += self
                        .params()
                        .iter()
                        .filter(|(k, _)| k.rsplit_once('.').is_some_and(|(s, _)| s == scope))
                        .map(|(_, p)| p.var.elem_count())
                        .sum::<usize>();
                }
            }
            rows.push(SummaryRow {
                name: n.name.clone(),
                op: n.op.type_label(),
                shape: n.shape.clone(),
                outside: n.view.as_ref().map(|v| v.describe(n.shape.dims())),
                params,
                macs,
                inputs: g.names(&n.inputs),
            });
        }
        let (mut trainable, mut non_trainable) = (0, 0);
        for (_, p) in self.params().iter() {
            if p.kind == ParamKind::Trainable && p.trainable {
                trainable += p.var.elem_count();
            } else {
                non_trainable += p.var.elem_count();
            }
        }
        Summary {
            name: g.name().to_string(),
            rows,
            trainable,
            non_trainable,
            keras_shapes: false,
        }
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut head = vec!["Node (op)", "Output shape"];
        if self.keras_shapes {
            head.push("Keras shape");
        }
        head.extend(["Param #", "MACs", "Inputs"]);
        // Param # and MACs are right-aligned; the last column is not padded.
        let right = |i: usize| i + 3 == head.len() || i + 2 == head.len();
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                let shape = r.outside.clone().unwrap_or_else(|| r.shape.to_string());
                let mut c = vec![format!("{} ({})", r.name, r.op), shape];
                if self.keras_shapes {
                    c.push(keras_shape(&r.shape));
                }
                c.extend([
                    thousands(r.params as u64),
                    thousands(r.macs),
                    r.inputs.join(", "),
                ]);
                c
            })
            .collect();
        let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
        for c in &cells {
            for (i, s) in c.iter().enumerate() {
                w[i] = w[i].max(s.chars().count());
            }
        }
        let total: usize = w.iter().sum::<usize>() + 2 * (w.len() - 1);
        writeln!(f, "Model: \"{}\"", self.name)?;
        writeln!(f, "{}", "━".repeat(total))?;
        let line = |f: &mut fmt::Formatter<'_>, c: &[&str]| {
            let n = c.len();
            let mut out = String::new();
            for (i, s) in c.iter().enumerate() {
                if i + 1 == n {
                    out += s;
                } else if right(i) {
                    out += &format!("{s:>width$}  ", width = w[i]);
                } else {
                    out += &format!("{s:<width$}  ", width = w[i]);
                }
            }
            writeln!(f, "{out}")
        };
        line(f, &head)?;
        writeln!(f, "{}", "━".repeat(total))?;
        for c in &cells {
            line(f, &c.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        writeln!(f, "{}", "━".repeat(total))?;
        let macs: u64 = self.rows.iter().map(|r| r.macs).sum();
        writeln!(
            f,
            "Total params: {}",
            thousands((self.trainable + self.non_trainable) as u64)
        )?;
        writeln!(f, "Trainable params: {}", thousands(self.trainable as u64))?;
        writeln!(
            f,
            "Non-trainable params: {}",
            thousands(self.non_trainable as u64)
        )?;
        write!(f, "MACs per sample: {}", thousands(macs))
    }
}
