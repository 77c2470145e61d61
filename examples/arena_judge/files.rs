//! Writing files so that a crash never leaves a half-written one: atomic replacement, and
//! directory syncs after a rename or a new entry.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Replaces `path` with what `write` produces, atomically.
///
/// The content goes to a temporary file in the same directory (`.<name>.XXXXXX.tmp`), which is
/// flushed, fsynced and then renamed over `path`; the directory is fsynced afterwards (best
/// effort). If `write` or any step fails, the temporary file is removed and `path` keeps its
/// old content. The new file gets the old file's permissions, or `0644` on Unix.
///
/// # Errors
/// The error of `write`, or an I/O error creating, writing, syncing or renaming the file.
pub fn write_atomically<F>(path: &Path, write: F) -> anyhow::Result<()>
where
    F: FnOnce(&mut dyn Write) -> anyhow::Result<()>,
{
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?
        .to_string_lossy()
        .into_owned();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    {
        let mut w = BufWriter::new(tmp.as_file_mut());
        write(&mut w).with_context(|| format!("writing {} failed", path.display()))?;
        w.flush()
            .with_context(|| format!("writing {} failed", path.display()))?;
    }
    let permissions = match fs::metadata(path) {
        Ok(m) => Some(m.permissions()),
        Err(_) => default_permissions(),
    };
    if let Some(perm) = permissions {
        tmp.as_file()
            .set_permissions(perm)
            .with_context(|| format!("cannot set permissions of {}", tmp.path().display()))?;
    }
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("cannot fsync {}", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot rename the temporary file to {}", path.display()))?;
    sync_dir(&dir);
    Ok(())
}

#[cfg(unix)]
fn default_permissions() -> Option<fs::Permissions> {
    use std::os::unix::fs::PermissionsExt;
    Some(fs::Permissions::from_mode(0o644))
}

#[cfg(not(unix))]
fn default_permissions() -> Option<fs::Permissions> {
    None
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Fsyncs a directory so a rename or a new entry in it survives a crash. Best effort: some
/// platforms and file systems do not support it.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
