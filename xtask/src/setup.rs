//! `cargo xtask setup`: installs what a fresh machine lacks, and nothing
//! else. Every step checks first, so running it again is cheap; each prints
//! one line saying what it found or did.

use std::{
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::cargo;

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Host tools the harness runs, and the Debian package of each.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    // Tests that put netfilter's conntrack beside the per-packet path.
    ("nft", "nftables"),
    // The migration tests and the bench: kube-proxy's iptables rule sets.
    ("iptables-nft-restore", "iptables"),
    // `cargo xtask vm`: the VMs, their initramfs, Debian's kernel packages.
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("cpio", "cpio"),
    ("xz", "xz-utils"),
    ("zstd", "zstd"),
    ("curl", "curl"),
    ("gpgv", "gpgv"),
    ("dpkg-deb", "dpkg"),
    ("strip", "binutils"),
];

pub fn run() -> Result<()> {
    toolchain()?;
    debian_packages(TOOLS)?;
    prometheus()
}

/// What building the kernel-side crate needs, and nothing more: enough for
/// `cargo xtask lint` on a fresh machine.
pub fn toolchain() -> Result<()> {
    rust_src()?;
    bpf_linker()
}

/// Where Debian's Prometheus is unpacked: the tests scrape the agent with
/// it and run its `promtool`. Unpacked, never installed: no service of the
/// package starts on the machine.
pub fn prometheus_dir() -> PathBuf {
    cargo::root().join("target/tools/prometheus")
}

fn prometheus() -> Result<()> {
    let root = prometheus_dir();
    let binaries = ["prometheus", "promtool"].map(|tool| root.join("usr/bin").join(tool));
    if binaries.iter().all(|binary| binary.is_file()) {
        step("prometheus (unpacked)", "ok (already present)");
        return Ok(());
    }
    let debs = cargo::root().join("target/tools/debs");
    std::fs::create_dir_all(&debs)?;
    let download = || {
        Command::new("apt-get")
            .args(["download", "-q", "prometheus"])
            .current_dir(&debs)
            .status()
            .is_ok_and(|status| status.success())
    };
    // A fresh machine may have no package lists yet.
    if !download() {
        cargo::run(Command::new("apt-get").args(["update", "-q"]))?;
        if !download() {
            bail!("apt-get download prometheus failed");
        }
    }
    let deb = std::fs::read_dir(&debs)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.extension().is_some_and(|ext| ext == "deb")
                && path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with("prometheus_"))
        })
        .max()
        .context("apt-get download left no prometheus_*.deb")?;
    cargo::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    step("prometheus (unpacked)", "installed");
    Ok(())
}

fn step(name: &str, outcome: &str) {
    println!("setup: {name}: {outcome}");
}

/// Stdout of a command, or None if it cannot run or fails.
fn probe(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The kernel programs build with the nightly toolchain and `-Z build-std`,
/// which needs the standard library's source; `cargo xtask lint` runs the
/// nightly clippy on them, and nightly rustfmt for rustfmt.toml's import
/// grouping.
fn rust_src() -> Result<()> {
    let installed = probe(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .context("rustup cannot list the nightly toolchain's components (is nightly installed?)")?;
    for component in ["rust-src", "clippy", "rustfmt"] {
        let label = format!("{component} (nightly)");
        if installed.lines().any(|l| l.trim().starts_with(component)) {
            step(&label, "ok (already present)");
            continue;
        }
        cargo::run(Command::new("rustup").args([
            "component",
            "add",
            component,
            "--toolchain",
            "nightly",
        ]))?;
        step(&label, "installed");
    }
    Ok(())
}

/// bpf-linker links against the nightly toolchain's own libLLVM, so the BPF
/// code generator matches the rustc that emits the bitcode. The prefix dir
/// it is built against must stay (the binary's RUNPATH points into it), so it
/// lives under $CARGO_HOME rather than a temp dir.
fn bpf_linker() -> Result<()> {
    let (libllvm, major) = nightly_libllvm()?;
    let prefix = cargo_home()?.join("bpf-linker-llvm");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    // Two names: `libLLVM.so` for the build to find, and the library's own
    // soname (its file name), which the installed binary asks the loader for.
    let soname = libllvm.file_name().context("libLLVM path")?.to_owned();
    let mut linked = false;
    for name in [Path::new("libLLVM.so"), Path::new(&soname)] {
        linked |= ensure_symlink(&lib.join(name), &libllvm)?;
    }
    let version = probe("bpf-linker", &["--version"]).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        let outcome = if linked {
            "ok (repaired the libLLVM links it loads through)"
        } else {
            "ok (already present)"
        };
        step(&format!("bpf-linker {BPF_LINKER_VERSION}"), outcome);
        return Ok(());
    }
    let feature = format!("llvm-{major}");
    cargo::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args(["--no-default-features", "--features", &feature])
            .env("LLVM_PREFIX", &prefix),
    )?;
    step(
        &format!("bpf-linker {BPF_LINKER_VERSION}"),
        &format!("installed against {}", libllvm.display()),
    );
    Ok(())
}

/// Installs the cargo subcommand `krate` at `version` unless `cargo
/// PROBE...` already reports that version (tools only some tasks need, such
/// as cargo-fuzz for `cargo xtask fuzz`).
pub fn cargo_tool(krate: &str, version: &str, probe_args: &[&str]) -> Result<()> {
    let label = format!("{krate} {version}");
    if probe("cargo", probe_args).is_some_and(|found| found.contains(version)) {
        step(&label, "ok (already present)");
        return Ok(());
    }
    cargo::run(Command::new("cargo").args(["install", krate, "--version", version, "--locked"]))?;
    step(&label, "installed");
    Ok(())
}

/// Points `link` at `target`; returns whether it had to change anything.
fn ensure_symlink(link: &Path, target: &Path) -> Result<bool> {
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(false);
    }
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(link)?;
    }
    symlink(target, link).with_context(|| format!("cannot link {}", link.display()))?;
    Ok(true)
}

/// The nightly sysroot's `lib/libLLVM.so.<major>.<minor>-rust-...` and its
/// LLVM major version (for bpf-linker's `llvm-<major>` feature).
fn nightly_libllvm() -> Result<(PathBuf, u32)> {
    let sysroot = probe("rustc", &["+nightly", "--print", "sysroot"])
        .context("`rustc +nightly --print sysroot` failed: the nightly toolchain is required")?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .collect();
    found.sort();
    let Some(path) = found.pop() else {
        bail!("no libLLVM.so.* in {}", lib.display());
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let major = name
        .trim_start_matches("libLLVM.so.")
        .split(['.', '-'])
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read the LLVM version from {name}"))?;
    Ok((path, major))
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Ok(home.into());
    }
    let home = std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// Installs the Debian package of each missing tool (one `apt-get update`
/// first, and only if something is missing).
pub fn debian_packages(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|(_, package)| *package)
        .collect();
    for (tool, package) in tools {
        if !missing.contains(package) {
            step(&format!("{package} ({tool})"), "ok (already present)");
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    cargo::run(Command::new("apt-get").args(["update", "-q"]))?;
    cargo::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    step(&missing.join(", "), "installed");
    Ok(())
}

fn on_path(tool: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    // The sbin dirs too: `ip` lives there and PATH may lack them.
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|dir| dir.join(tool).is_file())
}
