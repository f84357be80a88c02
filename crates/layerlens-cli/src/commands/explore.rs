//! `layerlens explore`: the browser explorer (a local server), or with
//! `--static` the same page as one self-contained file.

use anyhow::{bail, Result};
use layerlens_explorer::{Input, Session};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Opens the model in the browser: the graph, and for any node its feature
/// maps, statistics, histogram and CAM for each input.
///
/// Example: layerlens explore zoo:efficientnet_lite0=lite0.pth --input cat.png --input dog.png
#[derive(clap::Args)]
pub struct Args {
    /// An .onnx file, a Keras .keras / .h5 file, a saved layerlens model directory, or
    /// zoo:NAME[=WEIGHTS] (a .pth / .safetensors / Keras weights file, `imagenet` for the
    /// published weights, `random` for none).
    pub model: String,
    #[command(flatten)]
    pub shapes: super::OpenArgs,
    /// An image (png, jpg), or a .npy / .safetensors tensor (its first sample); repeat for several.
    #[arg(long, required = true)]
    pub input: Vec<String>,
    /// Image preprocessing: unit, imagenet, efficientnet-lite, caffe, tf, raw (default: what a zoo model was trained with, else unit).
    #[arg(long)]
    pub preprocess: Option<String>,
    /// Class names, one per line (default: ImageNet for the zoo models, Fashion-MNIST for the seed CNN).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Port to listen on (default: a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Address to listen on; anything but loopback also needs --allow-remote.
    /// (`--bind` is taken by every MODEL command: it binds Keras Lambda layers.)
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Serve on a non-loopback --host address (the explorer has no authentication).
    #[arg(long)]
    pub allow_remote: bool,
    /// Write the page with its answers to this HTML file instead of serving it.
    #[arg(long = "static", value_name = "OUT.html")]
    pub static_out: Option<PathBuf>,
    /// With --static: comma-separated nodes (names, blocks, globs) to include (default: up to 8 spread over the depth).
    #[arg(long)]
    pub nodes: Option<String>,
    /// With --static: the CAM method (gradcam, gradcam++, scorecam, eigencam, layercam).
    #[arg(long, default_value = "gradcam++")]
    pub method: String,
}

/// Opens the model and inputs as an explorer session.
fn session(a: &Args) -> Result<Session> {
    let model = super::open_model(&a.model, &a.shapes, &a.input)?;
    let preprocess = a
        .preprocess
        .as_deref()
        .unwrap_or_else(|| layerlens_explorer::default_preprocess(&a.model));
    let mut inputs = Vec::new();
    for spec in &a.input {
        let path = Path::new(spec);
        let label = path
            .file_name()
            .map_or(spec.clone(), |f| f.to_string_lossy().into_owned());
        let (tensor, picture) = if layerlens::extract::is_image_file(path) {
            let (x, p) = layerlens::spec::load_picture(path, &model, super::preset(preprocess)?)?;
            (x, Some(p))
        } else {
            (super::input_tensor(spec, &model, preprocess)?, None)
        };
        inputs.push(Input {
            label,
            tensor,
            picture,
        });
    }
    let labels = match &a.labels {
        Some(p) => Some(layerlens_explorer::read_labels(p)?),
        None => layerlens_explorer::known_labels(&a.model),
    };
    Ok(Session::new(model, inputs, labels)?)
}

/// The nodes a static export shows by default: up to 8 image-shaped nodes
/// spread over the depth (the blocks' outputs where there are blocks).
fn default_nodes(session: &Session) -> Vec<String> {
    let g = layerlens_explorer::graph::graph_json(session.model());
    let candidates: Vec<String> = if g.blocks.is_empty() {
        g.nodes
            .iter()
            .filter(|n| n.cam_capable)
            .map(|n| n.name.clone())
            .collect()
    } else {
        g.blocks.iter().map(|b| b.name.clone()).collect()
    };
    let k = candidates.len().min(8);
    (0..k)
        .map(|i| candidates[(i * candidates.len()) / k.max(1)].clone())
        .collect()
}

/// Serves the explorer, or writes the static export.
pub fn run(a: &Args) -> Result<()> {
    let method = layerlens::viz::cam::CamMethod::parse(&a.method)?;
    if a.static_out.is_none() && a.nodes.is_some() {
        bail!("--nodes chooses what a --static export holds; the live explorer shows every node");
    }
    let addr = SocketAddr::new(a.host, a.port);
    if a.static_out.is_none() {
        // Before the model loads: a refused address is said at once.
        layerlens_explorer::server::check_bind(addr, a.allow_remote)?;
    }
    let session = session(a)?;
    if let Some(out) = &a.static_out {
        let nodes: Vec<String> = match &a.nodes {
            Some(n) => layerlens::spec::parse_layers(n)?
                .into_iter()
                .map(String::from)
                .collect(),
            None => default_nodes(&session),
        };
        let refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let html = layerlens_explorer::page::static_page(&session, &refs, method)?;
        super::write_atomic(out, html.as_bytes())?;
        eprintln!(
            "wrote {} ({} nodes; open it in a browser, it needs no network)",
            out.display(),
            nodes.len()
        );
        return Ok(());
    }
    let explorer = layerlens_explorer::server::bind(session, addr, a.allow_remote)?;
    // The one line scripts wait for: the URL, on stdout.
    println!("layerlens explorer: http://{}/", explorer.addr());
    use std::io::Write;
    std::io::stdout().flush()?;
    explorer.serve();
    Ok(())
}
