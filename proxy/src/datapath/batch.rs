//! Batched map operations (`BPF_MAP_UPDATE_BATCH` and
//! `BPF_MAP_LOOKUP_BATCH`, Linux 5.6 for hash maps): one syscall for
//! thousands of entries where single operations cost one each. A first
//! pass at 50k Services writes half a million entries; a resized map is
//! read and written whole.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use super::bpf_syscall::{
    BPF_MAP_GET_NEXT_KEY, BPF_MAP_LOOKUP_BATCH, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_BATCH,
    BPF_MAP_UPDATE_ELEM, attr, bpf,
};

/// Entries per syscall: large enough that the call's own cost vanishes,
/// small enough that the kernel's copy of the keys and values stays small.
pub const BATCH_LEN: usize = 4_096;

/// A batch the kernel stopped in: the entries before `applied` are in the
/// map, the one at `applied` failed with `error`, the rest were not tried.
#[derive(Debug)]
pub struct BatchStopped {
    pub applied: usize,
    pub error: io::Error,
}

impl BatchStopped {
    /// The kernel (or this map type) has no batch updates: nothing was
    /// applied, and single updates must do.
    pub fn unsupported(&self) -> bool {
        self.applied == 0 && unsupported(&self.error)
    }
}

/// The error a kernel without a batch command (or a map type without it)
/// answers.
fn unsupported(error: &io::Error) -> bool {
    const ENOTSUPP: i32 = 524;
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

/// The shape of a map's entries, in bytes, as the kernel holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryShape {
    pub key_size: usize,
    pub value_size: usize,
}

/// Writes `keys[i] -> values[i]` into the map `map`, in order, as single
/// updates would (`BPF_ANY`).
pub fn update<K: Copy, V: Copy>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchStopped> {
    debug_assert_eq!(keys.len(), values.len());
    let shape = EntryShape {
        key_size: size_of::<K>(),
        value_size: size_of::<V>(),
    };
    update_from(
        map,
        shape,
        keys.as_ptr() as u64,
        values.as_ptr() as u64,
        keys.len(),
    )
}

/// [`update`] for entries held as bytes: `keys` and `values` are `count`
/// entries of `shape` laid end to end.
fn update_bytes(
    map: BorrowedFd<'_>,
    shape: EntryShape,
    keys: &[u8],
    values: &[u8],
) -> Result<(), BatchStopped> {
    let count = keys.len() / shape.key_size.max(1);
    assert!(keys.len() == count * shape.key_size && values.len() == count * shape.value_size);
    update_from(
        map,
        shape,
        keys.as_ptr() as u64,
        values.as_ptr() as u64,
        count,
    )
}

/// The loop of batched updates, from `count` entries at the two addresses
/// (which the callers' slices keep alive and sized).
fn update_from(
    map: BorrowedFd<'_>,
    shape: EntryShape,
    keys: u64,
    values: u64,
    count: usize,
) -> Result<(), BatchStopped> {
    let fd = u32::try_from(map.as_raw_fd()).expect("fds are non-negative");
    let offset = |base: u64, size: usize, index: usize| base + (size * index) as u64;
    let mut done = 0;
    while done < count {
        let end = count.min(done + BATCH_LEN);
        let len = u32::try_from(end - done).expect("at most BATCH_LEN");
        let keys_ptr = offset(keys, shape.key_size, done).to_ne_bytes();
        let values_ptr = offset(values, shape.value_size, done).to_ne_bytes();
        // union bpf_attr, batch: in_batch, out_batch (unused for updates),
        // keys, values, count (in and out), map_fd, elem_flags, flags.
        let mut attr = attr(&[
            (16, &keys_ptr),
            (24, &values_ptr),
            (32, &len.to_ne_bytes()),
            (36, &fd.to_ne_bytes()),
        ]);
        if let Err(error) = bpf(BPF_MAP_UPDATE_BATCH, &mut attr) {
            let written = u32::from_ne_bytes(attr[32..36].try_into().expect("4 bytes"));
            let written = usize::try_from(written).unwrap_or(0).min(end - done);
            return Err(BatchStopped {
                applied: done + written,
                error,
            });
        }
        done = end;
    }
    Ok(())
}

/// Entries read from a map: the first `count` keys and values of the
/// buffers, laid end to end.
pub struct Entries {
    keys: Vec<u8>,
    values: Vec<u8>,
    count: usize,
    shape: EntryShape,
}

impl Entries {
    pub fn keys(&self) -> &[u8] {
        &self.keys[..self.count * self.shape.key_size]
    }

