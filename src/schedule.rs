//! Retry schedules as operators write them: `"5s,30s,1m"`.
//!
//! A leaf module (it imports nothing from the crate): [`crate::webhook`] parses a webhook's
//! `retry` with it, and [`crate::delivery::retry`] only walks the parsed list.

use std::time::Duration;

/// pretix's and Stripe's shape: eleven retries with growing gaps, about two and a half days.
pub const DEFAULT_SCHEDULE: &str = "5s,30s,1m,5m,20m,1h,4h,6h,12h,12h,24h";

/// A retry delay that is neither a number of minutes nor a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("retry delay `{delay}` is not a duration such as 30s, 5m or 1h: {reason}")]
pub struct ScheduleError {
    pub delay: String,
    pub reason: String,
}

/// Parses `"5s,30s,1m"` (with units) or `"1,2,4"` (bare numbers are minutes, as in the Fast
/// Events plugin). An empty string means no retries.
pub fn parse_schedule(s: &str) -> Result<Vec<Duration>, ScheduleError> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| match part.parse::<u64>() {
            Ok(minutes) => Ok(Duration::from_secs(minutes.saturating_mul(60))),
            Err(_) => humantime::parse_duration(part).map_err(|e| ScheduleError {
                delay: part.to_owned(),
                reason: e.to_string(),
            }),
        })
        .collect()
}

/// The parsed [`DEFAULT_SCHEDULE`].
pub fn default_schedule() -> Vec<Duration> {
    // The constant is checked by a test; a parse failure would be a bug in this file.
    parse_schedule(DEFAULT_SCHEDULE).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_bare_minutes() {
        let s = |x| parse_schedule(x).expect("valid schedule");
        assert_eq!(
            s("5s, 1m,2h"),
            vec![
                Duration::from_secs(5),
                Duration::from_secs(60),
                Duration::from_secs(7200)
            ]
        );
        assert_eq!(
            s("1,2,4"),
            vec![
                Duration::from_secs(60),
                Duration::from_secs(120),
                Duration::from_secs(240)
            ]
        );
        assert!(s("").is_empty());
        assert_eq!(s(DEFAULT_SCHEDULE).len(), 11);
        assert_eq!(default_schedule().len(), 11);
        let e = parse_schedule("5s,soon").unwrap_err();
        assert_eq!(e.delay, "soon");
        assert!(e.to_string().contains("`soon`"));
    }
}
