//! The proxy must not change what the app answers: status, headers and body arrive as sent.

use crate::common::*;

/// Headers that legitimately differ: `date` between two responses of one server, and the
/// hop-by-hop `connection` that each HTTP/1.1 hop sets for itself (RFC 9110, 7.6.1).
const VOLATILE: [&str; 2] = ["date", "connection"];

async fn compare(direct: reqwest::Response, proxied: reqwest::Response) {
    assert_eq!(direct.status(), proxied.status());
    let headers = |r: &reqwest::Response| {
        let mut h: Vec<(String, String)> = r
            .headers()
            .iter()
            .filter(|(k, _)| !VOLATILE.contains(&k.as_str()))
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        h.sort();
        h
    };
    assert_eq!(headers(&direct), headers(&proxied));
    let (d, p) = (
        direct.bytes().await.expect("direct body"),
        proxied.bytes().await.expect("proxied body"),
    );
    assert_eq!(d.len(), p.len());
    assert!(d == p, "bodies differ");
}

#[tokio::test]
async fn responses_are_identical_to_direct() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let proxy = TestProxy::start(&Setup::new(upstream).webhook("all", &receiver, "")).await;
    let c = client();
    for path in ["/headers", "/big", "/orders"] {
        let direct = c
            .get(format!("http://{upstream}{path}"))
            .send()
            .await
            .expect("direct");
        let proxied = c.get(proxy.url(path)).send().await.expect("proxied");
        compare(direct, proxied).await;
    }
    let big = c
        .get(proxy.url("/big"))
        .send()
        .await
        .expect("proxied")
        .bytes()
        .await
        .expect("body");
    assert!(big == big_body(), "the 2 MB streamed body arrives intact");
}

#[tokio::test]
async fn gzip_responses_reach_the_client_still_compressed() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let proxy = TestProxy::start(&Setup::new(upstream).webhook("all", &receiver, "")).await;
    let c = client();
    let body = r#"{"email":"gz@example.com"}"#;
    let r = c
        .post(proxy.url("/orders?gzip=1"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("proxied");
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let raw = r.bytes().await.expect("body");
    let mut decoded = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&raw[..]), &mut decoded)
        .expect("client gets valid gzip");
    assert!(decoded.contains("gz@example.com"));
    // And the rule still saw the decoded body.
    let got = receiver
        .wait_for(1, std::time::Duration::from_secs(10))
        .await;
    assert_eq!(got[0].json()["email"], "gz@example.com");
    assert_eq!(got[0].json()["status"], "new");
}

#[tokio::test]
async fn large_uploads_to_a_candidate_route_pass_through_uncaptured() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let rules = r#"
[[rule]]
name = "big upload"
topic = "upload.received"
method = "POST"
path = "/big"
[rule.payload]
body = "$.request.body"
length = "$.request.headers['content-length']"
"#;
    let setup = Setup::new(upstream)
        .webhook("all", &receiver, "")
        .rules(rules)
        .proxy("max_capture_bytes = 1024");
    let proxy = TestProxy::start(&setup).await;
    let body = big_body();
    let r = client()
        .post(proxy.url("/big"))
        .body(body.clone())
        .send()
        .await
        .expect("proxied");
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.expect("body") == body,
        "the echo of 2 MB is intact"
    );
    let got = receiver
        .wait_for(1, std::time::Duration::from_secs(10))
        .await;
    assert_eq!(
        got[0].json()["body"],
        serde_json::Value::Null,
        "over max_capture_bytes: not captured"
    );
    assert_eq!(got[0].json()["length"], body.len().to_string());
}

/// The listener terminates TLS, speaks HTTP/2 when the client offers it, and tells the app.
#[tokio::test]
async fn tls_is_terminated_with_http2_and_the_app_is_told() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("certificate");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    let extra = format!(
        "tls_cert = {:?}\ntls_key = {:?}",
        cert_path.display().to_string(),
        key_path.display().to_string()
    );
    let setup = Setup::new(upstream)
        .webhook("crm", &receiver, "topics = [\"order.*\"]")
        .proxy(&extra);
    let proxy = TestProxy::start(&setup).await;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let https = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).expect("cert")])
        .build()
        .expect("client");
    let url = format!("https://localhost:{}", proxy.addr.port());
    let r = https
        .get(format!("{url}/whoami"))
        .send()
        .await
        .expect("https request");
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN negotiates h2");
    let seen: serde_json::Value = r.json().await.expect("json");
    assert_eq!(seen["x-forwarded-proto"], "https");
    let r = https
        .post(format!("{url}/orders"))
        .json(&serde_json::json!({"email": "tls@example.com"}))
        .send()
        .await
        .expect("https order");
    assert_eq!(r.status(), 201);
    assert_eq!(
        receiver
            .wait_for(1, std::time::Duration::from_secs(15))
            .await[0]
            .json()["email"],
        "tls@example.com"
    );
}
