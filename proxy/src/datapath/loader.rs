//! Puts the programs in the kernel, attaches them (socket hooks to a cgroup,
//! packet hooks to devices) and pins everything under one bpffs directory,
//! so the datapath keeps serving while the agent is stopped or restarting.
//!
//! Layout of the pin directory:
//! - `SY_*` the maps, pinned by name (reused as they are on the next start);
//! - `links/<generation>/<program>[@<device>]` one bpf_link per hook and
//!   agent start;
//! - `resizing/SY_*` a map being replaced by one of another size, while a
//!   start is under way (see `map_resize`).
//!
//! A restart attaches a new generation before detaching the old one. Both run
//! for that moment, harmlessly: the first translates, the second then sees a
//! backend address, which is not a frontend, and lets it pass.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::MapInfo,
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType,
        Xdp,
        tc::{self, NlOptions, TcAttachOptions},
    },
};
use switchyard_abi::{
    AFFINITY_MAP, BACKEND_STATS_MAP, BACKENDS_MAP, CLUSTER_CIDRS_MAP, CLUSTER_IPS_MAP,
    CONNTRACK_MAP, CONNTRACK_MAX_ENTRIES, COUNTERS_MAP, FRAGMENTS_MAP, LOCAL_DEVICES_MAP,
    MAGLEV_MAP, NETNS_SOURCES_MAP, NODE_CONFIG_MAP, NODE_MAP, SERVICE_CIDRS_MAP, SERVICE_NAMES_MAP,
    SERVICE_STATS_MAP, SERVICES_MAP, SOCK_STATE_MAP, SOURCE_RANGES_MAP, UDP_PEERS_MAP,
    XDP_DEVICES_MAP,
};
use tracing::{info, warn};

use super::{
    DatapathError, feature_probe,
    link_pins::{LINKS_DIR, detach_generation, generation_name, generations, pin_link},
    map_resize::{self, MapResize},
    memlock, pin_check, pin_dir,
    pin_lock::PinLock,
    sock_storage,
    xdp_attach::{self, XDP_PROGRAM, XdpMode},
};
use crate::{
    datapath::kernel_features::{Feature, KernelFeatures},
    node::node_network::Device,
    plan::capacity::MapCapacity,
};

/// The object built from `ebpf/programs` by this crate's build script.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/switchyard"));

/// The kernel programs, for tools that load them on their own (the packet
/// tests run them through `BPF_PROG_TEST_RUN`).
pub fn object() -> &'static [u8] {
    EBPF_OBJECT
}

/// Every socket hook, by its function name in `ebpf/programs/src/main.rs`.
pub const SOCKET_PROGRAMS: [&str; 8] = [
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "recvmsg4",
    "recvmsg6",
    "getpeername4",
    "getpeername6",
];

/// The forward hooks that fail socket calls, each with its build for
/// kernels without `bpf_set_retval` (before 5.18), attached there instead.
pub const COMPAT_PROGRAMS: [(&str, &str); 4] = [
    ("connect4", "connect4_compat"),
    ("connect6", "connect6_compat"),
    ("sendmsg4", "sendmsg4_compat"),
    ("sendmsg6", "sendmsg6_compat"),
];

