//! Feature-map grids: one tile per channel, labelled, with a colorbar.

use crate::colormap::Colormap;
use crate::normalize::{auto_range, Norm, Range};
use crate::text;
use candle_core::{DType, Tensor};
use image::{Rgb, RgbImage};
use layerlens_core::ops::Activation;
use layerlens_core::{Error, Result};
use std::path::Path;

/// Which channels get a tile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    /// Every channel.
    All,
    /// The `k` channels with the highest mean activation, best first.
    TopK(usize),
    /// The first `n` channels.
    First(usize),
    /// These channels, in this order.
    List(Vec<usize>),
}

/// Collapse all channels into one tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelReduce {
    /// Mean over channels.
    Mean,
    /// Max over channels.
    Max,
}

/// How a grid looks.
#[derive(Debug, Clone)]
pub struct GridOptions {
    /// Tiles per row.
    pub columns: usize,
    /// Channel selection.
    pub select: Select,
    /// Show one reduced tile instead of channels.
    pub reduce: Option<ChannelReduce>,
    /// Normalisation.
    pub norm: Norm,
    /// Colormap; `None` picks gray, or the diverging map for signed data.
    pub colormap: Option<Colormap>,
    /// Smallest tile side in pixels; maps are upscaled by an integer factor (nearest).
    pub tile: u32,
    /// Channel index and value range above each tile.
    pub labels: bool,
    /// A colorbar with the display range under the grid.
    pub colorbar: bool,
    /// A title (the layer name) above the grid.
    pub title: Option<String>,
    /// The activation that produced the values, for [`Norm::Auto`].
    pub activation: Option<Activation>,
}

impl Default for GridOptions {
    fn default() -> Self {
        GridOptions {
            columns: 8,
            select: Select::All,
            reduce: None,
            norm: Norm::Auto,
            colormap: None,
            tile: 64,
            labels: true,
            colorbar: true,
            title: None,
            activation: None,
        }
    }
}

/// A compact number for labels: at most 6 characters.
fn num(v: f32) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-2..1e4).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

const GAP: u32 = 4;
const LABEL_H: u32 = 26;
const TITLE_H: u32 = 18;
const BAR_H: u32 = 30;
const BG: Rgb<u8> = Rgb([255, 255, 255]);
const INK: [u8; 3] = [20, 20, 20];

