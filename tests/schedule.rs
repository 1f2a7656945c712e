//! Pipeline schedules read as GitHub Actions reads them: five POSIX fields,
//! every error in the user's own fields, no schedule that never fires.

use chrono::{DateTime, Datelike, TimeZone, Utc, Weekday};
use promptloop::schedule::CronSchedule;

// Wednesday 25 November 2026, noon UTC.
fn wednesday() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()
}

fn error(expression: &str) -> String {
    match CronSchedule::parse(expression) {
        Ok(s) => panic!("`{expression}` was accepted; it would run at {:?}", s.upcoming(wednesday(), 3)),
        Err(e) => e,
    }
}

#[test]
fn a_question_mark_is_refused_not_read_as_every_day() {
    let e = error("0 6 ? * 5");
    assert!(e.contains("day-of-month field `?`"), "{e}");
    insta::assert_snapshot!("question_mark_day_of_month", e);
    insta::assert_snapshot!("question_mark_day_of_week", error("0 6 * * ?"));
}

#[test]
fn seven_is_not_a_day_of_week() {
    // GitHub documents 0-6 (or SUN-SAT): `7-7` would otherwise read as every day.
    let e = error("0 6 * * 7-7");
    insta::assert_snapshot!("seven_for_sunday", e);
    assert!(error("0 6 * * 7").contains("write 0 for Sunday"));
    let sundays = CronSchedule::parse("0 6 * * 0").unwrap().upcoming(wednesday(), 3);
    assert!(sundays.iter().all(|r| r.weekday() == Weekday::Sun), "{sundays:?}");
}

#[test]
fn a_schedule_that_never_fires_is_refused() {
    insta::assert_snapshot!("february_31", error("0 6 31 2 *"));
    insta::assert_snapshot!("april_or_june_31", error("0 6 31 4,6 *"));
    assert!(error("0 6 30 FEB *").contains("never runs"));
    // The 29th of February fires, in leap years.
    let leap = CronSchedule::parse("0 6 29 2 *").unwrap().upcoming(wednesday(), 1);
    assert_eq!(leap, [Utc.with_ymd_and_hms(2028, 2, 29, 6, 0, 0).unwrap()]);
    // Day of month or day of week: the Mondays of February still fire.
    assert_eq!(CronSchedule::parse("0 6 31 2 1").unwrap().upcoming(wednesday(), 1).len(), 1);
}

#[test]
fn errors_quote_the_users_field_and_its_range() {
    let e = error("60 6 * * 5");
    assert!(!e.contains("0 60 6"), "the crate's six-field form leaked: {e}");
    insta::assert_snapshot!("minute_60", e);
    insta::assert_snapshot!("hour_24", error("0 24 * * 5"));
    insta::assert_snapshot!("day_of_month_0", error("0 6 0 * *"));
    insta::assert_snapshot!("month_13", error("0 6 1 13 *"));
    insta::assert_snapshot!("backwards_range", error("0 6 * * 5-1"));
    insta::assert_snapshot!("bad_step", error("*/0 6 * * 5"));
    insta::assert_snapshot!("bad_name", error("0 6 * * FUN"));
    insta::assert_snapshot!("out_of_range_in_a_list", error("0,60 6 * * 5"));
}

#[test]
fn what_github_documents_is_accepted() {
    for expression in
        ["0 6 * * 5", "20/15 * * * *", "30 5,17 * * *", "0 9 * * MON-FRI", "0 0 1 JAN,jul *", "*/5 * * * *"]
    {
        assert!(CronSchedule::parse(expression).is_ok(), "{expression}");
    }
    let runs = CronSchedule::parse("20/15 8 * * *").unwrap().upcoming(wednesday(), 3);
    let minutes: Vec<u32> = runs.iter().map(chrono::Timelike::minute).collect();
    assert_eq!(minutes, [20, 35, 50]);
}
