//! What the explorer shows, computed on demand and cached: one model, its
//! inputs, one forward pass per input for every node (the `all` plan), CAMs per
//! (input, node, method), and rendered pictures in a byte-bounded LRU.

use crate::{ExplorerError, Result};
use layerlens::candle_core::{Tensor, D};
use layerlens::ir::OpT;
use layerlens::viz::cam::{cam, overlay, CamMethod, CamOptions};
use layerlens::viz::grid::{feature_grid, GridOptions, Select};
use layerlens::viz::stats::{histogram, layer_stats};
use layerlens::viz::{Colormap, Norm};
use layerlens::{Activations, Model};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// One input the explorer shows: a batch of one, and the picture it came from
/// (what CAMs are drawn over), when it was an image.
pub struct Input {
    /// What the page calls it (the file name).
    pub label: String,
    /// `(1, C, H, W)` (or `(1, ...)`), preprocessed for the model.
    pub tensor: Tensor,
    /// The same crop as a picture, for images.
    pub picture: Option<image::RgbImage>,
}

/// How a feature-map grid is drawn: what the page's controls choose.
#[derive(Debug, Clone, PartialEq)]
pub struct GridRequest {
    /// `None` draws every channel; `Some(k)` the top `k` by mean activation.
    pub top_k: Option<usize>,
    /// Normalisation.
    pub norm: Norm,
    /// Colormap; `None` picks from the data (gray, or diverging for signed values).
    pub colormap: Option<Colormap>,
}

impl Default for GridRequest {
    fn default() -> Self {
        GridRequest {
            top_k: Some(16),
            norm: Norm::Auto,
            colormap: None,
        }
    }
}

impl GridRequest {
    /// A cache key naming every choice.
    fn key(&self) -> String {
        format!("{:?}/{:?}/{:?}", self.top_k, self.norm, self.colormap)
    }
}

/// One channel and its mean activation.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelMean {
    /// Channel index.
    pub channel: usize,
    /// Mean over the channel's positions.
    pub mean: f32,
}

/// A node's statistics for one input, as the page and `/api/stats` show them:
/// exactly [`layer_stats`]' numbers.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStats {
    /// The name asked for (a block's name stays the block's).
    pub name: String,
    /// The graph node that answers it.
    pub node: String,
    /// Op label.
    pub op: String,
    /// Per-sample output shape.
    pub shape: Vec<usize>,
    /// Mean value.
    pub mean: f32,
    /// Standard deviation.
    pub std: f32,
    /// Smallest value.
    pub min: f32,
    /// Largest value.
    pub max: f32,
    /// Fraction of values exactly zero.
    pub zero_fraction: f32,
    /// Channels zero everywhere.
    pub dead_channels: Vec<usize>,
    /// The 8 channels with the highest mean, best first (image-shaped nodes).
    pub top_channels: Vec<ChannelMean>,
    /// Whether the node is `(C, H, W)`: it has a feature-map grid and a CAM.
    pub image_shaped: bool,
}

/// A computed CAM: the class it explains and the overlay as PNG.
#[derive(Debug, Clone, Serialize)]
pub struct CamResult {
    /// Method name as people write it (`Grad-CAM++`).
    pub method: String,
    /// The layer.
    pub node: String,
    /// Class index (the top prediction).
    pub class: usize,
    /// Its name, from the model's labels; `None` when the model has none.
    pub class_name: Option<String>,
    /// Its logit.
    pub score: f32,
    /// The overlay, PNG bytes (not serialised: `/api/cam.png` serves them).
    #[serde(skip)]
    pub png: Arc<Vec<u8>>,
}

/// A class and its probability.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    /// Class index.
    pub class: usize,
    /// Class name where the labels are known.
    pub name: Option<String>,
    /// Softmax probability.
    pub probability: f32,
}

/// Rendered PNGs, evicted least recently used first once they hold more than
/// a byte budget, so browsing a large model keeps memory bounded.
struct Lru {
    budget: usize,
    used: usize,
    tick: u64,
    entries: HashMap<String, (Arc<Vec<u8>>, u64)>,
}

