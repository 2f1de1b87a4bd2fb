//! The `hooktap` command line: parse arguments, load the config, call into the library.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use hooktap::client::{AdminClient, ClientError};
use hooktap::config::Config;
use hooktap::event::DeliveryState;
use hooktap::webhook::{Profile, WebhookInput, WebhookStatus};

/// jemalloc instead of glibc's malloc: on matched traffic sled copies and frees a leaf node
/// with every write, and glibc spent ~20 % of hooktap's CPU in malloc/free/consolidate on it
/// (perf). Measured with the end-to-end benchmark: matched requests 4,229–4,780 → ~5,600 req/s,
/// 209–236 → ~178 µs of CPU per request (see benches/RESULTS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "hooktap",
    version,
    about = "Derive signed, durable webhooks from HTTP traffic"
)]
struct Cli {
    /// The configuration file.
    #[arg(
        short,
        long,
        global = true,
        default_value = "hooktap.toml",
        env = "HOOKTAP_CONFIG"
    )]
    config: PathBuf,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Start the proxy and the delivery loop.
    Run {
        /// Take over from the hooktap running with the same store without dropping a
        /// connection: receive its listening sockets, let it finish its requests and exit.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate the config and every rule file, print a summary, start nothing.
    Check,
    /// Run the `[[test]]` cases of the rule files, or (with --har) the rules over recorded
    /// traffic with a coverage report.
    Test {
        /// HAR files: print the events the rules derive from each exchange, then the
        /// successful writes no rule covers (the `[[test]]` cases are not run).
        #[arg(long, value_name = "FILE", num_args = 1..)]
        har: Vec<PathBuf>,
        /// With --har: exit 1 when a successful write is not covered (for CI).
        #[arg(long, requires = "har")]
        strict: bool,
    },
    /// Propose rules from recorded traffic (HAR files), live traffic (a recording proxy) or
    /// an OpenAPI document; prints a rule file.
    Learn(LearnArgs),
    /// Apply the PostgreSQL store's schema migrations (`run` applies them too), or show them;
    /// with --from-sled, also move a stopped sled store into it.
    Migrate {
        /// Show which migrations are applied, change nothing.
        #[arg(long, conflicts_with = "from_sled")]
        status: bool,
        /// A stopped single instance's sled store (its `[store] path`): move its webhooks
        /// (same ids, secrets, counters) and pending deliveries with their events into the
        /// PostgreSQL store of the config, then mark DIR as moved (`hooktap run` refuses it).
        #[arg(long, value_name = "DIR")]
        from_sled: Option<PathBuf>,
        /// With --from-sled: move a store that an earlier --from-sled marked as moved (what
        /// PostgreSQL has swept since comes back, to be delivered again).
        #[arg(long, requires = "from_sled")]
        force: bool,
    },
    /// Run a demo: a ticket shop, hooktap in front of it, a receiver, and some traffic.
    Demo {
        /// Where the demo's proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where the demo's admin API and console listen.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: std::net::SocketAddr,
    },
    /// Commands that talk to a running hooktap's admin API.
    #[command(flatten)]
    Remote(Remote),
}

/// Where `hooktap learn` learns from: exactly one of --har, --listen (with --upstream) and
/// --openapi.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["har", "listen", "openapi"])))]
struct LearnArgs {
    /// HAR 1.2 files, as browsers' dev tools, proxies and API clients export them.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    har: Vec<PathBuf>,
    /// Record live traffic: listen here as a proxy in front of --upstream (port 0 picks one;
    /// the address is printed on stderr), then learn from what passed.
    #[arg(long, requires = "upstream")]
    listen: Option<std::net::SocketAddr>,
    /// The app the recording proxy forwards to: `host:port` or `http://host:port`.
    #[arg(long, requires = "listen")]
    upstream: Option<String>,
    /// Stop recording after this long (e.g. `10m`); else at Ctrl-C or --requests.
    #[arg(long, requires = "listen", value_parser = humantime::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Stop recording after this many exchanges.
    #[arg(long, requires = "listen")]
    requests: Option<usize>,
    /// Also write the recorded exchanges as a HAR file (credential headers left out).
    #[arg(long, requires = "listen", value_name = "FILE")]
    save_har: Option<PathBuf>,
    /// An OpenAPI 3.0 or 3.1 document, JSON or YAML.
    #[arg(long, value_name = "FILE")]
    openapi: Option<PathBuf>,
    /// Write the rules here instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Bodies larger than this (decoded) are left out.
    #[arg(long, default_value_t = bytesize::ByteSize::b(hooktap::learn::DEFAULT_MAX_BODY as u64))]
    max_body: bytesize::ByteSize,
}

