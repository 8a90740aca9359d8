//! What the maps hold, in typed form: the agent's mirror of the kernel, the
//! input of every plan, and what `switchyard services` shows.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use switchyard_abi::{Backend, MaglevKey, ServiceKey, ServiceValue};

use crate::{
    model::ServicePortName,
    plan::{
        counter_refs::CounterRefs,
        map_op::{Counter, MapOp, RangeKey, ServiceAddress},
    },
};

#[derive(Clone, Debug, Default)]
pub struct DatapathState {
    /// Keyed by each frontend's slot-0 key.
    pub frontends: BTreeMap<ServiceKey, ProgrammedFrontend>,
    pub backends: BTreeMap<u32, Backend>,
    /// `loadBalancerSourceRanges` entries.
    pub source_ranges: BTreeSet<RangeKey>,
    /// Allocated ClusterIPs and service CIDRs.
    pub service_addresses: BTreeSet<ServiceAddress>,
    /// Derived from the above and kept up to date by [`Self::apply`], so a
    /// plan touching one frontend costs as much at 50k Services as at 1.
    index: BackendIndex,
    /// Derived like `index`: the counter entries in use.
    counters: CounterRefs,
}

/// Lookups a plan needs without walking every backend or slot.
#[derive(Clone, Debug, Default)]
struct BackendIndex {
    /// The lowest id holding each backend.
    ids: HashMap<Backend, u32>,
    /// How many slots (active or not) name each backend id.
    slot_refs: HashMap<u32, u32>,
    /// Unused ids below `high`, and `high`: one above the largest id used.
    free: BTreeSet<u32>,
    high: u32,
}

impl BackendIndex {
    fn taken(&mut self, id: u32) {
        if id >= self.high {
            self.free.extend(self.high.max(1)..id);
            self.high = id + 1;
        } else {
            self.free.remove(&id);
        }
    }

    fn released(&mut self, id: u32) {
        if id < self.high {
            self.free.insert(id);
        }
    }
}

impl PartialEq for DatapathState {
    /// The index is derived data: two states are equal when the maps are.
    fn eq(&self, other: &Self) -> bool {
        self.frontends == other.frontends
            && self.backends == other.backends
            && self.source_ranges == other.source_ranges
            && self.service_addresses == other.service_addresses
    }
}

impl Eq for DatapathState {}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgrammedFrontend {
    /// Slot 0's count; `None` while only slots exist (written ahead of a new
    /// frontend, or left over after it was removed).
    pub count: Option<u16>,
    /// Slot 0's session-affinity timeout in seconds (0: none).
    pub affinity_timeout: u32,
    /// Slot 0's `FRONTEND_*` bits.
    pub flags: u16,
    /// Slot 0's Maglev table size (0: random choice).
    pub maglev_table_size: u32,
    /// The Maglev table's buckets as the map holds them: the slot each
    /// names, 0 where a bucket is missing.
    pub maglev: Vec<u16>,
    /// Slot number (>= 1) -> what it names, including slots beyond
    /// `count`, which the kernel never reads.
    pub slots: BTreeMap<u16, Slot>,
    /// Slot 0's Service port counter entry.
    pub counter: u32,
    /// The Service port it serves, as the names map holds it (boxed: the
    /// mirror's nodes stay small, and the read-back walks them every
    /// sync period).
    pub name: Option<Box<ServicePortName>>,
}

/// One slot: a backend, and the counter entry of the (Service port,
/// backend) pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Slot {
    pub backend_id: u32,
    pub counter: u32,
}

