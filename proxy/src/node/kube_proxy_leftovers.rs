//! kube-proxy's state on a node, removed as `kube-proxy --cleanup` removes
//! it: its iptables chains (IPv4 and IPv6, through both the nf_tables and
//! the legacy backends, whichever the node has), its nftables tables, and
//! its IPVS state (the `kube-ipvs0` dummy device, the virtual servers, its
//! ipsets). kubelet's own chains (`KUBE-FIREWALL`, `KUBE-MARK-DROP`,
//! `KUBE-KUBELET-CANARY`, `KUBE-IPTABLES-HINT`) and everyone else's rules
//! stay. Connections netfilter already translated keep their conntrack
//! entries, and with them their NAT, until they close.
//!
//! Run in the caller's network namespace, with the node's own tools, as
//! kube-proxy runs them.

use std::{
    fmt::Write as _,
    io::Write as _,
    process::{Command, Stdio},
};

use tracing::{info, warn};

/// Chains kube-proxy's iptables and IPVS modes create by these names.
const OWNED_CHAINS: &[&str] = &[
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-FORWARD",
    "KUBE-MARK-MASQ",
    "KUBE-PROXY-FIREWALL",
    "KUBE-PROXY-CANARY",
    "KUBE-LOAD-BALANCER",
    "KUBE-NODE-PORT",
    "KUBE-SOURCE-RANGES-FIREWALL",
    "KUBE-IPVS-FILTER",
    "KUBE-IPVS-OUT-FILTER",
];
/// ... and per Service, endpoint and firewall, by these prefixes.
const OWNED_PREFIXES: &[&str] = &[
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-SEP-",
    "KUBE-FW-",
    "KUBE-XLB-",
    "KUBE-EXT-",
];
/// kube-proxy's nftables mode keeps everything in one table per family.
const NFT_TABLES: &[&str] = &["ip kube-proxy", "ip6 kube-proxy"];
const IPVS_DEVICE: &str = "kube-ipvs0";
/// Each iptables backend's save and restore tools, per family.
const IPTABLES_TOOLS: &[(&str, &str)] = &[
    ("iptables-nft-save", "iptables-nft-restore"),
    ("ip6tables-nft-save", "ip6tables-nft-restore"),
    ("iptables-legacy-save", "iptables-legacy-restore"),
    ("ip6tables-legacy-save", "ip6tables-legacy-restore"),
];

fn owned(chain: &str) -> bool {
    OWNED_CHAINS.contains(&chain) || OWNED_PREFIXES.iter().any(|p| chain.starts_with(p))
}

/// What was found and removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub iptables_chains: usize,
    pub nft_tables: usize,
    pub ipvs: bool,
}

impl Removed {
    pub fn anything(&self) -> bool {
        self.iptables_chains > 0 || self.nft_tables > 0 || self.ipvs
    }
}

#[derive(Debug, thiserror::Error)]
#[error("removing kube-proxy's {what}: {detail}")]
pub struct CleanupError {
    pub what: &'static str,
    pub detail: String,
}

/// The `iptables-restore --noflush` input that removes kube-proxy's chains
/// from an `iptables-save` dump: first every rule jumping to one from a
/// chain of someone else's (the built-in hooks), then each chain flushed,
/// then deleted. `None` when the dump has none.
pub fn iptables_removal(dump: &str) -> Option<(String, usize)> {
    let mut script = String::new();
    let mut chains = 0;
    let mut table: Option<&str> = None;
    let (mut unlinks, mut owned_chains) = (Vec::new(), Vec::new());
    for line in dump.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = Some(name.trim());
            unlinks.clear();
            owned_chains.clear();
        } else if let Some(declared) = line.strip_prefix(':') {
            let name = declared.split_whitespace().next().unwrap_or_default();
            if owned(name) {
                owned_chains.push(name.to_owned());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or_default();
            let target = rule
                .split_whitespace()
                .skip_while(|word| !matches!(*word, "-j" | "-g" | "--jump" | "--goto"))
                .nth(1)
                .unwrap_or_default();
            if !owned(chain) && owned(target) {
                unlinks.push(format!("-D {rule}"));
            }
        } else if line.trim() == "COMMIT"
            && let Some(name) = table
            && !(unlinks.is_empty() && owned_chains.is_empty())
        {
            let _ = writeln!(script, "*{name}");
            for unlink in &unlinks {
                script.push_str(unlink);
                script.push('\n');
            }
            for chain in &owned_chains {
                let _ = writeln!(script, "-F {chain}");
            }
            for chain in &owned_chains {
                let _ = writeln!(script, "-X {chain}");
            }
            script.push_str("COMMIT\n");
            chains += owned_chains.len();
        }
    }
    (!script.is_empty()).then_some((script, chains))
}

/// The table that keeps netfilter's NAT hooks registered once kube-proxy's
/// chains are gone. The kernel tracks connections only while some rule of
/// the namespace uses conntrack, and translates a connection's packets by
/// its entry only while some NAT chain of the family is hooked: remove the
/// last ones and every connection kube-proxy translated is cut (its packets
/// reach the node or the backend untranslated and are reset). NAT base
/// chains with one conntrack rule keep both, at the cost of a hook call per
/// packet, until `switchyard cleanup` hands the node back to kube-proxy's.
pub const KEEP_NAT_TABLE: &str = "switchyard-keep-nat";

