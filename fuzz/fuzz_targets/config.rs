//! The config and rule file parser: `Config::load`, as `hooktap check` and a reload use it.
//!
//! Input: `hooktap.toml`, a NUL byte, then `rules/fuzz.toml`. Without a NUL byte the whole
//! input is the rule file and hooktap.toml is a fixed, valid one naming it. Whatever loads,
//! its `[[test]]`s are run too (router, body decoding and evaluation, as `hooktap test` does).
//! Any problem must be a `ConfigError` whose places lie inside the file it names.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hooktap::config::Config;
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"rules = ["rules/*.toml"]

[proxy]
listen = "127.0.0.1:18080"
upstream = "127.0.0.1:18000"

[delivery]
allow_networks = ["127.0.0.0/8"]

[[webhook]]
name = "crm"
url = "http://127.0.0.1:9000/hooks"
secret = "s"
topics = ["order.*", "scan.created"]
"#;

/// One directory for the whole run (in memory where possible): hooktap.toml and rules/.
fn dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("tempdir");
        std::fs::create_dir(dir.path().join("rules")).expect("mkdir rules");
        dir
    })
    .path()
}

/// The `rules` globs are resolved against the config's directory; keep them inside it (a glob
/// such as `/**/*.toml` would walk the whole machine: slow, and not what is being tested).
fn globs_stay_inside(config: &str) -> bool {
    let Ok(table) = config.parse::<toml::Table>() else {
        return true; // load fails at the same parse
    };
    match table.get("rules") {
        Some(toml::Value::Array(globs)) => globs.iter().all(|g| match g {
            toml::Value::String(g) => !g.starts_with('/') && !g.contains(".."),
            _ => true,
        }),
        _ => true,
    }
}

fuzz_target!(|data: &[u8]| {
    let (config, rules) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (CONFIG.as_bytes(), data),
    };
    if !globs_stay_inside(&String::from_utf8_lossy(config)) {
        return;
    }
    let dir = dir();
    let config_path = dir.join("hooktap.toml");
    let rules_path: PathBuf = dir.join("rules/fuzz.toml");
    std::fs::write(&config_path, config).expect("write hooktap.toml");
    std::fs::write(&rules_path, rules).expect("write rules");
    match Config::load(&config_path) {
        Ok(config) => {
            for test in &config.tests {
                let _ = test.run(&config.rules, config.proxy.max_decoded_bytes.min(1 << 20));
            }
        }
        Err(e) => {
            assert!(!e.0.is_empty(), "an error without a problem");
            for p in &e.0 {
                let text = if p.file == config_path {
                    config
                } else if p.file == rules_path {
                    rules
                } else {
                    continue;
                };
                if let Some((line, col)) = p.position {
                    let lines = text.split(|&b| b == b'\n').count();
                    assert!(
                        line >= 1 && line <= lines.max(1) && col >= 1,
                        "{p} is outside its file ({lines} lines)"
                    );
                }
                let _ = p.to_string();
            }
        }
    }
});
