//! The diff between what the maps hold and what they should hold, as an
//! ordered list of single-entry map operations.
//!
//! Order is make-before-break, so that at every step of applying a plan each
//! frontend's slots 1..=count exist and name existing backends:
//! 1. new backends;
//! 2. per kept or new frontend: changed slots, then the count, then slots
//!    beyond the new count;
//! 3. per removed frontend: slot 0 first (the kernel stops using it), then
//!    its slots;
//! 4. backends nothing references any more.
//!
//! Backend ids come from the current state (a backend already programmed
//! keeps its id, a new one takes the lowest free id), so no allocator state
//! lives outside the maps and a restarted agent plans exactly like the old one.

pub mod capacity;
pub mod counter_ids;
pub mod counter_labels;
pub mod counter_refs;
pub mod datapath_state;
pub mod drift;
pub mod maglev_room;
pub mod maglev_table;
pub mod map_op;
pub mod service_address;
pub mod stale_backends;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};

use switchyard_abi::{Backend, ServiceKey};

use crate::{
    model::{DesiredFrontend, DesiredState, Frontend},
    plan::{
        counter_ids::CounterIds,
        datapath_state::{DatapathState, ProgrammedFrontend, Slot},
        map_op::{MapOp, RangeKey},
    },
};

pub fn plan(current: &DatapathState, desired: &DesiredState) -> Vec<MapOp> {
    let mut ids = BackendIds::new(current);
    let mut counters = CounterIds::new(current, &desired.counters);
    for (frontend, want) in &desired.frontends {
        if let Some(existing) = current.frontends.get(&frontend.key()) {
            counters.keep(&want.service, existing);
        }
    }
    let mut frontend_ops = Vec::new();
    let mut wanted_keys = BTreeSet::new();
    let mut wanted_ranges = BTreeSet::new();
    for (frontend, want) in &desired.frontends {
        let key = frontend.key();
        wanted_keys.insert(key);
        let existing = current.frontends.get(&key);
        plan_wanted(
            key,
            want,
            existing,
            &mut Allocators {
                ids: &mut ids,
                counters: &mut counters,
            },
            &mut wanted_ranges,
            &mut frontend_ops,
        );
    }
    for (key, existing) in &current.frontends {
        if !wanted_keys.contains(key) {
            remove_frontend(*key, existing, &mut frontend_ops);
        }
    }
    // Ranges go in before the frontend that checks them and out after it
    // stopped, like backends.
    let addresses = service_address::plan_all(current, desired);
    let mut ops = counters.resets;
    ops.extend(ids.new_backends);
    ops.extend(addresses.puts);
    ops.extend(
        wanted_ranges
            .difference(&current.source_ranges)
            .map(|&range| MapOp::PutSourceRange { range }),
    );
    ops.extend(frontend_ops);
    ops.extend(
        current
            .source_ranges
            .difference(&wanted_ranges)
            .map(|&range| MapOp::DeleteSourceRange { range }),
    );
    ops.extend(addresses.deletes);
    ops.extend(
        current
            .backends
            .keys()
            .filter(|id| !ids.referenced.contains(id))
            .map(|&id| MapOp::DeleteBackend { id }),
    );
    ops
}

/// The plan for the frontends in `scope` only, as [`plan`] would make it
/// for them, for a pass that knows what changed. Assumes the rest of the
/// maps already match `desired` (the previous pass completed): a backend is
/// deleted when no slot of any frontend names it once the scoped frontends
/// are rewritten.
pub fn plan_frontends(
    current: &DatapathState,
    desired: &DesiredState,
    scope: &BTreeSet<Frontend>,
) -> Vec<MapOp> {
    let mut ids = BackendIds::new(current);
    let mut counters = CounterIds::new(current, &desired.counters);
    for frontend in scope {
        if let (Some(want), Some(existing)) = (
            desired.frontends.get(frontend),
            current.frontends.get(&frontend.key()),
        ) {
            counters.keep(&want.service, existing);
        }
    }
    let mut frontend_ops = Vec::new();
    let mut wanted_ranges = BTreeSet::new();
    let mut scoped_keys = BTreeSet::new();
    // Slots of the scoped frontends naming each backend, before the plan.
    let mut scoped_refs: HashMap<u32, u32> = HashMap::new();
    for frontend in scope {
        let key = frontend.key();
        // Ranges are keyed without the scope.
        scoped_keys.insert(ServiceKey::new(key.addr, key.port, key.proto, 0));
        let existing = current.frontends.get(&key);
        for id in existing
            .iter()
            .flat_map(|f| f.slots.values().map(|s| s.backend_id))
        {
            *scoped_refs.entry(id).or_default() += 1;
        }
        match desired.frontends.get(frontend) {
            Some(want) => plan_wanted(
                key,
                want,
                existing,
                &mut Allocators {
                    ids: &mut ids,
                    counters: &mut counters,
                },
                &mut wanted_ranges,
                &mut frontend_ops,
            ),
            None => {
                if let Some(existing) = existing {
                    remove_frontend(key, existing, &mut frontend_ops);
                }
            }
        }
    }
    let programmed_ranges: BTreeSet<RangeKey> = current
        .source_ranges
        .iter()
        .filter(|range| scoped_keys.contains(&range.frontend_key()))
        .copied()
        .collect();
    let addresses = service_address::plan_scoped(current, desired, scope);
    let mut ops = counters.resets;
    ops.extend(ids.new_backends);
    ops.extend(addresses.puts);
    ops.extend(
        wanted_ranges
            .difference(&programmed_ranges)
            .map(|&range| MapOp::PutSourceRange { range }),
    );
    ops.extend(frontend_ops);
    ops.extend(
        programmed_ranges
            .difference(&wanted_ranges)
            .map(|&range| MapOp::DeleteSourceRange { range }),
    );
    ops.extend(addresses.deletes);
    let mut orphans: Vec<u32> = scoped_refs
        .into_iter()
        .filter(|(id, refs)| !ids.referenced.contains(id) && current.slot_refs(*id) <= *refs)
        .map(|(id, _)| id)
        .collect();
    orphans.sort_unstable();
    ops.extend(orphans.into_iter().map(|id| MapOp::DeleteBackend { id }));
    ops
}

