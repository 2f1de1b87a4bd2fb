//! The dashboard in a real headless browser (Debian's `chromium`, driven over the DevTools
//! protocol): sign in, see a webhook, press Ping, see the result.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

/// A page in headless Chromium, controlled over its DevTools websocket.
struct Browser {
    process: std::process::Child,
    _profile: tempfile::TempDir,
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Browser {
    async fn launch() -> Self {
        let profile = tempfile::tempdir().expect("tempdir");
        let mut process = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=1300,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium must be installed (scripts/install-deps.sh installs it)");
        let stderr = process.stderr.take().expect("stderr");
        let port = tokio::task::spawn_blocking(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(url) = line.strip_prefix("DevTools listening on ws://127.0.0.1:") {
                    return url.split('/').next().and_then(|p| p.parse::<u16>().ok());
                }
            }
            None
        })
        .await
        .expect("join")
        .expect("chromium printed its DevTools address");
        let targets: Value = client()
            .get(format!("http://127.0.0.1:{port}/json/list"))
            .send()
            .await
            .expect("target list")
            .json()
            .await
            .expect("json");
        let page = targets
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_owned();
        let (socket, _) = tokio_tungstenite::connect_async(page)
            .await
            .expect("connect to the page");
        Self {
            process,
            _profile: profile,
            socket,
            next_id: 0,
        }
    }

    /// Sends a DevTools command and returns its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket.send(Message::text(msg)).await.expect("send");
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(15), self.socket.next())
                .await
                .expect("an answer from chromium")
                .expect("open")
                .expect("message");
            if let Message::Text(text) = msg {
                let v: Value = serde_json::from_str(&text).expect("json");
                if v["id"] == id {
                    return v["result"].clone();
                }
            }
        }
    }

    async fn eval(&mut self, js: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Evaluates `js` until it is true.
    async fn wait_until(&mut self, js: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.eval(js).await != Value::Bool(true) {
            assert!(
                Instant::now() < deadline,
                "the dashboard never showed {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[tokio::test]
async fn sign_in_see_a_webhook_and_ping_it() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let rules = r#"
[[rule]]
name = "echo once"
topic = { expr = "'echo.' + response.body.kind" }
path = "/echo"
when = "response.body.ok == true"
dedupe = { key = "$.request.headers['idempotency-key']", window = "1h" }
"#;
    let proxy = TestProxy::start(&Setup::new(upstream).rules(rules).webhook(
        "crm",
        &receiver,
        "topics = [\"order.*\"]\nordering_key = \"$.id\"\nrate_limit = \"50/s\"",
    ))
    .await;
    proxy.admin_ready().await;
    let r = client()
        .post(proxy.url("/orders"))
        .json(&json!({"email": "browser@example.com"}))
        .send()
        .await
        .expect("order");
    assert_eq!(r.status(), 201);
    receiver.wait_for(1, Duration::from_secs(15)).await;

    let mut browser = Browser::launch().await;
    browser.call("Page.enable", json!({})).await;
    browser
        .call("Page.navigate", json!({"url": proxy.admin_url("/")}))
        .await;
    browser
        .wait_until(
            "document.readyState === 'complete' && !!document.getElementById('token')",
            "the sign-in form",
        )
        .await;
    // A wrong token is refused.
    browser.eval("document.getElementById('token').value = 'wrong'; document.getElementById('login-form').requestSubmit(); true").await;
    browser
        .wait_until(
            "document.getElementById('login-error').textContent.includes('not accepted')",
            "the refusal",
        )
        .await;
    browser
        .eval(&format!("document.getElementById('token').value = '{ADMIN_TOKEN}'; document.getElementById('login-form').requestSubmit(); true"))
        .await;
    let row = "document.querySelector('#webhooks tbody tr[data-name=\"crm\"]')";
    browser
        .wait_until(
            &format!("!!{row} && {row}.textContent.includes('active')"),
            "the webhook",
        )
        .await;
    browser
        .wait_until(
            &format!(
                "{row}.textContent.includes('circuit closed · ordered per $.id · at most 50/s')"
            ),
            "the webhook's delivery settings",
        )
        .await;
    browser
        .wait_until(
            "document.querySelector('#events tbody').textContent.includes('browser@example.com')",
            "the event",
        )
        .await;
    // The rule view shows what a rule does beyond method and path.
    let rule = "document.querySelector('#rules tbody tr[data-name=\"echo once\"]')";
    browser
        .wait_until(
            &format!(
                "!!{rule} && {rule}.textContent.includes(\"'echo.' + response.body.kind\") \
                 && {rule}.textContent.includes('when response.body.ok == true') \
                 && {rule}.textContent.includes(\"dedupe $.request.headers['idempotency-key'] within 1h\")"
            ),
            "the rule view",
        )
        .await;
    browser
        .eval(&format!("{row}.querySelector('button.ping').click(); true"))
        .await;
    browser
        .wait_until(
            "document.getElementById('result').textContent.includes('\"success\": true')",
            "the ping result",
        )
        .await;
    let result = browser
        .eval("document.getElementById('result').textContent")
        .await;
    assert!(
        result
            .as_str()
            .expect("text")
            .contains("X-Hooktap-Webhook-Signature"),
        "{result}"
    );
    let pinged = receiver.wait_for(2, Duration::from_secs(15)).await;
    assert!(pinged[1].body.is_empty(), "the ping has an empty body");

    // A picture of the page, for people looking at test artifacts.
    let shot = browser
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    if let Some(data) = shot["data"].as_str() {
        use base64::Engine;
        if let Ok(png) = base64::engine::general_purpose::STANDARD.decode(data) {
            let _ = std::fs::write(std::env::temp_dir().join("hooktap-dashboard.png"), png);
        }
    }
}