/// The program that serves socket `hook` on a kernel with or without
/// `bpf_set_retval`.
pub fn socket_program(hook: &'static str, set_retval: bool) -> &'static str {
    COMPAT_PROGRAMS
        .iter()
        .find(|(name, _)| !set_retval && *name == hook)
        .map_or(hook, |(_, compat)| compat)
}

/// The hook run when a socket in the cgroup closes.
pub const SOCK_RELEASE_PROGRAM: &str = "sock_release";

/// The per-packet hooks and where each goes on a device.
pub const PACKET_PROGRAMS: [(&str, TcAttachType); 2] = [
    ("tc_ingress", TcAttachType::Ingress),
    ("tc_egress", TcAttachType::Egress),
];

pub const MAP_NAMES: [&str; 21] = [
    SERVICES_MAP,
    BACKENDS_MAP,
    MAGLEV_MAP,
    CLUSTER_IPS_MAP,
    SERVICE_CIDRS_MAP,
    NETNS_SOURCES_MAP,
    SOCK_STATE_MAP,
    UDP_PEERS_MAP,
    AFFINITY_MAP,
    CONNTRACK_MAP,
    FRAGMENTS_MAP,
    NODE_MAP,
    NODE_CONFIG_MAP,
    CLUSTER_CIDRS_MAP,
    LOCAL_DEVICES_MAP,
    SOURCE_RANGES_MAP,
    COUNTERS_MAP,
    SERVICE_STATS_MAP,
    BACKEND_STATS_MAP,
    SERVICE_NAMES_MAP,
    XDP_DEVICES_MAP,
];

/// The loaded programs of this agent start, and the generation its links
/// are pinned under.
pub struct Programs {
    /// This agent is the pins' only writer while it runs.
    _lock: PinLock,
    ebpf: Ebpf,
    generation: PathBuf,
    previous: Vec<PathBuf>,
    /// Maps replaced by ones of another size, finished once `previous` is
    /// retired.
    resizes: Vec<MapResize>,
    pin_dir: PathBuf,
    /// Devices (by index) the packet programs are attached to.
    devices: BTreeSet<u32>,
    /// `--xdp`, and the devices (by name) the XDP program is on.
    xdp: XdpMode,
    xdp_devices: BTreeSet<String>,
    features: &'static KernelFeatures,
    capacity: MapCapacity,
    conntrack: usize,
}

fn entries(count: usize) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// The sizes the flags ask of the maps that have one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// The service and backend maps, which the plan fits Services into.
    pub capacity: MapCapacity,
    /// Connections the per-packet path tracks (see `ConntrackArgs::entries`).
    pub conntrack: usize,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            capacity: MapCapacity::default(),
            conntrack: usize::try_from(CONNTRACK_MAX_ENTRIES).unwrap_or(usize::MAX),
        }
    }
}

