//! The `hooktap` command line: parse arguments, load the config, call into the library.

use std::collections::BTreeMap;
use std::path::PathBuf;
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
    /// Run the `[[test]]` cases of the rule files.
    Test,
    /// Apply the PostgreSQL store's schema migrations (`run` applies them too), or show them.
    Migrate {
        /// Show which migrations are applied, change nothing.
        #[arg(long)]
        status: bool,
    },
    /// Run a demo: a ticket shop, hooktap in front of it, a receiver, and some traffic.
    Demo {
        /// Where the demo's proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where the demo's admin API and dashboard listen.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: std::net::SocketAddr,
    },
    /// Commands that talk to a running hooktap's admin API.
    #[command(flatten)]
    Remote(Remote),
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
    /// Create a webhook.
    Add {
        #[arg(long)]
        url: String,
        #[arg(long)]
        secret: String,
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
    },
    /// Send a signed test request with an empty body and show the answer.
    Ping { webhook: String },
    /// Stop sending (deliveries are kept and go out on resume).
    Pause { webhook: String },
    /// Send again; the URL must answer the activation ping with 2xx.
    Resume { webhook: String },
    /// Delete a webhook and drop its pending deliveries.
    Delete { webhook: String },
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
        out(format_args!(
            "  webhook {} -> {} [{}]",
            w.name,
            hooktap::webhook::mask_url(&w.url),
            w.topics.join(", ")
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

async fn webhooks(client: &AdminClient, action: WebhookAction) -> Result<(), ClientError> {
    match action {
        WebhookAction::List { status } => list_webhooks(client, status).await?,
        WebhookAction::Get { webhook } => {
            let id = client.webhook_id(&webhook).await?;
            print_json(&client.webhook(&id).await?);
        }
        WebhookAction::Add {
            url,
            secret,
            topics,
            name,
            signature,
            retry,
        } => {
            let input = WebhookInput {
                name,
                url: Some(url),
                secret: Some(secret),
                topics: Some(topics),
                signature,
                retry,
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
        Command::Migrate { status } => load(&cli.config).and_then(|c| migrate(&c, status)),
        Command::Test => match load(&cli.config) {
            Ok(c) if test(&c) => Ok(()),
            Ok(_) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
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
