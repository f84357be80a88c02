//! Model and input specs, parsed once for every front end (the CLI, the Python
//! module): `MODEL` strings (`model.onnx`, a saved directory, `zoo:NAME[=WEIGHTS]`),
//! tensor and image inputs, layer selectors, and the built-in `--apply` Lambdas
//! that turn the selected layers into an extraction model sharing the weights.

use crate::preprocess::{decode_image, decode_image_bytes, fit_image, from_image, ImageLoader};
use layerlens_core::candle_core::{DType, Device, Tensor};
use layerlens_core::lambda::{CustomOp, L2Normalize, LambdaRegistry, Reduce};
use layerlens_core::prelude::*;
use layerlens_core::{Error, Result};
use std::path::Path;

pub use crate::preprocess::Preset;

/// The models `zoo:NAME` knows, in the order error messages list them.
pub const ZOO_MODELS: &[&str] = &[
    "seed_cnn",
    "resnet18",
    "vgg16",
    "vgg16_notop",
    "efficientnet_lite0",
];

/// The zoo models with published pretrained weights: without `=WEIGHTS` they
/// run on random ones, which [`random_weights_warning`] says. (The seed CNN
/// has no pretrained weights: it is trained with `layerlens train`.)
pub const ZOO_PRETRAINED: &[&str] = &["resnet18", "vgg16", "vgg16_notop", "efficientnet_lite0"];

/// The warning to show each time `spec` opens a zoo model with published
/// weights but without any (`zoo:resnet18`): its outputs mean nothing, and a
/// CAM or a class computed from them must not look like a real one.
/// `zoo:NAME=random` says the random weights are meant and silences it.
pub fn random_weights_warning(spec: &str) -> Option<String> {
    let name = spec.strip_prefix("zoo:")?;
    if name.contains('=') || !ZOO_PRETRAINED.contains(&name) {
        return None;
    }
    Some(format!(
        "{spec} has random weights (no =WEIGHTS given), so its predictions mean nothing; \
         give {spec}=imagenet (published weights, downloaded once), {spec}=WEIGHTS.pth \
         (or .safetensors, a Keras .h5), or {spec}=random to say that is meant"
    ))
}

/// What a `MODEL` string may be, for error messages.
const MODEL_FORMS: &str =
    "an .onnx file, a Keras .keras/.h5 file, a saved layerlens model directory (with model.json) or zoo:NAME[=WEIGHTS]";

/// Opens a model from a spec: `zoo:NAME` (with `=WEIGHTS.pth|.safetensors` to
/// load a state dict into it, `=random` to keep the seeded random weights
/// without a [`random_weights_warning`]), an `.onnx` file, or a directory
/// written by [`Model::save`].
pub fn open_model(spec: &str) -> Result<Model> {
    open_model_with(spec, &OpenOptions::default())
}

/// How to open a model beyond its spec: the sizes an ONNX file leaves
/// symbolic (`--input-shape`, `--dim`; `input_shape=`, `dims=` in Python) and
/// the layerlens ops that stand in for a Keras file's Lambda layers (`--bind`;
/// `bind=`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpenOptions {
    /// Per-sample shapes by graph input name (`""`: the only input).
    pub input_shapes: std::collections::HashMap<String, Vec<usize>>,
    /// Symbolic dimension values by `dim_param` name.
    pub dims: std::collections::HashMap<String, usize>,
    /// Keras Lambda layer name -> (registered layerlens Lambda, its JSON
    /// arguments), built with [`LambdaRegistry::with_builtins`].
    pub bind: std::collections::BTreeMap<String, (String, serde_json::Value)>,
}

impl OpenOptions {
    /// No ONNX size given.
    pub fn is_empty(&self) -> bool {
        self.input_shapes.is_empty() && self.dims.is_empty()
    }

