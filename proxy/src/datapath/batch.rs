//! Batched map updates (`BPF_MAP_UPDATE_BATCH`, Linux 5.6 for hash maps):
//! one syscall for thousands of entries where single updates cost one
//! each. A first pass at 50k Services writes half a million entries.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use super::bpf_syscall::{BPF_MAP_UPDATE_BATCH, attr, bpf};

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
        const ENOTSUPP: i32 = 524;
        self.applied == 0
            && matches!(
                self.error.raw_os_error(),
                Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
            )
    }
}

/// Writes `keys[i] -> values[i]` into the map `map`, in order, as single
/// updates would (`BPF_ANY`).
pub fn update<K: Copy, V: Copy>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchStopped> {
    debug_assert_eq!(keys.len(), values.len());
    let mut done = 0;
    while done < keys.len() {
        let end = keys.len().min(done + BATCH_LEN);
        let count = u32::try_from(end - done).expect("at most BATCH_LEN");
        let fd = u32::try_from(map.as_raw_fd()).expect("fds are non-negative");
        let keys_ptr = (keys[done..end].as_ptr() as u64).to_ne_bytes();
        let values_ptr = (values[done..end].as_ptr() as u64).to_ne_bytes();
        // union bpf_attr, batch: in_batch, out_batch (unused for updates),
        // keys, values, count (in and out), map_fd, elem_flags, flags.
        let mut attr = attr(&[
            (16, &keys_ptr),
            (24, &values_ptr),
            (32, &count.to_ne_bytes()),
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
