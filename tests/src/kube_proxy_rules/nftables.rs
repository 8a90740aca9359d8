//! The rule set kube-proxy's nftables mode writes for ClusterIP Services,
//! as an `nft -f` script: one `ip kube-proxy` table whose `services` chain
//! looks the destination up in the `service-ips` verdict map (one lookup,
//! whatever the number of Services), per-service chains choosing an
//! endpoint with `numgen random`, per-endpoint chains doing the DNAT, and
//! the filter-side checks kube-proxy adds. Shapes follow kube-proxy's
//! golden test output (pkg/proxy/nftables/proxier_test.go).

use std::fmt::Write;

use super::{CLUSTER_CIDR, KubeProxyService, NAMESPACE, TARGET_PORT, chain_name::hash8};

const TABLE: &str = "ip kube-proxy";
/// The Service CIDR the catalog allocates from.
const SERVICE_CIDR: &str = "10.96.0.0/12";

pub fn service_chain(service: &KubeProxyService) -> String {
    let port_name = service.port_name();
    let proto = service.protocol.proto();
    format!(
        "service-{}-{NAMESPACE}/{}/{proto}/http",
        hash8(&[&port_name, proto]),
        service.name
    )
}

pub fn endpoint_chain(service: &KubeProxyService, ip: std::net::Ipv4Addr) -> String {
    let port_name = service.port_name();
    let proto = service.protocol.proto();
    let endpoint = format!("{ip}:{TARGET_PORT}");
    format!(
        "endpoint-{}-{NAMESPACE}/{}/{proto}/http__{ip}/{TARGET_PORT}",
        hash8(&[&port_name, proto, &endpoint]),
        service.name
    )
}

/// kube-proxy's chain for traffic from outside to an external address
/// (here the NodePort): masquerade (the Cluster policy), then the service.
pub fn external_chain(service: &KubeProxyService) -> String {
    let port_name = service.port_name();
    let proto = service.protocol.proto();
    format!(
        "external-{}-{NAMESPACE}/{}/{proto}/http",
        hash8(&[&port_name, proto]),
        service.name
    )
}

/// The node addresses NodePorts answer on (kube-proxy fills the set from
/// nodePortAddresses and the node's interfaces).
pub fn node_port_ips(ips: &[std::net::Ipv4Addr]) -> String {
    let list: Vec<String> = ips.iter().map(ToString::to_string).collect();
    format!(
        "add element {TABLE} nodeport-ips {{ {} }}\n",
        list.join(" , ")
    )
}

/// The whole table, replacing any previous one.
pub fn full(services: &[KubeProxyService]) -> String {
    let mut out = String::with_capacity(services.len() * 1_400 + 4_096);
    // `add` then `delete` empties the table whether or not it existed.
    let _ = writeln!(out, "add table {TABLE}\ndelete table {TABLE}");
    skeleton(&mut out);
    for service in services {
        let _ = writeln!(out, "add chain {TABLE} {}", service_chain(service));
        for ip in &service.endpoints {
            let _ = writeln!(out, "add chain {TABLE} {}", endpoint_chain(service, *ip));
        }
    }
    for service in services {
        service_rules(&mut out, service);
        node_port_rules(&mut out, service);
        let _ = writeln!(
            out,
            "add element {TABLE} cluster-ips {{ {} }}",
            service.cluster_ip
        );
        let _ = writeln!(
            out,
            "add element {TABLE} service-ips {{ {} . {} . {} : goto {} }}",
            service.cluster_ip,
            service.protocol.proto(),
            service.frontend().port(),
            service_chain(service)
        );
    }
    out
}

/// What kube-proxy sends when one Service's endpoints change: that
/// service's chain rewritten, new endpoint chains added, stale ones removed.
pub fn endpoint_change(before: &KubeProxyService, after: &KubeProxyService) -> String {
    let mut out = String::new();
    let chain = service_chain(after);
    let _ = writeln!(out, "flush chain {TABLE} {chain}");
    for ip in after
        .endpoints
        .iter()
        .filter(|ip| !before.endpoints.contains(ip))
    {
        let _ = writeln!(out, "add chain {TABLE} {}", endpoint_chain(after, *ip));
    }
    service_rules(&mut out, after);
    for ip in before
        .endpoints
        .iter()
        .filter(|ip| !after.endpoints.contains(ip))
    {
        let stale = endpoint_chain(before, *ip);
        let _ = writeln!(
            out,
            "flush chain {TABLE} {stale}\ndelete chain {TABLE} {stale}"
        );
    }
    out
}

