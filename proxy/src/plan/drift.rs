//! Drift: map entries that differ from what the agent programmed, found by
//! reading the maps back (someone's `bpftool map update`, a tool that
//! cleared a map, a bug). A plan compares the desired state with the
//! agent's own mirror, so an entry changed behind its back would stay
//! wrong; once drift is found the mirror becomes what the maps hold and
//! the next full pass repairs every entry.

use std::collections::{BTreeMap, BTreeSet};

use switchyard_abi::{
    BACKENDS_MAP, CLUSTER_IPS_MAP, SERVICE_CIDRS_MAP, SERVICES_MAP, SOURCE_RANGES_MAP,
};

use crate::plan::{
    datapath_state::{DatapathState, ProgrammedFrontend},
    map_op::ServiceAddress,
};

/// The maps a read-back compares.
pub const CHECKED_MAPS: [&str; 5] = [
    SERVICES_MAP,
    BACKENDS_MAP,
    SOURCE_RANGES_MAP,
    CLUSTER_IPS_MAP,
    SERVICE_CIDRS_MAP,
];

/// Entries that differ, by map name (only maps with any).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drift(BTreeMap<&'static str, usize>);

impl Drift {
    /// Entries present on one side only, or on both with other values.
    pub fn between(programmed: &DatapathState, actual: &DatapathState) -> Self {
        let mut drift = Self::default();
        let keys: BTreeSet<_> = programmed
            .frontends
            .keys()
            .chain(actual.frontends.keys())
            .collect();
        let no_slots = BTreeMap::new();
        for key in keys {
            let (want, have) = (programmed.frontends.get(key), actual.frontends.get(key));
            drift.add(
                SERVICES_MAP,
                usize::from(head(want) != head(have))
                    + differing(slots(want, &no_slots), slots(have, &no_slots)),
            );
        }
        drift.add(
            BACKENDS_MAP,
            differing(&programmed.backends, &actual.backends),
        );
        drift.add(
            SOURCE_RANGES_MAP,
            programmed
                .source_ranges
                .symmetric_difference(&actual.source_ranges)
                .count(),
        );
        for address in programmed
            .service_addresses
            .symmetric_difference(&actual.service_addresses)
        {
            let map = match address {
                ServiceAddress::ClusterIp(_) => CLUSTER_IPS_MAP,
                ServiceAddress::Cidr(_) => SERVICE_CIDRS_MAP,
            };
            drift.add(map, 1);
        }
        drift
    }

    fn add(&mut self, map: &'static str, entries: usize) {
        if entries > 0 {
            *self.0.entry(map).or_default() += entries;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries of `map` that differ (0 for a map that did not drift).
    pub fn entries(&self, map: &str) -> usize {
        self.0.get(map).copied().unwrap_or(0)
    }

    /// `(map, entries)` for each map that drifted.
    pub fn maps(&self) -> impl Iterator<Item = (&'static str, usize)> + '_ {
        self.0.iter().map(|(map, entries)| (*map, *entries))
    }
}

/// Slot 0 of a frontend as the kernel reads it: count, affinity, flags.
fn head(frontend: Option<&ProgrammedFrontend>) -> Option<(u16, u32, u16)> {
    frontend.and_then(|f| f.count.map(|count| (count, f.affinity_timeout, f.flags)))
}

fn slots<'a>(
    frontend: Option<&'a ProgrammedFrontend>,
    none: &'a BTreeMap<u16, u32>,
) -> &'a BTreeMap<u16, u32> {
    frontend.map_or(none, |f| &f.slots)
}

/// Keys on one side only, or with different values on the two.
fn differing<K: Ord, V: PartialEq>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> usize {
    let only_a = a
        .iter()
        .filter(|(key, value)| b.get(key) != Some(value))
        .count();
    let only_b = b.keys().filter(|key| !a.contains_key(key)).count();
    only_a + only_b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::fixtures, plan::plan};

    fn programmed() -> DatapathState {
        let desired = fixtures::desired(&[("10.96.0.10", 80, &[1, 2]), ("10.96.0.11", 80, &[2])]);
        let mut state = DatapathState::default();
        for op in plan(&DatapathState::default(), &desired) {
            state.apply(&op);
        }
        state
    }

    #[test]
    fn the_same_maps_have_no_drift() {
        assert!(Drift::between(&programmed(), &programmed()).is_empty());
    }

    #[test]
    fn each_changed_missing_or_extra_entry_counts_once_in_its_map() {
        let want = programmed();
        let mut have = want.clone();
        // A backend rewritten, a slot gone, a frontend's count changed, an
        // extra backend nobody programmed.
        let (&id, backend) = have.backends.iter_mut().next().unwrap();
        backend.port = backend.port.wrapping_add(1);
        let (_, frontend) = have.frontends.iter_mut().next().unwrap();
        frontend.slots.pop_last();
        frontend.count = frontend.count.map(|count| count + 5);
        let extra = *have.backends.get(&id).unwrap();
        have.backends.insert(999, extra);
        let drift = Drift::between(&want, &have);
        assert_eq!(
            drift.maps().collect::<Vec<_>>(),
            [(BACKENDS_MAP, 2), (SERVICES_MAP, 2)]
        );
        assert_eq!(Drift::between(&have, &want), drift, "symmetric");
    }
}
