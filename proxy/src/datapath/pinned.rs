//! Typed access to the pinned maps: the agent writes through it, and
//! `switchyard services` reads through it, so what is shown is what the
//! kernel holds.

use std::{os::fd::AsFd, path::Path};

use aya::{
    maps::{HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::Key},
    sys::SyscallError,
};
use switchyard_abi::{
    Addr, BACKEND_STATS_MAP, BACKENDS_MAP, Backend, BackendCounts, CLUSTER_IPS_MAP, MAGLEV_MAP,
    MaglevKey, SERVICE_CIDRS_MAP, SERVICE_NAMES_MAP, SERVICE_STATS_MAP, SERVICES_MAP,
    SOURCE_RANGES_MAP, ServiceCounts, ServiceKey, ServiceName, ServiceValue, SourceRange,
};

use super::{
    DatapathError, MapReader, MapWriter, Stopped,
    batch::{self, BatchStopped},
    flow_table::cidr_key,
};
use crate::{
    model::{ServicePortName, address::Cidr},
    plan::{
        datapath_state::DatapathState,
        drift::{Drift, DriftCount},
        map_op::{Counter, MapOp, RangeKey, ServiceAddress},
    },
};

pub struct PinnedMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    source_ranges: LpmTrie<MapData, SourceRange, u8>,
    cluster_ips: HashMap<MapData, Addr, u8>,
    service_cidrs: LpmTrie<MapData, Addr, u8>,
    names: HashMap<MapData, ServiceKey, ServiceName>,
    maglev: HashMap<MapData, MaglevKey, u32>,
    service_stats: PerCpuArray<MapData, ServiceCounts>,
    backend_stats: PerCpuArray<MapData, BackendCounts>,
    /// The same maps again, for batched updates (aya's typed views do not
    /// lend their fds).
    batch_fds: BatchFds,
    /// Cleared when the kernel refuses batched updates: single ones then.
    batching: bool,
}

struct BatchFds {
    services: MapData,
    backends: MapData,
    cluster_ips: MapData,
    names: MapData,
    maglev: MapData,
}

/// A run of operations one batched update can write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Run {
    Backends,
    Services,
    ClusterIps,
    Names,
    Maglev,
}

impl Run {
    fn of(op: &MapOp) -> Option<Self> {
        match op {
            MapOp::PutBackend { .. } => Some(Self::Backends),
            MapOp::PutSlot { .. } | MapOp::PutFrontend { .. } => Some(Self::Services),
            MapOp::PutServiceAddress {
                address: ServiceAddress::ClusterIp(_),
            } => Some(Self::ClusterIps),
            MapOp::PutName { .. } => Some(Self::Names),
            MapOp::PutMaglevBucket { .. } => Some(Self::Maglev),
            _ => None,
        }
    }
}

