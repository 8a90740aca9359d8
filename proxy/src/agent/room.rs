//! What does not fit the maps, as the input errors the agent reports: a
//! Service left out whole (service and backend maps), or one whose Maglev
//! tables went back to random choice (the Maglev map).

use crate::{
    convert::input_error::{InputError, ObjectRef, Reason},
    model::{DesiredState, balancing::ALGORITHM_ANNOTATION, name::NamespacedName},
    plan::{
        capacity::{MapCapacity, fit},
        datapath_state::DatapathState,
        maglev_room::{MAGLEV_BUCKETS, fit_maglev},
    },
};

/// Fits `desired` to the maps and names every Service it had to change.
pub fn refusals(
    desired: &mut DesiredState,
    capacity: MapCapacity,
    budget: usize,
    programmed: &DatapathState,
) -> Vec<InputError> {
    let service = |name: &NamespacedName| ObjectRef::new("Service", &name.namespace, &name.name);
    let left_out = fit(desired, capacity, budget, programmed)
        .into_iter()
        .map(|refusal| {
            let reason = if refusal.over_budget.is_some() {
                Reason::OverBudget
            } else {
                Reason::NoRoom
            };
            InputError::field(
                &service(&refusal.service),
                "spec",
                reason,
                refusal.to_string(),
            )
        });
    let random = fit_maglev(desired, MAGLEV_BUCKETS, programmed)
        .into_iter()
        .map(|refusal| {
            InputError::field(
                &service(&refusal.service),
                format!("metadata.annotations[{ALGORITHM_ANNOTATION}]"),
                Reason::NoRoom,
                refusal.to_string(),
            )
        });
    left_out.chain(random).collect()
}
