//! A thin client of the admin API for the command line (`hooktap webhooks`, `deliveries`, `tap`).
//! It reads the admin address and token from the same hooktap.toml the server uses, and reads
//! the API's answers into the types the server answers with ([`WebhookView`], [`Delivery`], ...).

use std::net::SocketAddr;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::AdminConfig;
use crate::event::{Attempt, Delivery, DeliveryState};
use crate::webhook::{WebhookInput, WebhookStatus, WebhookView};

/// The answer to deleting a webhook.
#[derive(Debug, Clone, Deserialize)]
pub struct Deleted {
    pub id: uuid::Uuid,
    pub dropped_deliveries: u64,
}

/// A delivery with every attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryDetail {
    pub delivery: Delivery,
    pub attempts: Vec<Attempt>,
}

/// The admin API's error body; only the message is shown.
#[derive(Deserialize)]
struct ApiErrorBody {
    message: String,
}

/// The query of a list request.
#[derive(Serialize)]
struct ListQuery {
    per_page: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<WebhookStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<DeliveryState>,
}

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

    /// Sends a request (with `body` as JSON) and reads the answer as `T`, or returns the API's
    /// error message.
    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&WebhookInput>,
    ) -> Result<T, ClientError> {
        let mut r = self.request(method.clone(), path);
        if let Some(b) = body {
            let json =
                serde_json::to_string(b).map_err(|e| ClientError::Protocol(e.to_string()))?;
            r = r
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(json);
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
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<ApiErrorBody>(&text).map_or(text, |e| e.message);
            return Err(ClientError::Api {
                method: method.to_string(),
                path: path.to_owned(),
                status,
                message,
            });
        }
        serde_json::from_str(&text)
            .map_err(|e| ClientError::Protocol(format!("{method} {path}: {e}")))
    }

    /// Every webhook (up to 100), or those in `status`.
    pub async fn webhooks(
        &self,
        status: Option<WebhookStatus>,
    ) -> Result<Vec<WebhookView>, ClientError> {
        let query = serde_urlencoded::to_string(ListQuery {
            per_page: 100,
            status,
            outcome: None,
        })
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.call(Method::GET, &format!("/webhooks?{query}"), None)
            .await
    }

    pub async fn webhook(&self, id: &str) -> Result<WebhookView, ClientError> {
        self.call(Method::GET, &format!("/webhooks/{id}"), None)
            .await
    }

    pub async fn create_webhook(&self, input: &WebhookInput) -> Result<WebhookView, ClientError> {
        self.call(Method::POST, "/webhooks", Some(input)).await
    }

    /// Changes the fields `input` sets.
    pub async fn update_webhook(
        &self,
        id: &str,
        input: &WebhookInput,
    ) -> Result<WebhookView, ClientError> {
        self.call(Method::PUT, &format!("/webhooks/{id}"), Some(input))
            .await
    }

    pub async fn delete_webhook(&self, id: &str) -> Result<Deleted, ClientError> {
        self.call(Method::DELETE, &format!("/webhooks/{id}"), None)
            .await
    }

    /// The ping's request and answer, as the API reports them (shown as they come).
    pub async fn ping(&self, id: &str) -> Result<Value, ClientError> {
        self.call(Method::POST, &format!("/webhooks/{id}/ping"), None)
            .await
    }

    /// A webhook's deliveries (newest first, up to 100), or those in `outcome`.
    pub async fn deliveries(
        &self,
        id: &str,
        outcome: Option<DeliveryState>,
    ) -> Result<Vec<Delivery>, ClientError> {
        let query = serde_urlencoded::to_string(ListQuery {
            per_page: 100,
            status: None,
            outcome,
        })
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.call(
            Method::GET,
            &format!("/webhooks/{id}/deliveries?{query}"),
            None,
        )
        .await
    }

    pub async fn delivery(&self, id: &str, delivery: &str) -> Result<DeliveryDetail, ClientError> {
        self.call(
            Method::GET,
            &format!("/webhooks/{id}/deliveries/{delivery}"),
            None,
        )
        .await
    }

    /// The id of the webhook named `id_or_name` (or the id itself).
    pub async fn webhook_id(&self, id_or_name: &str) -> Result<String, ClientError> {
        if uuid::Uuid::parse_str(id_or_name).is_ok() {
            return Ok(id_or_name.to_owned());
        }
        self.webhooks(None)
            .await?
            .into_iter()
            .find(|w| w.name == id_or_name)
            .map(|w| w.id.to_string())
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
