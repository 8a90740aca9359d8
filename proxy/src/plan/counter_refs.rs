//! Which counter entries are taken, and by how many map entries: the
//! frontends naming each Service port entry, the slots naming each pair
//! entry. A plan hands out the lowest entries nobody names, as it does
//! backend ids, so no allocator state lives outside the maps.

use std::collections::HashMap;

use switchyard_abi::COUNTER_FIRST_OWN;

use crate::plan::map_op::Counter;

#[derive(Clone, Debug, Default)]
pub struct CounterRefs {
    refs: HashMap<Counter, u32>,
}

impl CounterRefs {
    /// One more map entry names `counter` (shared entries are not tracked).
    pub fn add(&mut self, counter: Counter) {
        if is_own(counter) {
            *self.refs.entry(counter).or_default() += 1;
        }
    }

    pub fn remove(&mut self, counter: Counter) {
        if let Some(refs) = self.refs.get_mut(&counter) {
            *refs -= 1;
            if *refs == 0 {
                self.refs.remove(&counter);
            }
        }
    }

    pub fn in_use(&self, counter: Counter) -> bool {
        self.refs.contains_key(&counter)
    }
}

/// An entry one Service port or pair has to itself.
pub fn is_own(counter: Counter) -> bool {
    let (Counter::Service(index) | Counter::Backend(index)) = counter;
    index >= COUNTER_FIRST_OWN
}
