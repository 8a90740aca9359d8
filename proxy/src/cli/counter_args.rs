//! The flags that bound per-Service traffic counters.

use clap::Args;
use switchyard_abi::{BACKEND_STATS_SERIES, SERVICE_STATS_SERIES};

use crate::model::counter_policy::{BadCounterSelector, CounterPolicy, CounterSelector};

#[derive(Debug, Args)]
pub struct CounterArgs {
    /// Count connections, packets, bytes, refusals and drops per Service
    /// port and per backend in the kernel (one per-CPU add per connection
    /// or packet). Off, the kernel counts nothing per Service.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub service_counters: bool,
    /// Which Services get series of their own: `*`, namespaces, or
    /// namespace/name; the others are summed in one overflow series
    /// (service="_other").
    #[arg(
        long,
        value_name = "SELECTOR",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub service_counters_for: Vec<String>,
    /// Service ports with series of their own, at most; past it the rest
    /// overflow. The kernel map holds this many.
    #[arg(long, value_name = "N", default_value_t = SERVICE_STATS_SERIES, value_parser = clap::value_parser!(u32).range(0..=i64::from(SERVICE_STATS_SERIES)))]
    pub service_counter_series: u32,
    /// (Service port, backend) pairs with series of their own, at most.
    #[arg(long, value_name = "N", default_value_t = BACKEND_STATS_SERIES, value_parser = clap::value_parser!(u32).range(0..=i64::from(BACKEND_STATS_SERIES)))]
    pub backend_counter_series: u32,
}

impl CounterArgs {
    /// The policy the flags ask for, or the selector that is no selector.
    pub fn policy(&self) -> Result<CounterPolicy, BadCounterSelector> {
        Ok(CounterPolicy {
            enabled: self.service_counters,
            selectors: self
                .service_counters_for
                .iter()
                .map(|text| text.trim().parse())
                .collect::<Result<Vec<CounterSelector>, _>>()?,
            service_series: self.service_counter_series,
            backend_series: self.backend_counter_series,
        })
    }
}
