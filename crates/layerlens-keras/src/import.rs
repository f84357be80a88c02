//! Keras model config + weights -> layerlens graph, with Keras layer names as
//! node names. Multi-part layers (SeparableConv2D, Flatten of a map) name their
//! inner nodes `layer.part`; the Keras name is always the layer's output.

use crate::layout;
use crate::source::{Array, LayerWeights, Source};
use candle_core::{Device, Tensor};
use layerlens_core::builder::{Functional, NodeRef};
use layerlens_core::lambda::{CustomOp, LambdaCtx, Reduce, ShapeCtx};
use layerlens_core::ops::{
    Activation, BatchNorm, BinaryKind, Concat, ConstOperand, Conv2d, ConvTranspose2d,
    CoordinateMode, Crop2d, Dense, Elementwise, Flatten, GlobalAvgPool, LayerNorm, NearestRounding,
    PRelu, Pad2d, PadMode, Padding, Permute, Pool2d, PoolKind, Reshape, Resize, ResizeKernel, Side,
    Upsample, UpsampleMode,
};
use layerlens_core::{Error, Model, Result, Shape};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// Import settings.
#[derive(Clone, Default)]
pub struct ImportOptions {
    /// Registered layerlens ops to run in place of Keras Lambda layers, by
    /// layer name (a Lambda's Python code is never run; without a binding it
    /// imports as an unbound node that refuses to run).
    pub bind: HashMap<String, Arc<dyn CustomOp>>,
}

/// The tensor key Keras uses: (layer, call, output).
type Key = (String, usize, usize);

#[derive(Clone)]
struct Val {
    r: NodeRef,
    /// Keras' per-sample shape (NHWC for maps).
    kshape: Vec<usize>,
}

struct Call {
    inputs: Vec<Key>,
    /// Keras 3 tensor shapes of the inputs, as recorded.
    shapes: Vec<Option<Vec<usize>>>,
    /// Non-tensor positional arguments (raw ops' scalars).
    scalars: Vec<f64>,
    /// Whether a scalar came before the first tensor.
    first_is_scalar: bool,
}

struct Layer {
    class: String,
    module: String,
    name: String,
    config: Value,
    calls: Vec<Call>,
}

/// Keras' per-sample shape as layerlens stores it (maps as CHW).
fn ll_shape(k: &[usize]) -> Vec<usize> {
    if k.len() == 3 {
        vec![k[2], k[0], k[1]]
    } else {
        k.to_vec()
    }
}

/// A Keras axis of the batched tensor (negative from the end) as layerlens'.
fn ll_axis(axis: i64, krank: usize) -> Result<usize> {
    let r = krank as i64 + 1;
    let a = if axis < 0 { axis + r } else { axis };
    if a <= 0 || a >= r {
        return Err(Error::invalid(
            "axis",
            format!("axis {axis} is the batch axis or out of range for a rank-{r} tensor"),
        ));
    }
    Ok(if r == 4 {
        [0, 2, 3, 1][a as usize]
    } else {
        a as usize
    })
}

fn tensor(a: &Array) -> Result<Tensor> {
    Ok(Tensor::from_vec(a.1.clone(), a.0.as_slice(), &Device::Cpu)?)
}

fn bad(layer: &str, m: impl std::fmt::Display) -> Error {
    Error::invalid(layer, m.to_string())
}

fn json_usizes(v: &Value) -> Option<Vec<usize>> {
    match v {
        Value::Number(n) => n.as_u64().map(|x| vec![x as usize]),
        Value::Array(a) => a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect(),
        _ => None,
    }
}

fn pair(c: &Value, key: &str, default: usize, layer: &str) -> Result<[usize; 2]> {
    match c.get(key) {
        None | Some(Value::Null) => Ok([default, default]),
        Some(v) => match json_usizes(v).as_deref() {
            Some([a]) => Ok([*a, *a]),
            Some([a, b]) => Ok([*a, *b]),
            _ => Err(bad(
                layer,
                format!("{key} {v}: expected one or two non-negative integers"),
            )),
        },
    }
}

fn flag(c: &Value, key: &str, default: bool) -> bool {
    c.get(key).and_then(Value::as_bool).unwrap_or(default)
}

fn num(c: &Value, key: &str) -> Option<f64> {
    c.get(key).and_then(Value::as_f64)
}

fn str_of<'a>(c: &'a Value, key: &str) -> Option<&'a str> {
    c.get(key).and_then(Value::as_str)
}

/// Tensor references and scalars in Keras 3 call arguments, in order.
fn collect_args(v: &Value, call: &mut Call) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| collect_args(x, call)),
        Value::Object(o)
            if o.get("class_name").and_then(Value::as_str) == Some("__keras_tensor__") =>
        {
            let c = o.get("config").unwrap_or(&Value::Null);
            let h = &c["keras_history"];
            let key = (
                h[0].as_str().unwrap_or_default().to_string(),
                h[1].as_u64().unwrap_or(0) as usize,
                h[2].as_u64().unwrap_or(0) as usize,
            );
            let shape = c.get("shape").and_then(Value::as_array).map(|s| {
                s.iter()
                    .skip(1)
                    .map(|d| d.as_u64().unwrap_or(0) as usize)
                    .collect()
            });
            call.inputs.push(key);
            call.shapes.push(shape);
        }
        Value::Number(n) => {
            call.first_is_scalar |= call.inputs.is_empty();
            call.scalars.push(n.as_f64().unwrap_or(0.0))
        }
        _ => {}
    }
}

fn parse_calls(l: &Value) -> Vec<Call> {
    let mut calls = Vec::new();
    for node in l
        .get("inbound_nodes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut call = Call {
            inputs: vec![],
            shapes: vec![],
            scalars: vec![],
            first_is_scalar: false,
        };
        if node.get("args").is_some() {
            collect_args(&node["args"], &mut call);
        } else if let Some(list) = node.as_array() {
            // Keras 2: [[layer, node, tensor, kwargs], ...] (4 or 3 elements).
            for t in list {
                if let Some(t) = t.as_array() {
                    call.inputs.push((
                        t.first()
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        t.get(1).and_then(Value::as_u64).unwrap_or(0) as usize,
                        t.get(2).and_then(Value::as_u64).unwrap_or(0) as usize,
                    ));
                    call.shapes.push(None);
                }
            }
        }
        calls.push(call);
    }
    calls
}

fn parse_layer(l: &Value) -> Layer {
    let config = l.get("config").cloned().unwrap_or(Value::Null);
    let name = str_of(l, "name")
        .or_else(|| str_of(&config, "name"))
        .unwrap_or_default()
        .to_string();
    Layer {
        class: str_of(l, "class_name").unwrap_or_default().to_string(),
        module: str_of(l, "module").unwrap_or_default().to_string(),
        name,
        calls: parse_calls(l),
        config,
    }
}

/// `[null, 8, 8, 3]` (or Keras 2's `batch_input_shape`) -> per-sample dims.
fn batch_shape(c: &Value) -> Option<Vec<usize>> {
    let s = c
        .get("batch_shape")
        .or_else(|| c.get("batch_input_shape"))?
        .as_array()?;
    s.iter()
        .skip(1)
        .map(|d| d.as_u64().map(|d| d as usize))
        .collect()
}

fn tensor_keys(v: &Value) -> Vec<Key> {
    // `["img", 0, 0]` (one tensor) or `[["img", 0, 0], ...]`.
    let Some(a) = v.as_array() else { return vec![] };
    if a.first().is_some_and(Value::is_string) {
        return vec![(
            a[0].as_str().unwrap().to_string(),
            a[1].as_u64().unwrap_or(0) as usize,
            a[2].as_u64().unwrap_or(0) as usize,
        )];
    }
    a.iter().flat_map(tensor_keys).collect()
}