/// Renders the feature maps of one sample. `act` is `(C, H, W)` or `(N, C, H, W)`
/// (the first sample is drawn).
pub fn feature_grid(act: &Tensor, opts: &GridOptions) -> Result<RgbImage> {
    let act = match act.rank() {
        3 => act.clone(),
        4 => act.get(0)?,
        r => {
            return Err(Error::invalid(
                "feature_grid",
                format!("expects (C, H, W) or (N, C, H, W), got rank {r}"),
            ))
        }
    };
    let act = act.to_dtype(DType::F32)?;
    let (c, h, w) = act.dims3()?;
    let maps: Vec<Vec<f32>> = act.reshape((c, h * w))?.to_vec2()?;
    let tiles: Vec<(String, Vec<f32>)> = match opts.reduce {
        Some(r) => {
            let reduced = match r {
                ChannelReduce::Mean => act.mean(0)?,
                ChannelReduce::Max => act.max(0)?,
            };
            vec![(
                format!("{r:?} of {c}").to_lowercase(),
                reduced.flatten_all()?.to_vec1()?,
            )]
        }
        None => {
            let order: Vec<usize> = match &opts.select {
                Select::All => (0..c).collect(),
                Select::First(n) => (0..c.min(*n)).collect(),
                Select::TopK(k) => {
                    let means: Vec<f32> = maps
                        .iter()
                        .map(|m| m.iter().sum::<f32>() / m.len() as f32)
                        .collect();
                    let mut idx: Vec<usize> = (0..c).collect();
                    idx.sort_by(|&a, &b| means[b].total_cmp(&means[a]).then(a.cmp(&b)));
                    idx.truncate(*k);
                    idx
                }
                Select::List(l) => {
                    if let Some(bad) = l.iter().find(|&&i| i >= c) {
                        return Err(Error::invalid(
                            "feature_grid",
                            format!("channel {bad} does not exist ({c} channels)"),
                        ));
                    }
                    l.clone()
                }
            };
            order
                .into_iter()
                .map(|i| (format!("c{i}"), maps[i].clone()))
                .collect()
        }
    };
    if tiles.is_empty() {
        return Err(Error::invalid("feature_grid", "no channel selected"));
    }
    let all: Vec<f32> = tiles.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    let (shared, diverging) = match opts.norm {
        Norm::Auto => auto_range(&all, opts.activation),
        Norm::Shared | Norm::PerChannel => {
            let r = Range::of(&all);
            (r, false)
        }
        Norm::Fixed(lo, hi) => (Range { lo, hi }, lo < 0.0 && hi > 0.0),
    };
    let cmap = opts.colormap.unwrap_or(if diverging {
        Colormap::RdBu
    } else {
        Colormap::Gray
    });
    let scale = opts.tile.div_ceil(h.max(w) as u32).max(1);
    let (tw, th) = (w as u32 * scale, h as u32 * scale);
    let cols = opts.columns.max(1).min(tiles.len()) as u32;
    let rows = (tiles.len() as u32).div_ceil(cols);
    let label_h = if opts.labels { LABEL_H } else { 0 };
    let title_h = if opts.title.is_some() { TITLE_H } else { 0 };
    let bar_h = if opts.colorbar { BAR_H } else { 0 };
    let label_w = if opts.labels {
        tiles
            .iter()
            .map(|(l, v)| {
                let r = Range::of(v);
                text::width(l, text::SMALL).max(text::width(
                    &format!("{}..{}", num(r.lo), num(r.hi)),
                    text::SMALL,
                ))
            })
            .max()
            .unwrap_or(0)
    } else {
        0
    };
    let cell_w = tw.max(label_w);
    let width = GAP + cols * (cell_w + GAP);
    let height = title_h + GAP + rows * (th + label_h + GAP) + bar_h;
    let mut img = RgbImage::from_pixel(width, height, BG);
    if let Some(t) = &opts.title {
        text::draw(&mut img, GAP, 2, t, INK, text::TITLE);
    }
    for (k, (label, values)) in tiles.iter().enumerate() {
        let (col, row) = (k as u32 % cols, k as u32 / cols);
        let x0 = GAP + col * (cell_w + GAP);
        let y0 = title_h + GAP + row * (th + label_h + GAP);
        let own = Range::of(values);
        let range = if opts.norm == Norm::PerChannel {
            own
        } else {
            shared
        };
        if opts.labels {
            text::draw(&mut img, x0, y0, label, INK, text::SMALL);
            text::draw(
                &mut img,
                x0,
                y0 + 12,
                &format!("{}..{}", num(own.lo), num(own.hi)),
                [90, 90, 90],
                text::SMALL,
            );
        }
        for y in 0..th {
            for x in 0..tw {
                let v = values[(y / scale) as usize * w + (x / scale) as usize];
                img.put_pixel(x0 + x, y0 + label_h + y, Rgb(cmap.rgb(range.t(v))));
            }
        }
    }
    if opts.colorbar {
        let (x0, y0) = (GAP, height - bar_h + 4);
        let bw = (width - 2 * GAP).min(256.max(width / 2));
        for x in 0..bw {
            let color = Rgb(cmap.rgb(x as f32 / (bw - 1).max(1) as f32));
            for y in 0..8 {
                img.put_pixel(x0 + x, y0 + y, color);
            }
        }
        let (lo, hi) = if opts.norm == Norm::PerChannel {
            ("min".to_string(), "max".to_string())
        } else {
            (num(shared.lo), num(shared.hi))
        };
        text::draw(&mut img, x0, y0 + 11, &lo, INK, text::SMALL);
        text::draw(
            &mut img,
            (x0 + bw).saturating_sub(text::width(&hi, text::SMALL)),
            y0 + 11,
            &hi,
            INK,
            text::SMALL,
        );
    }
    Ok(img)
}

