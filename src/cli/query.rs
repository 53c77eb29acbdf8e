//! `citygate query`: a dataset's history from a running gateway, for a planner at a terminal.
//! Raw readings are fetched a page at a time (following each page's `Link: rel="next"`)
//! and written as one file: CSV with one header, NDJSON, a JSON array, one Arrow IPC stream
//! or one Parquet file. `--every` asks for time buckets, `--latest` for the last reading of
//! every sensor (one answer each). Progress goes to stderr.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use arrow_array::RecordBatch;
use reqwest::Url;

#[derive(clap::Args)]
pub(crate) struct QueryArgs {
    /// The dataset, e.g. traffic-counts.
    dataset: String,
    /// Start, inclusive (RFC 3339, e.g. 2026-11-30T06:00:00Z; default an hour before --to).
    #[arg(long)]
    from: Option<String>,
    /// End, exclusive (RFC 3339; default now).
    #[arg(long)]
    to: Option<String>,
    /// Time buckets of this length (15m, 1h, 1d) instead of raw readings.
    #[arg(long)]
    every: Option<String>,
    /// With --every: count,mean,min,max,sum,first,last.
    #[arg(long = "fn", requires = "every")]
    fns: Option<String>,
    /// With --every: sensor (a bucket per sensor, the default) or none.
    #[arg(long, requires = "every")]
    group_by: Option<String>,
    /// With --every of whole days: local calendar days in this IANA zone (Europe/Copenhagen).
    #[arg(long, requires = "every")]
    tz: Option<String>,
    /// The last reading of every sensor instead of a range.
    #[arg(long, conflicts_with_all = ["every", "from", "to"])]
    latest: bool,
    /// Only these sensors: a,b.
    #[arg(long)]
    sensors: Option<String>,
    /// Only readings within min_lon,min_lat,max_lon,max_lat.
    #[arg(long)]
    bbox: Option<String>,
    /// Only these fields: a,b.
    #[arg(long)]
    fields: Option<String>,
    #[arg(long, default_value = "csv",
          value_parser = ["csv", "ndjson", "json", "arrow", "parquet"])]
    format: String,
    /// Write here instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// The gateway.
    #[arg(
        long,
        value_name = "URL",
        env = "CITYGATE_API",
        default_value = "http://127.0.0.1:8080"
    )]
    api: String,
    /// A key that may read the dataset (a subscriber's, its provider's, an admin's).
    #[arg(
        long,
        value_name = "KEY",
        env = "CITYGATE_API_KEY",
        hide_env_values = true
    )]
    api_key: String,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
    /// Readings asked per page (at most the gateway's `[query] max_rows`).
    #[arg(long, default_value_t = 10_000, hide = true)]
    page_size: usize,
}

/// Where the answer goes, as it comes.
enum Sink {
    Text(Box<dyn Write>),
    Arrow(arrow_ipc::writer::StreamWriter<Box<dyn Write>>),
    Parquet(parquet::arrow::ArrowWriter<Box<dyn Write + Send>>),
}