    pub fn values(&self) -> &[u8] {
        &self.values[..self.count * self.shape.value_size]
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// The entry at `index`: key and value.
    pub fn get(&self, index: usize) -> (&[u8], &[u8]) {
        let (k, v) = (self.shape.key_size, self.shape.value_size);
        (&self.keys[index * k..][..k], &self.values[index * v..][..v])
    }
}

/// Reads every entry of the hash map `map` in batches, handing each batch
/// to `each`; one entry at a time where the kernel has no batched lookups.
/// Entries added or removed meanwhile may or may not be seen.
pub fn read_all(
    map: BorrowedFd<'_>,
    shape: EntryShape,
    mut each: impl FnMut(&Entries) -> io::Result<()>,
) -> io::Result<()> {
    let mut batch = Entries {
        keys: vec![0; BATCH_LEN * shape.key_size],
        values: vec![0; BATCH_LEN * shape.value_size],
        count: 0,
        shape,
    };
    let keys = batch.keys.as_mut_ptr() as u64;
    let values = batch.values.as_mut_ptr() as u64;
    let mut handed_on = false;
    let read = lookup_batches(map, keys, values, |count| {
        handed_on = true;
        batch.count = count;
        each(&batch)
    });
    match read {
        Err(error) if !handed_on && unsupported(&error) => read_one_by_one(map, shape, each),
        other => other,
    }
}

/// [`read_all`] for a map of `K` to `V`, plain data as the kernel holds
/// them. Stops where the kernel fails; [`BatchStopped::unsupported`] says
/// it has no batched lookups (nothing was handed on), for the caller to
/// read another way.
pub fn read_all_typed<K: Copy + Default, V: Copy + Default>(
    map: BorrowedFd<'_>,
    mut each: impl FnMut(&[K], &[V]),
) -> Result<(), BatchStopped> {
    let mut keys = vec![K::default(); BATCH_LEN];
    let mut values = vec![V::default(); BATCH_LEN];
    let (keys_ptr, values_ptr) = (keys.as_mut_ptr() as u64, values.as_mut_ptr() as u64);
    let mut handed_on = 0;
    lookup_batches(map, keys_ptr, values_ptr, |count| {
        handed_on += count;
        each(&keys[..count], &values[..count]);
        Ok(())
    })
    .map_err(|error| BatchStopped {
        applied: handed_on,
        error,
    })
}

/// The loop of batched lookups into the buffers at `keys` and `values`
/// (room for [`BATCH_LEN`] entries each, kept alive by the caller), calling
/// `each` with how many entries each call filled. Fails with the kernel's
/// error when its very first call does (no batched lookups).
fn lookup_batches(
    map: BorrowedFd<'_>,
    keys: u64,
    values: u64,
    mut each: impl FnMut(usize) -> io::Result<()>,
) -> io::Result<()> {
    let fd = u32::try_from(map.as_raw_fd()).expect("fds are non-negative");
    let len = u32::try_from(BATCH_LEN).expect("small");
    // The position the kernel hands back (a bucket index for hash maps).
    let mut position = [0u8; 8];
    let mut next = [0u8; 8];
    let mut first = true;
    loop {
        let in_batch = if first {
            0u64
        } else {
            position.as_ptr() as u64
        };
        // union bpf_attr, batch: in_batch, out_batch, keys, values, count
        // (in and out), map_fd, elem_flags, flags.
        let mut attr = attr(&[
            (0, &in_batch.to_ne_bytes()),
            (8, &(next.as_mut_ptr() as u64).to_ne_bytes()),
            (16, &keys.to_ne_bytes()),
            (24, &values.to_ne_bytes()),
            (32, &len.to_ne_bytes()),
            (36, &fd.to_ne_bytes()),
        ]);
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let read = u32::from_ne_bytes(attr[32..36].try_into().expect("4 bytes"));
        let count = usize::try_from(read).unwrap_or(0).min(BATCH_LEN);
        let done = match result {
            Ok(_) => false,
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => true,
            Err(error) => return Err(error),
        };
        if count > 0 {
            each(count)?;
        }
        if done {
            return Ok(());
        }
        position = next;
        first = false;
    }
}

/// [`read_all`] without batches: `BPF_MAP_GET_NEXT_KEY` and a lookup per
/// entry, handed on one at a time.
fn read_one_by_one(
    map: BorrowedFd<'_>,
    shape: EntryShape,
    mut each: impl FnMut(&Entries) -> io::Result<()>,
) -> io::Result<()> {
    let fd = u32::try_from(map.as_raw_fd()).expect("fds are non-negative");
    let mut key: Option<Vec<u8>> = None;
    let mut entry = Entries {
        keys: vec![0; shape.key_size],
        values: vec![0; shape.value_size],
        count: 1,
        shape,
    };
    loop {
        // union bpf_attr, element commands: map_fd, key, value/next_key, flags.
        let key_ptr = key.as_ref().map_or(0, |key| key.as_ptr() as u64);
        let mut next_key = attr(&[
            (0, &fd.to_ne_bytes()),
            (8, &key_ptr.to_ne_bytes()),
            (16, &(entry.keys.as_mut_ptr() as u64).to_ne_bytes()),
        ]);
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut next_key) {
            Ok(_) => {}
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(error) => return Err(error),
        }
        let mut lookup = attr(&[
            (0, &fd.to_ne_bytes()),
            (8, &(entry.keys.as_ptr() as u64).to_ne_bytes()),
            (16, &(entry.values.as_mut_ptr() as u64).to_ne_bytes()),
        ]);
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut lookup) {
            Ok(_) => each(&entry)?,
            // Gone between the two calls.
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(error) => return Err(error),
        }
        key = Some(entry.keys.clone());
    }
}

/// Writes `keys[i] -> values[i]` (entries of `shape` as bytes) with
/// batched updates, or one update each where the kernel has none.
pub fn write_bytes(
    map: BorrowedFd<'_>,
    shape: EntryShape,
    keys: &[u8],
    values: &[u8],
) -> io::Result<()> {
    match update_bytes(map, shape, keys, values) {
        Ok(()) => Ok(()),
        Err(stopped) if stopped.unsupported() => {
            let fd = u32::try_from(map.as_raw_fd()).expect("fds are non-negative");
            let key_chunks = keys.chunks_exact(shape.key_size.max(1));
            for (key, value) in key_chunks.zip(values.chunks_exact(shape.value_size.max(1))) {
                // union bpf_attr, element commands: map_fd, key, value, flags.
                let mut attr = attr(&[
                    (0, &fd.to_ne_bytes()),
                    (8, &(key.as_ptr() as u64).to_ne_bytes()),
                    (16, &(value.as_ptr() as u64).to_ne_bytes()),
                ]);
                bpf(BPF_MAP_UPDATE_ELEM, &mut attr)?;
            }
            Ok(())
        }
        Err(stopped) => Err(stopped.error),
    }
}