fn node_port_rules(out: &mut String, service: &KubeProxyService) {
    let Some(node_port) = service.node_port else {
        return;
    };
    let external = external_chain(service);
    let _ = writeln!(
        out,
        "add chain {TABLE} {external}\nadd rule {TABLE} {external} jump mark-for-masquerade\nadd rule {TABLE} {external} goto {}",
        service_chain(service)
    );
    let _ = writeln!(
        out,
        "add element {TABLE} service-nodeports {{ {} . {node_port} : goto {external} }}",
        service.protocol.proto()
    );
}

/// The service chain (masquerade check, numgen dispatch) and, where new,
/// the endpoint chains' rules.
fn service_rules(out: &mut String, service: &KubeProxyService) {
    let chain = service_chain(service);
    let _ = writeln!(
        out,
        "add rule {TABLE} {chain} ip daddr {} {} dport {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
        service.cluster_ip,
        service.protocol.proto(),
        service.frontend().port()
    );
    let targets: Vec<String> = service
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("{i} : goto {}", endpoint_chain(service, *ip)))
        .collect();
    let _ = writeln!(
        out,
        "add rule {TABLE} {chain} numgen random mod {} vmap {{ {} }}",
        service.endpoints.len(),
        targets.join(" , ")
    );
    for ip in &service.endpoints {
        let endpoint = endpoint_chain(service, *ip);
        let _ = writeln!(
            out,
            "flush chain {TABLE} {endpoint}\nadd rule {TABLE} {endpoint} ip saddr {ip} jump mark-for-masquerade\nadd rule {TABLE} {endpoint} meta l4proto {} dnat to {ip}:{TARGET_PORT}",
            service.protocol.proto()
        );
    }
}

/// The base chains, sets and maps every kube-proxy table has.
fn skeleton(out: &mut String) {
    let t = TABLE;
    let _ = write!(
        out,
        r#"add table {t} {{ comment "rules for kube-proxy" ; }}
add chain {t} mark-for-masquerade
add rule {t} mark-for-masquerade mark set mark or 0x4000
add chain {t} masquerading
add rule {t} masquerading mark and 0x4000 == 0 return
add rule {t} masquerading mark set mark xor 0x4000
add rule {t} masquerading masquerade fully-random
add set {t} cluster-ips {{ type ipv4_addr ; comment "Active ClusterIPs" ; }}
add set {t} nodeport-ips {{ type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }}
add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }}
add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }}
add map {t} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }}
add map {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }}
add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }}
add chain {t} services
add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips
add rule {t} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add chain {t} firewall-check
add rule {t} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add chain {t} service-endpoints-check
add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add chain {t} nodeport-endpoints-check
add rule {t} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add chain {t} cluster-ips-check
add rule {t} cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule {t} cluster-ips-check ip daddr {{ {SERVICE_CIDR} }} drop comment "Drop traffic to unallocated ClusterIPs"
add chain {t} filter-prerouting {{ type filter hook prerouting priority -110 ; }}
add rule {t} filter-prerouting ct state new jump firewall-check
add chain {t} filter-input {{ type filter hook input priority -110 ; }}
add rule {t} filter-input ct state new jump nodeport-endpoints-check
add rule {t} filter-input ct state new jump service-endpoints-check
add chain {t} filter-forward {{ type filter hook forward priority -110 ; }}
add rule {t} filter-forward ct state new jump service-endpoints-check
add rule {t} filter-forward ct state new jump cluster-ips-check
add chain {t} filter-output {{ type filter hook output priority -110 ; }}
add rule {t} filter-output ct state new jump service-endpoints-check
add rule {t} filter-output ct state new jump firewall-check
add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; }}
add rule {t} nat-prerouting jump services
add chain {t} nat-output {{ type nat hook output priority -100 ; }}
add rule {t} nat-output jump services
add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}
add rule {t} nat-postrouting jump masquerading
"#
    );
}
