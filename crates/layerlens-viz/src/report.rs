//! A self-contained HTML report: the model summary, and for chosen layers their
//! feature-map grid, statistics and histogram, plus a CAM over the input. Every
//! image is inlined as a PNG data URI, there is no script, and nothing is
//! fetched, so the file opens offline anywhere.

use crate::cam::{cam, overlay, CamOptions};
use crate::colormap::Colormap;
use crate::grid::{feature_grid, GridOptions, Select};
use crate::stats::{histogram, layer_stats};
use base64::Engine;
use candle_core::Tensor;
use image::RgbImage;
use layerlens_core::ir::OpT;
use layerlens_core::{Error, Model, Result};
use std::fmt::Write;

/// What a report shows.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Title at the top.
    pub title: String,
    /// Layers to show; `None` picks up to `max_layers` image-shaped layers spread over the depth.
    pub layers: Option<Vec<String>>,
    /// How many layers to pick when `layers` is `None`.
    pub max_layers: usize,
    /// Channels per grid (top-k by mean activation).
    pub channels: usize,
    /// A CAM to overlay on the input, if any.
    pub cam: Option<CamOptions>,
    /// Class names by index, to name the CAM's class (ImageNet, Fashion-MNIST...).
    pub class_names: Option<Vec<String>>,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            title: "layerlens report".into(),
            layers: None,
            max_layers: 8,
            channels: 16,
            cam: None,
            class_names: None,
        }
    }
}

fn png_uri(img: &RgbImage) -> Result<String> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| Error::invalid("report", format!("PNG encoding failed: {e}")))?;
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Builds the report for one input (`(1, C, H, W)`); `display` is the input as
/// a picture (for the CAM overlay), when there is one.
pub fn html_report(
    model: &Model,
    input: &Tensor,
    display: Option<&RgbImage>,
    opts: &ReportOptions,
) -> Result<String> {
    let g = model.graph();
    let layers: Vec<String> = match &opts.layers {
        Some(l) => l.clone(),
        None => {
            let candidates: Vec<&str> = g
                .nodes()
                .iter()
                .filter(|n| n.shape.rank() == 3 && !matches!(n.op, OpT::Input(_)))
                .map(|n| n.name.as_str())
                .collect();
            let k = opts.max_layers.max(1).min(candidates.len());
            (0..k)
                .map(|i| candidates[(i * candidates.len()) / k.max(1)].to_string())
                .collect()
        }
    };
    let acts = model.extract(input, &layers)?;
    let summary = model.summary();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:sans-serif;margin:24px;color:#222}}table{{border-collapse:collapse;font-size:13px}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}\
         section{{margin:28px 0}}img{{image-rendering:pixelated;max-width:100%}}.row{{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}}\
         </style></head><body><h1>{t}</h1><p>Model <b>{m}</b>: {n} nodes, {p} trainable parameters.</p>",
        t = esc(&opts.title),
        m = esc(&summary.name),
        n = summary.rows.len(),
        p = summary.trainable
    );
    if let (Some(c), Some(img)) = (&opts.cam, display) {
        let maps = cam(model, input, c)?;
        let first = &maps[0];
        let over = overlay(img, &first.heatmap, Colormap::Inferno, 0.5)?;
        let class = match opts.class_names.as_ref().and_then(|n| n.get(first.class)) {
            Some(name) => format!("{} ({})", esc(name), first.class),
            None => first.class.to_string(),
        };
        let _ = write!(
            h,
            "<section id=\"cam\"><h2>{} over {}</h2><p>Class {} (score {:.3}).</p><div class=\"row\">\
             <img alt=\"input\" src=\"{}\" width=\"{}\"><img alt=\"cam\" src=\"{}\" width=\"{}\"></div></section>",
            c.method,
            esc(&c.layer),
            class,
            first.score,
            png_uri(img)?,
            img.width().max(224),
            png_uri(&over)?,
            img.width().max(224)
        );
    }
    let _ = write!(h, "<section id=\"layers\"><h2>Layers</h2>");
    for name in &layers {
        let a = acts.get(name)?;
        let node = g.node(g.find(name)?);
        let grid = feature_grid(
            a,
            &GridOptions {
                select: Select::TopK(opts.channels),
                activation: node.op.final_activation(),
                title: Some(format!("{name} {}", node.shape)),
                ..Default::default()
            },
        )?;
        let s = layer_stats(a)?;
        let values: Vec<f32> = a.flatten_all()?.to_vec1()?;
        let hist = histogram(&values, 40, name, (360, 160))?;
        let _ = write!(
            h,
            "<h3>{n} <small>({op})</small></h3><div class=\"row\"><img alt=\"{n} feature maps\" src=\"{g}\">\
             <div><img alt=\"{n} histogram\" src=\"{hi}\"><table><tr><th>mean</th><th>std</th><th>min</th><th>max</th>\
             <th>zeros</th><th>dead channels</th></tr><tr><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td>\
             <td>{:.1}%</td><td>{}</td></tr></table></div></div>",
            s.mean,
            s.std,
            s.min,
            s.max,
            100.0 * s.zero_fraction,
            s.dead_channels.len(),
            n = esc(name),
            op = esc(&node.op.type_label()),
            g = png_uri(&grid)?,
            hi = png_uri(&hist)?,
        );
    }
    let _ = write!(h, "</section><section id=\"summary\"><h2>Summary</h2><table><tr><th>node</th><th>op</th><th>output</th><th>params</th><th>MACs</th></tr>");
    for r in &summary.rows {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.name),
            esc(&r.op),
            esc(&r.shape.to_string()),
            r.params,
            r.macs
        );
    }
    h.push_str("</table></section></body></html>\n");
    Ok(h)
}