impl MapSizes {
    fn by_map(self) -> [(&'static str, usize); 4] {
        [
            (SERVICES_MAP, self.capacity.service_entries),
            // A name per frontend, which the service map holds at least one
            // entry for.
            (SERVICE_NAMES_MAP, self.capacity.service_entries),
            (BACKENDS_MAP, self.capacity.backends),
            (CONNTRACK_MAP, self.conntrack),
        ]
    }
}

/// The entries pinned map `name` has.
fn pinned_entries(pin_dir: &Path, name: &'static str, requested: usize) -> usize {
    match MapInfo::from_pin(pin_dir.join(name)) {
        Ok(info) => usize::try_from(info.max_entries()).unwrap_or(usize::MAX),
        Err(error) => {
            warn!(map = name, %error, "reading the pinned map's size");
            requested
        }
    }
}

/// Loads every program (reusing pinned maps) and opens a new generation of
/// link pins. Sized maps get the `requested` entries: a pinned one of
/// another size is replaced by a copy of the asked size (see `map_resize`),
/// finished by [`Programs::retire_older_generations`]; one that cannot
/// shrink keeps its size, and [`Programs::capacity`] says what they have.
pub fn load(pin_dir: &Path, requested: MapSizes) -> Result<Programs, DatapathError> {
    let features = feature_probe::kernel_features();
    feature_probe::log_missing(features);
    let missing = features.missing_required();
    if !missing.is_empty() {
        let missing = missing
            .iter()
            .map(|f| format!("{} (Linux {})", f.name(), f.since()))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(DatapathError::KernelTooOld {
            release: features.release.clone(),
            missing,
        });
    }
    if !features.available(Feature::MemcgAccounting) {
        memlock::lift(&features.release)?;
    }
    pin_dir::prepare(pin_dir)?;
    let lock = PinLock::acquire(pin_dir)?;
    sock_storage::ensure_pinned(pin_dir)?;
    let previous = generations(pin_dir)?;
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(pin_dir);
    let resizes = check_pins(pin_dir, requested, &mut loader)?;
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .map_err(|source| DatapathError::Load {
            source: Box::new(source),
        })?;
    for resize in &resizes {
        resize.fill(pin_dir)?;
    }
    for map in MAP_NAMES {
        if ebpf.map(map).is_none() {
            return Err(DatapathError::MissingMap { map });
        }
    }
    let set_retval = features.available(Feature::BpfSetRetval);
    for hook in SOCKET_PROGRAMS {
        let name = socket_program(hook, set_retval);
        program_mut::<CgroupSockAddr>(&mut ebpf, name)?
            .load()
            .map_err(program_error(name))?;
    }
    program_mut::<CgroupSock>(&mut ebpf, SOCK_RELEASE_PROGRAM)?
        .load()
        .map_err(program_error(SOCK_RELEASE_PROGRAM))?;
    report_btf_fallback(&mut ebpf);
    // Without the helpers the tc programs call, the verifier would refuse
    // them; the socket hooks still serve everything started on the node.
    if features.packet_path() {
        for (name, _) in PACKET_PROGRAMS {
            program_mut::<SchedClassifier>(&mut ebpf, name)?
                .load()
                .map_err(program_error(name))?;
        }
        if features.available(Feature::XdpDeviceMap) {
            program_mut::<Xdp>(&mut ebpf, XDP_PROGRAM)?
                .load()
                .map_err(program_error(XDP_PROGRAM))?;
        }
    }
    let generation = pin_dir.join(LINKS_DIR).join(generation_name());
    fs::create_dir_all(&generation).map_err(|source| DatapathError::PinDir {
        path: generation.clone(),
        source,
    })?;
    let capacity = MapCapacity {
        service_entries: pinned_entries(pin_dir, SERVICES_MAP, requested.capacity.service_entries),
        backends: pinned_entries(pin_dir, BACKENDS_MAP, requested.capacity.backends),
    };
    let conntrack = pinned_entries(pin_dir, CONNTRACK_MAP, requested.conntrack);
    info!(
        service_entries = capacity.service_entries,
        backends = capacity.backends,
        conntrack,
        "map sizes"
    );
    Ok(Programs {
        _lock: lock,
        ebpf,
        generation,
        previous,
        resizes,
        pin_dir: pin_dir.to_path_buf(),
        devices: BTreeSet::new(),
        xdp: XdpMode::Auto,
        xdp_devices: BTreeSet::new(),
        features,
        capacity,
        conntrack,
    })
}

/// Checks every pinned map against this build's definition (see
/// `pin_check`), sets aside those to be created at another size, and tells
/// `loader` the sizes the flags ask.
fn check_pins(
    pin_dir: &Path,
    requested: MapSizes,
    loader: &mut EbpfLoader<'_>,
) -> Result<Vec<MapResize>, DatapathError> {
    let mut resizes = Vec::new();
    for (map, built) in pin_check::built_shapes(EBPF_OBJECT)? {
        let sized = requested
            .by_map()
            .into_iter()
            .find(|(name, _)| *name == map);
        let size = sized.map_or(built.max_entries, |(_, size)| entries(size));
        let path = pin_dir.join(map);
        if let Some(pinned) = pin_check::pinned_shape(&path)? {
            pin_check::check_layout(&path, pinned, built)?;
            if pinned.max_entries != size && sized.is_none() && !built.resizable() {
                return Err(pin_check::PinCheckError::Layout {
                    path,
                    what: "max entries",
                    pinned: pinned.max_entries,
                    built: size,
                }
                .into());
            }
        }
        if sized.is_some() || built.resizable() {
            resizes.extend(map_resize::set_aside(pin_dir, map, size as usize)?);
        }
        if sized.is_some() {
            loader.map_max_entries(map, size);
        }
    }
    Ok(resizes)
}

/// When the kernel refuses the object's BTF, aya loads maps and programs
/// without it and logs the whole refused BTF (muted in `main`'s default
/// filter); this says the same in one line. A program carries a BTF id
/// only when the object's BTF was loaded.
fn report_btf_fallback(ebpf: &mut Ebpf) {
    // Loaded on every kernel (the forward hooks have two builds).
    let Ok(program) = program_mut::<CgroupSockAddr>(ebpf, "recvmsg4") else {
        return;
    };
    if let Ok(info) = program.info()
        && info.btf_id().is_none()
    {
        tracing::info!(
            "the kernel refused the object's BTF: programs and maps load without it \
             (nothing changes in what they do; bpftool shows raw map entries)"
        );
    }
}

fn program_error(program: &'static str) -> impl Fn(aya::programs::ProgramError) -> DatapathError {
    move |source| DatapathError::Program {
        program,
        source: Box::new(source),
    }
}

fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, DatapathError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| program_error(name)(aya::programs::ProgramError::NotLoaded))?
        .try_into()
        .map_err(program_error(name))
}

