//! The deploy/ manifests agree with the code: the DaemonSet's arguments
//! parse with the real command line, its probes hit the health server it
//! configures, and the ClusterRole grants exactly what the watchers use.

use std::{collections::BTreeSet, path::PathBuf};

use clap::Parser;
use serde_json::Value;
use switchyard::{
    cli::{Cli, Command},
    source::kube_source::WATCHED_RESOURCES,
};

fn documents(file: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| serde::Deserialize::deserialize(document).unwrap())
        .collect()
}

fn container() -> Value {
    let daemonset = documents("daemonset.yaml").remove(0);
    assert_eq!(daemonset["kind"], "DaemonSet");
    daemonset["spec"]["template"]["spec"]["containers"][0].clone()
}

#[test]
fn daemonset_arguments_parse_with_the_real_cli() {
    let container = container();
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap())
        .collect();
    let cli = Cli::try_parse_from(std::iter::once("switchyard").chain(args)).unwrap();
    let Command::Run(run) = cli.command else {
        panic!("the DaemonSet must run `switchyard run`");
    };
    assert!(
        run.manifests.is_none(),
        "in a cluster the API is the source"
    );
    let health_port = i64::from(run.serving.healthz_bind_address.port());
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/healthz");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], health_port, "{probe}");
    }
    let env = container["env"].as_array().unwrap();
    assert!(
        env.iter().any(|var| var["name"] == "NODE_NAME"
            && var["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"),
        "NODE_NAME must come from the downward API"
    );
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|mount| mount["mountPath"].as_str().unwrap())
        .collect();
    // Only the agent's own directory of the host's bpffs is mounted.
    assert!(run.pins.bpffs.starts_with("/sys/fs/bpf/"));
    assert!(mounts.contains(&run.pins.bpffs.to_str().unwrap()));
    assert!(mounts.contains(&run.cgroup.to_str().unwrap()));
}

#[test]
fn daemonset_runs_unprivileged_with_named_capabilities() {
    let security = &container()["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
}

/// A pinned image tag, the release this file ships with; metrics on the
/// node's loopback unless a flag widens them.
#[test]
fn daemonset_pins_its_image_and_keeps_metrics_on_loopback() {
    let image = container()["image"].as_str().unwrap().to_owned();
    assert!(
        image.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))),
        "{image}"
    );
    let args = container()["args"].to_string();
    assert!(!args.contains("--metrics-bind-address"), "{args}");
}

/// Sockets of removed backends are destroyed, and namespaces' source
/// addresses learned, inside pods' network namespaces: found by host PID
/// and entered with setns.
#[test]
fn daemonset_can_enter_pods_network_namespaces() {
    let pod = &documents("daemonset.yaml")[0]["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    let added = &container()["securityContext"]["capabilities"]["add"];
    for capability in ["SYS_ADMIN", "SYS_PTRACE"] {
        assert!(
            added.as_array().unwrap().iter().any(|c| c == capability),
            "{capability} missing from {added}"
        );
    }
}

/// (group, resource, verb) triples.
fn granted() -> BTreeSet<(String, String, String)> {
    let role = documents("rbac.yaml")
        .into_iter()
        .find(|document| document["kind"] == "ClusterRole")
        .unwrap();
    let mut triples = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        let list = |key: &str| -> Vec<String> {
            rule[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        for group in list("apiGroups") {
            for resource in list("resources") {
                for verb in list("verbs") {
                    triples.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    triples
}

#[test]
fn cluster_role_grants_exactly_what_the_watchers_use() {
    let needed: BTreeSet<(String, String, String)> = WATCHED_RESOURCES
        .iter()
        .flat_map(|watched| {
            watched.verbs.iter().map(|verb| {
                (
                    watched.group.to_owned(),
                    watched.resource.to_owned(),
                    (*verb).to_owned(),
                )
            })
        })
        .collect();
    assert_eq!(granted(), needed);
}

#[test]
fn the_binding_names_the_daemonsets_service_account() {
    let binding = documents("rbac.yaml")
        .into_iter()
        .find(|document| document["kind"] == "ClusterRoleBinding")
        .unwrap();
    let account = &documents("serviceaccount.yaml")[0];
    let daemonset = &documents("daemonset.yaml")[0];
    let subject = &binding["subjects"][0];
    assert_eq!(subject["name"], account["metadata"]["name"]);
    assert_eq!(subject["namespace"], account["metadata"]["namespace"]);
    assert_eq!(
        daemonset["spec"]["template"]["spec"]["serviceAccountName"],
        account["metadata"]["name"]
    );
}
