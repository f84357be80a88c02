//! Saved files get the mode a normal new file gets under the umask (0644
//! under 022), although candle's safetensors writer makes 0600 temporary
//! files; and an interrupted write leaves no temporary file. One test in its
//! own binary, since the umask is per process.

use layerlens_core::fsio::{tmp_path, write_atomic, write_atomic_with};
use layerlens_core::prelude::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn saved_files_follow_the_umask() {
    let dir = std::env::temp_dir().join(format!("layerlens-modes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let model = Sequential::new("m", [1, 4, 4])
        .add(Conv2d::new(2, 3))
        .unwrap()
        .build()
        .unwrap();
    // SAFETY: umask only sets this process's file-creation mask; this binary
    // runs this one test.
    let old = unsafe { libc::umask(0o022) };
    for (mask, want) in [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)] {
        unsafe { libc::umask(mask) };
        let saved = dir.join(format!("model-{mask:o}"));
        model.save(&saved).unwrap();
        for f in ["model.json", "model.safetensors"] {
            assert_eq!(mode(&saved.join(f)), want, "{f} under umask {mask:o}");
        }
        let plain = dir.join(format!("plain-{mask:o}.bin"));
        write_atomic(&plain, |w| std::io::Write::write_all(w, b"x")).unwrap();
        assert_eq!(mode(&plain), want);
        // A writer that replaces the temporary file with a 0600 one of its own.
        let other = dir.join(format!("other-{mask:o}.bin"));
        write_atomic_with(&other, |tmp| {
            let t = dir.join("private");
            std::fs::write(&t, b"y").unwrap();
            std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::fs::rename(&t, tmp).map_err(|e| layerlens_core::Error::Io {
                path: tmp.display().to_string(),
                source: e,
            })
        })
        .unwrap();
        assert_eq!(mode(&other), want);
        assert!(!tmp_path(&other).exists());
    }
    unsafe { libc::umask(old) };
    std::fs::remove_dir_all(dir).unwrap();
}
