//! `--preprocess imagenet` against torchvision's transforms on real photos
//! (fixtures/gen_preprocess.py): same resize arithmetic (shorter side to
//! round(S * 256 / 224), longer side truncated), same centre crop (offset
//! rounded half to even), same normalisation.
//!
//! Tolerance: the resamplers differ in their last bit (PIL works in 8-bit fixed
//! point, `image` in f32), so pixels may differ by one 8-bit level: at most 1.5
//! levels anywhere and 0.35 on average. A crop off by one pixel, or a resize to
//! a different size, gives tens of levels.

mod common;

use common::asset;
use layerlens::candle_core::{safetensors, Device, Tensor};
use layerlens::preprocess::{decode_image, fit_image, from_image, Preset};

/// Differences in 8-bit levels: normalised units times std (about 0.226) times 255.
fn levels(a: &Tensor, b: &Tensor) -> (f32, f32) {
    let d = ((a - b).unwrap().abs().unwrap() * (0.226 * 255.0)).unwrap();
    (
        d.max_all().unwrap().to_scalar::<f32>().unwrap(),
        d.mean_all().unwrap().to_scalar::<f32>().unwrap(),
    )
}

#[test]
fn imagenet_preprocessing_matches_torchvision() {
    let refs = safetensors::load(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/preprocess_refs.safetensors"
        ),
        &Device::Cpu,
    )
    .unwrap();
    let size = refs["chelsea_plain"].dim(2).unwrap();
    for (key, photo, rotate) in [
        ("chelsea_plain", "chelsea.png", false),
        ("chelsea_rot90", "chelsea.png", true),
        ("coffee_plain", "coffee.png", false),
        ("astronaut_plain", "astronaut.png", false),
    ] {
        let mut img = decode_image(&asset(photo)).unwrap();
        if rotate {
            img = img.rotate270(); // PIL's ROTATE_90 (counter-clockwise)
        }
        let x = from_image(&fit_image(img, size, size), 3, Preset::ImageNet)
            .unwrap()
            .squeeze(0)
            .unwrap();
        assert_eq!(x.dims(), refs[key].dims(), "{key}");
        let (max, mean) = levels(&x, &refs[key]);
        assert!(
            max <= 1.5 && mean <= 0.35,
            "{key}: max {max:.2} levels, mean {mean:.3}"
        );
    }
}

#[test]
fn images_of_the_model_size_are_used_as_they_are() {
    let img = decode_image(&asset("chelsea.png")).unwrap();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let same = fit_image(img.clone(), w, h);
    assert_eq!(same.as_bytes(), img.as_bytes());
}
