use std::collections::BTreeSet;

use super::*;
use crate::model::{
    Endpoint, Frontend,
    fixtures::{desired, endpoint, frontend},
};

/// Applies `ops` one by one, checking after every single op that nothing
/// the kernel can read dangles.
fn apply_checked(mut state: DatapathState, ops: &[MapOp]) -> DatapathState {
    for (step, op) in ops.iter().enumerate() {
        assert!(state.admits(op), "step {step}: {op:?} not admitted");
        state.apply(op);
        let dangling = state.dangling();
        assert!(
            dangling.is_empty(),
            "after step {step} ({op:?}): {dangling:?}"
        );
    }
    state
}

/// The state serves exactly `want`, with no leftover slots or backends.
fn assert_serves(state: &DatapathState, want: &DesiredState) {
    let mut referenced = BTreeSet::new();
    assert_eq!(state.frontends.len(), want.frontends.len(), "{state:#?}");
    for (frontend, desired) in &want.frontends {
        let programmed = &state.frontends[&frontend.key()];
        assert_eq!(
            programmed.count,
            Some(u16::try_from(desired.backends.len()).unwrap())
        );
        assert_eq!(
            programmed.slots.len(),
            desired.backends.len(),
            "stale slots"
        );
        let served: BTreeSet<Endpoint> = programmed
            .active_slots()
            .map(|id| {
                let id = id.unwrap();
                referenced.insert(id);
                Endpoint::try_from(&state.backends[&id]).unwrap()
            })
            .collect();
        let expected: BTreeSet<Endpoint> = desired.backends.iter().copied().collect();
        assert_eq!(served, expected, "{frontend}");
    }
    let held: BTreeSet<u32> = state.backends.keys().copied().collect();
    assert_eq!(held, referenced, "unreferenced backends left behind");
}

type Spec<'a> = &'a [(&'a str, u16, &'a [u8])];

#[test]
fn every_transition_is_make_before_break_and_converges() {
    let cases: &[(&str, Spec, Spec)] = &[
        ("from nothing", &[], &[("10.96.0.10", 80, &[1, 2, 3])]),
        ("to nothing", &[("10.96.0.10", 80, &[1, 2, 3])], &[]),
        (
            "grow",
            &[("10.96.0.10", 80, &[1])],
            &[("10.96.0.10", 80, &[1, 2, 3, 4])],
        ),
        (
            "shrink from the middle",
            &[("10.96.0.10", 80, &[1, 2, 3, 4])],
            &[("10.96.0.10", 80, &[1, 4])],
        ),
        (
            "replace all",
            &[("10.96.0.10", 80, &[1, 2])],
            &[("10.96.0.10", 80, &[3, 4])],
        ),
        (
            "to no endpoints",
            &[("10.96.0.10", 80, &[1, 2])],
            &[("10.96.0.10", 80, &[])],
        ),
        (
            "from no endpoints",
            &[("10.96.0.10", 80, &[])],
            &[("10.96.0.10", 80, &[5])],
        ),
        (
            "shared backends across frontends",
            &[("10.96.0.10", 80, &[1, 2]), ("10.96.0.11", 80, &[2, 3])],
            &[("10.96.0.11", 80, &[1, 2]), ("fd00::10", 80, &[])],
        ),
        (
            "swap one service for another",
            &[("10.96.0.10", 80, &[1, 2, 3])],
            &[("10.96.0.12", 443, &[1, 2, 3])],
        ),
        (
            "a backend another frontend still uses stays",
            &[("10.96.0.10", 80, &[1, 2]), ("10.96.0.11", 80, &[2, 3])],
            &[("10.96.0.10", 80, &[1]), ("10.96.0.11", 80, &[2, 3])],
        ),
        (
            "backends only the changed frontend used go",
            &[("10.96.0.10", 80, &[1, 2]), ("10.96.0.11", 80, &[3])],
            &[("10.96.0.10", 80, &[]), ("10.96.0.11", 80, &[3])],
        ),
        (
            "one of many moves to a backend another holds",
            &[
                ("10.96.0.10", 80, &[1]),
                ("10.96.0.11", 80, &[2]),
                ("10.96.0.12", 80, &[3]),
            ],
            &[
                ("10.96.0.10", 80, &[1]),
                ("10.96.0.11", 80, &[3]),
                ("10.96.0.12", 80, &[3]),
            ],
        ),
    ];
    for (name, before, after) in cases {
        let start = apply_checked(
            DatapathState::default(),
            &plan(&DatapathState::default(), &desired(before)),
        );
        assert_serves(&start, &desired(before));
        let ops = plan(&start, &desired(after));
        let end = apply_checked(start.clone(), &ops);
        assert_serves(&end, &desired(after));
        assert!(
            plan(&end, &desired(after)).is_empty(),
            "{name}: not idempotent"
        );
        // A pass told which frontends changed gets to the same place.
        let scope = changed_frontends(&desired(before), &desired(after));
        let scoped = apply_checked(
            start,
            &plan_frontends(&start_of(before), &desired(after), &scope),
        );
        assert_serves(&scoped, &desired(after));
        let left = plan(&scoped, &desired(after));
        assert!(
            left.is_empty(),
            "{name}: the scoped plan left work for a full one: {left:?}"
        );
    }
}