/// Builds the model described by a Keras config with the given weights.
pub(crate) fn build(src: &Source, opts: &ImportOptions) -> Result<Model> {
    let major3 = src
        .keras_version
        .as_deref()
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok())
        .is_none_or(|m| m >= 3);
    // A binding that names no Lambda would silently do nothing: refuse it.
    let mut lambdas = Vec::new();
    lambda_names(&src.config, &mut lambdas);
    let mut unknown: Vec<&String> = opts.bind.keys().filter(|k| !lambdas.contains(k)).collect();
    unknown.sort();
    if let Some(k) = unknown.first() {
        let name = str_of(&src.config["config"], "name").unwrap_or("keras_model");
        return Err(bad(
            name,
            if lambdas.is_empty() {
                format!("a binding is given for '{k}', but the model has no Lambda layers")
            } else {
                format!(
                    "a binding is given for '{k}', which is not a Lambda layer (Lambda layers: {})",
                    lambdas.join(", ")
                )
            },
        ));
    }
    build_model(&src.config, &src.weights, opts, major3)
}

/// The names of every Lambda layer in a config, nested models included.
fn lambda_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if o.get("class_name").and_then(Value::as_str) == Some("Lambda") {
                if let Some(n) = o
                    .get("config")
                    .and_then(|c| c.get("name"))
                    .and_then(Value::as_str)
                {
                    out.push(n.to_string());
                }
            }
            o.values().for_each(|x| lambda_names(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| lambda_names(x, out)),
        _ => {}
    }
}

