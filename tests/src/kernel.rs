//! What the running kernel changes in what a client sees. Tests ask here,
//! from the agent's own probe, instead of assuming the newest kernel; where
//! a feature is missing a test checks the fallback instead, and says so
//! past the harness's output capture, so that the VM report shows the test
//! as passed without the feature rather than as a plain pass.

use std::io::Write as _;

use switchyard::datapath::feature_probe;
pub use switchyard::datapath::kernel_features::Feature;

/// The line `cargo xtask vm` reads: `SY-VM-FALLBACK <test> <feature>`.
pub const FALLBACK_MARKER: &str = "SY-VM-FALLBACK";

/// Whether the running kernel has `feature`, as the agent probes it.
pub fn has(feature: Feature) -> bool {
    feature_probe::kernel_features().available(feature)
}

/// Whether the running kernel lacks `feature`; if it does, the running
/// test is reported as checking the fallback (once per call).
pub fn lacks(feature: Feature) -> bool {
    let lacking = !has(feature);
    if lacking {
        report_missing(feature.name());
    }
    lacking
}

/// Reports the running test as checking less, or a fallback, because the
/// kernel lacks `what` (a feature's name, or what the harness needs).
pub fn report_missing(what: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("main");
    // Straight to the file descriptor: libtest captures `eprintln!`.
    let _ = writeln!(std::io::stderr(), "{FALLBACK_MARKER} {test} {what}");
}

/// What a client's connect() or send reads when the socket hooks drop it
/// (an unallocated Service CIDR address, a Local-policy Service without a
/// local endpoint): ETIMEDOUT through `bpf_set_retval`, EPERM without it.
pub fn socket_drop() -> &'static str {
    if lacks(Feature::BpfSetRetval) {
        "eperm"
    } else {
        "timeout"
    }
}

/// What an unconnected UDP send to a Service without endpoints reads:
/// ECONNREFUSED through `bpf_set_retval`, EPERM without it (a connect() is
/// refused on every kernel, through loopback port 0).
pub fn unconnected_send_refusal() -> &'static str {
    if lacks(Feature::BpfSetRetval) {
        "eperm"
    } else {
        "refused"
    }
}
