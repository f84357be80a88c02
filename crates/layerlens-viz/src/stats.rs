//! Per-layer activation statistics: the numbers behind "is this layer alive?".

use candle_core::{DType, Tensor};
use layerlens_core::Result;

/// Statistics of one layer's activations over a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerStats {
    /// Mean value.
    pub mean: f32,
    /// Standard deviation.
    pub std: f32,
    /// Smallest value.
    pub min: f32,
    /// Largest value.
    pub max: f32,
    /// Fraction of values exactly zero (ReLU sparsity).
    pub zero_fraction: f32,
    /// Channels (axis 1) that are zero everywhere in the batch: dead units.
    pub dead_channels: Vec<usize>,
}

/// Statistics of an `(N, C, ...)` activation.
pub fn layer_stats(act: &Tensor) -> Result<LayerStats> {
    let a = act.to_dtype(DType::F32)?;
    let v: Vec<f32> = a.flatten_all()?.to_vec1()?;
    let n = v.len().max(1) as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    let (min, max) = v
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| {
            (l.min(x), h.max(x))
        });
    let zeros = v.iter().filter(|&&x| x == 0.0).count();
    let dead_channels = if a.rank() >= 2 {
        let per: Vec<f32> = a
            .abs()?
            .transpose(0, 1)?
            .flatten_from(1)?
            .max(1)?
            .to_vec1()?;
        per.iter()
            .enumerate()
            .filter(|(_, &m)| m == 0.0)
            .map(|(i, _)| i)
            .collect()
    } else {
        Vec::new()
    };
    Ok(LayerStats {
        mean: mean as f32,
        std: var.sqrt() as f32,
        min,
        max,
        zero_fraction: zeros as f32 / n as f32,
        dead_channels,
    })
}

/// Tick positions for `[lo, hi]`: about `target` round numbers (1, 2 or 5
/// times a power of ten apart) inside the range.
pub fn nice_ticks(lo: f32, hi: f32, target: usize) -> Vec<f32> {
    let span = (hi - lo) as f64;
    if span.is_nan() || span <= 0.0 || !span.is_finite() {
        return vec![lo];
    }
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo as f64 / step).ceil() as i64;
    let last = (hi as f64 / step).floor() as i64;
    (first..=last).map(|i| (i as f64 * step) as f32).collect()
}