impl ProgrammedFrontend {
    /// Backend ids in slots 1..=count, `None` for a missing slot.
    pub fn active_slots(&self) -> impl Iterator<Item = Option<u32>> + '_ {
        (1..=self.count.unwrap_or(0)).map(|slot| self.slots.get(&slot).map(|s| s.backend_id))
    }

    fn is_empty(&self) -> bool {
        self.count.is_none()
            && self.slots.is_empty()
            && self.name.is_none()
            && self.maglev.is_empty()
    }

    /// The slot Maglev bucket `bucket` names, 0 for none.
    pub fn maglev_bucket(&self, bucket: u32) -> u16 {
        usize::try_from(bucket)
            .ok()
            .and_then(|index| self.maglev.get(index))
            .copied()
            .unwrap_or(0)
    }

    fn set_maglev_bucket(&mut self, bucket: u32, slot: u16) {
        let Ok(index) = usize::try_from(bucket) else {
            return;
        };
        if index >= self.maglev.len() {
            if slot == 0 {
                return;
            }
            self.maglev.resize(index + 1, 0);
        }
        self.maglev[index] = slot;
        while self.maglev.last() == Some(&0) {
            self.maglev.pop();
        }
    }
}

impl DatapathState {
    /// Builds the mirror from raw map entries, as read from the pins.
    pub fn from_entries(
        services: impl IntoIterator<Item = (ServiceKey, ServiceValue)>,
        backends: impl IntoIterator<Item = (u32, Backend)>,
        source_ranges: impl IntoIterator<Item = RangeKey>,
        names: impl IntoIterator<Item = (ServiceKey, ServicePortName)>,
    ) -> Self {
        let mut state = Self {
            frontends: BTreeMap::new(),
            backends: backends.into_iter().collect(),
            source_ranges: source_ranges.into_iter().collect(),
            service_addresses: BTreeSet::new(),
            index: BackendIndex::default(),
            counters: CounterRefs::default(),
        };
        for (key, name) in names {
            state.frontends.entry(key.with_slot(0)).or_default().name = Some(Box::new(name));
        }
        // Ascending ids: a duplicate (only after a hand edit) maps to the
        // lowest, and the others are dropped as unreferenced.
        for (&id, &backend) in &state.backends {
            state.index.ids.entry(backend).or_insert(id);
            state.index.taken(id);
        }
        for (key, value) in services {
            let frontend = state.frontends.entry(key.with_slot(0)).or_default();
            if key.slot == 0 {
                frontend.count = Some(value.count);
                frontend.affinity_timeout = value.affinity_timeout;
                frontend.flags = value.flags;
                frontend.counter = value.counter;
                frontend.maglev_table_size = value.maglev_table_size();
                state.counters.add(Counter::Service(value.counter));
            } else {
                frontend.slots.insert(
                    key.slot,
                    Slot {
                        backend_id: value.backend_id,
                        counter: value.counter,
                    },
                );
                state.counters.add(Counter::Backend(value.counter));
                *state.index.slot_refs.entry(value.backend_id).or_default() += 1;
            }
        }
        state
    }

    /// Adds the Maglev map's buckets (key, slot), as read from the pin.
    #[must_use]
    pub fn with_maglev(mut self, buckets: impl IntoIterator<Item = (MaglevKey, u32)>) -> Self {
        for (key, slot) in buckets {
            let slot = u16::try_from(slot).unwrap_or(u16::MAX);
            self.frontends
                .entry(key.frontend.with_slot(0))
                .or_default()
                .set_maglev_bucket(key.bucket, slot);
        }
        self
    }

    /// The same entries with the lookups derived from them again, as a
    /// fresh read of the maps would give (for a state whose public fields
    /// were changed directly, as a test's "someone else wrote the map").
    #[must_use]
    pub fn reindexed(mut self) -> Self {
        self.index = BackendIndex::default();
        self.counters = CounterRefs::default();
        for (&id, &backend) in &self.backends {
            self.index.ids.entry(backend).or_insert(id);
            self.index.taken(id);
        }
        for frontend in self.frontends.values() {
            for slot in frontend.slots.values() {
                *self.index.slot_refs.entry(slot.backend_id).or_default() += 1;
                self.counters.add(Counter::Backend(slot.counter));
            }
            if frontend.count.is_some() {
                self.counters.add(Counter::Service(frontend.counter));
            }
        }
        self
    }

    /// Entries of the service map: each frontend's slot 0 and its slots.
    pub fn service_entries(&self) -> usize {
        self.frontends
            .values()
            .map(|frontend| usize::from(frontend.count.is_some()) + frontend.slots.len())
            .sum()
    }

    /// Whether a map entry names this counter entry.
    pub fn counter_in_use(&self, counter: Counter) -> bool {
        self.counters.in_use(counter)
    }

