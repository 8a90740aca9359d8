//! `cargo xtask demo`: a one-node cluster in network namespaces, a dual-stack
//! Service `web` in front of four pods, and the agent balancing it; shows how
//! 40 requests spread over the pods, then scales the Service to two pods and
//! back while the agent runs.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use switchyard_tests::{
    Agent, AgentConfig, Cluster, ClusterSpec, EndpointPort, Protocol, ServiceManifest, ServicePort,
    Summary,
};

const REQUESTS: u32 = 40;
const CLUSTER_IP_V4: &str = "10.96.0.10:80";
const CLUSTER_IP_V6: &str = "[fd00:96::10]:80";
/// How long the agent gets to apply a manifest change.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(15);

fn main() -> Result<()> {
    println!("Building the topology: node-a with a bridge, 4 pods, 1 client...");
    let cluster = Cluster::up(&ClusterSpec::with_pods(4))?;
    for pod in &cluster.pods {
        println!("  {:<6} {:<12} {}", pod.name, pod.ipv4, pod.ipv6);
    }
    println!(
        "  client {:<12} {}  (cgroup {})",
        cluster.client.ipv4,
        cluster.client.ipv6,
        cluster.client.cgroup.path().display()
    );

    let service = ServiceManifest::new("web", "default")
        .cluster_ip("10.96.0.10")
        .cluster_ip("fd00:96::10")
        .port(ServicePort::tcp("http", 80, 8080))
        .label("app", "web");
    cluster
        .manifests()
        .write("web-service.yaml", &[service.to_value()])?;
    write_endpoints(&cluster, 4)?;
    println!(
        "\nService web: 10.96.0.10 and fd00:96::10 port 80 -> pods port 8080 ({})",
        cluster.manifests().path().display()
    );

    println!("Starting the agent...");
    let config = AgentConfig::for_cluster(&cluster);
    let agent =
        Agent::start(config, &cluster.node.netns).context("the agent did not become ready")?;
    println!("Agent ready. What the kernel maps hold (switchyard services):\n");
    print!("{}", agent.services_table()?);

    report(&cluster, "4 endpoints")?;
    println!("\nScaling web down to pod-0 and pod-1 (rewriting the EndpointSlices)...");
    write_endpoints(&cluster, 2)?;
    converge(&cluster, 2)?;
    report(&cluster, "2 endpoints")?;
    println!();
    print!("{}", agent.services_table()?);
    println!("\nScaling web back up to 4 pods...");
    write_endpoints(&cluster, 4)?;
    converge(&cluster, 4)?;
    report(&cluster, "4 endpoints again")?;
    println!("\nWhat each Service and backend got, counted in the kernel (switchyard services):\n");
    print!("{}", agent.services_table()?);
    let client = cluster.client.ipv4.to_string();
    println!(
        "\nWhy a connection from the client goes where it goes \
         (switchyard explain tcp {client} {CLUSTER_IP_V4} --from node):\n"
    );
    print!(
        "{}",
        agent.explain_text(&["tcp", &client, CLUSTER_IP_V4, "--from", "node"])?
    );
    println!("\nTearing down.");
    Ok(())
}

fn write_endpoints(cluster: &Cluster, pods: usize) -> Result<()> {
    let port = EndpointPort::new("http", Protocol::Tcp, 8080);
    let slices = cluster.endpoint_slices("web", "default", &port, cluster.pods.iter().take(pods));
    let docs: Vec<Value> = slices
        .iter()
        .map(switchyard_tests::EndpointSliceManifest::to_value)
        .collect();
    cluster.manifests().write("web-endpoints.yaml", &docs)?;
    Ok(())
}

/// Waits (bounded) until a small burst reaches exactly the first `pods` pods.
fn converge(cluster: &Cluster, pods: usize) -> Result<()> {
    let want: Vec<&str> = cluster.pods[..pods]
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let started = Instant::now();
    loop {
        let s = cluster.client.burst(CLUSTER_IP_V4.parse()?, 20)?;
        let mut seen: Vec<&str> = s.per_backend.keys().map(String::as_str).collect();
        seen.sort_unstable();
        if s.ok && seen == want {
            println!("  applied after {:.1?}", started.elapsed());
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("agent did not converge to {want:?} within {CONVERGE_TIMEOUT:?}: {s:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn report(cluster: &Cluster, title: &str) -> Result<()> {
    for to in [CLUSTER_IP_V4, CLUSTER_IP_V6] {
        let to: SocketAddr = to.parse()?;
        let summary = cluster.client.burst(to, REQUESTS)?;
        println!("\n{REQUESTS} requests to {to} ({title}):");
        print_distribution(cluster, &summary);
    }
    Ok(())
}

fn print_distribution(cluster: &Cluster, summary: &Summary) {
    for pod in &cluster.pods {
        let n = summary.per_backend.get(&pod.name).copied().unwrap_or(0);
        let bar = "#".repeat(usize::try_from(n).expect("at most REQUESTS"));
        println!("  {:<6} {:>3}  {bar}", pod.name, n);
    }
    if summary.failures > 0 {
        let errors: BTreeMap<_, _> = summary.errors.iter().collect();
        println!("  failed {:>3}  {errors:?}", summary.failures);
    }
}