    /// Parses one `--bind` value, `LAYER=LAMBDA` or `LAYER=LAMBDA(JSON_ARGS)`
    /// (`spatial_mean=mean({"axes":[2,3]})`; for `mean`, `sum` and `max` the
    /// reduction's `kind` is implied), and checks that the Lambda exists and
    /// takes those arguments.
    pub fn add_binding(&mut self, spec: &str) -> Result<()> {
        let bad = |why: &str| {
            Error::invalid(
                "bind",
                format!("'{spec}' {why} (LAYER=LAMBDA or LAYER=LAMBDA(JSON_ARGS), e.g. spatial_mean='mean({{\"axes\":[2,3]}})')"),
            )
        };
        let (layer, op) = spec
            .split_once('=')
            .map(|(l, o)| (l.trim(), o.trim()))
            .filter(|(l, o)| !l.is_empty() && !o.is_empty())
            .ok_or_else(|| bad("is not LAYER=LAMBDA"))?;
        let (name, args) = match op.split_once('(') {
            Some((n, rest)) => {
                let json = rest
                    .strip_suffix(')')
                    .ok_or_else(|| bad("has no closing parenthesis"))?;
                let args: serde_json::Value = if json.trim().is_empty() {
                    serde_json::json!({})
                } else {
                    serde_json::from_str(json)
                        .map_err(|e| bad(&format!("has arguments that are not JSON ({e})")))?
                };
                (n.trim(), args)
            }
            None => (op, serde_json::json!({})),
        };
        let mut args = args;
        if let (true, Some(o)) = (matches!(name, "mean" | "sum" | "max"), args.as_object_mut()) {
            o.entry("kind").or_insert_with(|| name.into());
        }
        let registry = LambdaRegistry::with_builtins();
        if !registry.contains(name) {
            return Err(Error::invalid(
                "bind",
                format!(
                    "'{spec}': unknown Lambda '{name}' (built-ins: {})",
                    registry.names().join(", ")
                ),
            ));
        }
        registry.build(name, &args)?;
        if self
            .bind
            .insert(layer.to_string(), (name.to_string(), args))
            .is_some()
        {
            return Err(bad("binds a layer a second time"));
        }
        Ok(())
    }

    /// Parses `--input-shape` values (`[NAME=]C,H,W`), `--dim` values
    /// (`NAME=V`) and `--bind` values (see [`OpenOptions::add_binding`]).
    pub fn parse(input_shapes: &[String], dims: &[String], binds: &[String]) -> Result<Self> {
        let mut o = OpenOptions::default();
        for b in binds {
            o.add_binding(b)?;
        }
        for spec in input_shapes {
            let (name, shape) = match spec.rsplit_once('=') {
                Some((n, s)) => (n.trim().to_string(), s),
                None => (String::new(), spec.as_str()),
            };
            let shape = shape
                .split(',')
                .map(|d| d.trim().parse::<usize>().ok().filter(|&v| v > 0))
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| {
                    Error::invalid(
                        "input-shape",
                        format!("'{spec}' is not [NAME=]C,H,W (positive sizes, without the batch)"),
                    )
                })?;
            if o.input_shapes.insert(name, shape).is_some() {
                return Err(Error::invalid(
                    "input-shape",
                    format!("'{spec}' gives an input twice"),
                ));
            }
        }
        for spec in dims {
            let parsed = spec
                .split_once('=')
                .and_then(|(n, v)| {
                    Some((n.trim(), v.trim().parse::<usize>().ok().filter(|&v| v > 0)?))
                })
                .filter(|(n, _)| !n.is_empty());
            let Some((name, v)) = parsed else {
                return Err(Error::invalid("dim", format!("'{spec}' is not NAME=SIZE")));
            };
            o.dims.insert(name.to_string(), v);
        }
        Ok(o)
    }
}

/// [`open_model`], with the sizes of an ONNX file's symbolic input
/// dimensions (other models have fixed input shapes and refuse them) and the
/// bindings of a Keras file's Lambda layers (refused for other models).
pub fn open_model_with(spec: &str, shapes: &OpenOptions) -> Result<Model> {
    let path = Path::new(spec);
    let keras = crate::keras::detect(path);
    if !shapes.bind.is_empty()
        && !matches!(
            keras,
            Some(crate::keras::KerasFormat::Keras | crate::keras::KerasFormat::LegacyH5)
        )
    {
        return Err(Error::invalid(
            "bind",
            format!(
                "{spec} is not a Keras model; --bind gives ops for a Keras file's Lambda layers"
            ),
        ));
    }
    if path.extension().is_some_and(|e| e == "onnx") {
        let opts = crate::onnx::ImportOptions {
            input_shapes: shapes.input_shapes.clone(),
            dims: shapes.dims.clone(),
        };
        return crate::onnx::import_with(path, &opts);
    }
    if !shapes.is_empty() {
        return Err(Error::invalid(
            "input-shape",
            format!("{spec} has fixed input shapes; --input-shape and --dim are for ONNX files with symbolic dimensions"),
        ));
    }
    if let Some(rest) = spec.strip_prefix("zoo:") {
        let (name, weights) = match rest.split_once('=') {
            Some((n, w)) => (n, Some(w)),
            None => (rest, None),
        };
        let model = match name {
            "seed_cnn" => crate::zoo::seed_cnn(true)?,
            "resnet18" => crate::zoo::resnet18(1000)?,
            "vgg16" => crate::zoo::vgg16(true, 1000)?,
            "vgg16_notop" => crate::zoo::vgg16(false, 1000)?,
            "efficientnet_lite0" => crate::zoo::efficientnet_lite0(1000)?,
            other => {
                return Err(Error::unknown(
                    "zoo model",
                    other,
                    ZOO_MODELS.iter().copied(),
                ))
            }
        };
        if let Some(w) = weights.filter(|&w| w != "random") {
            crate::weights::load_weights(&model, weights_path(name, w)?)?;
        }
        return Ok(model);
    }
    // Keras files are recognised by content (zip with config.json, HDF5), not name.
    match keras {
        Some(crate::keras::KerasFormat::Keras | crate::keras::KerasFormat::LegacyH5) => {
            let registry = LambdaRegistry::with_builtins();
            let mut opts = crate::keras::ImportOptions::default();
            for (layer, (name, args)) in &shapes.bind {
                opts.bind.insert(layer.clone(), registry.build(name, args)?);
            }
            return crate::keras::import_with(path, &opts);
        }
        Some(crate::keras::KerasFormat::WeightsH5) => {
            return Err(Error::Format {
                path: spec.to_string(),
                message: "a Keras weights-only HDF5 file has no architecture: open the .keras/.h5 model, or import it with its config (layerlens_keras::import_config_and_weights)".into(),
            })
        }
        None => {}
    }
    if !path.is_dir() {
        return Err(Error::Format {
            path: spec.to_string(),
            message: format!("not {MODEL_FORMS}"),
        });
    }
    Model::load(path, &Device::Cpu)
}

