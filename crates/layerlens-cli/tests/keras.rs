//! The CLI takes Keras files as MODEL, detected by content (`.hdf5`, `.keras`).

use std::path::PathBuf;
use std::process::Command;

fn cache() -> PathBuf {
    std::env::var_os("LAYERLENS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/layerlens")
        })
}

fn layerlens(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_layerlens"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn summary_and_extract_take_the_fer_keras_model_by_keras_names() {
    let fer = cache().join("assets/fer_emotion_model.hdf5");
    assert!(fer.exists(), "run scripts/fetch-models.sh");
    let fer = fer.to_str().unwrap();
    let out = layerlens(&["summary", fer]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "conv2d_1",
        "separable_conv2d_1.depthwise",
        "separable_conv2d_1",
        "predictions",
    ] {
        assert!(text.contains(name), "summary lacks {name}:\n{text}");
    }
    let dir = std::env::temp_dir().join(format!("llk-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = cache().join("assets/chelsea.png");
    let f = dir.join("f.safetensors");
    let out = layerlens(&[
        "extract",
        fer,
        "--input",
        img.to_str().unwrap(),
        "--layers",
        "conv2d_1,predictions",
        "--out",
        f.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&f).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    assert!(names.iter().any(|n| n.contains("conv2d_1")), "{names:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_weights_only_or_npz_keras_file_is_refused_in_one_line() {
    let dir = std::env::temp_dir().join(format!("llk-cli2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A .keras zip whose weights are pickled NumPy arrays.
    let p = dir.join("m.keras");
    {
        let f = std::fs::File::create(&p).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let o = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("config.json", o).unwrap();
        std::io::Write::write_all(&mut z, b"{}").unwrap();
        z.start_file("model.weights.npz", o).unwrap();
        std::io::Write::write_all(&mut z, b"PK").unwrap();
        z.finish().unwrap();
    }
    let out = layerlens(&["summary", p.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("npz") && err.trim().lines().count() == 1,
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
