//! The HTML report opens in headless Chromium (Debian `chromium`, installed by
//! scripts/install-chromium.sh) with no console messages, renders, and holds
//! every picture inline.

use layerlens::data::{embedded_fashion_mnist, Split};
use layerlens::viz::cam::{to_rgb_image, CamMethod, CamOptions};
use layerlens::viz::report::{html_report, ReportOptions};
use std::process::Command;

#[test]
fn the_report_is_self_contained_and_opens_cleanly_in_headless_chromium() {
    let model = layerlens::zoo::seed_cnn(false).unwrap();
    let x = embedded_fashion_mnist(Split::Test)
        .unwrap()
        .images
        .narrow(0, 0, 1)
        .unwrap();
    let opts = ReportOptions {
        title: "seed CNN on a Fashion-MNIST ankle boot".into(),
        cam: Some(CamOptions::new(CamMethod::GradCam, "conv2d_1")),
        ..Default::default()
    };
    let small = to_rgb_image(&x).unwrap();
    let html = html_report(&model, &x, Some(&small), &opts).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("<script"),
        "nothing external, no script"
    );
    assert_eq!(
        html.matches("<img ").count(),
        2 + 2 * 4,
        "input, CAM, and a grid and a histogram per layer"
    );
    assert!(html.contains("conv2d_1") && html.contains("dead channels"));

    let dir = std::env::temp_dir().join(format!("layerlens-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("report.html");
    std::fs::write(&page, &html).unwrap();
    let shot = dir.join("report.png");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,2400",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium is missing: run scripts/install-chromium.sh (scripts/test.sh does it for you)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed: {stderr}");
    let console: Vec<&str> = stderr.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    let png = image::open(&shot).unwrap().to_rgb8();
    assert_eq!(png.dimensions(), (1280, 2400));
    // Something was drawn: not a blank page.
    let distinct: std::collections::HashSet<[u8; 3]> =
        png.pixels().step_by(97).map(|p| p.0).collect();
    assert!(
        distinct.len() > 50,
        "the screenshot is nearly blank ({} colours)",
        distinct.len()
    );
    if let Ok(keep) = std::env::var("LAYERLENS_REPORT_SHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
    std::fs::remove_dir_all(dir).unwrap();
}