fn build_model(
    top: &Value,
    weights: &HashMap<String, LayerWeights>,
    opts: &ImportOptions,
    keras3: bool,
) -> Result<Model> {
    let class = str_of(top, "class_name").unwrap_or_default();
    let cfg = &top["config"];
    let name = str_of(cfg, "name").unwrap_or("keras_model").to_string();
    // Keras 2.0-2.2 Sequential: the config is the layer list itself.
    let layers_v = if cfg.is_array() { cfg } else { &cfg["layers"] };
    let raw: Vec<Value> = layers_v
        .as_array()
        .cloned()
        .ok_or_else(|| bad(&name, "the config has no layer list"))?;
    let mut layers: Vec<Layer> = raw.iter().map(parse_layer).collect();
    let (inputs, outputs) = match class {
        "Sequential" => {
            // Chain the layers; an InputLayer (or the first layer's batch shape) starts it.
            let mut prev: Option<String> = None;
            let mut synth = Vec::new();
            if layers.first().is_none_or(|l| l.class != "InputLayer") {
                let first = layers
                    .first()
                    .ok_or_else(|| bad(&name, "an empty Sequential"))?;
                let shape = batch_shape(&first.config)
                    .or_else(|| batch_shape(&json_obj("batch_shape", cfg.get("build_input_shape"))))
                    .ok_or_else(|| bad(&name, "a Sequential model without an input shape"))?;
                let input_name = format!("{}_input", first.name);
                synth.push(Layer {
                    class: "InputLayer".into(),
                    module: String::new(),
                    name: input_name,
                    config: serde_json::json!({"batch_shape": std::iter::once(Value::Null).chain(shape.iter().map(|&d| Value::from(d))).collect::<Vec<_>>()}),
                    calls: vec![],
                });
            }
            synth.append(&mut layers);
            layers = synth;
            for l in &mut layers {
                if let Some(p) = &prev {
                    l.calls = vec![Call {
                        inputs: vec![(p.clone(), 0, 0)],
                        shapes: vec![None],
                        scalars: vec![],
                        first_is_scalar: false,
                    }];
                }
                prev = Some(l.name.clone());
            }
            let first = layers[0].name.clone();
            (vec![(first, 0, 0)], vec![(prev.unwrap_or_default(), 0, 0)])
        }
        "Functional" | "Model" => (
            tensor_keys(&cfg["input_layers"]),
            tensor_keys(&cfg["output_layers"]),
        ),
        other => {
            return Err(bad(
                &name,
                format!(
                    "model class '{other}' is not supported (Sequential, Functional and Model are)"
                ),
            ))
        }
    };
    let mut im = Importer {
        g: Functional::new(&name),
        values: HashMap::new(),
        weights: Vec::new(),
        parts: HashMap::new(),
        src: weights,
        opts,
        keras3,
        consumer_shapes: HashMap::new(),
    };
    for l in &layers {
        for c in &l.calls {
            for (k, s) in c.inputs.iter().zip(&c.shapes) {
                if let Some(s) = s {
                    im.consumer_shapes.insert(k.clone(), s.clone());
                }
            }
        }
    }
    // Inputs first, in the declared order.
    for key in &inputs {
        let l = layers.iter().find(|l| l.name == key.0).ok_or_else(|| {
            bad(
                &name,
                format!("input layer '{}' is not in the config", key.0),
            )
        })?;
        let kshape = batch_shape(&l.config)
            .ok_or_else(|| bad(&l.name, "an InputLayer without a fully known shape"))?;
        let r = im.g.input(&l.name, ll_shape(&kshape))?;
        im.values.insert(key.clone(), Val { r, kshape });
    }
    // Layers in dependency order: a shared layer's later call may wait on later layers.
    let mut done = vec![0usize; layers.len()];
    loop {
        let mut progressed = false;
        for (i, l) in layers.iter().enumerate() {
            while done[i] < l.calls.len() {
                let call = &l.calls[done[i]];
                if !call.inputs.iter().all(|k| im.values.contains_key(k)) {
                    break;
                }
                let xs: Vec<Val> = call.inputs.iter().map(|k| im.values[k].clone()).collect();
                let v = im.call(l, done[i], call, &xs).map_err(|e| context(l, e))?;
                im.values.insert((l.name.clone(), done[i], 0), v);
                done[i] += 1;
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    let mut outs = Vec::new();
    for key in &outputs {
        match im.values.get(key) {
            Some(v) => outs.push(v.r),
            None => return Err(bad(&name, format!("output '{}' cannot be computed from the inputs (a layer is missing or its inputs never appear)", key.0))),
        }
    }
    let Importer { g, weights: ws, .. } = im;
    let model = g.build(&outs)?;
    for (k, t) in ws {
        model
            .params()
            .set(&k, &t)
            .map_err(|e| bad(&k, format!("weight: {e}")))?;
    }
    Ok(model)
}

fn json_obj(key: &str, v: Option<&Value>) -> Value {
    let mut m = serde_json::Map::new();
    if let Some(v) = v {
        m.insert(key.into(), v.clone());
    }
    Value::Object(m)
}

fn context(l: &Layer, e: Error) -> Error {
    match e {
        Error::InvalidArgument { node, message } if node == l.name => Error::InvalidArgument {
            node,
            message: format!("{} layer: {message}", l.class),
        },
        e => e,
    }
}

struct Importer<'a> {
    g: Functional,
    values: HashMap<Key, Val>,
    weights: Vec<(String, Tensor)>,
    /// Node names of each layer's first call, first to last, for shared layers.
    parts: HashMap<String, Vec<String>>,
    src: &'a HashMap<String, LayerWeights>,
    opts: &'a ImportOptions,
    keras3: bool,
    /// Shapes of tensors as their consumers recorded them (Keras 3).
    consumer_shapes: HashMap<Key, Vec<usize>>,
}

impl Importer<'_> {
    fn call(&mut self, l: &Layer, k: usize, call: &Call, xs: &[Val]) -> Result<Val> {
        if k > 0 {
            return self.reuse(l, xs);
        }
        self.lower(l, call, xs)
    }

    /// A later call of a shared layer: every part again, with the same weights.
    fn reuse(&mut self, l: &Layer, xs: &[Val]) -> Result<Val> {
        let parts = self.parts.get(&l.name).cloned().unwrap_or_default();
        let first = self
            .values
            .get(&(l.name.clone(), 0, 0))
            .cloned()
            .ok_or_else(|| bad(&l.name, "shared layer without a first call"))?;
        if parts.is_empty() {
            // An identity layer (Dropout): the call is its input.
            return xs.first().cloned().ok_or_else(|| bad(&l.name, "no input"));
        }
        let mut cur: Vec<NodeRef> = xs.iter().map(|v| v.r).collect();
        for p in &parts {
            cur = vec![self.g.reuse(p, &cur)?];
        }
        Ok(Val {
            r: cur[0],
            kshape: first.kshape,
        })
    }

    fn vars(&self, l: &Layer, n: &[usize]) -> Result<Vec<Tensor>> {
        let lw = self.src.get(&l.name);
        let got = lw.map_or(0, |w| w.vars.len());
        if !n.contains(&got) {
            return Err(bad(
                &l.name,
                format!(
                    "the file stores {got} weight array(s) for this layer, expected {}",
                    n.iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            ));
        }
        lw.map_or(Ok(vec![]), |w| w.vars.iter().map(tensor).collect())
    }

    fn add(
        &mut self,
        l: &Layer,
        part: Option<&str>,
        op: impl Into<layerlens_core::ir::Op>,
        inputs: &[NodeRef],
    ) -> Result<NodeRef> {
        let name = match part {
            Some(p) => format!("{}.{p}", l.name),
            None => l.name.clone(),
        };
        let r = self.g.add_as(&name, op, inputs)?;
        self.parts.entry(l.name.clone()).or_default().push(name);
        Ok(r)
    }

    /// `x ∘ t` with the constant `t` on the right, as the node `layer[.part]`.
    fn add_const(
        &mut self,
        l: &Layer,
        part: Option<&str>,
        kind: BinaryKind,
        x: NodeRef,
        t: Tensor,
    ) -> Result<NodeRef> {
        let e = Elementwise {
            kind,
            constant: Some(ConstOperand {
                shape: t.dims().to_vec(),
                side: Side::Rhs,
            }),
        };
        let r = self.add(l, part, e, &[x])?;
        let node = self.g.name(r).to_string();
        self.param(&node, "constant", t);
        Ok(r)
    }

    fn param(&mut self, node: &str, local: &str, t: Tensor) {
        self.weights.push((format!("{node}.{local}"), t));
    }

    fn activation(&self, l: &Layer, v: &Value, krank: usize) -> Result<Option<Activation>> {
        let name = match v {
            Value::Null => return Ok(None),
            Value::String(s) => s.as_str(),
            other => {
                return Err(bad(
                    &l.name,
                    format!(
                        "activation {other} (a custom or serialised function) is not supported"
                    ),
                ))
            }
        };
        activation_by_name(name, krank, self.keras3).map_err(|m| bad(&l.name, m))
    }

    fn padding(&self, l: &Layer) -> Result<Padding> {
        match str_of(&l.config, "padding").unwrap_or("valid") {
            "valid" => Ok(Padding::Valid),
            "same" => Ok(Padding::Same),
            other => Err(bad(
                &l.name,
                format!("padding '{other}' is not supported (valid, same are)"),
            )),
        }
    }

    fn check_channels_last(&self, l: &Layer) -> Result<()> {
        match str_of(&l.config, "data_format") {
            None | Some("channels_last") => Ok(()),
            Some(f) => Err(bad(
                &l.name,
                format!("data_format '{f}' is not supported (channels_last is)"),
            )),
        }
    }

    fn one(&self, l: &Layer, xs: &[Val]) -> Result<Val> {
        match xs {
            [x] => Ok(x.clone()),
            _ => Err(bad(&l.name, format!("expects one input, got {}", xs.len()))),
        }
    }

    fn map_input(&self, l: &Layer, xs: &[Val]) -> Result<(Val, [usize; 3])> {
        let x = self.one(l, xs)?;
        match x.kshape.as_slice() {
            [h, w, c] => Ok((x.clone(), [*h, *w, *c])),
            s => Err(bad(
                &l.name,
                format!("expects an (H, W, C) map, got per-sample shape {s:?}"),
            )),
        }
    }

    fn out(&self, r: NodeRef) -> Val {
        let s = self.g.shape(r).dims().to_vec();
        let kshape = if s.len() == 3 {
            vec![s[1], s[2], s[0]]
        } else {
            s
        };
        Val { r, kshape }
    }

    fn lower(&mut self, l: &Layer, call: &Call, xs: &[Val]) -> Result<Val> {
        let c = &l.config;
        // Raw ops (`keras.ops.multiply(x, 2.0)`) share class names with merge layers;
        // a legacy .h5 drops their module, but their config holds only a name.
        let only_name = c
            .as_object()
            .is_some_and(|o| o.len() == 1 && o.contains_key("name"));
        let is_op = l.module.starts_with("keras.src.ops")
            || (l.module.is_empty()
                && matches!(
                    l.class.as_str(),
                    "Add"
                        | "Subtract"
                        | "Multiply"
                        | "Divide"
                        | "TrueDivide"
                        | "Maximum"
                        | "Minimum"
                )
                && (only_name || !call.scalars.is_empty()));
        let class = l.class.as_str();
        if is_op {
            return self.raw_op(l, call, xs);
        }
        if c.get("layers").is_some() && matches!(class, "Functional" | "Sequential" | "Model") {
            return self.nested(l, xs);
        }
        let r = match class {
            "InputLayer" => return Err(bad(&l.name, "an InputLayer that is not a model input")),
            "Conv2D" | "Convolution2D" => {
                let (x, [_, _, cin]) = self.map_input(l, xs)?;
                self.check_channels_last(l)?;
                let bias = flag(c, "use_bias", true);
                let filters = num(c, "filters").unwrap_or(0.0) as usize;
                let k = pair(c, "kernel_size", 1, &l.name)?;
                let conv = Conv2d {
                    filters,
                    kernel: k,
                    stride: pair(c, "strides", 1, &l.name)?,
                    padding: self.padding(l)?,
                    dilation: pair(c, "dilation_rate", 1, &l.name)?,
                    groups: num(c, "groups").unwrap_or(1.0) as usize,
                    bias,
                    activation: self.activation(
                        l,
                        c.get("activation").unwrap_or(&Value::Null),
                        3,
                    )?,
                    in_channels: 0,
                };
                let _ = cin;
                let w = self.vars(l, &[1 + bias as usize])?;
                let r = self.add(l, None, conv, &[x.r])?;
                self.param(&l.name, "weight", layout::hwio_to_oihw(&w[0])?);
                if bias {
                    self.param(&l.name, "bias", w[1].clone());
                }
                r
            }
            "DepthwiseConv2D" => {
                let (x, [_, _, cin]) = self.map_input(l, xs)?;
                self.check_channels_last(l)?;
                let bias = flag(c, "use_bias", true);
                let m = num(c, "depth_multiplier").unwrap_or(1.0) as usize;
                let conv = Conv2d {
                    filters: cin * m,
                    kernel: pair(c, "kernel_size", 1, &l.name)?,
                    stride: pair(c, "strides", 1, &l.name)?,
                    padding: self.padding(l)?,
                    dilation: pair(c, "dilation_rate", 1, &l.name)?,
                    groups: cin,
                    bias,
                    activation: self.activation(
                        l,
                        c.get("activation").unwrap_or(&Value::Null),
                        3,
                    )?,
                    in_channels: 0,
                };
                let w = self.vars(l, &[1 + bias as usize])?;
                let r = self.add(l, None, conv, &[x.r])?;
                self.param(&l.name, "weight", layout::depthwise_to_oihw(&w[0])?);
                if bias {
                    self.param(&l.name, "bias", w[1].clone());
                }
                r
            }
            "SeparableConv2D" | "SeparableConvolution2D" => {
                let (x, [_, _, cin]) = self.map_input(l, xs)?;
                self.check_channels_last(l)?;
                let bias = flag(c, "use_bias", true);
                let m = num(c, "depth_multiplier").unwrap_or(1.0) as usize;
                let filters = num(c, "filters").unwrap_or(0.0) as usize;
                let dw = Conv2d {
                    filters: cin * m,
                    kernel: pair(c, "kernel_size", 1, &l.name)?,
                    stride: pair(c, "strides", 1, &l.name)?,
                    padding: self.padding(l)?,
                    dilation: pair(c, "dilation_rate", 1, &l.name)?,
                    groups: cin,
                    bias: false,
                    activation: None,
                    in_channels: 0,
                };
                let w = self.vars(l, &[2 + bias as usize])?;
                let d = self.add(l, Some("depthwise"), dw, &[x.r])?;
                self.param(
                    &format!("{}.depthwise", l.name),
                    "weight",
                    layout::depthwise_to_oihw(&w[0])?,
                );
                let pw = Conv2d::new(filters, 1).bias(bias);
                let pw = match self.activation(l, c.get("activation").unwrap_or(&Value::Null), 3)? {
                    Some(a) => pw.activation(a),
                    None => pw,
                };
                let r = self.add(l, None, pw, &[d])?;
                self.param(&l.name, "weight", layout::hwio_to_oihw(&w[1])?);
                if bias {
                    self.param(&l.name, "bias", w[2].clone());
                }
                r
            }
            "Conv2DTranspose" | "Convolution2DTranspose" => {
                let (x, _) = self.map_input(l, xs)?;
                self.check_channels_last(l)?;
                let bias = flag(c, "use_bias", true);
                let filters = num(c, "filters").unwrap_or(0.0) as usize;
                let k = pair(c, "kernel_size", 1, &l.name)?;
                let st = pair(c, "strides", 1, &l.name)?;
                let d = pair(c, "dilation_rate", 1, &l.name)?;
                if k[0] != k[1] || st[0] != st[1] || d[0] != d[1] {
                    return Err(bad(&l.name, format!("a non-square kernel {k:?}, strides {st:?} or dilation {d:?} is not supported (square ones are)")));
                }
                if c.get("output_padding").is_some_and(|v| !v.is_null()) {
                    return Err(bad(&l.name, "output_padding is not supported (None is)"));
                }
                let (k, st, d) = (k[0], st[0], d[0]);
                // The effective kernel extent, checked: a file may say 0 or 2^60.
                let ek = k
                    .checked_sub(1)
                    .filter(|_| st > 0 && d > 0)
                    .and_then(|k1| k1.checked_mul(d))
                    .and_then(|v| v.checked_add(1))
                    .ok_or_else(|| {
                        bad(
                            &l.name,
                            format!("kernel {k}, strides {st}, dilation {d}: each must be positive (and their extent representable)"),
                        )
                    })?;
                // Keras' output length (deconv_output_length): `in * s` for "same",
                // `in * s + max(ek - s, 0)` for "valid". The full transposed
                // convolution is `(in - 1) * s + ek` long: when that is shorter the
                // rest is bias only (output_padding); when longer, "same" crops
                // `(ek - s) / 2` at the start and the rest at the end, as the
                // gradient of TensorFlow's SAME convolution does.
                let same = matches!(self.padding(l)?, Padding::Same);
                let (pad, extra, tail) = if ek < st {
                    (0, st - ek, 0)
                } else if same {
                    let total = ek - st;
                    (total / 2, 0, total - 2 * (total / 2))
                } else {
                    (0, 0, 0)
                };
                let act = self.activation(l, c.get("activation").unwrap_or(&Value::Null), 3)?;
                let conv = ConvTranspose2d {
                    filters,
                    kernel: k,
                    stride: st,
                    padding: pad,
                    output_padding: extra,
                    dilation: d,
                    bias,
                    in_channels: 0,
                };
                let w = self.vars(l, &[1 + bias as usize])?;
                let mut parts: Vec<(&str, layerlens_core::ir::Op)> = vec![("full", conv.into())];
                if tail > 0 {
                    parts.push((
                        "crop",
                        Crop2d {
                            crops: [0, tail, 0, tail],
                        }
                        .into(),
                    ));
                }
                if let Some(a) = act {
                    parts.push(("act", a.into()));
                }
                let n = parts.len();
                let mut r = x.r;
                for (i, (part, op)) in parts.into_iter().enumerate() {
                    r = self.add(l, (i + 1 < n).then_some(part), op, &[r])?;
                }
                // The weights belong to the first node (`layer.full` or the layer).
                let conv_node = if n > 1 {
                    format!("{}.full", l.name)
                } else {
                    l.name.clone()
                };
                self.param(&conv_node, "weight", layout::conv_transpose_kernel(&w[0])?);
                if bias {
                    self.param(&conv_node, "bias", w[1].clone());
                }
                r
            }
            "Resizing" => {
                let (x, [h, w, _]) = self.map_input(l, xs)?;
                self.check_channels_last(l)?;
                let size = [
                    num(c, "height").unwrap_or(0.0) as usize,
                    num(c, "width").unwrap_or(0.0) as usize,
                ];
                for flag_name in ["crop_to_aspect_ratio", "pad_to_aspect_ratio", "antialias"] {
                    if flag(c, flag_name, false) {
                        return Err(bad(&l.name, format!("{flag_name}=True is not supported")));
                    }
                }
                // TensorFlow's tf.image.resize (v2): half-pixel centres; nearest
                // rounds half up; bicubic is Keys' a = -0.5 with outside taps
                // dropped and the rest renormalised.
                let (kernel, exclude_outside) = match str_of(c, "interpolation").unwrap_or("bilinear") {
                    "bilinear" => (ResizeKernel::Linear, false),
                    "nearest" => (ResizeKernel::Nearest(NearestRounding::RoundPreferCeil), false),
                    "bicubic" => (ResizeKernel::Cubic { a: -0.5 }, true),
                    other => {
                        return Err(bad(&l.name, format!("interpolation '{other}' is not supported (bilinear, nearest, bicubic are)")))
                    }
                };
                let resize = Resize {
                    size,
                    scales: [size[0] as f64 / h as f64, size[1] as f64 / w as f64],
                    kernel,
                    coordinates: CoordinateMode::HalfPixel,
                    antialias: false,
                    exclude_outside,
                };
                self.add(l, None, resize, &[x.r])?
            }
            "Dense" => {
                let x = self.one(l, xs)?;
                let bias = flag(c, "use_bias", true);
                let units = num(c, "units").unwrap_or(0.0) as usize;
                let act = self.activation(
                    l,
                    c.get("activation").unwrap_or(&Value::Null),
                    x.kshape.len(),
                )?;
                let w = self.vars(l, &[1 + bias as usize])?;
                let r = match x.kshape.len() {
                    1 => {
                        let d = Dense { units, bias, activation: act, in_features: 0, any_rank: false };
                        let r = self.add(l, None, d, &[x.r])?;
                        self.param(&l.name, "weight", layout::dense_kernel(&w[0])?);
                        r
                    }
                    // Dense on the channels of a map is a 1x1 convolution.
                    3 => {
                        let conv = Conv2d { activation: act, ..Conv2d::new(units, 1).bias(bias) };
                        let r = self.add(l, None, conv, &[x.r])?;
                        let k = layout::dense_kernel(&w[0])?;
                        let (u, i) = k.dims2()?;
                        self.param(&l.name, "weight", k.reshape((u, i, 1, 1))?);
                        r
                    }
                    n => return Err(bad(&l.name, format!("Dense on a rank-{} tensor is not supported (features or (H, W, C) maps are)", n + 1))),
                };
                if bias {
                    self.param(&l.name, "bias", w[1].clone());
                }
                r
            }
            "BatchNormalization" => {
                let x = self.one(l, xs)?;
                let axis = match c.get("axis") {
                    Some(Value::Array(a)) if a.len() == 1 => a[0].as_i64().unwrap_or(-1),
                    Some(v) => v.as_i64().unwrap_or(-1),
                    None => -1,
                };
                if ll_axis(axis, x.kshape.len())? != 1 {
                    return Err(bad(&l.name, format!("axis {axis} is not the channel axis; only channel batch normalisation is supported")));
                }
                let (scale, center) = (flag(c, "scale", true), flag(c, "center", true));
                let w = self.vars(l, &[2 + scale as usize + center as usize])?;
                let eps = num(c, "epsilon").unwrap_or(1e-3);
                let mom = num(c, "momentum").unwrap_or(0.99);
                let r = self.add(
                    l,
                    None,
                    BatchNorm::new()
                        .eps(eps)
                        .momentum((1.0 - mom).clamp(0.0, 1.0)),
                    &[x.r],
                )?;
                let n = w[w.len() - 1].dim(0)?;
                let mut it = w.into_iter();
                let gamma = if scale {
                    it.next().unwrap()
                } else {
                    Tensor::ones(n, candle_core::DType::F32, &Device::Cpu)?
                };
                let beta = if center {
                    it.next().unwrap()
                } else {
                    Tensor::zeros(n, candle_core::DType::F32, &Device::Cpu)?
                };
                self.param(&l.name, "weight", gamma);
                self.param(&l.name, "bias", beta);
                self.param(&l.name, "running_mean", it.next().unwrap());
                self.param(&l.name, "running_var", it.next().unwrap());
                r
            }
            "LayerNormalization" => {
                let x = self.one(l, xs)?;
                let kr = x.kshape.len();
                let axes: Vec<i64> = match c.get("axis") {
                    Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
                    Some(v) => vec![v.as_i64().unwrap_or(-1)],
                    None => vec![-1],
                };
                if flag(c, "rms_scaling", false) {
                    return Err(bad(&l.name, "rms_scaling=True is not supported"));
                }
                let mut ll: Vec<usize> = axes
                    .iter()
                    .map(|&a| ll_axis(a, kr))
                    .collect::<Result<_>>()?;
                ll.sort_unstable();
                let (scale, center) = (flag(c, "scale", true), flag(c, "center", true));
                let w = self.vars(l, &[scale as usize + center as usize])?;
                let ln = LayerNorm {
                    axes: ll.clone(),
                    eps: num(c, "epsilon").unwrap_or(1e-3),
                    scale,
                    center,
                    param_shape: vec![],
                };
                let r = self.add(l, None, ln, &[x.r])?;
                let pshape: Vec<usize> =
                    ll.iter().map(|&a| self.g.shape(r).dims()[a - 1]).collect();
                // Keras stores gamma in its own axis order; layerlens in its (CHW) order.
                let conv = |t: Tensor| -> Result<Tensor> {
                    if kr == 3 && ll.len() == 3 {
                        Ok(t.reshape((x.kshape[0], x.kshape[1], x.kshape[2]))?
                            .permute((2, 0, 1))?
                            .contiguous()?)
                    } else if kr == 3 && ll.len() > 1 {
                        Err(bad(
                            &l.name,
                            "layer normalisation over two of a map's three axes is not supported",
                        ))
                    } else {
                        Ok(t.reshape(pshape.as_slice())?)
                    }
                };
                let mut it = w.into_iter();
                if scale {
                    let t = conv(it.next().unwrap())?;
                    self.param(&l.name, "weight", t);
                }
                if center {
                    let t = conv(it.next().unwrap())?;
                    self.param(&l.name, "bias", t);
                }
                r
            }
            "Activation" => {
                let x = self.one(l, xs)?;
                match self.activation(
                    l,
                    c.get("activation").unwrap_or(&Value::Null),
                    x.kshape.len(),
                )? {
                    Some(a) => self.add(l, None, a, &[x.r])?,
                    None => self.add(
                        l,
                        None,
                        Reshape::new(
                            self.g
                                .shape(x.r)
                                .dims()
                                .iter()
                                .map(|&d| d as isize)
                                .collect::<Vec<_>>(),
                        ),
                        &[x.r],
                    )?,
                }
            }
            "ReLU" => {
                let x = self.one(l, xs)?;
                let max = num(c, "max_value").map(|v| v as f32);
                let slope = num(c, "negative_slope").unwrap_or(0.0) as f32;
                let th = num(c, "threshold").unwrap_or(0.0) as f32;
                let a = match (max, slope, th) {
                    (None, 0.0, 0.0) => Activation::Relu,
                    (Some(6.0), 0.0, 0.0) => Activation::Relu6,
                    _ => Activation::ReluGeneral {
                        max_value: max,
                        negative_slope: slope,
                        threshold: th,
                    },
                };
                self.add(l, None, a, &[x.r])?
            }
            "LeakyReLU" => {
                let x = self.one(l, xs)?;
                let slope = num(c, "negative_slope")
                    .or_else(|| num(c, "alpha"))
                    .unwrap_or(0.3) as f32;
                self.add(l, None, Activation::LeakyRelu { slope }, &[x.r])?
            }
            "ELU" => {
                let x = self.one(l, xs)?;
                self.add(
                    l,
                    None,
                    Activation::Elu {
                        alpha: num(c, "alpha").unwrap_or(1.0) as f32,
                    },
                    &[x.r],
                )?
            }
            "PReLU" => {
                let x = self.one(l, xs)?;
                let w = self.vars(l, &[1])?;
                let alpha = &w[0];
                let t = if alpha.rank() == 3 {
                    alpha.permute((2, 0, 1))?.contiguous()?
                } else {
                    alpha.clone()
                };
                let r = self.add(
                    l,
                    None,
                    PRelu {
                        shape: t.dims().to_vec(),
                    },
                    &[x.r],
                )?;
                self.param(&l.name, "weight", t);
                r
            }
            "Softmax" => {
                let x = self.one(l, xs)?;
                let axis = match c.get("axis") {
                    Some(Value::Array(a)) if a.len() == 1 => a[0].as_i64().unwrap_or(-1),
                    Some(Value::Array(_)) => {
                        return Err(bad(&l.name, "softmax over several axes is not supported"))
                    }
                    Some(v) => v.as_i64().unwrap_or(-1),
                    None => -1,
                };
                let a = ll_axis(axis, x.kshape.len())? as isize;
                self.add(l, None, Activation::Softmax { axis: a }, &[x.r])?
            }
            "MaxPooling2D" | "AveragePooling2D" | "MaxPool2D" | "AvgPool2D" | "AveragePool2D" => {
                let (x, _) = self.map_input(l, xs)?;
                self.check_channels_last(l)?;
                let k = pair(c, "pool_size", 2, &l.name)?;
                let s = match c.get("strides") {
                    None | Some(Value::Null) => k,
                    Some(_) => pair(c, "strides", 1, &l.name)?,
                };
                let kind = if class.starts_with("Max") {
                    PoolKind::Max
                } else {
                    PoolKind::Avg
                };
                // TensorFlow averages over the real cells only.
                let p = Pool2d {
                    kind,
                    kernel: k,
                    stride: s,
                    padding: self.padding(l)?,
                    count_include_pad: false,
                };
                self.add(l, None, p, &[x.r])?
            }
            "GlobalAveragePooling2D" | "GlobalAvgPool2D" => {
                let (x, _) = self.map_input(l, xs)?;
                self.check_channels_last(l)?;
                self.add(
                    l,
                    None,
                    GlobalAvgPool {
                        keepdims: flag(c, "keepdims", false),
                    },
                    &[x.r],
                )?
            }
            "GlobalMaxPooling2D" | "GlobalMaxPool2D" => {
                let (x, _) = self.map_input(l, xs)?;
                self.check_channels_last(l)?;
                let r = self.g.lambda_as(
                    &l.name,
                    Reduce::max([2, 3]).keepdims(flag(c, "keepdims", false)),
                    &[x.r],
                    &[],
                )?;
                self.parts
                    .entry(l.name.clone())
                    .or_default()
                    .push(l.name.clone());
                r
            }
            "Flatten" => {
                let x = self.one(l, xs)?;
                if x.kshape.len() == 3 {
                    // Keras flattens (H, W, C) channel-last.
                    let p = self.add(
                        l,
                        Some("nhwc"),
                        Permute {
                            perm: vec![1, 2, 0],
                        },
                        &[x.r],
                    )?;
                    self.add(l, None, Flatten, &[p])?
                } else {
                    self.add(l, None, Flatten, &[x.r])?
                }
            }
            "Dropout"
            | "SpatialDropout1D"
            | "SpatialDropout2D"
            | "SpatialDropout3D"
            | "GaussianDropout"
            | "GaussianNoise"
            | "AlphaDropout"
            | "ActivityRegularization"
            | "StochasticDepth" => {
                // Inference: the identity; the Keras name resolves to the input.
                let x = self.one(l, xs)?;
                self.g.alias(&l.name, x.r)?;
                return Ok(x);
            }
            "Add" | "Subtract" | "Multiply" | "Average" | "Maximum" | "Minimum" => {
                if xs.len() < 2 || (class == "Subtract" && xs.len() != 2) {
                    return Err(bad(
                        &l.name,
                        format!(
                            "expects {} inputs, got {}",
                            if class == "Subtract" {
                                "2"
                            } else {
                                "at least 2"
                            },
                            xs.len()
                        ),
                    ));
                }
                if xs.iter().any(|v| v.kshape.len() != xs[0].kshape.len()) {
                    return Err(bad(&l.name, "inputs of different ranks (NHWC broadcasting across ranks) are not supported"));
                }
                let kind = match class {
                    "Subtract" => BinaryKind::Sub,
                    "Multiply" => BinaryKind::Mul,
                    "Maximum" => BinaryKind::Max,
                    "Minimum" => BinaryKind::Min,
                    _ => BinaryKind::Add,
                };
                let n = xs.len();
                let mut acc = xs[0].r;
                for (i, x) in xs.iter().enumerate().skip(1) {
                    let last = i == n - 1 && class != "Average";
                    let part = format!("{i}");
                    acc = self.add(
                        l,
                        (!last).then_some(part.as_str()),
                        Elementwise {
                            kind,
                            constant: None,
                        },
                        &[acc, x.r],
                    )?;
                }
                if class == "Average" {
                    self.add_const(
                        l,
                        None,
                        BinaryKind::Mul,
                        acc,
                        Tensor::new(&[1.0f32 / n as f32], &Device::Cpu)?,
                    )?
                } else {
                    acc
                }
            }
            "Concatenate" => {
                let kr = xs.first().map_or(0, |v| v.kshape.len());
                let axis = ll_axis(c.get("axis").and_then(Value::as_i64).unwrap_or(-1), kr)?;
                let rs: Vec<NodeRef> = xs.iter().map(|v| v.r).collect();
                self.add(l, None, Concat::new(axis as isize), &rs)?
            }
            "ZeroPadding2D" | "Cropping2D" => {
                let (x, _) = self.map_input(l, xs)?;
                self.check_channels_last(l)?;
                let key = if class == "ZeroPadding2D" {
                    "padding"
                } else {
                    "cropping"
                };
                let v = c.get(key).cloned().unwrap_or(Value::from(1));
                let p = match &v {
                    Value::Number(n) => {
                        let n = n.as_u64().unwrap_or(0) as usize;
                        [n, n, n, n]
                    }
                    Value::Array(a) if a.len() == 2 => {
                        match (json_usizes(&a[0]).as_deref(), json_usizes(&a[1]).as_deref()) {
                            (Some([h]), Some([w])) => [*h, *h, *w, *w],
                            (Some([t, b]), Some([lft, r])) => [*t, *b, *lft, *r],
                            _ => return Err(bad(&l.name, format!("{key} {v} is not understood"))),
                        }
                    }
                    _ => return Err(bad(&l.name, format!("{key} {v} is not understood"))),
                };
                if class == "ZeroPadding2D" {
                    self.add(
                        l,
                        None,
                        Pad2d {
                            pads: p,
                            mode: PadMode::Constant(0.0),
                        },
                        &[x.r],
                    )?
                } else {
                    self.add(l, None, Crop2d { crops: p }, &[x.r])?
                }
            }
            "UpSampling2D" => {
                let (x, [h, w, _]) = self.map_input(l, xs)?;
                self.check_channels_last(l)?;
                let s = pair(c, "size", 2, &l.name)?;
                let mode = match str_of(c, "interpolation").unwrap_or("nearest") {
                    "nearest" => UpsampleMode::Nearest,
                    "bilinear" => UpsampleMode::Bilinear,
                    other => {
                        return Err(bad(
                            &l.name,
                            format!(
                                "interpolation '{other}' is not supported (nearest, bilinear are)"
                            ),
                        ))
                    }
                };
                self.add(
                    l,
                    None,
                    Upsample {
                        size: [h * s[0], w * s[1]],
                        mode,
                    },
                    &[x.r],
                )?
            }
            "Reshape" => {
                let x = self.one(l, xs)?;
                let target: Vec<i64> = c
                    .get("target_shape")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_i64).collect())
                    .unwrap_or_default();
                let total: usize = x.kshape.iter().product();
                let known: i64 = target.iter().filter(|&&d| d > 0).product();
                let kt: Vec<usize> = target
                    .iter()
                    .map(|&d| {
                        if d < 0 {
                            total / known.max(1) as usize
                        } else {
                            d as usize
                        }
                    })
                    .collect();
                if kt.iter().product::<usize>() != total {
                    return Err(bad(
                        &l.name,
                        format!(
                            "target_shape {target:?} does not fit per-sample shape {:?}",
                            x.kshape
                        ),
                    ));
                }
                let mut cur = x.r;
                if x.kshape.len() == 3 {
                    cur = self.add(
                        l,
                        Some("nhwc"),
                        Permute {
                            perm: vec![1, 2, 0],
                        },
                        &[cur],
                    )?;
                }
                let isz = |v: &[usize]| v.iter().map(|&d| d as isize).collect::<Vec<_>>();
                if kt.len() == 3 {
                    cur = self.add(l, Some("hwc"), Reshape::new(isz(&kt)), &[cur])?;
                    self.add(
                        l,
                        None,
                        Permute {
                            perm: vec![2, 0, 1],
                        },
                        &[cur],
                    )?
                } else {
                    self.add(l, None, Reshape::new(isz(&kt)), &[cur])?
                }
            }
            "Permute" => {
                let x = self.one(l, xs)?;
                let dims: Vec<usize> = c.get("dims").and_then(json_usizes).unwrap_or_default();
                if dims.len() != x.kshape.len() || dims.contains(&0) {
                    return Err(bad(
                        &l.name,
                        format!(
                            "dims {dims:?} do not permute per-sample shape {:?}",
                            x.kshape
                        ),
                    ));
                }
                let perm: Vec<usize> = if dims.len() == 3 {
                    // layerlens axis of each Keras (h, w, c) axis, and Keras axes of the output (c, h, w).
                    let ll_of = [1, 2, 0];
                    [2, 0, 1].iter().map(|&j| ll_of[dims[j] - 1]).collect()
                } else {
                    dims.iter().map(|&d| d - 1).collect()
                };
                self.add(l, None, Permute { perm }, &[x.r])?
            }
            "Rescaling" => {
                let x = self.one(l, xs)?;
                let scale = c.get("scale").cloned().unwrap_or(Value::from(1.0));
                let offset = c.get("offset").cloned().unwrap_or(Value::from(0.0));
                let has_offset = offset.as_f64() != Some(0.0);
                let s = self.constant(l, &x, &scale)?;
                let r = self.add_const(
                    l,
                    has_offset.then_some("scale"),
                    BinaryKind::Mul,
                    x.r,
                    s.clone(),
                )?;
                if has_offset {
                    let o = self.constant(l, &x, &offset)?;
                    self.add_const(l, None, BinaryKind::Add, r, o)?
                } else {
                    r
                }
            }
            "Normalization" => {
                let x = self.one(l, xs)?;
                if flag(c, "invert", false) {
                    return Err(bad(&l.name, "invert=True is not supported"));
                }
                let (mean, var) = match (
                    c.get("mean").filter(|v| !v.is_null()),
                    c.get("variance").filter(|v| !v.is_null()),
                ) {
                    (Some(m), Some(v)) => (self.constant(l, &x, m)?, self.constant(l, &x, v)?),
                    _ => {
                        let w = self.vars(l, &[3])?;
                        let to_json = |t: &Tensor| -> Result<Value> {
                            Ok(Value::from(
                                t.flatten_all()?
                                    .to_vec1::<f32>()?
                                    .into_iter()
                                    .map(|v| v as f64)
                                    .collect::<Vec<_>>(),
                            ))
                        };
                        (
                            self.constant(l, &x, &to_json(&w[0])?)?,
                            self.constant(l, &x, &to_json(&w[1])?)?,
                        )
                    }
                };
                // Keras: (x - mean) / max(sqrt(variance), epsilon).
                let denom = var.sqrt()?.maximum(1e-7f32)?;
                let m = self.add_const(l, Some("center"), BinaryKind::Sub, x.r, mean)?;
                self.add_const(l, None, BinaryKind::Div, m, denom)?
            }
            "LayerScale" => {
                let x = self.one(l, xs)?;
                let w = self.vars(l, &[1])?;
                let v = Value::from(
                    w[0].flatten_all()?
                        .to_vec1::<f32>()?
                        .into_iter()
                        .map(|v| v as f64)
                        .collect::<Vec<_>>(),
                );
                let g = self.constant(l, &x, &v)?;
                self.add_const(l, None, BinaryKind::Mul, x.r, g)?
            }
            "Lambda" => return self.lambda(l, xs),
            other => {
                return Err(bad(
                    &l.name,
                    format!(
                        "Keras layer class '{other}' is not supported (supported: {})",
                        SUPPORTED_LAYERS.join(", ")
                    ),
                ));
            }
        };
        Ok(self.out(r))
    }

    /// A scalar or a per-channel list (Keras' channel-last broadcast) as a
    /// constant that broadcasts against `x` in layerlens' layout.
    fn constant(&self, l: &Layer, x: &Val, v: &Value) -> Result<Tensor> {
        let vals: Vec<f32> = match v {
            Value::Number(n) => vec![n.as_f64().unwrap_or(0.0) as f32],
            Value::Array(_) => {
                fn flat(v: &Value, out: &mut Vec<f32>) {
                    match v {
                        Value::Array(a) => a.iter().for_each(|x| flat(x, out)),
                        Value::Number(n) => out.push(n.as_f64().unwrap_or(0.0) as f32),
                        _ => {}
                    }
                }
                let mut out = Vec::new();
                flat(v, &mut out);
                out
            }
            other => return Err(bad(&l.name, format!("constant {other} is not understood"))),
        };
        let n = vals.len();
        let last = x.kshape.last().copied().unwrap_or(1);
        let shape: Vec<usize> = if n == 1 {
            vec![1]
        } else if n == last && x.kshape.len() == 3 {
            vec![n, 1, 1]
        } else if n == last {
            vec![n]
        } else {
            return Err(bad(&l.name, format!("{n} constant values do not broadcast over the channels of per-sample shape {:?}", x.kshape)));
        };
        Ok(Tensor::from_vec(vals, shape.as_slice(), &Device::Cpu)?)
    }

    fn raw_op(&mut self, l: &Layer, call: &Call, xs: &[Val]) -> Result<Val> {
        let kind = match l.class.as_str() {
            "Add" => BinaryKind::Add,
            "Subtract" => BinaryKind::Sub,
            "Multiply" => BinaryKind::Mul,
            "Divide" | "TrueDivide" => BinaryKind::Div,
            "Maximum" => BinaryKind::Max,
            "Minimum" => BinaryKind::Min,
            other => {
                return Err(bad(
                    &l.name,
                    format!(
                        "raw op {}.{other} is not supported (add, subtract, multiply, divide, maximum, minimum are)",
                        l.module
                    ),
                ))
            }
        };
        let r = match (xs, call.scalars.as_slice()) {
            ([a, b], []) => {
                if a.kshape.len() != b.kshape.len() {
                    return Err(bad(
                        &l.name,
                        "operands of different ranks are not supported",
                    ));
                }
                self.add(
                    l,
                    None,
                    Elementwise {
                        kind,
                        constant: None,
                    },
                    &[a.r, b.r],
                )?
            }
            ([a], [s]) => {
                // The scalar-first form (`ops.subtract(2.0, x)`) is refused for the
                // non-commutative ops; for the others the side does not matter.
                if matches!(kind, BinaryKind::Sub | BinaryKind::Div) && call.first_is_scalar {
                    return Err(bad(
                        &l.name,
                        "a scalar first operand of subtract/divide is not supported",
                    ));
                }
                self.add_const(l, None, kind, a.r, Tensor::new(&[*s as f32], &Device::Cpu)?)?
            }
            _ => {
                return Err(bad(
                    &l.name,
                    format!(
                        "raw op with {} tensor and {} scalar arguments is not supported",
                        xs.len(),
                        call.scalars.len()
                    ),
                ))
            }
        };
        Ok(self.out(r))
    }

    fn nested(&mut self, l: &Layer, xs: &[Val]) -> Result<Val> {
        let empty = LayerWeights::default();
        let lw = self.src.get(&l.name).unwrap_or(&empty);
        let top = serde_json::json!({"class_name": l.class, "config": l.config});
        let distributed;
        let inner_weights = if lw.inner.is_empty() && !lw.vars.is_empty() {
            // Legacy .h5: the nested model's weights are one list, in its layers' order.
            distributed = distribute(&l.config, &lw.vars).map_err(|m| bad(&l.name, m))?;
            &distributed
        } else {
            &lw.inner
        };
        let inner = build_model(&top, inner_weights, self.opts, self.keras3)?;
        let rs: Vec<NodeRef> = xs.iter().map(|v| v.r).collect();
        let outs = self.g.call_model(&l.name, &inner, &rs)?;
        if outs.len() != 1 {
            return Err(bad(
                &l.name,
                "nested models with several outputs are not supported",
            ));
        }
        Ok(self.out(outs[0]))
    }

    fn lambda(&mut self, l: &Layer, xs: &[Val]) -> Result<Val> {
        let rs: Vec<NodeRef> = xs.iter().map(|v| v.r).collect();
        if let Some(op) = self.opts.bind.get(&l.name) {
            let r = self.g.lambda_as(&l.name, ArcOp(op.clone()), &rs, &[])?;
            self.parts
                .entry(l.name.clone())
                .or_default()
                .push(l.name.clone());
            return Ok(self.out(r));
        }
        let kshape = self
            .consumer_shapes
            .get(&(l.name.clone(), 0, 0))
            .cloned()
            .or_else(|| l.config.get("output_shape").and_then(json_usizes))
            .ok_or_else(|| bad(&l.name, "a Lambda whose output shape is recorded nowhere (no consumer, no output_shape): bind it with a layerlens op"))?;
        let hint = crate::lambda::bytecode_names(&l.config);
        let op = crate::lambda::Unbound {
            layer: l.name.clone(),
            hint,
            shape: Shape::new(ll_shape(&kshape)),
        };
        let r = self.g.lambda_as(&l.name, op, &rs, &[])?;
        self.parts
            .entry(l.name.clone())
            .or_default()
            .push(l.name.clone());
        Ok(Val { r, kshape })
    }
}

