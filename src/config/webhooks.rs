//! `[[webhook]]` tables: read key by key into [`WebhookInput`], so every bad value is reported
//! at its line, then checked into [`WebhookSpec`]s.

use super::*;
use raw::RawWebhook;

/// The `[[webhook]]` tables, each checked as the admin API checks a body; names are unique.
pub(super) fn compile_webhooks(
    r: &mut Reporter,
    tables: Vec<Spanned<RawWebhook>>,
    delivery: &DeliveryConfig,
) -> Vec<WebhookSpec> {
    let defaults = Defaults {
        https_only: delivery.https_only,
        guard: &delivery.guard,
        timeout: delivery.timeout,
    };
    let mut webhooks: Vec<WebhookSpec> = Vec::new();
    for table in tables {
        let Some((w, name_span)) = compile_webhook(r, table, &defaults) else {
            continue;
        };
        if webhooks.iter().any(|o| o.name == w.name) {
            r.at(name_span, format!("duplicate webhook name `{}`", w.name));
        } else {
            webhooks.push(w);
        }
    }
    webhooks
}

/// The keys a `[[webhook]]` table has beyond [`WebhookInput`]'s.
const FILE_ONLY_KEYS: &[&str] = &["secret_env"];

/// A `[[webhook]]` table read key by key: the accepted keys as a [`WebhookInput`] with where
/// each was written, the keys rejected (already reported), and `secret_env`.
struct WebhookTable {
    input: WebhookInput,
    spans: Vec<(String, Range<usize>)>,
    rejected: Vec<String>,
    secret_env: Option<(String, Range<usize>)>,
}

/// Deserializes each key into [`WebhookInput`] on its own, so that every bad value is
/// reported at its line (`shown` names the webhook in messages).
fn read_webhook_table(
    r: &mut Reporter,
    shown: &str,
    entries: Vec<(Spanned<String>, Spanned<toml::Value>)>,
) -> Result<WebhookTable, ValueError> {
    let mut good = toml::Table::new();
    let mut spans = Vec::new();
    let mut rejected = Vec::new();
    let mut secret_env = None;
    for (key, value) in entries {
        let (key_span, key) = (key.span(), key.into_inner());
        let (value_span, value) = (value.span(), value.into_inner());
        if key == "secret_env" {
            match value {
                toml::Value::String(var) => secret_env = Some((var, value_span)),
                _ => r.at(
                    value_span,
                    format!("webhook `{shown}`: secret_env must be a string"),
                ),
            }
            continue;
        }
        match fields::from_entry::<WebhookInput>(&key, &value) {
            Ok(_) => {
                spans.push((key.clone(), value_span));
                good.insert(key, value);
            }
            Err(e) => {
                // An unknown key of the table itself, or one inside its value (a `filter`
                // entry's): only the first is at the key, and may be a file-only key.
                let (message, span) = match e {
                    ValueError::UnknownField { ref field, .. } if *field == key => {
                        (e.also_accepting(FILE_ONLY_KEYS).about(&key), key_span)
                    }
                    ValueError::UnknownField { .. } => (format!("{key}: {e}"), value_span),
                    _ => (e.about(&key), value_span),
                };
                r.at(span, format!("webhook `{shown}`: {message}"));
                rejected.push(key);
            }
        }
    }
    Ok(WebhookTable {
        input: fields::from_table(good)?,
        spans,
        rejected,
        secret_env,
    })
}

/// One `[[webhook]]` table, read key by key, then checked whole by `WebhookInput::apply` as
/// the admin API checks a body. Returns the spec and where its name is written.
fn compile_webhook(
    r: &mut Reporter,
    table: Spanned<RawWebhook>,
    defaults: &Defaults<'_>,
) -> Option<(WebhookSpec, Range<usize>)> {
    let table_span = table.span();
    let entries = table.into_inner().entries;
    let Some((_, name)) = entries.iter().find(|(k, _)| k.get_ref() == "name") else {
        r.at(table_span, "missing field `name`");
        return None;
    };
    let name_span = name.span();
    let shown = match name.get_ref() {
        toml::Value::String(s) => s.trim().to_owned(),
        other => other.to_string(),
    };
    let mut t = read_webhook_table(r, &shown, entries)
        .map_err(|e| r.at(table_span, format!("webhook `{shown}`: {e}")))
        .ok()?;
    // The secret comes from the file or from the environment.
    if let Some((var, span)) = t.secret_env.take() {
        if let Some((_, secret_span)) = t.spans.iter().find(|(k, _)| k == "secret") {
            r.at(
                secret_span.clone(),
                format!("webhook `{shown}`: set either `secret` or `secret_env`, not both"),
            );
            return None;
        }
        t.input.secret = Some(from_env(r, &var, span, &format!("webhook `{shown}`: "))?);
    }
    let spec = t.input.apply(None, defaults).map_err(|errors| {
        // A field whose value was rejected above is not reported a second time.
        for FieldError { field, message } in errors {
            if t.rejected.iter().any(|k| k == field) {
                continue;
            }
            let span = t
                .spans
                .iter()
                .find(|(k, _)| k == field)
                .map_or(name_span.clone(), |(_, s)| s.clone());
            r.at(span, format!("webhook `{shown}`: {message}"));
        }
    });
    let spec = spec.ok()?;
    t.rejected.is_empty().then_some((spec, name_span))
}
