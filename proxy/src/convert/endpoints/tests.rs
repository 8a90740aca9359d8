use super::*;
use crate::convert::fixtures::slice;

fn frontend(text: &str) -> Frontend {
    let (addr, protocol) = text.rsplit_once('/').unwrap();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    Frontend {
        ip: addr.ip(),
        port: addr.port(),
        protocol: protocol.parse().unwrap(),
        scope: crate::model::Scope::Internal,
    }
}

const WEB_V4: &str = "
metadata: {name: web-a, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- addresses: [10.0.0.1]
- addresses: [10.0.0.2, 10.0.0.99]
  conditions: {ready: true}
- addresses: [10.0.0.3]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.0.0.4]
  conditions: {ready: false, serving: false, terminating: true}
- addresses: [10.0.0.5]
  conditions: {ready: false}
";

/// One row: slices in, the frontend of one Service port, what it gets.
struct Case<'a> {
    name: &'a str,
    yamls: &'a [&'a str],
    service: &'a str,
    port_name: &'a str,
    fe: &'a str,
    want: &'a [&'a str],
    want_errors: &'a [&'a str],
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "a table test: one row per kube-proxy rule"
)]
fn slices_resolve_like_kube_proxy() {
    let cases: &[Case] = &[
        Case { name: "ready endpoints only, first address only, port by name", yamls: &[WEB_V4], service: "web", port_name: "http", fe: "10.96.0.10:80/TCP", want: &["10.0.0.1:8080/TCP", "10.0.0.2:8080/TCP"], want_errors: &[] },
        Case { name: "protocol must match too", yamls: &[WEB_V4], service: "web", port_name: "dns", fe: "10.96.0.10:53/UDP", want: &["10.0.0.1:5353/UDP", "10.0.0.2:5353/UDP"], want_errors: &[] },
        Case { name: "port name with the wrong protocol matches nothing", yamls: &[WEB_V4], service: "web", port_name: "http", fe: "10.96.0.10:80/UDP", want: &[], want_errors: &[] },
        Case { name: "IPv6 frontend ignores IPv4 slices", yamls: &[WEB_V4], service: "web", port_name: "http", fe: "[fd00::10]:80/TCP", want: &[], want_errors: &[] },
        Case { name: "no ready endpoint: serving and terminating ones drain", yamls: &["
metadata: {name: s, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 80}]
endpoints:
- {addresses: [10.0.0.3], conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.0.0.4], conditions: {ready: false, serving: false, terminating: true}}
- {addresses: [10.0.0.5], conditions: {ready: false, serving: true}}
"], service: "web", port_name: "", fe: "10.96.0.10:80/TCP", want: &["10.0.0.3:80/TCP"], want_errors: &[] },
        Case { name: "unnamed ports match, missing or zero slice ports are ignored", yamls: &["
metadata: {name: s, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: x}, {port: 0}, {port: 9000}]
endpoints: [{addresses: [10.0.0.1]}]
"], service: "web", port_name: "", fe: "10.96.0.10:80/TCP", want: &["10.0.0.1:9000/TCP"], want_errors: &[
                "api: EndpointSlice default/s: ports[0].port: no port number; this port is ignored, as kube-proxy does",
                "api: EndpointSlice default/s: ports[1].port: no port number; this port is ignored, as kube-proxy does",
            ] },
        Case { name: "endpoints dedupe across slices, first slice by name wins", yamls: &[
                "
metadata: {name: s-b, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 80}]
endpoints: [{addresses: [10.0.0.1], conditions: {ready: true}}, {addresses: [10.0.0.2]}]
",
                "
metadata: {name: s-a, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 80}]
endpoints: [{addresses: [10.0.0.1], conditions: {ready: false}}, {addresses: [10.0.0.2]}]
",
            ], service: "web", port_name: "", fe: "10.96.0.10:80/TCP", want: &["10.0.0.2:80/TCP"], want_errors: &[] },
        Case { name: "joined by label within the namespace only", yamls: &["
metadata: {name: s, namespace: other, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 80}]
endpoints: [{addresses: [10.0.0.1]}]
"], service: "web", port_name: "", fe: "10.96.0.10:80/TCP", want: &[], want_errors: &[] },
        Case { name: "managed-by is not a filter", yamls: &["
metadata: {name: s, labels: {kubernetes.io/service-name: web, endpointslice.kubernetes.io/managed-by: someone-else}}
addressType: IPv6
ports: [{port: 80}]
endpoints: [{addresses: ['fd00::1']}]
"], service: "web", port_name: "", fe: "[fd00::10]:80/TCP", want: &["[fd00::1]:80/TCP"], want_errors: &[] },
        Case { name: "FQDN slices are skipped quietly", yamls: &[
                "
metadata: {name: s2, labels: {kubernetes.io/service-name: web}}
addressType: FQDN
ports: [{port: 80}]
endpoints: [{addresses: [example.com]}]
",
            ], service: "web", port_name: "", fe: "10.96.0.10:80/TCP", want: &[], want_errors: &[] },
        Case { name: "bad input is reported once and skipped", yamls: &[
                "
metadata: {name: nolabel}
addressType: IPv4
endpoints: []
",
                "
metadata: {name: notype, labels: {kubernetes.io/service-name: web}}
endpoints: []
",
                "
metadata: {name: weird, labels: {kubernetes.io/service-name: web}}
addressType: IPX
endpoints: []
",
                "
metadata: {name: s, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 70000}, {port: 81, protocol: XTP}, {port: 80}]
endpoints:
- addresses: [10.0.0.300]
- addresses: ['fd00::1']
- addresses: []
- addresses: [010.0.0.7]
",
            ], service: "web", port_name: "", fe: "10.96.0.10:80/TCP", want: &["10.0.0.7:80/TCP"], want_errors: &[
                "api: EndpointSlice default/nolabel: metadata.labels: missing label kubernetes.io/service-name",
                "api: EndpointSlice default/notype: addressType: missing",
                "api: EndpointSlice default/weird: addressType: must be IPv4, IPv6 or FQDN, got \"IPX\"",
                "api: EndpointSlice default/s: ports[0].port: must be 1-65535, got 70000",
                "api: EndpointSlice default/s: ports[1].protocol: unknown protocol \"XTP\", expected TCP, UDP or SCTP",
                "api: EndpointSlice default/s: endpoints[0].addresses[0]: not an IP address: \"10.0.0.300\"",
                "api: EndpointSlice default/s: endpoints[1].addresses[0]: fd00::1 does not match addressType IPv4",
            ] },
    ];
    for Case {
        name,
        yamls,
        service,
        port_name,
        fe,
        want,
        want_errors,
    } in cases
    {
        let slices: Vec<_> = yamls.iter().map(|y| slice(y)).collect();
        let (parsed, errors) = read_slices(&slices);
        let index = SliceIndex::new(&parsed);
        let got: Vec<String> = index
            .endpoints("default", service, port_name, &frontend(fe))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, *want, "{name}: endpoints");
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors, *want_errors, "{name}: errors");
    }
}
