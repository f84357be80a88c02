//! Text in pictures: DejaVu Sans (embedded, licence in `assets/DejaVuSans.LICENSE`)
//! rasterised with `ab_glyph`, anti-aliased onto the image.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use image::{Rgb, RgbImage};
use std::sync::OnceLock;

/// Text size of tile labels and colorbar ticks, in pixels.
pub(crate) const SMALL: f32 = 11.0;
/// Text size of titles.
pub(crate) const TITLE: f32 = 13.0;

fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| {
        FontRef::try_from_slice(include_bytes!("../assets/DejaVuSans.ttf"))
            .expect("the embedded DejaVu Sans is a valid TrueType font")
    })
}

/// Draws `s` with its top-left corner at `(x, y)`, `size` pixels tall.
pub(crate) fn draw(img: &mut RgbImage, x: u32, y: u32, s: &str, color: [u8; 3], size: f32) {
    let f = font().as_scaled(PxScale::from(size));
    let mut caret = x as f32;
    let baseline = y as f32 + f.ascent();
    let mut prev = None;
    for ch in s.chars() {
        let id = f.glyph_id(ch);
        if let Some(p) = prev {
            caret += f.kern(p, id);
        }
        let glyph = id.with_scale_and_position(size, ab_glyph::point(caret, baseline));
        caret += f.h_advance(id);
        prev = Some(id);
        if let Some(outline) = font().outline_glyph(glyph) {
            let b = outline.px_bounds();
            outline.draw(|gx, gy, coverage| {
                let (px, py) = (b.min.x as i64 + gx as i64, b.min.y as i64 + gy as i64);
                if px < 0 || py < 0 || px >= img.width() as i64 || py >= img.height() as i64 {
                    return;
                }
                let a = coverage.clamp(0.0, 1.0);
                let under = img.get_pixel(px as u32, py as u32).0;
                let mixed: [u8; 3] = std::array::from_fn(|k| {
                    (under[k] as f32 * (1.0 - a) + color[k] as f32 * a).round() as u8
                });
                img.put_pixel(px as u32, py as u32, Rgb(mixed));
            });
        }
    }
}

/// Width in pixels of `s` at `size`.
pub(crate) fn width(s: &str, size: f32) -> u32 {
    let f = font().as_scaled(PxScale::from(size));
    let mut w = 0.0;
    let mut prev = None;
    for ch in s.chars() {
        let id = f.glyph_id(ch);
        if let Some(p) = prev {
            w += f.kern(p, id);
        }
        w += f.h_advance(id);
        prev = Some(id);
    }
    w.ceil() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_drawn_with_anti_aliasing_and_measured() {
        let mut img = RgbImage::from_pixel(80, 20, Rgb([255, 255, 255]));
        draw(&mut img, 2, 2, "c12 0.5", [0, 0, 0], SMALL);
        let dark = img.pixels().filter(|p| p.0[0] < 100).count();
        let grey = img
            .pixels()
            .filter(|p| (100..230).contains(&p.0[0]))
            .count();
        assert!(dark > 20 && grey > 10, "dark {dark}, grey {grey}");
        assert!(width("c12 0.5", SMALL) > width("c1", SMALL));
        assert_eq!(width("", SMALL), 0);
    }
}
