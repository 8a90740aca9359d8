//! What the agent needs from the kernel, what each piece is for, since which
//! Linux release it exists, and what the agent does without it. The probing
//! itself is an edge (`datapath::feature_probe`); this module only holds the
//! answers and decides what they mean.

use std::fmt::Write as _;

use serde::Serialize;

/// One kernel capability the agent uses (or, for `SockDestroy`, could use).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    CgroupSockAddr,
    BpfSetRetval,
    LruHash,
    LpmTrie,
    PercpuArray,
    SchedCls,
    // Serialized as `name()` spells them, the helpers' own names.
    #[serde(rename = "bpf_fib_lookup")]
    FibLookup,
    #[serde(rename = "bpf_redirect_neigh")]
    RedirectNeigh,
    Tcx,
    #[serde(rename = "sock_addr_sk_storage")]
    SockAddrStorage,
    #[serde(rename = "so_netns_cookie")]
    NetnsCookie,
    #[serde(rename = "memcg_bpf_accounting")]
    MemcgAccounting,
    #[serde(rename = "devmap_hash")]
    XdpDeviceMap,
    SockDestroy,
}

/// What the agent does when a feature is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WithoutIt {
    /// Nothing works without it: the agent stops with one clear line.
    Required,
    /// The per-packet path (NodePort, LoadBalancer, externalIPs) is off; the
    /// socket hooks serve everything that starts on the node.
    NoPacketPath,
    /// A working alternative is used, described here.
    Fallback(&'static str),
    /// The agent does not use it.
    Unused,
}

impl Feature {
    pub const ALL: [Self; 14] = [
        Self::CgroupSockAddr,
        Self::BpfSetRetval,
        Self::LruHash,
        Self::LpmTrie,
        Self::PercpuArray,
        Self::SchedCls,
        Self::FibLookup,
        Self::RedirectNeigh,
        Self::Tcx,
        Self::SockAddrStorage,
        Self::NetnsCookie,
        Self::MemcgAccounting,
        Self::XdpDeviceMap,
        Self::SockDestroy,
    ];

