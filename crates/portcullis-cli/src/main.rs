//! `portcullis`: the gateway binary. A thin shell over the `portcullis` library: it reads the
//! configuration file, sets up logging, keys and the session store, and serves.

mod config;
#[cfg(test)]
mod config_properties;
mod frontends;
mod keyfile;
mod limits;
mod listener;
mod serve;
mod telemetry;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's allocator: a proxied request allocates and frees many small
/// objects across two connections (header maps, bytes, boxed futures), and glibc's
/// `malloc`/`free`/`malloc_consolidate` were ~12 % of the gateway's CPU under load
/// (`bench/RESULTS.md`, run 8).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `portcullis --version`: the crate version and the git commit it was built from (see
/// `build.rs`).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PORTCULLIS_GIT_COMMIT"),
    ")"
);

/// Exit code for an invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit code when start-up fails for another reason (EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version = VERSION,
    about = "Backend-for-Frontend security gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, short, default_value = "portcullis.toml")]
        config: PathBuf,
    },
    /// Validate a configuration file and list every error.
    Check {
        #[arg(long, short, default_value = "portcullis.toml")]
        config: PathBuf,
    },
    /// Create or upgrade the session store's schema (PostgreSQL, SQLite).
    Migrate {
        #[arg(long, short, default_value = "portcullis.toml")]
        config: PathBuf,
    },
    /// Session encryption keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Session administration: list or end a user's sessions (refresh tokens are revoked).
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// List sessions of a user (metadata only).
    List {
        #[arg(long, short, default_value = "portcullis.toml")]
        config: PathBuf,
        #[arg(long)]
        sub: Option<String>,
        #[arg(long)]
        sid: Option<String>,
        /// The frontend whose sessions to list (default: the top-level one).
        #[arg(long)]
        frontend: Option<String>,
    },
    /// End sessions of a user (all, or the one with `--sid`), or one by `--key`.
    End {
        #[arg(long, short, default_value = "portcullis.toml")]
        config: PathBuf,
        #[arg(long)]
        sub: Option<String>,
        #[arg(long)]
        sid: Option<String>,
        #[arg(long)]
        key: Option<String>,
        /// The frontend whose sessions to end (default: the top-level one).
        #[arg(long)]
        frontend: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new random key as `id:base64` (for `session.keys` or PORTCULLIS_SESSION_KEYS).
    Generate {
        /// Key id; defaults to a timestamp.
        #[arg(long)]
        id: Option<String>,
    },
    /// Add a new current key to a key file, keeping the old keys for decryption.
    Rotate {
        #[arg(long)]
        file: PathBuf,
        /// Drop keys beyond this many (oldest first). Only after every session sealed with
        /// them has expired.
        #[arg(long)]
        keep: Option<usize>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match config::load(&config) {
            Ok(c) => {
                for w in &c.warnings {
                    eprintln!("warning: {w}");
                }
                print_frontends(&c);
                if let Some(hash) = &c.spa_script_hash {
                    println!("spa.index_html_inject: the injected script's hash is {hash} (list it in script-src if your Content-Security-Policy forbids inline scripts)");
                }
                println!("{}: configuration is valid", config.display());
                ExitCode::SUCCESS
            }
            Err(errors) => report_config_errors(&config, &errors),
        },
        Command::Serve { config } => {
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(errors) => return report_config_errors(&config, &errors),
            };
            // Flushes buffered spans when `serve` returns (dropped after the runtime).
            let _telemetry = match telemetry::init(cfg.log_json, &cfg.telemetry) {
                Ok(guard) => Some(guard),
                Err(e) => {
                    eprintln!("portcullis: {e}");
                    return ExitCode::from(EXIT_UNAVAILABLE);
                }
            };
            match runtime().and_then(|rt| rt.block_on(serve::run(cfg, &config))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "portcullis stopped");
                    eprintln!("portcullis: {e}");
                    ExitCode::from(EXIT_UNAVAILABLE)
                }
            }
        }
        Command::Migrate { config } => {
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(errors) => return report_config_errors(&config, &errors),
            };
            let result = runtime().and_then(|rt| {
                rt.block_on(async {
                    portcullis_session::connect(&cfg.store_url)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(())
                })
            });
            match result {
                Ok(()) => {
                    println!("session store schema is up to date");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("portcullis migrate: {e}");
                    ExitCode::from(EXIT_UNAVAILABLE)
                }
            }
        }
        Command::Sessions { command } => sessions(command),
        Command::Keys { command } => match command {
            KeysCommand::Generate { id } => {
                let id = id.unwrap_or_else(keyfile::default_key_id);
                println!("{}", portcullis::session::Key::generate_spec(&id));
                ExitCode::SUCCESS
            }
            KeysCommand::Rotate { file, keep } => match keyfile::rotate(&file, keep) {
                Ok(id) => {
                    println!("{}: new current key {id}", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("portcullis keys rotate: {e}");
                    ExitCode::from(EXIT_UNAVAILABLE)
                }
            },
        },
    }
}

