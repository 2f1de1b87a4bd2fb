//! `hooktap demo` runs from the binary alone: shop, proxy, receiver and traffic in one process.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

#[tokio::test]
async fn the_demo_delivers_every_webhook_with_a_valid_signature_and_keeps_the_dashboard_up() {
    let (listen, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut demo = Command::new(hooktap_bin())
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ])
        // Run from an empty directory: the demo must not need the repository.
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let rx = stdout_lines(&mut demo);
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut output = Vec::new();
    let token = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("demo output so far:\n{}", output.join("\n")));
        output.push(line.clone());
        if let Some(rest) = line.strip_prefix("dashboard: ") {
            break rest
                .split("token: ")
                .nth(1)
                .expect("token")
                .trim_end_matches(')')
                .to_owned();
        }
    };
    let text = output.join("\n");
    assert!(
        text.contains(
            "summary: 9 requests through the proxy, 8 webhooks delivered, 8 with a valid signature"
        ),
        "{text}"
    );
    for topic in [
        "order.created",
        "order.updated",
        "order.refunded",
        "order.deleted",
        "scan.created",
        "scan.rejected",
        "download.tickets",
    ] {
        assert!(
            text.contains(&format!("webhook  {topic}")),
            "{topic} missing:\n{text}"
        );
    }
    let r = client()
        .get(format!("http://127.0.0.1:{admin}/webhooks/count"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("dashboard API");
    assert_eq!(r.status(), 200);
    let _ = demo.kill();
    let _ = demo.wait();
}