/// For an ONNX file whose input sizes are symbolic: the file decoded once
/// behind a [`ShapeCache`](crate::onnx::ShapeCache) of `capacity` imports, and
/// the import at the sizes `shapes` give. `None` for any other model.
pub fn open_onnx_sizes(
    spec: &str,
    shapes: &OpenOptions,
    capacity: usize,
) -> Result<Option<(std::sync::Arc<crate::onnx::ShapeCache>, Model)>> {
    if Path::new(spec).extension().is_none_or(|e| e != "onnx") {
        return Ok(None);
    }
    let source = crate::onnx::OnnxModel::open(spec)?;
    if !source.is_dynamic() {
        return Ok(None);
    }
    let cache = crate::onnx::ShapeCache::new(source, capacity);
    let model = cache.model_with(&crate::onnx::ImportOptions {
        input_shapes: shapes.input_shapes.clone(),
        dims: shapes.dims.clone(),
    })?;
    Ok(Some((std::sync::Arc::new(cache), model)))
}

/// The file `zoo:NAME=WEIGHTS` loads: a published name (`imagenet`, fetched
/// into the [`crate::hub`] cache on first use), else a path. A bare word that
/// is neither is refused with the names the model has.
pub fn weights_path(model: &str, weights: &str) -> Result<std::path::PathBuf> {
    let path = Path::new(weights);
    let bare_word = !weights.is_empty()
        && weights
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if path.exists() || !bare_word {
        return Ok(path.to_path_buf());
    }
    let published = crate::hub::find(model, weights)?;
    crate::hub::Hub::from_env().fetch(published)
}

/// The preprocessing a model spec's weights were trained with, when it is
/// known: `zoo:vgg16=imagenet` (Keras' weights) wants `caffe`,
/// `zoo:resnet18=...` `imagenet`, `zoo:efficientnet_lite0=...`
/// `efficientnet-lite`; `None` for files and the seed CNN.
pub fn default_preprocess(spec: &str) -> Option<&'static str> {
    let rest = spec.strip_prefix("zoo:")?;
    let (name, weights) = rest.split_once('=').unwrap_or((rest, ""));
    if let Some(p) = crate::hub::PUBLISHED
        .iter()
        .find(|p| p.model == name && p.name == weights)
    {
        return Some(p.preprocess);
    }
    match name {
        "efficientnet_lite0" => Some("efficientnet-lite"),
        "resnet18" | "vgg16" | "vgg16_notop" => Some("imagenet"),
        _ => None,
    }
}

/// Splits a comma-separated layer list (`"conv2d*, dense"`) into selectors,
/// refusing an empty one.
pub fn parse_layers(layers: &str) -> Result<Vec<&str>> {
    let selectors: Vec<&str> = layers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if selectors.is_empty() {
        return Err(Error::invalid(
            "layers",
            "no layers given: use node names, globs or `all`",
        ));
    }
    Ok(selectors)
}

