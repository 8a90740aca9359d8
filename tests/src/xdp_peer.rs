//! XDP programs of a few raw instructions: one that passes every frame
//! (`r0 = XDP_PASS; exit`), attached in native mode to the LAN side of a
//! node's veth, and whatever the bench brings as its baseline. A veth hands the frames an XDP program sends back out of its
//! device (`XDP_TX`) to its peer only when the peer takes XDP frames; with
//! this on the peer, a node's `eth0` can run the per-packet path at XDP as
//! a NIC would. Loaded with bpf(2) directly: no object file for two
//! instructions. The link goes when the guard drops (it is never pinned).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result, ensure};

use crate::NetNs;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// `union bpf_attr` as the kernel reads it: larger than any command here.
const ATTR_LEN: usize = 128;
const ATTR_SIZE: libc::c_uint = 128;

/// Whether the multi-node lab runs the nodes' per-packet path at XDP on
/// this kernel (and so needs wire-like senders: see [`full_checksums`]).
pub fn in_use() -> bool {
    crate::kernel::has(crate::kernel::Feature::XdpDeviceMap)
}

/// Keeps the program attached while it lives.
pub struct XdpPass {
    _link: OwnedFd,
    _program: OwnedFd,
}

/// `r0 = XDP_PASS; exit`.
const PASS: [u8; 16] = [0xb7, 0, 0, 0, 2, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];

/// Attaches the pass-everything program to `device` in `netns`.
pub fn attach(netns: &NetNs, device: &str) -> Result<XdpPass> {
    attach_instructions(netns, device, &PASS)
}

/// Attaches an XDP program of raw BPF instructions (8 bytes each, as the
/// kernel reads them) to `device` in `netns`, in native mode.
pub fn attach_instructions(netns: &NetNs, device: &str, instructions: &[u8]) -> Result<XdpPass> {
    let device = std::ffi::CString::new(device)?;
    netns.within(|| -> Result<XdpPass> {
        // SAFETY: a valid C string, only read.
        let ifindex = unsafe { libc::if_nametoindex(device.as_ptr()) };
        ensure!(ifindex != 0, "no device {device:?}");
        let program = load(instructions)?;
        let mut attr = [0u8; ATTR_LEN];
        put(&mut attr, 0, fd_number(&program));
        put(&mut attr, 4, ifindex);
        put(&mut attr, 8, BPF_XDP);
        put(&mut attr, 12, XDP_FLAGS_DRV_MODE);
        let link = bpf(BPF_LINK_CREATE, &mut attr).context("attaching XDP_PASS")?;
        Ok(XdpPass {
            _link: link,
            _program: program,
        })
    })?
}

fn load(instructions: &[u8]) -> Result<OwnedFd> {
    ensure!(
        instructions.len().is_multiple_of(8),
        "BPF instructions are 8 bytes each"
    );
    let license = b"GPL\0";
    let mut attr = [0u8; ATTR_LEN];
    put(&mut attr, 0, BPF_PROG_TYPE_XDP);
    put(&mut attr, 4, u32::try_from(instructions.len() / 8)?);
    attr[8..16].copy_from_slice(&(instructions.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 68, BPF_XDP);
    bpf(BPF_PROG_LOAD, &mut attr).context("loading XDP_PASS")
}

fn put(attr: &mut [u8; ATTR_LEN], at: usize, value: u32) {
    attr[at..at + 4].copy_from_slice(&value.to_ne_bytes());
}

fn fd_number(fd: &OwnedFd) -> u32 {
    u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX)
}

fn bpf(command: libc::c_long, attr: &mut [u8; ATTR_LEN]) -> Result<OwnedFd> {
    // SAFETY: `attr` is a bpf_attr-sized buffer laid out for `command`,
    // and every pointer in it outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, command, attr.as_mut_ptr(), ATTR_SIZE) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: a descriptor the kernel just gave us, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd)?) })
}

/// Turns off transmit checksum offload on `device` in `netns`: its frames
/// then leave with complete checksums, as frames off a wire reach a NIC.
/// A veth otherwise hands on a checksum the sender left partial for the
/// stack to finish; XDP sees no skb to finish it with, and a frame it sends
/// back out keeps the partial one (the receiver drops it).
pub fn full_checksums(netns: &NetNs, device: &str) -> Result<()> {
    set_tx_checksum_offload(netns, device, false)
}

/// Turns transmit checksum offload on `device` in `netns` on or off
/// (`ETHTOOL_STXCSUM`).
pub fn set_tx_checksum_offload(netns: &NetNs, device: &str, on: bool) -> Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    let name = device.as_bytes();
    ensure!(name.len() < 16, "device name {device:?} too long");
    netns.within(|| -> Result<()> {
        // struct ethtool_value { cmd, data }.
        let mut value = [ETHTOOL_STXCSUM, u32::from(on)];
        // struct ifreq: name[16], then the request pointer.
        let mut request = [0u8; 40];
        request[..name.len()].copy_from_slice(name);
        request[16..24].copy_from_slice(&(value.as_mut_ptr() as u64).to_ne_bytes());
        // SAFETY: a plain socket call; the descriptor is owned right away.
        let socket =
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        ensure!(socket >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: ours, closed when dropped.
        let socket = unsafe { OwnedFd::from_raw_fd(socket) };
        // SAFETY: `request` names the device and points at `value`, both
        // live for the call.
        let result = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, request.as_mut_ptr()) };
        ensure!(
            result == 0,
            "ETHTOOL_STXCSUM on {device}: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    })?
}