fn sessions(command: SessionsCommand) -> ExitCode {
    let (config, sub, sid, key, end, frontend) = match command {
        SessionsCommand::List {
            config,
            sub,
            sid,
            frontend,
        } => (config, sub, sid, None, false, frontend),
        SessionsCommand::End {
            config,
            sub,
            sid,
            key,
            frontend,
        } => (config, sub, sid, key, true, frontend),
    };
    if sub.is_none() && sid.is_none() && key.is_none() {
        eprintln!("portcullis sessions: give --sub and/or --sid (or --key to end one session)");
        return ExitCode::from(EXIT_CONFIG);
    }
    let cfg = match config::load(&config) {
        Ok(c) => c,
        Err(errors) => return report_config_errors(&config, &errors),
    };
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let gw = serve::build_gateway(
                cfg.gateway,
                serve::frontend_specs(cfg.frontends)?,
                &cfg.keys,
                &cfg.store_url,
                &cfg.data_dir,
            )
            .await?;
            let gw = portcullis::admin::frontend(&gw, frontend.as_deref())
                .map_err(|_| format!("no frontend named {:?}", frontend.unwrap_or_default()))?;
            let result = match (key, end) {
                (Some(key), _) => {
                    let ended = portcullis::admin::end_session(&gw, &key).await;
                    ended.map(|e| serde_json::json!({ "ended": usize::from(e) }))
                }
                (None, true) => portcullis::admin::end_sessions(&gw, sub, sid)
                    .await
                    .map(|n| serde_json::json!({ "ended": n })),
                (None, false) => portcullis::admin::list_sessions(&gw, sub, sid).await,
            };
            result.map_err(|e| e.to_string())
        })
    });
    match result {
        Ok(v) => {
            println!("{v:#}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis sessions: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

/// `portcullis check`: what each frontend answers for and which cookie it uses.
fn print_frontends(c: &config::Config) {
    let line = |name: &str,
                host: Option<&str>,
                path: Option<&str>,
                s: &portcullis::settings::GatewaySettings| {
        let cors = s.cors.as_ref().map_or_else(
            || "none".to_owned(),
            |c| {
                c.allowed_origins
                    .iter()
                    .filter_map(|o| o.to_str().ok())
                    .collect::<Vec<_>>()
                    .join(" ")
            },
        );
        println!(
            "frontend {name}: host {}, path {}, client_id {}, session cookie {} (Path=/), partition {:?}, CORS origins: {cors}",
            host.unwrap_or("any"),
            path.unwrap_or("/"),
            s.oidc.client_id,
            s.cookies.session_name(),
            s.session.partition,
        );
    };
    line(
        portcullis::frontend::DEFAULT_FRONTEND,
        None,
        None,
        &c.gateway,
    );
    for f in &c.frontends {
        let s = &f.settings;
        line(
            &s.name,
            s.match_host.as_deref(),
            s.match_path.as_deref(),
            &s.settings,
        );
    }
    for f in &c.frontends {
        if let Some(hash) = &f.spa_script_hash {
            println!("frontend {}: index_html_inject: the injected script's hash is {hash} (list it in script-src if your Content-Security-Policy forbids inline scripts)", f.settings.name);
        }
    }
    if c.frontends.iter().any(|f| f.settings.match_path.is_some()) {
        println!("note: path frontends share Path=/ cookies (the __Host- prefix requires Path=/) and are kept apart by cookie name and session partition");
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn report_config_errors(path: &std::path::Path, errors: &[String]) -> ExitCode {
    eprintln!(
        "{}: invalid configuration ({} error{}):",
        path.display(),
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    for e in errors {
        eprintln!("  - {e}");
    }
    ExitCode::from(EXIT_CONFIG)
}
