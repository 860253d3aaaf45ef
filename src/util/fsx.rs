//! Durable file writes and exclusive locks.
//!
//! Every result and checkpoint file is written to a temporary sibling, fsynced, renamed into
//! place, and its directory fsynced, so neither a killed run nor a power loss leaves a
//! half-written or empty file behind. What is already at the destination decides how it is
//! written ([`destination`]): a symlink is followed and its target replaced; an existing
//! character device or FIFO (`/dev/null`, `/dev/stdout`, a pipe) is written into directly;
//! any other file that is not a regular file (a directory, a socket, a block device) is
//! refused. Nothing but a regular file is ever replaced.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// How a write to a path reaches the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A regular file (or nothing yet) at this path: write a temporary sibling and rename it.
    Replace(PathBuf),
    /// An existing character device or FIFO: write into it directly (it cannot be renamed
    /// over, and a rename would destroy it).
    Stream(PathBuf),
}

/// Symlink hops followed before giving up (Linux's own limit is 40).
const MAX_LINKS: usize = 40;

/// Where a write to `path` must go: symlinks are resolved to their final target (which may
/// not exist yet); an existing non-regular file is streamed into when it is a character
/// device or FIFO, and refused otherwise.
pub fn destination(path: &Path) -> Result<Destination> {
    let mut p = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        let meta = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Destination::Replace(p))
            }
            Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", p.display())),
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(&p)
                .with_context(|| format!("cannot read the symlink {}", p.display()))?;
            p = if target.is_absolute() {
                target
            } else {
                parent_dir(&p).join(target)
            };
            continue;
        }
        if ft.is_file() {
            return Ok(Destination::Replace(p));
        }
        if ft.is_dir() {
            bail!("{} is a directory; give a file path", p.display());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_char_device() || ft.is_fifo() {
                return Ok(Destination::Stream(p));
            }
            let what = if ft.is_socket() {
                "a socket"
            } else if ft.is_block_device() {
                "a block device"
            } else {
                "not a regular file"
            };
            bail!(
                "{} is {what}; elastica writes only regular files, character devices and \
                 FIFOs, and never replaces anything else",
                p.display()
            );
        }
        #[cfg(not(unix))]
        bail!(
            "{} is not a regular file; elastica never replaces one",
            p.display()
        );
    }
    bail!(
        "{}: more than {MAX_LINKS} levels of symlinks (a loop?)",
        path.display()
    )
}

/// Write `bytes` to `path` atomically and durably (see the module doc).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_with(path, |w| {
        w.write_all(bytes)?;
        Ok(())
    })
}

/// Like [`atomic_write`], but the content is produced by `f` writing into a buffered file.
pub fn atomic_write_with<F>(path: &Path, f: F) -> Result<()>
where
    F: FnOnce(&mut std::io::BufWriter<&File>) -> Result<()>,
{
    match destination(path)? {
        Destination::Stream(p) => {
            let file = open_stream(&p)?;
            let mut w = std::io::BufWriter::new(&file);
            f(&mut w).with_context(|| format!("while writing {}", p.display()))?;
            w.flush()
                .with_context(|| format!("while writing {}", p.display()))?;
            Ok(())
        }
        Destination::Replace(p) => {
            let tmp = temp_sibling(&p, "")?;
            {
                let mut w = std::io::BufWriter::new(tmp.as_file());
                f(&mut w).with_context(|| format!("while writing {}", p.display()))?;
                w.flush()
                    .with_context(|| format!("while writing {}", p.display()))?;
            }
            persist(tmp, &p)
        }
    }
}

/// Atomic, durable write for producers that need a file path (a safetensors serializer, an
/// image encoder): `f` writes the whole content to the temporary path it is given, whose
/// name ends in `suffix` (encoders pick the format from the extension). A character device
/// or FIFO destination receives the finished bytes by copy.
pub fn atomic_write_path<F>(path: &Path, suffix: &str, f: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    match destination(path)? {
        Destination::Stream(p) => {
            let tmp = tempfile::Builder::new()
                .prefix(".elastica-")
                .suffix(suffix)
                .tempfile()
                .context("cannot create a temporary file")?;
            f(tmp.path()).with_context(|| format!("while writing {}", p.display()))?;
            let mut src = File::open(tmp.path())
                .with_context(|| format!("cannot read back {}", tmp.path().display()))?;
            let mut dst = open_stream(&p)?;
            std::io::copy(&mut src, &mut dst)
                .with_context(|| format!("while writing {}", p.display()))?;
            dst.flush()
                .with_context(|| format!("while writing {}", p.display()))?;
            Ok(())
        }
        Destination::Replace(p) => {
            let tmp = temp_sibling(&p, suffix)?;
            f(tmp.path()).with_context(|| format!("while writing {}", p.display()))?;
            persist(tmp, &p)
        }
    }
}

/// Serialize `value` as pretty JSON and write it atomically.
pub fn atomic_write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(value)?;
    atomic_write(path, s.as_bytes())
}

