//! Pinned maps resized without dropping a connection. The kernel cannot
//! change a map's size, so a map pinned with another size than the flags
//! ask is replaced the way link generations replace programs:
//!
//! 1. before loading, its pin moves to `resizing/<name>` (set aside; bpffs
//!    reserves names with a dot);
//! 2. loading creates the map anew at the asked size and pins it by name;
//!    every entry of the old map is copied in before anything attaches;
//! 3. the new generation of links attaches, using the new map, while the
//!    old generation still runs on the old one (it runs first, so it
//!    translates, and the new one sees a backend address and lets it pass);
//! 4. once the old generation is retired, what the datapath itself wrote to
//!    the old map meanwhile (conntrack entries of new flows) is copied over
//!    too, and the old map's pin goes: the last reference with it.
//!
//! A start that stops between steps 1 and 4 leaves the set-aside pin; the
//! next start finishes that resize before anything else.

use std::{
    collections::HashSet,
    fs, io,
    os::fd::{AsFd, BorrowedFd},
    path::{Path, PathBuf},
    time::Instant,
};

use aya::maps::{MapData, MapInfo, MapType};
use tracing::{info, warn};

use super::{
    DatapathError,
    batch::{self, EntryShape},
};

/// The directory under the pin directory where old maps wait.
pub const ASIDE_DIR: &str = "resizing";

/// A pinned map being replaced by one of another size.
#[derive(Debug)]
pub struct MapResize {
    map: &'static str,
    from: usize,
    to: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error("resizing pinned map {map}: {step}: {source}")]
    Io {
        map: &'static str,
        step: &'static str,
        source: io::Error,
    },
    #[error("resizing pinned map {map}: {detail}", detail = super::error_chain(source.as_ref()))]
    Map {
        map: &'static str,
        source: Box<aya::maps::MapError>,
    },
}

impl From<ResizeError> for DatapathError {
    fn from(error: ResizeError) -> Self {
        DatapathError::Resize {
            source: Box::new(error),
        }
    }
}

/// Where `map`'s old instance is pinned while it is replaced.
pub fn aside_path(pin_dir: &Path, map: &str) -> PathBuf {
    pin_dir.join(ASIDE_DIR).join(map)
}

/// Sets `map` aside when it is pinned with another size than `requested`,
/// so that loading creates it anew. A map that only shrinks and holds more
/// entries than `requested` keeps its size (a hash map cannot drop what
/// does not fit; an LRU map would evict, and may shrink).
pub fn set_aside(
    pin_dir: &Path,
    map: &'static str,
    requested: usize,
) -> Result<Option<MapResize>, ResizeError> {
    finish_interrupted(pin_dir, map)?;
    let pin = pin_dir.join(map);
    if !pin.exists() {
        return Ok(None);
    }
    let info = MapInfo::from_pin(&pin).map_err(|source| ResizeError::Map {
        map,
        source: Box::new(source),
    })?;
    let pinned = usize::try_from(info.max_entries()).unwrap_or(usize::MAX);
    if pinned == requested {
        return Ok(None);
    }
    let evicts = matches!(
        info.map_type(),
        Ok(MapType::LruHash | MapType::LruPerCpuHash)
    );
    if requested < pinned && !evicts {
        let held = count(pin_dir, map)?;
        if held > requested {
            warn!(
                map,
                pinned,
                requested,
                held,
                "the pinned map holds more entries than the size asked for: it keeps its size"
            );
            return Ok(None);
        }
    }
    fs::create_dir_all(pin_dir.join(ASIDE_DIR)).map_err(|source| ResizeError::Io {
        map,
        step: "making the directory for old maps",
        source,
    })?;
    fs::rename(&pin, aside_path(pin_dir, map)).map_err(|source| ResizeError::Io {
        map,
        step: "setting the old map aside",
        source,
    })?;
    Ok(Some(MapResize {
        map,
        from: pinned,
        to: requested,
    }))
}

impl MapResize {
    /// Step 2: copies every entry of the old map into the new one, which
    /// loading has just created and pinned.
    pub fn fill(&self, pin_dir: &Path) -> Result<(), ResizeError> {
        let started = Instant::now();
        let copied = copy_missing(pin_dir, self.map)?;
        info!(
            map = self.map,
            from = self.from,
            to = self.to,
            copied,
            elapsed_ms = started.elapsed().as_millis(),
            "pinned map resized: its entries are in the new map"
        );
        Ok(())
    }

