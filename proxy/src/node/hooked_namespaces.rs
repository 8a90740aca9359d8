//! The network namespaces the socket hooks serve: those of the processes
//! in the hooked cgroup and below it.

use std::{collections::BTreeSet, fs::File, os::unix::fs::MetadataExt, path::Path};

/// One open handle per distinct network namespace of the processes in
/// `cgroup` and its descendants.
pub fn namespaces(cgroup: &Path) -> Vec<File> {
    let mut seen = BTreeSet::new();
    let mut handles = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs
                .lines()
                .filter_map(|line| line.trim().parse::<u32>().ok())
            {
                let Ok(file) = File::open(format!("/proc/{pid}/ns/net")) else {
                    continue;
                };
                if let Ok(meta) = file.metadata()
                    && seen.insert((meta.dev(), meta.ino()))
                {
                    handles.push(file);
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    handles
}