/// fsync a directory, so that a rename or removal inside it survives a power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync directory {}", dir.display()))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Rename `from` to `to` (a directory or a file in the same file system) durably: the
/// parent directories are fsynced after the rename.
pub fn durable_rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).with_context(|| {
        format!(
            "cannot move {} into place at {}",
            from.display(),
            to.display()
        )
    })?;
    sync_dir(&parent_dir(to))?;
    let from_parent = parent_dir(from);
    if from_parent != parent_dir(to) {
        sync_dir(&from_parent)?;
    }
    Ok(())
}

/// Take an exclusive advisory lock on `path` (created if missing) without waiting. The lock
/// lasts while the returned file is open and ends when it is dropped or the process dies.
/// `Ok(None)`: another process holds it.
pub fn try_lock(path: &Path) -> Result<Option<File>> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Create the folder `out` and take the lock `out/file`, or refuse while another process
/// holds it; `holder` says who that is and what it does, for the message ("process is
/// training into"). The lock lasts while the returned file is open.
pub fn lock_folder(out: &Path, file: &str, holder: &str) -> Result<File> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create the output directory {}", out.display()))?;
    let lock_path = out.join(file);
    match try_lock(&lock_path)? {
        Some(lock) => Ok(lock),
        None => bail!(
            "another elastica {holder} {} (it holds {}); wait for it to finish or stop it, or \
             give another --out",
            out.display(),
            lock_path.display()
        ),
    }
}

/// Take a shared lock on `path` (created if missing), waiting while someone holds it
/// exclusively (only [`is_locked`]'s probe does, for an instant). Holders of shared locks
/// do not exclude each other; the lock ends when the file is dropped or the process dies.
pub fn lock_shared(path: &Path) -> Result<File> {
    // Read and write: NFS emulates flock with byte-range locks, which need a readable file
    // for a shared lock and a writable one for an exclusive probe.
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    f.lock_shared()
        .with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(f)
}

/// Whether a live process holds a lock (shared or exclusive) on `path`. Reads only: a
/// missing file is not created (it means "not locked"), and a file that cannot be opened
/// counts as not locked. The probe takes the lock for an instant when it is free, so a
/// process starting at that instant must retry (as `grid::cell` does).
pub fn is_locked(path: &Path) -> bool {
    // Writable where allowed: NFS takes an exclusive lock only through a writable file.
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .or_else(|_| File::open(path));
    let Ok(f) = opened else {
        return false;
    };
    matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

fn open_stream(p: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .with_context(|| format!("cannot open {} for writing", p.display()))
}

/// Remove the temporary files (`.tmp-*`, see [`temp_sibling`]) a killed writer left in
/// `dir`. Only for a folder this process owns (its lock held): a live writer's temporary
/// file would go too.
pub fn remove_stale_temps(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let stale = e.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
            && e.file_type().is_ok_and(|t| t.is_file());
        if stale {
            std::fs::remove_file(e.path())
                .with_context(|| format!("cannot remove {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// How the names of [`temp_sibling`]'s files begin.
const TEMP_PREFIX: &str = ".tmp-";

/// A temporary file beside `p` (so the rename stays within one file system).
fn temp_sibling(p: &Path, suffix: &str) -> Result<tempfile::NamedTempFile> {
    let dir = parent_dir(p);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(suffix)
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))
}

/// fsync the finished temporary file, rename it over `p`, fsync the directory.
fn persist(tmp: tempfile::NamedTempFile, p: &Path) -> Result<()> {
    // Temp files are created owner-only (0600); a result file should be readable like any
    // other. Set by path: a producer given only the path may have replaced the inode.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("cannot set permissions of {}", tmp.path().display()))?;
    }
    // Reopen by path, for the same reason.
    File::open(tmp.path())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync the data of {}", p.display()))?;
    tmp.persist(p).with_context(|| {
        format!(
            "cannot move the finished file into place at {}",
            p.display()
        )
    })?;
    sync_dir(&parent_dir(p))
}

/// `path` as the file system resolves it: absolute, links and `.`/`..` resolved as far as it
/// exists, the rest appended; so two spellings of one place (`dir`, `dir/.`, a link to it)
/// compare equal.
pub fn resolved(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            return rest.iter().rev().fold(c, |p, r| p.join(r));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return abs,
        }
    }
}

