use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use switchyard::{
    agent,
    cli::{Cli, Command, OutputFormat, kube_proxy_config::KubeProxyConfiguration, services_view},
    datapath::{error_chain, hand_back, live_maps::LiveMaps},
    explain,
    node::kube_proxy_leftovers,
};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            // kube-client logs every failed request at error level; the
            // watchers report the same failure once, with its context.
            // aya logs a refused object BTF as a multi-line dump at warn;
            // the loader says what it means in one line.
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,kube_client=off,aya::bpf=error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    match dispatch(cli.command, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Each cause once: aya's errors behind `DatapathError` already
            // print theirs, so `{error:#}` would say them twice.
            eprintln!("switchyard: {}", error_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command, matches: &clap::ArgMatches) -> anyhow::Result<()> {
    match command {
        Command::Run(mut args) => {
            if let Some(path) = args.config.clone() {
                let explicit = matches
                    .subcommand_matches("run")
                    .ok_or_else(|| anyhow::anyhow!("run arguments missing"))?;
                let config = KubeProxyConfiguration::load(&path)?;
                for line in config.ignored() {
                    tracing::warn!(config = %path.display(), "{line}");
                }
                config.apply_to(&path, &mut args, explicit)?;
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(agent::run(*args))?;
        }
        Command::Services(args) => {
            let text = services_view::render(&args.pins.bpffs, args.output)?;
            print!("{text}");
        }
        Command::Cleanup(args) => {
            kube_proxy_leftovers::release_nat_hooks();
            let timeouts = args.conntrack.timeouts();
            let report = hand_back::hand_back(&args.pins.bpffs, &timeouts, args.drain_timeout)?;
            if report.cut > 0 {
                eprintln!(
                    "switchyard: {} connections were still live after {} of draining (--drain-timeout)",
                    report.cut,
                    humantime::format_duration(report.drained_for)
                );
            }
        }
        Command::CleanupKubeProxy => {
            let removed = kube_proxy_leftovers::remove()?;
            println!(
                "removed {} iptables chains, {} nftables tables{}",
                removed.iptables_chains,
                removed.nft_tables,
                if removed.ipvs { ", IPVS state" } else { "" }
            );
        }
        Command::Conntrack(args) => {
            let text = services_view::render_connections(&args.pins.bpffs, args.output)?;
            print!("{text}");
        }
        Command::Explain(args) => {
            let maps = LiveMaps::open(&args.pins.bpffs)?;
            let explanation = explain::explain(&maps, &args.query());
            match args.output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&explanation)?),
                OutputFormat::Table => print!("{}", explain::text(&explanation)),
            }
        }
    }
    Ok(())
}
