//! Pipeline schedules: the 5-field POSIX cron GitHub Actions uses
//! (`minute hour day-of-month month day-of-week`; minute 0-59, hour 0-23,
//! day of month 1-31, month 1-12 or JAN-DEC, day of week 0-6 or SUN-SAT with
//! 0 Sunday; `*`, lists `,`, ranges `-` and steps `/`).
//!
//! Each field is read here, against those ranges, so every error quotes the
//! field as the user wrote it; a schedule that can never fire (the 31st of
//! February) is refused. The `cron` crate then only computes run times, from
//! the fields expanded to explicit lists: it reads Quartz syntax (a leading
//! seconds field, day-of-week 1 = Sunday), which is why day-of-week goes over
//! as day names. POSIX also runs a job when *either* restricted day field
//! matches; the crate wants both, so such a schedule is the union of two.

use std::collections::BTreeSet;
use std::str::FromStr;

use chrono::{DateTime, Utc};

const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
const MONTH_NAMES: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
/// The most days each month has (February in a leap year).
const MONTH_DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/// One of the five fields: its name, its range as GitHub documents it, and
/// the names it also takes (the first name stands for `min`).
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    allowed: &'static str,
}

const FIELDS: [Field; 5] = [
    Field { name: "minute", min: 0, max: 59, names: &[], allowed: "0-59" },
    Field { name: "hour", min: 0, max: 23, names: &[], allowed: "0-23" },
    Field { name: "day-of-month", min: 1, max: 31, names: &[], allowed: "1-31" },
    Field { name: "month", min: 1, max: 12, names: &MONTH_NAMES, allowed: "1-12 or JAN-DEC" },
    Field { name: "day-of-week", min: 0, max: 6, names: &DAY_NAMES, allowed: "0-6 or SUN-SAT (0 is Sunday)" },
];

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
        let texts = [minute, hour, day_of_month, month, day_of_week];
        let mut sets = Vec::with_capacity(5);
        for (text, field) in texts.iter().zip(&FIELDS) {
            sets.push(parse_field(text, field).map_err(|m| format!("`{expression}`: {m}"))?);
        }
        let (doms, months) = (&sets[2], &sets[3]);
        let days_restricted = day_of_month != "*" && day_of_week != "*";
        // Only the day of month can rule out every date, and only when it is
        // not in a union with the days of the week (every month has those).
        if day_of_week == "*" && !months.iter().any(|&m| doms.iter().any(|&d| d <= MONTH_DAYS[m as usize - 1])) {
            let months: Vec<&str> = months.iter().map(|&m| MONTHS[m as usize - 1]).collect();
            let have = if months.len() == 1 { "has" } else { "have" };
            return Err(format!(
                "`{expression}` never runs: {} {have} no day {day_of_month} (day-of-month `{day_of_month}` with month `{month}`); pick a day every chosen month has",
                join_or(&months)
            ));
        }
        let list = |i: usize| -> String {
            let field = &FIELDS[i];
            if sets[i].len() as u32 == field.max - field.min + 1 {
                return "*".into();
            }
            let items: Vec<String> = if i == 4 {
                sets[i].iter().map(|&d| DAY_NAMES[d as usize].to_string()).collect()
            } else {
                sets[i].iter().map(u32::to_string).collect()
            };
            items.join(",")
        };
        let quartz = |dom: &str, dow: &str| {
            let text = format!("0 {} {} {dom} {} {dow}", list(0), list(1), list(3));
            cron::Schedule::from_str(&text).map_err(|_| {
                format!(
                    "`{expression}` could not be read as a schedule; write it as in GitHub Actions, e.g. \"0 6 * * 5\""
                )
            })
        };
        let schedules = if days_restricted {
            vec![quartz(&list(2), "*")?, quartz("*", &list(4))?]
        } else {
            vec![quartz(&list(2), &list(4))?]
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

/// `February`, `April or June`, `April, June or September`.
fn join_or(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// The values one field selects: `*`, numbers or names, ranges `a-b`, steps
/// `*/n`, `a-b/n` and `a/n` (from `a` to the end of the range), lists of those.
fn parse_field(text: &str, field: &Field) -> Result<BTreeSet<u32>, String> {
    let Field { name, min, max, allowed, .. } = *field;
    let problem = |what: String| format!("the {name} field `{text}` {what}; {name} takes {allowed}");
    if text.contains('?') {
        return Err(format!(
            "the {name} field `{text}` uses `?`, which is Quartz syntax, not the POSIX cron GitHub Actions reads; write `*` for any {}",
            if name == "day-of-week" {
                "day of the week"
            } else if name == "day-of-month" {
                "day of the month"
            } else {
                name
            }
        ));
    }
    // What is wrong with one item of the field (the whole field when it is one item).
    let item = |s: &str, what: &str| -> String {
        if s == text { problem(format!("is {what}")) } else { problem(format!("has `{s}`, which is {what}")) }
    };
    let value = |s: &str| -> Result<u32, String> {
        if let Ok(n) = s.parse::<u32>() {
            if name == "day-of-week" && n == 7 {
                return Err(format!(
                    "the {name} field `{text}` has 7, which GitHub Actions does not take as a day of week: {name} takes {allowed}; write 0 for Sunday"
                ));
            }
            return if n < min || n > max { Err(item(s, "out of range")) } else { Ok(n) };
        }
        match field.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            Some(i) => Ok(min + i as u32),
            None if field.names.is_empty() => Err(item(s, "not a number")),
            None if name == "month" => Err(item(s, "not a number or a month name")),
            None => Err(item(s, "not a number or a day name")),
        }
    };
    let mut set = BTreeSet::new();
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => match step.parse::<u32>() {
                Ok(step) if step > 0 => (range, step),
                _ => return Err(problem(format!("has the step `/{step}`, which is not a number from 1 up"))),
            },
            None => (part, 1),
        };
        let (first, last) = match range {
            "*" => (min, max),
            "" => return Err(problem("has an empty item".into())),
            _ => match range.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (value(a)?, value(b)?);
                    if b < a {
                        return Err(problem(format!("has the range `{range}`, which runs backwards")));
                    }
                    (a, b)
                }
                // `a/n`: from a to the end of the range, every n.
                None if part.contains('/') => (value(range)?, max),
                None => {
                    let v = value(range)?;
                    (v, v)
                }
            },
        };
        set.extend((first..=last).step_by(step as usize));
    }
    Ok(set)
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
    fn sunday_is_zero() {
        for expression in ["30 2 * * 0", "30 2 * * sun"] {
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
        let weekend = next("0 9 * * 0,5-6", wednesday(), 3);
        let days: Vec<Weekday> = weekend.iter().map(|r| r.weekday()).collect();
        assert_eq!(days, [Weekday::Fri, Weekday::Sat, Weekday::Sun]);
        let every_other = next("0 9 * * */2", wednesday(), 4);
        let days: Vec<Weekday> = every_other.iter().map(|r| r.weekday()).collect();
        // 0,2,4,6: Sunday, Tuesday, Thursday, Saturday.
        assert_eq!(days, [Weekday::Thu, Weekday::Sat, Weekday::Sun, Weekday::Tue]);
        assert_eq!(parse_field("0,6", &FIELDS[4]).unwrap().into_iter().collect::<Vec<_>>(), [0, 6]);
        assert_eq!(parse_field("20/15", &FIELDS[0]).unwrap().into_iter().collect::<Vec<_>>(), [20, 35, 50]);
        assert_eq!(parse_field("MON-fri", &FIELDS[4]).unwrap().len(), 5);
        assert_eq!(parse_field("jan,DEC", &FIELDS[3]).unwrap().into_iter().collect::<Vec<_>>(), [1, 12]);
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
        assert!(CronSchedule::parse("0 6 * * 8").unwrap_err().contains("out of range; day-of-week takes 0-6"));
        assert!(CronSchedule::parse("0 6 * * FUN").unwrap_err().contains("not a number or a day name"));
        assert!(CronSchedule::parse("61 6 * * 5").unwrap_err().contains("minute field `61`"));
    }
}
