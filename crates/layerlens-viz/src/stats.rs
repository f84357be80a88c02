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
