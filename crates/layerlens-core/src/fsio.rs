//! Output files and directories: atomic writes that follow the umask, and an
//! exclusive lock on an output directory.
//!
//! Every file layerlens writes (saved models, checkpoints, extracted
//! activations, shards, pictures, reports) goes through [`write_atomic`] or
//! [`write_atomic_with`]: the bytes go to `PATH.tmp`, which is synced and then
//! renamed over `PATH` (and the directory synced), so a reader never sees a
//! partial file under `PATH`. The file gets the mode a file made by `open(2)`
//! gets (`0666` less the umask: `0644` under umask `022`), also when a
//! third-party writer (safetensors' temporary files are `0600`) made it.
//!
//! [`DirLock`] takes an exclusive `flock(2)` on [`LOCK_FILE`] inside a
//! directory, so two jobs writing into one directory cannot interleave; the
//! kernel drops the lock when the process dies, even by `SIGKILL`.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The name of the lock file [`DirLock`] keeps inside a locked directory.
pub const LOCK_FILE: &str = ".layerlens.lock";

/// The temporary name of `path` while it is being written: `PATH.tmp`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Writes `path` atomically: `fill` writes the bytes into `PATH.tmp` (a new
/// file with the umask's mode), which is flushed, synced and renamed into
/// place. On error the temporary file is removed and `path` is untouched.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = tmp_path(path);
    let r = (|| {
        let mut w = BufWriter::new(File::create(&tmp)?);
        fill(&mut w)?;
        w.flush()?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        rename_synced(&tmp, path)
    })();
    r.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Writes `path` atomically through a writer that takes a path: `write` is
/// given `PATH.tmp` and may create or replace that file however it likes
/// (safetensors, image encoders); the result then gets the mode a normal new
/// file gets under the current umask, is synced and renamed into place. On
/// error the temporary file is removed and `path` is untouched.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = tmp_path(path);
    let r = (|| {
        // Created here, by open(2), the file has the umask's mode: that is the
        // mode to keep if `write` replaces it with a 0600 temporary file.
        let mode = File::create(&tmp)
            .and_then(|f| f.metadata())
            .map_err(|e| Error::io(&tmp, e))?
            .permissions();
        write(&tmp)?;
        let io = || -> std::io::Result<()> {
            std::fs::set_permissions(&tmp, mode)?;
            File::open(&tmp)?.sync_all()?;
            rename_synced(&tmp, path)
        };
        io().map_err(|e| Error::io(path, e))
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Renames a synced `tmp` over `path`, then syncs the directory so the
/// rename itself survives a crash.
fn rename_synced(tmp: &Path, path: &Path) -> std::io::Result<()> {
    std::fs::rename(tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Best effort: not every file system lets a directory be synced.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// An exclusive lock on a directory, held until dropped (or the process ends).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock on `dir` (which must exist) without waiting: if another
    /// process holds it, fails at once with an [`Error::InvalidArgument`] for
    /// `job` that names the directory. The lock file stays in the directory
    /// (empty) after the lock is released.
    pub fn acquire(dir: &Path, job: &str) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a file descriptor owned by `file`, open for the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    return Err(Error::invalid(
                        job,
                        format!(
                            "{} is in use by another {job} (it holds {}): wait for it to finish, or choose another output directory",
                            dir.display(),
                            path.display()
                        ),
                    ));
                }
                return Err(Error::io(&path, e));
            }
        }
        Ok(DirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("layerlens-fsio-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn failed_writes_leave_neither_file_nor_temporary() {
        let d = scratch("fail");
        let p = d.join("a.bin");
        std::fs::write(&p, b"old").unwrap();
        let e = write_atomic(&p, |w| {
            w.write_all(b"new")?;
            Err(std::io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("disk on fire"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert!(!tmp_path(&p).exists());
        let e = write_atomic_with(&p, |_| Err(Error::invalid("x", "no"))).unwrap_err();
        assert_eq!(e.to_string(), "x: no");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert!(!tmp_path(&p).exists());
        write_atomic(&p, |w| w.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_second_lock_on_a_directory_fails_until_the_first_is_dropped() {
        let d = scratch("lock");
        let first = DirLock::acquire(&d, "extract").unwrap();
        assert_eq!(first.path(), d.join(LOCK_FILE));
        // flock locks belong to the open file: a second open in the same
        // process conflicts like another process would.
        let e = DirLock::acquire(&d, "extract").unwrap_err().to_string();
        assert!(
            e.starts_with("extract: ") && e.contains("in use by another extract"),
            "{e}"
        );
        drop(first);
        DirLock::acquire(&d, "extract").unwrap();
        std::fs::remove_dir_all(d).unwrap();
    }
}
