//! The running kernel's verifier accepts every program in the eBPF object,
//! each loaded on its own so one rejection does not hide another, with the
//! verifier's log in the failure. `cargo xtask vm` runs this on every kernel
//! of the matrix; it is the first thing to fail when a kernel is too old or a
//! program change trips an older verifier.

use anyhow::{Result, ensure};
use aya::{
    EbpfLoader,
    programs::{Program, ProgramError},
};
use switchyard::datapath::{
    feature_probe,
    kernel_features::Feature,
    loader::{
        self, COMPAT_PROGRAMS, PACKET_PROGRAMS, SOCK_RELEASE_PROGRAM, SOCKET_PROGRAMS,
        socket_program,
    },
    sock_storage,
    xdp_attach::XDP_PROGRAM,
};
use switchyard_tests::{
    BpfFs, CapabilitySet,
    control_flow::{Insn, refused_back_edges},
    stack_depth::{Insn as StackInsn, MAX_STACK, deepest_chain, total},
};

/// Whether the running kernel has `bpf_set_retval`: without it the forward
/// hooks' first build is never loaded (the verifier refuses the helper; the
/// agent attaches the `_compat` build) and is left out here.
fn set_retval() -> bool {
    feature_probe::kernel_features().available(Feature::BpfSetRetval)
}

/// Whether the running kernel has XDP's device map: without it the XDP
/// program is never loaded (the kernel table says so).
fn xdp() -> bool {
    !switchyard_tests::kernel::lacks(Feature::XdpDeviceMap)
}

/// Loads every program of the object the running kernel can have on its
/// own with its maps pinned on `bpffs` (as the agent does, the socket
/// storage map first); returns the names loaded and a line per rejection.
fn load_every_program(bpffs: &BpfFs) -> Result<(Vec<String>, Vec<String>)> {
    let mut not_here: Vec<&str> = if set_retval() {
        Vec::new()
    } else {
        COMPAT_PROGRAMS.iter().map(|(name, _)| *name).collect()
    };
    if !xdp() {
        not_here.push(XDP_PROGRAM);
    }
    sock_storage::ensure_pinned(bpffs.path())?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(bpffs.path())
        .load(loader::object())?;
    let mut loaded = Vec::new();
    let mut rejected = Vec::new();
    for (name, program) in ebpf.programs_mut() {
        if not_here.contains(&name) {
            continue;
        }
        let result = match program {
            Program::CgroupSockAddr(p) => p.load(),
            Program::CgroupSock(p) => p.load(),
            Program::SchedClassifier(p) => p.load(),
            Program::Xdp(p) => p.load(),
            other => {
                rejected.push(format!(
                    "{name}: program type {:?} has no loader here",
                    other.prog_type()
                ));
                continue;
            }
        };
        match result {
            Ok(()) => loaded.push(name.to_owned()),
            Err(error) => rejected.push(format!("{name}: {}", describe(&error))),
        }
    }
    loaded.sort();
    Ok((loaded, rejected))
}

/// What the agent's lists name: every program it loads on some kernel,
/// less the builds this one refuses.
fn expected_programs() -> Vec<String> {
    let set_retval = set_retval();
    let mut expected: Vec<String> = SOCKET_PROGRAMS
        .iter()
        .map(|hook| socket_program(hook, set_retval))
        .chain(COMPAT_PROGRAMS.iter().map(|(_, compat)| *compat))
        .chain(PACKET_PROGRAMS.iter().map(|(name, _)| *name))
        .chain([SOCK_RELEASE_PROGRAM])
        .chain(xdp().then_some(XDP_PROGRAM))
        .map(str::to_owned)
        .collect();
    expected.sort();
    expected.dedup();
    expected
}

#[test]
fn every_program_in_the_object_loads() -> Result<()> {
    // The maps are declared pinned; a private bpffs keeps them off the host's.
    let bpffs = BpfFs::new()?;
    let (loaded, rejected) = load_every_program(&bpffs)?;
    ensure!(rejected.is_empty(), "rejected:\n{}", rejected.join("\n\n"));
    // The agent's lists and the object agree, so the agent loads them all.
    assert_eq!(loaded, expected_programs());

    // The probe agrees with what just loaded: nothing it calls required is
    // missing, and the per-packet path is on.
    let features = feature_probe::kernel_features();
    assert_eq!(features.missing_required(), []);
    assert!(features.packet_path(), "{}", features.table());
    // Debian's kernels carry upstream version numbers, so tcx (6.6) follows
    // the release: 6.1 has none, 6.12 and later have it.
    if let Some(version) = release_version(&features.release) {
        assert_eq!(
            features.available(Feature::Tcx),
            version >= (6, 6),
            "{}",
            features.table()
        );
        assert_eq!(
            features.available(Feature::BpfSetRetval),
            version >= (5, 18),
            "{}",
            features.table()
        );
    }
    // `cargo xtask vm` puts the probe of each kernel in its report.
    if let Some(path) = std::env::var_os("SWITCHYARD_FEATURES_OUT") {
        std::fs::write(path, serde_json::to_string(features)?)?;
    }
    Ok(())
}

