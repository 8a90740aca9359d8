//! Counter entries as a plan goes: a Service port keeps the entry its
//! frontends already name, a (Service port, backend) pair likewise; new
//! ones take the lowest entries nobody names, up to the policy's caps, and
//! start from zero; the rest are summed in the overflow entry.

use std::collections::HashMap;

use switchyard_abi::{COUNTER_FIRST_OWN, COUNTER_NONE, COUNTER_OVERFLOW};

use crate::{
    model::{ServicePortName, counter_policy::CounterPolicy},
    plan::{
        counter_refs::is_own,
        datapath_state::{DatapathState, ProgrammedFrontend},
        map_op::{Counter, MapOp},
    },
};

pub struct CounterIds<'a> {
    current: &'a DatapathState,
    policy: &'a CounterPolicy,
    services: HashMap<&'a ServicePortName, u32>,
    /// (Service port entry, backend id) -> the pair's entry.
    pairs: HashMap<(u32, u32), u32>,
    /// Where the search for a free entry goes on from.
    next_service: u32,
    next_backend: u32,
    /// Entries handed out in this plan, zeroed before use.
    pub resets: Vec<MapOp>,
}

impl<'a> CounterIds<'a> {
    pub fn new(current: &'a DatapathState, policy: &'a CounterPolicy) -> Self {
        Self {
            current,
            policy,
            services: HashMap::new(),
            pairs: HashMap::new(),
            next_service: COUNTER_FIRST_OWN,
            next_backend: COUNTER_FIRST_OWN,
            resets: Vec::new(),
        }
    }

    /// Notes the entries a frontend serving `service` already names, so
    /// they are kept. Called for every frontend of a plan before any entry
    /// is handed out, so a Service port's new frontend joins its existing
    /// entry rather than taking one of its own.
    pub fn keep(&mut self, service: &'a ServicePortName, existing: &ProgrammedFrontend) {
        let counter = existing.counter;
        if existing.count.is_none()
            || existing.name.as_deref() != Some(service)
            || !self.owns(Counter::Service(counter))
            || !self.policy.selects(service)
        {
            return;
        }
        self.services.entry(service).or_insert(counter);
        for slot in existing.slots.values() {
            if self.owns(Counter::Backend(slot.counter)) {
                self.pairs
                    .entry((counter, slot.backend_id))
                    .or_insert(slot.counter);
            }
        }
    }

    /// The entry `service` counts in.
    pub fn service(&mut self, service: &'a ServicePortName) -> u32 {
        if !self.policy.enabled {
            return COUNTER_NONE;
        }
        if !self.policy.selects(service) {
            return COUNTER_OVERFLOW;
        }
        if let Some(&counter) = self.services.get(service) {
            return counter;
        }
        let counter = self.fresh(Counter::Service).unwrap_or(COUNTER_OVERFLOW);
        self.services.insert(service, counter);
        counter
    }

    /// The entry the pair of the Service port counting in `service` and
    /// `backend_id` counts in: the Service port's own sharing (none or
    /// overflow) carries over to its backends.
    pub fn backend(&mut self, service: u32, backend_id: u32) -> u32 {
        if !is_own(Counter::Service(service)) {
            return service;
        }
        if let Some(&counter) = self.pairs.get(&(service, backend_id)) {
            return counter;
        }
        let counter = self.fresh(Counter::Backend).unwrap_or(COUNTER_OVERFLOW);
        self.pairs.insert((service, backend_id), counter);
        counter
    }

    /// Whether `counter` is an own entry within today's caps.
    fn owns(&self, counter: Counter) -> bool {
        is_own(counter) && {
            let (Counter::Service(index) | Counter::Backend(index)) = counter;
            index < COUNTER_FIRST_OWN + self.cap(counter)
        }
    }

    fn cap(&self, counter: Counter) -> u32 {
        match counter {
            Counter::Service(_) => self.policy.service_series,
            Counter::Backend(_) => self.policy.backend_series,
        }
    }

