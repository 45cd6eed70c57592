//! The `pailfs` command: parses input (expanding `-o` lists) and runs the chosen subcommand.

use std::process::ExitCode;

use clap::Parser;
use pailfs::cli::{mount_flag_takes_value, Cli, Command};
use pailfs::config::options::expand_o_options;
use pailfs::config::MountConfig;
use pailfs::daemon::{run_mount, spawn_daemon, Readiness};

fn init_logging(debug: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if debug {
        "info,pailfs=debug"
    } else {
        "warn,pailfs=info"
    };
    let filter = EnvFilter::try_from_env("PAILFS_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // SAFETY: isatty has no preconditions.
    let tty = unsafe { libc::isatty(2) } == 1;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(tty)
        .try_init();
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().collect();
    let args = match expand_o_options(raw, mount_flag_takes_value) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pailfs: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args.clone());
    match cli.command {
        Command::Mount(mount) => {
            let mut readiness = Readiness::from_env();
            init_logging(mount.debug);
            let cfg = match MountConfig::from_args(&mount) {
                Ok(c) => c,
                Err(e) => {
                    let message = e.to_string();
                    readiness.failed(&message);
                    eprintln!("pailfs: {message}");
                    return ExitCode::from(2);
                }
            };
            if !cfg.foreground {
                eprintln!(
                    "pailfs: location read as {}",
                    cfg.location.describe(cfg.s3.endpoint.as_deref())
                );
                return match spawn_daemon(&args[1..], &cfg) {
                    Ok(log) => {
                        eprintln!(
                            "pailfs: mounted on {} (log: {log}; unmount with: fusermount3 -u {})",
                            cfg.mountpoint.display(),
                            cfg.mountpoint.display()
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("pailfs: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            if !readiness.is_daemon() {
                eprintln!(
                    "pailfs: location read as {}",
                    cfg.location.describe(cfg.s3.endpoint.as_deref())
                );
            }
            match run_mount(cfg, &mut readiness) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    readiness.failed(&e);
                    if !readiness.is_daemon() {
                        eprintln!("pailfs: {e}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
    }
}
