//! A real Prometheus (Debian's, unpacked by `cargo xtask setup`) scrapes
//! the agent inside the test's node namespace: `promtool check metrics`
//! passes on `/metrics`, a per-Service counter is queried through its HTTP
//! API after traffic, the alert rules load, and every dashboard query
//! evaluates. Host only: the VM image leaves the 100 MB of Prometheus out.

mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use support::*;
use switchyard_tests::{Agent, AgentConfig, Cluster, ClusterSpec, NetNs, Pod, process::Spawned};

const PROMETHEUS_PORT: u16 = 9090;
const ALERTS: &str = include_str!("../../deploy/monitoring/alerts.yaml");
const DASHBOARD: &str = include_str!("../../deploy/monitoring/dashboard.json");

/// Where `cargo xtask test` says the binaries are, else where it puts them.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("SWITCHYARD_PROMETHEUS")
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tools/prometheus/usr/bin"),
            PathBuf::from,
        )
        .join(name)
}

/// A GET with HTTP/1.0 (no chunked answers) to loopback inside `netns`.
fn http_get(netns: &NetNs, port: u16, path: &str) -> Option<String> {
    let path = path.to_owned();
    netns
        .within(move || {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
            stream.write_all(request.as_bytes()).ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).ok()?;
            response
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.to_owned())
        })
        .ok()
        .flatten()
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `/api/v1/query`: the answer's `data`, or the error Prometheus gave.
fn query(netns: &NetNs, promql: &str) -> Result<Value, String> {
    let body = http_get(
        netns,
        PROMETHEUS_PORT,
        &format!("/api/v1/query?query={}", encode(promql)),
    )
    .ok_or("no answer")?;
    let answer: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if answer["status"] == "success" {
        Ok(answer["data"].clone())
    } else {
        Err(body)
    }
}

/// What promtool may say, and why: kube-proxy exports this gauge under a
/// counter's suffix, and dashboards and alerts written for kube-proxy look
/// for it by that name (kube-proxy's own /metrics draws the same line).
const KUBE_PROXY_NAMES: [&str; 1] = [
    "kubeproxy_sync_proxy_rules_no_local_endpoints_total non-counter metrics should not have \"_total\" suffix",
];

fn promtool_check_metrics(exposition: &str) {
    let mut check = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (cargo xtask setup unpacks it)");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let output = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let problems: Vec<&str> = said
        .lines()
        .filter(|line| !line.trim().is_empty() && !KUBE_PROXY_NAMES.contains(&line.trim()))
        .collect();
    assert!(problems.is_empty(), "promtool check metrics: {said}");
    // Exit status 3 is "lint problems found", all of them the ones above.
    assert!(
        output.status.success() || output.status.code() == Some(3),
        "promtool check metrics failed: {said}"
    );
}

fn start_prometheus(cluster: &Cluster) -> Spawned {
    let dir = cluster.scratch.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("alerts.yaml"), ALERTS).unwrap();
    let config = "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files: [alerts.yaml]\n\
         scrape_configs:\n  - job_name: switchyard\n    static_configs:\n      - targets: ['127.0.0.1:10249']\n";
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let mut command = Command::new(tool("prometheus"));
    command
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    Spawned::spawn(&mut command, &cluster.node.netns, None).expect("prometheus starts")
}

#[test]
fn a_real_prometheus_scrapes_queries_and_evaluates_the_deploy_files() {
    let cluster = Cluster::up(&ClusterSpec::with_pods(2)).unwrap();
    let pods: Vec<&Pod> = cluster.pods.iter().collect();
    write_web(&cluster, pods.iter().copied());
    let _agent = Agent::start(AgentConfig::for_cluster(&cluster), &cluster.node.netns).unwrap();
    answered(&cluster.client.tcp(vip4(80), 10).unwrap());

    let exposition = get(&cluster.node.netns, 10249, "/metrics").1;
    promtool_check_metrics(&exposition);

    let _prometheus = start_prometheus(&cluster);
    let netns = &cluster.node.netns;
    let connections = "switchyard_service_connections_total{namespace=\"default\",service=\"web\",port=\"http\",path=\"socket\"}";
    time_until(Duration::from_secs(30), || {
        query(netns, connections).is_ok_and(|data| data["result"][0]["value"][1] == "10")
    });

    // The alert rules loaded as Prometheus reads them, none broken.
    let rules: Value =
        serde_json::from_str(&http_get(netns, PROMETHEUS_PORT, "/api/v1/rules").unwrap()).unwrap();
    let groups = rules["data"]["groups"].as_array().unwrap();
    let loaded: Vec<&Value> = groups
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .collect();
    assert!(loaded.len() >= 7, "{rules:#}");
    for rule in &loaded {
        assert_eq!(rule["health"], "ok", "{rule:#}");
    }

    // Every dashboard query evaluates; the per-Service ones find `web`.
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let mut per_service = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().replace("$instance", ".*");
            let data = query(netns, &expr)
                .unwrap_or_else(|error| panic!("{}: {expr}: {error}", panel["title"]));
            if expr.contains("switchyard_service_connections_total")
                && expr.contains("topk")
                && data["result"].to_string().contains("\"web\"")
            {
                per_service += 1;
            }
        }
    }
    time_until(Duration::from_secs(10), || {
        query(
            netns,
            "topk(10, sum by (namespace, service, port) (rate(switchyard_service_connections_total[1m])))",
        )
        .is_ok_and(|data| data["result"].to_string().contains("\"web\""))
    });
    println!("dashboard per-Service panels with web at once: {per_service}");
}
