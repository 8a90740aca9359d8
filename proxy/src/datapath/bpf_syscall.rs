//! The bpf(2) calls aya 0.14 does not make, in one audited place: creating
//! and pinning the socket-storage map with BTF of our own (`sock_storage`),
//! batched map updates and lookups, and entries copied as bytes between maps
//! whose types only the kernel knows (`batch`). Callers build a `bpf_attr` as bytes;
//! this module only issues the call and takes ownership of returned fds.

use std::{
    io,
    os::fd::{FromRawFd, OwnedFd, RawFd},
};

pub const BPF_MAP_CREATE: libc::c_long = 0;
pub const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
pub const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
pub const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
pub const BPF_OBJ_PIN: libc::c_long = 6;
pub const BPF_BTF_LOAD: libc::c_long = 18;
pub const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
pub const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Size of the `bpf_attr` buffers built here: it covers every field the
/// commands above use, and the kernel checks that the rest is zero.
pub const ATTR_LEN: usize = 128;

/// A `bpf_attr` of `fields` (offset, native-endian bytes) and zeros after.
pub fn attr(fields: &[(usize, &[u8])]) -> [u8; ATTR_LEN] {
    let mut attr = [0u8; ATTR_LEN];
    for (offset, bytes) in fields {
        attr[*offset..*offset + bytes.len()].copy_from_slice(bytes);
    }
    attr
}

/// Issues `cmd` with `attr`, which the kernel may write back into (batch
/// counts). Every pointer in `attr` must point at memory that lives for the
/// call and is as large as the lengths beside it say.
pub fn bpf(cmd: libc::c_long, attr: &mut [u8; ATTR_LEN]) -> io::Result<RawFd> {
    // SAFETY: `attr` is a zero-padded bpf_attr for `cmd`, alive for the
    // call; the pointers inside it are the caller's, valid for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    RawFd::try_from(rc).map_err(io::Error::other)
}

/// Takes ownership of an fd the kernel just returned.
pub fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: a fresh fd the kernel just returned, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}
