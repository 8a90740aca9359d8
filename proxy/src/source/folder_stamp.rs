//! A cheap fingerprint of a manifests folder: each manifest file's identity,
//! size and times, and the folder's own. The sync period's re-read (the net
//! under missed file-system events) is skipped while the stamp is the one
//! taken before the last read: at 50k Services parsing the folder is
//! seconds of CPU, a stamp is one `stat` per file.
//!
//! Metadata follows symlinks, so a ConfigMap volume's `..data` swap changes
//! the stamp of every file through it.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::source::manifest::manifest_files;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderStamp {
    folder: FileStamp,
    files: Vec<(PathBuf, FileStamp)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    device: u64,
    inode: u64,
    size: u64,
    modified_ns: i128,
    changed_ns: i128,
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        let meta = fs::metadata(path).ok()?;
        let ns = |seconds: i64, nanos: i64| i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
        Some(Self {
            device: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            modified_ns: ns(meta.mtime(), meta.mtime_nsec()),
            changed_ns: ns(meta.ctime(), meta.ctime_nsec()),
        })
    }
}

impl FolderStamp {
    /// The folder as it is now; None when it cannot be read (then every
    /// pass reads it, and reports what it could not read).
    pub fn of(dir: &Path) -> Option<Self> {
        let folder = FileStamp::of(dir)?;
        let files = manifest_files(dir)
            .ok()?
            .into_iter()
            .map(|path| {
                let stamp = FileStamp::of(&path)?;
                Some((path, stamp))
            })
            .collect::<Option<_>>()?;
        Some(Self { folder, files })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sy-stamp-{}-{name}", std::process::id()));
        let _fresh = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_stamp_changes_with_every_kind_of_edit_and_only_then() {
        let dir = scratch("edits");
        fs::write(dir.join("a.yaml"), "x: 1\n").unwrap();
        let first = FolderStamp::of(&dir).unwrap();
        assert_eq!(FolderStamp::of(&dir).unwrap(), first, "nothing changed");

        fs::write(dir.join("a.yaml"), "x: 2\n").unwrap();
        let rewritten = FolderStamp::of(&dir).unwrap();
        assert_ne!(rewritten, first, "rewritten in place, same size");

        fs::write(dir.join(".a.yaml.tmp"), "x: 3\n").unwrap();
        fs::rename(dir.join(".a.yaml.tmp"), dir.join("a.yaml")).unwrap();
        let replaced = FolderStamp::of(&dir).unwrap();
        assert_ne!(replaced, rewritten, "replaced by rename");

        fs::write(dir.join("b.json"), "{}").unwrap();
        let added = FolderStamp::of(&dir).unwrap();
        assert_ne!(added, replaced, "a file added");

        fs::write(dir.join("notes.txt"), "not a manifest").unwrap();
        let with_notes = FolderStamp::of(&dir).unwrap();
        // The folder's own times move; what matters is that a stamp never
        // stays equal across a manifest change.
        fs::remove_file(dir.join("b.json")).unwrap();
        assert_ne!(FolderStamp::of(&dir).unwrap(), with_notes, "a file removed");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unreadable_folder_has_no_stamp() {
        assert!(FolderStamp::of(Path::new("/nonexistent/sy-stamp")).is_none());
    }
}
