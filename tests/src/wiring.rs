//! Building blocks both topologies (and the benchmark's rig) share: bridges,
//! veths that plug a namespace into a bridge, pods running `netprobe serve`,
//! and the dual-stack EndpointSlices over such pods.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    manifest::{AddressType, Endpoint, EndpointPort, EndpointSliceManifest},
    netns::NetNs,
    patience, probe,
    process::Spawned,
    scratch::Scratch,
    topology::Pod,
};

/// How long the pods' servers have to bind all their sockets.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates bridge `name` in `ns`, with `addrs` (/24 and /64) if given, up.
pub fn bridge(ns: &NetNs, name: &str, addrs: Option<(Ipv4Addr, Ipv6Addr)>) -> Result<()> {
    ns.ip(&["link", "add", name, "type", "bridge"])?;
    if let Some((v4, v6)) = addrs {
        ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", name])?;
        ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", name, "nodad"])?;
    }
    ns.ip(&["link", "set", name, "up"])?;
    Ok(())
}

/// A veth pair: `host_if` in `host`, `eth0` in `ns`, neither end up yet.
pub fn veth(host: &NetNs, host_if: &str, ns: &NetNs) -> Result<()> {
    host.ip(&[
        "link",
        "add",
        host_if,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ])
    .with_context(|| format!("veth {host_if} for {}", ns.name()))
    .map(drop)
}

/// Puts `ns` on `bridge` (in `bridge_ns`) through a veth: `host_if` on the
/// bridge side, `eth0` inside `ns` with `v4`/24 and `v6`/64, both ends up.
pub(crate) fn plug(
    bridge_ns: &NetNs,
    bridge: &str,
    host_if: &str,
    ns: &NetNs,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
) -> Result<()> {
    veth(bridge_ns, host_if, ns)?;
    bridge_ns.ip(&["link", "set", host_if, "master", bridge, "up"])?;
    ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
    ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    Ok(())
}

/// A bridge with addresses that the namespaces plugged into it use as their
/// default gateway (a node's `br0`).
#[derive(Clone, Copy)]
pub(crate) struct Gateway<'a> {
    pub netns: &'a NetNs,
    pub bridge: &'a str,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl Gateway<'_> {
    /// [`plug`]s `ns` in and routes everything via the bridge addresses.
    pub fn attach(&self, ns: &NetNs, host_if: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<()> {
        plug(self.netns, self.bridge, host_if, ns, v4, v6)?;
        ns.ip(&["route", "add", "default", "via", &self.v4.to_string()])?;
        ns.ip(&["-6", "route", "add", "default", "via", &self.v6.to_string()])?;
        Ok(())
    }

    /// A new pod namespace attached through `host_if`, running `netprobe
    /// serve --name NAME` on every port of `tcp` and `udp` on both addresses,
    /// its output in `<scratch>/<name>.log`. Not yet known to be listening:
    /// see [`wait_ready`].
    pub fn start_pod(
        &self,
        host_if: &str,
        pod: PodAddress<'_>,
        tcp: &[u16],
        udp: &[u16],
        scratch: &Scratch,
    ) -> Result<Pod> {
        let PodAddress { name, ipv4, ipv6 } = pod;
        let netns = NetNs::new("pod")?;
        self.attach(&netns, host_if, ipv4, ipv6)?;
        let mut cmd = Command::new(probe::binary()?);
        cmd.args(["serve", "--name", name]);
        for (flag, ports) in [("--tcp", tcp), ("--udp", udp)] {
            for port in ports {
                for ip in [IpAddr::V4(ipv4), IpAddr::V6(ipv6)] {
                    cmd.args([flag, &SocketAddr::new(ip, *port).to_string()]);
                }
            }
        }
        let out = std::fs::File::create(log(scratch, name))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let server = Spawned::spawn(&mut cmd, &netns, None)?;
        Ok(Pod {
            name: name.to_owned(),
            ipv4,
            ipv6,
            server,
            netns,
        })
    }
}

/// A pod's name and addresses.
#[derive(Clone, Copy)]
pub(crate) struct PodAddress<'a> {
    pub name: &'a str,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

fn log(scratch: &Scratch, pod: &str) -> std::path::PathBuf {
    scratch.join(format!("{pod}.log"))
}

/// Polls each server's log for its "ready" line (printed once all its
/// sockets are bound); one deadline for all.
pub(crate) fn wait_ready<'a>(
    pods: impl IntoIterator<Item = &'a mut Pod>,
    scratch: &Scratch,
) -> Result<()> {
    let deadline = Instant::now() + patience::scaled(READY_TIMEOUT);
    for pod in pods {
        let log = log(scratch, &pod.name);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("\"ready\":true") {
                break;
            }
            if let Some(status) = pod.server.try_wait()? {
                bail!("server of {} exited ({status}): {text}", pod.name);
            }
            if Instant::now() >= deadline {
                bail!(
                    "server of {} not ready within {READY_TIMEOUT:?}: {text}",
                    pod.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Where an endpoint runs: its node's name and zone.
pub(crate) struct Placement<'a> {
    pub node: &'a str,
    pub zone: Option<&'a str>,
}

/// The IPv4 and IPv6 EndpointSlices (`<service>-v4`, `<service>-v6`) of
/// `service` with the given pods as ready endpoints on their nodes.
pub(crate) fn endpoint_slices<'p, 'q>(
    service: &str,
    namespace: &str,
    port: &EndpointPort,
    pods: impl IntoIterator<Item = (Placement<'p>, &'q Pod)>,
) -> [EndpointSliceManifest; 2] {
    let slice = |family: &str, address_type| {
        EndpointSliceManifest::new(
            &format!("{service}-{family}"),
            namespace,
            service,
            address_type,
        )
        .port(port.clone())
    };
    let (mut v4, mut v6) = (
        slice("v4", AddressType::IPv4),
        slice("v6", AddressType::IPv6),
    );
    for (at, pod) in pods {
        let place = |mut endpoint: Endpoint| {
            endpoint = endpoint.node(at.node);
            match at.zone {
                Some(zone) => endpoint.zone(zone),
                None => endpoint,
            }
        };
        v4 = v4.endpoint(place(Endpoint::ready(pod.ipv4)));
        v6 = v6.endpoint(place(Endpoint::ready(pod.ipv6)));
    }
    [v4, v6]
}
