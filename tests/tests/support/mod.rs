//! What the scenario files share: the standard `web` Service and its slices,
//! and assertions over netprobe results.

#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod flow_table;
pub mod packet_lab;
pub mod two_nodes;

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use serde_json::Value;
use switchyard_tests::{
    Agent, Attempt, Cluster, EndpointPort, NetNs, Pod, Protocol, ServiceManifest, ServicePort,
};

pub const VIP4: &str = "10.96.0.10";
pub const VIP6: &str = "fd00:96::10";
pub const NAMESPACE: &str = "default";

pub fn vip4(port: u16) -> SocketAddr {
    SocketAddr::new(VIP4.parse().unwrap(), port)
}

pub fn vip6(port: u16) -> SocketAddr {
    SocketAddr::new(VIP6.parse().unwrap(), port)
}

/// Dual-stack `web`: TCP 80 -> named port `http` (8080 on every pod).
pub fn web_service() -> ServiceManifest {
    ServiceManifest::new("web", NAMESPACE)
        .cluster_ip(VIP4)
        .cluster_ip(VIP6)
        .port(ServicePort::tcp("http", 80, 8080))
}

pub fn http_port() -> EndpointPort {
    EndpointPort::new("http", Protocol::Tcp, 8080)
}

/// Writes `web.yaml`: the Service and one slice per family over `pods`.
pub fn write_web<'a>(cluster: &Cluster, pods: impl IntoIterator<Item = &'a Pod> + Clone) {
    let [v4, v6] = cluster.endpoint_slices("web", NAMESPACE, &http_port(), pods);
    cluster
        .manifests()
        .write(
            "web.yaml",
            &[web_service().to_value(), v4.to_value(), v6.to_value()],
        )
        .unwrap();
}

pub fn names(pods: &[&Pod]) -> BTreeSet<String> {
    pods.iter().map(|pod| pod.name.clone()).collect()
}

/// Every attempt succeeded; returns the set of backends that answered.
pub fn answered(attempts: &[Attempt]) -> BTreeSet<String> {
    for attempt in attempts {
        assert!(attempt.ok, "attempt failed: {attempt:?}");
    }
    attempts
        .iter()
        .filter_map(|attempt| attempt.name.clone())
        .collect()
}

/// The backends `switchyard services -o json` lists for one frontend, as
/// "ip:port" strings; `None` when the frontend is absent.
pub fn programmed_backends(
    agent: &Agent,
    ip: &str,
    port: u16,
    protocol: &str,
) -> Option<BTreeSet<String>> {
    let services = agent.services().unwrap();
    let ip: IpAddr = ip.parse().unwrap();
    services.as_array().unwrap().iter().find_map(|frontend| {
        let matches = frontend["ip"].as_str()?.parse::<IpAddr>().ok()? == ip
            && frontend["port"] == port
            && frontend["protocol"] == protocol;
        matches.then(|| {
            frontend["backends"]
                .as_array()
                .unwrap()
                .iter()
                .map(backend_text)
                .collect()
        })
    })
}

/// A slot whose backend is missing reads as `missing-<id>`: the tool reads
/// the service and backend maps one after the other, so a read that
/// straddles an update can see a slot whose old backend was just removed.
/// Pollers then simply look again.
fn backend_text(backend: &Value) -> String {
    match (backend["ip"].as_str(), backend["port"].as_u64()) {
        (Some(ip), Some(port)) => {
            let port = u16::try_from(port).expect("a port fits u16");
            SocketAddr::new(ip.parse().unwrap(), port).to_string()
        }
        _ => format!("missing-{}", backend["id"]),
    }
}

/// Polls (bounded) until `done` holds; returns how long that took.
pub fn time_until(limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let limit = switchyard_tests::patience::scaled(limit);
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// One HTTP/1.1 GET from inside `netns` (loopback of that namespace only);
/// returns (status, body).
pub fn get(netns: &NetNs, port: u16, path: &str) -> (u16, String) {
    let path = path.to_owned();
    netns
        .within(move || {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            let status = response[9..12].parse().unwrap();
            let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
            (status, body)
        })
        .unwrap()
}

/// The value of an unlabelled sample in a Prometheus text exposition.
pub fn metric(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (sample, value) = line.split_once(' ')?;
        (sample == name).then(|| value.trim().parse().ok())?
    })
}

/// The sum of every sample of `name` whose labels include all of `labels`,
/// whatever their order; `None` when no sample matches.
pub fn series(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in exposition.lines().filter(|line| !line.starts_with('#')) {
        let Some((sample, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (sample_name, sample_labels) = sample.split_once('{').unwrap_or((sample, "}"));
        let matches = sample_name == name
            && labels.iter().all(|(label, want)| {
                sample_labels
                    .trim_end_matches('}')
                    .split(',')
                    .any(|pair| pair == format!("{label}=\"{want}\""))
            });
        if matches && let Ok(value) = value.trim().parse::<f64>() {
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

/// `empty.yaml`: a Service on `ip` without endpoints, which kube-proxy
/// refuses.
pub fn write_empty(cluster: &Cluster, ip: &str) {
    let empty = ServiceManifest::new("empty", NAMESPACE)
        .cluster_ip(ip)
        .port(ServicePort::tcp("http", 80, 8080));
    cluster
        .manifests()
        .write("empty.yaml", &[empty.to_value()])
        .unwrap();
}
