//! `layerlens extract` into a directory when a shard write runs out of room:
//! one clear line, a non-zero exit, no final-named file that is truncated, and
//! `--resume` (with room again) finishes with the same files as a run that was
//! never interrupted.
//!
//! Two ways of running out: `RLIMIT_FSIZE` set in the child (SIGXFSZ
//! ignored, so `write(2)` fails with EFBIG instead of killing it; no
//! privileges needed), and, where the test runs as root and may mount, a small
//! tmpfs that fills up (ENOSPC).

#![cfg(target_os = "linux")]

mod common;

use common::{fashion_picture, layerlens, s, scratch};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Bytes of one row: seed CNN conv2d (32x26x26) and conv2d_1 (64x11x11), float32.
const ROW_BYTES: u64 = (32 * 26 * 26 + 64 * 11 * 11) * 4;

/// 3 unreadable files first (sorted before the images), then `n` images: with
/// 4 inputs per shard, shard 0 has 1 row and every later shard 4.
fn inputs(root: &Path, n: usize) -> PathBuf {
    let dir = root.join("images");
    std::fs::create_dir_all(&dir).unwrap();
    let d = layerlens::data::embedded_fashion_mnist(layerlens::data::Split::Test).unwrap();
    for i in 0..3 {
        std::fs::write(dir.join(format!("0-bad-{i}.png")), b"not a PNG").unwrap();
    }
    for i in 0..n {
        fashion_picture(&d, i)
            .save(dir.join(format!("1-{i:03}.png")))
            .unwrap();
    }
    dir
}

fn args<'a>(input: &'a Path, out: &'a Path, resume: bool) -> Vec<&'a str> {
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
        "4",
        "--out",
        s(out),
    ];
    if resume {
        v.push("--resume");
    }
    v
}

/// The CLI with every file it writes limited to `limit` bytes.
fn with_file_size_limit(a: &[&str], limit: u64) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_layerlens"));
    cmd.args(a);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR {
                return Err(std::io::Error::last_os_error());
            }
            let lim = libc::rlimit {
                rlim_cur: limit as libc::rlim_t,
                rlim_max: limit as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().unwrap()
}

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

/// What a failed run may leave: complete shards (a `.safetensors` whose
/// `.json` index exists and which loads whole), `run.json`, the lock file.
/// Never a manifest, never an index without its shard, never a final-named
/// shard that does not load.
fn check_nothing_complete_looking(dir: &Path) -> usize {
    let mut complete = 0;
    for (name, bytes) in files(dir) {
        if name == "run.json" || name == ".layerlens.lock" {
            continue;
        }
        assert!(name != "manifest.jsonl", "a failed run wrote the manifest");
        if let Some(stem) = name.strip_suffix(".json") {
            let shard = dir.join(format!("{stem}.safetensors"));
            assert!(shard.is_file(), "{name} without its shard");
            continue;
        }
        if let Some(stem) = name.strip_suffix(".safetensors") {
            assert!(
                dir.join(format!("{stem}.json")).is_file(),
                "{name}: a shard without its index"
            );
            let t = safetensors::SafeTensors::deserialize(&bytes)
                .unwrap_or_else(|e| panic!("{name} is final-named but truncated: {e}"));
            assert_eq!(t.len(), 2, "{name}");
            complete += 1;
            continue;
        }
        panic!("a failed run left {name}");
    }
    complete
}

/// Runs out of room with `fill` (which returns the failed run's output and
/// the directory it wrote to), checks what is left, gives the room back with
/// `make_room`, resumes, and compares with an uninterrupted run.
fn scenario(root: &Path, fill: impl FnOnce(&Path) -> (Output, PathBuf), make_room: impl FnOnce()) {
    let input = inputs(root, 13); // shards: 1 row, then 4, 4, 4
    let full = root.join("full");
    let run = layerlens(&args(&input, &full, false));
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let (run, out) = fill(&input);
    let err = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(!run.status.success(), "the run did not fail:\n{err}");
    let last = err
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(last.starts_with("error: "), "{err}");
    assert!(
        last.contains("shard-00001") && last.contains("--resume"),
        "the error does not say which file and what to do: {last}"
    );
    // Every other line is a warning about the unreadable inputs.
    let others: Vec<&str> = err
        .trim_end()
        .lines()
        .filter(|l| !l.contains("0-bad-") && !l.trim().is_empty())
        .collect();
    assert_eq!(others, [last.as_str()], "{err}");
    assert_eq!(
        check_nothing_complete_looking(&out),
        1,
        "shard 0 fits and should be complete"
    );

    make_room();
    let resumed = layerlens(&args(&input, &out, true));
    let e = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{e}");
    assert!(e.contains("(1 kept from the earlier run)"), "{e}");
    let (a, b) = (files(&full), files(&out));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, bytes) in &a {
        assert!(
            &b[name] == bytes,
            "{name} differs from the uninterrupted run"
        );
    }
}

#[test]
fn file_size_limit_during_a_shard_write_then_resume() {
    let root = scratch("disk-full-rlimit");
    let out = root.join("limited");
    // Shard 0 (1 row) fits under the limit, shard 1 (4 rows) does not.
    scenario(
        &root,
        |input| {
            let run = with_file_size_limit(&args(input, &out, false), 2 * ROW_BYTES + 4096);
            (run, out.clone())
        },
        || {},
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn full_tmpfs_during_a_shard_write_then_resume() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let root = scratch("disk-full-tmpfs");
    let mnt = root.join("small-fs");
    std::fs::create_dir_all(&mnt).unwrap();
    // Room for shard 0 (1 row), its index and run.json, not for shard 1.
    let size = format!("size={}k", 3 * ROW_BYTES / 1024);
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &size, "tmpfs", s(&mnt)])
        .status()
        .is_ok_and(|st| st.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here");
        std::fs::remove_dir_all(&root).unwrap();
        return;
    }
    let out = mnt.join("feats");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        scenario(
            &root,
            |input| (layerlens(&args(input, &out, false)), out.clone()),
            || {
                let grown = Command::new("mount")
                    .args(["-o", "remount,size=64m", s(&mnt)])
                    .status()
                    .unwrap();
                assert!(grown.success(), "remount");
            },
        )
    }));
    let unmounted = Command::new("umount").arg(&mnt).status().unwrap();
    assert!(unmounted.success(), "umount {}", mnt.display());
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    std::fs::remove_dir_all(&root).unwrap();
}
