//! The pin directory: created where asked, and only on a bpf filesystem
//! (pins anywhere else would fail one by one, later).

use std::{fs, path::Path};

use super::DatapathError;

const BPF_FS_TYPE: &str = "bpf";

/// Creates `pin_dir` and checks that it is on a bpf filesystem.
pub fn prepare(pin_dir: &Path) -> Result<(), DatapathError> {
    fs::create_dir_all(pin_dir).map_err(|source| DatapathError::PinDir {
        path: pin_dir.to_path_buf(),
        source,
    })?;
    let canonical = pin_dir
        .canonicalize()
        .map_err(|source| DatapathError::PinDir {
            path: pin_dir.to_path_buf(),
            source,
        })?;
    match mount_fs_type(&canonical) {
        Some(fs_type) if fs_type == BPF_FS_TYPE => Ok(()),
        _ => Err(DatapathError::NotBpfFs {
            path: pin_dir.to_path_buf(),
        }),
    }
}

/// The filesystem type of the mount holding `path`, from /proc/self/mounts:
/// the longest mount point that is a prefix of the path.
fn mount_fs_type(path: &Path) -> Option<String> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let mount_point = unescape_mount_path(fields.next()?);
            let fs_type = fields.next()?;
            path.starts_with(&mount_point)
                .then(|| (mount_point.len(), fs_type.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs_type)| fs_type)
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(raw: &str) -> String {
    raw.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mount_points() {
        assert_eq!(unescape_mount_path("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mount_path("/sys/fs/bpf"), "/sys/fs/bpf");
    }

    #[test]
    fn finds_the_root_filesystem() {
        assert!(mount_fs_type(Path::new("/")).is_some());
    }
}
