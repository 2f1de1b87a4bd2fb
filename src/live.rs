//! What can change while hooktap runs: the rules and the file-declared webhooks.
//!
//! A reload (SIGHUP or `POST /reload`) loads and validates the whole configuration first; only
//! when it is valid are the new rules swapped in (requests already in flight finish with the
//! rules they started with) and the webhooks synced. A reload whose files fail validation keeps
//! everything running as it was and reports why. Other sections (listen addresses, store,
//! delivery limits) are read once at start: changing them needs a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::delivery::Dispatcher;
use crate::rules::RuleSet;

pub struct Live {
    config_path: PathBuf,
    rules: Arc<ArcSwap<RuleSet>>,
    dispatcher: Arc<Dispatcher>,
    /// One reload at a time.
    reloading: Mutex<()>,
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
}

impl Live {
    pub fn new(config_path: PathBuf, rules: RuleSet, dispatcher: Arc<Dispatcher>) -> Self {
        Self {
            config_path,
            rules: Arc::new(ArcSwap::from_pointee(rules)),
            dispatcher,
            reloading: Mutex::new(()),
        }
    }

    /// The rules in force; the proxy takes one snapshot per request.
    pub fn rules(&self) -> &Arc<ArcSwap<RuleSet>> {
        &self.rules
    }

    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// Loads the configuration again and applies its rules and webhooks.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let result = self.apply();
        let metrics = self.dispatcher.metrics();
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

    fn apply(&self) -> Result<Reloaded, ReloadError> {
        let config = Config::load(&self.config_path)?;
        let rules = config.rules.rules().len();
        let removed = self
            .dispatcher
            .sync_webhooks(&config.webhooks, config.delivery.secret_rotation_grace)?;
        self.rules.store(Arc::new(config.rules));
        Ok(Reloaded {
            rules,
            webhooks: config.webhooks.len(),
            removed,
        })
    }
}
