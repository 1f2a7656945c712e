//! Pipeline schedules: the 5-field POSIX cron GitHub Actions uses
//! (`minute hour day-of-month month day-of-week`, Sunday = 0 or 7), evaluated
//! with the `cron` crate, which reads Quartz syntax: a leading seconds field
//! and day-of-week 1 = Sunday … 7 = Saturday. Passed through as written,
//! `0 6 * * 5` (Fridays) would run on Thursdays, so the day-of-week field is
//! expanded here and handed over as day names. POSIX also runs a job when
//! *either* restricted day field matches; the crate wants both, so such a
//! schedule is evaluated as the union of two.

use std::str::FromStr;

use chrono::{DateTime, Utc};

const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

#[derive(Debug, Clone)]
pub struct CronSchedule {
    /// As the user wrote it.
    pub expression: String,
    /// One schedule, or two whose union is the POSIX meaning.
    schedules: Vec<cron::Schedule>,
}

impl CronSchedule {
    pub fn parse(expression: &str) -> Result<CronSchedule, String> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let [minute, hour, day_of_month, month, day_of_week] = fields[..] else {
            return Err(format!(
                "`{expression}` has {} fields; write the 5 GitHub Actions uses: minute hour day-of-month month day-of-week, e.g. \"0 6 * * 5\" (Fridays at 06:00 UTC)",
                fields.len()
            ));
        };
        let days = expand_days_of_week(day_of_week)?;
        let quartz = |dom: &str, dow: &str| {
            let text = format!("0 {minute} {hour} {dom} {month} {dow}");
            cron::Schedule::from_str(&text).map_err(|e| format!("`{expression}` is not a valid schedule: {e}"))
        };
        let schedules = if day_of_month != "*" && day_of_week != "*" {
            vec![quartz(day_of_month, "*")?, quartz("*", &days)?]
        } else {
            vec![quartz(day_of_month, &days)?]
        };
        Ok(CronSchedule { expression: expression.to_string(), schedules })
    }

    /// The next `count` run times after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let mut times: Vec<DateTime<Utc>> =
            self.schedules.iter().flat_map(|s| s.after(&after).take(count).collect::<Vec<_>>()).collect();
        times.sort();
        times.dedup();
        times.truncate(count);
        times
    }
}

/// The POSIX day-of-week field (numbers 0-7 with 0 and 7 Sunday, names,
/// lists, ranges, steps) as a list of day names.
fn expand_days_of_week(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok("*".to_string());
    }
    let day = |s: &str| -> Result<usize, String> {
        if let Ok(n) = s.parse::<usize>() {
            return if n <= 7 {
                Ok(n % 7)
            } else {
                Err(format!("day of week `{s}` is out of range 0-7 (0 and 7 are Sunday)"))
            };
        }
        DAY_NAMES
            .iter()
            .position(|d| d.eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("`{s}` is not a day of week; use 0-7 or SUN-SAT"))
    };
    let mut on = [false; 7];
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (
                range,
                step.parse::<usize>()
                    .ok()
                    .filter(|&s| s > 0)
                    .ok_or(format!("step `{step}` must be a positive number"))?,
            ),
            None => (part, 1),
        };
        let (first, last) = match range {
            "*" => (0, 6),
            _ => match range.split_once('-') {
                Some((a, b)) => {
                    let a = day(a)?;
                    // `5-7` runs Friday to Sunday: 7 is Sunday at the end of a range.
                    let b = if b == "7" { 7 } else { day(b)? };
                    if b < a {
                        return Err(format!("day-of-week range `{range}` runs backwards"));
                    }
                    (a, b)
                }
                None if step > 1 => (day(range)?, 6),
                None => (day(range)?, day(range)?),
            },
        };
        for d in (first..=last).step_by(step) {
            on[d % 7] = true;
        }
    }
    Ok(DAY_NAMES.iter().zip(on).filter(|(_, on)| *on).map(|(name, _)| *name).collect::<Vec<_>>().join(","))
}

#[cfg(test)]
mod tests {
    use chrono::{Datelike, TimeZone, Weekday};

    use super::*;

    fn next(expression: &str, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        CronSchedule::parse(expression).unwrap().upcoming(after, count)
    }

    // Wednesday 25 November 2026, noon UTC.
    fn wednesday() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()
    }

    #[test]
    fn fridays_are_fridays() {
        assert_eq!(wednesday().weekday(), Weekday::Wed);
        let runs = next("0 6 * * 5", wednesday(), 3);
        assert_eq!(
            runs,
            [
                Utc.with_ymd_and_hms(2026, 11, 27, 6, 0, 0).unwrap(),
                Utc.with_ymd_and_hms(2026, 12, 4, 6, 0, 0).unwrap(),
                Utc.with_ymd_and_hms(2026, 12, 11, 6, 0, 0).unwrap(),
            ]
        );
        assert!(runs.iter().all(|r| r.weekday() == Weekday::Fri));
        assert_eq!(next("0 6 * * FRI", wednesday(), 3), runs);
    }

    #[test]
    fn sunday_is_zero_and_seven() {
        for expression in ["30 2 * * 0", "30 2 * * 7", "30 2 * * sun"] {
            let runs = next(expression, wednesday(), 2);
            assert!(runs.iter().all(|r| r.weekday() == Weekday::Sun), "{expression}: {runs:?}");
            assert_eq!(runs[0], Utc.with_ymd_and_hms(2026, 11, 29, 2, 30, 0).unwrap());
        }
    }

    #[test]
    fn ranges_lists_and_steps() {
        let weekdays = next("0 9 * * 1-5", wednesday(), 5);
        let days: Vec<Weekday> = weekdays.iter().map(|r| r.weekday()).collect();
        assert_eq!(days, [Weekday::Thu, Weekday::Fri, Weekday::Mon, Weekday::Tue, Weekday::Wed]);
        let weekend = next("0 9 * * 5-7", wednesday(), 3);
        let days: Vec<Weekday> = weekend.iter().map(|r| r.weekday()).collect();
        assert_eq!(days, [Weekday::Fri, Weekday::Sat, Weekday::Sun]);
        let every_other = next("0 9 * * */2", wednesday(), 4);
        let days: Vec<Weekday> = every_other.iter().map(|r| r.weekday()).collect();
        // 0,2,4,6: Sunday, Tuesday, Thursday, Saturday.
        assert_eq!(days, [Weekday::Thu, Weekday::Sat, Weekday::Sun, Weekday::Tue]);
        assert_eq!(expand_days_of_week("0,6").unwrap(), "SUN,SAT");
    }

    #[test]
    fn a_day_of_month_and_a_day_of_week_mean_either() {
        // The 1st of the month or any Monday (POSIX), not "a 1st that is a Monday".
        let runs = next("0 0 1 * 1", wednesday(), 3);
        assert_eq!(
            runs,
            [
                Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap(),
                Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap(),
                Utc.with_ymd_and_hms(2026, 12, 7, 0, 0, 0).unwrap(),
            ]
        );
    }

    #[test]
    fn bad_schedules_say_what_to_write() {
        let error = CronSchedule::parse("0 0 6 * * 5").unwrap_err();
        assert!(error.contains("6 fields") && error.contains("\"0 6 * * 5\""), "{error}");
        assert!(CronSchedule::parse("0 6 * * 8").unwrap_err().contains("out of range 0-7"));
        assert!(CronSchedule::parse("0 6 * * FUN").unwrap_err().contains("not a day of week"));
        assert!(CronSchedule::parse("61 6 * * 5").unwrap_err().contains("not a valid schedule"));
    }
}
