//! `deploy/monitoring`: the Prometheus alert rules and the Grafana
//! dashboard parse, and every query in them names only metrics the agent
//! exports, so neither can drift from the code.

use std::{collections::BTreeSet, path::Path};

use serde_json::Value;
use switchyard::serve::metrics::Metrics;

fn read(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/monitoring")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Every alert rule's expression, by alert name.
fn alert_expressions() -> Vec<(String, String)> {
    let rules: Value = serde_yaml::from_str(&read("alerts.yaml")).unwrap();
    let groups = rules["groups"].as_array().expect("groups");
    groups
        .iter()
        .flat_map(|group| group["rules"].as_array().expect("rules").iter())
        .map(|rule| {
            let name = rule["alert"].as_str().expect("an alert name").to_owned();
            for field in ["summary", "description"] {
                assert!(
                    rule["annotations"][field].is_string(),
                    "{name}: annotations.{field}"
                );
            }
            assert!(rule["labels"]["severity"].is_string(), "{name}: severity");
            (name, rule["expr"].as_str().expect("an expr").to_owned())
        })
        .collect()
}

/// Every panel query of the dashboard, by panel title.
fn dashboard_expressions() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(&read("dashboard.json")).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("a title").to_owned();
        for target in panel["targets"].as_array().expect("targets") {
            queries.push((
                title.clone(),
                target["expr"].as_str().expect("expr").to_owned(),
            ));
        }
    }
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    for variable in variables {
        if let Some(query) = variable["query"].as_str().filter(|q| q.contains('(')) {
            queries.push(("variable".into(), query.to_owned()));
        }
    }
    queries
}

/// The metric names a PromQL expression mentions (ours, kube-proxy's and
/// the process's; functions, labels and keywords are left out).
fn metric_names(expression: &str) -> BTreeSet<String> {
    expression
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| {
            ["switchyard_", "kubeproxy_", "process_"]
                .iter()
                .any(|prefix| word.starts_with(prefix))
        })
        .map(str::to_owned)
        .collect()
}

fn assert_exported(source: &str, queries: &[(String, String)]) {
    let metrics = Metrics::new();
    let exported = metrics.names();
    assert!(!queries.is_empty(), "{source}: no queries");
    for (name, expression) in queries {
        let mentioned = metric_names(expression);
        assert!(
            !mentioned.is_empty(),
            "{source} {name}: no metric in {expression}"
        );
        for metric in mentioned {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| metric.strip_suffix(suffix))
                .filter(|base| exported.contains(*base))
                .unwrap_or(&metric);
            assert!(
                exported.contains(base),
                "{source} {name}: {metric} is not a metric the agent exports"
            );
        }
    }
}

#[test]
fn every_alert_names_only_exported_metrics() {
    let alerts = alert_expressions();
    let names: BTreeSet<&str> = alerts.iter().map(|(name, _)| name.as_str()).collect();
    for wanted in [
        "SwitchyardMapPressure",
        "SwitchyardNatPortsExhausted",
        "SwitchyardDatapathDrift",
        "SwitchyardSyncStalled",
    ] {
        assert!(names.contains(wanted), "{wanted} missing");
    }
    assert_exported("alerts.yaml", &alerts);
    // The conntrack map's name is the ABI's, not a copy that could age.
    assert!(read("alerts.yaml").contains(switchyard_abi::CONNTRACK_MAP));
}

#[test]
fn every_dashboard_query_names_only_exported_metrics() {
    assert_exported("dashboard.json", &dashboard_expressions());
}

#[test]
fn the_check_finds_a_metric_the_agent_does_not_export() {
    let made_up = [(
        "made up".to_owned(),
        "rate(switchyard_no_such_thing_total[5m])".to_owned(),
    )];
    let result = std::panic::catch_unwind(|| assert_exported("test", &made_up));
    assert!(result.is_err());
}
