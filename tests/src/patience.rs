//! How long the tests wait. On the host the limits are the product's own
//! (a change is served within a second); under emulation (`cargo xtask vm`
//! boots other kernels under TCG, several times slower) the same waits are
//! stretched by `SWITCHYARD_TEST_TIME_SCALE`, so a slow CPU does not read as
//! a broken kernel. Only waits and latency bounds scale, never what a test
//! expects to happen.

use std::time::Duration;

const SCALE_VAR: &str = "SWITCHYARD_TEST_TIME_SCALE";
/// More than this is a typo, not a slow machine.
const MAX_SCALE: f64 = 50.0;

/// `limit` times the scale (1 unless the environment says otherwise).
pub fn scaled(limit: Duration) -> Duration {
    limit.mul_f64(scale())
}

fn scale() -> f64 {
    std::env::var(SCALE_VAR)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 1.0)
        .map_or(1.0, |s| s.min(MAX_SCALE))
}
