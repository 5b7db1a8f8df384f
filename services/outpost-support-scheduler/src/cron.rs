//! When a job runs: EdgeX's schedule definitions, evaluated in UTC.
//!
//! - `INTERVAL`: a Go duration (`"10s"`, `"1h30m"`); the first run one interval after the
//!   start (or after now), as gocron does.
//! - `CRON`: a crontab of 5 fields (minute hour day-of-month month day-of-week) or 6 (a
//!   leading seconds field), with `*`, `?`, lists, ranges, steps and the names `JAN`-`DEC`
//!   and `SUN`-`SAT`; the descriptors `@yearly` (`@annually`), `@monthly`, `@weekly`,
//!   `@daily` (`@midnight`), `@hourly` and `@every <duration>`; an optional `CRON_TZ=UTC`
//!   or `TZ=UTC` prefix. When both day fields are restricted, a day matching either runs
//!   (robfig/cron's rule, which EdgeX uses).

use std::time::Duration;

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Every(Duration),
    Cron(Box<Cron>),
}

/// A crontab: the set of allowed values of each field, as bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    second: u64,
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    /// Whether the day fields were `*` (or `?`): then only the other one restricts.
    dom_star: bool,
    dow_star: bool,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Parses a crontab.
pub fn parse_cron(text: &str) -> Result<Schedule, String> {
    let mut spec = text.trim();
    for prefix in ["CRON_TZ=", "TZ="] {
        if let Some(rest) = spec.strip_prefix(prefix) {
            let (zone, rest) = rest
                .split_once(char::is_whitespace)
                .ok_or_else(|| format!("crontab '{text}' has a time zone and nothing else"))?;
            if !matches!(zone, "UTC" | "Etc/UTC" | "GMT" | "Etc/GMT" | "Z") {
                return Err(format!(
                    "crontab '{text}': time zone {zone} is not supported; crontabs are evaluated in UTC"
                ));
            }
            spec = rest.trim();
        }
    }
    if let Some(d) = spec.strip_prefix("@every") {
        let d =
            crate::model::parse_duration(d.trim()).map_err(|e| format!("crontab '{text}': {e}"))?;
        return Ok(Schedule::Every(d));
    }
    let spec = match spec {
        "@yearly" | "@annually" => "0 0 0 1 1 *",
        "@monthly" => "0 0 0 1 * *",
        "@weekly" => "0 0 0 * * 0",
        "@daily" | "@midnight" => "0 0 0 * * *",
        "@hourly" => "0 0 * * * *",
        s if s.starts_with('@') => return Err(format!("crontab '{text}': unknown descriptor {s}")),
        s => s,
    };
    let fields: Vec<&str> = spec.split_whitespace().collect();
    let fields: Vec<&str> = match fields.len() {
        5 => std::iter::once("0").chain(fields).collect(),
        6 => fields,
        n => {
            return Err(format!(
                "crontab '{text}' has {n} fields: give 5 (minute hour day month weekday) or 6 (seconds first)"
            ));
        }
    };
    let err = |e: String| format!("crontab '{text}': {e}");
    let (second, _) = field(fields[0], 0, 59, &[]).map_err(err)?;
    let (minute, _) = field(fields[1], 0, 59, &[]).map_err(err)?;
    let (hour, _) = field(fields[2], 0, 23, &[]).map_err(err)?;
    let (dom, dom_star) = field(fields[3], 1, 31, &[]).map_err(err)?;
    let (month, _) = field(fields[4], 1, 12, &MONTHS).map_err(err)?;
    let (mut dow, dow_star) = field(fields[5], 0, 7, &DAYS).map_err(err)?;
    // 7 is Sunday too.
    if dow & (1 << 7) != 0 {
        dow = (dow | 1) & !(1 << 7);
    }
    Ok(Schedule::Cron(Box::new(Cron {
        second,
        minute,
        hour,
        dom,
        month,
        dow,
        dom_star,
        dow_star,
    })))
}

