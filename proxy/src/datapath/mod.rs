//! The only code that touches the kernel's BPF objects.
//!
//! `loader` puts the programs in the kernel and attaches them, `link_pins`
//! keeps their links pinned by generation; `pinned` reads
//! and writes the pinned maps; `fake` is the in-memory stand-in the sync loop
//! is tested against. Everything above this module works on
//! [`DatapathState`] and [`MapOp`] values only.

pub mod batch;
#[expect(
    unsafe_code,
    reason = "bpf(2) calls aya 0.14 does not make: BTF_LOAD, MAP_CREATE with BTF ids and \
              OBJ_PIN for the socket-storage map (aya passes no BTF ids for a legacy \
              definition), and MAP_UPDATE_BATCH"
)]
pub mod bpf_syscall;
pub mod fake;
pub mod feature_probe;
pub mod flow_table;
pub mod hand_back;
pub mod kernel_features;
pub mod link_pins;
pub mod live_maps;
pub mod loader;
pub mod map_resize;
pub mod memlock;
pub mod pin_check;
pub mod pin_dir;
pub mod pin_lock;
pub mod pinned;
pub mod sock_storage;
pub mod stats_table;
pub mod xdp_attach;

use std::path::PathBuf;

use crate::plan::{datapath_state::DatapathState, drift::Drift, map_op::MapOp};

/// Applies map operations in the order given.
pub trait MapWriter {
    fn apply(&mut self, op: &MapOp) -> Result<(), DatapathError>;

    /// Applies `ops` in order, as `apply` on each would (a writer may batch
    /// them); stops at the first failure.
    fn apply_all(&mut self, ops: &[MapOp]) -> Result<(), Stopped> {
        for (applied, op) in ops.iter().enumerate() {
            self.apply(op).map_err(|error| Stopped { applied, error })?;
        }
        Ok(())
    }
}

/// Where [`MapWriter::apply_all`] stopped: the operations before `applied`
/// are in the maps, the one at `applied` failed with `error`, the rest
/// were not tried.
#[derive(Debug)]
pub struct Stopped {
    pub applied: usize,
    pub error: DatapathError,
}

/// Reads back what the maps hold.
pub trait MapReader {
    fn read_state(&self) -> Result<DatapathState, DatapathError>;

    /// How the maps differ from `mirror` (see `plan::drift`). A reader
    /// that can count entry by entry as it reads does so without building
    /// a second state.
    fn drift_against(&self, mirror: &DatapathState) -> Result<Drift, DatapathError> {
        Ok(Drift::between(mirror, &self.read_state()?))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("bpffs directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not on a bpf filesystem (mount -t bpf bpf {path})")]
    NotBpfFs { path: PathBuf },
    #[error("creating the socket storage map {path}: {source}")]
    SockStorage {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the eBPF object: {detail}", detail = error_chain(source.as_ref()))]
    Load { source: Box<aya::EbpfError> },
    #[error("program {program}: {detail}", detail = error_chain(source.as_ref()))]
    Program {
        program: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("pinning {path}: {detail}", detail = error_chain(source.as_ref()))]
    Pin {
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("map {map}: {detail}", detail = error_chain(source.as_ref()))]
    Map {
        map: &'static str,
        source: Box<aya::maps::MapError>,
    },
    #[error("--xdp native: device {device} has no native XDP: {reason}")]
    NoNativeXdp { device: String, reason: String },
    #[error("map {map} not found in the eBPF object")]
    MissingMap { map: &'static str },
    #[error("kernel {release} lacks {missing}: see the README's kernel compatibility table")]
    KernelTooOld { release: String, missing: String },
    #[error(
        "kernel {release} charges BPF maps to RLIMIT_MEMLOCK (Linux before 5.11), which is \
         {limit_kib} KiB and cannot be raised ({errno}): grant CAP_SYS_RESOURCE (the \
         DaemonSet does) or run the agent with an unlimited memlock limit"
    )]
    Memlock {
        release: String,
        limit_kib: u64,
        errno: nix::errno::Errno,
    },
    #[error("no datapath pinned at {path}: is `switchyard run` using this --bpffs?")]
    NotPinned { path: PathBuf },
    #[error(transparent)]
    Resize {
        source: Box<map_resize::ResizeError>,
    },
    #[error(transparent)]
    PinCheck {
        source: Box<pin_check::PinCheckError>,
    },
    #[error(transparent)]
    Locked { source: Box<pin_lock::PinLockError> },
}

impl From<pin_check::PinCheckError> for DatapathError {
    fn from(source: pin_check::PinCheckError) -> Self {
        Self::PinCheck {
            source: Box::new(source),
        }
    }
}

impl From<pin_lock::PinLockError> for DatapathError {
    fn from(source: pin_lock::PinLockError) -> Self {
        Self::Locked {
            source: Box::new(source),
        }
    }
}

/// An error and its causes, each said once. aya's syscall errors print
/// only the call (the errno is in the source); other wrappers already print
/// their cause.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Some wrappers already print their cause; do not say it twice.
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl DatapathError {
    pub(crate) fn map(map: &'static str, source: aya::maps::MapError) -> Self {
        Self::Map {
            map,
            source: Box::new(source),
        }
    }

    /// The map an operation failed on, for the failed-operations metric.
    pub fn map_name(&self) -> Option<&'static str> {
        match self {
            Self::Map { map, .. } | Self::MissingMap { map } => Some(map),
            _ => None,
        }
    }

    /// Short label for the failed-operations metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Map { source, .. } => match source.as_ref() {
                aya::maps::MapError::SyscallError(err)
                    if err.io_error.raw_os_error() == Some(libc::E2BIG) =>
                {
                    "map_full"
                }
                _ => "map_error",
            },
            Self::PinDir { .. } | Self::NotBpfFs { .. } | Self::Pin { .. } => "pin",
            Self::Cgroup { .. } => "cgroup",
            Self::Load { .. }
            | Self::Program { .. }
            | Self::MissingMap { .. }
            | Self::SockStorage { .. }
            | Self::KernelTooOld { .. }
            | Self::Memlock { .. } => "load",
            Self::NotPinned { .. } => "not_pinned",
            Self::Resize { .. } => "resize",
            Self::PinCheck { .. } => "pin_layout",
            Self::Locked { .. } => "locked",
            Self::NoNativeXdp { .. } => "no_native_xdp",
        }
    }
}