/// How many weight arrays a layer stores (legacy files list a nested model's
/// weights as one sequence, which is split by these counts, as Keras does).
fn var_count(l: &Value) -> usize {
    let c = &l["config"];
    let bias = flag(c, "use_bias", true) as usize;
    match str_of(l, "class_name").unwrap_or_default() {
        "Conv2D" | "Convolution2D" | "Dense" | "DepthwiseConv2D" | "Conv2DTranspose" => 1 + bias,
        "SeparableConv2D" | "SeparableConvolution2D" => 2 + bias,
        "BatchNormalization" => {
            2 + flag(c, "scale", true) as usize + flag(c, "center", true) as usize
        }
        "LayerNormalization" => flag(c, "scale", true) as usize + flag(c, "center", true) as usize,
        "PReLU" | "LayerScale" => 1,
        "Normalization" if c.get("mean").is_none_or(Value::is_null) => 3,
        "Sequential" | "Functional" | "Model" => {
            let ls = if c.is_array() { c } else { &c["layers"] };
            ls.as_array().map_or(0, |a| a.iter().map(var_count).sum())
        }
        _ => 0,
    }
}

fn distribute(
    config: &Value,
    vars: &[Array],
) -> std::result::Result<HashMap<String, LayerWeights>, String> {
    let ls = if config.is_array() {
        config
    } else {
        &config["layers"]
    };
    let mut out = HashMap::new();
    let mut i = 0;
    for l in ls.as_array().into_iter().flatten() {
        let n = var_count(l);
        let name = str_of(l, "name")
            .or_else(|| str_of(&l["config"], "name"))
            .unwrap_or_default()
            .to_string();
        let take = vars.get(i..i + n).ok_or_else(|| format!("the file stores {} weight arrays for this nested model, fewer than its layers need", vars.len()))?;
        i += n;
        let mut lw = LayerWeights::default();
        if l.get("config").is_some_and(|c| c.get("layers").is_some()) {
            lw.inner = distribute(&l["config"], take)?;
        } else {
            lw.vars = take.to_vec();
        }
        out.insert(name, lw);
    }
    if i != vars.len() {
        return Err(format!(
            "the file stores {} weight arrays for this nested model, its layers need {i}",
            vars.len()
        ));
    }
    Ok(out)
}

