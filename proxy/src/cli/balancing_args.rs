//! The flags choosing how connections from outside pick their backend.

use clap::Args;
use switchyard_abi::MAGLEV_DEFAULT_TABLE_SIZE;

use crate::model::balancing::{Algorithm, BadAlgorithm, BadTableSize, Balancing};

#[derive(Debug, Args)]
pub struct BalancingArgs {
    /// How NodePorts, LoadBalancer IPs and externalIPs pick a backend for
    /// a connection from outside: `random` (kube-proxy's) or `maglev`
    /// (consistent hashing: the same backend whichever node a flow enters
    /// by). A Service chooses its own with the annotation
    /// `service.switchyard.io/lb-algorithm`.
    #[arg(long, value_name = "ALGORITHM", default_value = "random")]
    pub lb_algorithm: String,
    /// Buckets of each Maglev table, a prime from 251 to 131071 (Cilium's
    /// ladder); about 100 times a Service's endpoints keeps its backends'
    /// shares within 1%. Each bucket costs about 90 bytes of kernel memory
    /// per frontend.
    #[arg(long, value_name = "PRIME", default_value_t = MAGLEV_DEFAULT_TABLE_SIZE)]
    pub maglev_table_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadBalancing {
    #[error("--lb-algorithm: {source}")]
    Algorithm { source: BadAlgorithm },
    #[error("--maglev-table-size: {source}")]
    TableSize { source: BadTableSize },
}

impl BalancingArgs {
    pub fn balancing(&self) -> Result<Balancing, BadBalancing> {
        let default: Algorithm = self
            .lb_algorithm
            .parse()
            .map_err(|source| BadBalancing::Algorithm { source })?;
        Balancing::new(default, self.maglev_table_size)
            .map_err(|source| BadBalancing::TableSize { source })
    }
}
