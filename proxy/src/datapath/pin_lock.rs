//! One writer per pin directory. Two agents sharing the pins would each
//! allocate backend ids from their own copy of the maps and point one
//! Service's frontends at another's pods; a second `run` (a debug session,
//! a canary DaemonSet) must stop before it writes anything.
//!
//! The lock is `flock(2)` on the pin directory itself: it lives on the
//! bpffs every agent on the node shares, whatever its mount namespace, and
//! the kernel drops it when the holder exits, however it exits. The
//! holder's pid comes from `/proc/locks`.

use std::{
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

/// Held for as long as the agent (or `cleanup`) writes under the pins.
#[derive(Debug)]
pub struct PinLock {
    _lock: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum PinLockError {
    #[error("opening {path} to lock it: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another switchyard ({holder}) already writes {path}: one agent per node \
         (stop it, or give this one its own --bpffs)",
        holder = holder.map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"))
    )]
    Held { path: PathBuf, holder: Option<u32> },
    #[error("locking {path}: {source}")]
    Lock { path: PathBuf, source: nix::Error },
}

impl PinLock {
    /// Takes the lock on `pin_dir` (which must exist), or says who has it.
    pub fn acquire(pin_dir: &Path) -> Result<Self, PinLockError> {
        let file = File::open(pin_dir).map_err(|source| PinLockError::Open {
            path: pin_dir.to_path_buf(),
            source,
        })?;
        let metadata = file.metadata().map_err(|source| PinLockError::Open {
            path: pin_dir.to_path_buf(),
            source,
        })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Self { _lock: lock }),
            Err((_, nix::Error::EWOULDBLOCK)) => Err(PinLockError::Held {
                path: pin_dir.to_path_buf(),
                holder: std::fs::read_to_string("/proc/locks")
                    .ok()
                    .and_then(|locks| holder(&locks, metadata.dev(), metadata.ino())),
            }),
            Err((_, source)) => Err(PinLockError::Lock {
                path: pin_dir.to_path_buf(),
                source,
            }),
        }
    }
}

/// The pid holding a `flock` on the file `dev`/`inode`, from the text of
/// `/proc/locks` (`1: FLOCK  ADVISORY  WRITE 4242 00:2a:1234 0 EOF`, the
/// device as hexadecimal major:minor). A blocked waiter's line starts with
/// `->` and is not the holder.
fn holder(locks: &str, dev: u64, inode: u64) -> Option<u32> {
    let file = format!("{:02x}:{:02x}:{inode}", libc::major(dev), libc::minor(dev));
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, _, pid, at, ..] if *at == file => pid.parse().ok(),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_holder_in_proc_locks() {
        let locks = "1: POSIX  ADVISORY  WRITE 77 00:2a:99 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4242 00:2a:1234 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 5151 00:2a:1234 0 EOF\n";
        let dev = libc::makedev(0, 0x2a);
        assert_eq!(holder(locks, dev, 1234), Some(4242));
        assert_eq!(holder(locks, dev, 99), None);
    }

    #[test]
    fn a_second_lock_names_the_first_holder() {
        let dir = std::env::temp_dir().join(format!("sy-pin-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = PinLock::acquire(&dir).unwrap();
        let second = PinLock::acquire(&dir).unwrap_err();
        assert_eq!(
            second.to_string(),
            format!(
                "another switchyard (pid {}) already writes {}: one agent per node \
                 (stop it, or give this one its own --bpffs)",
                std::process::id(),
                dir.display()
            )
        );
        drop(first);
        let again = PinLock::acquire(&dir);
        std::fs::remove_dir(&dir).unwrap();
        assert!(again.is_ok());
    }
}