/// First-layer filters as tiles: RGB for 3 input channels, gray otherwise (the
/// mean over input channels), each filter scaled to its own symmetric range so
/// that 0 is mid-gray.
pub fn filter_grid(weight: &Tensor, columns: usize, tile: u32) -> Result<RgbImage> {
    let (o, i, kh, kw) = weight.dims4()?;
    let w: Vec<Vec<f32>> = weight
        .to_dtype(DType::F32)?
        .reshape((o, i * kh * kw))?
        .to_vec2()?;
    let scale = tile.div_ceil(kh.max(kw) as u32).max(1);
    let (tw, th) = (kw as u32 * scale, kh as u32 * scale);
    let cols = columns.max(1).min(o) as u32;
    let rows = (o as u32).div_ceil(cols);
    let mut img = RgbImage::from_pixel(GAP + cols * (tw + GAP), GAP + rows * (th + GAP), BG);
    for (f, vals) in w.iter().enumerate() {
        let m = vals.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let t = |v: f32| (((v / m) * 0.5 + 0.5) * 255.0).round().clamp(0.0, 255.0) as u8;
        let (x0, y0) = (
            GAP + (f as u32 % cols) * (tw + GAP),
            GAP + (f as u32 / cols) * (th + GAP),
        );
        for y in 0..th {
            for x in 0..tw {
                let (r, c) = ((y / scale) as usize, (x / scale) as usize);
                let at = |ch: usize| vals[ch * kh * kw + r * kw + c];
                let px = if i == 3 {
                    [t(at(0)), t(at(1)), t(at(2))]
                } else {
                    let g = t((0..i).map(at).sum::<f32>() / i as f32);
                    [g, g, g]
                };
                img.put_pixel(x0 + x, y0 + y, Rgb(px));
            }
        }
    }
    Ok(img)
}

/// Saves a PNG under a temporary name, synced and renamed into place
/// ([`layerlens_core::fsio::write_atomic`]), so an interrupted run never leaves
/// a truncated picture that looks complete.
pub fn save_png(img: &RgbImage, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    layerlens_core::fsio::write_atomic(path, |w| {
        img.write_to(w, image::ImageFormat::Png)
            .map_err(std::io::Error::other)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn flat_maps_render_flat_and_never_nan() {
        let zeros = Tensor::zeros((4, 5, 5), DType::F32, &Device::Cpu).unwrap();
        for norm in [Norm::Auto, Norm::Shared, Norm::PerChannel] {
            let img = feature_grid(
                &zeros,
                &GridOptions {
                    norm,
                    labels: false,
                    colorbar: false,
                    ..Default::default()
                },
            )
            .unwrap();
            let first = *img.get_pixel(GAP, GAP);
            assert_eq!(
                first,
                Rgb([0, 0, 0]),
                "an all-zero map is the bottom colour ({norm:?})"
            );
        }
        let sevens = (Tensor::ones((2, 3, 3), DType::F32, &Device::Cpu).unwrap() * 7.0).unwrap();
        let img = feature_grid(
            &sevens,
            &GridOptions {
                norm: Norm::PerChannel,
                labels: false,
                colorbar: false,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            *img.get_pixel(GAP, GAP),
            Rgb([128, 128, 128]),
            "a constant map is mid-gray"
        );
    }

    #[test]
    fn selection_layout_and_activation_aware_ranges() {
        // Channel k holds the constant k: top-2 picks channels 5 and 4.
        let v: Vec<f32> = (0..6)
            .flat_map(|k| std::iter::repeat_n(k as f32, 4))
            .collect();
        let t = Tensor::from_vec(v, (6, 2, 2), &Device::Cpu).unwrap();
        let o = GridOptions {
            select: Select::TopK(2),
            labels: false,
            colorbar: false,
            tile: 2,
            activation: Some(Activation::Relu),
            ..Default::default()
        };
        let img = feature_grid(&t, &o).unwrap();
        assert_eq!(
            (img.width(), img.height()),
            (GAP + 2 * (2 + GAP), GAP + 2 + GAP)
        );
        // ReLU: range [0, 5], so channel 5 is white and channel 4 is 80 % gray.
        assert_eq!(*img.get_pixel(GAP, GAP), Rgb([255, 255, 255]));
        assert_eq!(*img.get_pixel(GAP + 2 + GAP, GAP), Rgb([204, 204, 204]));
        // tanh: a fixed, signed range and a diverging map, 0 in the middle (white).
        let z = Tensor::zeros((1, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let o = GridOptions {
            labels: false,
            colorbar: false,
            tile: 2,
            activation: Some(Activation::Tanh),
            ..Default::default()
        };
        let img = feature_grid(&z, &o).unwrap();
        let px = img.get_pixel(GAP, GAP).0;
        assert!(px.iter().all(|&c| c > 230), "near white: {px:?}");
        let e = feature_grid(
            &t,
            &GridOptions {
                select: Select::List(vec![9]),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e
            .to_string()
            .contains("channel 9 does not exist (6 channels)"));
    }
}
