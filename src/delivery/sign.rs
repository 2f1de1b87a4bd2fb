//! Signing profiles: the headers that identify and sign one webhook request.
//!
//! Every profile signs the exact body bytes sent. The profiles differ in header names and in
//! what the HMAC covers; [`headers`] is the one place that knows them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::webhook::Profile;

/// base64(HMAC-SHA256(key, message)).
pub fn hmac_sha256_base64(key: &[u8], message: &[u8]) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The key bytes of a Standard Webhooks secret: `whsec_<base64>` is decoded, as the spec says;
/// any other secret is used as its bytes.
pub fn standard_key(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix("whsec_")
        .and_then(|b64| STANDARD.decode(b64).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// What identifies one request of one delivery.
pub struct Message<'a> {
    pub webhook_id: &'a str,
    /// Stable across retries: receivers deduplicate on it.
    pub delivery_id: &'a str,
    /// `None` for a batch that mixes topics.
    pub topic: Option<&'a str>,
    pub source: &'a str,
    /// Unix seconds of this attempt.
    pub timestamp: i64,
    pub body: &'a [u8],
}

/// The identifying and signature headers of `profile`, signed with `secret` and, during a
/// rotation, also with `previous` (Standard Webhooks carries several signatures; the other
/// profiles have room for one and sign with the current secret only).
pub fn headers(
    profile: Profile,
    prefix: &str,
    secret: &str,
    previous: Option<&str>,
    m: &Message<'_>,
) -> Vec<(String, String)> {
    match profile {
        Profile::Hooktap => {
            let (resource, event) = m.topic.and_then(|t| t.rsplit_once('.')).unzip();
            let mut h = vec![(format!("{prefix}Id"), m.webhook_id.to_owned())];
            if let (Some(topic), Some(resource), Some(event)) = (m.topic, resource, event) {
                h.push((format!("{prefix}Topic"), topic.to_owned()));
                h.push((format!("{prefix}Resource"), resource.to_owned()));
                h.push((format!("{prefix}Event"), event.to_owned()));
            }
            h.push((format!("{prefix}Delivery-Id"), m.delivery_id.to_owned()));
            h.push((format!("{prefix}Source"), m.source.to_owned()));
            h.push((
                format!("{prefix}Signature"),
                hmac_sha256_base64(secret.as_bytes(), m.body),
            ));
            h
        }
        Profile::Standard => {
            let signed = |secret: &str| {
                let mut content = format!("{}.{}.", m.delivery_id, m.timestamp).into_bytes();
                content.extend_from_slice(m.body);
                format!("v1,{}", hmac_sha256_base64(&standard_key(secret), &content))
            };
            let mut signatures = signed(secret);
            if let Some(previous) = previous {
                signatures.push(' ');
                signatures.push_str(&signed(previous));
            }
            vec![
                ("webhook-id".to_owned(), m.delivery_id.to_owned()),
                ("webhook-timestamp".to_owned(), m.timestamp.to_string()),
                ("webhook-signature".to_owned(), signatures),
            ]
        }
        Profile::Mautic => vec![(
            "Webhook-Signature".to_owned(),
            hmac_sha256_base64(secret.as_bytes(), m.body),
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &[u8]) -> Message<'_> {
        Message {
            webhook_id: "w1",
            delivery_id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
            topic: Some("order.created"),
            source: "https://shop.test/",
            timestamp: 1614265330,
            body,
        }
    }

    #[test]
    fn hmac_matches_a_known_vector() {
        // RFC 4231 test case 2 (hex 5bdcc146...ec3843), in base64.
        assert_eq!(
            hmac_sha256_base64(b"Jefe", b"what do ya want for nothing?"),
            "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM="
        );
    }

    #[test]
    fn standard_webhooks_matches_the_spec_example() {
        // The example of the Standard Webhooks specification (and its reference libraries).
        let body = br#"{"test": 2432232314}"#;
        let h = headers(
            Profile::Standard,
            "",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            None,
            &message(body),
        );
        assert_eq!(
            h[0],
            ("webhook-id".into(), "msg_p5jXN8AQM9LWM0D4loKWxJek".into())
        );
        assert_eq!(h[1], ("webhook-timestamp".into(), "1614265330".into()));
        assert_eq!(
            h[2],
            (
                "webhook-signature".into(),
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".into()
            )
        );
    }

    #[test]
    fn a_rotation_sends_both_standard_signatures() {
        let h = headers(Profile::Standard, "", "new", Some("old"), &message(b"{}"));
        let sigs: Vec<&str> = h[2].1.split(' ').collect();
        assert_eq!(sigs.len(), 2);
        assert!(sigs.iter().all(|s| s.starts_with("v1,")));
        assert_ne!(sigs[0], sigs[1]);
    }

    #[test]
    fn hooktap_profile_honours_the_prefix_and_mautic_has_one_header() {
        let h = headers(
            Profile::Hooktap,
            "X-WC-Webhook-",
            "s",
            None,
            &message(b"{}"),
        );
        let names: Vec<&str> = h.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "X-WC-Webhook-Id",
                "X-WC-Webhook-Topic",
                "X-WC-Webhook-Resource",
                "X-WC-Webhook-Event",
                "X-WC-Webhook-Delivery-Id",
                "X-WC-Webhook-Source",
                "X-WC-Webhook-Signature"
            ]
        );
        assert_eq!(h[2].1, "order");
        let h = headers(Profile::Mautic, "", "s", None, &message(b"{}"));
        assert_eq!(
            h,
            vec![(
                "Webhook-Signature".to_owned(),
                hmac_sha256_base64(b"s", b"{}")
            )]
        );
    }
}
