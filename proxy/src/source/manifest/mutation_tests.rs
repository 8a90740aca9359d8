//! Bounded mutation runs over manifest parsing and conversion: whatever
//! bytes a file holds, nothing panics and every problem is one line that
//! names its document, or its object and field. Deterministic (a fixed
//! seed), so a failure replays; `SY_MUTATIONS` runs longer.

use std::path::Path;

use super::*;
use crate::convert::{desired::desired_state, topology::NodeContext};

const SEEDS: &[&str] = &[
    "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  type: LoadBalancer\n  clusterIPs: [10.96.0.10, 'fd00::10']\n  externalIPs: [198.51.100.1]\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n  sessionAffinity: ClientIP\n  ports: [{name: http, port: 80, targetPort: web, nodePort: 30080, protocol: TCP}]\nstatus: {loadBalancer: {ingress: [{ip: 203.0.113.9}]}}\n",
    "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.0.0.1], conditions: {ready: true}, nodeName: a, zone: z1, hints: {forZones: [{name: z1}]}}]\n",
    "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n  spec: {clusterIP: 10.96.0.11, ports: [{port: 53, protocol: UDP}]}\n",
];

/// xorshift64*: enough randomness for mutations, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }
}

/// Bytes YAML gives meaning to, and ones that make numbers and IPs odd.
const INTERESTING: &[u8] = b"-:{}[],'\"\n #&*!|>%@`0123456789.x:/";

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(bytes.len());
        match rng.below(4) {
            0 if !bytes.is_empty() => {
                bytes.remove(at);
            }
            1 => bytes.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            2 if !bytes.is_empty() => bytes[at] = INTERESTING[rng.below(INTERESTING.len())],
            _ => {
                // A line of another seed spliced in.
                let other = SEEDS[rng.below(SEEDS.len())];
                let line = other
                    .lines()
                    .nth(rng.below(other.lines().count()))
                    .unwrap_or("");
                bytes.splice(at..at, format!("{line}\n").into_bytes());
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn mutated_manifests_never_panic_and_every_error_is_one_named_line() {
    let runs: usize = std::env::var("SY_MUTATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_500);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let node = NodeContext {
        node_port_addresses: vec!["192.168.1.5".parse().unwrap()],
        ..NodeContext::default()
    };
    // What the runs met, so a mutator that only ever breaks (or never
    // breaks) the input is noticed.
    let (mut parsed, mut document_errors, mut field_errors) = (0, 0, 0);
    for run in 0..runs {
        let seed = SEEDS.join("---\n");
        let text = mutate(&mut rng, &seed);
        let (objects, mut errors) = parse_manifest(Path::new("m.yaml"), &text);
        let services: Vec<Service> = objects
            .iter()
            .filter_map(|object| match object {
                Object::Service(service) => Some((**service).clone()),
                _ => None,
            })
            .collect();
        let slices: Vec<EndpointSlice> = objects
            .iter()
            .filter_map(|object| match object {
                Object::EndpointSlice(slice) => Some((**slice).clone()),
                _ => None,
            })
            .collect();
        parsed += services.len() + slices.len();
        let (_, conversion) = desired_state(&services, &slices, &node);
        errors.extend(conversion);
        for error in &errors {
            let line = error.to_string();
            assert!(!line.contains('\n'), "run {run}: {line:?}\n{text}");
            let named = match error {
                InputError::Document { .. } => {
                    document_errors += 1;
                    line.starts_with("m.yaml: document ")
                }
                InputError::Field { object, field, .. } => {
                    field_errors += 1;
                    !object.name.is_empty() && !field.is_empty()
                }
                InputError::Unreadable { .. } => false,
            };
            assert!(named, "run {run}: {line:?}\n{text}");
        }
    }
    assert!(
        parsed > runs && document_errors > runs / 20 && field_errors > runs / 20,
        "{parsed} objects, {document_errors} document and {field_errors} field errors in {runs} runs"
    );
}
