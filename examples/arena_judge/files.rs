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

/// The file a submission for `--out out` is written to, checked before any work: `out`
/// itself, or the file a symlink at `out` points to (the link stays a link). Refuses an `out`
/// that is a directory, a device or anything else but a regular file, whose directory does not
/// exist, or that is the input file `data`.
///
/// # Errors
/// Any of the above, naming the path.
pub fn output_path(out: &Path, data: &Path) -> anyhow::Result<PathBuf> {
    let real = match fs::symlink_metadata(out) {
        Ok(m) if m.file_type().is_symlink() => match fs::canonicalize(out) {
            Ok(target) => target,
            // A dangling link: write the file it names.
            Err(_) => {
                let target = fs::read_link(out)
                    .with_context(|| format!("cannot read the link {}", out.display()))?;
                parent_dir(out).join(target)
            }
        },
        _ => out.to_path_buf(),
    };
    match fs::metadata(&real) {
        Ok(m) => anyhow::ensure!(
            m.is_file(),
            "--out {} is not a regular file (a directory, device or socket): refusing to replace it",
            out.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = parent_dir(&real);
            anyhow::ensure!(
                dir.is_dir(),
                "--out {}: the directory {} does not exist",
                out.display(),
                dir.display()
            );
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot inspect --out {}", out.display()))
        }
    }
    if let (Ok(a), Ok(b)) = (fs::canonicalize(&real), fs::canonicalize(data)) {
        anyhow::ensure!(
            a != b,
            "--out {} is the input file {}: refusing to overwrite the data",
            out.display(),
            data.display()
        );
    }
    Ok(real)
}

/// A 64-bit FNV-1a hash of a file's bytes, in hex: enough to tell two data files apart (not a
/// cryptographic hash).
///
/// # Errors
/// The file cannot be read.
pub fn content_hash(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(format!("{hash:016x}"))
}

/// A model's identity for checkpoints: its path, and the size and modification time of the
/// file (or of every file of the directory).
///
/// # Errors
/// The path cannot be read.
pub fn model_identity(path: &Path) -> anyhow::Result<String> {
    let describe = |p: &Path| -> anyhow::Result<String> {
        let m = fs::metadata(p).with_context(|| format!("cannot inspect {}", p.display()))?;
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        Ok(format!(
            "{}:{}:{mtime}",
            p.file_name().unwrap_or_default().to_string_lossy(),
            m.len()
        ))
    };
    let canonical = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut parts = vec![canonical.display().to_string()];
    if path.is_dir() {
        let mut files: Vec<PathBuf> = fs::read_dir(path)
            .with_context(|| format!("cannot list {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for f in files {
            parts.push(describe(&f)?);
        }
    } else {
        parts.push(describe(path)?);
    }
    Ok(parts.join(" "))
}