fn output(out: &Option<PathBuf>) -> Result<Box<dyn Write + Send>> {
    Ok(match out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("--out {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    })
}

fn batches(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .context("the gateway's Arrow stream")?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .context("the gateway's Arrow stream")
}

/// The next page's URL from `Link: <…>; rel="next"`.
fn next_page(base: &Url, response: &reqwest::Response) -> Option<Url> {
    let link = response
        .headers()
        .get(reqwest::header::LINK)?
        .to_str()
        .ok()?;
    let target = link.trim().strip_prefix('<')?.split('>').next()?;
    base.join(target).ok()
}

pub(crate) async fn run(args: QueryArgs) -> Result<()> {
    let binary = matches!(args.format.as_str(), "arrow" | "parquet");
    if binary && args.out.is_none() && std::io::stdout().is_terminal() {
        bail!(
            "--format {} is binary: give --out FILE (or redirect stdout)",
            args.format
        );
    }
    let base = Url::parse(&args.api).with_context(|| {
        format!(
            "--api `{}`: expected a URL like http://127.0.0.1:8080",
            args.api
        )
    })?;
    let route = if args.latest {
        "latest"
    } else if args.every.is_some() {
        "aggregate"
    } else {
        "history"
    };
    let mut url = base.join(&format!(
        "/v1/datasets/{}/{route}",
        super::gateway::segment(&args.dataset)
    ))?;
    {
        let mut q = url.query_pairs_mut();
        for (name, value) in [
            ("from", &args.from),
            ("to", &args.to),
            ("every", &args.every),
            ("fn", &args.fns),
            ("group_by", &args.group_by),
            ("tz", &args.tz),
            ("sensors", &args.sensors),
            ("bbox", &args.bbox),
            ("fields", &args.fields),
        ] {
            if let Some(v) = value {
                q.append_pair(name, v);
            }
        }
        if route == "history" {
            q.append_pair("limit", &args.page_size.to_string());
        }
        // Pages are fetched in a form that joins into one answer.
        let wire = match args.format.as_str() {
            "json" | "ndjson" => "ndjson",
            "arrow" | "parquet" => "arrow",
            _ => "csv",
        };
        q.append_pair("format", wire);
    }
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()?;
    let progress = !args.quiet && std::io::stderr().is_terminal();
    let out = output(&args.out)?;
    let mut sink = match args.format.as_str() {
        "arrow" | "parquet" => None,
        _ => Some(Sink::Text(out)),
    };
    let mut pending_out = if sink.is_none() {
        Some(output(&args.out)?)
    } else {
        None
    };
    let (mut rows, mut pages) = (0usize, 0usize);
    let mut next = Some(url);
    while let Some(url) = next.take() {
        let response = client
            .get(url.clone())
            .bearer_auth(&args.api_key)
            .send()
            .await
            .with_context(|| format!("GET {url}: is the gateway running there?"))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let why = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| {
                    Some(format!(
                        "{} {}",
                        v["error"].as_str()?,
                        v["message"].as_str()?
                    ))
                })
                .unwrap_or(text);
            bail!("{route} of `{}`: {} {why}", args.dataset, status.as_u16());
        }
        next = next_page(&base, &response);
        let body = response.bytes().await.context("reading the answer")?;
        pages += 1;
        match args.format.as_str() {
            "arrow" | "parquet" => {
                for batch in batches(&body)? {
                    rows += batch.num_rows();
                    if sink.is_none() {
                        let out = pending_out.take().expect("an output");
                        sink = Some(if args.format == "arrow" {
                            Sink::Arrow(arrow_ipc::writer::StreamWriter::try_new(
                                out as Box<dyn Write>,
                                &batch.schema(),
                            )?)
                        } else {
                            Sink::Parquet(parquet::arrow::ArrowWriter::try_new(
                                out,
                                batch.schema(),
                                None,
                            )?)
                        });
                    }
                    match sink.as_mut() {
                        Some(Sink::Arrow(w)) => w.write(&batch)?,
                        Some(Sink::Parquet(w)) => w.write(&batch)?,
                        _ => unreachable!("a binary sink"),
                    }
                }
            }
            format => {
                let Some(Sink::Text(w)) = sink.as_mut() else {
                    unreachable!("a text sink")
                };
                let text = std::str::from_utf8(&body).context("the answer is not UTF-8")?;
                let mut lines = text.lines().filter(|l| !l.trim().is_empty());
                if format == "csv" {
                    // Every page has the header; the file has it once.
                    let header = lines.next();
                    if let (1, Some(header)) = (pages, header) {
                        w.write_all(header.as_bytes())?;
                        w.write_all(b"\r\n")?;
                    }
                }
                for line in lines {
                    rows += 1;
                    match format {
                        "json" => {
                            w.write_all(if rows == 1 { b"[" } else { b"," })?;
                            w.write_all(line.as_bytes())?;
                            w.write_all(b"\n")?;
                        }
                        "csv" => {
                            w.write_all(line.as_bytes())?;
                            w.write_all(b"\r\n")?;
                        }
                        _ => {
                            w.write_all(line.as_bytes())?;
                            w.write_all(b"\n")?;
                        }
                    }
                }
            }
        }
        if progress {
            eprint!("\r{rows} rows, {pages} page(s)…");
        }
    }
    match sink {
        Some(Sink::Text(mut w)) => {
            if args.format == "json" {
                w.write_all(if rows == 0 { b"[]\n" } else { b"]\n" })?;
            }
            w.flush()?;
        }
        Some(Sink::Arrow(mut w)) => w.finish()?,
        Some(Sink::Parquet(w)) => {
            w.close()?;
        }
        None => bail!("the gateway answered no Arrow stream"),
    }
    if !args.quiet {
        let into = args
            .out
            .as_ref()
            .map_or("stdout".to_string(), |p| p.display().to_string());
        eprintln!(
            "{}{rows} {} of `{}` to {into}",
            if progress { "\r" } else { "" },
            if route == "aggregate" {
                "buckets"
            } else {
                "readings"
            },
            args.dataset
        );
    }
    Ok(())
}
