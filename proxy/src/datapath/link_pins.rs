//! The links of each agent start, pinned as one generation under
//! `links/<generation>/<program>[@<device>]`: pinned so they outlive the
//! agent, detached by unpinning. A restart pins a new generation before the
//! old one is detached; `cleanup` removes every generation and every map.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use aya::programs::links::{FdLink, PinnedLink};

use super::{DatapathError, loader::MAP_NAMES, map_resize, pin_check, pin_lock::PinLock};

pub const LINKS_DIR: &str = "links";

pub fn pin_link<E>(link: Result<FdLink, E>, path: &Path) -> Result<(), DatapathError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let pin_error = |source: Box<dyn std::error::Error + Send + Sync>| DatapathError::Pin {
        path: path.to_path_buf(),
        source,
    };
    let link = link.map_err(|error| pin_error(Box::new(error)))?;
    link.pin(path).map_err(|error| pin_error(Box::new(error)))?;
    Ok(())
}

/// Detaches every pinned link and removes every pin under `pin_dir`.
pub fn cleanup(pin_dir: &Path) -> Result<(), DatapathError> {
    if !pin_dir.exists() {
        return Ok(());
    }
    // Not from under a running agent, which would re-pin what it needs.
    let _lock = PinLock::acquire(pin_dir)?;
    for generation in generations(pin_dir)? {
        detach_generation(&generation)?;
    }
    remove_dir(&pin_dir.join(LINKS_DIR))?;
    let this_build = MAP_NAMES
        .iter()
        .flat_map(|map| [pin_dir.join(map), map_resize::aside_path(pin_dir, map)]);
    for path in this_build.chain(pin_check::other_versions(pin_dir)) {
        if path.exists() {
            fs::remove_file(&path).map_err(|source| DatapathError::PinDir { path, source })?;
        }
    }
    remove_dir(&pin_dir.join(map_resize::ASIDE_DIR))?;
    remove_dir(pin_dir)
}

/// Detaches the socket hooks of every generation (their links' pins have
/// no device in their name), leaving the per-packet programs on their
/// devices; the caller holds the pin lock. Connections the hooks already
/// sent to a backend are connected to it and need them no more.
pub fn detach_socket_hooks(pin_dir: &Path) -> Result<usize, DatapathError> {
    let mut detached = 0;
    for generation in generations(pin_dir)? {
        for entry in read_dir(&generation)? {
            let is_device_program = entry
                .file_name()
                .is_some_and(|name| name.to_string_lossy().contains('@'));
            if is_device_program {
                continue;
            }
            unpin_link(&entry)?;
            detached += 1;
        }
    }
    Ok(detached)
}

pub fn detach_generation(generation: &Path) -> Result<(), DatapathError> {
    for entry in read_dir(generation)? {
        unpin_link(&entry)?;
    }
    remove_dir(generation)
}

/// Unpinning drops the last reference to the link, which detaches it.
fn unpin_link(pin: &Path) -> Result<(), DatapathError> {
    let link = PinnedLink::from_pin(pin).map_err(|source| DatapathError::Pin {
        path: pin.to_path_buf(),
        source: Box::new(source),
    })?;
    link.unpin().map_err(|source| DatapathError::Pin {
        path: pin.to_path_buf(),
        source: Box::new(source),
    })?;
    Ok(())
}

pub fn generations(pin_dir: &Path) -> Result<Vec<PathBuf>, DatapathError> {
    let links = pin_dir.join(LINKS_DIR);
    if !links.exists() {
        return Ok(Vec::new());
    }
    read_dir(&links)
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, DatapathError> {
    let pin_error = |source| DatapathError::PinDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths = fs::read_dir(dir)
        .map_err(pin_error)?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(pin_error)?;
    paths.sort();
    Ok(paths)
}

/// Removes an empty directory; one that is gone, or a mount point (the
/// DaemonSet mounts the pin directory itself), is left as it is.
fn remove_dir(dir: &Path) -> Result<(), DatapathError> {
    match fs::remove_dir(dir) {
        Err(source)
            if !matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ResourceBusy
            ) =>
        {
            Err(DatapathError::PinDir {
                path: dir.to_path_buf(),
                source,
            })
        }
        _ => Ok(()),
    }
}

/// Nanoseconds since the epoch: sortable, and unique per start.
pub fn generation_name() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:020}", now.as_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_sort_by_time() {
        let first = generation_name();
        let second = generation_name();
        assert!(first <= second);
        assert_eq!(first.len(), 20);
    }
}