/// What a full plan from nothing programs for `spec`.
fn start_of(spec: Spec) -> DatapathState {
    apply_checked(
        DatapathState::default(),
        &plan(&DatapathState::default(), &desired(spec)),
    )
}

/// Frontends whose desired entry differs between `before` and `after`.
fn changed_frontends(before: &DesiredState, after: &DesiredState) -> BTreeSet<Frontend> {
    before
        .frontends
        .keys()
        .chain(after.frontends.keys())
        .filter(|f| before.frontends.get(f) != after.frontends.get(f))
        .copied()
        .collect()
}

#[test]
fn no_change_means_no_operations() {
    let want = desired(&[("10.96.0.10", 80, &[1, 2]), ("fd00::1", 53, &[3])]);
    let state = apply_checked(
        DatapathState::default(),
        &plan(&DatapathState::default(), &want),
    );
    assert_eq!(plan(&state, &want), []);
}

#[test]
fn a_restarted_agent_plans_nothing_for_state_read_back_from_the_maps() {
    let want = desired(&[("10.96.0.10", 80, &[1, 2, 3])]);
    let programmed = apply_checked(
        DatapathState::default(),
        &plan(&DatapathState::default(), &want),
    );
    let mut entries = Vec::new();
    let mut names = Vec::new();
    for (key, frontend) in &programmed.frontends {
        entries.push((
            *key,
            switchyard_abi::ServiceValue::frontend(frontend.count.unwrap(), 0, 0, frontend.counter),
        ));
        for (&slot, named) in &frontend.slots {
            entries.push((
                key.with_slot(slot),
                switchyard_abi::ServiceValue::slot(named.backend_id, named.counter),
            ));
        }
        names.push((*key, *frontend.name.clone().unwrap()));
    }
    let read_back = DatapathState::from_entries(entries, programmed.backends.clone(), [], names);
    assert_eq!(read_back, programmed);
    assert_eq!(plan(&read_back, &want), []);
}

#[test]
fn removing_one_backend_moves_at_most_one_slot() {
    let before = desired(&[("10.96.0.10", 80, &[1, 2, 3, 4])]);
    let state = apply_checked(
        DatapathState::default(),
        &plan(&DatapathState::default(), &before),
    );
    let ops = plan(&state, &desired(&[("10.96.0.10", 80, &[1, 3, 4])]));
    let key = frontend("10.96.0.10", 80).key();
    let gone = state
        .backends
        .iter()
        .find(|(_, b)| Endpoint::try_from(*b).unwrap() == endpoint(2))
        .map(|(id, _)| *id)
        .unwrap();
    let last = state.frontends[&key].slots[&4].backend_id;
    assert_eq!(
        ops,
        [
            MapOp::PutSlot {
                key: key.with_slot(2),
                backend_id: last,
                counter: state.frontends[&key].slots[&4].counter,
            },
            MapOp::PutFrontend {
                key,
                count: 3,
                flags: 0,
                affinity_timeout: 0,
                counter: state.frontends[&key].counter,
                maglev_table_size: 0,
            },
            MapOp::DeleteSlot {
                key: key.with_slot(4)
            },
            MapOp::DeleteBackend { id: gone },
        ]
    );
}

