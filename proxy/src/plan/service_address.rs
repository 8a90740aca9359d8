//! The entries of kube-proxy's `cluster-ips-check` a plan writes: every
//! allocated ClusterIP, from the ClusterIP frontends the desired state
//! holds, and the service CIDRs. Puts go in with the new backends, before
//! any frontend changes; deletes go last, so a Service removed is refused
//! until its frontends are gone and only then treated as unallocated.

use std::{collections::BTreeSet, net::IpAddr};

use switchyard_abi::FRONTEND_CLUSTER_IP;

use crate::{
    model::{DesiredFrontend, DesiredState, Frontend, Protocol, Scope},
    plan::{
        datapath_state::DatapathState,
        map_op::{MapOp, ServiceAddress},
    },
};

/// Operations before and after the frontends' own.
#[derive(Default)]
pub struct AddressOps {
    pub puts: Vec<MapOp>,
    pub deletes: Vec<MapOp>,
}

/// Every address entry `desired` needs, against all that is programmed.
pub fn plan_all(current: &DatapathState, desired: &DesiredState) -> AddressOps {
    let wanted: BTreeSet<ServiceAddress> = desired
        .service_cidrs
        .iter()
        .map(|&cidr| ServiceAddress::Cidr(cidr))
        .chain(
            desired
                .frontends
                .iter()
                .filter(|(frontend, want)| is_cluster_ip(frontend, want))
                .map(|(frontend, _)| ServiceAddress::ClusterIp(frontend.ip)),
        )
        .collect();
    diff(
        wanted.difference(&current.service_addresses),
        current.service_addresses.difference(&wanted),
    )
}

/// The ClusterIP entries of the addresses `scope` touches only, for a pass
/// that knows what changed; the service CIDRs change only with a full pass.
pub fn plan_scoped(
    current: &DatapathState,
    desired: &DesiredState,
    scope: &BTreeSet<Frontend>,
) -> AddressOps {
    let ips: BTreeSet<IpAddr> = scope.iter().map(|frontend| frontend.ip).collect();
    let (mut missing, mut stale) = (Vec::new(), Vec::new());
    for ip in ips {
        let address = ServiceAddress::ClusterIp(ip);
        match (
            holds_cluster_ip(desired, ip),
            current.service_addresses.contains(&address),
        ) {
            (true, false) => missing.push(address),
            (false, true) => stale.push(address),
            _ => {}
        }
    }
    diff(missing.iter(), stale.iter())
}

fn diff<'a>(
    missing: impl Iterator<Item = &'a ServiceAddress>,
    stale: impl Iterator<Item = &'a ServiceAddress>,
) -> AddressOps {
    AddressOps {
        puts: missing
            .map(|&address| MapOp::PutServiceAddress { address })
            .collect(),
        deletes: stale
            .map(|&address| MapOp::DeleteServiceAddress { address })
            .collect(),
    }
}

fn is_cluster_ip(frontend: &Frontend, want: &DesiredFrontend) -> bool {
    frontend.scope == Scope::Internal && want.flags & FRONTEND_CLUSTER_IP != 0
}

/// Whether any frontend at `ip` is a ClusterIP, from the frontends at that
/// address only (they sort by address first).
fn holds_cluster_ip(desired: &DesiredState, ip: IpAddr) -> bool {
    let first = Frontend {
        ip,
        port: 0,
        protocol: Protocol::Tcp,
        scope: Scope::Internal,
    };
    desired
        .frontends
        .range(first..)
        .take_while(|(frontend, _)| frontend.ip == ip)
        .any(|(frontend, want)| is_cluster_ip(frontend, want))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{desired, frontend};

    /// `desired` with the frontends at `cluster_ips` marked as ClusterIPs
    /// (the fixture's others stand for externalIPs) and `cidrs` as the
    /// service CIDRs.
    fn with_cluster_ips(
        mut state: DesiredState,
        cluster_ips: &[&str],
        cidrs: &[&str],
    ) -> DesiredState {
        for (frontend, want) in &mut state.frontends {
            if cluster_ips.contains(&frontend.ip.to_string().as_str()) {
                want.flags |= FRONTEND_CLUSTER_IP;
            }
        }
        state.service_cidrs = cidrs.iter().map(|cidr| cidr.parse().unwrap()).collect();
        state
    }

    fn addresses(ops: &[MapOp]) -> Vec<String> {
        ops.iter()
            .map(|op| match op {
                MapOp::PutServiceAddress { address } => format!("+{address:?}"),
                MapOp::DeleteServiceAddress { address } => format!("-{address:?}"),
                other => panic!("not an address operation: {other:?}"),
            })
            .collect()
    }

    fn programmed(ops: &AddressOps) -> DatapathState {
        let mut state = DatapathState::default();
        for op in ops.puts.iter().chain(&ops.deletes) {
            state.apply(op);
        }
        state
    }

    #[test]
    fn cluster_ips_once_per_address_and_the_cidrs() {
        let want = with_cluster_ips(
            desired(&[
                ("10.96.0.1", 80, &[1]),
                ("10.96.0.1", 443, &[1]),
                ("192.168.99.1", 80, &[2]),
            ]),
            &["10.96.0.1"],
            &["10.96.0.0/16"],
        );
        let ops = plan_all(&DatapathState::default(), &want);
        assert_eq!(
            addresses(&ops.puts),
            [
                "+ClusterIp(10.96.0.1)",
                "+Cidr(Cidr { network: 10.96.0.0, prefix_len: 16 })"
            ]
        );
        assert!(ops.deletes.is_empty());
        let current = programmed(&ops);
        let again = plan_all(&current, &want);
        assert!(again.puts.is_empty() && again.deletes.is_empty());
    }

    #[test]
    fn a_scoped_pass_puts_and_deletes_what_a_full_pass_would() {
        let before = with_cluster_ips(
            desired(&[("10.96.0.1", 80, &[1]), ("10.96.0.2", 80, &[2])]),
            &["10.96.0.1", "10.96.0.2"],
            &[],
        );
        let current = programmed(&plan_all(&DatapathState::default(), &before));
        // 10.96.0.1 gains a port, 10.96.0.2 goes, 10.96.0.3 comes.
        let after = with_cluster_ips(
            desired(&[
                ("10.96.0.1", 80, &[1]),
                ("10.96.0.1", 443, &[1]),
                ("10.96.0.3", 80, &[3]),
            ]),
            &["10.96.0.1", "10.96.0.3"],
            &[],
        );
        let scope = BTreeSet::from([
            frontend("10.96.0.1", 443),
            frontend("10.96.0.2", 80),
            frontend("10.96.0.3", 80),
        ]);
        let scoped = plan_scoped(&current, &after, &scope);
        let full = plan_all(&current, &after);
        assert_eq!(addresses(&scoped.puts), addresses(&full.puts));
        assert_eq!(addresses(&scoped.deletes), addresses(&full.deletes));
        assert_eq!(addresses(&full.puts), ["+ClusterIp(10.96.0.3)"]);
        assert_eq!(addresses(&full.deletes), ["-ClusterIp(10.96.0.2)"]);
    }

    #[test]
    fn external_ips_are_not_cluster_ips() {
        let want = with_cluster_ips(desired(&[("192.168.99.1", 80, &[1])]), &[], &[]);
        let ops = plan_all(&DatapathState::default(), &want);
        assert!(ops.puts.is_empty(), "{:?}", addresses(&ops.puts));
    }
}
