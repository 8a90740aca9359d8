//! The benchmark's network, in namespaces it owns:
//!
//! ```text
//!   node netns (ip_forward=1; the agent, or the iptables/nftables rules)
//!     br0 10.244.0.1/24 ── bp<i> ── pod netns <i>: 10.244.0.(10+i), loadgen serve (cpu 1)
//!     vcl 10.250.0.1/30 ────────── client netns:  10.250.0.2, loadgen clients (cpu 0)
//!     vn2 10.251.0.1/30 ────────── node-2 netns:  10.251.0.2 (forwards; no agent)
//!                                    rp0 10.244.1.1/24 ── remote pod: 10.244.1.10
//!     10.244.1.0/24 via 10.251.0.2
//! ```
//!
//! The remote pod is a backend on another node: a NodePort connection to
//! it through the node is NATed to the node (kube-proxy's masquerade, or
//! Switchyard's own NAT), which is what the churn figure measures.
//!
//! The client is routed, not bridged, to the pods: every mode's traffic
//! crosses the node's IP layer once, so the only difference between modes
//! is the service translation itself. (Bridged, the iptables modes would
//! also need br_netfilter for replies to find their way back.)

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use switchyard_tests::{BpfFs, Cgroup, NetNs, Scratch, Spawned, wiring};

use crate::catalog::TARGET_PORT;

pub const PODS: usize = 4;
/// netfilter's TIME_WAIT timeout on the node, in seconds, for every figure
/// but the NodePort churn (which uses the kernel's 120).
pub const SHORT_TIME_WAIT_S: &str = "1";
pub const NODE_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
/// The node's side of its link to node-2, and node-2's.
const NODE_REMOTE_SIDE: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
const NODE2: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 2);
const NODE2_PODS_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
pub const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
/// The devices the agent's per-packet path goes on: towards the client and
/// towards node-2.
pub const PACKET_DEVICES: &str = "vcl,vn2";
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const BRIDGE: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// Clients on one core, servers on the other.
pub const CLIENT_CPU: usize = 0;
pub const SERVER_CPU: usize = 1;
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct BenchPod {
    pub name: String,
    pub ip: Ipv4Addr,
    // Before `netns`: the server dies before its namespace goes.
    server: Spawned,
    netns: NetNs,
}

/// Field order is teardown order.
pub struct Rig {
    pub pods: Vec<BenchPod>,
    /// A pod behind node-2.
    pub remote_pod: BenchPod,
    pub node2: NetNs,
    pub client: NetNs,
    pub cgroup: Cgroup,
    pub node: NetNs,
    pub bpffs: BpfFs,
    pub scratch: Scratch,
    pub loadgen: PathBuf,
}

impl Rig {
    pub fn up(loadgen: &Path) -> Result<Self> {
        let scratch = Scratch::new("bench")?;
        let node = NetNs::new("bnode")?;
        node.sysctl("net/ipv4/ip_forward", "1")?;
        // Connection-rate runs leave many TIME_WAIT entries behind; in the
        // iptables modes they fill the shared conntrack table long before
        // its default 120 s timeout would clear them.
        node.sysctl(
            "net/netfilter/nf_conntrack_tcp_timeout_time_wait",
            SHORT_TIME_WAIT_S,
        )
        .context("conntrack sysctls (is nf_conntrack available?)")?;
        wiring::bridge(&node, "br0", None)?;
        node.ip(&["addr", "add", &format!("{BRIDGE}/24"), "dev", "br0"])?;

        let client = NetNs::new("bclient")?;
        link(&node, "vcl", &client, NODE_CLIENT_SIDE, CLIENT, 30)?;
        node.ip(&[
            "addr",
            "add",
            &format!("{NODE_CLIENT_SIDE}/30"),
            "dev",
            "vcl",
        ])?;
        client.sysctl("net/ipv4/ip_local_port_range", "1024 65000")?;
        client.sysctl("net/ipv4/tcp_tw_reuse", "1")?;
        let cgroup = Cgroup::new("bclient")?;

        let mut pods = Vec::new();
        for i in 0..PODS {
            let ip = Ipv4Addr::new(10, 244, 0, 10 + u8::try_from(i).expect("PODS fits a /24"));
            let pod = BenchPod::start(&scratch, loadgen, format!("pod-{i}"), ip, |netns| {
                link(&node, &format!("bp{i}"), netns, BRIDGE, ip, 24)?;
                node.ip(&["link", "set", &format!("bp{i}"), "master", "br0"])?;
                Ok(())
            })?;
            pods.push(pod);
        }

        let node2 = NetNs::new("bnode2")?;
        node2.sysctl("net/ipv4/ip_forward", "1")?;
        link(&node, "vn2", &node2, NODE_REMOTE_SIDE, NODE2, 30)?;
        node.ip(&[
            "addr",
            "add",
            &format!("{NODE_REMOTE_SIDE}/30"),
            "dev",
            "vn2",
        ])?;
        node.ip(&["route", "add", "10.244.1.0/24", "via", &NODE2.to_string()])?;
        let remote_pod = BenchPod::start(
            &scratch,
            loadgen,
            "remote-pod".into(),
            REMOTE_POD,
            |netns| {
                link(&node2, "rp0", netns, NODE2_PODS_GATEWAY, REMOTE_POD, 24)?;
                node2.ip(&[
                    "addr",
                    "add",
                    &format!("{NODE2_PODS_GATEWAY}/24"),
                    "dev",
                    "rp0",
                ])?;
                Ok(())
            },
        )?;
        let rig = Self {
            pods,
            remote_pod,
            node2,
            client,
            cgroup,
            node,
            bpffs: BpfFs::new()?,
            scratch,
            loadgen: loadgen.to_owned(),
        };
        rig.waitservers()?;
        Ok(rig)
    }

