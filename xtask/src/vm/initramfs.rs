//! The VM's whole root filesystem, as one uncompressed initramfs: busybox,
//! `ip` and the shared libraries of everything dynamic, the agent, netprobe,
//! the test binaries, the kernel modules the suite needs, and `/init`, which
//! mounts what the harness expects, runs every test binary and reports on
//! the serial console. Uncompressed because inflating a few hundred MB under
//! TCG costs more than copying it in.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::results::{BEGIN, END, EXIT, FEATURES, SUITE};

/// Modules the suite uses that cloud kernels build as modules: veth pairs,
/// the LAN bridge, the clsact qdisc and cls_bpf filters of the tc fallback,
/// and nftables with conntrack matches and NAT for the tests that put
/// netfilter (and kube-proxy's rules) beside the per-packet path, and
/// sock_diag for IPv4/IPv6 TCP and UDP, through which the agent destroys
/// the sockets of removed backends (a node loads these on first use; the
/// initramfs has no modprobe). Their dependencies are added from each
/// module's `.modinfo`.
const MODULES: &[&str] = &[
    "inet_diag",
    "tcp_diag",
    "udp_diag",
    "veth",
    "bridge",
    "sch_ingress",
    "cls_bpf",
    "nf_conntrack",
    "nf_tables",
    "nft_ct",
    "nft_chain_nat",
    "nft_nat",
];

/// How much longer the tests may wait under TCG (see tests/src/patience.rs).
const TIME_SCALE: u32 = 5;

const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

const BUSYBOX: &str = "/bin/busybox";

/// Binaries the init script needs besides busybox, as the harness calls them.
const HOST_TOOLS: &[&str] = &["ip", "nft"];

pub struct Contents<'a> {
    pub agent: &'a Path,
    pub netprobe: &'a Path,
    /// (name, executable) of each integration-test binary.
    pub tests: &'a [(String, PathBuf)],
    pub modules: &'a Path,
}

/// Builds `out` unless the stamp beside it says its inputs are unchanged.
pub fn build(contents: &Contents<'_>, work: &Path, out: &Path) -> Result<()> {
    let modules = module_order(contents.modules)?;
    let stamp_path = out.with_extension("stamp");
    let stamp = stamp(contents, &modules)?;
    if out.exists() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        println!("vm: {} is up to date", out.display());
        return Ok(());
    }
    let _ = fs::remove_dir_all(work);
    populate(contents, &modules, work)?;
    pack(work, out)?;
    fs::write(&stamp_path, stamp)?;
    let size = fs::metadata(out)?.len() / (1 << 20);
    println!("vm: built {} ({size} MiB)", out.display());
    Ok(())
}

/// Lays out the root filesystem in `work`.
fn populate(contents: &Contents<'_>, modules: &[(String, PathBuf)], work: &Path) -> Result<()> {
    for dir in [
        "bbin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "var",
        "etc/ssl/certs",
        "opt/sy/tests",
        "lib/sy",
    ] {
        fs::create_dir_all(work.join(dir))?;
    }
    // iproute2 keeps named namespaces in /var/run/netns, the harness looks
    // in /run/netns.
    std::os::unix::fs::symlink("/run", work.join("var/run"))?;
    fs::copy(BUSYBOX, work.join("bbin/busybox")).context("busybox-static missing")?;
    // busybox-static has no libraries to copy; a dynamic busybox would.
    let mut dynamic = vec![PathBuf::from(BUSYBOX)];
    for tool in HOST_TOOLS {
        let path = which(tool)?;
        fs::copy(&path, work.join("usr/sbin").join(tool))?;
        dynamic.push(path);
    }
    let mut binaries: Vec<(PathBuf, &Path)> = vec![
        (work.join("opt/sy/switchyard"), contents.agent),
        (work.join("opt/sy/netprobe"), contents.netprobe),
    ];
    for (name, path) in contents.tests {
        binaries.push((work.join("opt/sy/tests").join(name), path));
    }
    for (dest, src) in &binaries {
        // Debug info is most of a debug build's size and the VM has no use
        // for it; backtraces keep their function names.
        let status = Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(dest)
            .arg(src)
            .status()?;
        if !status.success() {
            bail!("strip {} failed", src.display());
        }
        dynamic.push(src.to_path_buf());
    }
    copy_libraries(&dynamic, work)?;
    // The agent's API client (rustls, native roots) refuses to start
    // without a CA bundle, even for the plain-HTTP test API server.
    let bundle = Path::new(CA_BUNDLE);
    fs::copy(bundle, work.join(bundle.strip_prefix("/")?))
        .with_context(|| format!("{CA_BUNDLE} missing (apt-get install ca-certificates)"))?;
    for (name, path) in modules {
        fs::write(
            work.join("lib/sy").join(format!("{name}.ko")),
            decompressed(path)?,
        )?;
    }
    let order: Vec<&str> = modules.iter().map(|(name, _)| name.as_str()).collect();
    let init = work.join("init");
    fs::write(&init, init_script(&order))?;
    fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(())
}

/// One newc cpio archive of `work`, the format the kernel unpacks.
fn pack(work: &Path, out: &Path) -> Result<()> {
    let partial = out.with_extension("partial");
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . -print0 | cpio --null --create --format=newc --quiet > \"$0\"")
        .arg(&partial)
        .current_dir(work)
        .status()?;
    if !status.success() {
        bail!("cpio failed for {}", work.display());
    }
    fs::rename(&partial, out)?;
    Ok(())
}

