//! The administration commands (accounts, keys, plans, invoices). They run on the database
//! the config names, which is the gateway's own when run where the gateway runs, or, with
//! `--api URL`, through a running gateway's HTTP API, from anywhere. Either way a command
//! has what the API answers (JSON) and prints it the same way: a secret or a new id alone on
//! stdout, everything else on stderr.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::gateway::{Gateway, segment};
use super::{AccountsCommand, InvoicesCommand, KeysCommand, PlansCommand};
use citygate::config::{Config, DatabaseLocation, DatasetConfig};
use citygate::market::keys::{KeyKind, KeySpec, check_device_scope};
use citygate::market::plans::NewPlan;
use citygate::market::{NewAccount, Role, Store};
use citygate::model::now_micros;

/// Where the administration commands go.
pub(super) enum Target {
    /// The database the config names.
    Database { config: Box<Config>, store: Store },
    /// A running gateway's API.
    Gateway(Gateway),
}

impl Target {
    /// The gateway at `api`, else the config's database. The database must exist unless
    /// `create_database`: a command run in the wrong directory would otherwise make an
    /// empty one and print keys the running gateway has never heard of.
    pub(super) async fn open(
        config: Config,
        config_source: &str,
        api: Option<(&str, &str)>,
        create_database: bool,
    ) -> Result<Target> {
        if let Some((url, key)) = api {
            let gateway = Gateway::new(url, key)?;
            eprintln!("citygate: through {}", gateway.describe());
            return Ok(Target::Gateway(gateway));
        }
        let location = match config.database() {
            DatabaseLocation::Sqlite(path) => DatabaseLocation::Sqlite(absolute(&path)),
            other => other,
        };
        if let DatabaseLocation::Sqlite(path) = &location
            && !path.exists()
            && !create_database
        {
            let mut message = format!(
                "no citygate database at {} (the data_dir of {config_source}).\n\
                 The gateway makes it when it first starts: run this command in the directory \
                 the gateway runs in, with the same --config and CITYGATE__ variables; or \
                 through its API, from anywhere: --api http://HOST:PORT --api-key ADMIN_KEY; \
                 or pass --create-database to make an empty database here.",
                path.display()
            );
            if let Some(url) = answering_gateway(&config.http.listen).await {
                message.push_str(&format!(
                    "\nA gateway answers at {url}: its data is elsewhere. \
                     Try: --api {url} --api-key ADMIN_KEY"
                ));
            }
            bail!(message);
        }
        eprintln!("citygate: using the database {location} ({config_source})");
        let store = Store::connect(&location, 2)
            .await
            .with_context(|| format!("opening the database ({location})"))?;
        for ds in &config.datasets {
            store.ensure_provider(&ds.provider, &ds.publisher).await?;
        }
        Ok(Target::Database {
            config: Box::new(config),
            store,
        })
    }
}

fn absolute(path: &Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The URL of a citygate answering `/healthz` at `listen` (the config's HTTP address).
async fn answering_gateway(listen: &str) -> Option<String> {
    let addr = listen
        .replace("0.0.0.0", "127.0.0.1")
        .replace("[::]", "[::1]");
    let url = format!("http://{addr}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .ok()?;
    let answer = client.get(format!("{url}/healthz")).send().await.ok()?;
    answer.status().is_success().then_some(url)
}

/// A JSON value as a table cell: strings bare, `null` as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn time_cell(v: &Value) -> String {
    v.as_i64()
        .map_or("-".into(), citygate::calendar::format_rfc3339)
}

/// The secret of a created key (`{key, secret}`), alone on stdout.
fn show_secret(created: &Value) -> Result<()> {
    match created["secret"].as_str() {
        Some(secret) => {
            println!("{secret}");
            Ok(())
        }
        None => bail!("the answer holds no secret: {created}"),
    }
}

pub(super) async fn accounts(target: &Target, command: AccountsCommand) -> Result<()> {
    match command {
        AccountsCommand::Create {
            role,
            name,
            sector,
            email,
            id,
        } => {
            let created = match target {
                Target::Database { store, .. } => {
                    let role = Role::parse(&role).context("role")?;
                    let new = NewAccount {
                        id,
                        role,
                        name,
                        sector,
                        email,
                    };
                    let (account, key) = store.create_account_with_key(new).await?;
                    json!({"account": account, "key": {"key": key.key, "secret": key.secret}})
                }
                Target::Gateway(g) => {
                    let new = json!({"id": id, "role": role, "name": name, "sector": sector,
                                     "email": email});
                    g.post("/v1/accounts", new).await?
                }
            };
            eprintln!(
                "created {} account {} with key {}; the secret is shown once:",
                cell(&created["account"]["role"]),
                cell(&created["account"]["id"]),
                cell(&created["key"]["key"]["id"]),
            );
            show_secret(&created["key"])?;
        }
        AccountsCommand::List => {
            let all = match target {
                Target::Database { store, .. } => {
                    serde_json::to_value(store.list_accounts().await?)?
                }
                Target::Gateway(g) => g.get("/v1/accounts").await?,
            };
            println!("{:<24} {:<10} {:<12} name", "id", "role", "sector");
            for a in all.as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<10} {:<12} {}",
                    cell(&a["id"]),
                    cell(&a["role"]),
                    cell(&a["sector"]),
                    cell(&a["name"])
                );
            }
        }
    }
    Ok(())
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

