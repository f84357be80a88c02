//! `layerlens summary`: every node with its op, shape, parameters and MACs.

use anyhow::Result;

/// Prints every node: name, op, output shape, parameters and MACs.
///
/// Example: layerlens summary zoo:seed_cnn
#[derive(clap::Args)]
pub struct Args {
    /// An .onnx file, a Keras .keras/.h5 file, a saved layerlens model directory, or zoo:NAME[=WEIGHTS.pth].
    model: String,
}

/// Prints the summary.
pub fn run(a: &Args) -> Result<()> {
    println!("{}", super::open_model(&a.model)?.summary());
    Ok(())
}