#[test]
fn a_removed_frontend_loses_slot_zero_before_its_slots() {
    let before = desired(&[("10.96.0.10", 80, &[1, 2])]);
    let state = apply_checked(
        DatapathState::default(),
        &plan(&DatapathState::default(), &before),
    );
    let ops = plan(&state, &DesiredState::default());
    let key = frontend("10.96.0.10", 80).key();
    assert_eq!(ops[0], MapOp::DeleteFrontend { key });
    assert!(matches!(ops[1], MapOp::DeleteSlot { .. }));
    assert!(matches!(ops.last(), Some(MapOp::DeleteBackend { .. })));
}

#[test]
fn new_backends_take_the_lowest_free_ids_and_kept_ones_keep_theirs() {
    let mut state = DatapathState::default();
    for (id, octet) in [(1, 1), (3, 3)] {
        state.apply(&MapOp::PutBackend {
            id,
            backend: Backend::from(&endpoint(octet)),
        });
    }
    let ops = plan(&state, &desired(&[("10.96.0.10", 80, &[1, 3, 7, 8])]));
    let new_ids: Vec<u32> = ops
        .iter()
        .filter_map(|op| match op {
            MapOp::PutBackend { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(new_ids, [2, 4]);
}

#[test]
fn slot_assignment_table() {
    struct SlotCase<'a> {
        old: &'a [Option<u32>],
        wanted: &'a [u32],
        expected: &'a [u32],
    }
    let cases: &[SlotCase] = &[
        SlotCase {
            old: &[],
            wanted: &[1, 2],
            expected: &[1, 2],
        },
        SlotCase {
            old: &[Some(1), Some(2), Some(3)],
            wanted: &[1, 2, 3],
            expected: &[1, 2, 3],
        },
        SlotCase {
            old: &[Some(1), Some(2), Some(3)],
            wanted: &[1, 3],
            expected: &[1, 3],
        },
        SlotCase {
            old: &[Some(1), Some(2), Some(3)],
            wanted: &[2, 3],
            expected: &[3, 2],
        },
        SlotCase {
            old: &[Some(1), Some(2)],
            wanted: &[1, 2, 5],
            expected: &[1, 2, 5],
        },
        SlotCase {
            old: &[Some(1), Some(2), Some(3), Some(4)],
            wanted: &[1, 4, 9],
            expected: &[1, 9, 4],
        },
        SlotCase {
            old: &[None, Some(2)],
            wanted: &[2, 7],
            expected: &[7, 2],
        },
        SlotCase {
            old: &[Some(2), Some(2)],
            wanted: &[2, 5],
            expected: &[2, 5],
        },
        SlotCase {
            old: &[Some(1), Some(2)],
            wanted: &[],
            expected: &[],
        },
    ];
    for SlotCase {
        old,
        wanted,
        expected,
    } in cases
    {
        assert_eq!(
            assign_slots(old, wanted),
            *expected,
            "old {old:?} wanted {wanted:?}"
        );
    }
}

#[test]
fn failed_backend_writes_hold_back_the_slots_that_need_them() {
    let state = DatapathState::default();
    let ops = plan(&state, &desired(&[("10.96.0.10", 80, &[1])]));
    // Skip the PutBackend as if the map were full: the slot must not pass.
    let put = ops
        .iter()
        .position(|op| matches!(op, MapOp::PutBackend { .. }))
        .unwrap();
    let slot = ops
        .iter()
        .position(|op| matches!(op, MapOp::PutSlot { .. }))
        .unwrap();
    assert!(put < slot);
    assert!(!state.admits(&ops[slot]));
}

#[test]
fn switching_session_affinity_rewrites_only_slot_zero() {
    let mut want = desired(&[("10.96.0.10", 80, &[1, 2])]);
    let state = apply_checked(
        DatapathState::default(),
        &plan(&DatapathState::default(), &want),
    );
    let key = frontend("10.96.0.10", 80).key();
    for timeout in [10_800, 0] {
        want.frontends
            .values_mut()
            .for_each(|f| f.affinity_timeout = timeout);
        let ops = plan(&state, &want);
        let expected: &[MapOp] = if timeout == 0 {
            &[]
        } else {
            &[MapOp::PutFrontend {
                key,
                count: 2,
                flags: 0,
                affinity_timeout: timeout,
                counter: state.frontends[&key].counter,
                maglev_table_size: 0,
            }]
        };
        assert_eq!(ops, expected);
    }
}