fn init_script(modules: &[&str]) -> String {
    let modules = modules.join(" ");
    format!(
        r#"#!/bbin/busybox sh
/bbin/busybox --install -s /bbin
export PATH=/usr/sbin:/bbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
for m in {modules}; do insmod /lib/sy/$m.ko || echo "insmod $m failed"; done
ip link set lo up
hostname sy-vm
export SWITCHYARD_BIN=/opt/sy/switchyard NETPROBE_BIN=/opt/sy/netprobe RUST_BACKTRACE=1
export SWITCHYARD_FEATURES_OUT=/run/features.json
# TCG runs several times slower than the host: stretch the tests' waits.
export SWITCHYARD_TEST_TIME_SCALE={TIME_SCALE}
echo "{BEGIN} $(uname -r)"
for t in /opt/sy/tests/*; do
  name=${{t##*/}}
  echo "{SUITE} $name"
  $t --test-threads=1 2>&1
  echo "{EXIT} $name $?"
done
[ -f /run/features.json ] && echo "{FEATURES} $(cat /run/features.json)"
echo "{END}"
poweroff -f
"#
    )
}

/// The modules to load, dependencies first: (name, file).
fn module_order(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut files = BTreeMap::new();
    index_modules(&root.join("kernel"), &mut files)?;
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in MODULES {
        visit(name, &files, &mut seen, &mut order, 0)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    files: &BTreeMap<String, PathBuf>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<(String, PathBuf)>,
    depth: usize,
) -> Result<()> {
    let name = name.replace('-', "_");
    if seen.contains(&name) {
        return Ok(());
    }
    if depth > 16 {
        bail!("module dependencies deeper than 16 at {name}");
    }
    // Not a module file: built into this kernel, nothing to load.
    let Some(path) = files.get(&name) else {
        seen.insert(name);
        return Ok(());
    };
    for dep in depends(&decompressed(path)?) {
        visit(&dep, files, seen, order, depth + 1)?;
    }
    seen.insert(name.clone());
    order.push((name, path.clone()));
    Ok(())
}

/// Module name (as the kernel spells it, `_` for `-`) -> file, recursively.
fn index_modules(dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, files)?;
            continue;
        }
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        if let Some((stem, _)) = file.split_once(".ko") {
            files.insert(stem.replace('-', "_"), path.clone());
        }
    }
    Ok(())
}

/// The `depends=` entry of a module's `.modinfo` section.
fn depends(module: &[u8]) -> Vec<String> {
    let key = b"depends=";
    let Some(start) = module.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &module[start + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Busybox's insmod takes plain ELF only; Debian compresses modules from
/// trixie on.
fn decompressed(path: &Path) -> Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => return fs::read(path).with_context(|| format!("reading {}", path.display())),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("cannot run {tool}"))?;
    if !out.status.success() {
        bail!("{tool} cannot unpack {}", path.display());
    }
    Ok(out.stdout)
}

/// Copies every shared library `binaries` load (ldd) to the same path in
/// `root`, the program interpreter included.
fn copy_libraries(binaries: &[PathBuf], root: &Path) -> Result<()> {
    let mut libraries = BTreeSet::new();
    for binary in binaries {
        let out = Command::new("ldd").arg(binary).output()?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(path) = path.filter(|p| p.starts_with('/')) {
                libraries.insert(PathBuf::from(path));
            }
        }
    }
    for library in libraries {
        let dest = root.join(library.strip_prefix("/")?);
        fs::create_dir_all(dest.parent().context("library path")?)?;
        // fs::copy follows symlinks, so the soname path holds the real file.
        fs::copy(&library, &dest).with_context(|| format!("copying {}", library.display()))?;
    }
    Ok(())
}

fn which(tool: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .with_context(|| format!("{tool} not found"))
}

/// What the image is built from: every input file's size and mtime.
fn stamp(contents: &Contents<'_>, modules: &[(String, PathBuf)]) -> Result<String> {
    let mut inputs: Vec<&Path> = vec![contents.agent, contents.netprobe];
    inputs.extend(contents.tests.iter().map(|(_, p)| p.as_path()));
    inputs.extend(modules.iter().map(|(_, p)| p.as_path()));
    let mut stamp = init_script(&[]);
    let names: Vec<&str> = contents.tests.iter().map(|(n, _)| n.as_str()).collect();
    stamp.push_str(&names.join(" "));
    for input in inputs {
        let meta = fs::metadata(input).with_context(|| format!("{}", input.display()))?;
        let mtime = meta.modified()?.duration_since(std::time::UNIX_EPOCH)?;
        let _ = writeln!(
            stamp,
            "{} {} {}",
            input.display(),
            meta.len(),
            mtime.as_nanos()
        );
    }
    Ok(stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_module_dependencies() {
        let modinfo = b"\0license=GPL\0depends=llc,stp\0intree=Y\0";
        assert_eq!(depends(modinfo), ["llc", "stp"]);
        assert!(depends(b"\0depends=\0").is_empty());
        assert!(depends(b"no modinfo").is_empty());
    }
}
