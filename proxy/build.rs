//! Compiles the kernel programs (`ebpf/programs`) for the BPF target and puts
//! the object in OUT_DIR, where `datapath::loader` embeds it.
fn main() -> aya_build::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root_dir = format!("{manifest_dir}/../ebpf/programs");
    // aya-build watches the programs' own folder only; the layouts they
    // share with the agent live in the ABI crate, and a change there must
    // rebuild the object too, or the two would disagree on every map.
    println!("cargo:rerun-if-changed={manifest_dir}/../ebpf/abi");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "switchyard-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
