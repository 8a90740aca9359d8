//! A temporary directory removed on drop. Set `SY_KEEP_SCRATCH=1` to keep it
//! for a post-mortem (its path is printed then).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::name;

#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates `$TMPDIR/sy-<kind>-<pid>-<n>`.
    pub fn new(kind: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(name::unique(kind));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory (not created).
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("SY_KEEP_SCRATCH").is_some() {
            eprintln!("keeping scratch dir {}", self.path.display());
            return;
        }
        // Best effort: a guard must not panic while a test is unwinding.
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: cannot remove {}: {e}", self.path.display());
        }
    }
}
