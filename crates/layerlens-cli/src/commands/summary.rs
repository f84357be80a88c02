//! `layerlens summary`: every node with its op, shape (and, for Keras files, the
//! channel-last shape Keras prints), parameters and MACs.

use anyhow::Result;

/// Prints every node: name, op, output shape, parameters and MACs.
///
/// An ONNX file whose input sizes are symbolic (dynamic H×W) has no shapes
/// to print until they are given: its inputs are listed with their symbolic
/// dimensions and the flags that fix them.
///
/// Example: layerlens summary zoo:seed_cnn
///
/// Example: layerlens summary detector.onnx --input-shape 3,640,640
#[derive(clap::Args)]
pub struct Args {
    /// An .onnx file, a Keras .keras / .h5 file, a saved layerlens model directory, or
    /// zoo:NAME[=WEIGHTS] (a .pth / .safetensors / Keras weights file, `imagenet` for the
    /// published weights, `random` for none).
    model: String,
    #[command(flatten)]
    shapes: super::OpenArgs,
}

/// Prints the summary.
pub fn run(a: &Args) -> Result<()> {
    let is_onnx = std::path::Path::new(&a.model)
        .extension()
        .is_some_and(|e| e == "onnx");
    if is_onnx && a.shapes.input_shape.is_empty() && a.shapes.dim.is_empty() {
        let inputs = layerlens::onnx::graph_inputs(&a.model)?;
        if inputs.iter().any(|i| i.is_symbolic()) {
            println!("{}", symbolic_inputs(&a.model, &inputs));
            return Ok(());
        }
    }
    let summary = super::open_model(&a.model, &a.shapes, &[])?.summary();
    // A Keras user reads shapes channel-last, as model.summary() prints them.
    let keras = layerlens::keras::detect(std::path::Path::new(&a.model)).is_some();
    if keras {
        println!("{}", summary.with_keras_shapes());
    } else {
        println!("{summary}");
    }
    Ok(())
}

/// The inputs of a model with symbolic sizes, and how to fix them.
fn symbolic_inputs(model: &str, inputs: &[layerlens::onnx::GraphInput]) -> String {
    use layerlens::onnx::InputDim;
    let mut s = format!("Model: {model}\nInputs (batch first):\n");
    for i in inputs {
        s += &format!("  {}: {}\n", i.name, i.dims_string());
    }
    s += "Its layer shapes depend on the input size, which the file leaves symbolic. Give it, e.g.:\n";
    let one = inputs.len() == 1;
    for i in inputs.iter().filter(|i| i.is_symbolic()) {
        let example: Vec<String> = i
            .dims
            .iter()
            .skip(1)
            .map(|d| match d {
                InputDim::Fixed(v) => v.to_string(),
                InputDim::Named(_) | InputDim::Unknown => "224".into(),
            })
            .collect();
        let name = if one {
            String::new()
        } else {
            format!("{}=", i.name)
        };
        s += &format!(
            "  layerlens summary {model} --input-shape {name}{}\n",
            example.join(",")
        );
        let named: Vec<String> = i
            .dims
            .iter()
            .skip(1)
            .filter_map(|d| match d {
                InputDim::Named(p) => Some(format!("--dim {p}=224")),
                _ => None,
            })
            .collect();
        if !named.is_empty() {
            s += &format!("  layerlens summary {model} {}\n", named.join(" "));
        }
    }
    s += "(extract, show, cam and explore take the same flags, or the size of a .npy / .safetensors input)";
    s
}