/// The admin API client's commands.
#[derive(Subcommand)]
enum Remote {
    /// Print derived events as JSON lines while traffic flows (from a running hooktap).
    Tap {
        /// Only topics matching this glob, e.g. `order.*`.
        #[arg(long)]
        topic: Option<String>,
    },
    /// Manage webhooks of a running hooktap.
    Webhooks {
        #[command(subcommand)]
        action: WebhookAction,
    },
    /// List a webhook's deliveries (newest first), or show one delivery with its attempts.
    Deliveries {
        /// The webhook's id or name.
        webhook: String,
        /// A delivery id: show it with every attempt.
        delivery: Option<String>,
        /// Only deliveries in this state.
        #[arg(long, value_enum)]
        outcome: Option<DeliveryState>,
    },
}

#[derive(Subcommand)]
enum WebhookAction {
    /// List webhooks.
    List {
        /// Only webhooks in this status.
        #[arg(long, value_enum)]
        status: Option<WebhookStatus>,
    },
    /// Show one webhook (by id or name).
    Get { webhook: String },
    /// Create a webhook. An active one (the default) is pinged first and created only when
    /// its URL answers 2xx; `--paused` creates it without a ping.
    Add(Box<AddArgs>),
    /// Send a signed test request with an empty body and show the answer.
    Ping { webhook: String },
    /// Stop sending (deliveries are kept and go out on resume).
    Pause { webhook: String },
    /// Send again; the URL must answer the activation ping with 2xx.
    Resume { webhook: String },
    /// Delete a webhook and drop its pending deliveries.
    Delete { webhook: String },
}

/// The options of `webhooks add`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("secret_source").required(true)
    .args(["secret", "secret_env", "secret_stdin"])))]
struct AddArgs {
    #[arg(long)]
    url: String,
    /// The signing secret. Prefer --secret-env or --secret-stdin: a secret written on the
    /// command line lands in shell history and in `ps`.
    #[arg(long)]
    secret: Option<String>,
    /// Read the signing secret from this environment variable.
    #[arg(long, value_name = "VAR")]
    secret_env: Option<String>,
    /// Read the signing secret from standard input (its first line).
    #[arg(long)]
    secret_stdin: bool,
    /// Topic globs, comma-separated: `order.*,scan.*`.
    #[arg(long, value_delimiter = ',', required = true)]
    topics: Vec<String>,
    #[arg(long)]
    name: Option<String>,
    /// The signing profile.
    #[arg(long, value_enum)]
    signature: Option<Profile>,
    /// Retry delays, e.g. `5s,30s,1m`.
    #[arg(long)]
    retry: Option<String>,
    /// A JSONPath over the payload, e.g. `$.order_id`: per-key ordering.
    #[arg(long)]
    ordering_key: Option<String>,
    /// Payload predicates as JSON, e.g. `[{"path": "$.total", "gt": 100}]`.
    #[arg(long, value_name = "JSON")]
    filter: Option<String>,
    /// At most this many requests, evenly spaced: `50/s`, `600/m`.
    #[arg(long)]
    rate_limit: Option<String>,
    /// Consecutive failed requests that open the circuit (0: never).
    #[arg(long)]
    circuit_failures: Option<u32>,
    /// How long an open circuit waits before its probe, e.g. `30s`.
    #[arg(long)]
    circuit_cooldown: Option<String>,
    /// Refuse plain http:// (`--https-only=false` allows it when the global default
    /// refuses it).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    https_only: Option<bool>,
    /// An extra static header, `Name: value`; repeat for more.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Create it paused: no activation ping, nothing sent until `webhooks resume`.
    #[arg(long)]
    paused: bool,
}

fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HOOKTAP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| {
        let n = e.0.len();
        let problems = if n == 1 {
            "1 problem".to_owned()
        } else {
            format!("{n} problems")
        };
        anyhow::anyhow!("{problems} in the configuration:\n{e}")
    })
}

/// Prints what the config holds and checks that a shared store can be reached; false when
/// it cannot.
fn check(config: &Config) -> bool {
    let mut per_topic: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for rule in config.rules.rules() {
        let topic = match rule.topic.fixed() {
            Some(t) => t.as_str().to_owned(),
            None => format!("= {}", rule.topic.as_str()),
        };
        per_topic.entry(topic).or_default().push(&rule.name);
    }
    out(format_args!(
        "{}: OK — {} rules in {} files, {} routes, {} tests, {} webhooks",
        config.file.display(),
        config.rules.rules().len(),
        config.rule_files.len(),
        config.rules.route_count(),
        config.tests.len(),
        config.webhooks.len()
    ));
    for (topic, rules) in per_topic {
        out(format_args!("  topic {topic}: {}", rules.join(", ")));
    }
    for rule in config.rules.rules() {
        let features = rule.features();
        if !features.is_empty() {
            out(format_args!(
                "  rule {}: {}",
                rule.name,
                features.join("; ")
            ));
        }
    }
    for w in &config.webhooks {
        let mut extras = Vec::new();
        if let Some(key) = &w.ordering_key {
            extras.push(format!("ordered by {key}"));
        }
        if !w.filter.is_empty() {
            extras.push(format!("{} filter predicates", w.filter.len()));
        }
        if let Some(rate) = w.rate_limit {
            extras.push(format!("at most {rate}"));
        }
        out(format_args!(
            "  webhook {} -> {} [{}]{}",
            w.name,
            hooktap::webhook::mask_url(&w.url),
            w.topics.join(", "),
            if extras.is_empty() {
                String::new()
            } else {
                format!(" ({})", extras.join("; "))
            }
        ));
    }
    let hooktap::config::Backend::Postgres(pg) = &config.store.backend else {
        return true;
    };
    let shown = hooktap::store::PgConfig::shown(&pg.url);
    let probed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| hooktap::store::StoreError::Task(e.to_string()))
        .and_then(|rt| rt.block_on(hooktap::store::postgres::probe(pg)));
    match probed {
        Ok(migrations) => {
            let applied = migrations.iter().filter(|m| m.applied_on.is_some()).count();
            out(format_args!(
                "  store: PostgreSQL at {shown} answers; schema: {applied} of {} migrations applied{}",
                migrations.len(),
                if applied < migrations.len() {
                    " (the rest are applied when hooktap starts)"
                } else {
                    ""
                }
            ));
            true
        }
        Err(e) => {
            eprintln!("hooktap: the store, PostgreSQL at {shown}, cannot be used: {e}");
            false
        }
    }
}

/// `hooktap migrate [--status]`.
fn migrate(config: &Config, status: bool) -> anyhow::Result<()> {
    let hooktap::config::Backend::Postgres(pg) = &config.store.backend else {
        anyhow::bail!(
            "the store is sled ([store] backend), which has no schema to migrate; migrations are for backend = \"postgres\""
        );
    };
    let shown = hooktap::store::PgConfig::shown(&pg.url);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    let migrations = rt
        .block_on(async {
            if !status {
                let applied = hooktap::store::postgres::apply(pg).await?;
                if applied.is_empty() {
                    out(format_args!("{shown}: the schema is up to date"));
                }
                for m in applied {
                    out(format_args!("{shown}: applied {m}"));
                }
            }
            hooktap::store::postgres::probe(pg).await
        })
        .with_context(|| format!("the store, PostgreSQL at {shown}"))?;
    for m in migrations {
        out(format_args!(
            "V{}__{}: {}",
            m.version,
            m.name,
            m.applied_on.as_deref().unwrap_or("not applied")
        ));
    }
    Ok(())
}

