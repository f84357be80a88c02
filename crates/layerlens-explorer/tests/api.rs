//! The HTTP API against a real server on loopback, inside a loopback-only
//! network namespace (the test re-runs itself under `unshare -n`): answers
//! equal the library's (statistics, the grid's PNG bytes, the CAM's class),
//! and bad requests get clear errors with the right status.

use layerlens::data::{embedded_fashion_mnist, Split, FASHION_CLASSES};
use layerlens::viz::cam::{cam, to_rgb_image, CamMethod, CamOptions};
use layerlens::viz::grid::{feature_grid, GridOptions, Select};
use layerlens::viz::stats::layer_stats;
use layerlens_explorer::{server, Input, Session};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

const NETNS: &str = "LAYERLENS_TEST_NETNS";

/// Status, content type and body of a raw HTTP/1.0 request.
fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "{method} {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or("")
        .to_string();
    (status, content_type, raw[split + 4..].to_vec())
}

fn get_json(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let (status, ct, body) = request(addr, "GET", path);
    assert_eq!(ct, "application/json", "{path}");
    (status, serde_json::from_slice(&body).unwrap())
}

fn inputs() -> Vec<Input> {
    let images = embedded_fashion_mnist(Split::Test).unwrap().images;
    (0..2)
        .map(|i| {
            let x = images.narrow(0, i, 1).unwrap();
            Input {
                label: format!("test[{i}]"),
                picture: Some(to_rgb_image(&x).unwrap()),
                tensor: x,
            }
        })
        .collect()
}

#[test]
fn the_api_answers_what_the_library_computes() {
    if std::env::var_os(NETNS).is_none() {
        let exe = std::env::current_exe().unwrap();
        let status = Command::new("unshare")
            .args(["-n", "sh", "-c", "ip link set lo up && exec \"$0\" --exact the_api_answers_what_the_library_computes --nocapture"])
            .arg(exe)
            .env(NETNS, "1")
            .status()
            .expect("unshare is missing (util-linux)");
        assert!(status.success(), "the test failed inside the namespace");
        return;
    }
    let model = layerlens::zoo::seed_cnn(false).unwrap();
    let labels = FASHION_CLASSES.iter().map(|s| s.to_string()).collect();
    let session = Session::new(model, inputs(), Some(labels)).unwrap();
    let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
    assert!(server::check_bind(any, false).is_err());
    let explorer = server::bind(session, "127.0.0.1:0".parse().unwrap(), false).unwrap();
    let addr = explorer.addr();
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    std::thread::spawn(move || explorer.serve());

    // The library's answers, from its own copy of the model (same seed).
    let model = layerlens::zoo::seed_cnn(false).unwrap();
    let x1 = inputs().remove(1).tensor;
    let acts = model.extract(&x1, &["conv2d"]).unwrap();
    let conv = acts.get("conv2d").unwrap();
    let want = layer_stats(conv).unwrap();

    let (status, graph) = get_json(addr, "/api/graph");
    assert_eq!(status, 200);
    assert_eq!(
        graph["nodes"].as_array().unwrap().len(),
        model.graph().nodes().len()
    );

    let (status, s) = get_json(addr, "/api/stats?node=conv2d&input=1");
    assert_eq!(status, 200);
    for (k, v) in [
        ("mean", want.mean),
        ("std", want.std),
        ("min", want.min),
        ("max", want.max),
        ("zero_fraction", want.zero_fraction),
    ] {
        assert_eq!(s[k].as_f64().unwrap() as f32, v, "{k}");
    }
    assert_eq!(
        s["dead_channels"].as_array().unwrap().len(),
        want.dead_channels.len()
    );

    // The grid is the library's picture, byte for byte.
    let (status, ct, png) = request(
        addr,
        "GET",
        "/api/grid.png?node=conv2d&input=1&channels=4&cmap=viridis",
    );
    assert_eq!((status, ct.as_str()), (200, "image/png"));
    let served = image::load_from_memory(&png).unwrap().to_rgb8();
    let node = model.graph().node(model.graph().find("conv2d").unwrap());
    let local = feature_grid(
        conv,
        &GridOptions {
            select: Select::TopK(4),
            colormap: Some(layerlens::viz::Colormap::Viridis),
            activation: node.op.final_activation(),
            title: Some(format!("conv2d {}", node.shape)),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(served, local);

    // The CAM explains the library's class, by its Fashion-MNIST name.
    let (status, c) = get_json(addr, "/api/cam?node=conv2d_1&input=1&method=Grad-CAM");
    assert_eq!(status, 200, "{c}");
    let lib = cam(
        &model,
        &x1,
        &CamOptions::new(CamMethod::GradCam, "conv2d_1"),
    )
    .unwrap();
    assert_eq!(c["class"].as_u64().unwrap() as usize, lib[0].class);
    assert_eq!(c["class_name"], FASHION_CLASSES[lib[0].class]);
    assert_eq!(c["method"], "Grad-CAM");
    let (status, ct, _) = request(
        addr,
        "GET",
        "/api/cam.png?node=conv2d_1&input=1&method=gradcam",
    );
    assert_eq!((status, ct.as_str()), (200, "image/png"));

    // Bad requests: clear errors, right statuses.
    for (path, status, says) in [
        ("/api/stats?node=conv2x", 404, "conv2d"),
        (
            "/api/stats?node=conv2d&input=7",
            404,
            "input 7 does not exist (2 inputs)",
        ),
        ("/api/stats", 400, "missing query parameter 'node'"),
        ("/api/grid.png?node=dense", 400, "needs a (C, H, W) node"),
        (
            "/api/grid.png?node=conv2d&cmap=jet",
            400,
            "unknown colormap 'jet'",
        ),
        ("/api/cam?node=dense", 400, "a CAM needs a (C, H, W) layer"),
        (
            "/api/cam?node=conv2d&method=gradcam3",
            400,
            "unknown CAM method",
        ),
        ("/assets/../Cargo.toml", 400, "path traversal refused"),
        ("/assets/nothing.js", 404, "no asset 'nothing.js'"),
        ("/nowhere", 404, "no page '/nowhere'"),
    ] {
        let (got, body) = get_json(addr, path);
        let msg = body["error"].as_str().unwrap();
        assert_eq!(got, status, "{path}: {msg}");
        assert!(msg.contains(says), "{path}: {msg}");
    }
    let (status, _, _) = request(addr, "POST", "/api/graph");
    assert_eq!(status, 400);
    let (status, ct, js) = request(addr, "GET", "/assets/explorer.js");
    assert_eq!(
        (status, ct.as_str()),
        (200, "text/javascript; charset=utf-8")
    );
    assert!(String::from_utf8(js).unwrap().contains("LAYERLENS_STATIC"));
}
