//! Corpus replay on stable: every file under fuzz/regressions/<target>/ goes
//! through the entry point its fuzz target drives (fuzz/entries.rs, shared by
//! `#[path]`), and must come back as a value, never a panic. The regressions
//! of the targets in `entries::MUST_REFUSE` (ONNX, external-data ONNX, `.pth`,
//! `.npy`, Keras) are malformed files, which must be refused with a one-line error;
//! the others' files may load or be refused.
//! `catch_unwind` is used here only, to name the file that panicked.

#[path = "../../../fuzz/entries.rs"]
mod entries;

use std::path::Path;

#[test]
fn every_regression_file_returns_instead_of_panicking() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions");
    let mut replayed = 0;
    let mut panicked = Vec::new();
    for (target, entry) in entries::TARGETS {
        let dir = root.join(target);
        let Ok(listing) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = listing.map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files {
            let bytes = std::fs::read(&file).unwrap();
            let name = format!("{target}/{}", file.file_name().unwrap().to_string_lossy());
            match std::panic::catch_unwind(|| entry(&bytes)) {
                Err(_) => panicked.push(name),
                Ok(Ok(())) => assert!(
                    !entries::MUST_REFUSE.contains(target),
                    "{name}: a malformed file was accepted"
                ),
                Ok(Err(e)) => assert_eq!(e.lines().count(), 1, "{name}: {e}"),
            }
            replayed += 1;
        }
    }
    assert!(panicked.is_empty(), "panicked: {panicked:?}");
    // 24 ONNX and 10 .pth files (gen_malformed_onnx.py, gen_pth.py), 16 .npy
    // and 13 external-data ONNX files (gen_seeds.py), 11 Keras files
    // (gen_keras_seeds.py) at least.
    assert!(replayed >= 74, "only {replayed} regression files found");
}