impl Lru {
    fn get(&mut self, key: &str) -> Option<Arc<Vec<u8>>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|(v, t)| {
            *t = tick;
            v.clone()
        })
    }

    fn put(&mut self, key: String, value: Arc<Vec<u8>>) {
        self.tick += 1;
        self.used += value.len();
        if let Some((old, _)) = self.entries.insert(key, (value, self.tick)) {
            self.used -= old.len();
        }
        while self.used > self.budget && self.entries.len() > 1 {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
                .expect("not empty");
            if let Some((v, _)) = self.entries.remove(&oldest) {
                self.used -= v.len();
            }
        }
    }
}

type Shared<T> = Arc<OnceLock<std::result::Result<T, String>>>;

/// A CAM's cache key: input index, node name, method.
type CamKey = (usize, String, CamMethod);

/// The explorer's state: a model, its inputs and every cache. Safe to share
/// between the server's threads; each computation runs once, outside the
/// locks, so other requests are served meanwhile.
pub struct Session {
    model: Model,
    inputs: Vec<Input>,
    labels: Option<Vec<String>>,
    activations: Vec<OnceLock<std::result::Result<Arc<Activations>, String>>>,
    cams: Mutex<HashMap<CamKey, Shared<Arc<CamResult>>>>,
    rendered: Mutex<Lru>,
}

/// Default byte budget of rendered pictures kept (64 MiB).
pub const DEFAULT_IMAGE_CACHE_BYTES: usize = 64 << 20;

fn png(img: &image::RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| ExplorerError::Render(format!("PNG encoding failed: {e}")))?;
    Ok(bytes)
}

/// Small pictures (28×28) are scaled up pixel for pixel to be readable.
fn readable(img: image::RgbImage) -> image::RgbImage {
    if img.width() >= 224 {
        return img;
    }
    let k = 224u32.div_ceil(img.width().max(1));
    image::imageops::resize(
        &img,
        img.width() * k,
        img.height() * k,
        image::imageops::FilterType::Nearest,
    )
}

impl Session {
    /// A session over `model` and `inputs`; `labels` names the classes of the
    /// model's first output (its length must match the output's).
    pub fn new(model: Model, inputs: Vec<Input>, labels: Option<Vec<String>>) -> Result<Self> {
        if inputs.is_empty() {
            return Err(ExplorerError::Input(
                "no input given (--input IMAGE)".into(),
            ));
        }
        if let Some(l) = &labels {
            let g = model.graph();
            let out = g.node(g.outputs()[0]);
            let classes = out.shape.dims().last().copied().unwrap_or(0);
            if out.shape.rank() == 1 && classes != l.len() {
                return Err(ExplorerError::Input(format!(
                    "{} class labels for output '{}' with {classes} classes",
                    l.len(),
                    out.name
                )));
            }
        }
        Ok(Session {
            activations: inputs.iter().map(|_| OnceLock::new()).collect(),
            model,
            inputs,
            labels,
            cams: Mutex::new(HashMap::new()),
            rendered: Mutex::new(Lru {
                budget: DEFAULT_IMAGE_CACHE_BYTES,
                used: 0,
                tick: 0,
                entries: HashMap::new(),
            }),
        })
    }