    /// The metric label and the name in `switchyard services`.
    pub fn name(self) -> &'static str {
        match self {
            Self::CgroupSockAddr => "cgroup_sock_addr",
            Self::BpfSetRetval => "bpf_set_retval",
            Self::LruHash => "lru_hash",
            Self::LpmTrie => "lpm_trie",
            Self::PercpuArray => "percpu_array",
            Self::SchedCls => "sched_cls",
            Self::FibLookup => "bpf_fib_lookup",
            Self::RedirectNeigh => "bpf_redirect_neigh",
            Self::Tcx => "tcx",
            Self::SockAddrStorage => "sock_addr_sk_storage",
            Self::NetnsCookie => "so_netns_cookie",
            Self::MemcgAccounting => "memcg_bpf_accounting",
            Self::XdpDeviceMap => "devmap_hash",
            Self::SockDestroy => "sock_destroy",
        }
    }

    /// The first upstream Linux release that has it.
    pub fn since(self) -> &'static str {
        match self {
            // getpeername4/6 is the newest of the eight hooks.
            Self::CgroupSockAddr => "5.8",
            Self::BpfSetRetval => "5.18",
            // The device map XDP redirects into; XDP links came in 5.9.
            Self::XdpDeviceMap => "5.9",
            Self::LruHash => "4.10",
            Self::LpmTrie => "4.11",
            Self::PercpuArray => "4.6",
            Self::SchedCls => "4.1",
            Self::FibLookup => "4.18",
            Self::RedirectNeigh | Self::SockAddrStorage => "5.10",
            Self::Tcx => "6.6",
            Self::NetnsCookie => "5.14",
            Self::MemcgAccounting => "5.11",
            Self::SockDestroy => "6.5",
        }
    }

    pub fn used_for(self) -> &'static str {
        match self {
            Self::CgroupSockAddr => {
                "socket load balancing: connect, sendmsg, recvmsg and getpeername hooks"
            }
            Self::BpfSetRetval => "refusing connections to a Service without endpoints",
            Self::LruHash => "UDP reverse translation, session affinity, conntrack",
            Self::LpmTrie => "loadBalancerSourceRanges",
            Self::PercpuArray => "per-packet counters",
            Self::SchedCls => "the per-packet path (tc programs)",
            Self::FibLookup => "per-packet path: routing translated packets",
            Self::RedirectNeigh => "per-packet path: sending translated packets",
            Self::Tcx => "per-packet hooks as pinned links that survive agent restarts",
            Self::SockAddrStorage => {
                "socket-local storage in the connect and sendmsg hooks: reverse translation, \
                 unconnected UDP stickiness"
            }
            Self::NetnsCookie => {
                "loadBalancerSourceRanges for the node's own processes: the address each \
                 network namespace sends from, by its cookie"
            }
            Self::MemcgAccounting => {
                "BPF maps charged to the memory cgroup instead of RLIMIT_MEMLOCK"
            }
            Self::XdpDeviceMap => {
                "XDP acceleration of the per-packet path (--xdp): the devices it sends into"
            }
            Self::SockDestroy => {
                "not used: sockets of removed backends are destroyed through sock_diag on every kernel"
            }
        }
    }

    pub fn without_it(self) -> WithoutIt {
        match self {
            Self::CgroupSockAddr | Self::LruHash | Self::PercpuArray | Self::SockAddrStorage => {
                WithoutIt::Required
            }
            Self::BpfSetRetval => WithoutIt::Fallback(
                "a refused connect() goes to port 0 on loopback, where the kernel refuses it \
                 (ECONNREFUSED; connected UDP: on its next call); a refused unconnected \
                 send and every drop fail with EPERM",
            ),
            Self::LpmTrie | Self::SchedCls | Self::FibLookup | Self::RedirectNeigh => {
                WithoutIt::NoPacketPath
            }
            Self::Tcx => WithoutIt::Fallback(
                "cls_bpf filters on a clsact qdisc (not pinned; replaced by name on restart)",
            ),
            Self::NetnsCookie => WithoutIt::Fallback(
                "the node's own processes reach a LoadBalancer IP with source ranges \
                 untranslated, by routing; pods are judged by the per-packet path",
            ),
            Self::MemcgAccounting => WithoutIt::Fallback(
                "the agent raises RLIMIT_MEMLOCK to unlimited at start, which needs \
                 CAP_SYS_RESOURCE (in the DaemonSet) or an unlimited memlock limit",
            ),
            Self::XdpDeviceMap => WithoutIt::Fallback(
                "the per-packet path runs at tc on every device (--xdp native stops the agent)",
            ),
            Self::SockDestroy => WithoutIt::Unused,
        }
    }
}

impl WithoutIt {
    /// What the agent does without `feature`, in words.
    pub fn describe(self, feature: Feature) -> String {
        match self {
            Self::Required => format!("required: Linux {} or later", feature.since()),
            Self::NoPacketPath => "per-packet path off".to_owned(),
            Self::Fallback(how) => how.to_owned(),
            Self::Unused => "unused".to_owned(),
        }
    }
}

/// What a probe found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    Available,
    Missing,
    /// The probe itself failed (e.g. no permission); the agent goes ahead
    /// as if the feature were there and lets the load say otherwise.
    Unknown(String),
    /// Not probed: the agent does not use it.
    NotProbed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FeatureStatus {
    pub feature: Feature,
    pub availability: Availability,
    pub since: &'static str,
    pub used_for: &'static str,
    /// What the agent does without it, on any kernel.
    pub without_it: String,
    /// What the agent does about it, when it is not available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}

/// The probe results of one kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelFeatures {
    pub release: String,
    pub features: Vec<FeatureStatus>,
}

impl KernelFeatures {
    /// `probe` answers for each feature the agent uses.
    pub fn new(release: String, mut probe: impl FnMut(Feature) -> Availability) -> Self {
        let features = Feature::ALL
            .into_iter()
            .map(|feature| {
                let availability = match feature.without_it() {
                    WithoutIt::Unused => Availability::NotProbed,
                    _ => probe(feature),
                };
                let without_it = feature.without_it().describe(feature);
                let degraded = (availability == Availability::Missing).then(|| without_it.clone());
                FeatureStatus {
                    feature,
                    since: feature.since(),
                    used_for: feature.used_for(),
                    without_it,
                    availability,
                    degraded,
                }
            })
            .collect();
        Self { release, features }
    }

    pub fn available(&self, feature: Feature) -> bool {
        self.features
            .iter()
            .find(|s| s.feature == feature)
            .is_some_and(|s| !matches!(s.availability, Availability::Missing))
    }

