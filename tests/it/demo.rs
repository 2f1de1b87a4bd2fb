//! `hooktap demo` runs from the binary alone: shop, proxy, receiver and traffic in one process.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

#[tokio::test]
async fn the_demo_delivers_every_webhook_with_a_valid_signature_and_keeps_the_console_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A port picked free can be taken by a parallel test before the demo binds it: then start
    // again on other ports.
    let (mut demo, _stdout, admin, token, output) = (1..=3)
        .find_map(|attempt| {
            let (listen, admin) = (free_port(), free_port());
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
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn demo");
            let stderr = demo.stderr.take().expect("stderr");
            let errors =
                std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
            let rx = stdout_lines(&mut demo);
            let deadline = Instant::now() + Duration::from_secs(40);
            let mut output = Vec::new();
            loop {
                let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                else {
                    let _ = demo.kill();
                    let _ = demo.wait();
                    let errors = errors.join().unwrap_or_default();
                    if attempt < 3 && errors.contains("Address already in use") {
                        return None;
                    }
                    panic!(
                        "demo output so far:\n{}\nstderr:\n{errors}",
                        output.join("\n")
                    );
                };
                output.push(line.clone());
                if let Some(rest) = line.strip_prefix("console: ") {
                    let token = rest
                        .split("token: ")
                        .nth(1)
                        .expect("token")
                        .trim_end_matches(')')
                        .to_owned();
                    // Keep reading stdout: the demo ends quietly when its stdout closes.
                    return Some((demo, rx, admin, token, output));
                }
            }
        })
        .expect("the demo started within three tries");
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
        .expect("console API");
    assert_eq!(r.status(), 200);
    let _ = demo.kill();
    let _ = demo.wait();
}
