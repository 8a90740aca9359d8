//! Drift: map entries that differ from what the agent programmed, found by
//! reading the maps back (someone's `bpftool map update`, a tool that
//! cleared a map, a bug). A plan compares the desired state with the
//! agent's own mirror, so an entry changed behind its back would stay
//! wrong; once drift is found the mirror becomes what the maps hold and
//! the next full pass repairs every entry.

use std::collections::{BTreeMap, BTreeSet};

use switchyard_abi::{
    BACKENDS_MAP, Backend, CLUSTER_IPS_MAP, MAGLEV_MAP, MaglevKey, SERVICE_CIDRS_MAP, SERVICES_MAP,
    SOURCE_RANGES_MAP, ServiceKey, ServiceValue,
};

use crate::plan::{
    datapath_state::{DatapathState, ProgrammedFrontend, Slot},
    map_op::{RangeKey, ServiceAddress},
};

/// The maps a read-back compares.
pub const CHECKED_MAPS: [&str; 6] = [
    SERVICES_MAP,
    BACKENDS_MAP,
    MAGLEV_MAP,
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
            drift.add(MAGLEV_MAP, differing_buckets(want, have));
        }
        drift.add(
            BACKENDS_MAP,
            differing(&programmed.backends, &actual.backends),
        );
        drift.add_small_maps(programmed, &actual.source_ranges, &actual.service_addresses);
        drift
    }

    /// The source ranges and service addresses `programmed` holds against
    /// the maps' (small maps, compared whole).
    fn add_small_maps(
        &mut self,
        programmed: &DatapathState,
        source_ranges: &BTreeSet<RangeKey>,
        service_addresses: &BTreeSet<ServiceAddress>,
    ) {
        self.add(
            SOURCE_RANGES_MAP,
            programmed
                .source_ranges
                .symmetric_difference(source_ranges)
                .count(),
        );
        for address in programmed
            .service_addresses
            .symmetric_difference(service_addresses)
        {
            let map = match address {
                ServiceAddress::ClusterIp(_) => CLUSTER_IPS_MAP,
                ServiceAddress::Cidr(_) => SERVICE_CIDRS_MAP,
            };
            self.add(map, 1);
        }
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

/// Drift counted entry by entry as the big maps are read (in batches),
/// against the mirror, without building a second copy of the state: what
/// keeps a read-back every sync period cheap at 50k Services. The small
/// maps are compared whole at the end.
pub struct DriftCount<'a> {
    mirror: &'a DatapathState,
    drift: Drift,
    services_seen: usize,
    backends_seen: usize,
    buckets_seen: usize,
}

impl<'a> DriftCount<'a> {
    pub fn new(mirror: &'a DatapathState) -> Self {
        Self {
            mirror,
            drift: Drift::default(),
            services_seen: 0,
            backends_seen: 0,
            buckets_seen: 0,
        }
    }

    /// One entry of the service map as the kernel holds it.
    pub fn service_entry(&mut self, key: &ServiceKey, value: &ServiceValue) {
        let frontend = self.mirror.frontends.get(&key.with_slot(0));
        let (mirrored, matches) = if key.slot == 0 {
            let want = head(frontend);
            let have = (
                value.count,
                value.affinity_timeout,
                value.flags,
                value.counter,
                value.maglev_table_size(),
            );
            (want.is_some(), want == Some(have))
        } else {
            let want = frontend.and_then(|f| f.slots.get(&key.slot));
            let have = Slot {
                backend_id: value.backend_id,
                counter: value.counter,
            };
            (want.is_some(), want == Some(&have))
        };
        // A mirrored key is seen either way; a wrong value is one drifted
        // entry, as is a key the mirror does not have.
        self.services_seen += usize::from(mirrored);
        if !matches {
            self.drift.add(SERVICES_MAP, 1);
        }
    }

