//! Colormaps (from `colorous`, d3-scale-chromatic's schemes).

use layerlens_core::{Error, Result};

/// A map from `[0, 1]` to colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colormap {
    /// Black to white.
    Gray,
    /// Perceptually uniform, dark blue to yellow.
    Viridis,
    /// Black to light pink.
    Magma,
    /// Black to light yellow.
    Inferno,
    /// Diverging blue (low) – white (middle) – red (high), for signed data.
    RdBu,
}

impl Colormap {
    /// Parses `gray`, `viridis`, `magma`, `inferno` or `rdbu`.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "gray" | "grey" => Colormap::Gray,
            "viridis" => Colormap::Viridis,
            "magma" => Colormap::Magma,
            "inferno" => Colormap::Inferno,
            "rdbu" | "diverging" => Colormap::RdBu,
            other => {
                return Err(Error::invalid(
                    "colormap",
                    format!("unknown colormap '{other}' (gray, viridis, magma, inferno, rdbu)"),
                ))
            }
        })
    }

    /// The colour at `t` (clamped to `[0, 1]`; NaN maps to 0).
    pub fn rgb(&self, t: f32) -> [u8; 3] {
        let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) } as f64;
        let c = match self {
            Colormap::Gray => {
                let v = (t * 255.0).round() as u8;
                return [v, v, v];
            }
            Colormap::Viridis => colorous::VIRIDIS.eval_continuous(t),
            Colormap::Magma => colorous::MAGMA.eval_continuous(t),
            Colormap::Inferno => colorous::INFERNO.eval_continuous(t),
            // colorous' RED_BLUE runs red -> blue; high values are red here.
            Colormap::RdBu => colorous::RED_BLUE.eval_continuous(1.0 - t),
        };
        [c.r, c.g, c.b]
    }

    /// Whether the map is diverging (zero in the middle).
    pub fn is_diverging(&self) -> bool {
        matches!(self, Colormap::RdBu)
    }
}