impl Programs {
    /// Attaches the socket hooks to `cgroup`.
    pub fn attach_sockets(&mut self, cgroup: &Path) -> Result<(), DatapathError> {
        let cgroup_dir = fs::File::open(cgroup).map_err(|source| DatapathError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
        // A bpf_link attachment always coexists with other links on the
        // cgroup (the kernel rejects any flags on it), so the mode is 0.
        let set_retval = self.features.available(Feature::BpfSetRetval);
        for hook in SOCKET_PROGRAMS {
            let name = socket_program(hook, set_retval);
            let program: &mut CgroupSockAddr = program_mut(&mut self.ebpf, name)?;
            let link_id = program
                .attach(&cgroup_dir, CgroupAttachMode::Single)
                .map_err(program_error(name))?;
            let link = program.take_link(link_id).map_err(program_error(name))?;
            // Pinned by hook: whichever build runs, a restart finds it.
            pin_link(link.try_into(), &self.generation.join(hook))?;
        }
        let name = SOCK_RELEASE_PROGRAM;
        let program: &mut CgroupSock = program_mut(&mut self.ebpf, name)?;
        let link_id = program
            .attach(&cgroup_dir, CgroupAttachMode::Single)
            .map_err(program_error(name))?;
        // aya's link types differ per program type; the pin is the same.
        let link = program.take_link(link_id).map_err(program_error(name))?;
        pin_link(link.try_into(), &self.generation.join(name))?;
        info!(cgroup = %cgroup.display(), generation = %self.generation.display(), "socket hooks attached");
        Ok(())
    }

    /// Attaches the packet hooks to `device` (tcx links, appended after any
    /// other program there) unless this start already did, and the XDP
    /// program as `--xdp` says if `uplink`.
    pub fn attach_device(&mut self, device: &Device, uplink: bool) -> Result<(), DatapathError> {
        // The probe already said once why the per-packet path is off.
        if self.devices.contains(&device.index) || !self.features.packet_path() {
            return Ok(());
        }
        for (name, attach_type) in PACKET_PROGRAMS {
            let program: &mut SchedClassifier = program_mut(&mut self.ebpf, name)?;
            let tcx = program.attach_with_options(
                &device.name,
                attach_type,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            );
            let link_id = match tcx {
                Ok(link_id) => link_id,
                Err(tcx_error) => {
                    attach_classic(program, name, attach_type, device, &tcx_error)?;
                    continue;
                }
            };
            let link = program.take_link(link_id).map_err(program_error(name))?;
            let path = self.generation.join(format!("{name}@{}", device.name));
            // A device of the same name from an earlier run of this start
            // (deleted and re-created) left its pin behind.
            let _ = fs::remove_file(&path);
            pin_link(link.try_into(), &path)?;
        }
        self.devices.insert(device.index);
        info!(device = %device.name, "packet hooks attached");
        if uplink {
            self.attach_xdp(device)?;
        }
        Ok(())
    }

    /// `--xdp`: the mode the next devices are attached with.
    pub fn set_xdp(&mut self, mode: XdpMode) {
        self.xdp = mode;
    }

    /// Devices the XDP program is on, by name.
    pub fn xdp_devices(&self) -> &BTreeSet<String> {
        &self.xdp_devices
    }

    /// The XDP program on `device` as `--xdp` asks; where the driver or the
    /// kernel has no native XDP, `auto` keeps tc alone and says why once,
    /// `native` is an error naming the device.
    fn attach_xdp(&mut self, device: &Device) -> Result<(), DatapathError> {
        if self.xdp == XdpMode::Off {
            return Ok(());
        }
        if self.xdp == XdpMode::Auto
            && let Some(why) = xdp_attach::auto_skips(device)
        {
            info!(device = %device.name, "no XDP: {why}");
            return Ok(());
        }
        let attached = if self.features.available(Feature::XdpDeviceMap) {
            let program: &mut Xdp = program_mut(&mut self.ebpf, XDP_PROGRAM)?;
            xdp_attach::attach(program, device, &self.generation, &self.previous)
        } else {
            Err(DatapathError::NoNativeXdp {
                device: device.name.clone(),
                reason: format!(
                    "kernel {} lacks bpf_xdp_load_bytes (Linux 5.18)",
                    self.features.release
                ),
            })
        };
        match attached {
            Ok(()) => {
                self.xdp_devices.insert(device.name.clone());
                if let Err(error) = xdp_attach::add_target(&self.pin_dir, device) {
                    info!(device = %device.name, %error, "XDP sends frames back out of this device only");
                }
                info!(device = %device.name, "XDP attached (native)");
                Ok(())
            }
            Err(error) if self.xdp == XdpMode::Native => Err(DatapathError::NoNativeXdp {
                device: device.name.clone(),
                reason: error.to_string(),
            }),
            Err(error) => {
                warn!(device = %device.name, %error, "no native XDP: the per-packet path runs at tc there");
                Ok(())
            }
        }
    }

    /// What the kernel offers, as probed when the programs were loaded.
    pub fn features(&self) -> &'static KernelFeatures {
        self.features
    }