/// Where a plan takes backend ids and counter entries from.
struct Allocators<'p, 'a> {
    ids: &'p mut BackendIds<'a>,
    counters: &'p mut CounterIds<'a>,
}

/// The operations that make one frontend what `want` says, its backends'
/// ids and counter entries (new ones allocated) and its source ranges
/// noted.
fn plan_wanted<'a>(
    key: ServiceKey,
    want: &'a DesiredFrontend,
    existing: Option<&ProgrammedFrontend>,
    allocators: &mut Allocators<'_, 'a>,
    wanted_ranges: &mut BTreeSet<RangeKey>,
    ops: &mut Vec<MapOp>,
) {
    wanted_ranges.extend(
        want.source_ranges
            .iter()
            .map(|cidr| RangeKey::new(&key, cidr)),
    );
    let backends: Vec<Backend> = want
        .backends
        .iter()
        .take(usize::from(u16::MAX))
        .map(Backend::from)
        .collect();
    let wanted: Vec<u32> = backends
        .iter()
        .map(|&backend| allocators.ids.id_for(backend))
        .collect();
    if existing.and_then(|existing| existing.name.as_deref()) != Some(&want.service) {
        ops.push(MapOp::PutName {
            key,
            name: Box::new(want.service.clone()),
        });
    }
    let target = Target {
        backend_ids: &wanted,
        backends: &backends,
        maglev_table_size: want.maglev_table_size,
        flags: want.flags,
        affinity_timeout: want.affinity_timeout,
        counter: allocators.counters.service(&want.service),
    };
    update_frontend(key, existing, &target, allocators.counters, ops);
}

/// What one frontend should become.
struct Target<'a> {
    backend_ids: &'a [u32],
    /// What each of `backend_ids` holds.
    backends: &'a [Backend],
    maglev_table_size: u32,
    flags: u16,
    affinity_timeout: u32,
    /// The Service port's counter entry.
    counter: u32,
}

fn update_frontend(
    key: ServiceKey,
    existing: Option<&ProgrammedFrontend>,
    target: &Target<'_>,
    counters: &mut CounterIds<'_>,
    ops: &mut Vec<MapOp>,
) {
    let empty = ProgrammedFrontend::default();
    let existing = existing.unwrap_or(&empty);
    let old: Vec<Option<u32>> = existing.active_slots().collect();
    let slots = assign_slots(&old, target.backend_ids);
    for (slot, &backend_id) in (1..).zip(&slots) {
        let counter = counters.backend(target.counter, backend_id);
        if existing.slots.get(&slot)
            != Some(&Slot {
                backend_id,
                counter,
            })
        {
            ops.push(MapOp::PutSlot {
                key: key.with_slot(slot),
                backend_id,
                counter,
            });
        }
    }
    let (maglev_puts, maglev_deletes) = maglev_table::bucket_ops(
        &key,
        existing,
        &target.slot_backends(&slots),
        target.maglev_table_size,
    );
    ops.extend(maglev_puts);
    // `wanted` was capped at u16::MAX entries above.
    let count = u16::try_from(slots.len()).unwrap_or(u16::MAX);
    if existing.count != Some(count)
        || existing.maglev_table_size != target.maglev_table_size
        || existing.affinity_timeout != target.affinity_timeout
        || existing.flags != target.flags
        || existing.counter != target.counter
    {
        ops.push(MapOp::PutFrontend {
            key,
            count,
            flags: target.flags,
            affinity_timeout: target.affinity_timeout,
            counter: target.counter,
            maglev_table_size: target.maglev_table_size,
        });
    }
    ops.extend(
        existing
            .slots
            .keys()
            .filter(|&&slot| slot > count)
            .map(|&slot| MapOp::DeleteSlot {
                key: key.with_slot(slot),
            }),
    );
    ops.extend(maglev_deletes);
}

