//! The socket-local storage map (`SY_SOCK_STATE_V1`), created and pinned
//! here before the object loads, which then reuses the pin.
//!
//! The kernel creates a `BPF_MAP_TYPE_SK_STORAGE` map only with BTF naming
//! its key and value types, and it refuses the object's own BTF (bpf-linker
//! writes Rust enums as unions whose discriminant member sits at a non-zero
//! offset). So this module writes the few BTF types the map needs itself:
//! `int` for the key and `SockState` as a struct of one byte array, which
//! is all the kernel checks (sizes), and what `bpftool map dump` shows.

use std::{
    ffi::CString,
    io,
    os::{fd::OwnedFd, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
};

use switchyard_abi::{SOCK_STATE_MAP, SockState};

use super::{
    DatapathError,
    bpf_syscall::{BPF_BTF_LOAD, BPF_MAP_CREATE, BPF_OBJ_PIN, attr, bpf, owned},
};

const BPF_MAP_TYPE_SK_STORAGE: u32 = 24;
const BPF_F_NO_PREALLOC: u32 = 1;

const BTF_MAGIC: u16 = 0xeb9f;
const BTF_KIND_INT: u32 = 1;
const BTF_KIND_ARRAY: u32 = 3;
const BTF_KIND_STRUCT: u32 = 4;
const BTF_INT_SIGNED: u32 = 1 << 24;

/// Type ids in [`btf`]: 1 `int`, 2 `u8`, 3 `u8[N]`, 4 `SockState`.
const KEY_TYPE_ID: u32 = 1;
const VALUE_TYPE_ID: u32 = 4;

/// Creates and pins the map under `pin_dir` unless a previous agent did.
pub fn ensure_pinned(pin_dir: &Path) -> Result<(), DatapathError> {
    let path = pin_dir.join(SOCK_STATE_MAP);
    if path.exists() {
        return Ok(());
    }
    let error = |source: io::Error| DatapathError::SockStorage {
        path: path.clone(),
        source,
    };
    let btf = load_btf(&btf()).map_err(error)?;
    let map = create_map(&btf).map_err(error)?;
    pin(&map, &path).map_err(error)
}

/// The BTF blob: header, four types, string table.
fn btf() -> Vec<u8> {
    let value_size = u32::try_from(size_of::<SockState>()).expect("a few hundred bytes");
    let strings: &[u8] = b"\0int\0u8\0SockState\0bytes\0";
    let (int_name, u8_name, state_name, bytes_name) = (1u32, 5, 8, 18);
    let mut types = Vec::new();
    let mut put = |words: &[u32]| {
        for word in words {
            types.extend_from_slice(&word.to_ne_bytes());
        }
    };
    // [1] int: 4 bytes, signed, 32 bits.
    put(&[int_name, BTF_KIND_INT << 24, 4, BTF_INT_SIGNED | 32]);
    // [2] u8.
    put(&[u8_name, BTF_KIND_INT << 24, 1, 8]);
    // [3] u8[value_size], indexed by int.
    put(&[0, BTF_KIND_ARRAY << 24, 0, 2, 1, value_size]);
    // [4] struct SockState { u8 bytes[value_size]; } (one member at bit 0).
    put(&[state_name, (BTF_KIND_STRUCT << 24) | 1, value_size]);
    put(&[bytes_name, 3, 0]);
    let type_len = u32::try_from(types.len()).expect("small");
    let str_len = u32::try_from(strings.len()).expect("small");
    let mut blob = Vec::new();
    blob.extend_from_slice(&BTF_MAGIC.to_ne_bytes());
    blob.push(1); // version
    blob.push(0); // flags
    for word in [24u32, 0, type_len, type_len, str_len] {
        blob.extend_from_slice(&word.to_ne_bytes());
    }
    blob.extend_from_slice(&types);
    blob.extend_from_slice(strings);
    blob
}

fn load_btf(blob: &[u8]) -> io::Result<OwnedFd> {
    let ptr = (blob.as_ptr() as u64).to_ne_bytes();
    let size = u32::try_from(blob.len())
        .map_err(io::Error::other)?
        .to_ne_bytes();
    // union bpf_attr, BPF_BTF_LOAD: btf (u64), btf_log_buf (u64), btf_size.
    let mut attr = attr(&[(0, &ptr), (16, &size)]);
    bpf(BPF_BTF_LOAD, &mut attr).map(owned)
}

fn create_map(btf: &OwnedFd) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let value_size = u32::try_from(size_of::<SockState>()).map_err(io::Error::other)?;
    let btf_fd = u32::try_from(btf.as_raw_fd()).map_err(io::Error::other)?;
    let mut name = [0u8; 16];
    // The kernel keeps 15 characters of a map's name.
    for (slot, byte) in name.iter_mut().zip(SOCK_STATE_MAP.bytes().take(15)) {
        *slot = byte;
    }
    // BPF_MAP_CREATE: map_type, key_size, value_size, max_entries,
    // map_flags, inner_map_fd, numa_node, map_name[16], map_ifindex,
    // btf_fd, btf_key_type_id, btf_value_type_id.
    let mut attr = attr(&[
        (0, &BPF_MAP_TYPE_SK_STORAGE.to_ne_bytes()),
        (4, &4u32.to_ne_bytes()),
        (8, &value_size.to_ne_bytes()),
        (16, &BPF_F_NO_PREALLOC.to_ne_bytes()),
        (28, &name),
        (48, &btf_fd.to_ne_bytes()),
        (52, &KEY_TYPE_ID.to_ne_bytes()),
        (56, &VALUE_TYPE_ID.to_ne_bytes()),
    ]);
    bpf(BPF_MAP_CREATE, &mut attr).map(owned)
}

fn pin(map: &OwnedFd, path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let path_c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let ptr = (path_c.as_ptr() as u64).to_ne_bytes();
    let fd = u32::try_from(map.as_raw_fd()).map_err(io::Error::other)?;
    // BPF_OBJ_PIN: pathname (u64), bpf_fd.
    let mut attr = attr(&[(0, &ptr), (8, &fd.to_ne_bytes())]);
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// Where the map is pinned under `pin_dir`.
pub fn pin_path(pin_dir: &Path) -> PathBuf {
    pin_dir.join(SOCK_STATE_MAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_btf_blob_has_a_consistent_header() {
        let blob = btf();
        let word = |at: usize| u32::from_ne_bytes(blob[at..at + 4].try_into().unwrap());
        assert_eq!(u16::from_ne_bytes([blob[0], blob[1]]), BTF_MAGIC);
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (word(4), word(8), word(12), word(16), word(20));
        assert_eq!((hdr_len, type_off, str_off), (24, 0, type_len));
        assert_eq!(blob.len(), (hdr_len + type_len + str_len) as usize);
        // Four types: three of 4 words (+1 for INT's encoding word, +3 for
        // ARRAY's) and a one-member struct.
        assert_eq!(type_len, 4 * (4 + 4 + 6 + 3 + 3));
        let strings = &blob[(hdr_len + str_off) as usize..];
        assert_eq!(&strings[8..17], b"SockState");
        assert_eq!(&strings[18..23], b"bytes");
    }
}
