//! The `pailfs` command: parses input (expanding `-o` lists) and runs the chosen subcommand.

use std::process::ExitCode;

use clap::Parser;
use pailfs::cli::{mount_flag_takes_value, Cli, Command, RemoteAction};
use pailfs::config::options::{expand_o_options, mount_helper_args, HelperArgs};
use pailfs::config::MountConfig;
use pailfs::daemon::{run_mount, spawn_daemon, Readiness};

fn init_logging(debug: bool, log_file: Option<&std::path::Path>) {
    use tracing_subscriber::EnvFilter;
    // fuser warns when it finds the mount already gone after `fusermount3 -u`: routine, not news.
    let default = if debug {
        "info,fuser=warn,pailfs=debug"
    } else {
        "warn,fuser=error,pailfs=info"
    };
    let filter = EnvFilter::try_from_env("PAILFS_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let file = log_file.and_then(|path| {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!(
                    "pailfs: cannot open log file {}: {e}; logging to stderr",
                    path.display()
                );
                None
            }
        }
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match file {
        Some(f) => builder
            .with_writer(std::sync::Mutex::new(f))
            .with_ansi(false)
            .try_init(),
        None => {
            // SAFETY: isatty has no preconditions.
            let tty = unsafe { libc::isatty(2) } == 1;
            builder
                .with_writer(std::io::stderr)
                .with_ansi(tty)
                .try_init()
        }
    };
}

/// Large read buffers are allocated and freed by different threads; glibc's default dynamic
/// mmap threshold moves them into per-thread arenas that keep the memory after it is freed.
/// A fixed threshold keeps every buffer of 1 MiB or more in its own mapping, returned on free.
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Reads a secret from stdin: asked without echo on a terminal, the first line otherwise.
fn read_secret(prompt: &str) -> Result<String, String> {
    use std::io::BufRead;
    // SAFETY: isatty only queries the descriptor.
    let terminal = unsafe { libc::isatty(0) } == 1;
    let mut saved: Option<libc::termios> = None;
    if terminal {
        eprint!("{prompt}");
        // SAFETY: tcgetattr/tcsetattr on stdin with a struct we own; echo is restored below.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) == 0 {
                saved = Some(t);
                t.c_lflag &= !libc::ECHO;
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
    }
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if let Some(t) = saved {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        eprintln!();
    }
    read.map_err(|e| format!("cannot read the secret key: {e}"))?;
    let secret = line.trim_end_matches(['\r', '\n']).to_string();
    if secret.is_empty() {
        return Err("no secret key given on stdin".into());
    }
    Ok(secret)
}

fn run_remote(action: RemoteAction) -> Result<String, String> {
    use pailfs::config::remotes;
    let mut file = remotes::load()?;
    match action {
        RemoteAction::Add {
            name,
            location,
            endpoint_url,
            region,
            force_path_style,
            virtual_hosted_style,
            access_key_id,
            provider,
            namespace,
        } => {
            remotes::check_name(&name)?;
            let (endpoint_url, region, preset_path_style) = match &provider {
                Some(p) => {
                    let (e, r, path) = pailfs::config::providers::apply(
                        p,
                        endpoint_url,
                        region,
                        namespace.as_deref(),
                    )?;
                    (e, r, Some(path))
                }
                None => (endpoint_url, region, None),
            };
            let secret_access_key = match &access_key_id {
                Some(_) => Some(read_secret(&format!("Secret key for remote '{name}': "))?),
                None => None,
            };
            let path_style = match (force_path_style, virtual_hosted_style) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => preset_path_style,
            };
            file.remotes.insert(
                name.clone(),
                remotes::Remote {
                    location,
                    endpoint_url,
                    region,
                    path_style,
                    access_key_id,
                    secret_access_key,
                },
            );
            remotes::save(&file)?;
            Ok(format!(
                "remote '{name}' saved in {}; mount it with: pailfs mount @{name} MOUNTPOINT\n",
                remotes::remotes_path().display()
            ))
        }
        RemoteAction::List => Ok(file
            .remotes
            .iter()
            .map(|(name, r)| format!("{name}\t{}\n", r.location))
            .collect()),
        RemoteAction::Show { name } => file
            .remotes
            .get(&name)
            .map(|r| r.describe(&name))
            .ok_or_else(|| format!("no remote named '{name}'")),
        RemoteAction::Remove { name } => {
            if file.remotes.remove(&name).is_none() {
                return Err(format!("no remote named '{name}'"));
            }
            remotes::save(&file)?;
            Ok(format!("remote '{name}' removed\n"))
        }
    }
}