    pub fn pod_ips(&self) -> Vec<Ipv4Addr> {
        self.pods.iter().map(|p| p.ip).collect()
    }

    fn waitservers(&self) -> Result<()> {
        let deadline = Instant::now() + SERVER_READY_TIMEOUT;
        for pod in self.pods.iter().chain([&self.remote_pod]) {
            let log = self.scratch.join(format!("{}.log", pod.name));
            while !std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("ready")
            {
                if Instant::now() > deadline {
                    bail!("{} did not start serving (see {})", pod.name, log.display());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

impl BenchPod {
    /// Moves every thread of the pod's server to `cpu`.
    pub fn pin_server(&self, cpu: usize) -> Result<()> {
        let tasks = format!("/proc/{}/task", self.server.pid());
        for task in std::fs::read_dir(&tasks).with_context(|| tasks.clone())? {
            let tid: libc::pid_t = task?.file_name().to_string_lossy().parse()?;
            // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
            let failed = unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &raw const set) != 0
            };
            if failed {
                bail!(
                    "pinning {}'s thread {tid} to cpu {cpu}: {}",
                    self.name,
                    std::io::Error::last_os_error()
                );
            }
        }
        Ok(())
    }

    /// A pod namespace plugged in by `plug`, serving on `ip`.
    fn start(
        scratch: &Scratch,
        loadgen: &Path,
        name: String,
        ip: Ipv4Addr,
        plug: impl FnOnce(&NetNs) -> Result<()>,
    ) -> Result<Self> {
        let netns = NetNs::new("bpod")?;
        plug(&netns)?;
        let log = scratch.join(format!("{name}.log"));
        let mut cmd = Command::new(loadgen);
        cmd.args(["serve", "--name", &name, "--cpu", &SERVER_CPU.to_string()])
            .arg("--listen")
            .arg(SocketAddr::from((ip, TARGET_PORT)).to_string())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(scratch.join(format!("{name}.err")))?);
        let server = Spawned::spawn(&mut cmd, &netns, None)?;
        Ok(Self {
            name,
            ip,
            server,
            netns,
        })
    }
}

impl BenchPod {
    pub fn netns(&self) -> &NetNs {
        &self.netns
    }
}

/// A veth from `node` (as `node_if`) into `ns` (as eth0, address
/// `address`/`prefix`), both up, `ns` routed via `gateway`.
fn link(
    node: &NetNs,
    node_if: &str,
    ns: &NetNs,
    gateway: Ipv4Addr,
    address: Ipv4Addr,
    prefix: u8,
) -> Result<()> {
    wiring::veth(node, node_if, ns)?;
    node.ip(&["link", "set", node_if, "up"])?;
    ns.ip(&["addr", "add", &format!("{address}/{prefix}"), "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
    Ok(())
}
