//! `layerlens extract` over directories: shards, manifest, `--resume` after a
//! SIGKILL, `--shard K/N`, unreadable images, the three formats. Each test runs
//! the real binary on real Fashion-MNIST images written as PNG files.

mod common;

use common::{fashion_picture, layerlens, s, scratch};
use layerlens::candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The first `n` embedded Fashion-MNIST test images as 28x28 PNGs in one
/// sub-folder per class, plus `bad.png`, a file that is not an image.
fn image_dir(root: &Path, n: usize) -> PathBuf {
    let dir = root.join("images");
    let d = layerlens::data::embedded_fashion_mnist(layerlens::data::Split::Test).unwrap();
    let count = d.labels.len();
    for i in 0..n {
        let class =
            layerlens::data::FASHION_CLASSES[d.labels[i % count] as usize].replace('/', "-");
        let sub = dir.join(class);
        std::fs::create_dir_all(&sub).unwrap();
        fashion_picture(&d, i % count)
            .save(sub.join(format!("{i:05}.png")))
            .unwrap();
    }
    std::fs::write(dir.join("bad.png"), b"this is not a PNG").unwrap();
    dir
}

fn extract_args<'a>(input: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "extract",
        "zoo:seed_cnn",
        "--input",
        s(input),
        "--layers",
        "conv2d,conv2d_1",
        "--batch",
        "4",
        "--shard-rows",
        "8",
        "--out",
        s(out),
    ];
    v.extend_from_slice(extra);
    v
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    err
}

/// Every file in a directory: name -> bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// Two directories hold the same files, byte for byte (a resumed run must
/// write exactly what an uninterrupted one does).
fn same_files(a: &Path, b: &Path) {
    let (fa, fb) = (files(a), files(b));
    assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
    for (name, bytes) in &fa {
        assert!(&fb[name] == bytes, "{name} differs");
    }
}

