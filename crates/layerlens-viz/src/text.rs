//! 8×8 bitmap text for labels (font8x8, public domain glyphs).

use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};

/// Draws `s` with its top-left corner at `(x, y)`, scaled by `scale`.
pub(crate) fn draw(img: &mut RgbImage, x: u32, y: u32, s: &str, color: [u8; 3], scale: u32) {
    let mut cx = x;
    for ch in s.chars() {
        if let Some(glyph) = font8x8::BASIC_FONTS.get(ch) {
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8u32 {
                    if bits & (1 << col) != 0 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                let (px, py) = (cx + col * scale + dx, y + row as u32 * scale + dy);
                                if px < img.width() && py < img.height() {
                                    img.put_pixel(px, py, Rgb(color));
                                }
                            }
                        }
                    }
                }
            }
        }
        cx += 8 * scale;
    }
}

/// Width in pixels of `s` at `scale`.
pub(crate) fn width(s: &str, scale: u32) -> u32 {
    s.chars().count() as u32 * 8 * scale
}
