//! Room in the Maglev map: each Maglev frontend's table takes its size in
//! buckets of one map of fixed capacity. A Service whose tables do not fit
//! keeps being served, picking at random, and is named; as in `capacity`,
//! Services whose tables the map already holds keep their room first, then
//! the rest go in namespace/name order.

use std::fmt;

use switchyard_abi::MAGLEV_MAX_ENTRIES;

use crate::{
    model::{DesiredState, name::NamespacedName},
    plan::datapath_state::DatapathState,
};

/// A Service whose frontends went back to random choice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaglevRefusal {
    pub service: NamespacedName,
    pub needs: usize,
    pub left: usize,
    pub capacity: usize,
}

impl fmt::Display for MaglevRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "its Maglev tables need {} buckets and {} of the map's {} are left \
             (--maglev-table-size): connections pick their backend at random",
            self.needs, self.left, self.capacity
        )
    }
}

/// The Maglev map's capacity in buckets, as compiled.
pub const MAGLEV_BUCKETS: usize = MAGLEV_MAX_ENTRIES as usize;

/// Turns Maglev off for every Service whose tables do not fit `capacity`
/// buckets; one refusal each.
pub fn fit_maglev(
    desired: &mut DesiredState,
    capacity: usize,
    programmed: &DatapathState,
) -> Vec<MaglevRefusal> {
    let mut order: Vec<(bool, NamespacedName, usize)> = desired
        .owners
        .iter()
        .filter_map(|(service, frontends)| {
            let needs: usize = frontends
                .iter()
                .filter_map(|frontend| desired.frontends.get(frontend))
                .map(|want| want.maglev_table_size as usize)
                .sum();
            let held = frontends.iter().any(|frontend| {
                programmed
                    .frontends
                    .get(&frontend.key())
                    .is_some_and(|f| !f.maglev.is_empty())
            });
            (needs > 0).then(|| (!held, service.clone(), needs))
        })
        .collect();
    order.sort();
    let mut used = 0;
    let mut refused = Vec::new();
    for (_, service, needs) in order {
        if used + needs <= capacity {
            used += needs;
            continue;
        }
        for frontend in desired.owners[&service].clone() {
            if let Some(want) = desired.frontends.get_mut(&frontend) {
                want.maglev_table_size = 0;
            }
        }
        refused.push(MaglevRefusal {
            service,
            needs,
            left: capacity - used,
            capacity,
        });
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures;

    fn maglev_catalog(sizes: &[(&str, u32)]) -> DesiredState {
        let mut state = DesiredState::default();
        for (index, (name, size)) in sizes.iter().enumerate() {
            let octet = u8::try_from(index + 1).unwrap();
            let mut one = fixtures::desired(&[(&format!("10.96.0.{octet}"), 80, &[octet])]);
            let (frontend, mut want) = one.frontends.pop_first().unwrap();
            want.maglev_table_size = *size;
            state.frontends.insert(frontend, want);
            state
                .owners
                .insert(NamespacedName::new("default", *name), [frontend].into());
        }
        state
    }

    #[test]
    fn a_service_whose_tables_do_not_fit_picks_at_random_and_is_named() {
        let mut state = maglev_catalog(&[("a", 251), ("b", 509), ("c", 251), ("d", 0)]);
        let refused = fit_maglev(&mut state, 600, &DatapathState::default());
        let sizes: Vec<u32> = state
            .frontends
            .values()
            .map(|f| f.maglev_table_size)
            .collect();
        assert_eq!(sizes, [251, 0, 251, 0]);
        assert_eq!(refused.len(), 1);
        assert_eq!(
            refused[0].to_string(),
            "its Maglev tables need 509 buckets and 349 of the map's 600 are left \
             (--maglev-table-size): connections pick their backend at random"
        );
        assert_eq!(refused[0].service, NamespacedName::new("default", "b"));
    }
}
