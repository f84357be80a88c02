//! `layerlens explore` in a real browser: tests/browser/explore.test.mjs
//! (Playwright's playwright-core driving Debian's /usr/bin/chromium, both
//! installed by scripts/install-*.sh) against the real server, started from
//! this crate's release binary, inside a loopback-only network namespace.
//! This test computes what the page must show with the library — the node's
//! statistics, its tile count, the top class name — and writes the static
//! export the script opens offline.

mod common;

use common::asset;
use layerlens::viz::stats::layer_stats;
use std::path::Path;
use std::process::Command;

const NODE: &str = "_blocks.15";

#[test]
fn the_explorer_works_in_chromium_and_its_static_export_opens_offline() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let browser_tests = root.join("tests/browser");
    assert!(
        browser_tests.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run scripts/install-playwright.sh (scripts/test.sh does it for you)"
    );
    let model_spec = format!(
        "zoo:efficientnet_lite0={}",
        asset("efficientnet-lite0.pth").display()
    );
    let inputs = [asset("chelsea.png"), asset("coffee.png")];

    // What the page must show, from the library.
    let model = layerlens::spec::open_model(&model_spec).unwrap();
    let preset = layerlens::spec::Preset::EfficientNetLite;
    // `all` names nodes; the block's name is an alias of its output node.
    let block_output = model
        .graph()
        .node(model.graph().find(NODE).unwrap())
        .name
        .clone();
    let mut stats = Vec::new();
    let mut top_class = None;
    for (i, p) in inputs.iter().enumerate() {
        let (x, _) = layerlens::spec::load_picture(p, &model, preset).unwrap();
        // The server's one forward pass is the plan for `all`; the same plan
        // here, so the numbers must agree to the last bit of an f32 (a plan
        // for fewer nodes may fuse differently and round differently).
        let acts = model.extract(&x, &["all"]).unwrap();
        let s = layer_stats(acts.get(&block_output).unwrap()).unwrap();
        stats.push(serde_json::json!({
            "mean": s.mean, "std": s.std, "min": s.min, "max": s.max,
            "zero_fraction": s.zero_fraction, "dead_channels": s.dead_channels,
        }));
        if i == 0 {
            let best = layerlens::preprocess::top_k(acts.get("_fc").unwrap(), 1).unwrap()[0].0;
            top_class = Some(layerlens::preprocess::imagenet_classes()[best].to_string());
        }
    }
    let channels = model
        .graph()
        .node(model.graph().find(NODE).unwrap())
        .shape
        .dims()[0];
    let expected = serde_json::json!({
        "stats": stats,
        "tiles": channels.min(16),
        "class_name": top_class.unwrap(),
    });

    let dir = std::env::temp_dir().join(format!("layerlens-explore-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let expected_path = dir.join("expected.json");
    std::fs::write(&expected_path, expected.to_string()).unwrap();
    let static_path = dir.join("explorer.html");
    let bin = env!("CARGO_BIN_EXE_layerlens");
    let out = Command::new(bin)
        .args(["explore", &model_spec])
        .arg("--input")
        .arg(&inputs[0])
        .arg("--input")
        .arg(&inputs[1])
        .args(["--nodes", "_blocks.3,_blocks.15,_conv_head"])
        .arg("--static")
        .arg(&static_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "static export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let joined = format!("{}:{}", inputs[0].display(), inputs[1].display());
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-n",
        "sh",
        "-c",
        "ip link set lo up && exec node explore.test.mjs",
    ])
    .current_dir(&browser_tests)
    .env("LAYERLENS_BIN", bin)
    .env("LAYERLENS_MODEL", &model_spec)
    .env("LAYERLENS_INPUTS", joined)
    .env("LAYERLENS_EXPECTED", &expected_path)
    .env("LAYERLENS_STATIC", &static_path)
    .env("LAYERLENS_NODE", NODE)
    .env("HOME", &dir);
    if let Ok(shots) = std::env::var("LAYERLENS_EXPLORER_SHOTS") {
        cmd.env("LAYERLENS_SHOTS", shots);
    }
    let run = cmd
        .output()
        .expect("unshare or node is missing (scripts/install-playwright.sh installs node)");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success() && stdout.contains("explore.test: ok"),
        "the browser test failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    eprintln!("{stdout}");
    std::fs::remove_dir_all(dir).unwrap();
}
