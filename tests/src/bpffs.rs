//! `BpfFs`: a private bpffs mount for one test. The agent pins under it, and
//! unmounting drops every pin with it, so nothing leaks into /sys/fs/bpf.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::{
    mount::{mount, umount},
    scratch::Scratch,
};

#[derive(Debug)]
pub struct BpfFs {
    /// The mount point; dropped (removed) after `drop` has unmounted it.
    dir: Scratch,
}

impl BpfFs {
    /// Mounts a fresh bpffs on a new temp dir.
    pub fn new() -> Result<Self> {
        let dir = Scratch::new("bpffs")?;
        mount("bpf", dir.path(), "bpf")?;
        Ok(Self { dir })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A pin dir below the mount (the agent creates it).
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.join(rel)
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        if let Err(e) = umount(self.dir.path()) {
            eprintln!("warning: {e:#}");
        }
    }
}