fn keep_nat_script() -> String {
    let mut script = String::new();
    for family in ["ip", "ip6"] {
        let _ = write!(
            script,
            "table {family} {KEEP_NAT_TABLE} {{\n\
             \tcomment \"keeps the NAT of connections kube-proxy translated (switchyard)\"\n\
             \tchain prerouting {{ type nat hook prerouting priority -100; ct state new counter; }}\n\
             \tchain output {{ type nat hook output priority -100; }}\n\
             \tchain input {{ type nat hook input priority 100; }}\n\
             \tchain postrouting {{ type nat hook postrouting priority 100; }}\n\
             }}\n"
        );
    }
    script
}

/// Removes the table [`KEEP_NAT_TABLE`], once kube-proxy serves again (its
/// own NAT chains hook the same points). Best effort: absent is done.
pub fn release_nat_hooks() {
    for family in ["ip", "ip6"] {
        if output("nft", &["list", "table", family, KEEP_NAT_TABLE]).is_some() {
            let _ = run("nft", &["delete", "table", family, KEEP_NAT_TABLE]);
        }
    }
}

/// Removes everything kube-proxy left in this network namespace. A tool the
/// node does not have means that backend holds nothing to remove.
pub fn remove() -> Result<Removed, CleanupError> {
    let mut removed = Removed::default();
    // First, so that no connection kube-proxy translated loses its NAT.
    feed("nft", &["-f", "-"], &keep_nat_script()).map_err(|detail| CleanupError {
        what: "rules (keeping the NAT hooks first, with nft)",
        detail,
    })?;
    for (save, restore) in IPTABLES_TOOLS {
        let Some(dump) = output(save, &[]) else {
            continue;
        };
        if let Some((script, chains)) = iptables_removal(&dump) {
            feed(restore, &["--noflush"], &script).map_err(|detail| CleanupError {
                what: "iptables chains",
                detail: format!("{restore}: {detail}"),
            })?;
            removed.iptables_chains += chains;
        }
    }
    for table in NFT_TABLES {
        let family_and_name: Vec<&str> = table.split(' ').collect();
        let mut list = vec!["list", "table"];
        list.extend(&family_and_name);
        if output("nft", &list).is_some() {
            let mut delete = vec!["delete", "table"];
            delete.extend(&family_and_name);
            run("nft", &delete).map_err(|detail| CleanupError {
                what: "nftables table",
                detail: format!("{table}: {detail}"),
            })?;
            removed.nft_tables += 1;
        }
    }
    removed.ipvs = remove_ipvs();
    if removed.anything() {
        info!(
            iptables_chains = removed.iptables_chains,
            nft_tables = removed.nft_tables,
            ipvs = removed.ipvs,
            "removed kube-proxy's rules"
        );
    } else {
        info!("no kube-proxy rules on this node");
    }
    Ok(removed)
}

/// kube-proxy's IPVS mode: its dummy device (holding every Service
/// address), the virtual servers (kube-proxy flushes them all) and its
/// ipsets. Best effort: each part the node lacks is skipped.
fn remove_ipvs() -> bool {
    let mut any = false;
    if output("ip", &["link", "show", IPVS_DEVICE]).is_some() {
        any |= run("ip", &["link", "delete", IPVS_DEVICE]).is_ok();
    }
    let has_services = std::fs::read_to_string("/proc/net/ip_vs").is_ok_and(|table| {
        table.lines().any(|line| {
            line.starts_with("TCP") || line.starts_with("UDP") || line.starts_with("SCTP")
        })
    });
    if has_services {
        any |= run("ipvsadm", &["--clear"]).is_ok();
    }
    if let Some(sets) = output("ipset", &["list", "-n"]) {
        for set in sets.lines().filter(|name| name.starts_with("KUBE-")) {
            any |= run("ipset", &["destroy", set]).is_ok();
        }
    }
    any
}

/// A tool's standard output, or `None` when it is missing or fails.
fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|error| error.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        warn!(program, ?args, stderr = %stderr.trim(), "failed");
        Err(stderr.trim().replace('\n', "; "))
    }
}

fn feed(program: &str, args: &[&str], input: &str) -> Result<(), String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| error.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|error| error.to_string())?;
    }
    let out = child
        .wait_with_output()
        .map_err(|error| error.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', "; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "\
*mangle
:PREROUTING ACCEPT [0:0]
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-PROXY-CANARY - [0:0]
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-SERVICES - [0:0]
:CNI-FORWARD - [0:0]
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A FORWARD -j CNI-FORWARD
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-ABC - [0:0]
:KUBE-SEP-DEF - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-ABC
-A KUBE-SVC-ABC -j KUBE-SEP-DEF
-A KUBE-SEP-DEF -p tcp -m tcp -j DNAT --to-destination 10.244.0.10:8080
COMMIT
";

    #[test]
    fn removes_kube_proxys_chains_and_only_those() {
        let (script, chains) = iptables_removal(DUMP).unwrap();
        assert_eq!(chains, 7);
        let want = "\
*mangle
-F KUBE-PROXY-CANARY
-X KUBE-PROXY-CANARY
COMMIT
*filter
-D FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-D FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-F KUBE-FORWARD
-F KUBE-SERVICES
-X KUBE-FORWARD
-X KUBE-SERVICES
COMMIT
*nat
-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-F KUBE-SERVICES
-F KUBE-SVC-ABC
-F KUBE-SEP-DEF
-F KUBE-MARK-MASQ
-X KUBE-SERVICES
-X KUBE-SVC-ABC
-X KUBE-SEP-DEF
-X KUBE-MARK-MASQ
COMMIT
";
        assert_eq!(script, want);
    }

    #[test]
    fn a_node_without_kube_proxy_needs_nothing() {
        let dump = "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\n-A INPUT -j KUBE-FIREWALL\nCOMMIT\n";
        assert_eq!(iptables_removal(dump), None);
        assert_eq!(iptables_removal(""), None);
    }
}
