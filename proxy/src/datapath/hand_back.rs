//! `switchyard cleanup`: handing the node back without losing a
//! connection. The socket hooks go first (what they connected is connected
//! to its backend and needs them no more; new connections meet kube-proxy's
//! rules); the per-packet programs stay and drain: every connection they
//! track is still translated, every new one is left to the stack, until
//! none is live or the drain's time is up. Then everything goes.
//!
//! kube-proxy must be serving again before: the migration guide's order.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use switchyard_abi::{CONNTRACK_MAP, FlowTimeouts, NODE_DRAIN};
use tracing::info;

use super::{DatapathError, flow_table::FlowTable, link_pins, pin_lock::PinLock};

/// How often the drain looks at what is left.
const DRAIN_POLL: Duration = Duration::from_secs(1);

/// What the hand-back found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandBack {
    /// Connections still live when the drain ended (0: none was cut).
    pub cut: usize,
    pub drained_for: Duration,
}

/// Drains the per-packet path's connections for at most `longest` (judged
/// live by `timeouts`, the agent's conntrack timeouts), then removes
/// everything (`link_pins::cleanup`).
pub fn hand_back(
    pin_dir: &Path,
    timeouts: &FlowTimeouts,
    longest: Duration,
) -> Result<HandBack, DatapathError> {
    let mut report = HandBack::default();
    if pin_dir.join(CONNTRACK_MAP).exists() {
        let _lock = PinLock::acquire(pin_dir)?;
        let hooks = link_pins::detach_socket_hooks(pin_dir)?;
        info!(hooks, "socket hooks detached");
        if !longest.is_zero() {
            report = drain(pin_dir, timeouts, longest)?;
        }
    }
    link_pins::cleanup(pin_dir)?;
    Ok(report)
}

fn drain(
    pin_dir: &Path,
    timeouts: &FlowTimeouts,
    longest: Duration,
) -> Result<HandBack, DatapathError> {
    let mut flows = FlowTable::open(pin_dir)?;
    flows.add_node_flags(NODE_DRAIN)?;
    let started = Instant::now();
    let mut said = None;
    loop {
        let live = flows.live_connections(timeouts);
        if live == 0 || started.elapsed() >= longest {
            return Ok(HandBack {
                cut: live,
                drained_for: started.elapsed(),
            });
        }
        if said != Some(live) {
            info!(
                live,
                "draining: new connections go to the stack; waiting for these to end"
            );
            said = Some(live);
        }
        std::thread::sleep(DRAIN_POLL);
    }
}
