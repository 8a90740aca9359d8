//! What fits in the maps, decided before anything is written: a Service
//! whose entries would not fit is left out whole, and named (the agent
//! reports each as an input error), instead of thousands of failed writes
//! and a half-programmed Service.
//!
//! Services the maps already serve keep their room; the rest are taken in
//! namespace/name order, so the same catalog always gets the same answer
//! and a new Service can never push out one that works.

use std::{collections::BTreeSet, fmt};

use switchyard_abi::{BACKENDS_MAX_ENTRIES, Backend, SERVICES_MAX_ENTRIES};

use crate::{
    model::{DesiredState, Frontend, name::NamespacedName},
    plan::datapath_state::DatapathState,
};

/// Entries each map was created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapCapacity {
    /// `SY_SERVICES_V2`: a frontend's slot 0 and one slot per backend.
    pub service_entries: usize,
    /// `SY_BACKENDS_V1`: each distinct backend once.
    pub backends: usize,
}

/// The sizes the maps are compiled with.
impl Default for MapCapacity {
    fn default() -> Self {
        Self {
            service_entries: SERVICES_MAX_ENTRIES as usize,
            backends: BACKENDS_MAX_ENTRIES as usize,
        }
    }
}

/// A Service left out, and the room it needed and found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub service: NamespacedName,
    pub needs_entries: usize,
    pub needs_backends: usize,
    pub left_entries: usize,
    pub left_backends: usize,
    pub capacity: MapCapacity,
    /// `Some(budget)` when the Service alone asks for more than one
    /// Service may take, whatever room is left.
    pub over_budget: Option<usize>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(budget) = self.over_budget {
            return write!(
                f,
                "needs {} service map entries (ports x frontends x (1 + endpoints)), more than \
                 the {budget} one Service may take (--service-entry-budget): not programmed",
                self.needs_entries,
            );
        }
        write!(
            f,
            "needs {} service map entries and {} new backends; {} and {} are left of \
             {} and {} (--service-map-entries, --backend-map-entries): not programmed",
            self.needs_entries,
            self.needs_backends,
            self.left_entries,
            self.left_backends,
            self.capacity.service_entries,
            self.capacity.backends,
        )
    }
}

/// Leaves out of `desired` every Service that does not fit `capacity`, or
/// alone needs more than `budget` service map entries (so that one
/// Service cannot fill the node's maps); returns one refusal per Service
/// left out.
pub fn fit(
    desired: &mut DesiredState,
    capacity: MapCapacity,
    budget: usize,
    programmed: &DatapathState,
) -> Vec<Refusal> {
    let mut order: Vec<(bool, NamespacedName)> = desired
        .owners
        .iter()
        .map(|(service, frontends)| {
            let served = frontends
                .iter()
                .any(|frontend| programmed.frontends.contains_key(&frontend.key()));
            (!served, service.clone())
        })
        .collect();
    order.sort();
    let mut entries = 0;
    let mut backends: BTreeSet<Backend> = BTreeSet::new();
    let mut refused = Vec::new();
    for (_, service) in order {
        let frontends = &desired.owners[&service];
        let needs_entries = entries_of(desired, &service);
        let new_backends: BTreeSet<Backend> = frontends
            .iter()
            .filter_map(|frontend| desired.frontends.get(frontend))
            .flat_map(|spec| spec.backends.iter().map(Backend::from))
            .filter(|backend| !backends.contains(backend))
            .collect();
        let over_budget = (needs_entries > budget).then_some(budget);
        if over_budget.is_none()
            && entries + needs_entries <= capacity.service_entries
            && backends.len() + new_backends.len() <= capacity.backends
        {
            entries += needs_entries;
            backends.extend(new_backends);
            continue;
        }
        refused.push(Refusal {
            service: service.clone(),
            needs_entries,
            needs_backends: new_backends.len(),
            left_entries: capacity.service_entries - entries,
            left_backends: capacity.backends - backends.len(),
            capacity,
            over_budget,
        });
        leave_out(desired, &service);
    }
    refused
}

/// The service map entries `service` takes: a slot 0 per frontend and one
/// slot per backend of each.
pub fn entries_of(desired: &DesiredState, service: &NamespacedName) -> usize {
    desired
        .owners
        .get(service)
        .into_iter()
        .flatten()
        .filter_map(|frontend| desired.frontends.get(frontend))
        .map(|spec| 1 + spec.backends.len())
        .sum()
}

