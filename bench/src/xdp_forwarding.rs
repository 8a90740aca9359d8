//! NodePort forwarding at XDP, on the rig of `forwarding`: Switchyard with
//! `--xdp native`, and a bare XDP redirect (two MAC addresses rewritten,
//! the frame sent into the other device, nothing looked up) as the ceiling
//! on the same devices.
//!
//! The rig's veths are made to behave as NICs do for XDP: their peers take
//! XDP frames (an XDP_PASS program there), senders put complete checksums
//! on the wire, and each veth's receive work, which XDP runs in NAPI on
//! whichever core sent the frame, runs in a thread of its own pinned to the
//! core the node's work is counted on (`NODE_CPU`) for the node's devices
//! and to the other core for the rest of the rig.

use anyhow::{Context, Result, ensure};
use switchyard_tests::{
    NetNs,
    xdp_peer::{self, XdpPass},
};

use crate::rig::{CLIENT_CPU, Rig, SERVER_CPU};

/// The node's devices towards the client and towards node-2.
const NODE_TO_CLIENT: &str = "vcl";
const NODE_TO_NODE2: &str = "vn2";

/// The rig prepared for XDP while it lives: XDP_PASS on the far ends of
/// the node's devices, complete checksums from every sender; the senders'
/// offload comes back on drop, so the other modes run as before.
pub struct XdpRig<'a> {
    _far_ends: Vec<XdpPass>,
    senders: [(&'a NetNs, &'static str); 3],
}

impl<'a> XdpRig<'a> {
    pub fn prepare(rig: &'a Rig) -> Result<Self> {
        let far_ends = vec![
            xdp_peer::attach(&rig.client, "eth0")?,
            xdp_peer::attach(&rig.node2, "eth0")?,
        ];
        let senders = [
            (&rig.client, "eth0"),
            (&rig.node2, "eth0"),
            (rig.remote_pod.netns(), "eth0"),
        ];
        for (netns, device) in senders {
            xdp_peer::full_checksums(netns, device)?;
        }
        Ok(Self {
            _far_ends: far_ends,
            senders,
        })
    }

    /// Moves the XDP receive work into NAPI threads: the node's on the
    /// node's core, the far ends' on the other. Called once the node's
    /// devices run XDP (a veth has NAPI only then); `both_ways`: XDP is on
    /// the node's device towards node-2 too (not the bare redirect's).
    pub fn pin_receive_work(rig: &Rig, both_ways: bool) -> Result<()> {
        let mut devices = vec![
            (&rig.node, NODE_TO_CLIENT, SERVER_CPU),
            (&rig.client, "eth0", CLIENT_CPU),
            (&rig.node2, "eth0", CLIENT_CPU),
        ];
        if both_ways {
            devices.push((&rig.node, NODE_TO_NODE2, SERVER_CPU));
        }
        for (netns, device, cpu) in devices {
            threaded_napi(netns, device)?;
            pin_napi_threads(device, cpu)?;
        }
        Ok(())
    }
}

impl Drop for XdpRig<'_> {
    fn drop(&mut self) {
        for (netns, device) in self.senders {
            // Best effort: the namespaces go with the rig anyway.
            let _ = xdp_peer::set_tx_checksum_offload(netns, device, true);
        }
    }
}

fn threaded_napi(netns: &NetNs, device: &str) -> Result<()> {
    let script = format!("echo 1 > /sys/class/net/{device}/threaded");
    switchyard_tests::command::ip(&["netns", "exec", netns.name(), "sh", "-c", &script])
        .with_context(|| format!("threaded NAPI on {device} in {}", netns.name()))?;
    Ok(())
}

/// Pins every `napi/<device>-<id>` kernel thread to `cpu`.
fn pin_napi_threads(device: &str, cpu: usize) -> Result<()> {
    let prefix = format!("napi/{device}-");
    let mut pinned = 0;
    for entry in std::fs::read_dir("/proc")?.filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(&prefix) {
            continue;
        }
        // SAFETY: a zeroed cpu_set_t with one bit set, passed by pointer
        // for the call only.
        let result = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &raw const set)
        };
        ensure!(
            result == 0,
            "pinning {comm} to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
        pinned += 1;
    }
    ensure!(pinned > 0, "no NAPI thread of {device}");
    Ok(())
}