/// Keras layer classes the importer maps (besides nested models and raw ops).
pub const SUPPORTED_LAYERS: &[&str] = &[
    "InputLayer",
    "Conv2D",
    "DepthwiseConv2D",
    "SeparableConv2D",
    "Conv2DTranspose",
    "Dense",
    "BatchNormalization",
    "LayerNormalization",
    "Activation",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "PReLU",
    "Softmax",
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "Flatten",
    "Dropout",
    "SpatialDropout2D",
    "GaussianDropout",
    "GaussianNoise",
    "AlphaDropout",
    "Add",
    "Subtract",
    "Multiply",
    "Average",
    "Maximum",
    "Minimum",
    "Concatenate",
    "ZeroPadding2D",
    "Cropping2D",
    "UpSampling2D",
    "Resizing",
    "Reshape",
    "Permute",
    "Rescaling",
    "Normalization",
    "LayerScale",
    "Lambda",
];

/// A bound op shared through an `Arc` (the options hold one per Lambda).
#[derive(Debug)]
struct ArcOp(Arc<dyn CustomOp>);

impl CustomOp for ArcOp {
    fn type_name(&self) -> &str {
        self.0.type_name()
    }
    fn args(&self) -> Value {
        self.0.args()
    }
    fn saveable(&self) -> bool {
        self.0.saveable()
    }
    fn base_name(&self) -> &str {
        self.0.base_name()
    }
    fn param_specs(&self, inputs: &[Shape]) -> Result<Vec<layerlens_core::params::ParamSpec>> {
        self.0.param_specs(inputs)
    }
    fn output_shape(&self, ctx: &ShapeCtx) -> Option<Result<Shape>> {
        self.0.output_shape(ctx)
    }
    fn forward(&self, inputs: &[Tensor], ctx: &LambdaCtx) -> Result<Tensor> {
        self.0.forward(inputs, ctx)
    }
}

