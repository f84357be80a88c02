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

/// A histogram of `values` as a picture (bars drawn with plotters), with its
/// range and the largest count written underneath.
pub fn histogram(
    values: &[f32],
    bins: usize,
    title: &str,
    size: (u32, u32),
) -> Result<image::RgbImage> {
    use plotters::prelude::*;
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
    let plot_h = h.saturating_sub(24);
    let mut buf = vec![255u8; (w * plot_h * 3) as usize];
    {
        let err = |e: String| layerlens_core::Error::invalid("histogram", e);
        let root = BitMapBackend::with_buffer(&mut buf, (w, plot_h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(6)
            .build_cartesian_2d(lo..hi, 0f32..top as f32 * 1.05)
            .map_err(|e| err(e.to_string()))?;
        let bars = counts.iter().enumerate().map(|(i, &c)| {
            let x0 = lo + i as f32 * width;
            Rectangle::new(
                [(x0, 0.0), (x0 + width * 0.9, c as f32)],
                RGBColor(70, 110, 180).filled(),
            )
        });
        chart.draw_series(bars).map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(lo, 0.0), (hi, 0.0)],
                BLACK,
            )))
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    let mut img = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    for (i, px) in buf.chunks_exact(3).enumerate() {
        img.put_pixel(
            i as u32 % w,
            i as u32 / w,
            image::Rgb([px[0], px[1], px[2]]),
        );
    }
    let ink = [20, 20, 20];
    crate::text::draw(&mut img, 4, plot_h + 2, &format!("{lo:.3}"), ink, 1);
    let hi_s = format!("{hi:.3}");
    crate::text::draw(
        &mut img,
        w.saturating_sub(crate::text::width(&hi_s, 1) + 4),
        plot_h + 2,
        &hi_s,
        ink,
        1,
    );
    crate::text::draw(
        &mut img,
        4,
        plot_h + 13,
        &format!("{title} (max count {top})"),
        [90, 90, 90],
        1,
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
}