    /// Sets the rendered-image cache budget in bytes.
    pub fn with_image_cache_bytes(self, bytes: usize) -> Self {
        self.rendered.lock().expect("cache lock").budget = bytes;
        self
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The inputs.
    pub fn inputs(&self) -> &[Input] {
        &self.inputs
    }

    /// The class names, when known.
    pub fn labels(&self) -> Option<&[String]> {
        self.labels.as_deref()
    }

    /// Bytes of rendered pictures held now.
    pub fn image_cache_bytes(&self) -> usize {
        self.rendered.lock().expect("cache lock").used
    }

    fn input(&self, index: usize) -> Result<&Input> {
        self.inputs.get(index).ok_or_else(|| {
            ExplorerError::NotFound(format!(
                "input {index} does not exist ({} inputs)",
                self.inputs.len()
            ))
        })
    }

    /// Every node's activation for input `index`: one forward pass (the plan
    /// for `all`), run on first use and kept.
    pub fn activations(&self, index: usize) -> Result<Arc<Activations>> {
        let input = self.input(index)?;
        self.activations[index]
            .get_or_init(|| {
                self.model
                    .extract(&input.tensor, &["all"])
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(ExplorerError::Compute)
    }

    /// The graph node answering `name` (a node name or an alias such as a block).
    pub fn resolve(&self, name: &str) -> Result<&layerlens::ir::Node> {
        let g = self.model.graph();
        let id = g
            .find(name)
            .map_err(|e| ExplorerError::NotFound(e.to_string()))?;
        Ok(g.node(id))
    }

    /// The activation of `name` for input `index`, `(1, ...)`.
    pub fn activation(&self, name: &str, index: usize) -> Result<Tensor> {
        let node = self.resolve(name)?.name.clone();
        let acts = self.activations(index)?;
        Ok(acts.get(&node)?.clone())
    }

    /// The class name of `class`, where the labels are known.
    pub fn class_name(&self, class: usize) -> Option<String> {
        self.labels.as_ref().and_then(|l| l.get(class).cloned())
    }

    /// The model's top `k` classes for input `index` (first output, softmax).
    pub fn predictions(&self, index: usize, k: usize) -> Result<Vec<Prediction>> {
        let g = self.model.graph();
        let out = g.node(g.outputs()[0]);
        if out.shape.rank() != 1 {
            return Ok(Vec::new());
        }
        let logits = self.activation(&out.name, index)?;
        Ok(layerlens::preprocess::top_k(&logits, k)?
            .into_iter()
            .map(|(class, probability)| Prediction {
                class,
                name: self.class_name(class),
                probability,
            })
            .collect())
    }

    /// Statistics of `name` for input `index`.
    pub fn stats(&self, name: &str, index: usize) -> Result<NodeStats> {
        let node = self.resolve(name)?;
        let act = self.activation(name, index)?;
        let s = layer_stats(&act)?;
        let image_shaped = node.shape.rank() == 3;
        let top_channels = if image_shaped {
            let means: Vec<f32> = act.get(0)?.flatten_from(1)?.mean(D::Minus1)?.to_vec1()?;
            let mut idx: Vec<usize> = (0..means.len()).collect();
            idx.sort_by(|&a, &b| means[b].total_cmp(&means[a]).then(a.cmp(&b)));
            idx.into_iter()
                .take(8)
                .map(|channel| ChannelMean {
                    channel,
                    mean: means[channel],
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(NodeStats {
            name: name.to_string(),
            node: node.name.clone(),
            op: node.op.type_label(),
            shape: node.shape.dims().to_vec(),
            mean: s.mean,
            std: s.std,
            min: s.min,
            max: s.max,
            zero_fraction: s.zero_fraction,
            dead_channels: s.dead_channels,
            top_channels,
            image_shaped,
        })
    }

    fn cached_png(
        &self,
        key: String,
        render: impl FnOnce() -> Result<image::RgbImage>,
    ) -> Result<Arc<Vec<u8>>> {
        if let Some(hit) = self.rendered.lock().expect("cache lock").get(&key) {
            return Ok(hit);
        }
        let bytes = Arc::new(png(&render()?)?);
        self.rendered
            .lock()
            .expect("cache lock")
            .put(key, bytes.clone());
        Ok(bytes)
    }

    /// The feature-map grid of `name` for input `index`, PNG.
    pub fn grid_png(&self, name: &str, index: usize, req: &GridRequest) -> Result<Arc<Vec<u8>>> {
        let node = self.resolve(name)?;
        if node.shape.rank() != 3 {
            return Err(ExplorerError::Input(format!(
                "'{name}' is {}: a feature-map grid needs a (C, H, W) node",
                node.shape
            )));
        }
        let key = format!("grid/{index}/{}/{}", node.name, req.key());
        self.cached_png(key, || {
            let act = self.activation(name, index)?;
            Ok(feature_grid(
                &act,
                &GridOptions {
                    select: req.top_k.map_or(Select::All, Select::TopK),
                    norm: req.norm,
                    colormap: req.colormap,
                    activation: node.op.final_activation(),
                    title: Some(format!("{name} {}", node.shape)),
                    ..Default::default()
                },
            )?)
        })
    }

    /// The histogram of `name`'s values for input `index`, PNG.
    pub fn histogram_png(&self, name: &str, index: usize) -> Result<Arc<Vec<u8>>> {
        let node = self.resolve(name)?.name.clone();
        self.cached_png(format!("hist/{index}/{node}"), || {
            let values: Vec<f32> = self
                .activation(name, index)?
                .flatten_all()?
                .to_dtype(layerlens::candle_core::DType::F32)?
                .to_vec1()?;
            Ok(histogram(&values, 40, name, (380, 190))?)
        })
    }

    /// Input `index` as a picture, PNG (scaled up when small).
    pub fn input_png(&self, index: usize) -> Result<Arc<Vec<u8>>> {
        let input = self.input(index)?;
        let picture = input.picture.clone().ok_or_else(|| {
            ExplorerError::Input(format!("input {index} is a tensor, not a picture"))
        })?;
        self.cached_png(format!("input/{index}"), || Ok(readable(picture)))
    }

    /// Whether `name` can have a CAM: a `(C, H, W)` node that is not an input.
    pub fn cam_capable(&self, name: &str) -> Result<bool> {
        let node = self.resolve(name)?;
        Ok(node.shape.rank() == 3 && !matches!(node.op, OpT::Input(_)))
    }

    /// The CAM of `method` over `name` for input `index` (top class), computed
    /// once and kept; concurrent requests for the same one wait for it.
    pub fn cam(&self, name: &str, index: usize, method: CamMethod) -> Result<Arc<CamResult>> {
        let input = self.input(index)?;
        if !self.cam_capable(name)? {
            return Err(ExplorerError::Input(format!(
                "'{name}' is {}: a CAM needs a (C, H, W) layer",
                self.resolve(name)?.shape
            )));
        }
        let picture = input.picture.as_ref().ok_or_else(|| {
            ExplorerError::Input(format!(
                "input {index} is a tensor: a CAM is drawn over a picture"
            ))
        })?;
        let node = self.resolve(name)?.name.clone();
        let slot = self
            .cams
            .lock()
            .expect("cam lock")
            .entry((index, node.clone(), method))
            .or_default()
            .clone();
        slot.get_or_init(|| {
            let compute = || -> Result<Arc<CamResult>> {
                let c = cam(&self.model, &input.tensor, &CamOptions::new(method, &node))?.remove(0);
                let over = overlay(picture, &c.heatmap, Colormap::Inferno, 0.5)?;
                Ok(Arc::new(CamResult {
                    method: method.label().to_string(),
                    node: name.to_string(),
                    class: c.class,
                    class_name: self.class_name(c.class),
                    score: c.score,
                    png: Arc::new(png(&readable(over))?),
                }))
            };
            compute().map_err(|e| e.to_string())
        })
        .clone()
        .map_err(ExplorerError::Compute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lru_keeps_the_recently_used_within_its_budget() {
        let mut lru = Lru {
            budget: 10,
            used: 0,
            tick: 0,
            entries: HashMap::new(),
        };
        lru.put("a".into(), Arc::new(vec![0; 4]));
        lru.put("b".into(), Arc::new(vec![0; 4]));
        assert!(lru.get("a").is_some());
        lru.put("c".into(), Arc::new(vec![0; 4]));
        assert!(lru.get("b").is_none(), "b was the least recently used");
        assert!(lru.get("a").is_some() && lru.get("c").is_some());
        assert_eq!(lru.used, 8);
    }
}
