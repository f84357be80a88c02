//! The ONNX backend node tests (PyPI `onnx==1.16.2`, 1282 cases, each a
//! one-node model with inputs and the outputs the ONNX reference computes;
//! fetched by scripts/fetch-models.sh into
//! `~/.cache/layerlens/assets/onnx-node-tests`) for every op the importer
//! claims.
//!
//! Each case whose ops are all in [`SUPPORTED_OPS`] and whose outputs are
//! float32 is imported twice at most: first with every graph input an
//! activation ("live"), then, if that is refused, with inputs 1.. turned into
//! initializers ("const": weights, shapes, pads and scales are constants in
//! real models). The result must match the expected outputs within
//! `1e-5 + 1e-3·|expected|` (the backend tests' own rtol), or be refused with
//! an error that names the op. A case computed wrongly without an error, a
//! panic, or a case listed as passing in `tests/fixtures/conformance_expected.txt`
//! that no longer passes fails the test. `LAYERLENS_CONFORMANCE_WRITE=1`
//! rewrites that list and prints the per-op table for docs/onnx.md.

use candle_core::{DType, Tensor};
use layerlens_onnx::proto::{ModelProto, TensorProto};
use layerlens_onnx::{tensor_from_proto, Message, SUPPORTED_OPS};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

const FLOAT: i32 = 1;

fn cases_dir() -> PathBuf {
    let cache = std::env::var_os("LAYERLENS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/layerlens")
        });
    cache.join("assets/onnx-node-tests")
}

fn expected_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/conformance_expected.txt"
    ))
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// Matches with every input an activation.
    Pass,
    /// Matches with inputs 1.. as initializers.
    PassConst,
    /// Refused with an error (the message).
    Refused(String),
    /// Computed something else without an error.
    Wrong(String),
    /// Panicked.
    Panic(String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::PassConst => "pass-const",
            Outcome::Refused(_) => "refused",
            Outcome::Wrong(_) => "WRONG",
            Outcome::Panic(_) => "PANIC",
        }
    }
    fn passes(&self) -> bool {
        matches!(self, Outcome::Pass | Outcome::PassConst)
    }
}

fn read_tensor(path: &Path) -> Result<Tensor, String> {
    let bytes = std::fs::read(path).unwrap();
    tensor_from_proto(&TensorProto::decode(bytes.as_slice()).unwrap()).map_err(|e| e.to_string())
}

/// The case's inputs or expected outputs; an `Err` when one has a dtype the
/// tensor reader refuses (the case then counts as refused).
fn data_set(dir: &Path, prefix: &str) -> Result<Vec<Tensor>, String> {
    (0..)
        .map(|i| dir.join(format!("test_data_set_0/{prefix}_{i}.pb")))
        .take_while(|p| p.exists())
        .map(|p| read_tensor(&p))
        .collect()
}

/// `model` with graph inputs `1..` replaced by initializers holding `inputs`.
fn with_const_inputs(model: &ModelProto, files: &[PathBuf]) -> Vec<u8> {
    let mut m = model.clone();
    let g = m.graph.as_mut().unwrap();
    for (i, vi) in g.input.clone().iter().enumerate().skip(1) {
        let mut t = TensorProto::decode(std::fs::read(&files[i]).unwrap().as_slice()).unwrap();
        t.name = vi.name.clone();
        g.initializer.push(t);
    }
    g.input.truncate(1);
    m.encode_to_vec()
}

fn close(got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.dims() != want.dims() {
        return Err(format!(
            "shape {:?}, expected {:?}",
            got.dims(),
            want.dims()
        ));
    }
    let g: Vec<f32> = got
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let w: Vec<f32> = want
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let same_nan = a.is_nan() && b.is_nan();
        let same_inf = a.is_infinite() && a == b;
        if !(same_nan || same_inf || (a - b).abs() <= 1e-5 + 1e-3 * b.abs()) {
            return Err(format!("element {i}: {a}, expected {b}"));
        }
    }
    Ok(())
}

/// Imports `bytes`, runs `inputs`, compares with `outputs`: `Ok(true)` on a
/// match, `Err(message)` when refused, `Ok(false)` with a detail when wrong.
fn attempt(
    bytes: &[u8],
    inputs: &[Tensor],
    outputs: &[Tensor],
) -> Result<Result<(), String>, String> {
    let model = layerlens_onnx::import_bytes(bytes, Path::new("."), "case", &Default::default())
        .map_err(|e| e.to_string())?;
    let got = model.forward(inputs).map_err(|e| e.to_string())?;
    if got.len() != outputs.len() {
        return Ok(Err(format!(
            "{} outputs, expected {}",
            got.len(),
            outputs.len()
        )));
    }
    for (k, (g, w)) in got.iter().zip(outputs).enumerate() {
        if let Err(e) = close(g, w) {
            return Ok(Err(format!("output {k}: {e}")));
        }
    }
    Ok(Ok(()))
}

