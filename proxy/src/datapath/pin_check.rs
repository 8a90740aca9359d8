//! Pinned maps checked before they are adopted. aya reuses any pin with
//! the map's name, whatever it holds: a map pinned by a build of another
//! layout would be read and written with the wrong key or value shape.
//! Every pinned map is compared with this build's definition: a map of
//! another size is migrated (`map_resize`), one of another type, key,
//! value or flags is refused in one line before anything is loaded.
//!
//! A layout change renames the maps (the `_V1` suffix): pins of other
//! versions are left by older builds and removed once nothing uses them.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::maps::{MapInfo, MapType};

use super::loader::MAP_NAMES;

/// What a map's definition fixes for its whole life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl MapShape {
    /// Whether `map_resize` can copy a map of this type into a bigger or
    /// smaller one: hash maps only (array slots always exist, per-CPU
    /// values and socket storage cannot be copied key by key).
    pub fn resizable(self) -> bool {
        [MapType::Hash, MapType::LruHash]
            .iter()
            .any(|kind| *kind as u32 == self.map_type)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PinCheckError {
    #[error(
        "pinned map {path} has {what} {pinned}, this build's has {built}: it was made by a \
         build of another layout; `switchyard cleanup` removes it (and the datapath's state)"
    )]
    Layout {
        path: PathBuf,
        what: &'static str,
        pinned: u32,
        built: u32,
    },
    #[error("pinned map {path}: {detail}", detail = super::error_chain(source.as_ref()))]
    Unreadable {
        path: PathBuf,
        source: Box<aya::maps::MapError>,
    },
    #[error("reading the eBPF object's map definitions: {detail}")]
    Object { detail: String },
}

/// This build's definition of each map the agent pins.
pub fn built_shapes(object: &[u8]) -> Result<Vec<(&'static str, MapShape)>, PinCheckError> {
    let parsed = aya_obj::Object::parse(object).map_err(|error| PinCheckError::Object {
        detail: error.to_string(),
    })?;
    MAP_NAMES
        .iter()
        .map(|&name| {
            let map = parsed.maps.get(name).ok_or_else(|| PinCheckError::Object {
                detail: format!("no map {name}"),
            })?;
            Ok((
                name,
                MapShape {
                    map_type: map.map_type(),
                    key_size: map.key_size(),
                    value_size: map.value_size(),
                    max_entries: map.max_entries(),
                    flags: map.map_flags(),
                },
            ))
        })
        .collect()
}

/// The shape of the map pinned at `path`, if one is.
pub fn pinned_shape(path: &Path) -> Result<Option<MapShape>, PinCheckError> {
    if !path.exists() {
        return Ok(None);
    }
    let info = MapInfo::from_pin(path).map_err(|source| PinCheckError::Unreadable {
        path: path.to_path_buf(),
        source: Box::new(source),
    })?;
    let map_type = info
        .map_type()
        .map_err(|source| PinCheckError::Unreadable {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
    Ok(Some(MapShape {
        map_type: map_type as u32,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags() & !KERNEL_ADDED_FLAGS,
    }))
}

/// Flags the kernel sets on a map itself, which no definition asks for:
/// `BPF_F_RDONLY_PROG` on device maps (programs only redirect through
/// them), which a definition may not even name at creation.
const KERNEL_ADDED_FLAGS: u32 = 1 << 7;

/// Refuses a pinned map whose layout differs from `built`; its size may.
pub fn check_layout(path: &Path, pinned: MapShape, built: MapShape) -> Result<(), PinCheckError> {
    let fields = [
        ("type", pinned.map_type, built.map_type),
        ("key size", pinned.key_size, built.key_size),
        ("value size", pinned.value_size, built.value_size),
        ("flags", pinned.flags, built.flags),
    ];
    match fields
        .into_iter()
        .find(|(_, pinned, built)| pinned != built)
    {
        Some((what, pinned, built)) => Err(PinCheckError::Layout {
            path: path.to_path_buf(),
            what,
            pinned,
            built,
        }),
        None => Ok(()),
    }
}

/// Pins of Switchyard maps this build does not use: other layout versions
/// (`SY_SERVICES_V0` beside `SY_SERVICES_V1`), left by older builds.
pub fn other_versions(pin_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(pin_dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_file()))
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("SY_") && !MAP_NAMES.contains(&name))
        })
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(key_size: u32, max_entries: u32) -> MapShape {
        MapShape {
            map_type: MapType::Hash as u32,
            key_size,
            value_size: 8,
            max_entries,
            flags: 1,
        }
    }

    #[test]
    fn size_may_differ_layout_may_not() {
        let path = Path::new("/sys/fs/bpf/switchyard/SY_SERVICES_V1");
        assert!(check_layout(path, shape(12, 10), shape(12, 20)).is_ok());
        let error = check_layout(path, shape(8, 10), shape(12, 10)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "pinned map /sys/fs/bpf/switchyard/SY_SERVICES_V1 has key size 8, this build's has \
             12: it was made by a build of another layout; `switchyard cleanup` removes it (and \
             the datapath's state)"
        );
        assert!(shape(1, 1).resizable());
    }

    #[test]
    fn every_pinned_map_is_defined_by_the_object() {
        let shapes = built_shapes(super::super::loader::object()).unwrap();
        assert_eq!(shapes.len(), MAP_NAMES.len());
    }
}
