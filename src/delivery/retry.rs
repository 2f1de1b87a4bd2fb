//! The retry schedule at work: which delay comes next, jitter, and `Retry-After`. Parsing a
//! schedule is [`crate::schedule`]'s.

use std::time::Duration;

/// When the attempt after `attempts_made` failed attempts is due, or `None` when the schedule is
/// used up and the delivery has finally failed.
pub fn next_delay(schedule: &[Duration], attempts_made: u32) -> Option<Duration> {
    let index = usize::try_from(attempts_made).ok()?.checked_sub(1)?;
    schedule.get(index).copied()
}

/// Up to 10% added to a delay, derived from `seed` (the delivery id and attempt) so that many
/// deliveries failing together do not all retry in the same instant.
pub fn with_jitter(delay: Duration, seed: u128) -> Duration {
    // A cheap integer mix (splitmix64) of the seed: uniform enough for spreading retries.
    let mut x = (seed as u64) ^ ((seed >> 64) as u64);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    delay + delay.mul_f64((x % 1000) as f64 / 10_000.0)
}

/// The longest `Retry-After` that is honoured; a receiver asking for more gets this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A `Retry-After` value (seconds or an HTTP date), capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_adds_at_most_ten_percent_and_varies() {
        let d = Duration::from_secs(100);
        let all: Vec<Duration> = (0..50u128)
            .map(|seed| with_jitter(d, seed << 70 | seed))
            .collect();
        assert!(
            all.iter()
                .all(|j| *j >= d && *j <= d + Duration::from_secs(10))
        );
        assert!(all.iter().collect::<std::collections::HashSet<_>>().len() > 10);
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date_is_capped() {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("999999", now), Some(MAX_RETRY_AFTER));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn schedule_runs_out() {
        let s = crate::schedule::parse_schedule("1s,2s").expect("valid");
        assert_eq!(next_delay(&s, 1), Some(Duration::from_secs(1)));
        assert_eq!(next_delay(&s, 2), Some(Duration::from_secs(2)));
        assert_eq!(next_delay(&s, 3), None);
    }
}