    /// Required features the kernel lacks: the agent cannot run.
    pub fn missing_required(&self) -> Vec<Feature> {
        self.missing_where(|w| w == WithoutIt::Required)
    }

    /// Whether the tc programs can run here at all.
    pub fn packet_path(&self) -> bool {
        self.missing_where(|w| w == WithoutIt::NoPacketPath)
            .is_empty()
    }

    fn missing_where(&self, which: impl Fn(WithoutIt) -> bool) -> Vec<Feature> {
        self.features
            .iter()
            .filter(|s| s.availability == Availability::Missing && which(s.feature.without_it()))
            .map(|s| s.feature)
            .collect()
    }

    /// The gauge values: 1 available, 0 missing, per probed feature.
    pub fn gauges(&self) -> impl Iterator<Item = (&'static str, i64)> + '_ {
        self.features.iter().filter_map(|s| match s.availability {
            Availability::Available => Some((s.feature.name(), 1)),
            Availability::Missing => Some((s.feature.name(), 0)),
            Availability::Unknown(_) | Availability::NotProbed => None,
        })
    }

    /// One line per feature, for `switchyard services`.
    pub fn table(&self) -> String {
        let mut text = format!("KERNEL FEATURES ({})\n", self.release);
        for status in &self.features {
            let state = match &status.availability {
                Availability::Available => "yes".to_owned(),
                Availability::Missing => "NO".to_owned(),
                Availability::Unknown(why) => format!("unknown ({why})"),
                Availability::NotProbed => "unused".to_owned(),
            };
            let _infallible = write!(
                text,
                "{:<20} {state:<4} Linux {:<5} {}",
                status.feature.name(),
                status.since,
                status.used_for
            );
            if let Some(degraded) = &status.degraded {
                let _infallible = write!(text, "; without it: {degraded}");
            }
            text.push('\n');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(missing: &[Feature]) -> KernelFeatures {
        KernelFeatures::new("test".into(), |f| {
            if missing.contains(&f) {
                Availability::Missing
            } else {
                Availability::Available
            }
        })
    }

    #[test]
    fn a_full_kernel_degrades_nothing() {
        let k = kernel(&[]);
        assert!(k.missing_required().is_empty());
        assert!(k.packet_path());
        assert!(k.features.iter().all(|s| s.degraded.is_none()));
        // Unused features are reported, never probed, never a gauge.
        assert!(k.gauges().all(|(name, _)| name != "sock_destroy"));
        assert!(k.table().contains("sock_destroy         unused"));
    }

    #[test]
    fn no_tcx_falls_back_to_clsact() {
        let k = kernel(&[Feature::Tcx]);
        assert!(k.missing_required().is_empty());
        assert!(k.packet_path());
        assert!(!k.available(Feature::Tcx));
        assert!(k.gauges().any(|g| g == ("tcx", 0)));
        assert!(k.table().contains("clsact"));
    }

    #[test]
    fn missing_helpers_turn_off_the_packet_path_or_stop_the_agent() {
        let k = kernel(&[Feature::RedirectNeigh]);
        assert!(!k.packet_path());
        assert!(k.missing_required().is_empty());
        let k = kernel(&[Feature::CgroupSockAddr]);
        assert_eq!(k.missing_required(), [Feature::CgroupSockAddr]);
        assert!(k.table().contains("required: Linux 5.8"));
    }

    #[test]
    fn no_set_retval_refuses_through_loopback_and_eperm() {
        let k = kernel(&[Feature::BpfSetRetval]);
        assert!(k.missing_required().is_empty());
        assert!(k.packet_path());
        assert!(k.gauges().any(|g| g == ("bpf_set_retval", 0)));
        assert!(k.table().contains("port 0 on loopback"));
    }

    #[test]
    fn json_names_are_the_metric_labels() {
        for feature in Feature::ALL {
            let json = serde_json::to_value(feature).unwrap();
            assert_eq!(json, feature.name());
        }
    }

    #[test]
    fn an_unknown_answer_counts_as_available() {
        let k = KernelFeatures::new("t".into(), |_| Availability::Unknown("EPERM".into()));
        assert!(k.missing_required().is_empty());
        assert!(k.packet_path());
        assert_eq!(k.gauges().count(), 0);
    }
}