/// `hooktap migrate --from-sled DIR [--force]`: applies the schema, then moves the sled store
/// at `dir` into the config's PostgreSQL store.
fn migrate_from_sled(config: &Config, dir: &Path, force: bool) -> anyhow::Result<()> {
    let hooktap::config::Backend::Postgres(pg) = &config.store.backend else {
        anyhow::bail!(
            "--from-sled moves a sled store into PostgreSQL: the config's [store] backend must be \"postgres\""
        );
    };
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if same(dir, &config.store.path) {
        anyhow::bail!(
            "{} is both the sled store to move and this config's [store] path (the journal of the instance on PostgreSQL): give the instance a new, empty path",
            dir.display()
        );
    }
    let sled = hooktap::store::SledStore::open_stopped(dir)
        .with_context(|| format!("the sled store at {}", dir.display()))?;
    migrate(config, false)?;
    let shown = hooktap::store::PgConfig::shown(&pg.url);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    let done = rt
        .block_on(hooktap::store::postgres::import_sled(pg, &sled, dir, force))
        .with_context(|| format!("moving {} into PostgreSQL at {shown}", dir.display()))?;
    out(format_args!(
        "{}: moved {} webhooks ({} were there already) and {} pending deliveries of {} events into {shown}",
        dir.display(),
        done.webhooks,
        done.webhooks_there,
        done.deliveries,
        done.events
    ));
    Ok(())
}

fn test(config: &Config) -> bool {
    let (mut passed, mut failed) = (0, 0);
    for t in &config.tests {
        match t.run(&config.rules, config.proxy.max_decoded_bytes) {
            Ok(()) => {
                passed += 1;
                out(format_args!("ok   {} ({})", t.name, t.location));
            }
            Err(why) => {
                failed += 1;
                out(format_args!("FAIL {} ({}): {why}", t.name, t.location));
            }
        }
    }
    out(format_args!("{passed} passed, {failed} failed"));
    failed == 0
}

/// `hooktap test --har FILE...`: the rules over recorded exchanges, then the coverage.
/// Returns how many successful writes no rule covers.
fn test_har(config: &Config, files: &[PathBuf]) -> anyhow::Result<usize> {
    let max = config.proxy.max_decoded_bytes;
    let (samples, skipped, _) = hooktap::learn::read_hars(files, max)?;
    for line in skipped.lines() {
        eprintln!("hooktap: left out: {line}");
    }
    let report = hooktap::learn::coverage::dry_run(&config.rules, &samples, max);
    for line in report.lines() {
        out(format_args!("{line}"));
    }
    Ok(report.writes - report.covered)
}

/// `hooktap learn`: samples from the chosen source → a checked rule file.
fn learn(args: LearnArgs) -> anyhow::Result<()> {
    use hooktap::learn::{emit, openapi, propose, record};
    let max = usize::try_from(args.max_body.as_u64()).unwrap_or(usize::MAX);
    let proposal = if let Some(spec) = &args.openapi {
        openapi::learn(spec)?
    } else {
        let (samples, skipped, sources) = if let Some(listen) = args.listen {
            let upstream = args.upstream.as_deref().unwrap_or_default();
            let options = record::Options {
                listen,
                upstream: upstream.to_owned(),
                duration: args.duration,
                requests: args.requests,
                max_body: max,
            };
            let (samples, skipped) = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(record::record(options))?;
            if let Some(path) = &args.save_har {
                let base = if upstream.contains("://") {
                    upstream.trim_end_matches('/').to_owned()
                } else {
                    format!("http://{upstream}")
                };
                hooktap::learn::har::save(path, &samples, &base)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!(
                    "hooktap: wrote {} exchanges to {}",
                    samples.len(),
                    path.display()
                );
            }
            (samples, skipped, format!("recorded in front of {upstream}"))
        } else {
            hooktap::learn::read_hars(&args.har, max)?
        };
        for line in skipped.lines() {
            eprintln!("hooktap: left out: {line}");
        }
        eprintln!("hooktap: learning from {} exchanges", samples.len());
        propose::learn(&samples, &sources, &skipped)
    };
    let text = emit::render(&proposal, max)?;
    eprintln!("hooktap: proposed {} rules", proposal.rules.len());
    match &args.output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => out(format_args!("{}", text.trim_end())),
    }
    Ok(())
}