fn run_case(dir: &Path, model: &ModelProto) -> Outcome {
    let (inputs, outputs) = match (data_set(dir, "input"), data_set(dir, "output")) {
        (Ok(i), Ok(o)) => (i, o),
        (Err(e), _) | (_, Err(e)) => return Outcome::Refused(format!("test data: {e}")),
    };
    let files: Vec<PathBuf> = (0..inputs.len())
        .map(|i| dir.join(format!("test_data_set_0/input_{i}.pb")))
        .collect();
    let bytes = std::fs::read(dir.join("model.onnx")).unwrap();
    let live = catch_unwind(AssertUnwindSafe(|| attempt(&bytes, &inputs, &outputs)));
    match live {
        Err(p) => return Outcome::Panic(panic_text(p)),
        Ok(Ok(Ok(()))) => return Outcome::Pass,
        Ok(Ok(Err(wrong))) => return Outcome::Wrong(wrong),
        Ok(Err(_)) if inputs.len() > 1 => {}
        Ok(Err(refused)) => return Outcome::Refused(refused),
    }
    let bytes = with_const_inputs(model, &files);
    match catch_unwind(AssertUnwindSafe(|| attempt(&bytes, &inputs[..1], &outputs))) {
        Err(p) => Outcome::Panic(panic_text(p)),
        Ok(Ok(Ok(()))) => Outcome::PassConst,
        Ok(Ok(Err(wrong))) => Outcome::Wrong(format!("(inputs 1.. as constants) {wrong}")),
        Ok(Err(refused)) => Outcome::Refused(refused),
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// The claimed, float32 cases: name -> (its op types, the model).
fn claimed_cases(root: &Path) -> BTreeMap<String, (Vec<String>, ModelProto)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(root).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(bytes) = std::fs::read(dir.join("model.onnx")) else {
            continue;
        };
        let model = ModelProto::decode(bytes.as_slice()).unwrap();
        let g = model.graph.as_ref().unwrap();
        let ops: Vec<String> = g.node.iter().map(|n| n.op_type.clone()).collect();
        let claimed = ops.iter().all(|o| SUPPORTED_OPS.contains(&o.as_str()));
        let float_out = g.output.iter().all(|o| {
            o.r#type
                .as_ref()
                .and_then(|t| t.tensor_type.as_ref())
                .map(|t| t.elem_type)
                == Some(FLOAT)
        });
        if claimed && float_out && !ops.is_empty() {
            let name = dir.file_name().unwrap().to_string_lossy().to_string();
            out.insert(name, (ops, model));
        }
    }
    out
}

#[test]
fn onnx_backend_node_tests_pass_or_are_refused_never_silently_wrong() {
    let root = cases_dir();
    assert!(
        root.join(".complete").exists(),
        "{} is missing: run scripts/fetch-models.sh (scripts/test.sh does it for you)",
        root.display()
    );
    let cases = claimed_cases(&root);
    let mut results: BTreeMap<String, Outcome> = BTreeMap::new();
    for (name, (_, model)) in &cases {
        results.insert(name.clone(), run_case(&root.join(name), model));
    }

    // Per op (a case counts for the op of its single node, or "graph" for the few
    // multi-node cases).
    let mut per_op: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    for (name, (ops, _)) in &cases {
        let key = if ops.len() == 1 {
            ops[0].clone()
        } else {
            format!("{} (graph)", ops.last().unwrap())
        };
        let e = per_op.entry(key).or_default();
        e[0] += 1;
        if results[name].passes() {
            e[1] += 1;
        } else if matches!(results[name], Outcome::Refused(_)) {
            e[2] += 1;
        }
    }
    let passed = results.values().filter(|o| o.passes()).count();
    let refused = results
        .values()
        .filter(|o| matches!(o, Outcome::Refused(_)))
        .count();
    let mut table = String::from("| op | cases | pass | refused |\n|---|---:|---:|---:|\n");
    for (op, [n, p, r]) in &per_op {
        writeln!(table, "| {op} | {n} | {p} | {r} |").unwrap();
    }
    writeln!(
        table,
        "| **all** | **{}** | **{passed}** | **{refused}** |",
        cases.len()
    )
    .unwrap();

    let listed = std::fs::read_to_string(expected_path()).unwrap_or_default();
    let listed: BTreeMap<&str, &str> = listed
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once(' '))
        .collect();
    if std::env::var_os("LAYERLENS_CONFORMANCE_WRITE").is_some() {
        let mut s = String::from(
            "# ONNX backend node tests (onnx 1.16.2) of the claimed ops: name, outcome.\n\
             # Written by LAYERLENS_CONFORMANCE_WRITE=1 cargo test --release -p layerlens-onnx --test conformance\n",
        );
        for (name, o) in &results {
            writeln!(s, "{name} {}", o.label()).unwrap();
        }
        std::fs::write(expected_path(), s).unwrap();
        println!("{table}");
        for (name, o) in &results {
            if let Outcome::Refused(m) = o {
                println!("{name}: {m}");
            }
        }
    }

    let mut failures = Vec::new();
    for (name, o) in &results {
        match o {
            Outcome::Wrong(d) => failures.push(format!("{name}: silently wrong: {d}")),
            Outcome::Panic(d) => failures.push(format!("{name}: panicked: {d}")),
            Outcome::Refused(m) => {
                if listed
                    .get(name.as_str())
                    .is_some_and(|l| l.starts_with("pass"))
                {
                    failures.push(format!("{name}: listed as passing, now refused: {m}"));
                }
                // candle appends a backtrace under RUST_BACKTRACE=1: judge the first line.
                let first = m.lines().next().unwrap_or_default();
                let names_it = cases[name].0.iter().any(|op| first.contains(op.as_str()))
                    || ["opset", "input '", "test data", "graph output"]
                        .iter()
                        .any(|w| first.contains(w));
                if !names_it {
                    failures.push(format!(
                        "{name}: a refusal must name the op, input or opset: {first}"
                    ));
                }
            }
            Outcome::Pass | Outcome::PassConst => {}
        }
    }
    for (name, label) in &listed {
        if label.starts_with("pass") && !results.contains_key(*name) {
            failures.push(format!(
                "{name}: listed as passing, no longer a claimed case"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} claimed cases failed ({passed} pass, {refused} refused):\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