/// The capabilities loading needs, narrowed on this thread: with `BPF`,
/// `NET_ADMIN` and `PERFMON` every program loads, so the DaemonSet needs
/// no `SYS_RESOURCE` (maps are charged to the memory cgroup since 5.11)
/// and no `SYS_ADMIN` to load. Without `PERFMON` (or `SYS_ADMIN`, which
/// implies it) the verifier applies its rules for untrusted loaders (no
/// reads of uninitialised stack, Spectre v1 sanitation of pointer
/// arithmetic) and refuses some programs: the DaemonSet keeps `PERFMON`
/// for that, and the day this check fails it can go. Without `BPF` nothing
/// loads, which shows the narrowing takes effect.
#[test]
fn every_program_loads_with_bpf_net_admin_and_perfmon_alone() -> Result<()> {
    // Mounting the private bpffs needs SYS_ADMIN, so it comes first.
    let bpffs = BpfFs::new()?;
    let without_bpf = CapabilitySet::named(&["NET_ADMIN", "PERFMON"])?
        .effective_during(|| sock_storage::ensure_pinned(bpffs.path()))?;
    ensure!(
        without_bpf.is_err(),
        "a map was created without CAP_BPF: the capabilities were not narrowed"
    );
    let (loaded, rejected) = CapabilitySet::named(&["BPF", "NET_ADMIN", "PERFMON"])?
        .effective_during(|| load_every_program(&bpffs))??;
    ensure!(
        rejected.is_empty(),
        "rejected with BPF, NET_ADMIN and PERFMON:\n{}",
        rejected.join("\n\n")
    );
    assert_eq!(loaded, expected_programs());

    let other = BpfFs::new()?;
    let (_, rejected) = CapabilitySet::named(&["BPF", "NET_ADMIN"])?
        .effective_during(|| load_every_program(&other))??;
    ensure!(
        !rejected.is_empty(),
        "every program now loads without PERFMON: drop it from deploy/daemonset.yaml, \
         the README's security section and this check"
    );
    Ok(())
}

/// (major, minor) of a release such as `6.1.0-50-cloud-amd64`.
fn release_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The error with the verifier's log, whose tail names the rejected
/// instruction.
fn describe(error: &ProgramError) -> String {
    match error {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("{io_error}\n{}", tail.join("\n"))
        }
        other => format!("{other}"),
    }
}

/// Every function of the object passes 6.1's control-flow check, whatever
/// kernel runs this (see `switchyard_tests::control_flow`).
#[test]
fn no_function_has_a_loop_shape_the_6_1_verifier_refuses() -> Result<()> {
    let object = aya_obj::Object::parse(loader::object())?;
    let mut refused = Vec::new();
    for function in object.functions.values() {
        let insns: Vec<Insn> = function
            .instructions
            .iter()
            .map(|insn| Insn {
                code: insn.code,
                off: insn.off,
            })
            .collect();
        for (from, to) in refused_back_edges(&insns) {
            refused.push(format!("{}: insn {from} -> {to}", function.name));
        }
    }
    ensure!(
        refused.is_empty(),
        "back edges along a fall-through (6.1 refuses them): {refused:?}"
    );
    ensure!(!object.functions.is_empty(), "the object has functions");
    Ok(())
}

/// No program's call chain passes 6.1's 512 bytes of stack, with its
/// frames rounded to 32 bytes, whatever kernel runs this (later kernels
/// round to 16, so a chain 6.1 refuses loads on them; see
/// `switchyard_tests::stack_depth`).
#[test]
fn no_call_chain_passes_the_6_1_stack_limit() -> Result<()> {
    let mut object = aya_obj::Object::parse(loader::object())?;
    let text_sections = object
        .functions
        .keys()
        .map(|(section, _)| *section)
        .collect();
    object.relocate_calls(&text_sections)?;
    let mut too_deep = Vec::new();
    for (name, program) in &object.programs {
        let linked = &object.functions[&program.function_key()];
        let insns: Vec<StackInsn> = linked
            .instructions
            .iter()
            .map(|insn| StackInsn {
                code: insn.code,
                dst: insn.dst_reg(),
                src: insn.src_reg(),
                off: insn.off,
                imm: insn.imm,
            })
            .collect();
        let chain = deepest_chain(&insns);
        if total(&chain) > MAX_STACK {
            too_deep.push(format!("{name}: {} bytes along {chain:?}", total(&chain)));
        }
    }
    ensure!(
        too_deep.is_empty(),
        "call chains past 6.1's stack limit: {too_deep:?}"
    );
    ensure!(!object.programs.is_empty(), "the object has programs");
    Ok(())
}