impl Target<'_> {
    /// The backends `slots` (ids, index 0 is slot 1) name: what a Maglev
    /// table is built over.
    fn slot_backends(&self, slots: &[u32]) -> Vec<Backend> {
        if self.maglev_table_size == 0 {
            return Vec::new();
        }
        let by_id: HashMap<u32, Backend> = self
            .backend_ids
            .iter()
            .copied()
            .zip(self.backends.iter().copied())
            .collect();
        slots
            .iter()
            .filter_map(|id| by_id.get(id).copied())
            .collect()
    }
}

fn remove_frontend(key: ServiceKey, existing: &ProgrammedFrontend, ops: &mut Vec<MapOp>) {
    if existing.count.is_some() {
        ops.push(MapOp::DeleteFrontend { key });
    }
    ops.extend(
        (0u32..)
            .zip(&existing.maglev)
            .filter(|&(_, &slot)| slot != 0)
            .map(|(bucket, _)| MapOp::DeleteMaglevBucket {
                key: switchyard_abi::MaglevKey::new(&key, bucket),
            }),
    );
    ops.extend(existing.slots.keys().map(|&slot| MapOp::DeleteSlot {
        key: key.with_slot(slot),
    }));
    if existing.name.is_some() {
        ops.push(MapOp::DeleteName { key });
    }
}

/// Slot contents (index 0 is slot 1) for `wanted`, moving as few entries as
/// possible: a backend that stays keeps its slot while that slot is within
/// the new count; holes take new backends first, then survivors moved down
/// from beyond the new count, highest slot first.
pub fn assign_slots(old: &[Option<u32>], wanted: &[u32]) -> Vec<u32> {
    let wanted_set: BTreeSet<u32> = wanted.iter().copied().collect();
    let mut slots: Vec<Option<u32>> = vec![None; wanted.len()];
    let mut placed = BTreeSet::new();
    for (slot, id) in slots.iter_mut().zip(old) {
        if let Some(id) = id
            && wanted_set.contains(id)
            && placed.insert(*id)
        {
            *slot = Some(*id);
        }
    }
    let previously_anywhere: BTreeSet<u32> = old.iter().flatten().copied().collect();
    let fresh = wanted.iter().filter(|id| !previously_anywhere.contains(id));
    let moved_down = old
        .iter()
        .skip(wanted.len())
        .rev()
        .flatten()
        .filter(|id| wanted_set.contains(id));
    let mut queued = BTreeSet::new();
    let mut pending = fresh
        .chain(moved_down)
        .filter(|id| !placed.contains(*id) && queued.insert(**id))
        .copied()
        .collect::<Vec<_>>()
        .into_iter();
    // Every wanted id is either kept, fresh or moved down, so the holes and
    // `pending` match one to one; the fallback (plain order) is never taken.
    slots
        .into_iter()
        .map(|slot| slot.or_else(|| pending.next()))
        .collect::<Option<Vec<u32>>>()
        .unwrap_or_else(|| wanted.to_vec())
}

/// Backend ids as the plan goes: programmed ones reused, new ones
/// allocated lowest-first, and every id the desired state uses remembered.
/// Lookups go through the state's index, so the cost follows the size of
/// the change, not of the maps.
struct BackendIds<'a> {
    current: &'a DatapathState,
    fresh: HashMap<Backend, u32>,
    free: Box<dyn Iterator<Item = u32> + 'a>,
    referenced: BTreeSet<u32>,
    new_backends: Vec<MapOp>,
}

impl<'a> BackendIds<'a> {
    fn new(current: &'a DatapathState) -> Self {
        Self {
            current,
            fresh: HashMap::new(),
            free: Box::new(current.free_backend_ids()),
            referenced: BTreeSet::new(),
            new_backends: Vec::new(),
        }
    }

    fn id_for(&mut self, backend: Backend) -> u32 {
        let known = self
            .current
            .backend_id(&backend)
            .or_else(|| self.fresh.get(&backend).copied());
        let id = if let Some(id) = known {
            id
        } else {
            // The iterator never ends: ids are u32 and a map holds far
            // fewer backends than that.
            let id = self.free.next().unwrap_or(u32::MAX);
            self.fresh.insert(backend, id);
            self.new_backends.push(MapOp::PutBackend { id, backend });
            id
        };
        self.referenced.insert(id);
        id
    }
}