/// Runs one admin API client command.
async fn remote(config: &Config, command: Remote) -> anyhow::Result<()> {
    let client = AdminClient::new(&config.admin)?;
    match command {
        Remote::Tap { topic } => {
            client
                .tap(topic.as_deref(), |line| out(format_args!("{line}")))
                .await?;
        }
        Remote::Webhooks { action } => webhooks(&client, action).await?,
        Remote::Deliveries {
            webhook,
            delivery: Some(delivery),
            ..
        } => {
            let id = client.webhook_id(&webhook).await?;
            print_json(&client.delivery(&id, &delivery).await?);
        }
        Remote::Deliveries {
            webhook,
            delivery: None,
            outcome,
        } => list_deliveries(&client, &webhook, outcome).await?,
    }
    Ok(())
}

/// The secret of `webhooks add`: given, from an environment variable or from the first line
/// of standard input (clap makes sure exactly one source is named).
fn read_secret(given: Option<String>, env: Option<&str>, stdin: bool) -> anyhow::Result<String> {
    let secret = match (given, env) {
        (Some(s), _) => s,
        (None, Some(var)) => std::env::var(var).map_err(|e| {
            anyhow::anyhow!("--secret-env {var}: cannot read the environment variable: {e}")
        })?,
        (None, None) if stdin => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| anyhow::anyhow!("--secret-stdin: cannot read standard input: {e}"))?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
        (None, None) => {
            anyhow::bail!("give the secret with --secret-env, --secret-stdin or --secret")
        }
    };
    if secret.is_empty() {
        anyhow::bail!("the webhook secret is empty");
    }
    Ok(secret)
}

async fn webhooks(client: &AdminClient, action: WebhookAction) -> anyhow::Result<()> {
    match action {
        WebhookAction::List { status } => list_webhooks(client, status).await?,
        WebhookAction::Get { webhook } => {
            let id = client.webhook_id(&webhook).await?;
            print_json(&client.webhook(&id).await?);
        }
        WebhookAction::Add(add) => {
            let AddArgs {
                url,
                secret,
                secret_env,
                secret_stdin,
                topics,
                name,
                signature,
                retry,
                ordering_key,
                filter,
                rate_limit,
                circuit_failures,
                circuit_cooldown,
                https_only,
                headers,
                paused,
            } = *add;
            let secret = read_secret(secret, secret_env.as_deref(), secret_stdin)?;
            let filter = filter
                .map(|f| serde_json::from_str(&f))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--filter: not a JSON list of predicates: {e}"))?;
            let headers = (!headers.is_empty())
                .then(|| {
                    headers
                        .iter()
                        .map(|h| {
                            h.split_once(':')
                                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                                .ok_or_else(|| {
                                    anyhow::anyhow!("--header `{h}`: write it as `Name: value`")
                                })
                        })
                        .collect::<anyhow::Result<_>>()
                })
                .transpose()?;
            let input = WebhookInput {
                name,
                url: Some(url),
                secret: Some(secret),
                topics: Some(topics),
                status: paused.then_some(WebhookStatus::Paused),
                signature,
                retry,
                ordering_key,
                filter,
                rate_limit,
                circuit_failures,
                circuit_cooldown,
                https_only: https_only.map(Some),
                headers,
                ..WebhookInput::default()
            };
            print_json(&client.create_webhook(&input).await?);
        }
        WebhookAction::Ping { webhook } => {
            let id = client.webhook_id(&webhook).await?;
            print_json(&client.ping(&id).await?);
        }
        WebhookAction::Pause { webhook } => {
            set_status(client, &webhook, WebhookStatus::Paused).await?;
        }
        WebhookAction::Resume { webhook } => {
            set_status(client, &webhook, WebhookStatus::Active).await?;
        }
        WebhookAction::Delete { webhook } => {
            let id = client.webhook_id(&webhook).await?;
            let deleted = client.delete_webhook(&id).await?;
            out(format_args!(
                "deleted {id}; {} pending deliveries dropped",
                deleted.dropped_deliveries
            ));
        }
    }
    Ok(())
}