/// A tick label: short, without float noise (`0.30000001` is `0.3`).
fn tick_label(v: f32, step: f32) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.1e}");
    }
    let decimals = (-(step.abs() as f64).log10().floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

/// A histogram of `values` as a picture: `bins` bars over the finite values'
/// range, with an x axis (values) and a y axis (counts), both with ticks and
/// labels, and `title` above.
pub fn histogram(
    values: &[f32],
    bins: usize,
    title: &str,
    size: (u32, u32),
) -> Result<image::RgbImage> {
    use crate::text;
    use image::Rgb;
    let bins = bins.max(1);
    let finite: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let (lo, hi) = finite
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    let (lo, hi) = if lo <= hi {
        (lo, if hi > lo { hi } else { lo + 1.0 })
    } else {
        (0.0, 1.0)
    };
    let width = (hi - lo) / bins as f32;
    let mut counts = vec![0usize; bins];
    for v in &finite {
        counts[(((v - lo) / width) as usize).min(bins - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(0).max(1);
    let (w, h) = size;
    let ink = [20, 20, 20];
    let y_ticks = nice_ticks(0.0, top as f32, 4);
    let y_step = y_ticks.get(1).map_or(1.0, |t| t - y_ticks[0]).max(1.0);
    let y_labels: Vec<String> = y_ticks.iter().map(|&t| tick_label(t, y_step)).collect();
    let left = 8 + y_labels
        .iter()
        .map(|l| text::width(l, text::SMALL))
        .max()
        .unwrap_or(0);
    let (top_m, bottom_m, right_m) = (20u32, 34u32, 12u32);
    if w < left + right_m + 20 || h < top_m + bottom_m + 20 {
        return Err(layerlens_core::Error::invalid(
            "histogram",
            format!("{w}x{h} is too small for a histogram with axes"),
        ));
    }
    let (pw, ph) = (w - left - right_m, h - top_m - bottom_m);
    let mut img = image::RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let x_px = |v: f32| left as f32 + (v - lo) / (hi - lo) * pw as f32;
    let y_px = |c: f32| (top_m + ph) as f32 - c / (top as f32 * 1.05) * ph as f32;
    let bar = Rgb([70, 110, 180]);
    for (i, &c) in counts.iter().enumerate() {
        let (x0, x1) = (
            x_px(lo + i as f32 * width),
            x_px(lo + (i as f32 + 0.9) * width),
        );
        let y0 = y_px(c as f32);
        for x in x0.round() as u32..(x1.round() as u32).max(x0.round() as u32 + 1) {
            for y in y0.round() as u32..top_m + ph {
                img.put_pixel(x.min(w - 1), y, bar);
            }
        }
    }
    // Axes.
    for x in left..=left + pw {
        img.put_pixel(x, top_m + ph, Rgb(ink));
    }
    for y in top_m..=top_m + ph {
        img.put_pixel(left, y, Rgb(ink));
    }
    for (t, label) in y_ticks.iter().zip(&y_labels) {
        let y = y_px(*t).round() as u32;
        for x in left - 4..left {
            img.put_pixel(x, y, Rgb(ink));
        }
        let lw = text::width(label, text::SMALL);
        text::draw(
            &mut img,
            left - 6 - lw,
            y.saturating_sub(7),
            label,
            ink,
            text::SMALL,
        );
    }
    let x_ticks = nice_ticks(lo, hi, 5);
    let x_step = x_ticks.get(1).map_or(hi - lo, |t| t - x_ticks[0]);
    for t in &x_ticks {
        let x = x_px(*t).round() as u32;
        for y in top_m + ph..top_m + ph + 4 {
            img.put_pixel(x.min(w - 1), y, Rgb(ink));
        }
        let label = tick_label(*t, x_step);
        let lw = text::width(&label, text::SMALL);
        let lx = x.saturating_sub(lw / 2).min(w.saturating_sub(lw));
        text::draw(&mut img, lx, top_m + ph + 5, &label, ink, text::SMALL);
    }
    let axis = "value";
    text::draw(
        &mut img,
        left + pw / 2 - text::width(axis, text::SMALL) / 2,
        top_m + ph + 19,
        axis,
        [90, 90, 90],
        text::SMALL,
    );
    text::draw(
        &mut img,
        4,
        3,
        &format!("{title}: count per bin ({bins} bins)"),
        ink,
        text::SMALL,
    );
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn stats_find_sparsity_and_dead_channels() {
        // Channel 1 is dead; channel 0 holds 1, 2, 3, 0.
        let t = Tensor::from_vec(
            vec![1f32, 2., 3., 0., 0., 0., 0., 0.],
            (1, 2, 2, 2),
            &Device::Cpu,
        )
        .unwrap();
        let s = layer_stats(&t).unwrap();
        assert_eq!(s.dead_channels, vec![1]);
        assert_eq!(s.zero_fraction, 5.0 / 8.0);
        assert_eq!((s.min, s.max, s.mean), (0.0, 3.0, 0.75));
        assert!((s.std - 1.0897247).abs() < 1e-5);
    }

    #[test]
    fn ticks_are_round_and_inside_the_range() {
        assert_eq!(
            nice_ticks(0.0, 10.0, 5),
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        );
        assert_eq!(nice_ticks(-0.27, 0.33, 5), vec![-0.2, 0.0, 0.2]);
        assert_eq!(
            nice_ticks(-0.27, 0.33, 10),
            vec![-0.2, -0.1, 0.0, 0.1, 0.2, 0.3]
        );
        assert_eq!(nice_ticks(3.0, 3.0, 5), vec![3.0]);
        assert_eq!(tick_label(0.1 + 0.2, 0.1), "0.3");
        assert_eq!(tick_label(1500.0, 500.0), "1500");
    }

    #[test]
    fn histograms_have_axes_and_refuse_tiny_sizes() {
        let v: Vec<f32> = (0..1000).map(|i| (i % 37) as f32 / 10.0).collect();
        let img = histogram(&v, 20, "conv", (360, 180)).unwrap();
        // The x axis is a dark horizontal line across the plot area.
        let axis_y = (0..180)
            .find(|&y| (60..300).all(|x| img.get_pixel(x, y).0[0] < 60))
            .expect("an x axis");
        assert!(axis_y > 100, "{axis_y}");
        assert!(histogram(&v, 20, "conv", (30, 30)).is_err());
    }
}