/// Creates a key as `POST /v1/keys` does; `{key, secret}`.
async fn create_key(
    target: &Target,
    kind: KeyKind,
    account: &str,
    datasets: Vec<String>,
    label: String,
    expires_in: Option<Duration>,
) -> Result<Value> {
    Ok(match target {
        Target::Database { config, store } => {
            if kind == KeyKind::Device {
                check_device_scope(&catalog(config, store).await?, account, &datasets)?;
            }
            let expires_at = expires_in.map(|d| now_micros().saturating_add(d.as_micros() as i64));
            let new = store
                .create_key_with(KeySpec {
                    kind,
                    account: account.to_string(),
                    label,
                    datasets,
                    expires_at,
                })
                .await?;
            json!({"key": new.key, "secret": new.secret})
        }
        Target::Gateway(g) => {
            let expires_in = expires_in.map(|d| humantime::format_duration(d).to_string());
            let body = json!({"account": account, "kind": kind.as_str(), "datasets": datasets,
                              "label": label, "expires_in": expires_in});
            g.post("/v1/keys", body).await?
        }
    })
}

pub(super) async fn keys(target: &Target, command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::CreateDevice { provider, datasets } => {
            let list = datasets.join(", ");
            let created = create_key(
                target,
                KeyKind::Device,
                &provider,
                datasets,
                String::new(),
                None,
            )
            .await?;
            eprintln!(
                "created device key {} for {provider} ({list}); the secret is shown once:",
                cell(&created["key"]["id"])
            );
            show_secret(&created)?;
        }
        KeysCommand::CreateProvider { provider } => {
            let created = create_key(
                target,
                KeyKind::Provider,
                &provider,
                Vec::new(),
                String::new(),
                None,
            )
            .await
            .with_context(|| format!("a provider key for `{provider}`"))?;
            eprintln!(
                "created provider key {} for {provider}; the secret is shown once:",
                cell(&created["key"]["id"])
            );
            show_secret(&created)?;
        }
        KeysCommand::Create {
            account,
            kind,
            datasets,
            label,
            expires_in,
        } => {
            let kind = KeyKind::parse(&kind).context("kind")?;
            let created = create_key(target, kind, &account, datasets, label, expires_in).await?;
            eprintln!(
                "created {} key {} for {account}, expires {}; the secret is shown once:",
                kind.as_str(),
                cell(&created["key"]["id"]),
                time_cell(&created["key"]["expires_at"])
            );
            show_secret(&created)?;
        }
        KeysCommand::Rotate { id, overlap } => {
            let created = match target {
                Target::Database { store, .. } => {
                    let new = store.rotate_key(&id, overlap).await?;
                    json!({"key": new.key, "secret": new.secret})
                }
                Target::Gateway(g) => {
                    let overlap = humantime::format_duration(overlap).to_string();
                    let path = format!("/v1/keys/{}/rotate", segment(&id));
                    g.post(&path, json!({ "overlap": overlap })).await?
                }
            };
            eprintln!(
                "key {id} is replaced by {} and stops working in {}; the new secret is shown once:",
                cell(&created["key"]["id"]),
                humantime::format_duration(overlap)
            );
            show_secret(&created)?;
        }
        KeysCommand::List { account } => {
            let keys = match (target, &account) {
                (Target::Database { store, .. }, Some(a)) => {
                    serde_json::to_value(store.account_keys(a).await?)?
                }
                (Target::Database { store, .. }, None) => {
                    serde_json::to_value(store.list_keys().await?)?
                }
                (Target::Gateway(g), Some(a)) => {
                    g.get(&format!("/v1/keys?account={}", segment(a))).await?
                }
                (Target::Gateway(g), None) => g.get("/v1/keys").await?,
            };
            println!(
                "{:<18} {:<10} {:<20} {:<8} {:<20} datasets",
                "id", "kind", "account", "state", "expires"
            );
            let now = now_micros();
            for key in keys.as_array().into_iter().flatten() {
                let state = if !key["revoked_at"].is_null() {
                    "revoked"
                } else if key["expires_at"].as_i64().is_some_and(|t| t <= now) {
                    "expired"
                } else {
                    "active"
                };
                let datasets: Vec<String> = key["datasets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(cell)
                    .collect();
                println!(
                    "{:<18} {:<10} {:<20} {:<8} {:<20} {}",
                    cell(&key["id"]),
                    cell(&key["kind"]),
                    cell(&key["account"]),
                    state,
                    time_cell(&key["expires_at"]),
                    datasets.join(",")
                );
            }
        }
        KeysCommand::Revoke { id } => {
            match target {
                Target::Database { store, .. } => {
                    if !store.revoke_key(&id).await? {
                        bail!("no active key with id `{id}`");
                    }
                }
                Target::Gateway(g) => {
                    g.delete(&format!("/v1/keys/{}", segment(&id))).await?;
                }
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}

pub(super) async fn plans(target: &Target, command: PlansCommand) -> Result<()> {
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
            history,
            id,
        } => {
            let plan = match target {
                Target::Database { config, store } => {
                    store.sync_catalog(config).await?;
                    let kind = serde_json::from_value(Value::String(kind)).context("kind")?;
                    let new = NewPlan {
                        id,
                        name,
                        kind,
                        currency,
                        price_minor,
                        per_1000_minor,
                        delay,
                        aggregate,
                        history,
                    };
                    serde_json::to_value(store.create_plan(&dataset, new).await?)?
                }
                Target::Gateway(g) => {
                    let new = json!({"id": id, "name": name, "kind": kind, "currency": currency,
                        "price_minor": price_minor, "per_1000_minor": per_1000_minor,
                        "delay": delay, "aggregate": aggregate, "history": history});
                    let path = format!("/v1/catalog/{}/plans", segment(&dataset));
                    g.post(&path, new).await?
                }
            };
            eprintln!(
                "created plan {} on {}",
                cell(&plan["id"]),
                cell(&plan["dataset"])
            );
            println!("{}", cell(&plan["id"]));
        }
        PlansCommand::List { dataset } => {
            let datasets = match (&dataset, target) {
                (Some(d), Target::Database { config, store }) => {
                    if !catalog(config, store).await?.iter().any(|c| &c.id == d) {
                        bail!("no dataset `{d}`");
                    }
                    vec![d.clone()]
                }
                (Some(d), Target::Gateway(_)) => vec![d.clone()],
                (None, Target::Database { config, store }) => catalog(config, store)
                    .await?
                    .into_iter()
                    .map(|d| d.id)
                    .collect(),
                (None, Target::Gateway(g)) => g.get("/v1/datasets").await?["datasets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| cell(&d["id"]))
                    .collect(),
            };
            // Every answer first, so that a refusal prints no half table.
            let mut plans = Vec::new();
            for ds in &datasets {
                let of_dataset = match target {
                    Target::Database { store, .. } => {
                        serde_json::to_value(store.plans_of(ds, true).await?)?
                    }
                    Target::Gateway(g) => {
                        let path = format!("/v1/catalog/{}/plans?all=true", segment(ds));
                        match g.get(&path).await {
                            Ok(plans) => plans,
                            // Listing every dataset: those of other providers are not this
                            // key's to see.
                            Err(_) if dataset.is_none() => continue,
                            Err(e) => return Err(e),
                        }
                    }
                };
                plans.extend(of_dataset.as_array().cloned().unwrap_or_default());
            }
            println!(
                "{:<24} {:<16} {:<8} {:<4} {:>10} {:>10} {:<8} {:<8} {:<8} {:<7} name",
                "id",
                "dataset",
                "kind",
                "cur",
                "monthly",
                "per_1000",
                "delay",
                "aggr",
                "history",
                "offered"
            );
            for p in &plans {
                println!(
                    "{:<24} {:<16} {:<8} {:<4} {:>10} {:>10} {:<8} {:<8} {:<8} {:<7} {}",
                    cell(&p["id"]),
                    cell(&p["dataset"]),
                    cell(&p["kind"]),
                    cell(&p["currency"]),
                    cell(&p["price_minor"]),
                    cell(&p["per_1000_minor"]),
                    cell(&p["delay"]),
                    cell(&p["aggregate"]),
                    cell(&p["history"]),
                    if p["active"].as_bool() == Some(true) {
                        "yes"
                    } else {
                        "no"
                    },
                    cell(&p["name"])
                );
            }
        }
        PlansCommand::Withdraw { id } => {
            match target {
                Target::Database { store, .. } => {
                    if !store.withdraw_plan(&id).await? {
                        bail!("no plan `{id}` on offer");
                    }
                }
                Target::Gateway(g) => {
                    g.delete(&format!("/v1/plans/{}", segment(&id))).await?;
                }
            }
            eprintln!("plan {id} withdrawn; its subscriptions run on");
        }
    }
    Ok(())
}

pub(super) async fn invoices(target: &Target, command: InvoicesCommand) -> Result<()> {
    let InvoicesCommand::Generate { period } = command;
    let invoices = match target {
        Target::Database { store, .. } => {
            serde_json::to_value(store.generate_invoices(&period, now_micros()).await?)?
        }
        Target::Gateway(g) => {
            g.post("/v1/invoices/generate", json!({ "period": period }))
                .await?
        }
    };
    println!(
        "{:<22} {:<24} {:<4} {:>12} {:>12} status",
        "invoice", "account", "cur", "total", "due"
    );
    let invoices = invoices.as_array().cloned().unwrap_or_default();
    for i in &invoices {
        println!(
            "{:<22} {:<24} {:<4} {:>12} {:>12} {}",
            cell(&i["id"]),
            cell(&i["account"]),
            cell(&i["currency"]),
            cell(&i["total_minor"]),
            cell(&i["due_minor"]),
            cell(&i["status"])
        );
    }
    eprintln!("{} invoice(s) for {period}", invoices.len());
    Ok(())
}
