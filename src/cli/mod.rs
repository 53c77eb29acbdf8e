//! The `citygate` command line: serve (the default), check-config, accounts, keys, plans,
//! invoices, datasets, simulate. The administration commands are in [`admin`].

mod admin;
mod gateway;
mod query;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use citygate::config::{Config, DEFAULT_CONFIG_PATH};
use citygate::simulate::{self, SimFormat, SimulateOptions};
use citygate::{App, StartOptions, telemetry};

#[derive(Parser)]
#[command(name = "citygate", version, about = "A gateway for city sensor data")]
pub(crate) struct Cli {
    /// Config file; default: config/citygate.toml if it exists, else the built-in defaults.
    /// A file replaces the built-in config as a whole; CITYGATE__SECTION__KEY variables
    /// change single values.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Where the accounts, keys, plans and invoices commands go: the config's database, or a
/// running gateway's API.
#[derive(clap::Args)]
pub(crate) struct AdminArgs {
    /// Go through the API of the gateway at this URL (e.g. http://127.0.0.1:8080) instead
    /// of opening its database here.
    #[arg(long, global = true, value_name = "URL", env = "CITYGATE_API")]
    pub api: Option<String>,
    /// The key for --api: an admin key (a provider key manages its own keys and plans).
    #[arg(
        long,
        global = true,
        value_name = "KEY",
        env = "CITYGATE_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// Make the SQLite database if it does not exist (without this, a missing database is
    /// an error: the gateway makes it on its first start).
    #[arg(long, global = true)]
    pub create_database: bool,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the gateway (the default).
    Serve {
        /// Start even if the write-ahead log has corrupt records in the middle, dropping
        /// the damaged bytes (their readings are lost; every valid record is kept).
        #[arg(long)]
        skip_corrupt_wal: bool,
    },
    /// Check a config file; print every problem and exit 1 if there are any.
    CheckConfig,
    /// Manage accounts (admins, providers, subscribers).
    Accounts {
        #[command(subcommand)]
        command: AccountsCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Price datasets: plans.
    Plans {
        #[command(subcommand)]
        command: PlansCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Bill subscribers: invoices per calendar month.
    Invoices {
        #[command(subcommand)]
        command: InvoicesCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Inspect datasets.
    Datasets {
        #[command(subcommand)]
        command: DatasetsCommand,
    },
    /// Push realistic readings to a running gateway.
    Simulate(SimulateArgs),
    /// Read a dataset's history from a running gateway: raw readings (every page), the
    /// latest per sensor, or time buckets; as CSV, NDJSON, JSON, Arrow or Parquet.
    Query(query::QueryArgs),
}

#[derive(Subcommand)]
pub(crate) enum AccountsCommand {
    /// Create an account and its first key; prints the key's secret (shown once) alone on
    /// stdout.
    Create {
        #[arg(long, value_parser = ["admin", "provider", "subscriber"])]
        role: String,
        /// Organisation name.
        #[arg(long)]
        name: String,
        /// e.g. mobility, energy, research, public.
        #[arg(long)]
        sector: String,
        #[arg(long)]
        email: Option<String>,
        /// The account id (default: generated).
        #[arg(long)]
        id: Option<String>,
    },
    /// List accounts.
    List,
}

#[derive(Subcommand)]
pub(crate) enum KeysCommand {
    /// Create a key for an account; prints the secret (shown once) alone on stdout.
    Create {
        #[arg(long)]
        account: String,
        #[arg(long, value_parser = ["admin", "provider", "subscriber", "device"])]
        kind: String,
        /// Device keys: datasets it may write. Subscriber keys: datasets it is limited to.
        #[arg(long, value_delimiter = ',')]
        datasets: Vec<String>,
        #[arg(long, default_value = "")]
        label: String,
        /// Expire after this long, e.g. 90d.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// Rotate a key: prints the successor's secret; the old key works on for --overlap.
    Rotate {
        id: String,
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        overlap: Duration,
    },
    /// Create a device key; prints the secret (shown once) alone on stdout.
    ///
    /// The same as `keys create --account P --kind device --datasets …`.
    CreateDevice {
        /// The provider account that owns the datasets.
        #[arg(long)]
        provider: String,
        /// Datasets the key may write, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        datasets: Vec<String>,
    },
    /// Create a provider key; prints the secret (shown once) alone on stdout.
    ///
    /// A provider key manages the provider's datasets, plans and device keys and reads their
    /// rejects. The same as `keys create --account P --kind provider`.
    CreateProvider {
        #[arg(long)]
        provider: String,
    },
    /// List keys (never secrets).
    List {
        /// Only this account's keys.
        #[arg(long)]
        account: Option<String>,
    },
    /// Revoke a key by id; it stops working within a second.
    Revoke { id: String },
}

#[derive(Subcommand)]
pub(crate) enum PlansCommand {
    /// Add a plan to a dataset; prints its id on stdout.
    Create {
        #[arg(long)]
        dataset: String,
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["free", "monthly", "metered"])]
        kind: String,
        /// ISO 4217 code of a paid plan, e.g. DKK.
        #[arg(long)]
        currency: Option<String>,
        /// Monthly price in minor units (øre, cents).
        #[arg(long)]
        price_minor: Option<i64>,
        /// Metered price per 1000 readings delivered, in minor units.
        #[arg(long)]
        per_1000_minor: Option<i64>,
        /// Free plans: deliver readings this late, e.g. 15m.
        #[arg(long)]
        delay: Option<String>,
        /// Free plans: deliver only per-sensor aggregates over windows this long.
        #[arg(long)]
        aggregate: Option<String>,
        /// How far back history queries reach, e.g. 24h or 90d (default: no limit).
        #[arg(long)]
        history: Option<String>,
        /// The plan id (default: generated).
        #[arg(long)]
        id: Option<String>,
    },
    /// List plans, withdrawn ones too: of one dataset, or of every dataset.
    List {
        #[arg(long)]
        dataset: Option<String>,
    },
    /// Take a plan off offer; its subscriptions run on.
    Withdraw { id: String },
}

#[derive(Subcommand)]
pub(crate) enum InvoicesCommand {
    /// Write the invoices of a calendar month (UTC) from payments and metered usage; open
    /// invoices of that month are recomputed, paid ones kept. Usage a running gateway has
    /// not flushed yet (at most `[market] usage_flush_interval`) is not included.
    Generate {
        /// The month, YYYY-MM.
        #[arg(long)]
        period: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum DatasetsCommand {
    /// List the configured datasets and their fields.
    List,
}

#[derive(clap::Args)]
pub(crate) struct SimulateArgs {
    /// Base URL of the gateway.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http: String,
    /// Publish over MQTT 5 to this URL instead of HTTP, e.g. mqtt://127.0.0.1:1883.
    #[arg(long, value_name = "URL")]
    mqtt: Option<String>,
    /// MQTT QoS (0, 1 or 2).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// The device key.
    #[arg(long, env = "CITYGATE_KEY", hide_env_values = true)]
    key: String,
    /// Readings per second in total; 0 for as fast as possible.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Sensors per dataset, in all (the workers share them out).
    #[arg(long, default_value_t = 50)]
    sensors: usize,
    /// How long to run, e.g. 30s or 5m.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Readings per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Datasets to fill, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "traffic-counts,weather,energy-meters,air-quality"
    )]
    datasets: Vec<String>,
    /// Wire format.
    #[arg(long, value_enum, default_value_t = SimFormat::Json)]
    format: SimFormat,
    /// Requests in flight at once (MQTT: connections).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// No live counter line.
    #[arg(long)]
    quiet: bool,
}

/// The config to use: `--config`, else `config/citygate.toml` when present, else built in.
fn load_config(path: Option<&Path>) -> Result<Config> {
    let default = Path::new(DEFAULT_CONFIG_PATH);
    let path = path.or_else(|| default.exists().then_some(default));
    Ok(Config::load(path)?)
}

/// Where the accounts, keys, plans and invoices commands go: the gateway at `--api`, else
/// the database of the config.
async fn admin_target(config: Option<&Path>, args: &AdminArgs) -> Result<admin::Target> {
    if let Some(url) = &args.api {
        let key = args.api_key.as_deref().unwrap_or("");
        return admin::Target::open(Config::default(), "", Some((url, key)), false).await;
    }
    let default = Path::new(DEFAULT_CONFIG_PATH);
    let path = config.or_else(|| default.exists().then_some(default));
    let config = Config::load(path)?;
    let source = path.map_or("the built-in config".to_string(), |p| {
        p.display().to_string()
    });
    admin::Target::open(config, &source, None, args.create_database).await
}

pub(crate) async fn run(mut cli: Cli) -> Result<ExitCode> {
    let command = cli.command.take().unwrap_or(Command::Serve {
        skip_corrupt_wal: false,
    });
    match command {
        Command::Serve { skip_corrupt_wal } => {
            let admin_key = std::env::var("CITYGATE_ADMIN_KEY")
                .ok()
                .filter(|k| !k.is_empty());
            let options = StartOptions {
                skip_corrupt_wal,
                admin_key,
            };
            serve(cli.config.as_deref(), options).await
        }
        Command::CheckConfig => {
            let default = Path::new(DEFAULT_CONFIG_PATH);
            let path = cli
                .config
                .as_deref()
                .or_else(|| default.exists().then_some(default));
            match Config::load(path) {
                Ok(config) => {
                    println!(
                        "{}: ok ({} datasets)",
                        path.map_or("built-in config".to_string(), |p| p.display().to_string()),
                        config.datasets.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Accounts { command, admin } => {
            admin::accounts(&admin_target(cli.config.as_deref(), &admin).await?, command).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { command, admin } => {
            admin::keys(&admin_target(cli.config.as_deref(), &admin).await?, command).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plans { command, admin } => {
            admin::plans(&admin_target(cli.config.as_deref(), &admin).await?, command).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Invoices { command, admin } => {
            admin::invoices(&admin_target(cli.config.as_deref(), &admin).await?, command).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Datasets {
            command: DatasetsCommand::List,
        } => {
            let config = load_config(cli.config.as_deref())?;
            for ds in &config.datasets {
                println!(
                    "{}  ({}, {}, provider {})",
                    ds.id, ds.title, ds.licence, ds.provider
                );
                for f in &ds.fields {
                    let unit = f.unit.as_deref().unwrap_or("-");
                    let req = if f.required { " required" } else { "" };
                    println!("    {:<16} {:<6} {unit}{req}", f.name, f.ty.name());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Query(args) => {
            query::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate(args) => {
            let opts = SimulateOptions {
                http: args.http,
                mqtt: args.mqtt,
                qos: args.qos,
                key: args.key,
                rate: args.rate,
                sensors: args.sensors,
                duration: args.duration,
                batch: args.batch,
                datasets: args.datasets,
                format: args.format,
                concurrency: args.concurrency,
                progress: !args.quiet,
            };
            let summary = simulate::run(opts).await?;
            println!("{summary}");
            if let Some(first) = &summary.first_error {
                eprintln!("first error: {first}");
            }
            Ok(if summary.accepted > 0 || summary.sent == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

async fn serve(config_path: Option<&Path>, options: StartOptions) -> Result<ExitCode> {
    let config = load_config(config_path)?;
    telemetry::init_tracing(&config.log);
    // The handlers are in place before the gateway says it has started: a SIGTERM right after
    // start is a clean shutdown, not the default instant death.
    let stop = shutdown_signal()?;
    let mut app = App::start_with(config, options).await?;
    if let Some(secret) = app.first_admin_secret.take() {
        // Shown once, on stdout (never in the logs): the database keeps only its hash.
        println!("citygate: created the admin account; its key (shown once): {secret}");
    }
    stop.await;
    app.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}

/// Installs the SIGTERM and SIGINT (Ctrl-C) handlers; the future resolves on either.
#[cfg(unix)]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    })
}