    /// The id already holding `backend`, if any.
    pub fn backend_id(&self, backend: &Backend) -> Option<u32> {
        self.index.ids.get(backend).copied()
    }

    /// Ids no backend holds, lowest first, without end: the ones a plan
    /// hands out in order.
    pub fn free_backend_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.index
            .free
            .iter()
            .copied()
            .chain(self.index.high.max(1)..)
    }

    /// How many slots, active or not, name backend `id`.
    pub fn slot_refs(&self, id: u32) -> u32 {
        self.index.slot_refs.get(&id).copied().unwrap_or(0)
    }

    /// Frontends the kernel serves (slot 0 present), with their backend ids.
    pub fn active_frontends(&self) -> impl Iterator<Item = (&ServiceKey, &ProgrammedFrontend)> {
        self.frontends
            .iter()
            .filter(|(_, frontend)| frontend.count.is_some())
    }

    /// Records an operation the kernel accepted.
    pub fn apply(&mut self, op: &MapOp) {
        match *op {
            MapOp::PutBackend { id, backend } => {
                if let Some(replaced) = self.backends.insert(id, backend) {
                    self.unindex_backend(id, &replaced);
                }
                let holder = self.index.ids.entry(backend).or_insert(id);
                *holder = (*holder).min(id);
                self.index.taken(id);
            }
            MapOp::PutSlot {
                key,
                backend_id,
                counter,
            } => {
                let slot = Slot {
                    backend_id,
                    counter,
                };
                let previous = self.frontend_mut(&key).slots.insert(key.slot, slot);
                self.unref_slot(previous);
                *self.index.slot_refs.entry(backend_id).or_default() += 1;
                self.counters.add(Counter::Backend(counter));
            }
            MapOp::PutFrontend {
                key,
                count,
                flags,
                affinity_timeout,
                counter,
                maglev_table_size,
            } => {
                let frontend = self.frontend_mut(&key);
                let previous = frontend.count.map(|_| frontend.counter);
                frontend.count = Some(count);
                frontend.maglev_table_size = maglev_table_size;
                frontend.flags = flags;
                frontend.affinity_timeout = affinity_timeout;
                frontend.counter = counter;
                if let Some(previous) = previous {
                    self.counters.remove(Counter::Service(previous));
                }
                self.counters.add(Counter::Service(counter));
            }
            MapOp::PutName { key, ref name } => {
                self.frontend_mut(&key).name = Some(name.clone());
            }
            MapOp::DeleteName { key } => {
                self.edit_existing(&key, |frontend| frontend.name = None);
            }
            MapOp::ResetCounter { .. } => {}
            MapOp::PutMaglevBucket { key, slot } => {
                self.frontend_mut(&key.frontend)
                    .set_maglev_bucket(key.bucket, slot);
            }
            MapOp::DeleteMaglevBucket { key } => {
                self.edit_existing(&key.frontend, |frontend| {
                    frontend.set_maglev_bucket(key.bucket, 0);
                });
            }
            MapOp::PutSourceRange { range } => {
                self.source_ranges.insert(range);
            }
            MapOp::DeleteSourceRange { range } => {
                self.source_ranges.remove(&range);
            }
            MapOp::PutServiceAddress { address } => {
                self.service_addresses.insert(address);
            }
            MapOp::DeleteServiceAddress { address } => {
                self.service_addresses.remove(&address);
            }
            MapOp::DeleteSlot { key } => {
                let mut removed = None;
                self.edit_existing(&key, |frontend| {
                    removed = frontend.slots.remove(&key.slot);
                });
                self.unref_slot(removed);
            }
            MapOp::DeleteFrontend { key } => {
                let mut removed_counter = None;
                self.edit_existing(&key, |frontend| {
                    if frontend.count.take().is_some() {
                        removed_counter = Some(frontend.counter);
                    }
                    frontend.affinity_timeout = 0;
                    frontend.maglev_table_size = 0;
                    frontend.flags = 0;
                    frontend.counter = 0;
                });
                if let Some(counter) = removed_counter {
                    self.counters.remove(Counter::Service(counter));
                }
            }
            MapOp::DeleteBackend { id } => {
                if let Some(removed) = self.backends.remove(&id) {
                    self.unindex_backend(id, &removed);
                    self.index.released(id);
                }
            }
        }
    }

    /// A slot no longer names its backend and counter entry.
    fn unref_slot(&mut self, slot: Option<Slot>) {
        let Some(Slot {
            backend_id: id,
            counter,
        }) = slot
        else {
            return;
        };
        self.counters.remove(Counter::Backend(counter));
        if let Some(refs) = self.index.slot_refs.get_mut(&id) {
            *refs -= 1;
            if *refs == 0 {
                self.index.slot_refs.remove(&id);
            }
        }
    }

    /// `backend` no longer lives at `id`. A duplicate at another id (only
    /// ever after a hand edit) is forgotten too: a plan then gives the
    /// backend a fresh id, and the duplicate goes as unreferenced.
    fn unindex_backend(&mut self, id: u32, backend: &Backend) {
        if self.index.ids.get(backend) == Some(&id) {
            self.index.ids.remove(backend);
        }
    }

    /// Whether `op` keeps the kernel consistent given what is programmed: a
    /// slot must name a present backend, a count must cover present slots, a
    /// slot or backend still in use must stay. A plan only breaks these when
    /// an earlier operation of it failed.
    pub fn admits(&self, op: &MapOp) -> bool {
        match op {
            MapOp::PutBackend { .. }
            | MapOp::DeleteFrontend { .. }
            | MapOp::PutSourceRange { .. }
            | MapOp::DeleteSourceRange { .. }
            | MapOp::PutServiceAddress { .. }
            | MapOp::DeleteServiceAddress { .. }
            | MapOp::PutName { .. }
            | MapOp::DeleteName { .. }
            | MapOp::PutMaglevBucket { .. }
            | MapOp::DeleteMaglevBucket { .. }
            | MapOp::ResetCounter { .. } => true,
            MapOp::PutSlot { backend_id, .. } => self.backends.contains_key(backend_id),
            MapOp::PutFrontend { key, count, .. } => {
                let slots = self.frontends.get(&key.with_slot(0)).map(|f| &f.slots);
                (1..=*count).all(|slot| {
                    slots
                        .and_then(|slots| slots.get(&slot))
                        .is_some_and(|slot| self.backends.contains_key(&slot.backend_id))
                })
            }
            MapOp::DeleteSlot { key } => self
                .frontends
                .get(&key.with_slot(0))
                .and_then(|frontend| frontend.count)
                .is_none_or(|count| key.slot > count),
            // No slot at all naming it is the common case and settles it
            // at once; only a stale slot beyond a count needs the walk.
            MapOp::DeleteBackend { id } => {
                self.slot_refs(*id) == 0
                    || !self
                        .frontends
                        .values()
                        .any(|frontend| frontend.active_slots().any(|slot| slot == Some(*id)))
            }
        }
    }

    /// Every way the kernel could fail to resolve a connection: a count
    /// covering a missing slot, or a slot naming a missing backend.
    #[cfg(test)]
    pub(crate) fn dangling(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, frontend) in &self.frontends {
            for (index, slot) in frontend.active_slots().enumerate() {
                match slot {
                    None => problems.push(format!("{key:?}: slot {} missing", index + 1)),
                    Some(id) if !self.backends.contains_key(&id) => {
                        problems.push(format!("{key:?}: slot {} names backend {id}", index + 1));
                    }
                    Some(_) => {}
                }
            }
        }
        problems
    }

    fn frontend_mut(&mut self, key: &ServiceKey) -> &mut ProgrammedFrontend {
        self.frontends.entry(key.with_slot(0)).or_default()
    }

    fn edit_existing(&mut self, key: &ServiceKey, edit: impl FnOnce(&mut ProgrammedFrontend)) {
        let frontend_key = key.with_slot(0);
        if let Some(frontend) = self.frontends.get_mut(&frontend_key) {
            edit(frontend);
            if frontend.is_empty() {
                self.frontends.remove(&frontend_key);
            }
        }
    }
}