    /// The lowest entry of the kind nobody names, zeroed first.
    fn fresh(&mut self, kind: fn(u32) -> Counter) -> Option<u32> {
        let end = COUNTER_FIRST_OWN.saturating_add(self.cap(kind(0)));
        let next = match kind(0) {
            Counter::Service(_) => &mut self.next_service,
            Counter::Backend(_) => &mut self.next_backend,
        };
        while *next < end {
            let index = *next;
            *next += 1;
            if !self.current.counter_in_use(kind(index)) {
                self.resets.push(MapOp::ResetCounter {
                    counter: kind(index),
                });
                return Some(index);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use switchyard_abi::{COUNTER_FIRST_OWN, COUNTER_NONE, COUNTER_OVERFLOW};

    use crate::{
        model::{
            DesiredState, Scope, ServicePortName,
            counter_policy::{CounterPolicy, CounterSelector},
            fixtures,
        },
        plan::{datapath_state::DatapathState, map_op::MapOp, plan},
    };

    fn programmed(from: &DatapathState, want: &DesiredState) -> (DatapathState, Vec<MapOp>) {
        let ops = plan(from, want);
        let mut state = from.clone();
        for op in &ops {
            state.apply(op);
        }
        (state, ops)
    }

    /// Two Services, the first with a NodePort-like second frontend.
    fn catalog(policy: CounterPolicy) -> DesiredState {
        let mut want = fixtures::desired(&[("10.96.0.10", 80, &[1, 2]), ("10.96.0.11", 80, &[2])]);
        let first = want.frontends.values().next().unwrap().clone();
        let mut node_port = fixtures::frontend("192.168.1.5", 30080);
        node_port.scope = Scope::External;
        want.frontends.insert(node_port, first);
        want.counters = policy;
        want
    }

    fn counters_of(state: &DatapathState) -> Vec<(u32, Vec<u32>)> {
        state
            .frontends
            .values()
            .map(|f| (f.counter, f.slots.values().map(|s| s.counter).collect()))
            .collect()
    }

    #[test]
    fn a_service_port_counts_in_one_entry_whatever_its_frontends() {
        let (state, ops) = programmed(
            &DatapathState::default(),
            &catalog(CounterPolicy::default()),
        );
        let own = COUNTER_FIRST_OWN;
        // In key order: 10.96.0.10, the NodePort of the same Service
        // port, which shares its entries, then 10.96.0.11.
        assert_eq!(
            counters_of(&state),
            [
                (own, vec![own, own + 1]),
                (own, vec![own, own + 1]),
                (own + 1, vec![own + 2]),
            ]
        );
        let resets = ops
            .iter()
            .take_while(|op| matches!(op, MapOp::ResetCounter { .. }))
            .count();
        assert_eq!(
            resets,
            2 + 3,
            "every entry handed out starts at zero, first"
        );
        assert!(
            state.frontends.values().all(|f| f.name.is_some()),
            "every frontend is named"
        );
        assert_eq!(plan(&state, &catalog(CounterPolicy::default())), []);
    }

    #[test]
    fn past_the_caps_and_outside_the_selection_is_the_overflow_entry() {
        let capped = CounterPolicy {
            service_series: 1,
            backend_series: 1,
            ..CounterPolicy::default()
        };
        let (state, _) = programmed(&DatapathState::default(), &catalog(capped));
        let own = COUNTER_FIRST_OWN;
        let over = COUNTER_OVERFLOW;
        assert_eq!(
            counters_of(&state),
            [
                (own, vec![own, over]),
                (own, vec![own, over]),
                (over, vec![over]),
            ]
        );
        let selected = CounterPolicy {
            selectors: vec![CounterSelector::Namespace("elsewhere".into())],
            ..CounterPolicy::default()
        };
        let (state, _) = programmed(&state, &catalog(selected));
        assert!(
            counters_of(&state)
                .iter()
                .all(|(service, pairs)| *service == over && pairs.iter().all(|p| *p == over))
        );
        let off = CounterPolicy {
            enabled: false,
            ..CounterPolicy::default()
        };
        let (state, _) = programmed(&state, &catalog(off));
        assert!(
            counters_of(&state)
                .iter()
                .all(|(service, pairs)| *service == COUNTER_NONE
                    && pairs.iter().all(|p| *p == COUNTER_NONE))
        );
    }

    #[test]
    fn a_freed_entry_goes_to_the_next_service_zeroed_and_names_follow() {
        let one = fixtures::desired(&[("10.96.0.10", 80, &[1])]);
        let (state, _) = programmed(&DatapathState::default(), &one);
        let other = fixtures::desired(&[("10.96.0.20", 80, &[1])]);
        // The old frontend still names its entries while the new one is
        // written (make-before-break), so the newcomer takes the next.
        let (state, ops) = programmed(&state, &other);
        assert!(ops.contains(&MapOp::ResetCounter {
            counter: super::Counter::Service(COUNTER_FIRST_OWN + 1)
        }));
        assert!(ops.iter().any(|op| matches!(op, MapOp::DeleteName { .. })));
        assert_eq!(state.frontends.len(), 1);
        // Once gone, the lowest entry is free again.
        let third = fixtures::desired(&[("10.96.0.20", 80, &[1]), ("10.96.0.30", 80, &[1])]);
        let (state, ops) = programmed(&state, &third);
        assert!(ops.contains(&MapOp::ResetCounter {
            counter: super::Counter::Service(COUNTER_FIRST_OWN)
        }));
        let names: Vec<&ServicePortName> = state
            .frontends
            .values()
            .filter_map(|f| f.name.as_deref())
            .collect();
        assert_eq!(names.len(), 2);
    }
}
