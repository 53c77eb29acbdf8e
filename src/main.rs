//! The `citygate` command line: serve (the default), check-config, accounts, keys, plans,
//! invoices, datasets, simulate.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use citygate::config::{Config, DEFAULT_CONFIG_PATH, DatasetConfig};
use citygate::market::Store;
use citygate::market::keys::{KeyKind, KeySpec, check_device_scope};
use citygate::market::plans::NewPlan;
use citygate::market::{NewAccount, Role};
use citygate::model::now_micros;
use citygate::simulate::{self, SimFormat, SimulateOptions};
use citygate::{App, StartOptions, telemetry};

#[derive(Parser)]
#[command(name = "citygate", version, about = "A gateway for city sensor data")]
struct Cli {
    /// Config file; default: config/citygate.toml if it exists, else the built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
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
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Price datasets: plans.
    Plans {
        #[command(subcommand)]
        command: PlansCommand,
    },
    /// Bill subscribers: invoices per calendar month.
    Invoices {
        #[command(subcommand)]
        command: InvoicesCommand,
    },
    /// Inspect datasets.
    Datasets {
        #[command(subcommand)]
        command: DatasetsCommand,
    },
    /// Push realistic readings to a running gateway.
    Simulate(SimulateArgs),
}

#[derive(Subcommand)]
enum AccountsCommand {
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
enum KeysCommand {
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
    CreateDevice {
        /// The provider account that owns the datasets.
        #[arg(long)]
        provider: String,
        /// Datasets the key may write, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        datasets: Vec<String>,
    },
    /// Create a provider key (reads the provider's dataset rejects); prints the secret.
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
enum PlansCommand {
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
        /// The plan id (default: generated).
        #[arg(long)]
        id: Option<String>,
    },
    /// List a dataset's plans, withdrawn ones too.
    List {
        #[arg(long)]
        dataset: String,
    },
    /// Take a plan off offer; its subscriptions run on.
    Withdraw { id: String },
}

#[derive(Subcommand)]
enum InvoicesCommand {
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
enum DatasetsCommand {
    /// List the configured datasets and their fields.
    List,
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Base URL of the gateway.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http: String,
    /// Publish over MQTT 5 to this URL instead of HTTP, e.g. mqtt://127.0.0.1:1883.
    #[arg(long, value_name = "URL")]
    mqtt: Option<String>,
    /// MQTT QoS (0, 1 or 2).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Device key (or CITYGATE_KEY).
    #[arg(long, env = "CITYGATE_KEY", hide_env_values = true)]
    key: String,
    /// Readings per second in total; 0 for as fast as possible.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Sensors per dataset.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The config to use: `--config`, else `config/citygate.toml` when present, else built in.
fn load_config(path: Option<&Path>) -> Result<Config> {
    let default = Path::new(DEFAULT_CONFIG_PATH);
    let path = path.or_else(|| default.exists().then_some(default));
    Ok(Config::load(path)?)
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let command = cli.command.unwrap_or(Command::Serve {
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
        Command::Keys { command } => {
            let config = load_config(cli.config.as_deref())?;
            let store = open_store(&config).await?;
            keys(&config, &store, command).await
        }
        Command::Accounts { command } => {
            let config = load_config(cli.config.as_deref())?;
            let store = open_store(&config).await?;
            accounts(&store, command).await
        }
        Command::Plans { command } => {
            let config = load_config(cli.config.as_deref())?;
            let store = open_store(&config).await?;
            store.sync_catalog(&config).await?;
            plans(&store, command).await
        }
        Command::Invoices {
            command: InvoicesCommand::Generate { period },
        } => {
            let config = load_config(cli.config.as_deref())?;
            let store = open_store(&config).await?;
            let invoices = store.generate_invoices(&period, now_micros()).await?;
            println!(
                "{:<22} {:<24} {:<4} {:>12} {:>12} status",
                "invoice", "account", "cur", "total", "due"
            );
            for i in &invoices {
                println!(
                    "{:<22} {:<24} {:<4} {:>12} {:>12} {:?}",
                    i.id, i.account, i.currency, i.total_minor, i.due_minor, i.status
                );
            }
            eprintln!("{} invoice(s) for {period}", invoices.len());
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

/// Opens the marketplace database the config names, with the config's providers in it.
async fn open_store(config: &Config) -> Result<Store> {
    let location = config.database();
    let store = Store::connect(&location, 2)
        .await
        .with_context(|| format!("opening the database ({location})"))?;
    for ds in &config.datasets {
        store.ensure_provider(&ds.provider, &ds.publisher).await?;
    }
    Ok(store)
}

/// The datasets a key may name: the config's and those created over the API.
async fn catalog(config: &Config, store: &Store) -> Result<Vec<DatasetConfig>> {
    let mut all = config.datasets.clone();
    for d in store.catalog().await? {
        if !all.iter().any(|c| c.id == d.spec.id) {
            all.push(d.spec);
        }
    }
    Ok(all)
}

fn show_time(t: Option<i64>) -> String {
    t.map_or("-".into(), citygate::pipeline::decode::time::format_rfc3339)
}

async fn accounts(store: &Store, command: AccountsCommand) -> Result<ExitCode> {
    match command {
        AccountsCommand::Create {
            role,
            name,
            sector,
            email,
            id,
        } => {
            let role = Role::parse(&role).context("role")?;
            let (account, key) = store
                .create_account_with_key(NewAccount {
                    id,
                    role,
                    name,
                    sector,
                    email,
                })
                .await?;
            eprintln!(
                "created {} account {} with key {}; the secret is shown once:",
                role.as_str(),
                account.id,
                key.key.id
            );
            println!("{}", key.secret);
        }
        AccountsCommand::List => {
            println!("{:<24} {:<10} {:<12} name", "id", "role", "sector");
            for a in store.list_accounts().await? {
                println!(
                    "{:<24} {:<10} {:<12} {}",
                    a.id,
                    a.role.as_str(),
                    a.sector,
                    a.name
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn plans(store: &Store, command: PlansCommand) -> Result<ExitCode> {
    match command {
        PlansCommand::Create {
            dataset,
            name,
            kind,
            currency,
            price_minor,
            per_1000_minor,
            delay,
            aggregate,
            id,
        } => {
            let kind = serde_json::from_value(serde_json::Value::String(kind)).context("kind")?;
            let plan = store
                .create_plan(
                    &dataset,
                    NewPlan {
                        id,
                        name,
                        kind,
                        currency,
                        price_minor,
                        per_1000_minor,
                        delay,
                        aggregate,
                    },
                )
                .await?;
            eprintln!("created plan {} on {}", plan.id, plan.dataset);
            println!("{}", plan.id);
        }
        PlansCommand::List { dataset } => {
            println!(
                "{:<24} {:<8} {:<4} {:>10} {:>10} {:<8} {:<8} {:<7} name",
                "id", "kind", "cur", "monthly", "per_1000", "delay", "aggr", "offered"
            );
            for p in store.plans_of(&dataset, true).await? {
                let window = |d: Option<Duration>| {
                    d.map_or("-".to_string(), |d| {
                        humantime::format_duration(d).to_string()
                    })
                };
                println!(
                    "{:<24} {:<8} {:<4} {:>10} {:>10} {:<8} {:<8} {:<7} {}",
                    p.id,
                    p.kind.as_str(),
                    p.currency,
                    p.price_minor,
                    p.per_1000_minor,
                    window(p.delay),
                    window(p.aggregate),
                    if p.active { "yes" } else { "no" },
                    p.name
                );
            }
        }
        PlansCommand::Withdraw { id } => {
            if !store.withdraw_plan(&id).await? {
                bail!("no plan `{id}` on offer");
            }
            eprintln!("plan {id} withdrawn; its subscriptions run on");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn keys(config: &Config, store: &Store, command: KeysCommand) -> Result<ExitCode> {
    match command {
        KeysCommand::CreateDevice { provider, datasets } => {
            check_device_scope(&catalog(config, store).await?, &provider, &datasets)?;
            let new = store
                .create_key(KeyKind::Device, &provider, &datasets)
                .await?;
            eprintln!(
                "created device key {} for {provider} ({}); the secret is shown once:",
                new.key.id,
                datasets.join(", ")
            );
            println!("{}", new.secret);
        }
        KeysCommand::CreateProvider { provider } => {
            if store.account(&provider).await?.is_none() {
                bail!("no provider account `{provider}`");
            }
            let new = store.create_key(KeyKind::Provider, &provider, &[]).await?;
            eprintln!(
                "created provider key {} for {provider}; the secret is shown once:",
                new.key.id
            );
            println!("{}", new.secret);
        }
        KeysCommand::Create {
            account,
            kind,
            datasets,
            label,
            expires_in,
        } => {
            let kind = KeyKind::parse(&kind).context("kind")?;
            if kind == KeyKind::Device {
                check_device_scope(&catalog(config, store).await?, &account, &datasets)?;
            }
            let expires_at = expires_in.map(|d| now_micros() + d.as_micros() as i64);
            let new = store
                .create_key_with(KeySpec {
                    kind,
                    account: account.clone(),
                    label,
                    datasets,
                    expires_at,
                })
                .await?;
            eprintln!(
                "created {} key {} for {account}, expires {}; the secret is shown once:",
                kind.as_str(),
                new.key.id,
                show_time(expires_at)
            );
            println!("{}", new.secret);
        }
        KeysCommand::Rotate { id, overlap } => {
            let new = store.rotate_key(&id, overlap).await?;
            eprintln!(
                "key {id} is replaced by {} and stops working in {}; the new secret is shown once:",
                new.key.id,
                humantime::format_duration(overlap)
            );
            println!("{}", new.secret);
        }
        KeysCommand::List { account } => {
            println!(
                "{:<18} {:<10} {:<20} {:<8} {:<20} datasets",
                "id", "kind", "account", "state", "expires"
            );
            let keys = match &account {
                Some(a) => store.account_keys(a).await?,
                None => store.list_keys().await?,
            };
            let now = now_micros();
            for key in keys {
                let state = if key.revoked_at.is_some() {
                    "revoked"
                } else if !key.is_live(now) {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{:<18} {:<10} {:<20} {:<8} {:<20} {}",
                    key.id,
                    key.kind.as_str(),
                    key.account,
                    state,
                    show_time(key.expires_at),
                    key.datasets.join(",")
                );
            }
        }
        KeysCommand::Revoke { id } => {
            if store.revoke_key(&id).await? {
                println!("revoked {id}");
            } else {
                bail!("no active key with id `{id}`");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
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
