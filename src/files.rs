//! Files only this process's user may read: secrets written atomically with mode 0600, and the
//! umask that keeps every other file the daemon creates private too. A leaf: the master key, the
//! SMTP password rotation and the CLI all write secrets through it.

use anyhow::Context;
use std::io::Write;
use std::path::Path;

/// Writes a secret to `path` with mode 0600, atomically (a reader sees the old file or the whole
/// new one, never half).
pub fn write_secret_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    stage_secret_file(path, contents)?.publish()
}

/// A secret written beside `path` (mode 0600) but not yet in its place: staging it first proves
/// the file can be written before the secret is made valid anywhere. Removed if dropped
/// unpublished; kept (and named in the error) if publishing it fails, since the secret may
/// already be in force by then.
pub struct Staged {
    tmp: std::path::PathBuf,
    path: std::path::PathBuf,
    published: bool,
}

/// Writes `contents` beside `path` for `Staged::publish` to put in place.
pub fn stage_secret_file(path: &Path, contents: &str) -> anyhow::Result<Staged> {
    // A name of this attempt's own: another process or thread may be staging the same file.
    static ATTEMPT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = ATTEMPT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    if let Err(e) = write_private(&tmp, contents) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(Staged {
        tmp,
        path: path.to_path_buf(),
        published: false,
    })
}

impl Staged {
    /// Replaces the file at its path with the staged one, durably.
    pub fn publish(mut self) -> anyhow::Result<()> {
        self.published = true;
        std::fs::rename(&self.tmp, &self.path).with_context(|| {
            format!(
                "cannot write {}; the new secret is in {}",
                self.path.display(),
                self.tmp.display()
            )
        })?;
        sync_dir(&self.path)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes a secret to `path` with mode 0600 only if no file is there yet, atomically: of two
/// processes creating it at once, one wins and the other gets `false` (and should read the
/// winner's). Durable once it returns.
pub fn create_secret_file(path: &Path, contents: &str) -> anyhow::Result<bool> {
    let staged = stage_secret_file(path, contents)?;
    // A hard link, unlike a rename, never replaces a file another process published first.
    let published = match std::fs::hard_link(&staged.tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        // A filesystem without hard links: the rename, which closes the race less tightly.
        Err(_) if path.exists() => Ok(false),
        Err(_) => std::fs::rename(&staged.tmp, path).map(|()| true),
    };
    // Removes the staging name (already gone after a rename).
    drop(staged);
    match published {
        Ok(true) => sync_dir(path).map(|()| true),
        Ok(false) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot write {}", path.display())),
    }
}

/// Every file this process creates from now on is its owner's alone (0600; folders 0700),
/// whatever umask it was started with: the database and its journal, the usage logs, the lock,
/// outbox messages (a policy's token may be in one) all hold what no other user should read.
pub fn private_files() {
    #[cfg(unix)]
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// A SQLite store an older version (or another umask) left readable by others: the database
/// and its journal become 0600.
pub fn tighten_sqlite_files(db: &Path) {
    #[cfg(unix)]
    for suffix in ["", "-wal", "-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let path = Path::new(&name);
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                if let Err(e) =
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                {
                    tracing::warn!(path = %path.display(), error = %e, "cannot make the file private");
                }
            }
        }
    }
}

/// Flushes the directory entry of `path`, so a new name survives a power loss.
fn sync_dir(path: &Path) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot flush the directory {}", dir.display()))
}

/// Writes `contents` and a newline to `tmp` with mode 0600 and flushes it.
fn write_private(tmp: &Path, contents: &str) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // An existing file keeps its old mode on open: set it explicitly.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two attempts at once stage apart; one dropped leaves nothing; one that cannot be put in
    /// place keeps its file (its secret may be in force already) and names it.
    #[test]
    fn staged_secrets_are_their_own_and_never_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("operator.token");
        let (a, b) = (
            stage_secret_file(&path, "a").unwrap(),
            stage_secret_file(&path, "b").unwrap(),
        );
        assert_ne!(a.tmp, b.tmp);
        let b_tmp = b.tmp.clone();
        drop(b);
        assert!(!b_tmp.exists());
        a.publish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), "a");

        // The place is taken by a directory that is not empty: the rename fails.
        let taken = dir.path().join("taken.token");
        std::fs::create_dir_all(taken.join("inside")).unwrap();
        let c = stage_secret_file(&taken, "c").unwrap();
        let c_tmp = c.tmp.clone();
        let err = format!("{:#}", c.publish().unwrap_err());
        assert!(err.contains(&c_tmp.display().to_string()), "{err}");
        assert_eq!(std::fs::read_to_string(&c_tmp).unwrap().trim(), "c");
    }
}
