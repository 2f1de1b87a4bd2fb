//! `hooktap check` and `hooktap test` as an operator runs them: exit codes and messages that
//! name the file, the line and what is wrong.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;

fn run(dir: &Path, command: &str) -> Output {
    Command::new(hooktap_bin())
        .args([command, "-c"])
        .arg(dir.join("hooktap.toml"))
        .output()
        .expect("run hooktap")
}

/// A config directory with hooktap.toml and one rule file.
fn project(config: &str, rules: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("rules")).expect("mkdir");
    std::fs::write(dir.path().join("hooktap.toml"), config).expect("write");
    std::fs::write(dir.path().join("rules/shop.toml"), rules).expect("write");
    dir
}

/// Runs `check` and returns stderr, asserting it failed.
fn check_fails(config: &str, rules: &str) -> String {
    let dir = project(config, rules);
    let out = run(dir.path(), "check");
    assert!(!out.status.success(), "check should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_says(stderr: &str, place: &str, words: &str) {
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(place) && l.contains(words)),
        "expected a line with `{place}` and `{words}` in:\n{stderr}"
    );
}

#[test]
fn check_accepts_the_example_and_summarises_it() {
    let out = Command::new(hooktap_bin())
        .args(["check", "-c"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("hooktap.toml"))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK — 10 rules in 1 files"), "{stdout}");
    assert!(
        stdout.contains("topic order.created: order created"),
        "{stdout}"
    );
    assert!(
        stdout.contains("webhook crm -> http://127.0.0.1:9000/hooks [order.*]"),
        "{stdout}"
    );
}

#[test]
fn check_names_file_line_and_problem() {
    // Unknown key in a rule.
    let e = check_fails(CONFIG, &format!("{GOOD_RULE}colour = \"red\"\n"));
    assert_says(&e, "rules/shop.toml:7:1", "unknown field `colour`");
    // Bad JSONPath in a payload field.
    let e = check_fails(
        CONFIG,
        &format!("{GOOD_RULE}[rule.payload]\nid = \"$.response.body[\"\n"),
    );
    assert_says(&e, "rules/shop.toml:8:6", "invalid JSONPath");
    // Bad regex in `when`.
    let e = check_fails(
        CONFIG,
        &format!("{GOOD_RULE}when = [{{ path = \"$.a\", matches = \"(\" }}]\n"),
    );
    assert_says(&e, "rules/shop.toml:7:9", "invalid regex");
    // Bad path template.
    let e = check_fails(
        CONFIG,
        &GOOD_RULE.replace("path = \"/orders\"", "path = \"/orders/{id\""),
    );
    assert_says(&e, "rules/shop.toml:5:8", "unclosed `{`");
    // A test expecting a topic no rule produces.
    let test = "[[test]]\nname = \"t\"\nrequest = { method = \"POST\", path = \"/orders\" }\nresponse = { status = 201 }\nexpect = { topic = \"order.lost\" }\n";
    let e = check_fails(CONFIG, &format!("{GOOD_RULE}\n{test}"));
    assert_says(
        &e,
        "rules/shop.toml:12:20",
        "topic `order.lost`, which no rule produces",
    );
    // Duplicate rule names.
    let e = check_fails(CONFIG, &format!("{GOOD_RULE}\n{GOOD_RULE}"));
    assert_says(
        &e,
        "rules/shop.toml:9:8",
        "duplicate rule name `order created`",
    );
    // Malformed TOML.
    let e = check_fails(CONFIG, "[[rule]\nname = 1\n");
    assert_says(&e, "rules/shop.toml:1:", "");
    // A webhook without URL, and one with a bad retry schedule: both reported at once.
    let config = CONFIG.replace(
        "url = \"http://127.0.0.1:9000/hooks\"\n",
        "retry = \"5s,soon\"\n",
    );
    let e = check_fails(&config, GOOD_RULE);
    assert_says(&e, "hooktap.toml:11:8", "webhook `crm`: url is required");
    assert_says(&e, "hooktap.toml:12:9", "retry delay `soon`");
    // An invalid URL and an unknown key in hooktap.toml.
    let config = CONFIG
        .replace("http://127.0.0.1:9000/hooks", "ftp://x/")
        .replace("[proxy]\n", "[proxy]\nlisten_on = 1\n");
    let e = check_fails(&config, GOOD_RULE);
    assert_says(&e, "hooktap.toml:4:1", "unknown field `listen_on`");
    // A rules glob that matches nothing.
    let e = check_fails(&CONFIG.replace("rules/*.toml", "rulez/*.toml"), GOOD_RULE);
    assert_says(&e, "hooktap.toml:1:10", "matches no rule file");
}

#[test]
fn webhook_destinations_are_checked_at_configuration_time() {
    // Loopback is blocked unless allowed.
    let config = CONFIG.replace("allow_networks = [\"127.0.0.0/8\"]", "");
    let e = check_fails(&config, GOOD_RULE);
    assert_says(
        &e,
        "hooktap.toml:12:7",
        "requests to 127.0.0.1 are blocked: it is a loopback address",
    );
    // https_only rejects plain http.
    let config = CONFIG.replace("[delivery]\n", "[delivery]\nhttps_only = true\n");
    let e = check_fails(&config, GOOD_RULE);
    assert_says(
        &e,
        "hooktap.toml:13:7",
        "plain http, but [delivery] https_only = true",
    );
    // A bad allow_networks entry.
    let config = CONFIG.replace("127.0.0.0/8", "127.0.0.0/33");
    let e = check_fails(&config, GOOD_RULE);
    assert_says(&e, "hooktap.toml:8:19", "allow_networks: `127.0.0.0/33`");
    // Unknown signature profile and mode, and batch keys without batch mode.
    let config = CONFIG.replace(
        "topics = [\"order.*\"]",
        "topics = [\"order.*\"]\nsignature = \"hmac\"\nbatch_max = 3\nmode = \"bulk\"",
    );
    let e = check_fails(&config, GOOD_RULE);
    assert_says(&e, "hooktap.toml:15:13", "signature `hmac` must be");
    assert_says(&e, "hooktap.toml:17:8", "mode `bulk` must be");
}

#[test]
fn invalid_url_is_reported_with_its_line() {
    let config = CONFIG.replace("http://127.0.0.1:9000/hooks", "ftp://x/");
    let e = check_fails(&config, GOOD_RULE);
    assert_says(
        &e,
        "hooktap.toml:12:7",
        "must be an http:// or https:// URL",
    );
}

#[test]
fn test_command_passes_the_example_rules() {
    let out = Command::new(hooktap_bin())
        .args(["test", "-c"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("hooktap.toml"))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.lines().any(|l| l == "9 passed, 0 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok   a new order becomes order.created (")
            && stdout.contains("ticket-shop.toml:"),
        "{stdout}"
    );
}

#[test]
fn test_command_reports_a_failing_test_and_exits_non_zero() {
    let rules = format!(
        "{GOOD_RULE}[rule.payload]\nid = \"$.response.body.id\"\n\n\
         [[test]]\nname = \"passes\"\nrequest = {{ method = \"POST\", path = \"/orders\" }}\nresponse = {{ status = 201, body = {{ id = 7 }} }}\nexpect = {{ topic = \"order.created\", payload = {{ id = 7 }} }}\n\n\
         [[test]]\nname = \"wrong id\"\nrequest = {{ method = \"POST\", path = \"/orders\" }}\nresponse = {{ status = 201, body = {{ id = 8 }} }}\nexpect = {{ topic = \"order.created\", payload = {{ id = 7 }} }}\n\n\
         [[test]]\nname = \"should not match\"\nrequest = {{ method = \"POST\", path = \"/orders\" }}\nresponse = {{ status = 201 }}\nexpect = {{ none = true }}\n"
    );
    let dir = project(CONFIG, &rules);
    let out = run(dir.path(), "test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("ok   passes"), "{stdout}");
    assert!(
        stdout.contains("FAIL wrong id (")
            && stdout.contains(
                "expected order.created with payload {\"id\":7}, got order.created {\"id\":8}"
            ),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL should not match") && stdout.contains("expected no event"),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l == "1 passed, 2 failed"),
        "{stdout}"
    );
}

/// Runs `hooktap <args> -c <config>` against a running hooktap; returns (success, stdout, stderr).
async fn remote(proxy: &TestProxy, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(hooktap_bin());
    command.args(args).arg("-c").arg(&proxy.config);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run hooktap");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn webhook_and_delivery_commands_talk_to_the_running_hooktap() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let proxy =
        TestProxy::start(&Setup::new(upstream).webhook("crm", &receiver, "topics = [\"order.*\"]"))
            .await;
    proxy.admin_ready().await;

    let (ok, out, err) = remote(&proxy, &["webhooks", "list"]).await;
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.contains("crm") && l.contains("active")),
        "{out}"
    );

    let url = receiver.url();
    let (ok, out, err) = remote(
        &proxy,
        &[
            "webhooks",
            "add",
            "--name",
            "ops",
            "--url",
            &url,
            "--secret",
            "x",
            "--topics",
            "order.*,scan.*",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("\"name\": \"ops\"") && !out.contains("\"secret\""),
        "{out}"
    );

    let (ok, out, _) = remote(&proxy, &["webhooks", "get", "ops"]).await;
    assert!(ok && out.contains("\"scan.*\""), "{out}");
    let (ok, out, _) = remote(&proxy, &["webhooks", "ping", "crm"]).await;
    assert!(ok && out.contains("\"success\": true"), "{out}");
    let (ok, out, _) = remote(&proxy, &["webhooks", "pause", "crm"]).await;
    assert!(ok && out.trim() == "crm is paused", "{out}");
    let (ok, out, _) = remote(&proxy, &["webhooks", "list", "--status", "paused"]).await;
    assert!(ok && out.contains("crm") && !out.contains("ops"), "{out}");
    let (ok, out, _) = remote(&proxy, &["webhooks", "resume", "crm"]).await;
    assert!(ok && out.trim() == "crm is active", "{out}");

    let r = client()
        .post(proxy.url("/orders"))
        .json(&serde_json::json!({"email": "cli@example.com"}))
        .send()
        .await
        .expect("proxied");
    assert_eq!(r.status(), 201);
    receiver
        .wait_for(3, std::time::Duration::from_secs(15))
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let listing = loop {
        let (ok, out, err) = remote(&proxy, &["deliveries", "crm", "--outcome", "delivered"]).await;
        assert!(ok, "{err}");
        if out.contains("order.created") {
            break out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no delivered delivery listed:\n{out}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let delivery_id = listing
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .expect("a delivery row")
        .to_owned();
    let (ok, out, _) = remote(&proxy, &["deliveries", "crm", &delivery_id]).await;
    assert!(ok && out.contains("\"response_code\": 200"), "{out}");

    let (ok, out, _) = remote(&proxy, &["webhooks", "delete", "ops"]).await;
    assert!(ok && out.contains("pending deliveries dropped"), "{out}");
    let (ok, _, err) = remote(&proxy, &["webhooks", "get", "ops"]).await;
    assert!(
        !ok && err.contains("no webhook with the id or name `ops`"),
        "{err}"
    );
}

#[tokio::test]
async fn tap_prints_events_as_json_lines() {
    let (_app, upstream) = TestUpstream::start().await;
    let proxy = TestProxy::start(&Setup::new(upstream)).await;
    proxy.admin_ready().await;
    let mut tap = Command::new(hooktap_bin())
        .args(["tap", "--topic", "order.*", "-c"])
        .arg(&proxy.config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tap");
    let rx = stdout_lines(&mut tap);
    // The tap connects asynchronously: keep producing events until one arrives.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let line = loop {
        client()
            .post(proxy.url("/scans"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("ticket=T-9&gate=n")
            .send()
            .await
            .expect("proxied");
        client()
            .post(proxy.url("/orders"))
            .json(&serde_json::json!({"email": "tap@example.com"}))
            .send()
            .await
            .expect("proxied");
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(300)) {
            break line;
        }
        assert!(std::time::Instant::now() < deadline, "tap printed nothing");
    };
    let _ = tap.kill();
    let _ = tap.wait();
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(
        event["topic"], "order.created",
        "the topic filter leaves scans out"
    );
    assert_eq!(event["payload"]["email"], "tap@example.com");
}

#[test]
fn an_admin_api_on_a_public_address_needs_a_token() {
    let config = CONFIG.replace(
        "[delivery]",
        "[admin]\nlisten = \"0.0.0.0:9191\"\n\n[delivery]",
    );
    let e = check_fails(&config, GOOD_RULE);
    assert_says(&e, "hooktap.toml:8:10", "needs `token` or `token_env`");
}

#[tokio::test]
async fn a_second_hooktap_on_the_same_store_is_refused_with_the_way_to_upgrade() {
    let (_app, upstream) = TestUpstream::start().await;
    let proxy = TestProxy::start(&Setup::new(upstream)).await;
    proxy.admin_ready().await;
    let (ok, _, stderr) = remote(&proxy, &["run"]).await;
    assert!(!ok, "a second hooktap must not start on a held store");
    assert!(
        stderr.contains("another hooktap (pid ") && stderr.contains("hooktap run --upgrade"),
        "{stderr}"
    );
    // The running one is untouched.
    post_order(&proxy, "still@example.com").await;
}

#[test]
fn upgrade_without_a_running_hooktap_says_so_and_signals_nobody() {
    let (dir, config, _, _) = Setup::new(std::net::SocketAddr::from(([127, 0, 0, 1], 9))).write();
    // A stale pid file whose pid now belongs to an unrelated process.
    let mut bystander = Command::new("sleep").arg("30").spawn().expect("sleep");
    std::fs::create_dir_all(dir.path().join("data")).expect("mkdir");
    std::fs::write(
        dir.path().join("data/hooktap.pid"),
        format!("{}\n", bystander.id()),
    )
    .expect("pid file");
    let out = Command::new(hooktap_bin())
        .args(["run", "--upgrade", "-c"])
        .arg(&config)
        .output()
        .expect("run hooktap");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no running hooktap holds the store at")
            && stderr.contains(&dir.path().join("data").display().to_string()),
        "{stderr}"
    );
    assert!(
        bystander.try_wait().expect("try_wait").is_none(),
        "the process named by a stale pid file must not be signalled"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
}

/// A config on the PostgreSQL store at `url`, with one rule.
fn postgres_project(url: &str) -> tempfile::TempDir {
    project(
        &format!(
            "rules = [\"rules/*.toml\"]\n[proxy]\nlisten = \"127.0.0.1:18080\"\nupstream = \"127.0.0.1:18000\"\n[store]\nbackend = \"postgres\"\nurl = \"{url}\"\n"
        ),
        "[[rule]]\nname = \"r\"\ntopic = \"order.created\"\nmethod = \"POST\"\npath = \"/orders\"\n",
    )
}

#[test]
fn check_and_migrate_reach_a_postgres_store_and_name_a_wrong_password() {
    let cluster = crate::pg_cluster::Cluster::start();
    let url = cluster.database();
    let ok = run(postgres_project(&url).path(), "check");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        stdout.contains("store: PostgreSQL at 127.0.0.1:")
            && stdout.contains("0 of 9 migrations applied"),
        "{stdout}"
    );

    let dir = postgres_project(&url);
    let migrated = run(dir.path(), "migrate");
    let stdout = String::from_utf8_lossy(&migrated.stdout);
    assert!(migrated.status.success(), "{stdout}");
    assert!(
        stdout.contains("applied V1__schema")
            && stdout.contains("applied V2__ordering_keys")
            && stdout.contains("applied V3__dedupe")
            && stdout.contains("applied V4__console")
            && stdout.contains("applied V5__webhook_versions")
            && stdout.contains("applied V6__lease_in_place")
            && stdout.contains("applied V7__one_attempts_index")
            && stdout.contains("applied V8__records_as_json"),
        "{stdout}"
    );
    let again = run(dir.path(), "migrate");
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("the schema is up to date"),
        "a second run applies nothing"
    );
    let checked = run(dir.path(), "check");
    assert!(String::from_utf8_lossy(&checked.stdout).contains("9 of 9 migrations applied"));

    let wrong = url.replace(crate::pg_cluster::PASSWORD, "not-the-password");
    let out = run(postgres_project(&wrong).path(), "check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("password authentication failed") && !stderr.contains("not-the-password"),
        "the error names the cause and not the password: {stderr}"
    );
}

/// A config on the PostgreSQL store at `url` that trusts the CA in `ca_file` (written beside
/// hooktap.toml and named relative to it, as an operator would).
fn postgres_tls_project(url: &str, ca_pem: &str) -> tempfile::TempDir {
    let dir = project(
        &format!(
            "rules = [\"rules/*.toml\"]\n[proxy]\nlisten = \"127.0.0.1:18080\"\nupstream = \"127.0.0.1:18000\"\n[store]\nbackend = \"postgres\"\nurl = \"{url}\"\nca_file = \"certs/db-ca.pem\"\n"
        ),
        "[[rule]]\nname = \"r\"\ntopic = \"order.created\"\nmethod = \"POST\"\npath = \"/orders\"\n",
    );
    std::fs::create_dir(dir.path().join("certs")).expect("mkdir");
    std::fs::write(dir.path().join("certs/db-ca.pem"), ca_pem).expect("write the CA");
    dir
}

#[test]
fn check_verifies_postgres_tls_with_the_ca_file_and_names_a_wrong_ca() {
    let cluster = crate::pg_cluster::Cluster::start_tls(&["localhost"]);
    let url = format!(
        "{}?sslmode=verify-full",
        cluster.database().replace("127.0.0.1", "localhost")
    );
    let ca = std::fs::read_to_string(cluster.ca_file()).expect("read the CA");
    let ok = run(postgres_tls_project(&url, &ca).path(), "check");
    assert!(
        ok.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("store: PostgreSQL at localhost:"));

    let other = crate::pg_cluster::Certificates::new(&["localhost"]).ca;
    let out = run(postgres_tls_project(&url, &other).path(), "check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot be used")
            && stderr.contains("not signed by a trusted CA")
            && stderr.contains("certs/db-ca.pem")
            && !stderr.contains(crate::pg_cluster::PASSWORD),
        "the error names the certificate problem and the CA file: {stderr}"
    );

    // A CA file that is not there, or not PEM: the config's line says so.
    let dir = postgres_tls_project(&url, "not a certificate");
    let out = run(dir.path(), "check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_says(&stderr, "hooktap.toml:8", "`ca_file`");
    assert!(stderr.contains("no PEM certificate"), "{stderr}");
}