/// A built-in Lambda applied to every extracted activation (`--apply`, `apply=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// Spatial mean per channel: `(N, C, H, W) -> (N, C)`.
    Mean,
    /// Spatial max per channel.
    Max,
    /// L2 normalisation over the channel axis.
    L2Normalize,
    /// Everything after the batch axis in one axis.
    Flatten,
}

impl Apply {
    /// Every built-in, by its name.
    pub const ALL: [Apply; 4] = [Apply::Mean, Apply::Max, Apply::L2Normalize, Apply::Flatten];

    /// Parses `mean`, `max`, `l2_normalize` or `flatten`.
    pub fn parse(name: &str) -> Result<Self> {
        Apply::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| Error::unknown("apply Lambda", name, Apply::ALL.map(Apply::name)))
    }

    /// The name `parse` takes, also the suffix of the output node (`conv2d:mean`).
    pub fn name(self) -> &'static str {
        match self {
            Apply::Mean => "mean",
            Apply::Max => "max",
            Apply::L2Normalize => "l2_normalize",
            Apply::Flatten => "flatten",
        }
    }

    fn add(self, g: &mut Functional, name: &str, input: NodeRef) -> Result<NodeRef> {
        fn with<T: CustomOp + 'static>(
            g: &mut Functional,
            name: &str,
            op: T,
            input: NodeRef,
        ) -> Result<NodeRef> {
            g.lambda_as(name, op, &[input], &[])
        }
        match self {
            Apply::Mean => with(g, name, Reduce::mean([2, 3]), input),
            Apply::Max => with(g, name, Reduce::max([2, 3]), input),
            Apply::L2Normalize => with(g, name, L2Normalize::new(1), input),
            Apply::Flatten => with(g, name, Flatten, input),
        }
    }
}

/// The model whose outputs are the selected nodes (in selector order), each
/// passed through `apply`, sharing `model`'s weights; and the selected node
/// names. A spatial reduction of a layer without spatial axes leaves it as it is.
pub fn extraction_model(
    model: &Model,
    selectors: &[&str],
    apply: Option<Apply>,
) -> Result<(Model, Vec<String>)> {
    let named = model.graph().select_named(selectors)?;
    let names: Vec<String> = named.iter().map(|(_, n)| n.clone()).collect();
    let Some(apply) = apply else {
        return Ok((model.submodel(&names)?, names));
    };
    let mut g = Functional::extend(model);
    let mut outs = Vec::new();
    for name in &names {
        let node = g.get(name)?;
        if matches!(apply, Apply::Mean | Apply::Max) && g.shape(node).rank() != 3 {
            outs.push(node);
            continue;
        }
        let applied = apply
            .add(&mut g, &format!("{name}:{}", apply.name()), node)
            .map_err(|e| Error::invalid(name, format!("apply {}: {e}", apply.name())))?;
        outs.push(applied);
    }
    Ok((g.build(&outs)?, names))
}

/// [`open_model_with`] for a run over `inputs`: an ONNX file whose input
/// sizes are symbolic and not given in `shapes` takes them from the first
/// input when that is a tensor (`.npy`, `.safetensors`), as it is.
pub fn open_model_for_inputs(spec: &str, shapes: &OpenOptions, inputs: &[String]) -> Result<Model> {
    let is_onnx = Path::new(spec).extension().is_some_and(|e| e == "onnx");
    let first_tensor = inputs.first().filter(|i| {
        matches!(
            Path::new(i).extension().and_then(|e| e.to_str()),
            Some("npy" | "safetensors")
        )
    });
    if let (true, true, Some(first)) = (is_onnx, shapes.is_empty(), first_tensor) {
        let graph_inputs = crate::onnx::graph_inputs(spec)?;
        if let [only] = graph_inputs.as_slice() {
            if only.is_symbolic() {
                let path = Path::new(first.as_str());
                let t = if first.ends_with(".npy") {
                    crate::npy::read_npy(path)?
                } else {
                    crate::extract::read_safetensors_input(path)?
                };
                let mut from_input = OpenOptions::default();
                from_input
                    .input_shapes
                    .insert(String::new(), t.dims()[1.min(t.rank())..].to_vec());
                return open_model_with(spec, &from_input);
            }
        }
    }
    open_model_with(spec, shapes)
}