/// Refuse an output `out` (the flag `flag`) that is one of the command's `inputs` (each its
/// flag and path): writing it would destroy what the command reads.
pub fn refuse_input_as_output(flag: &str, out: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    let o = resolved(out);
    for (input_flag, input) in inputs {
        if resolved(input) == o {
            bail!(
                "{flag} {} is the input {input_flag} {} itself: writing it would destroy the \
                 input; give another {flag}",
                out.display(),
                input.display()
            );
        }
    }
    Ok(())
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A written file is readable by all (0644) even when the producer replaced the
    /// owner-only temporary file with one of its own (as the safetensors serializer does).
    #[cfg(unix)]
    #[test]
    fn written_files_are_readable_by_all() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.txt"), dir.path().join("b.bin"));
        atomic_write(&a, b"x").unwrap();
        atomic_write_path(&b, ".bin", |tmp| {
            std::fs::remove_file(tmp)?;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(tmp)?;
            f.write_all(b"y")?;
            Ok(())
        })
        .unwrap();
        for p in [&a, &b] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644, "{}", p.display());
        }
    }

    #[cfg(unix)]
    #[test]
    fn an_input_is_found_under_any_spelling_of_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        std::fs::create_dir(&model).unwrap();
        let file = model.join("x.jsonl");
        std::fs::write(&file, "{}").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&model, &link).unwrap();
        for out in [
            model.clone(),
            model.join("."),
            link.clone(),
            model.join("../model"),
        ] {
            let e = refuse_input_as_output("--out", &out, &[("--model", &model)]).unwrap_err();
            assert!(e.to_string().contains("destroy the input"), "{e}");
        }
        let e = refuse_input_as_output("--out", &link.join("x.jsonl"), &[("--data", &file)]);
        assert!(e.is_err());
        // A new file beside the input, or a directory below it, is not the input.
        for out in [
            model.join("y.jsonl"),
            model.join("run"),
            dir.path().join("new/a"),
        ] {
            refuse_input_as_output("--out", &out, &[("--model", &model), ("--data", &file)])
                .unwrap();
        }
    }

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("a.txt");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let n = std::fs::read_dir(p.parent().unwrap()).unwrap().count();
        assert_eq!(n, 1, "temporary files were left behind");
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_is_followed_and_stays_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real").join("t.txt");
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, b"old").unwrap();
        let link = dir.path().join("link.txt");
        std::os::unix::fs::symlink("real/t.txt", &link).unwrap();
        atomic_write(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        // Through the path-taking writer too.
        atomic_write_path(&link, ".bin", |t| Ok(std::fs::write(t, b"third")?)).unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"third");
        // A dangling link creates its target.
        let dangling = dir.path().join("d.txt");
        std::os::unix::fs::symlink(dir.path().join("new.txt"), &dangling).unwrap();
        atomic_write(&dangling, b"x").unwrap();
        assert_eq!(std::fs::read(dir.path().join("new.txt")).unwrap(), b"x");
        // A loop is an error, not a hang.
        let a = dir.path().join("loop-a");
        let b = dir.path().join("loop-b");
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let e = format!("{:#}", atomic_write(&a, b"x").unwrap_err());
        assert!(e.contains("symlinks"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_written_into_and_stays_a_fifo() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let st = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(st.success());
        for path_writer in [false, true] {
            let reader = {
                let fifo = fifo.clone();
                std::thread::spawn(move || std::fs::read(&fifo).unwrap())
            };
            if path_writer {
                atomic_write_path(&fifo, ".png", |t| Ok(std::fs::write(t, b"by path")?)).unwrap();
            } else {
                atomic_write(&fifo, b"through the pipe").unwrap();
            }
            let got = reader.join().unwrap();
            let want: &[u8] = if path_writer {
                b"by path"
            } else {
                b"through the pipe"
            };
            assert_eq!(got, want);
            let ft = std::fs::symlink_metadata(&fifo).unwrap().file_type();
            assert!(ft.is_fifo(), "the FIFO was replaced");
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file is left beside a FIFO"
        );
    }

    #[cfg(unix)]
    #[test]
    fn dev_null_is_written_into_not_replaced() {
        use std::os::unix::fs::FileTypeExt;
        // Only a write into /dev/null (harmless) and a read-only check that it is still a
        // character device: the test must never be able to replace it.
        let dev_null = Path::new("/dev/null");
        assert_eq!(
            destination(dev_null).unwrap(),
            Destination::Stream(dev_null.into())
        );
        atomic_write(dev_null, b"discarded").unwrap();
        assert!(std::fs::metadata(dev_null)
            .unwrap()
            .file_type()
            .is_char_device());
    }

    #[cfg(unix)]
    #[test]
    fn directories_and_sockets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("d");
        std::fs::create_dir(&sub).unwrap();
        let e = format!("{:#}", atomic_write(&sub, b"x").unwrap_err());
        assert!(e.contains("is a directory"), "{e}");
        assert!(sub.is_dir());
        let sock = dir.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let e = format!("{:#}", atomic_write(&sock, b"x").unwrap_err());
        assert!(e.contains("a socket") && e.contains("s.sock"), "{e}");
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&sock)
            .unwrap()
            .file_type()
            .is_socket());
    }

    #[test]
    fn a_lock_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let held = try_lock(&p).unwrap();
        assert!(held.is_some());
        assert!(try_lock(&p).unwrap().is_none(), "a second lock was granted");
        drop(held);
        assert!(try_lock(&p).unwrap().is_some());
    }

    #[test]
    fn is_locked_sees_shared_and_exclusive_holders_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        assert!(!is_locked(&p));
        assert!(!p.exists(), "the probe created the lock file");
        let shared = lock_shared(&p).unwrap();
        let again = lock_shared(&p).unwrap();
        assert!(is_locked(&p));
        drop((shared, again));
        assert!(!is_locked(&p));
        let held = try_lock(&p).unwrap().unwrap();
        assert!(is_locked(&p));
        drop(held);
        assert!(!is_locked(&p));
    }
}
