//! What each counter entry in use counts for, from the mirror of the
//! maps: the labels its series carry on `/metrics`.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use switchyard_abi::COUNTER_OVERFLOW;

use crate::{
    model::ServicePortName,
    plan::{counter_refs::is_own, datapath_state::DatapathState, map_op::Counter},
};

/// One (Service port, backend) pair's entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairLabel {
    pub service: ServicePortName,
    pub backend: SocketAddr,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterLabels {
    /// Own Service port entries.
    pub services: BTreeMap<u32, ServicePortName>,
    /// Own pair entries.
    pub pairs: BTreeMap<u32, PairLabel>,
    /// Whether any frontend counts in the overflow entries.
    pub overflow: bool,
}

impl CounterLabels {
    pub fn of(state: &DatapathState) -> Self {
        let mut labels = Self::default();
        for frontend in state.frontends.values() {
            let Some(name) = frontend.name.as_deref() else {
                continue;
            };
            if frontend.count.is_none() {
                continue;
            }
            labels.overflow |= frontend.counter == COUNTER_OVERFLOW;
            if !is_own(Counter::Service(frontend.counter)) {
                continue;
            }
            labels
                .services
                .entry(frontend.counter)
                .or_insert_with(|| name.clone());
            for slot in frontend.slots.values() {
                let pair = slot.counter;
                labels.overflow |= pair == COUNTER_OVERFLOW;
                let backend = state.backends.get(&slot.backend_id);
                if let (true, Some(backend)) = (is_own(Counter::Backend(pair)), backend) {
                    labels.pairs.entry(pair).or_insert_with(|| PairLabel {
                        service: name.clone(),
                        backend: SocketAddr::new(
                            IpAddr::from(backend.addr),
                            u16::from_be(backend.port),
                        ),
                    });
                }
            }
        }
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::fixtures, plan::plan};

    #[test]
    fn each_own_entry_is_labelled_once() {
        let desired = fixtures::desired(&[("10.96.0.10", 80, &[1, 2]), ("10.96.0.11", 80, &[2])]);
        let mut state = DatapathState::default();
        for op in plan(&DatapathState::default(), &desired) {
            state.apply(&op);
        }
        let labels = CounterLabels::of(&state);
        assert_eq!(labels.services.len(), 2);
        assert_eq!(labels.pairs.len(), 3);
        assert!(!labels.overflow);
        let backends: Vec<String> = labels
            .pairs
            .values()
            .map(|pair| {
                format!(
                    "{}/{} {}",
                    pair.service.namespace, pair.service.name, pair.backend
                )
            })
            .collect();
        assert_eq!(
            backends,
            [
                "default/svc-10-96-0-10-80 10.244.0.1:8080",
                "default/svc-10-96-0-10-80 10.244.0.2:8080",
                "default/svc-10-96-0-11-80 10.244.0.2:8080",
            ]
        );
    }
}