fn leave_out(desired: &mut DesiredState, service: &NamespacedName) {
    let Some(frontends) = desired.owners.remove(service) else {
        return;
    };
    for frontend in &frontends {
        desired.frontends.remove(frontend);
    }
    desired
        .health_checks
        .retain(|_, check| check.namespace != service.namespace || check.name != service.name);
    // A refused Service counts for nothing else either.
    let gone = |frontend: &Frontend| frontends.contains(frontend);
    desired.contested.retain(|frontend| !gone(frontend));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DesiredFrontend, Endpoint, Protocol, Scope};

    /// Service `name` on ClusterIP 10.96.0.`x` port 80, with endpoints
    /// 10.244.0.`e` on 8080 for each `e` in `endpoints`.
    fn catalog(services: &[(&str, u8, &[u8])]) -> DesiredState {
        let mut state = DesiredState::default();
        for &(name, x, endpoints) in services {
            let frontend = Frontend {
                ip: format!("10.96.0.{x}").parse().unwrap(),
                port: 80,
                protocol: Protocol::Tcp,
                scope: Scope::Internal,
            };
            let backends = endpoints
                .iter()
                .map(|e| Endpoint {
                    ip: format!("10.244.0.{e}").parse().unwrap(),
                    port: 8080,
                    protocol: Protocol::Tcp,
                    local: false,
                })
                .collect();
            state.frontends.insert(
                frontend,
                DesiredFrontend {
                    backends,
                    ..DesiredFrontend::default()
                },
            );
            state.owners.insert(
                NamespacedName::new("default", name),
                BTreeSet::from([frontend]),
            );
        }
        state
    }

    fn served(state: &DesiredState) -> Vec<String> {
        state.owners.keys().map(|s| s.name.clone()).collect()
    }

    #[test]
    fn what_fits_is_kept_in_name_order_and_the_rest_named() {
        let mut state = catalog(&[("a", 1, &[1, 2]), ("b", 2, &[3, 4]), ("c", 3, &[5])]);
        let capacity = MapCapacity {
            service_entries: 6,
            backends: 100,
        };
        let refused = fit(&mut state, capacity, usize::MAX, &DatapathState::default());
        // a: 3 entries, b: 3 entries, c: 2 more would make 8.
        assert_eq!(served(&state), ["a", "b"]);
        assert_eq!(state.frontends.len(), 2);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].service.name, "c");
        assert_eq!((refused[0].needs_entries, refused[0].left_entries), (2, 0));
        assert!(refused[0].to_string().contains("not programmed"));
    }

    #[test]
    fn backends_are_counted_once_and_limit_too() {
        // b shares endpoint 2 with a: only 3 is new, and 4 is one too many.
        let mut state = catalog(&[("a", 1, &[1, 2]), ("b", 2, &[2, 3])]);
        let two = MapCapacity {
            service_entries: 100,
            backends: 2,
        };
        let refused = fit(
            &mut state.clone(),
            two,
            usize::MAX,
            &DatapathState::default(),
        );
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].needs_backends, 1);
        let three = MapCapacity {
            service_entries: 100,
            backends: 3,
        };
        assert!(fit(&mut state, three, usize::MAX, &DatapathState::default()).is_empty());
    }

    #[test]
    fn a_served_service_keeps_its_room_before_a_new_one() {
        let mut state = catalog(&[("a", 1, &[1, 2]), ("z", 2, &[3, 4])]);
        // z is in the maps already (a previous pass, before a was created).
        let mut programmed = DatapathState::default();
        for frontend in &state.owners[&NamespacedName::new("default", "z")] {
            programmed.frontends.insert(
                frontend.key(),
                crate::plan::datapath_state::ProgrammedFrontend::default(),
            );
        }
        let capacity = MapCapacity {
            service_entries: 3,
            backends: 100,
        };
        fit(&mut state, capacity, usize::MAX, &programmed);
        assert_eq!(served(&state), ["z"]);
    }

    #[test]
    fn one_service_over_the_budget_is_refused_whatever_room_is_left() {
        let mut state = catalog(&[("a", 1, &[1, 2]), ("big", 2, &[3, 4, 5, 6])]);
        let refused = fit(
            &mut state,
            MapCapacity::default(),
            4,
            &DatapathState::default(),
        );
        assert_eq!(served(&state), ["a"]);
        assert_eq!(refused.len(), 1);
        assert_eq!(
            refused[0].to_string(),
            "needs 5 service map entries (ports x frontends x (1 + endpoints)), more than the 4 \
             one Service may take (--service-entry-budget): not programmed"
        );
    }

    #[test]
    fn everything_fits_changes_nothing() {
        let mut state = catalog(&[("a", 1, &[1, 2]), ("b", 2, &[3, 4])]);
        let before = state.clone();
        let capacity = MapCapacity {
            service_entries: 6,
            backends: 4,
        };
        assert!(fit(&mut state, capacity, usize::MAX, &DatapathState::default()).is_empty());
        assert_eq!(state, before);
    }
}
