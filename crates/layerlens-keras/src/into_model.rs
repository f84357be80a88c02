//! Keras weights into a model that was not imported from Keras (a zoo model,
//! one built in code with Keras' layer names): `zoo:vgg16=vgg16_weights_tf_dim_ordering_tf_kernels.h5`.
//! Matched by layer name, converted by the node's op: HWIO and depthwise
//! kernels to OIHW, Dense kernels transposed, and the rows of a Dense that
//! follows a channel-first Flatten reordered from Keras' channel-last order.

use crate::layout;
use crate::source::{self, LayerWeights};
use candle_core::{Device, Tensor};
use layerlens_core::ir::{Graph, Node, Op};
use layerlens_core::{Error, Model, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Reads the Keras weights in `path` — a weights-only HDF5 file (Keras 3
/// `.weights.h5`, legacy `save_weights` output such as
/// `vgg16_weights_tf_dim_ordering_tf_kernels.h5`) or the weights of a full
/// `.keras` / `.h5` model — as a state dict for `model`, in layerlens'
/// layouts, keyed by `model`'s parameter names. Every Keras layer that has
/// weights must match a node of `model` by name (the error lists close
/// matches); a node kind whose Keras layout is not known here is refused by
/// name. Loading it (strictly, so nothing is left random) is the caller's job.
pub fn state_dict_for(model: &Model, path: impl AsRef<Path>) -> Result<BTreeMap<String, Tensor>> {
    let path = path.as_ref();
    let err = |m: String| Error::Format {
        path: path.display().to_string(),
        message: m,
    };
    let weights = match source::detect(path) {
        Some(source::KerasFormat::WeightsH5) => source::read_weights_only(path).map_err(err)?,
        Some(_) => source::read(path).map_err(err)?.weights,
        None => {
            return Err(err(
                "not a Keras file (neither a .keras zip nor HDF5)".into()
            ))
        }
    };
    convert(model.graph(), &weights).map_err(|e| match e {
        Error::Format { .. } => e,
        other => err(other.to_string()),
    })
}

fn convert(
    graph: &Graph,
    weights: &HashMap<String, LayerWeights>,
) -> Result<BTreeMap<String, Tensor>> {
    let mut by_layer: HashMap<&str, &Node> = HashMap::new();
    for n in graph.nodes() {
        if has_params(&n.op) {
            by_layer.entry(n.layer.as_str()).or_insert(n);
        }
    }
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    let mut dict = BTreeMap::new();
    for name in names {
        let lw = &weights[name];
        if !lw.inner.is_empty() {
            return Err(Error::invalid(
                name,
                "is a nested Keras model: its weights go into a model imported from the same Keras config (layerlens_keras::import_config_and_weights)",
            ));
        }
        if lw.vars.is_empty() {
            continue;
        }
        let node = by_layer.get(name.as_str()).ok_or_else(|| {
            let close = layerlens_core::select::closest(name, by_layer.keys().copied(), 5);
            Error::invalid(
                name,
                format!(
                    "the Keras file has weights for this layer, and model '{}' has no layer of that name with parameters{}",
                    graph.name(),
                    if close.is_empty() {
                        String::new()
                    } else {
                        format!(" (close: {})", close.join(", "))
                    }
                ),
            )
        })?;
        for (local, t) in layer_tensors(graph, node, lw)? {
            dict.insert(format!("{}.{local}", node.layer), t);
        }
    }
    Ok(dict)
}

fn has_params(op: &Op) -> bool {
    matches!(
        op,
        Op::Conv2d(_)
            | Op::Dense(_)
            | Op::BatchNorm(_)
            | Op::ConvTranspose2d(_)
            | Op::LayerNorm(_)
            | Op::PRelu(_)
    )
}

fn tensor(a: &source::Array) -> Result<Tensor> {
    Ok(Tensor::from_vec(a.1.clone(), a.0.as_slice(), &Device::Cpu)?)
}

/// The Keras variables of one layer as `(local parameter name, tensor)` pairs for `node`.
fn layer_tensors(
    graph: &Graph,
    node: &Node,
    lw: &LayerWeights,
) -> Result<Vec<(&'static str, Tensor)>> {
    let n = &node.name;
    let count = |want: &[usize]| -> Result<()> {
        if want.contains(&lw.vars.len()) {
            Ok(())
        } else {
            Err(Error::invalid(
                n,
                format!(
                    "the Keras file has {} weight arrays for this layer, its {} node takes {}",
                    lw.vars.len(),
                    node.op.type_label(),
                    want.iter()
                        .map(|w| w.to_string())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            ))
        }
    };
    let mut out = Vec::new();
    match &node.op {
        Op::Conv2d(c) => {
            count(&[1 + c.bias as usize])?;
            let k = &lw.vars[0].0;
            let kernel = tensor(&lw.vars[0])?;
            let kernel = if k.len() == 4 && k[2] * c.groups == c.in_channels {
                // Conv2D (also grouped): (kh, kw, in / groups, out).
                layout::hwio_to_oihw(&kernel)?
            } else if k.len() == 4 && c.groups == c.in_channels && k[2] == c.in_channels {
                // DepthwiseConv2D: (kh, kw, in, multiplier).
                layout::depthwise_to_oihw(&kernel)?
            } else {
                return Err(Error::invalid(
                    n,
                    format!(
                        "Keras kernel {k:?} is neither a Conv2D nor a DepthwiseConv2D kernel for this convolution ({} -> {} channels, groups {})",
                        c.in_channels, c.filters, c.groups
                    ),
                ));
            };
            out.push(("weight", kernel));
            if c.bias {
                out.push(("bias", tensor(&lw.vars[1])?));
            }
        }
        Op::Dense(d) => {
            count(&[1 + d.bias as usize])?;
            let kernel = tensor(&lw.vars[0])?;
            let kernel = match channel_first_flatten_input(graph, node) {
                Some(chw) if kernel.rank() == 2 => layout::dense_kernel_after_flatten(&kernel, chw)?,
                _ if kernel.rank() == 2 => layout::dense_kernel(&kernel)?,
                _ => {
                    return Err(Error::invalid(
                        n,
                        format!("Keras Dense kernel {:?} is not (in, units)", kernel.dims()),
                    ))
                }
            };
            out.push(("weight", kernel));
            if d.bias {
                out.push(("bias", tensor(&lw.vars[1])?));
            }
        }
        Op::BatchNorm(b) => {
            // Keras: gamma, beta (when scale / center), moving mean, moving variance.
            count(&[if b.affine { 4 } else { 2 }])?;
            let mut vars = lw.vars.iter();
            if b.affine {
                out.push(("weight", tensor(vars.next().expect("counted"))?));
                out.push(("bias", tensor(vars.next().expect("counted"))?));
            }
            out.push(("running_mean", tensor(vars.next().expect("counted"))?));
            out.push(("running_var", tensor(vars.next().expect("counted"))?));
        }
        other => {
            return Err(Error::invalid(
                n,
                format!(
                    "Keras weights for a {} node of a model built outside Keras are not supported (Conv2d, DepthwiseConv2d, Dense and BatchNorm are): import the Keras model file itself",
                    other.type_label()
                ),
            ))
        }
    }
    Ok(out)
}

/// `(C, H, W)` when `node`'s input is a layerlens (channel-first) Flatten of a
/// feature map, through any Dropout: Keras flattened the same map as
/// `(H, W, C)`, so the kernel's rows must be reordered. A Flatten that follows
/// the `(H, W, C)` permutation an imported Keras model carries needs nothing.
fn channel_first_flatten_input(graph: &Graph, node: &Node) -> Option<(usize, usize, usize)> {
    let mut cur = graph.node(*node.inputs.first()?);
    while matches!(cur.op, Op::Dropout(_)) {
        cur = graph.node(*cur.inputs.first()?);
    }
    if !matches!(cur.op, Op::Flatten(_)) {
        return None;
    }
    let src = graph.node(*cur.inputs.first()?);
    if matches!(src.op, Op::Permute(_)) {
        return None;
    }
    match src.shape.dims() {
        &[c, h, w] if h * w > 1 => Some((c, h, w)),
        _ => None,
    }
}