/// The man page and shell completions, from the clap definitions (so they never drift).
fn generate(
    man: Option<std::path::PathBuf>,
    completions: Option<std::path::PathBuf>,
) -> Result<(), String> {
    use clap::CommandFactory;
    let write = |path: std::path::PathBuf, bytes: Vec<u8>| {
        std::fs::write(&path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    if let Some(dir) = man {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Examples, fstab, environment, files and exit status: written by hand, shared by
        // pailfs(1) and pailfs-mount(1).
        const SECTIONS: &str = include_str!("../man/pailfs.sections");
        // Without clap's `help` subcommands, which would name pailfs-help(1) pages.
        fn without_help(command: clap::Command) -> clap::Command {
            command
                .disable_help_subcommand(true)
                .mut_subcommands(without_help)
        }
        // A page for the command and one for every visible subcommand, at any depth
        // (pailfs-remote-add(1)): each page names its subcommands' pages.
        fn pages(
            command: &clap::Command,
            name: &str,
            out: &mut Vec<(String, Vec<u8>)>,
        ) -> Result<(), String> {
            let mut page = Vec::new();
            clap_mangen::Man::new(command.clone().name(name.to_string()))
                .render(&mut page)
                .map_err(|e| e.to_string())?;
            // pailfs-mount(1) holds every flag, so the examples go there as well.
            if name == "pailfs" || name == "pailfs-mount" {
                page.extend_from_slice(SECTIONS.as_bytes());
            }
            out.push((name.to_string(), page));
            for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
                pages(sub, &format!("{name}-{}", sub.get_name()), out)?;
            }
            Ok(())
        }
        let mut all = Vec::new();
        pages(&without_help(Cli::command()), "pailfs", &mut all)?;
        for (name, page) in all {
            write(dir.join(format!("{name}.1")), page)?;
        }
    }
    if let Some(dir) = completions {
        use clap_complete::Shell;
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for (shell, name) in [
            (Shell::Bash, "pailfs.bash"),
            (Shell::Zsh, "_pailfs"),
            (Shell::Fish, "pailfs.fish"),
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "pailfs", &mut out);
            write(dir.join(name), out)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    tune_allocator();
    let raw = match mount_helper_args(std::env::args().collect()) {
        HelperArgs::Plain(args) | HelperArgs::Mount(args) => args,
        HelperArgs::Fake => return ExitCode::SUCCESS,
    };
    let args = match expand_o_options(raw, mount_flag_takes_value) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pailfs: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args.clone());
    match cli.command {
        Command::Status { mountpoint, json } => match mountpoint {
            Some(path) => match pailfs::control::query(&path) {
                Ok(text) if json => {
                    println!("{}", pailfs::status::json(&text));
                    ExitCode::SUCCESS
                }
                Ok(text) => {
                    print!("{}", pailfs::status::render(&text));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pailfs: {e}");
                    ExitCode::FAILURE
                }
            },
            None => {
                let mounts = pailfs::control::live_mounts();
                if json {
                    let each: Vec<String> =
                        mounts.iter().map(|t| pailfs::status::json(t)).collect();
                    println!("[{}]", each.join(","));
                } else if mounts.is_empty() {
                    println!("no pailfs mounts are running");
                } else {
                    for text in &mounts {
                        println!("{}", pailfs::status::render(text));
                    }
                }
                ExitCode::SUCCESS
            }
        },
        Command::Generate { man, completions } => match generate(man, completions) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pailfs: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Remote { action } => match run_remote(action) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pailfs: {e}");
                ExitCode::from(2)
            }
        },
        Command::Presign {
            path,
            expires,
            method,
        } => {
            if expires > pailfs::store::PRESIGN_MAX || expires.as_secs() == 0 {
                eprintln!(
                    "pailfs: --expires must be between 1 second and 7 days (604800 s): SigV4 pre-signed URLs cannot live longer"
                );
                return ExitCode::from(2);
            }
            match pailfs::control::presign(&path, method, expires) {
                Ok(url) => {
                    println!("{url}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pailfs: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Mount(mount) => {
            let mut readiness = Readiness::from_env();
            init_logging(
                mount.debug,
                mount.log_file.as_deref().filter(|_| mount.foreground),
            );
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
                    Ok((log, notes)) => {
                        for note in notes {
                            eprintln!("pailfs: {note}");
                        }
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
