//! What can change while hooktap runs: the rules and the file-declared webhooks.
//!
//! A reload (SIGHUP or `POST /reload`) loads and validates the whole configuration first; only
//! when it is valid are the new rules swapped in (requests already in flight finish with the
//! rules they started with) and the webhooks synced. A reload whose files fail validation keeps
//! everything running as it was and reports why. Other sections (listen addresses, store,
//! delivery limits) are read once at start: changing them needs a restart.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::delivery::Engine;
use crate::rules::RuleSet;

pub struct Live {
    config_path: PathBuf,
    rules: Arc<ArcSwap<RuleSet>>,
    engine: Arc<Engine>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

/// What a successful reload loaded.
#[derive(Debug, Clone, Serialize)]
pub struct Reloaded {
    pub rules: usize,
    pub webhooks: usize,
    /// Config-declared webhooks removed because they left the file, with pending deliveries dropped.
    pub removed: Vec<(String, usize)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the configuration is invalid; the running one is kept:\n{0}")]
    Invalid(#[from] ConfigError),
    #[error("cannot apply the webhooks: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("loading the configuration failed unexpectedly: {0}")]
    Panicked(String),
}

impl Live {
    pub fn new(config_path: PathBuf, rules: RuleSet, engine: Arc<Engine>) -> Self {
        Self {
            config_path,
            rules: Arc::new(ArcSwap::from_pointee(rules)),
            engine,
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The rules in force; the proxy takes one snapshot per request.
    pub fn rules(&self) -> &Arc<ArcSwap<RuleSet>> {
        &self.rules
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Loads the configuration again and applies its rules and webhooks.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let result = self.apply().await;
        let metrics = self.engine.metrics();
        match &result {
            Ok(r) => {
                metrics.reload(true);
                tracing::info!(
                    rules = r.rules,
                    webhooks = r.webhooks,
                    "configuration reloaded"
                );
            }
            Err(e) => {
                metrics.reload(false);
                tracing::error!(error = %e, "reload failed; the running configuration is kept");
            }
        }
        result
    }

    async fn apply(&self) -> Result<Reloaded, ReloadError> {
        // Loading reads files: off the async threads, and a panic there fails this reload only.
        let path = self.config_path.clone();
        let config = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|e| ReloadError::Panicked(e.to_string()))??;
        let rules = config.rules.rules().len();
        let removed = self
            .engine
            .sync_webhooks(&config.webhooks, config.delivery.secret_rotation_grace)
            .await?;
        self.rules.store(Arc::new(config.rules));
        Ok(Reloaded {
            rules,
            webhooks: config.webhooks.len(),
            removed,
        })
    }
}