    /// One entry of the backend map as the kernel holds it.
    pub fn backend(&mut self, id: u32, backend: &Backend) {
        let want = self.mirror.backends.get(&id);
        self.backends_seen += usize::from(want.is_some());
        if want != Some(backend) {
            self.drift.add(BACKENDS_MAP, 1);
        }
    }

    /// One bucket of a Maglev table as the kernel holds it.
    pub fn maglev_bucket(&mut self, key: &MaglevKey, slot: u32) {
        let want = self
            .mirror
            .frontends
            .get(&key.frontend.with_slot(0))
            .map_or(0, |frontend| frontend.maglev_bucket(key.bucket));
        self.buckets_seen += usize::from(want != 0);
        if u32::from(want) != slot {
            self.drift.add(MAGLEV_MAP, 1);
        }
    }

    /// The drift, once every entry of the big maps was seen and given
    /// the small maps as they are: mirrored keys never seen are gone from
    /// the maps.
    pub fn finish(
        mut self,
        source_ranges: &BTreeSet<RangeKey>,
        service_addresses: &BTreeSet<ServiceAddress>,
    ) -> Drift {
        let mirror = self.mirror;
        self.drift.add(
            SERVICES_MAP,
            mirror.service_entries().saturating_sub(self.services_seen),
        );
        self.drift.add(
            BACKENDS_MAP,
            mirror.backends.len().saturating_sub(self.backends_seen),
        );
        let buckets: usize = mirror
            .frontends
            .values()
            .map(|f| f.maglev.iter().filter(|&&slot| slot != 0).count())
            .sum();
        self.drift
            .add(MAGLEV_MAP, buckets.saturating_sub(self.buckets_seen));
        self.drift
            .add_small_maps(mirror, source_ranges, service_addresses);
        self.drift
    }
}

/// Slot 0 of a frontend as the kernel reads it: count, affinity, flags,
/// counter entry, Maglev table size.
fn head(frontend: Option<&ProgrammedFrontend>) -> Option<(u16, u32, u16, u32, u32)> {
    frontend.and_then(|f| {
        f.count.map(|count| {
            (
                count,
                f.affinity_timeout,
                f.flags,
                f.counter,
                f.maglev_table_size,
            )
        })
    })
}

/// Maglev buckets present on one side only, or naming different slots.
fn differing_buckets(a: Option<&ProgrammedFrontend>, b: Option<&ProgrammedFrontend>) -> usize {
    let (a, b) = (
        a.map_or(&[][..], |f| &f.maglev[..]),
        b.map_or(&[][..], |f| &f.maglev[..]),
    );
    (0..a.len().max(b.len()))
        .filter(|&i| a.get(i).copied().unwrap_or(0) != b.get(i).copied().unwrap_or(0))
        .count()
}

fn slots<'a>(
    frontend: Option<&'a ProgrammedFrontend>,
    none: &'a BTreeMap<u16, Slot>,
) -> &'a BTreeMap<u16, Slot> {
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
        assert_eq!(
            counted(&want, &have),
            drift,
            "counted entry by entry, the same"
        );
        assert!(counted(&want, &want).is_empty());
    }

    /// [`DriftCount`] fed `have` as the kernel would hand its entries.
    fn counted(want: &DatapathState, have: &DatapathState) -> Drift {
        let mut count = DriftCount::new(want);
        for (key, frontend) in &have.frontends {
            if let Some(n) = frontend.count {
                let value = ServiceValue::frontend(
                    n,
                    frontend.flags,
                    frontend.affinity_timeout,
                    frontend.counter,
                );
                count.service_entry(key, &value);
            }
            for (&slot, named) in &frontend.slots {
                let value = ServiceValue::slot(named.backend_id, named.counter);
                count.service_entry(&key.with_slot(slot), &value);
            }
        }
        for (&id, backend) in &have.backends {
            count.backend(id, backend);
        }
        count.finish(&have.source_ranges, &have.service_addresses)
    }
}
