//! The XDP program on a device: native mode only (generic XDP runs after
//! the stack has built an skb, where tc already is, and gains nothing), as
//! a pinned bpf_link like the tc hooks. A device holds one XDP link: a
//! restarted agent swaps its program into the link an earlier start pinned
//! (`bpf_link_update`, atomic), so no packet meets a device without it.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    str::FromStr,
};

use aya::{
    maps::{DevMapHash, MapData},
    programs::{
        Xdp,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpMode as AttachMode},
    },
};
use switchyard_abi::XDP_DEVICES_MAP;

use super::{DatapathError, link_pins::pin_link, pinned::open_pinned};
use crate::node::node_network::{Device, DeviceKind};

/// The XDP program's name in the object.
pub const XDP_PROGRAM: &str = "xdp_ingress";

/// `--xdp`: where the per-packet path runs at XDP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpMode {
    /// On every device whose driver takes it natively; tc alone elsewhere.
    #[default]
    Auto,
    /// On every device, or the agent stops, naming the device.
    Native,
    /// Nowhere: tc alone.
    Off,
}

impl XdpMode {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Off => "off",
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for XdpMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Self::Auto),
            "native" => Ok(Self::Native),
            "off" => Ok(Self::Off),
            other => Err(format!("{other:?} is not auto, native or off")),
        }
    }
}

/// Why `--xdp auto` leaves `device` to tc without trying: a veth passes
/// frames sent back out by XDP to its peer only when the peer side takes
/// XDP frames (an XDP program or GRO there), which this namespace cannot
/// see; a frame it refuses is lost. `--xdp native` attaches anyway, for
/// whoever prepared the peer.
pub fn auto_skips(device: &Device) -> Option<&'static str> {
    (device.kind == DeviceKind::Veth)
        .then_some("a veth: XDP only with --xdp native, once its peer takes XDP frames")
}

/// Where the pin of `device`'s XDP link goes in a generation.
pub fn pin_path(generation: &Path, device: &str) -> PathBuf {
    generation.join(format!("{XDP_PROGRAM}@{device}"))
}

/// Attaches `program` to `device` in native mode and pins the link in
/// `generation`, taking over an earlier start's link when one is pinned.
pub fn attach(
    program: &mut Xdp,
    device: &Device,
    generation: &Path,
    previous: &[PathBuf],
) -> Result<(), DatapathError> {
    let program_error = |source| DatapathError::Program {
        program: XDP_PROGRAM,
        source: Box::new(source),
    };
    let earlier = previous
        .iter()
        .rev()
        .map(|old| pin_path(old, &device.name))
        .find(|pin| pin.exists());
    let link_id = match earlier {
        Some(pin) => {
            let pinned = PinnedLink::from_pin(&pin).map_err(|source| DatapathError::Pin {
                path: pin.clone(),
                source: Box::new(source),
            })?;
            let link =
                XdpLink::try_from(FdLink::from(pinned)).map_err(|source| DatapathError::Pin {
                    path: pin.clone(),
                    source: Box::new(source),
                })?;
            program.attach_to_link(link).map_err(program_error)?
        }
        None => program
            .attach(&device.name, AttachMode::Driver)
            .map_err(program_error)?,
    };
    let link = program.take_link(link_id).map_err(program_error)?;
    let path = pin_path(generation, &device.name);
    let _ = fs::remove_file(&path);
    pin_link(FdLink::try_from(link), &path)
}

/// Makes `device` a device XDP may send frames into (`XDP_DEVICES_MAP`
/// under `pin_dir`). The kernel takes it only where the driver accepts XDP
/// frames; elsewhere XDP sends back out of this device alone, and tc takes
/// the other next hops. A device that goes leaves the map by itself.
pub fn add_target(pin_dir: &Path, device: &Device) -> Result<(), DatapathError> {
    let mut targets: DevMapHash<MapData> = open_pinned(pin_dir, XDP_DEVICES_MAP)?;
    let map_error = |source: aya::maps::MapError| DatapathError::Map {
        map: XDP_DEVICES_MAP,
        source: Box::new(source),
    };
    match targets.insert(device.index, device.index, None, 0) {
        Err(aya::maps::xdp::XdpMapError::MapError(source)) => Err(map_error(source)),
        // ChainedProgramNotSupported is never asked for: no program runs
        // on the way out.
        Ok(()) | Err(aya::maps::xdp::XdpMapError::ChainedProgramNotSupported) => Ok(()),
    }
}

/// The devices an XDP link is pinned for under `pin_dir`'s newest
/// generation, as `switchyard services` shows them.
pub fn pinned_devices(generation: &Path) -> Vec<String> {
    let prefix = format!("{XDP_PROGRAM}@");
    let mut devices: Vec<String> = fs::read_dir(generation)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            name.strip_prefix(&prefix).map(str::to_owned)
        })
        .collect();
    devices.sort();
    devices
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_as_written() {
        for mode in [XdpMode::Auto, XdpMode::Native, XdpMode::Off] {
            assert_eq!(mode.name().parse(), Ok(mode));
        }
        assert!("driver".parse::<XdpMode>().is_err());
    }
}
