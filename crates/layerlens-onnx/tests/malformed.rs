//! The hand-made malformed models of fuzz/regressions/onnx_import/ (written by
//! fuzz/regressions/gen_malformed_onnx.py, one per place in the importer that
//! used to panic): each is refused with a one-line error that names the
//! offending node ('culprit') and its op, and says what is wrong.

use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/onnx_import")
}

/// What each file's error must say, besides the node and op.
const EXPECT: &[(&str, &str)] = &[
    (
        "Unsqueeze-axis-out-of-range",
        "axis 10242 out of range for rank 5",
    ),
    (
        "Unsqueeze-negative-axis-out-of-range",
        "axis -10242 out of range for rank 5",
    ),
    (
        "Unsqueeze-folded-duplicate-axes",
        "axes [2, 2] name an axis twice",
    ),
    (
        "Squeeze-axis-out-of-range",
        "axis 7 out of range for rank 4",
    ),
    ("Squeeze-non-unit-axis", "cannot squeeze axis 1 of size 3"),
    ("Squeeze-folded-scalar", "axis 0 out of range for rank 0"),
    (
        "Pad-empty-constant-value",
        "constant_value (input 2) must hold one value, holds 0",
    ),
    (
        // Found by the onnx_import fuzz target (2026-12-03, 1.66 M executions):
        // a zero stride divided by zero in the ceil_mode window arithmetic.
        "AveragePool-zero-stride-ceil-mode",
        "strides [0, 3]: only 2-D (two positive values) is supported",
    ),
    (
        "Clip-empty-min",
        "min (input 1) must hold one value, holds 0",
    ),
    (
        "ConvTranspose-empty-strides",
        "strides []: only equal, non-negative values",
    ),
    (
        "Add-folded-overflow",
        "Add of 9223372036854775807 and 1 overflows 64 bits",
    ),
    (
        "Sub-folded-overflow",
        // INT64_MIN + 1 is raised to the most negative value kept (2^40 above
        // INT64_MIN: below it are the batch multiples of shape arithmetic).
        "Sub of -9223370937343148032 and 2 overflows 64 bits",
    ),
    (
        "Mul-folded-empty-operand",
        "arithmetic on an empty constant is not folded",
    ),
    ("Gather-folded-one-input", "needs 2 inputs, has 1"),
    (
        "MaxPool-ceil-window-larger-than-input",
        "window 9x9 is larger than the padded input 4x4",
    ),
    ("Resize-flat-input", "only NCHW is supported"),
    (
        "Resize-negative-sizes",
        "the spatial sizes must be positive",
    ),
    ("Resize-infinite-scale", "the output must be at least 1x1"),
    ("Conv-dilation-overflows", "geometry overflows"),
    ("Pad-pads-overflow", "overflow"),
    ("Reshape-target-overflows", "overflows"),
    ("initializer-dims-overflow", "the element count overflows"),
    (
        "initializer-external-data-escapes",
        "is not a relative path inside the model's directory",
    ),
    (
        "initializer-external-data-absolute",
        "is not a relative path inside the model's directory",
    ),
    (
        "input-shape-too-large",
        "more than 4294967296 elements per sample",
    ),
];

#[test]
fn every_malformed_model_fails_naming_its_node_op_and_fault() {
    let mut files: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".onnx"))
        .collect();
    files.sort();
    let listed: Vec<String> = EXPECT.iter().map(|(f, _)| format!("{f}.onnx")).collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(
        files, sorted,
        "every regression file has an expectation here"
    );
    for (file, want) in EXPECT {
        let path = dir().join(format!("{file}.onnx"));
        let e = match layerlens_onnx::import(&path) {
            Ok(_) => panic!("{file}: imported"),
            Err(e) => e.to_string(),
        };
        assert_eq!(e.lines().count(), 1, "{file}: {e}");
        assert!(e.contains(want), "{file}: {e}");
        let (what, _) = file.split_once('-').unwrap();
        match what {
            "initializer" => assert!(e.contains("initializer 'w'"), "{file}: {e}"),
            "input" => assert!(e.contains("'x'"), "{file}: {e}"),
            op => {
                let named = e.contains(&format!("node 'culprit' ({op}, opset"))
                    || e.contains(&format!("('culprit', {op}, opset"));
                // Folded sites fail at the folding node itself.
                assert!(named, "{file}: {e}");
            }
        }
    }
}
