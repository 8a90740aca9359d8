//! The rule set kube-proxy's iptables mode writes for ClusterIP Services,
//! in `iptables-restore` format: the filter chains it hooks into INPUT,
//! FORWARD and OUTPUT, and the nat chains KUBE-SERVICES (one rule per
//! service port, walked linearly), KUBE-SVC-* (masquerade check, then
//! `statistic` rules choosing an endpoint), KUBE-SEP-* (hairpin masquerade,
//! DNAT), KUBE-MARK-MASQ and KUBE-POSTROUTING. Shapes follow kube-proxy's
//! own golden test output (pkg/proxy/iptables/proxier_test.go).

use std::fmt::Write;

use super::{CLUSTER_CIDR, KubeProxyService, TARGET_PORT, chain_name::hash16};

pub fn svc_chain(service: &KubeProxyService) -> String {
    format!(
        "KUBE-SVC-{}",
        hash16(&[&service.port_name(), service.protocol.proto()])
    )
}

pub fn ext_chain(service: &KubeProxyService) -> String {
    format!(
        "KUBE-EXT-{}",
        hash16(&[&service.port_name(), service.protocol.proto()])
    )
}

pub fn sep_chain(service: &KubeProxyService, endpoint: &str) -> String {
    format!(
        "KUBE-SEP-{}",
        hash16(&[&service.port_name(), service.protocol.proto(), endpoint])
    )
}

fn endpoint(ip: std::net::Ipv4Addr) -> String {
    format!("{ip}:{TARGET_PORT}")
}

/// The whole rule set, as a full sync writes it.
pub fn full(services: &[KubeProxyService]) -> String {
    let mut out = String::with_capacity(services.len() * 1_500 + 4_096);
    filter_table(&mut out);
    out.push_str("*nat\n");
    for chain in [
        "KUBE-SERVICES",
        "KUBE-MARK-MASQ",
        "KUBE-POSTROUTING",
        "KUBE-NODEPORTS",
    ] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for service in services {
        let _ = writeln!(out, ":{} - [0:0]", svc_chain(service));
        if service.node_port.is_some() {
            let _ = writeln!(out, ":{} - [0:0]", ext_chain(service));
        }
        for ip in &service.endpoints {
            let _ = writeln!(out, ":{} - [0:0]", sep_chain(service, &endpoint(*ip)));
        }
    }
    out.push_str(concat!(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n",
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    ));
    services_chain(&mut out, services);
    for service in services {
        service_chains(&mut out, service);
        node_port_chains(&mut out, service);
    }
    out.push_str("COMMIT\n");
    out
}

/// KUBE-NODEPORTS dispatch and the KUBE-EXT chain of an externally visible
/// service port: masquerade (the Cluster traffic policy), then the service.
fn node_port_chains(out: &mut String, service: &KubeProxyService) {
    let Some(node_port) = service.node_port else {
        return;
    };
    let name = service.port_name();
    let ext = ext_chain(service);
    let _ = writeln!(
        out,
        "-A KUBE-NODEPORTS -m comment --comment {name} -m {proto} -p {proto} --dport {node_port} -j {ext}",
        proto = service.protocol.proto()
    );
    let _ = writeln!(
        out,
        "-A {ext} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ"
    );
    let _ = writeln!(out, "-A {ext} -j {}", svc_chain(service));
}

/// What a partial sync writes when one Service's endpoints change (for
/// `iptables-restore --noflush`): the top-level KUBE-SERVICES chain in full,
/// as kube-proxy always rewrites it, the changed service's chains, and the
/// deletion of endpoint chains no longer used.
pub fn endpoint_change(
    services: &[KubeProxyService],
    before: &KubeProxyService,
    after: &KubeProxyService,
) -> String {
    let mut out = String::with_capacity(services.len() * 150 + 4_096);
    out.push_str("*nat\n:KUBE-SERVICES - [0:0]\n");
    let _ = writeln!(out, ":{} - [0:0]", svc_chain(after));
    let stale: Vec<String> = before
        .endpoints
        .iter()
        .filter(|ip| !after.endpoints.contains(ip))
        .map(|ip| sep_chain(before, &endpoint(*ip)))
        .collect();
    for ip in &after.endpoints {
        let _ = writeln!(out, ":{} - [0:0]", sep_chain(after, &endpoint(*ip)));
    }
    for chain in &stale {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    services_chain(&mut out, services);
    service_chains(&mut out, after);
    for chain in &stale {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    out
}

fn filter_table(out: &mut String) {
    out.push_str(concat!(
        "*filter\n",
        ":KUBE-SERVICES - [0:0]\n",
        ":KUBE-EXTERNAL-SERVICES - [0:0]\n",
        ":KUBE-FORWARD - [0:0]\n",
        ":KUBE-NODEPORTS - [0:0]\n",
        ":KUBE-PROXY-FIREWALL - [0:0]\n",
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n",
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n",
        "COMMIT\n",
    ));
}

/// KUBE-SERVICES: one rule per service port, in order, then the NodePort
/// catch-all that must stay last.
fn services_chain(out: &mut String, services: &[KubeProxyService]) {
    for service in services {
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m {proto} -p {proto} -d {} --dport {} -j {}",
            service.port_name(),
            service.cluster_ip,
            service.frontend().port(),
            svc_chain(service),
            proto = service.protocol.proto(),
        );
    }
    out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
}

fn service_chains(out: &mut String, service: &KubeProxyService) {
    let name = service.port_name();
    let svc = svc_chain(service);
    let _ = writeln!(
        out,
        "-A {svc} -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {} --dport {} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
        service.cluster_ip,
        service.frontend().port(),
        proto = service.protocol.proto(),
    );
    let count = service.endpoints.len();
    for (i, ip) in service.endpoints.iter().enumerate() {
        let ep = endpoint(*ip);
        let sep = sep_chain(service, &ep);
        // Each rule takes 1/(remaining) of what reaches it, the last takes
        // all that is left: a uniform choice, as kube-proxy computes it.
        #[expect(
            clippy::cast_precision_loss,
            reason = "an endpoint count, far below 2^52, as a probability"
        )]
        let statistic = if i + 1 < count {
            format!(
                " -m statistic --mode random --probability {:.10}",
                1.0 / (count - i) as f64
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "-A {svc} -m comment --comment \"{name} -> {ep}\"{statistic} -j {sep}"
        );
    }
    for ip in &service.endpoints {
        let ep = endpoint(*ip);
        let sep = sep_chain(service, &ep);
        let _ = writeln!(
            out,
            "-A {sep} -m comment --comment {name} -s {ip} -j KUBE-MARK-MASQ"
        );
        let _ = writeln!(
            out,
            "-A {sep} -m comment --comment {name} -m {proto} -p {proto} -j DNAT --to-destination {ep}",
            proto = service.protocol.proto(),
        );
    }
}