/// The bare XDP redirect: sends every frame of at least an Ethernet header
/// into device `out` with `dmac` and `smac`, drops shorter ones. Raw BPF
/// instructions: no lookup, no parse, the least a forwarding XDP program
/// does.
pub fn bare_redirect(dmac: [u8; 6], smac: [u8; 6], out: u32) -> Vec<u8> {
    // (opcode, dst | src << 4, offset, immediate)
    let word = |bytes: &[u8]| {
        let mut padded = [0u8; 4];
        padded[..bytes.len()].copy_from_slice(bytes);
        i32::from_ne_bytes(padded)
    };
    let program: [(u8, u8, i16, i32); 15] = [
        (0x61, 0x12, 0, 0),                               // r2 = xdp_md->data
        (0x61, 0x13, 4, 0),                               // r3 = xdp_md->data_end
        (0xbf, 0x24, 0, 0),                               // r4 = r2
        (0x07, 0x04, 0, 14),                              // r4 += ETH_HLEN
        (0x2d, 0x34, 8, 0),                               // if r4 > r3 goto drop
        (0x62, 0x02, 0, word(&dmac[..4])),                // *(u32 *)(r2 + 0) = dmac[0..4]
        (0x6a, 0x02, 4, word(&dmac[4..])),                // *(u16 *)(r2 + 4) = dmac[4..6]
        (0x62, 0x02, 6, word(&smac[..4])),                // *(u32 *)(r2 + 6) = smac[0..4]
        (0x6a, 0x02, 10, word(&smac[4..])),               // *(u16 *)(r2 + 10) = smac[4..6]
        (0xb7, 0x01, 0, i32::try_from(out).unwrap_or(0)), // r1 = out
        (0xb7, 0x02, 0, 0),                               // r2 = 0
        (0x85, 0x00, 0, 23),                              // call bpf_redirect
        (0x95, 0x00, 0, 0),                               // exit
        (0xb7, 0x00, 0, 1),                               // drop: r0 = XDP_DROP
        (0x95, 0x00, 0, 0),                               // exit
    ];
    program
        .iter()
        .flat_map(|&(code, regs, offset, immediate)| {
            let mut insn = [0u8; 8];
            insn[0] = code;
            insn[1] = regs;
            insn[2..4].copy_from_slice(&offset.to_ne_bytes());
            insn[4..8].copy_from_slice(&immediate.to_ne_bytes());
            insn
        })
        .collect()
}

/// The bare redirect on the node's client-side device, towards node-2.
pub fn attach_bare(rig: &Rig) -> Result<XdpPass> {
    let dmac = mac(&rig.node2, "eth0")?;
    let smac = mac(&rig.node, NODE_TO_NODE2)?;
    let out = ifindex(&rig.node, NODE_TO_NODE2)?;
    xdp_peer::attach_instructions(&rig.node, NODE_TO_CLIENT, &bare_redirect(dmac, smac, out))
}

fn link(netns: &NetNs, device: &str) -> Result<serde_json::Value> {
    let json = netns.ip(&["-j", "link", "show", "dev", device])?;
    let links: serde_json::Value = serde_json::from_str(&json)?;
    Ok(links[0].clone())
}

fn mac(netns: &NetNs, device: &str) -> Result<[u8; 6]> {
    let text = link(netns, device)?["address"]
        .as_str()
        .with_context(|| format!("no MAC address for {device}"))?
        .to_owned();
    let bytes: Vec<u8> = text
        .split(':')
        .map(|part| u8::from_str_radix(part, 16))
        .collect::<Result<_, _>>()?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{text} is no MAC address"))
}

fn ifindex(netns: &NetNs, device: &str) -> Result<u32> {
    let index = link(netns, device)?["ifindex"]
        .as_u64()
        .with_context(|| format!("no ifindex for {device}"))?;
    Ok(u32::try_from(index)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bare_redirect_is_fifteen_instructions_ending_in_exit() {
        let program = bare_redirect([2; 6], [4; 6], 7);
        assert_eq!(program.len(), 15 * 8);
        assert_eq!(program[12 * 8], 0x95);
        assert_eq!(program[14 * 8], 0x95);
        // The jump lands on the drop: from instruction 4, 8 ahead is 13.
        assert_eq!(
            i16::from_ne_bytes([program[4 * 8 + 2], program[4 * 8 + 3]]),
            8
        );
        assert_eq!(program[13 * 8 + 4], 1);
    }
}
