//! Every field of KubeProxyConfiguration (v1alpha1 and v1alpha2), and what
//! Switchyard does with it: applied to a flag, or ignored with the reason.
//! A field set to something other than kube-proxy's "use the default" (null,
//! "", 0, "0s", false, empty) and ignored is said once, by name, at start;
//! so is a field kube-proxy does not have.

use serde_yaml::Value;

/// What a field means here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Treatment {
    /// Applied to the `run` flag of this name (see `apply_to`).
    Applied(&'static str),
    /// Accepted and ignored, for this reason.
    Ignored(&'static str),
    /// A section whose fields are listed one by one.
    Section,
}

use Treatment::{Applied, Ignored, Section};

const NO_MARKS: &str = "Switchyard marks no packets";
const IPVS: &str = "IPVS tuning; Switchyard's datapath is its own";
const WINDOWS: &str = "Windows only";
const CLIENT: &str =
    "Switchyard only lists and watches; its requests are not rate limited client-side";

/// Dotted paths as the file spells them.
pub const FIELDS: &[(&str, Treatment)] = &[
    ("apiVersion", Applied("config")),
    ("kind", Applied("config")),
    (
        "featureGates",
        Ignored("kube-proxy's feature gates do not apply"),
    ),
    ("clientConnection", Section),
    ("clientConnection.kubeconfig", Applied("--kubeconfig")),
    ("clientConnection.qps", Ignored(CLIENT)),
    ("clientConnection.burst", Ignored(CLIENT)),
    (
        "clientConnection.contentType",
        Ignored("Switchyard speaks JSON to the API server"),
    ),
    (
        "clientConnection.acceptContentTypes",
        Ignored("Switchyard speaks JSON to the API server"),
    ),
    ("hostnameOverride", Applied("--hostname-override")),
    (
        "bindAddress",
        Ignored("deprecated in kube-proxy; NodePorts follow nodePortAddresses"),
    ),
    ("healthzBindAddress", Applied("--healthz-bind-address")),
    ("metricsBindAddress", Applied("--metrics-bind-address")),
    ("bindAddressHardFail", Applied("--bind-address-hard-fail")),
    (
        "enableProfiling",
        Ignored("Switchyard serves no profiling endpoint"),
    ),
    (
        "showHiddenMetricsForVersion",
        Ignored("Switchyard hides no metrics"),
    ),
    // Switchyard is its own mode; the named one picks whose masqueradeAll
    // and sync periods apply.
    ("mode", Applied("config")),
    ("syncPeriod", Applied("--sync-period")),
    ("minSyncPeriod", Applied("--min-sync-period")),
    ("masqueradeAll", Applied("--masquerade-all")),
    ("iptables", Section),
    ("iptables.masqueradeAll", Applied("--masquerade-all")),
    ("iptables.masqueradeBit", Ignored(NO_MARKS)),
    (
        "iptables.localhostNodePorts",
        Ignored("NodePorts answer on the addresses nodePortAddresses selects"),
    ),
    ("iptables.syncPeriod", Applied("--sync-period")),
    ("iptables.minSyncPeriod", Applied("--min-sync-period")),
    ("nftables", Section),
    ("nftables.masqueradeAll", Applied("--masquerade-all")),
    ("nftables.masqueradeBit", Ignored(NO_MARKS)),
    ("nftables.syncPeriod", Applied("--sync-period")),
    ("nftables.minSyncPeriod", Applied("--min-sync-period")),
    ("ipvs", Section),
    ("ipvs.syncPeriod", Applied("--sync-period")),
    ("ipvs.minSyncPeriod", Applied("--min-sync-period")),
    ("ipvs.scheduler", Ignored(IPVS)),
    ("ipvs.excludeCIDRs", Ignored(IPVS)),
    ("ipvs.strictARP", Ignored(IPVS)),
    ("ipvs.tcpTimeout", Ignored(IPVS)),
    ("ipvs.tcpFinTimeout", Ignored(IPVS)),
    ("ipvs.udpTimeout", Ignored(IPVS)),
    ("winkernel", Ignored(WINDOWS)),
    ("windowsRunAsService", Ignored(WINDOWS)),
    ("detectLocalMode", Applied("--detect-local-mode")),
    ("detectLocal", Section),
    (
        "detectLocal.bridgeInterface",
        Applied("--pod-bridge-interface"),
    ),
    (
        "detectLocal.interfaceNamePrefix",
        Applied("--pod-interface-name-prefix"),
    ),
    ("clusterCIDR", Applied("--cluster-cidr")),
    ("nodePortAddresses", Applied("--nodeport-addresses")),
    (
        "oomScoreAdj",
        Ignored("set the agent's OOM score in its DaemonSet"),
    ),
    ("conntrack", Section),
    ("conntrack.maxPerCore", Applied("--conntrack-max-per-core")),
    ("conntrack.min", Applied("--conntrack-min")),
    (
        "conntrack.tcpEstablishedTimeout",
        Applied("--conntrack-tcp-timeout-established"),
    ),
    (
        "conntrack.tcpCloseWaitTimeout",
        Applied("--conntrack-tcp-timeout-close-wait"),
    ),
    (
        "conntrack.tcpBeLiberal",
        Ignored("Switchyard's conntrack never judges TCP windows (always liberal)"),
    ),
    ("conntrack.udpTimeout", Applied("--conntrack-udp-timeout")),
    (
        "conntrack.udpStreamTimeout",
        Applied("--conntrack-udp-timeout-stream"),
    ),
    (
        "configSyncPeriod",
        Ignored("Switchyard's watches need no resync"),
    ),
    ("portRange", Ignored("kube-proxy's removed userspace mode")),
    ("logging", Ignored("Switchyard's log filter is RUST_LOG")),
];

/// kube-proxy's "leave it to the default": null, "", 0, "0s", false, or
/// an empty list or map.
pub fn is_unset(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(on) => !on,
        Value::Number(number) => number.as_f64() == Some(0.0),
        Value::String(text) => is_unset_text(text),
        Value::Sequence(items) => items.is_empty(),
        Value::Mapping(map) => map.values().all(is_unset),
        Value::Tagged(tagged) => is_unset(&tagged.value),
    }
}

/// [`is_unset`] for a text value: empty, "0" or a zero duration.
pub fn is_unset_text(text: &str) -> bool {
    let text = text.trim();
    text.is_empty() || text == "0" || humantime::parse_duration(text).is_ok_and(|d| d.is_zero())
}

/// One line per field that is set and ignored, or unknown.
pub fn warnings(document: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    walk(document, "", &mut lines);
    lines
}

fn walk(value: &Value, prefix: &str, lines: &mut Vec<String>) {
    let Value::Mapping(map) = value else {
        return;
    };
    for (key, value) in map {
        let Some(key) = key.as_str() else {
            continue;
        };
        let path = if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        };
        match FIELDS.iter().find(|(field, _)| *field == path) {
            Some((_, Section)) => walk(value, &path, lines),
            Some((_, Ignored(reason))) if !is_unset(value) => {
                lines.push(format!("{path} is ignored: {reason}"));
            }
            Some((_, Applied(_) | Ignored(_))) => {}
            None => lines.push(format!(
                "{path} is not a KubeProxyConfiguration field; ignored"
            )),
        }
    }
}
