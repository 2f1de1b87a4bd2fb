//! The retry schedule: how long to wait before each retry of a failed delivery.

use std::time::Duration;

/// pretix's and Stripe's shape: eleven retries with growing gaps, about two and a half days.
pub const DEFAULT_SCHEDULE: &str = "5s,30s,1m,5m,20m,1h,4h,6h,12h,12h,24h";

/// Parses `"5s,30s,1m"` (with units) or `"1,2,4"` (bare numbers are minutes, as in the Fast
/// Events plugin). An empty string means no retries.
pub fn parse_schedule(s: &str) -> Result<Vec<Duration>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| match part.parse::<u64>() {
            Ok(minutes) => Ok(Duration::from_secs(minutes * 60)),
            Err(_) => humantime::parse_duration(part).map_err(|e| {
                format!("retry delay `{part}` is not a duration such as 30s, 5m or 1h: {e}")
            }),
        })
        .collect()
}

/// When the attempt after `attempts_made` failed attempts is due, or `None` when the schedule is
/// used up and the delivery has finally failed.
pub fn next_delay(schedule: &[Duration], attempts_made: u32) -> Option<Duration> {
    let index = usize::try_from(attempts_made).ok()?.checked_sub(1)?;
    schedule.get(index).copied()
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
        assert!(parse_schedule("5s,soon").unwrap_err().contains("`soon`"));
    }

    #[test]
    fn schedule_runs_out() {
        let s = parse_schedule("1s,2s").expect("valid");
        assert_eq!(next_delay(&s, 1), Some(Duration::from_secs(1)));
        assert_eq!(next_delay(&s, 2), Some(Duration::from_secs(2)));
        assert_eq!(next_delay(&s, 3), None);
    }
}