    /// Step 4, once no program uses the old map: copies what the datapath
    /// added to it since [`MapResize::fill`], and unpins it.
    pub fn finish(self, pin_dir: &Path) -> Result<(), ResizeError> {
        let caught_up = copy_missing(pin_dir, self.map)?;
        remove_aside(pin_dir, self.map)?;
        info!(
            map = self.map,
            caught_up, "the old instance of the resized map is gone"
        );
        Ok(())
    }
}

/// A set-aside pin left by a start that stopped midway: its entries go
/// where they were headed, and it goes.
fn finish_interrupted(pin_dir: &Path, map: &'static str) -> Result<(), ResizeError> {
    let aside = aside_path(pin_dir, map);
    if !aside.exists() {
        return Ok(());
    }
    warn!(map, "finishing the resize an earlier start began");
    let pin = pin_dir.join(map);
    if pin.exists() {
        copy_missing(pin_dir, map)?;
        remove_aside(pin_dir, map)
    } else {
        fs::rename(&aside, &pin).map_err(|source| ResizeError::Io {
            map,
            step: "putting the old map back",
            source,
        })
    }
}

fn remove_aside(pin_dir: &Path, map: &'static str) -> Result<(), ResizeError> {
    match fs::remove_file(aside_path(pin_dir, map)) {
        Err(source) if source.kind() != io::ErrorKind::NotFound => Err(ResizeError::Io {
            map,
            step: "unpinning the old map",
            source,
        }),
        _ => {
            // The last resize out empties the directory; another map's
            // still in it keeps it.
            let _ = fs::remove_dir(pin_dir.join(ASIDE_DIR));
            Ok(())
        }
    }
}

fn open(path: &Path, map: &'static str) -> Result<(MapData, EntryShape), ResizeError> {
    let map_error = |source| ResizeError::Map {
        map,
        source: Box::new(source),
    };
    let info = MapInfo::from_pin(path).map_err(map_error)?;
    let data = MapData::from_pin(path).map_err(map_error)?;
    let size = |bytes: u32| usize::try_from(bytes).unwrap_or(usize::MAX);
    let shape = EntryShape {
        key_size: size(info.key_size()),
        value_size: size(info.value_size()),
    };
    Ok((data, shape))
}

/// Entries the pinned map `map` holds.
fn count(pin_dir: &Path, map: &'static str) -> Result<usize, ResizeError> {
    let (data, shape) = open(&pin_dir.join(map), map)?;
    let mut held = 0;
    batch::read_all(data.fd().as_fd(), shape, |entries| {
        held += entries.count();
        Ok(())
    })
    .map_err(|source| ResizeError::Io {
        map,
        step: "counting entries",
        source,
    })?;
    Ok(held)
}

/// Copies the entries of the set-aside map that the pinned one lacks (all
/// of them into a new map); returns how many.
fn copy_missing(pin_dir: &Path, map: &'static str) -> Result<usize, ResizeError> {
    let (from, shape) = open(&aside_path(pin_dir, map), map)?;
    let (to, to_shape) = open(&pin_dir.join(map), map)?;
    if shape != to_shape {
        return Err(ResizeError::Io {
            map,
            step: "comparing the two maps",
            source: io::Error::other(format!(
                "entries differ in shape: {shape:?} set aside, {to_shape:?} pinned"
            )),
        });
    }
    copy_between(from.fd().as_fd(), to.fd().as_fd(), shape).map_err(|source| ResizeError::Io {
        map,
        step: "copying entries",
        source,
    })
}

fn copy_between(from: BorrowedFd<'_>, to: BorrowedFd<'_>, shape: EntryShape) -> io::Result<usize> {
    let mut present: HashSet<Vec<u8>> = HashSet::new();
    batch::read_all(to, shape, |entries| {
        present.extend(
            entries
                .keys()
                .chunks_exact(shape.key_size)
                .map(<[u8]>::to_vec),
        );
        Ok(())
    })?;
    let mut copied = 0;
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    batch::read_all(from, shape, |entries| {
        keys.clear();
        values.clear();
        for index in 0..entries.count() {
            let (key, value) = entries.get(index);
            if !present.contains(key) {
                keys.extend_from_slice(key);
                values.extend_from_slice(value);
                copied += 1;
            }
        }
        batch::write_bytes(to, shape, &keys, &values)
    })?;
    Ok(copied)
}
