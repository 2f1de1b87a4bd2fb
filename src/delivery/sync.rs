//! How hooktap.toml's webhooks meet the stored ones (a policy, not persistence).
//!
//! - A file entry is matched by the name it was declared with (an API rename keeps the
//!   match), else by a stored webhook's current name (the file takes that webhook over).
//! - A matched webhook keeps its id, status and counters; the file's entry is applied only
//!   when it differs from the entry last applied, so changes made through the API in between
//!   last until the file's entry changes. The entry's `status`, when set, is applied then too.
//! - A webhook the file declared that is no longer in it is deleted.

use std::time::Duration;

use crate::webhook::{Origin, Webhook, WebhookSpec};

/// What applying the file changes.
pub use crate::store::WebhookPlan as Plan;

/// The name a webhook was declared with in the file (or its name, when it was not).
fn declared_name(w: &Webhook) -> &str {
    w.declared.as_ref().map_or(&w.spec.name, |d| &d.name)
}

/// Decides what applying `specs` does to the `stored` webhooks.
pub fn plan(stored: &[Webhook], specs: &[WebhookSpec], grace: Duration) -> Plan {
    let mut plan = Plan::default();
    let mut taken = Vec::new();
    for spec in specs {
        let existing = stored
            .iter()
            .find(|w| w.origin == Origin::Config && declared_name(w) == spec.name)
            .or_else(|| stored.iter().find(|w| w.spec.name == spec.name));
        let webhook = match existing {
            Some(w) => {
                let mut w = w.clone();
                w.origin = Origin::Config;
                w.apply_declared(spec.clone(), grace);
                w
            }
            None => {
                let mut w = Webhook::new(spec.clone(), Origin::Config);
                w.declared = Some(spec.clone());
                w
            }
        };
        taken.push(webhook.id);
        plan.put.push(webhook);
    }
    plan.remove = stored
        .iter()
        .filter(|w| w.origin == Origin::Config && !taken.contains(&w.id))
        .cloned()
        .collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::WebhookStatus;

    fn spec(name: &str) -> WebhookSpec {
        WebhookSpec::example(name)
    }

    #[test]
    fn webhooks_keep_their_id_by_name_and_leave_with_the_file() {
        let first = plan(&[], &[spec("a"), spec("b")], Duration::ZERO);
        assert!(first.remove.is_empty());
        let stored = first.put;
        let (a, b) = (stored[0].clone(), stored[1].clone());

        let mut changed = spec("a");
        changed.url = "https://elsewhere.example.com/".parse().expect("url");
        changed.status = Some(WebhookStatus::Paused);
        let second = plan(&stored, &[changed], Duration::ZERO);
        assert_eq!(second.put.len(), 1);
        let a2 = &second.put[0];
        assert_eq!(a2.id, a.id, "the id survives a change of the file");
        assert_eq!(a2.spec.url.as_str(), "https://elsewhere.example.com/");
        assert_eq!(a2.status, WebhookStatus::Paused);
        assert_eq!(second.remove.len(), 1);
        assert_eq!(second.remove[0].id, b.id, "b left the file");
    }

    #[test]
    fn api_changes_to_a_file_webhook_last_until_its_entry_changes() {
        let mut w = plan(&[], &[spec("a")], Duration::ZERO).put.remove(0);
        // An operator changes the URL, the name and the status through the API.
        w.spec.url = "https://changed.example.com/".parse().expect("url");
        w.spec.name = "renamed".to_owned();
        w.status = WebhookStatus::Paused;
        let again = plan(std::slice::from_ref(&w), &[spec("a")], Duration::ZERO);
        assert_eq!(again.put.len(), 1);
        assert!(again.remove.is_empty());
        assert_eq!(again.put[0].id, w.id, "the rename keeps the file's match");
        assert_eq!(
            again.put[0].spec.url.as_str(),
            "https://changed.example.com/",
            "an unchanged file keeps the API's change"
        );
        assert_eq!(again.put[0].status, WebhookStatus::Paused);

        let mut edited = spec("a");
        edited.url = "https://from-the-file.example.com/".parse().expect("url");
        let third = plan(&again.put, &[edited], Duration::ZERO);
        assert_eq!(
            third.put[0].spec.url.as_str(),
            "https://from-the-file.example.com/",
            "a changed entry wins"
        );
        assert_eq!(
            third.put[0].status,
            WebhookStatus::Paused,
            "an entry without `status` leaves the status alone"
        );
    }

    #[test]
    fn the_file_takes_over_an_api_webhook_of_the_same_name() {
        let api = Webhook::new(spec("crm"), Origin::Api);
        let p = plan(std::slice::from_ref(&api), &[spec("crm")], Duration::ZERO);
        assert_eq!(p.put[0].id, api.id);
        assert_eq!(p.put[0].origin, Origin::Config);
        let p = plan(std::slice::from_ref(&api), &[], Duration::ZERO);
        assert!(
            p.remove.is_empty(),
            "API webhooks are left alone by the file"
        );
    }
}
