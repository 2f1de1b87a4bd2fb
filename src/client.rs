//! A thin client of the admin API for the command line (`hooktap webhooks`, `deliveries`, `tap`).
//! It reads the admin address and token from the same hooktap.toml the server uses.

use std::net::SocketAddr;

use serde_json::Value;

use crate::config::AdminConfig;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the admin API at {url}: {source} (is `hooktap run` running with this config?)"
    )]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{method} {path}: {status}: {message}")]
    Api {
        method: String,
        path: String,
        status: u16,
        message: String,
    },
    #[error("unexpected answer from the admin API: {0}")]
    Protocol(String),
    #[error("no webhook with the id or name `{0}`")]
    NoSuchWebhook(String),
}

pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminClient {
    pub fn new(config: &AdminConfig) -> Result<Self, ClientError> {
        // A wildcard listen address is reached over loopback.
        let addr = match config.listen {
            SocketAddr::V4(a) if a.ip().is_unspecified() => {
                SocketAddr::from(([127, 0, 0, 1], a.port()))
            }
            SocketAddr::V6(a) if a.ip().is_unspecified() => {
                SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], a.port()))
            }
            a => a,
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(Self {
            base: format!("http://{addr}"),
            token: config.token.clone(),
            http,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends a request and returns the JSON answer, or the API's error message.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let mut r = self.request(method.clone(), path);
        if let Some(b) = body {
            r = r
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.to_string());
        }
        let response = r.send().await.map_err(|source| ClientError::Unreachable {
            url: self.base.clone(),
            source,
        })?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(ClientError::Api {
                method: method.to_string(),
                path: path.to_owned(),
                status,
                message: value["message"]
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned),
            })
        }
    }

    /// The id of the webhook named `id_or_name` (or the id itself).
    pub async fn webhook_id(&self, id_or_name: &str) -> Result<String, ClientError> {
        if uuid::Uuid::parse_str(id_or_name).is_ok() {
            return Ok(id_or_name.to_owned());
        }
        let list = self
            .call(reqwest::Method::GET, "/webhooks?per_page=100", None)
            .await?;
        list.as_array()
            .into_iter()
            .flatten()
            .find(|w| w["name"] == id_or_name)
            .and_then(|w| w["id"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| ClientError::NoSuchWebhook(id_or_name.to_owned()))
    }

    /// Streams live events (JSON, one per call of `each`) until the server closes the stream.
    pub async fn tap(
        &self,
        topic: Option<&str>,
        mut each: impl FnMut(&str),
    ) -> Result<(), ClientError> {
        let path = match topic {
            Some(t) => format!(
                "/events/stream?topic={}",
                form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>()
            ),
            None => "/events/stream".to_owned(),
        };
        let mut response = self
            .request(reqwest::Method::GET, &path)
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let message = response.text().await.unwrap_or_default();
            return Err(ClientError::Api {
                method: "GET".into(),
                path,
                status,
                message,
            });
        }
        // Server-sent events: `event: <name>` and `data: <json>` lines, blank line between.
        let mut buffer = String::new();
        let mut event_name = String::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
        {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find('\n') {
                let line: String = buffer.drain(..=end).collect();
                let line = line.trim_end_matches(['\r', '\n']);
                if let Some(name) = line.strip_prefix("event:") {
                    event_name = name.trim().to_owned();
                } else if let Some(data) = line.strip_prefix("data:") {
                    match event_name.as_str() {
                        "event" => each(data.trim()),
                        "lagged" => eprintln!(
                            "hooktap tap: {} events were missed (the viewer was too slow)",
                            data.trim()
                        ),
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }
}