impl PinnedMaps {
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let data = |name: &'static str| {
            MapData::from_pin(pin_dir.join(name)).map_err(|source| DatapathError::map(name, source))
        };
        Ok(Self {
            services: open_pinned(pin_dir, SERVICES_MAP)?,
            backends: open_pinned(pin_dir, BACKENDS_MAP)?,
            source_ranges: open_pinned(pin_dir, SOURCE_RANGES_MAP)?,
            cluster_ips: open_pinned(pin_dir, CLUSTER_IPS_MAP)?,
            service_cidrs: open_pinned(pin_dir, SERVICE_CIDRS_MAP)?,
            names: open_pinned(pin_dir, SERVICE_NAMES_MAP)?,
            maglev: open_pinned(pin_dir, MAGLEV_MAP)?,
            service_stats: open_pinned(pin_dir, SERVICE_STATS_MAP)?,
            backend_stats: open_pinned(pin_dir, BACKEND_STATS_MAP)?,
            batch_fds: BatchFds {
                services: data(SERVICES_MAP)?,
                backends: data(BACKENDS_MAP)?,
                cluster_ips: data(CLUSTER_IPS_MAP)?,
                names: data(SERVICE_NAMES_MAP)?,
                maglev: data(MAGLEV_MAP)?,
            },
            batching: true,
        })
    }

    /// Writes a run of operations of one kind with batched updates.
    fn write_run(&self, run: Run, ops: &[MapOp]) -> Result<(), BatchStopped> {
        match run {
            Run::Backends => {
                let (ids, backends): (Vec<u32>, Vec<Backend>) = ops
                    .iter()
                    .filter_map(|op| match op {
                        MapOp::PutBackend { id, backend } => Some((*id, *backend)),
                        _ => None,
                    })
                    .unzip();
                batch::update(self.batch_fds.backends.fd().as_fd(), &ids, &backends)
            }
            Run::Services => {
                let (keys, values): (Vec<ServiceKey>, Vec<ServiceValue>) =
                    ops.iter().filter_map(service_entry).unzip();
                batch::update(self.batch_fds.services.fd().as_fd(), &keys, &values)
            }
            Run::ClusterIps => {
                let addrs: Vec<Addr> = ops
                    .iter()
                    .filter_map(|op| match op {
                        MapOp::PutServiceAddress {
                            address: ServiceAddress::ClusterIp(ip),
                        } => Some(Addr::from(*ip)),
                        _ => None,
                    })
                    .collect();
                let ones = vec![1u8; addrs.len()];
                batch::update(self.batch_fds.cluster_ips.fd().as_fd(), &addrs, &ones)
            }
            Run::Names => {
                let (keys, names): (Vec<ServiceKey>, Vec<ServiceName>) = ops
                    .iter()
                    .filter_map(|op| match op {
                        MapOp::PutName { key, name } => Some((*key, name_entry(name))),
                        _ => None,
                    })
                    .unzip();
                batch::update(self.batch_fds.names.fd().as_fd(), &keys, &names)
            }
            Run::Maglev => {
                let (keys, slots): (Vec<MaglevKey>, Vec<u32>) = ops
                    .iter()
                    .filter_map(|op| match op {
                        MapOp::PutMaglevBucket { key, slot } => Some((*key, u32::from(*slot))),
                        _ => None,
                    })
                    .unzip();
                batch::update(self.batch_fds.maglev.fd().as_fd(), &keys, &slots)
            }
        }
    }

    /// Every Maglev bucket.
    fn read_maglev(&self) -> Vec<(MaglevKey, u32)> {
        read_batched(&self.batch_fds.maglev, || {
            self.maglev.iter().filter_map(Result::ok).collect()
        })
    }

    /// Zeroes every CPU's copy of a counter entry.
    fn reset(&mut self, counter: Counter) -> Result<(), DatapathError> {
        match counter {
            Counter::Service(index) => per_cpu_zeros()
                .and_then(|zeros| self.service_stats.set(index, zeros, 0))
                .map_err(|source| DatapathError::map(SERVICE_STATS_MAP, source)),
            Counter::Backend(index) => per_cpu_zeros()
                .and_then(|zeros| self.backend_stats.set(index, zeros, 0))
                .map_err(|source| DatapathError::map(BACKEND_STATS_MAP, source)),
        }
    }

    /// Every frontend's Service port name.
    fn read_names(&self) -> Vec<(ServiceKey, ServicePortName)> {
        read_batched(&self.batch_fds.names, || {
            self.names.iter().filter_map(Result::ok).collect()
        })
        .into_iter()
        .map(|(key, name): (ServiceKey, ServiceName)| (key, port_name(&name)))
        .collect()
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

    fn read_ranges(&self) -> impl Iterator<Item = RangeKey> + '_ {
        self.source_ranges
            .keys()
            .filter_map(Result::ok)
            .map(|key| RangeKey {
                prefix_len: key.prefix_len(),
                range: key.data(),
            })
    }

    /// Allocated ClusterIPs (one per Service: read in batches) and service
    /// CIDRs.
    fn read_addresses(&self) -> std::collections::BTreeSet<ServiceAddress> {
        let cluster_ips = read_batched(&self.batch_fds.cluster_ips, || {
            self.cluster_ips.iter().filter_map(Result::ok).collect()
        });
        let cidrs = self.service_cidrs.keys().filter_map(Result::ok).map(|key| {
            let network = std::net::IpAddr::from(key.data());
            let family_bits = if network.is_ipv4() { 96 } else { 0 };
            ServiceAddress::Cidr(Cidr {
                network,
                prefix_len: u8::try_from(key.prefix_len().saturating_sub(family_bits))
                    .unwrap_or(u8::MAX),
            })
        });
        cluster_ips
            .into_iter()
            .map(|(addr, _): (Addr, u8)| ServiceAddress::ClusterIp(addr.into()))
            .chain(cidrs)
            .collect()
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

/// The service-map entry a slot or frontend operation writes.
fn service_entry(op: &MapOp) -> Option<(ServiceKey, ServiceValue)> {
    match op {
        MapOp::PutSlot {
            key,
            backend_id,
            counter,
        } => Some((*key, ServiceValue::slot(*backend_id, *counter))),
        MapOp::PutFrontend {
            key,
            count,
            flags,
            affinity_timeout,
            counter,
            maglev_table_size,
        } => Some((
            *key,
            ServiceValue::frontend(*count, *flags, *affinity_timeout, *counter)
                .with_maglev(*maglev_table_size),
        )),
        _ => None,
    }
}

/// A zero for each possible CPU, as a per-CPU map takes a value.
fn per_cpu_zeros<T: aya::Pod + Default>() -> Result<PerCpuValues<T>, MapError> {
    let syscall = |call, io_error| MapError::SyscallError(SyscallError { call, io_error });
    let cpus = aya::util::nr_cpus().map_err(|(_, error)| syscall("nr_cpus", error))?;
    PerCpuValues::try_from(vec![T::default(); cpus])
        .map_err(|error| syscall("per-cpu value", error))
}

pub fn name_entry(name: &ServicePortName) -> ServiceName {
    ServiceName::new(&name.namespace, &name.name, &name.port)
}

pub fn port_name(name: &ServiceName) -> ServicePortName {
    let (namespace, name, port) = name.parts();
    ServicePortName {
        namespace,
        name,
        port,
    }
}

impl MapWriter for PinnedMaps {
    /// Runs of puts into one hash map go in batched updates; everything
    /// else, and every kernel without them, one at a time.
    fn apply_all(&mut self, ops: &[MapOp]) -> Result<(), Stopped> {
        let mut start = 0;
        while start < ops.len() {
            let run = Run::of(&ops[start]).filter(|_| self.batching);
            let Some(run) = run else {
                self.apply(&ops[start]).map_err(|error| Stopped {
                    applied: start,
                    error,
                })?;
                start += 1;
                continue;
            };
            let len = ops[start..]
                .iter()
                .take_while(|op| Run::of(op) == Some(run))
                .count();
            match self.write_run(run, &ops[start..start + len]) {
                Ok(()) => start += len,
                Err(stopped) if stopped.unsupported() => self.batching = false,
                Err(BatchStopped { applied, error }) => {
                    let source = MapError::SyscallError(SyscallError {
                        call: "bpf_map_update_batch",
                        io_error: error,
                    });
                    return Err(Stopped {
                        applied: start + applied,
                        // Every operation of a run writes the same map.
                        error: DatapathError::map(ops[start].map(), source),
                    });
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: &MapOp) -> Result<(), DatapathError> {
        let services = |result| DatapathError::map(SERVICES_MAP, result);
        let backends = |result| DatapathError::map(BACKENDS_MAP, result);
        let ranges = |result| DatapathError::map(SOURCE_RANGES_MAP, result);
        match op {
            MapOp::PutBackend { id, backend } => {
                self.backends.insert(id, backend, 0).map_err(backends)
            }
            MapOp::PutSlot { .. } | MapOp::PutFrontend { .. } => match service_entry(op) {
                Some((key, value)) => self.services.insert(key, value, 0).map_err(services),
                None => Ok(()),
            },
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
            MapOp::PutName { key, name } => self
                .names
                .insert(key, name_entry(name), 0)
                .map_err(|source| DatapathError::map(SERVICE_NAMES_MAP, source)),
            MapOp::DeleteName { key } => ignore_missing(self.names.remove(key))
                .map_err(|source| DatapathError::map(SERVICE_NAMES_MAP, source)),
            MapOp::ResetCounter { counter } => self.reset(*counter),
            MapOp::PutMaglevBucket { key, slot } => self
                .maglev
                .insert(key, u32::from(*slot), 0)
                .map_err(|source| DatapathError::map(MAGLEV_MAP, source)),
            MapOp::DeleteMaglevBucket { key } => ignore_missing(self.maglev.remove(key))
                .map_err(|source| DatapathError::map(MAGLEV_MAP, source)),
        }
    }
}

impl MapReader for PinnedMaps {
    fn read_state(&self) -> Result<DatapathState, DatapathError> {
        // An entry deleted while we read is simply not seen; the next
        // sync works from whatever this read returns. In batches: the
        // agent reads the maps back every sync period (drift), and at 50k
        // Services one entry at a time would cost a million syscalls.
        let services = read_batched(&self.batch_fds.services, || {
            self.services.iter().filter_map(Result::ok).collect()
        });
        let backends = read_batched(&self.batch_fds.backends, || {
            self.backends.iter().filter_map(Result::ok).collect()
        });
        let mut state =
            DatapathState::from_entries(services, backends, self.read_ranges(), self.read_names())
                .with_maglev(self.read_maglev());
        state.service_addresses = self.read_addresses();
        Ok(state)
    }

    /// Counts as the big maps are read, in batches: no second copy of the
    /// state is built (the read-back runs every sync period).
    fn drift_against(&self, mirror: &DatapathState) -> Result<Drift, DatapathError> {
        let mut count = DriftCount::new(mirror);
        let services = batch::read_all_typed(
            self.batch_fds.services.fd().as_fd(),
            |keys: &[ServiceKey], values: &[ServiceValue]| {
                for (key, value) in keys.iter().zip(values) {
                    count.service_entry(key, value);
                }
            },
        );
        let backends = services.and_then(|()| {
            batch::read_all_typed(
                self.batch_fds.backends.fd().as_fd(),
                |ids: &[u32], backends: &[Backend]| {
                    for (id, backend) in ids.iter().zip(backends) {
                        count.backend(*id, backend);
                    }
                },
            )
        });
        let buckets = backends.and_then(|()| {
            batch::read_all_typed(
                self.batch_fds.maglev.fd().as_fd(),
                |keys: &[MaglevKey], slots: &[u32]| {
                    for (key, slot) in keys.iter().zip(slots) {
                        count.maglev_bucket(key, *slot);
                    }
                },
            )
        });
        if buckets.is_err() {
            // No batched lookups here, or a batch failed part way: the
            // slow, complete way.
            return Ok(Drift::between(mirror, &self.read_state()?));
        }
        Ok(count.finish(&self.read_ranges().collect(), &self.read_addresses()))
    }
}

/// Every entry of a hash map in batches, or by `one_by_one` where the
/// kernel has no batched lookups or a batch fails part way.
fn read_batched<K: Copy + Default, V: Copy + Default>(
    map: &MapData,
    one_by_one: impl FnOnce() -> Vec<(K, V)>,
) -> Vec<(K, V)> {
    let mut entries = Vec::new();
    let read = batch::read_all_typed(map.fd().as_fd(), |keys: &[K], values: &[V]| {
        entries.extend(keys.iter().copied().zip(values.iter().copied()));
    });
    match read {
        Ok(()) => entries,
        Err(_) => one_by_one(),
    }
}