fn manifest(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("manifest.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn count_indexes(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    n.starts_with("shard-") && n.ends_with(".json")
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn sigkill_halfway_then_resume_gives_identical_output() {
    let root = scratch("resume");
    let n = 1200;
    let input = image_dir(&root, n);
    let shards = (n + 1).div_ceil(8); // + bad.png

    let full = root.join("full");
    let err = ok(&layerlens(&extract_args(&input, &full, &[])));
    assert!(err.contains("skipped 1 unreadable image(s)"), "{err}");
    assert!(err.contains("bad.png"), "{err}");
    assert_eq!(count_indexes(&full), shards);

    // The same run, killed (SIGKILL) once about half of the shards are written.
    let killed = root.join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_layerlens"))
        .args(extract_args(&input, &killed, &[]))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while count_indexes(&killed) < shards / 2 {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no progress in 5 minutes"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    let done = count_indexes(&killed);
    assert!(
        !killed.join("manifest.jsonl").exists() && done < shards,
        "the run finished ({done} of {shards} shards) before it could be killed"
    );
    let before = files(&killed);
    let kept_time: BTreeMap<String, std::time::SystemTime> = before
        .keys()
        .filter(|n| n.starts_with("shard-"))
        .map(|n| {
            let t = std::fs::metadata(killed.join(n))
                .unwrap()
                .modified()
                .unwrap();
            (n.clone(), t)
        })
        .collect();

    // Without --resume the directory is refused, and left alone.
    let refused = layerlens(&extract_args(&input, &killed, &[]));
    assert!(!refused.status.success());
    let e = String::from_utf8_lossy(&refused.stderr);
    assert!(
        e.contains("--resume") && e.trim_end().lines().count() == 1,
        "{e}"
    );
    // A resume with other settings is refused, naming the difference.
    let mut other = extract_args(&input, &killed, &["--resume"]);
    other[5] = "conv2d";
    let refused = layerlens(&other);
    assert!(!refused.status.success());
    let e = String::from_utf8_lossy(&refused.stderr);
    assert!(
        e.contains("layers was 'conv2d,conv2d_1', now 'conv2d'"),
        "{e}"
    );

    let err = ok(&layerlens(&extract_args(&input, &killed, &["--resume"])));
    assert!(err.contains("kept from the earlier run"), "{err}");
    same_files(&full, &killed);
    // Complete shards were not redone.
    for (name, t) in kept_time {
        if before.contains_key(&name) && !name.ends_with(".tmp") {
            let now = std::fs::metadata(killed.join(&name))
                .unwrap()
                .modified()
                .unwrap();
            assert_eq!(now, t, "{name} was rewritten");
        }
    }

    // The manifest: every input once, in order, with its shard and row.
    let m = manifest(&full);
    assert_eq!(m.len(), n + 1);
    let bad: Vec<_> = m.iter().filter(|l| l.get("skipped").is_some()).collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0]["path"], "bad.png");
    let first = m.iter().find(|l| l.get("row").is_some()).unwrap();
    let shard = first["shard"].as_str().unwrap();
    let row = first["row"].as_u64().unwrap() as usize;
    let t = layerlens::candle_core::safetensors::load(full.join(shard), &Device::Cpu).unwrap();
    // The row holds the activations of the image at `path`: compare with a
    // single-image extraction of that file.
    let img = input.join(first["path"].as_str().unwrap());
    let single = root.join("single.safetensors");
    ok(&layerlens(&[
        "extract",
        "zoo:seed_cnn",
        "--input",
        s(&img),
        "--layers",
        "conv2d,conv2d_1",
        "--out",
        s(&single),
    ]));
    let one = layerlens::candle_core::safetensors::load(&single, &Device::Cpu).unwrap();
    for layer in ["conv2d", "conv2d_1"] {
        let a = t[layer].get(row).unwrap();
        let b = one[layer].get(0).unwrap();
        let diff = max_abs_diff(&a, &b);
        assert!(diff <= 1e-6, "{layer}: {diff}");
    }
    std::fs::remove_dir_all(root).unwrap();
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn parts_split_the_dataset_and_formats_agree() {
    let root = scratch("parts");
    let input = image_dir(&root, 60);
    let full = root.join("full");
    ok(&layerlens(&extract_args(&input, &full, &[])));
    let whole = files(&full);

    // Three parts: disjoint shard files, each identical to the full run's.
    let mut seen = BTreeMap::new();
    let mut paths = Vec::new();
    for k in 1..=3 {
        let part = root.join(format!("part{k}"));
        let shard = format!("{k}/3");
        ok(&layerlens(&extract_args(
            &input,
            &part,
            &["--shard", &shard],
        )));
        for (name, bytes) in files(&part) {
            if name.starts_with("shard-") {
                assert!(
                    whole.get(&name) == Some(&bytes),
                    "{name} of part {k} differs"
                );
                assert!(seen.insert(name, k).is_none(), "two parts wrote one shard");
            }
        }
        paths.extend(
            manifest(&part)
                .iter()
                .map(|l| l["path"].as_str().unwrap().to_string()),
        );
    }
    assert_eq!(
        seen.len(),
        whole.keys().filter(|n| n.starts_with("shard-")).count()
    );
    paths.sort();
    let mut all: Vec<String> = manifest(&full)
        .iter()
        .map(|l| l["path"].as_str().unwrap().to_string())
        .collect();
    all.sort();
    assert_eq!(paths, all);

    // npy (.npz) and parquet shards hold the same numbers as safetensors.
    let st = layerlens::candle_core::safetensors::load(
        full.join("shard-00001.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    // Every format is byte-for-byte reproducible (what --resume relies on).
    for format in ["npy", "parquet"] {
        let (a, b) = (
            root.join(format!("{format}-a")),
            root.join(format!("{format}-b")),
        );
        ok(&layerlens(&extract_args(&input, &a, &["--format", format])));
        ok(&layerlens(&extract_args(&input, &b, &["--format", format])));
        same_files(&a, &b);
    }
    let npy = root.join("npy");
    ok(&layerlens(&extract_args(
        &input,
        &npy,
        &["--format", "npy"],
    )));
    let npz: BTreeMap<String, Tensor> = Tensor::read_npz(npy.join("shard-00001.npz"))
        .unwrap()
        .into_iter()
        .collect();
    for layer in ["conv2d", "conv2d_1"] {
        assert_eq!(npz[layer].dims(), st[layer].dims());
        assert_eq!(max_abs_diff(&npz[layer], &st[layer]), 0.0, "{layer}");
    }

    let pq = root.join("parquet");
    ok(&layerlens(&extract_args(
        &input,
        &pq,
        &["--format", "parquet"],
    )));
    let rows = read_parquet(&pq.join("shard-00001.parquet"));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(full.join("shard-00001.json")).unwrap()).unwrap();
    let names: Vec<&str> = index["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("row").is_some())
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(rows.len(), names.len());
    assert_eq!(index["rows"].as_u64(), Some(names.len() as u64));
    for (r, (path, layers)) in rows.iter().enumerate() {
        assert_eq!(path, names[r]);
        for (layer, values) in layers {
            let want = st[layer.as_str()]
                .get(r)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(values, &want, "row {r} {layer}");
        }
    }
    std::fs::remove_dir_all(root).unwrap();
}

/// One parquet row: the input's path and each layer's flattened values.
type ParquetRow = (String, Vec<(String, Vec<f32>)>);

/// Rows of a layerlens parquet shard.
fn read_parquet(path: &Path) -> Vec<ParquetRow> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::{Field, ListAccessor};
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for row in reader.get_row_iter(None).unwrap() {
        let row = row.unwrap();
        let mut path = String::new();
        let mut layers = Vec::new();
        for (name, field) in row.get_column_iter() {
            match field {
                Field::Str(s) => path = s.clone(),
                Field::ListInternal(list) => {
                    let v: Vec<f32> = (0..list.len())
                        .map(|i| list.get_float(i).unwrap())
                        .collect();
                    layers.push((name.clone(), v));
                }
                other => panic!("unexpected column {name}: {other:?}"),
            }
        }
        out.push((path, layers));
    }
    out
}

#[test]
fn unreadable_images_and_bad_options_are_clear() {
    let root = scratch("errors");
    let input = image_dir(&root, 10);

    // --strict: one line naming the file, non-zero exit, no manifest.
    let strict = root.join("strict");
    let out = layerlens(&extract_args(&input, &strict, &["--strict"]));
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(
        e.starts_with("error: ") && e.contains("bad.png") && e.contains("--strict"),
        "{e}"
    );
    assert!(!strict.join("manifest.jsonl").exists());

    let file = root.join("x.safetensors");
    let (dir_a, dir_b) = (root.join("a"), root.join("b"));
    let cases: [(Vec<&str>, &str); 4] = [
        (
            extract_args(&input, &dir_a, &["--shard", "0/3"]),
            "'0/3' is not K/N",
        ),
        (
            extract_args(&input, &dir_b, &["--format", "csv"]),
            "unknown format 'csv'",
        ),
        (
            vec![
                "extract",
                "zoo:seed_cnn",
                "--input",
                s(&input),
                "--layers",
                "conv2d",
                "--out",
                s(&file),
            ],
            "is a directory",
        ),
        (
            vec![
                "extract",
                "zoo:seed_cnn",
                "--input",
                s(&input),
                "--layers",
                "conv2d",
                "--resume",
                "--out",
                s(&file),
            ],
            "--resume is for a directory of shards",
        ),
    ];
    for (args, needle) in cases {
        let out = layerlens(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
        assert!(e.contains(needle), "{args:?}: {e}");
    }
    assert!(!file.exists());
    std::fs::remove_dir_all(root).unwrap();
}

/// `sh -c 'umask MASK; exec layerlens ARGS'`, so the binary runs under a known umask.
fn under_umask(mask: &str, args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("umask {mask}; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_layerlens"))
        .args(args);
    c
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_second_job_on_the_same_directory_fails_at_once_and_resume_after_sigkill_works() {
    let root = scratch("lock");
    let input = image_dir(&root, 1200);
    let out = root.join("feats");
    let args = extract_args(&input, &out, &["--jobs", "1"]);

    // Job A, under umask 022, holds the directory's lock while it runs.
    let mut a = under_umask("022", &args)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while count_indexes(&out) < 1 {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "A made no progress"
        );
        assert!(a.try_wait().unwrap().is_none(), "A exited early");
        std::thread::sleep(Duration::from_millis(2));
    }
    // Job B on the same directory (with --resume, so only the lock stops it).
    let t = Instant::now();
    let b = layerlens(&extract_args(&input, &out, &["--resume"]));
    let waited = t.elapsed();
    assert!(
        a.try_wait().unwrap().is_none(),
        "A finished before B ran: the test needs a slower A"
    );
    assert!(!b.status.success());
    let e = String::from_utf8_lossy(&b.stderr);
    assert!(
        e.contains("is in use by another extract") && e.contains(".layerlens.lock"),
        "{e}"
    );
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(waited < Duration::from_secs(30), "B waited {waited:?}");

    // SIGKILL A: the kernel drops its lock, and --resume finishes the run.
    a.kill().unwrap();
    a.wait().unwrap();
    assert!(
        !out.join("manifest.jsonl").exists(),
        "A finished before the kill"
    );
    // What a kill inside a shard write leaves: layerlens' `NAME.tmp` and the
    // safetensors writer's own `.tmpXXXXXX` sibling. --resume removes both
    // (whether this run's kill left them or not).
    std::fs::write(out.join("shard-99999.safetensors.tmp"), b"partial").unwrap();
    std::fs::write(out.join(".tmpAbC123"), b"partial").unwrap();
    let resumed = under_umask("022", &extract_args(&input, &out, &["--resume"]))
        .output()
        .unwrap();
    let err = ok(&resumed);
    assert!(err.contains("kept from the earlier run"), "{err}");
    assert!(out.join("manifest.jsonl").is_file());
    assert!(!out.join("shard-99999.safetensors.tmp").exists());
    assert!(!out.join(".tmpAbC123").exists());

    // Every output file follows the umask: 0644 under 022 (safetensors' own
    // temporary files are 0600), whether A or the resumed job wrote it.
    for name in files(&out).keys() {
        assert_eq!(mode(&out.join(name)), 0o644, "{name}");
    }
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn single_output_files_follow_the_umask() {
    let root = scratch("umask");
    for (mask, want) in [("022", 0o644), ("027", 0o640), ("002", 0o664)] {
        for ext in ["safetensors", "npz", "parquet"] {
            let out = root.join(format!("feats-{mask}.{ext}"));
            let r = under_umask(
                mask,
                &[
                    "extract",
                    "zoo:seed_cnn",
                    "--input",
                    "embedded:fashion-mnist-test",
                    "--layers",
                    "conv2d",
                    "--out",
                    s(&out),
                ],
            )
            .output()
            .unwrap();
            ok(&r);
            assert_eq!(mode(&out), want, "{} under umask {mask}", out.display());
        }
    }
    std::fs::remove_dir_all(root).unwrap();
}
