use std::process::ExitCode;

use clap::Parser;
use switchyard::{
    agent,
    cli::{Cli, Command},
    datapath::loader,
    services_view,
};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match dispatch(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("switchyard: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => {
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
        Command::Cleanup(args) => loader::cleanup(&args.pins.bpffs)?,
    }
    Ok(())
}
