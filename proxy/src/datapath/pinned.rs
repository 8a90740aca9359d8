//! Typed access to the pinned maps: the agent writes through it, and
//! `switchyard services` reads through it, so what is shown is what the
//! kernel holds.

use std::path::Path;

use aya::maps::{HashMap, LpmTrie, Map, MapData, MapError, lpm_trie::Key};
use switchyard_abi::{
    Addr, BACKENDS_MAP, Backend, CLUSTER_IPS_MAP, SERVICE_CIDRS_MAP, SERVICES_MAP,
    SOURCE_RANGES_MAP, ServiceKey, ServiceValue, SourceRange,
};

use super::{DatapathError, MapReader, MapWriter, flow_table::cidr_key};
use crate::{
    model::address::Cidr,
    plan::{
        datapath_state::DatapathState,
        map_op::{MapOp, RangeKey, ServiceAddress},
    },
};

pub struct PinnedMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    source_ranges: LpmTrie<MapData, SourceRange, u8>,
    cluster_ips: HashMap<MapData, Addr, u8>,
    service_cidrs: LpmTrie<MapData, Addr, u8>,
}

impl PinnedMaps {
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        Ok(Self {
            services: open_pinned(pin_dir, SERVICES_MAP)?,
            backends: open_pinned(pin_dir, BACKENDS_MAP)?,
            source_ranges: open_pinned(pin_dir, SOURCE_RANGES_MAP)?,
            cluster_ips: open_pinned(pin_dir, CLUSTER_IPS_MAP)?,
            service_cidrs: open_pinned(pin_dir, SERVICE_CIDRS_MAP)?,
        })
    }

    fn put_address(&mut self, address: &ServiceAddress) -> Result<(), DatapathError> {
        match address {
            ServiceAddress::ClusterIp(ip) => self
                .cluster_ips
                .insert(Addr::from(*ip), 1, 0)
                .map_err(|source| DatapathError::map(CLUSTER_IPS_MAP, source)),
            ServiceAddress::Cidr(cidr) => self
                .service_cidrs
                .insert(&cidr_key(cidr), 1, 0)
                .map_err(|source| DatapathError::map(SERVICE_CIDRS_MAP, source)),
        }
    }

    fn delete_address(&mut self, address: &ServiceAddress) -> Result<(), DatapathError> {
        match address {
            ServiceAddress::ClusterIp(ip) => {
                ignore_missing(self.cluster_ips.remove(&Addr::from(*ip)))
                    .map_err(|source| DatapathError::map(CLUSTER_IPS_MAP, source))
            }
            ServiceAddress::Cidr(cidr) => {
                ignore_missing(self.service_cidrs.remove(&cidr_key(cidr)))
                    .map_err(|source| DatapathError::map(SERVICE_CIDRS_MAP, source))
            }
        }
    }

    fn read_addresses(&self) -> impl Iterator<Item = ServiceAddress> + '_ {
        let cluster_ips = self
            .cluster_ips
            .keys()
            .filter_map(Result::ok)
            .map(|addr| ServiceAddress::ClusterIp(addr.into()));
        let cidrs = self.service_cidrs.keys().filter_map(Result::ok).map(|key| {
            let network = std::net::IpAddr::from(key.data());
            let family_bits = if network.is_ipv4() { 96 } else { 0 };
            ServiceAddress::Cidr(Cidr {
                network,
                prefix_len: u8::try_from(key.prefix_len().saturating_sub(family_bits))
                    .unwrap_or(u8::MAX),
            })
        });
        cluster_ips.chain(cidrs)
    }
}

/// A pinned map as its typed view (`HashMap`, `LpmTrie`, ...).
pub(crate) fn open_pinned<T>(pin_dir: &Path, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = pin_dir.join(name);
    if !path.exists() {
        return Err(DatapathError::NotPinned {
            path: pin_dir.to_path_buf(),
        });
    }
    let data = MapData::from_pin(&path).map_err(|source| DatapathError::map(name, source))?;
    let map = Map::from_map_data(data).map_err(|source| DatapathError::map(name, source))?;
    T::try_from(map).map_err(|source| DatapathError::map(name, source))
}

/// Deleting what is already gone is success: the sync is level-triggered and
/// may retry an operation that half-succeeded before.
fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::SyscallError(err)) if err.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        other => other,
    }
}

impl MapWriter for PinnedMaps {
    fn apply(&mut self, op: &MapOp) -> Result<(), DatapathError> {
        let services = |result| DatapathError::map(SERVICES_MAP, result);
        let backends = |result| DatapathError::map(BACKENDS_MAP, result);
        let ranges = |result| DatapathError::map(SOURCE_RANGES_MAP, result);
        match op {
            MapOp::PutBackend { id, backend } => {
                self.backends.insert(id, backend, 0).map_err(backends)
            }
            MapOp::PutSlot { key, backend_id } => self
                .services
                .insert(key, ServiceValue::slot(*backend_id), 0)
                .map_err(services),
            MapOp::PutFrontend {
                key,
                count,
                flags,
                affinity_timeout,
            } => self
                .services
                .insert(
                    key,
                    ServiceValue::frontend(*count, *flags, *affinity_timeout),
                    0,
                )
                .map_err(services),
            MapOp::PutSourceRange { range } => self
                .source_ranges
                .insert(&Key::new(range.prefix_len, range.range), 1, 0)
                .map_err(ranges),
            MapOp::DeleteSourceRange { range } => ignore_missing(
                self.source_ranges
                    .remove(&Key::new(range.prefix_len, range.range)),
            )
            .map_err(ranges),
            MapOp::DeleteSlot { key } | MapOp::DeleteFrontend { key } => {
                ignore_missing(self.services.remove(key)).map_err(services)
            }
            MapOp::DeleteBackend { id } => {
                ignore_missing(self.backends.remove(id)).map_err(backends)
            }
            MapOp::PutServiceAddress { address } => self.put_address(address),
            MapOp::DeleteServiceAddress { address } => self.delete_address(address),
        }
    }
}

impl MapReader for PinnedMaps {
    fn read_state(&self) -> Result<DatapathState, DatapathError> {
        // An entry deleted while we iterate is simply not seen; the next
        // sync works from whatever this read returns.
        let services: Vec<(ServiceKey, ServiceValue)> =
            self.services.iter().filter_map(Result::ok).collect();
        let backends: Vec<(u32, Backend)> = self.backends.iter().filter_map(Result::ok).collect();
        let ranges: Vec<RangeKey> = self
            .source_ranges
            .keys()
            .filter_map(Result::ok)
            .map(|key| RangeKey {
                prefix_len: key.prefix_len(),
                range: key.data(),
            })
            .collect();
        let mut state = DatapathState::from_entries(services, backends, ranges);
        state.service_addresses = self.read_addresses().collect();
        Ok(state)
    }
}