/// One field: its bits and whether it was a star.
fn field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let value = |s: &str| -> Result<u32, String> {
        let upper = s.to_ascii_uppercase();
        if let Some(i) = names.iter().position(|n| *n == upper) {
            // Month names count from 1 (the field's minimum), day names from 0.
            return Ok(u32::try_from(i).unwrap_or(0) + min);
        }
        let n: u32 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
        if n < min || n > max {
            return Err(format!("{n} is outside {min}-{max}"));
        }
        Ok(n)
    };
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let s: u32 = s
                    .parse()
                    .map_err(|_| format!("step '{s}' is not a number"))?;
                if s == 0 {
                    return Err("a step must be at least 1".into());
                }
                (r, s)
            }
            None => (part, 1),
        };
        let (lo, hi) = match range {
            "*" | "?" => (min, max),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if part.contains('/') => (value(r)?, max),
                None => {
                    let v = value(r)?;
                    (v, v)
                }
            },
        };
        if lo > hi {
            return Err(format!("range {lo}-{hi} runs backwards"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    let star = matches!(text, "*" | "?");
    Ok((bits, star))
}

impl Schedule {
    /// The first run strictly after `after` (ms since the epoch), none beyond about five
    /// years.
    pub fn next_after(&self, after: i64) -> Option<i64> {
        match self {
            Self::Every(d) => {
                let step = i64::try_from(d.as_millis()).ok().filter(|s| *s > 0)?;
                after.checked_add(step)
            }
            Self::Cron(c) => c.next_after(after),
        }
    }
}

impl Cron {
    fn next_after(&self, after: i64) -> Option<i64> {
        let has =
            |bits: u64, v: i64| u32::try_from(v).is_ok_and(|v| v < 64 && bits & (1 << v) != 0);
        // Whole seconds, from the next one.
        let mut t = after.div_euclid(1000) + 1;
        let limit = t + 5 * 366 * 86_400;
        while t < limit {
            let days = t.div_euclid(86_400);
            let (y, m, d) = civil_from_days(days);
            let secs = t.rem_euclid(86_400);
            let (hh, mm, ss) = (secs / 3600, secs % 3600 / 60, secs % 60);
            if !has(self.month, m) {
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                t = days_from_civil(ny, nm, 1) * 86_400;
                continue;
            }
            let weekday = (days + 4).rem_euclid(7);
            let dom_ok = has(self.dom, d);
            let dow_ok = has(self.dow, weekday);
            let day_ok = if self.dom_star || self.dow_star {
                dom_ok && dow_ok
            } else {
                dom_ok || dow_ok
            };
            if !day_ok {
                t = (days + 1) * 86_400;
                continue;
            }
            if !has(self.hour, hh) {
                t = days * 86_400 + (hh + 1) * 3600;
                continue;
            }
            if !has(self.minute, mm) {
                t = days * 86_400 + hh * 3600 + (mm + 1) * 60;
                continue;
            }
            if !has(self.second, ss) {
                t += 1;
                continue;
            }
            return t.checked_mul(1000);
        }
        None
    }
}

/// The civil date (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// algorithm).
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The day count since 1970-01-01 of a civil date.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds of a UTC date and time.
    fn at(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> i64 {
        (days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s) * 1000
    }

    fn next(spec: &str, from: i64) -> i64 {
        parse_cron(spec).unwrap().next_after(from).unwrap()
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-1000, 0, 11_016, 20_454, 100_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn crontabs_run_when_edgex_runs_them() {
        let t = at(2026, 12, 6, 10, 15, 7);
        assert_eq!(next("*/30 * * * * *", t), at(2026, 12, 6, 10, 15, 30));
        assert_eq!(next("*/2 * * * * *", t), at(2026, 12, 6, 10, 15, 8));
        assert_eq!(next("0 6 * * ?", t), at(2026, 12, 7, 6, 0, 0));
        assert_eq!(next("CRON_TZ=UTC 0 0 2 2 *", t), at(2027, 2, 2, 0, 0, 0));
        assert_eq!(next("@hourly", t), at(2026, 12, 6, 11, 0, 0));
        assert_eq!(next("@every 90s", t), t + 90_000);
        // 2026-12-06 is a Sunday: both day fields restricted means either.
        assert_eq!(next("0 0 13 * MON", t), at(2026, 12, 7, 0, 0, 0));
        assert_eq!(next("0 0 13 * *", t), at(2026, 12, 13, 0, 0, 0));
        assert_eq!(next("0 0 * * 7", t), at(2026, 12, 13, 0, 0, 0));
        assert_eq!(next("0 12 29 FEB *", t), at(2028, 2, 29, 12, 0, 0));
        assert_eq!(next("5-10/5 * * * *", t), at(2026, 12, 6, 11, 5, 0));
        assert_eq!(parse_cron("0 0 31 2 *").unwrap().next_after(t), None);
    }

    #[test]
    fn bad_crontabs_are_refused() {
        for bad in [
            "",
            "* * * *",
            "* * * * * * *",
            "61 * * * *",
            "* * * 13 *",
            "*/0 * * * *",
            "a * * * *",
            "5-1 * * * *",
            "@sometimes",
            "CRON_TZ=Asia/Taipei 0 6 * * ?",
            "@every 0s",
        ] {
            assert!(parse_cron(bad).is_err(), "{bad}");
        }
    }
}
