//! How a frontend picks the backend of a connection from outside the node:
//! at random, as kube-proxy does, or by Maglev consistent hashing, so that a
//! flow keeps its backend whichever node it enters by (an ECMP rehash, a
//! node added behind the load balancer). Chosen per Service by annotation,
//! with a node default (`--lb-algorithm`); the node's own connections
//! (the socket path) always pick at random.

use std::{fmt, str::FromStr};

use switchyard_abi::{MAGLEV_DEFAULT_TABLE_SIZE, MAGLEV_TABLE_SIZES};

/// The annotation choosing a Service's algorithm; its values are
/// [`Algorithm`]'s names.
pub const ALGORITHM_ANNOTATION: &str = "service.switchyard.io/lb-algorithm";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    #[default]
    Random,
    Maglev,
}

impl Algorithm {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::Maglev => "maglev",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is no algorithm: random or maglev")]
pub struct BadAlgorithm {
    pub text: String,
}

impl FromStr for Algorithm {
    type Err = BadAlgorithm;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "random" => Ok(Self::Random),
            "maglev" => Ok(Self::Maglev),
            other => Err(BadAlgorithm {
                text: other.to_owned(),
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{size} is not one of the table sizes {MAGLEV_TABLE_SIZES:?} (primes)")]
pub struct BadTableSize {
    pub size: u32,
}

/// The node's settings: the algorithm of Services that name none, and the
/// size of every Maglev table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Balancing {
    pub default: Algorithm,
    table_size: u32,
}

impl Default for Balancing {
    fn default() -> Self {
        Self {
            default: Algorithm::Random,
            table_size: MAGLEV_DEFAULT_TABLE_SIZE,
        }
    }
}

impl Balancing {
    pub fn new(default: Algorithm, table_size: u32) -> Result<Self, BadTableSize> {
        if !MAGLEV_TABLE_SIZES.contains(&table_size) {
            return Err(BadTableSize { size: table_size });
        }
        Ok(Self {
            default,
            table_size,
        })
    }

    pub const fn table_size(&self) -> u32 {
        self.table_size
    }

    /// The Maglev table size of an external frontend whose Service asks
    /// for `chosen` (`None`: the node default); 0 picks at random.
    pub fn table_size_for(&self, chosen: Option<Algorithm>) -> u32 {
        match chosen.unwrap_or(self.default) {
            Algorithm::Random => 0,
            Algorithm::Maglev => self.table_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_choice_wins_over_the_node_default() {
        let node = Balancing::new(Algorithm::Maglev, 1_021).unwrap();
        assert_eq!(node.table_size_for(None), 1_021);
        assert_eq!(node.table_size_for(Some(Algorithm::Random)), 0);
        let random = Balancing::default();
        assert_eq!(random.table_size_for(None), 0);
        assert_eq!(
            random.table_size_for(Some(Algorithm::Maglev)),
            MAGLEV_DEFAULT_TABLE_SIZE
        );
    }

    #[test]
    fn only_names_and_prime_sizes_are_taken() {
        assert_eq!("maglev".parse(), Ok(Algorithm::Maglev));
        assert!("Maglev".parse::<Algorithm>().is_err());
        assert_eq!(
            Balancing::new(Algorithm::Random, 1_000),
            Err(BadTableSize { size: 1_000 })
        );
    }
}
