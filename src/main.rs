//! The `hooktap` command line: parse arguments, load the config, call into the library.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use hooktap::config::Config;

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
    Run,
    /// Validate the config and every rule file, print a summary, start nothing.
    Check,
    /// Run the `[[test]]` cases of the rule files.
    Test,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HOOKTAP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load(cli: &Cli) -> anyhow::Result<Config> {
    Config::load(&cli.config).map_err(|e| {
        let n = e.0.len();
        let problems = if n == 1 {
            "1 problem".to_owned()
        } else {
            format!("{n} problems")
        };
        anyhow::anyhow!("{problems} in the configuration:\n{e}")
    })
}

fn check(config: &Config) {
    let mut per_topic: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for rule in config.rules.rules() {
        per_topic
            .entry(rule.topic.as_str())
            .or_default()
            .push(&rule.name);
    }
    println!(
        "{}: OK — {} rules in {} files, {} routes, {} tests, {} webhooks",
        config.file.display(),
        config.rules.rules().len(),
        config.rule_files.len(),
        config.rules.route_count(),
        config.tests.len(),
        config.webhooks.len()
    );
    for (topic, rules) in per_topic {
        println!("  topic {topic}: {}", rules.join(", "));
    }
    for w in &config.webhooks {
        println!(
            "  webhook {} -> {} [{}]",
            w.name,
            hooktap::webhook::mask_url(&w.url),
            w.topics.join(", ")
        );
    }
}

fn test(config: &Config) -> bool {
    let (mut passed, mut failed) = (0, 0);
    for t in &config.tests {
        match t.run(&config.rules, config.proxy.max_decoded_bytes) {
            Ok(()) => {
                passed += 1;
                println!("ok   {} ({})", t.name, t.location);
            }
            Err(why) => {
                failed += 1;
                println!("FAIL {} ({}): {why}", t.name, t.location);
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    failed == 0
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run => load(&cli)
            .and_then(|c| hooktap::server::run(c).context("hooktap stopped with an error")),
        Command::Check => load(&cli).map(|c| check(&c)),
        Command::Test => match load(&cli) {
            Ok(c) if test(&c) => Ok(()),
            Ok(_) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