async fn list_webhooks(
    client: &AdminClient,
    status: Option<WebhookStatus>,
) -> Result<(), ClientError> {
    let list = client.webhooks(status).await?;
    out(format_args!(
        "{:<36}  {:<20}  {:<8}  {:>9}  {:>6}  URL / TOPICS",
        "ID", "NAME", "STATUS", "DELIVERED", "FAILED"
    ));
    for w in list {
        out(format_args!(
            "{:<36}  {:<20}  {:<8}  {:>9}  {:>6}  {} [{}]",
            w.id.to_string(),
            w.name,
            name_of(&w.status),
            w.counters.delivered,
            w.counters.failed,
            w.url,
            w.topics.join(", "),
        ));
    }
    Ok(())
}

/// Pauses or resumes a webhook and says what it is now.
async fn set_status(
    client: &AdminClient,
    webhook: &str,
    status: WebhookStatus,
) -> Result<(), ClientError> {
    let id = client.webhook_id(webhook).await?;
    let input = WebhookInput {
        status: Some(status),
        ..WebhookInput::default()
    };
    let w = client.update_webhook(&id, &input).await?;
    out(format_args!("{} is {}", w.name, name_of(&w.status)));
    Ok(())
}

async fn list_deliveries(
    client: &AdminClient,
    webhook: &str,
    outcome: Option<DeliveryState>,
) -> Result<(), ClientError> {
    let id = client.webhook_id(webhook).await?;
    let list = client.deliveries(&id, outcome).await?;
    out(format_args!(
        "{:<36}  {:<30}  {:<20}  {:<9}  {:>8}  LAST ANSWER",
        "ID", "CREATED", "TOPIC", "STATE", "ATTEMPTS"
    ));
    for d in list {
        let created = d
            .created_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        out(format_args!(
            "{:<36}  {:<30}  {:<20}  {:<9}  {:>8}  {}",
            d.id.to_string(),
            created,
            d.topic,
            name_of(&d.state),
            d.attempts,
            d.last_summary.as_deref().unwrap_or("-"),
        ));
    }
    Ok(())
}

/// The name serde gives a unit enum value (`active`, `delivered`), as the API writes it.
fn name_of<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Prints an answer as indented JSON.
fn print_json<T: serde::Serialize>(value: &T) {
    out(format_args!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    ));
}

/// Prints a line to stdout; a closed pipe (`hooktap deliveries crm | head`) ends the program
/// quietly instead of panicking.
fn out(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story; its logs would drown it.
    let default_level = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    };
    init_logging(cli.log_format, default_level);
    let result = match cli.command {
        Command::Run { upgrade } => load(&cli.config).and_then(|c| {
            hooktap::server::run(c, upgrade).context("hooktap stopped with an error")
        }),
        Command::Check => match load(&cli.config) {
            Ok(c) if check(&c) => Ok(()),
            Ok(_) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Command::Migrate {
            status,
            from_sled,
            force,
        } => load(&cli.config).and_then(|c| match from_sled {
            Some(dir) => migrate_from_sled(&c, &dir, force),
            None => migrate(&c, status),
        }),
        Command::Test { har, strict } if !har.is_empty() => {
            match load(&cli.config).and_then(|c| test_har(&c, &har)) {
                Ok(uncovered) if strict && uncovered > 0 => return ExitCode::FAILURE,
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Command::Test { .. } => match load(&cli.config) {
            Ok(c) if test(&c) => Ok(()),
            Ok(_) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Command::Learn(args) => learn(args),
        Command::Demo { listen, admin } => tempfile::tempdir()
            .context("cannot create the demo's temporary directory")
            .and_then(|dir| {
                hooktap::demo::run(listen, admin, dir.path())
                    .context("the demo stopped with an error")
            }),
        Command::Remote(command) => load(&cli.config).and_then(|config| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(remote(&config, command))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