/// A tensor input (`.npy`, `.safetensors`: its first tensor by name), one
/// image, or `embedded:fashion-mnist-test|train`, as a float32 batch with a
/// label per row (`SPEC[i]` for tensors, the path for an image).
pub fn load_inputs(spec: &str, model: &Model, preset: Preset) -> Result<(Tensor, Vec<String>)> {
    use crate::data::{embedded_fashion_mnist, Split};
    let rows = |t: &Tensor| -> Result<Vec<String>> {
        Ok((0..t.dim(0)?).map(|i| format!("{spec}[{i}]")).collect())
    };
    let bad = |message: String| Error::Format {
        path: spec.to_string(),
        message,
    };
    let split = match spec {
        "embedded:fashion-mnist-test" => Some(Split::Test),
        "embedded:fashion-mnist-train" => Some(Split::Train),
        _ => None,
    };
    if let Some(split) = split {
        let t = embedded_fashion_mnist(split)?.images;
        let r = rows(&t)?;
        return Ok((t, r));
    }
    let path = Path::new(spec);
    let t = match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => crate::npy::read_npy(path)?,
        Some("safetensors") => crate::extract::read_safetensors_input(path)?,
        _ if crate::extract::is_image_file(path) => {
            let x = load_picture(path, model, preset)?.0;
            return Ok((x, vec![spec.to_string()]));
        }
        _ if path.is_dir() => {
            return Err(bad(
                "is a directory: directories stream into a directory of shards, so give the output a directory (--out without a file extension)".into(),
            ))
        }
        _ => {
            return Err(bad(
                "unsupported input (use .png, .jpg, a directory, .npy, .safetensors or embedded:fashion-mnist-test)".into(),
            ))
        }
    };
    let t = t.to_dtype(DType::F32)?;
    let r = rows(&t)?;
    Ok((t, r))
}

/// One image sized for the model's input: `(1, C, H, W)` with `preset` applied,
/// and the same crop as a picture for overlays.
pub fn load_picture(
    path: &Path,
    model: &Model,
    preset: Preset,
) -> Result<(Tensor, image::RgbImage)> {
    picture_from(decode_image(path)?, model, preset)
}

/// [`load_picture`] from encoded bytes (PNG or JPEG); `what` names them in errors.
pub fn load_picture_bytes(
    bytes: &[u8],
    what: &str,
    model: &Model,
    preset: Preset,
) -> Result<(Tensor, image::RgbImage)> {
    picture_from(decode_image_bytes(bytes, what)?, model, preset)
}

fn picture_from(
    img: image::DynamicImage,
    model: &Model,
    preset: Preset,
) -> Result<(Tensor, image::RgbImage)> {
    let loader = ImageLoader::for_model(model, preset)?;
    let img = fit_image(img, loader.width, loader.height);
    let x = from_image(&img, loader.channels, loader.preset)?;
    let display = from_image(&img, loader.channels, Preset::UnitRange)?;
    Ok((x, crate::viz::cam::to_rgb_image(&display)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_zoo_model_lists_close_matches() {
        let e = open_model("zoo:resnet19").unwrap_err().to_string();
        assert!(e.contains("resnet18"), "{e}");
    }

    #[test]
    fn zoo_models_without_their_weights_are_flagged() {
        let w = random_weights_warning("zoo:resnet18").unwrap();
        assert!(
            w.contains("random weights") && w.contains("zoo:resnet18=random"),
            "{w}"
        );
        for quiet in [
            "zoo:resnet18=random",
            "zoo:resnet18=r18.pth",
            "zoo:seed_cnn",
            "m.onnx",
        ] {
            assert_eq!(random_weights_warning(quiet), None, "{quiet}");
        }
        // `=random` opens the model without reading a file called "random".
        open_model("zoo:vgg16_notop=random").unwrap();
    }

    #[test]
    fn a_file_that_is_no_model_is_refused_by_name() {
        let e = open_model("/nonexistent/model.bin")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/nonexistent/model.bin: not an .onnx file, a Keras"),
            "{e}"
        );
    }

    #[test]
    fn apply_names_round_trip_and_typos_get_suggestions() {
        for a in Apply::ALL {
            assert_eq!(Apply::parse(a.name()).unwrap(), a);
        }
        let e = Apply::parse("l2normalize").unwrap_err().to_string();
        assert!(e.contains("l2_normalize"), "{e}");
    }

    #[test]
    fn empty_layer_lists_are_refused() {
        assert!(parse_layers(" , ").is_err());
        assert_eq!(parse_layers("a, b*").unwrap(), ["a", "b*"]);
    }

    #[test]
    fn extraction_model_applies_the_lambda_to_image_shaped_layers_only() {
        let m = crate::zoo::seed_cnn(true).unwrap();
        let (x, names) = extraction_model(&m, &["conv2d", "dense"], Some(Apply::Mean)).unwrap();
        assert_eq!(names, ["conv2d", "dense"]);
        let input = Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
        let outs = x.forward(&[input]).unwrap();
        assert_eq!(outs[0].dims(), &[2, 32]);
        assert_eq!(outs[1].dims(), &[2, 10]);
    }
}