    /// Entries the service and backend maps have.
    pub fn capacity(&self) -> MapCapacity {
        self.capacity
    }

    /// Entries the conntrack map has.
    pub fn conntrack_entries(&self) -> usize {
        self.conntrack
    }

    /// Whether packet hooks go on devices (the kernel has what they need).
    pub fn packet_path(&self) -> bool {
        self.features.packet_path()
    }

    /// A packet program, for running it on test input (`BPF_PROG_TEST_RUN`).
    pub fn packet_program(&self, name: &str) -> Option<&SchedClassifier> {
        self.ebpf.program(name)?.try_into().ok()
    }

    /// The XDP program, for test input; `None` where it was not loaded.
    pub fn xdp_program(&self) -> Option<&Xdp> {
        let program: &Xdp = self.ebpf.program(XDP_PROGRAM)?.try_into().ok()?;
        program.fd().is_ok().then_some(program)
    }

    /// Forgets devices that are gone: their links went with them.
    pub fn forget_devices_except(&mut self, present: &BTreeSet<u32>, names: &BTreeSet<String>) {
        self.devices.retain(|index| present.contains(index));
        self.xdp_devices.retain(|name| names.contains(name));
    }

    /// Detaches what earlier agent starts attached, once this one serves,
    /// and then lets go of the maps they used that were resized.
    pub fn retire_older_generations(&mut self) {
        let mut retired = true;
        for old in std::mem::take(&mut self.previous) {
            if let Err(error) = detach_generation(&old) {
                warn!(%error, generation = %old.display(), "could not detach an older generation");
                retired = false;
            }
        }
        // The old maps stay while an older program may still write them;
        // the next start finishes the resize.
        if !retired {
            return;
        }
        for resize in std::mem::take(&mut self.resizes) {
            if let Err(error) = resize.finish(&self.pin_dir) {
                warn!(%error, "finishing a resize; the next start retries");
            }
        }
        // Maps of another layout version served only the programs just
        // retired: unpinning drops the last reference.
        for path in pin_check::other_versions(&self.pin_dir) {
            match fs::remove_file(&path) {
                Ok(()) => info!(pin = %path.display(), "removed a map of an older layout"),
                Err(error) => {
                    warn!(%error, pin = %path.display(), "removing a map of an older layout");
                }
            }
        }
    }
}

/// Kernels before 6.6 have no tcx: a direct-action cls_bpf filter on the
/// clsact qdisc instead. Such a filter is no bpf_link and cannot be pinned;
/// it is left attached when the agent exits (the datapath keeps serving, as
/// with pinned links), and the next start replaces it by program name.
fn attach_classic(
    program: &mut SchedClassifier,
    name: &'static str,
    attach_type: TcAttachType,
    device: &Device,
    tcx_error: &aya::programs::ProgramError,
) -> Result<(), DatapathError> {
    // EEXIST when a qdisc is there already: fine.
    let _ = tc::qdisc_add_clsact(&device.name);
    // Nothing to detach on a first start.
    let _ = tc::qdisc_detach_program(&device.name, attach_type, name);
    let link_id = program
        .attach_with_options(
            &device.name,
            attach_type,
            TcAttachOptions::Netlink(NlOptions::default()),
        )
        .map_err(program_error(name))?;
    let link = program.take_link(link_id).map_err(program_error(name))?;
    // Dropping the link would detach the filter.
    std::mem::forget(link);
    warn!(device = %device.name, program = name, error = %tcx_error, "no tcx; attached to the clsact qdisc instead");
    Ok(())
}