/// A Keras activation name as a layerlens activation (`None` for `linear`);
/// `krank` is the per-sample rank (for softmax's channel axis), `keras3` picks
/// Keras 3's `hard_sigmoid` (`relu6(x + 3) / 6`) over Keras 2's (`0.2 x + 0.5`).
pub fn activation_by_name(
    name: &str,
    krank: usize,
    keras3: bool,
) -> std::result::Result<Option<Activation>, String> {
    let last = if krank == 3 { 1 } else { -1 };
    Ok(Some(match name {
        "linear" | "None" => return Ok(None),
        "relu" => Activation::Relu,
        "relu6" => Activation::Relu6,
        "sigmoid" => Activation::Sigmoid,
        "tanh" => Activation::Tanh,
        "softmax" => Activation::Softmax { axis: last },
        "log_softmax" => Activation::LogSoftmax { axis: last },
        "elu" => Activation::Elu { alpha: 1.0 },
        "selu" => Activation::Selu,
        "gelu" => Activation::Gelu,
        "silu" | "swish" => Activation::Silu,
        "softplus" => Activation::Softplus,
        "softsign" => Activation::Softsign,
        "exponential" => Activation::Exponential,
        "mish" => Activation::Mish,
        "hard_sigmoid" if keras3 => Activation::HardSigmoid,
        "hard_sigmoid" => Activation::HardSigmoidAb { alpha: 0.2, beta: 0.5 },
        "hard_silu" | "hard_swish" => Activation::HardSwish,
        "leaky_relu" => Activation::LeakyRelu { slope: 0.2 },
        "tanh_shrink" => Activation::TanhShrink,
        "log_sigmoid" => Activation::LogSigmoid,
        "celu" => Activation::Celu { alpha: 1.0 },
        "squareplus" => Activation::Squareplus { b: 4.0 },
        "soft_shrink" => Activation::SoftShrink { threshold: 0.5 },
        "hard_shrink" => Activation::HardShrink { threshold: 0.5 },
        "hard_tanh" => Activation::Clip { min: -1.0, max: 1.0 },
        "sparse_sigmoid" => Activation::HardSigmoidAb { alpha: 0.5, beta: 0.5 },
        other => return Err(format!("activation '{other}' is not supported (glu, sparsemax, sparse_plus and threshold are not; the others are)")),
    }))
}
