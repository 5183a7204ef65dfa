//! Cron schedules as CronJobs write them: five fields (minute, hour, day of month, month, day of
//! week) with `*`, lists, ranges, steps and month and day names, or `@hourly`, `@daily`,
//! `@midnight`, `@weekly`, `@monthly`, `@yearly`, `@annually`; times in UTC. The apiserver
//! refuses a CronJob whose schedule does not parse; the CronJob controller runs by it.

/// A parsed schedule: the allowed values of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days: Vec<bool>,
    months: Vec<bool>,
    weekdays: Vec<bool>,
    /// Day of month and day of week both restricted: either matching is enough (cron's rule).
    either_day: bool,
}

fn field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<Vec<bool>, String> {
    let mut allowed = vec![false; max as usize + 1];
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + min);
        }
        s.parse::<u32>()
            .map_err(|_| format!("{s:?} is not a number"))
    };
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().map_err(|_| format!("bad step {s:?}"))?),
            None => (part, 1),
        };
        if step == 0 {
            return Err("a step of 0".into());
        }
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
        if lo < min || hi > max || lo > hi {
            return Err(format!("{range:?} is out of {min}-{max}"));
        }
        for v in (lo..=hi).step_by(step as usize) {
            allowed[v as usize] = true;
        }
    }
    Ok(allowed)
}

impl Schedule {
    /// Parses a schedule (see the module docs).
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            t if t.starts_with("TZ=") || t.starts_with("CRON_TZ=") => {
                return Err("time zones in the schedule are not supported (use UTC)".into());
            }
            t => t,
        };
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [m, h, dom, mon, dow] = parts[..] else {
            return Err(format!("expected 5 fields, found {}", parts.len()));
        };
        const MONTHS: &[&str] = &[
            "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
        ];
        const DAYS: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
        let mut weekdays = field(dow, 0, 7, DAYS)?;
        if weekdays[7] {
            weekdays[0] = true;
        }
        weekdays.truncate(7);
        Ok(Schedule {
            minutes: field(m, 0, 59, &[])?,
            hours: field(h, 0, 23, &[])?,
            days: field(dom, 1, 31, &[])?,
            months: field(mon, 1, 12, MONTHS)?,
            weekdays,
            either_day: ![dom, dow]
                .iter()
                .any(|f| f.starts_with('*') || f.starts_with('?')),
        })
    }

    /// Whether the minute holding `t` (seconds since the epoch, UTC) is a scheduled time.
    pub fn matches(&self, t: u64) -> bool {
        let minute = (t / 60 % 60) as usize;
        let hour = (t / 3600 % 24) as usize;
        let days = t / 86_400;
        let weekday = ((days + 4) % 7) as usize; // 1970-01-01 was a Thursday
        let (_, month, day) = crate::store::civil_from_days(days as i64);
        let day_ok = if self.either_day {
            self.days[day as usize] || self.weekdays[weekday]
        } else {
            self.days[day as usize] && self.weekdays[weekday]
        };
        self.minutes[minute] && self.hours[hour] && self.months[month as usize] && day_ok
    }

    /// The latest scheduled time after `after` and at or before `until` (both in seconds since
    /// the epoch), looking back at most a year of minutes.
    pub fn last_between(&self, after: u64, until: u64) -> Option<u64> {
        let mut t = until / 60 * 60;
        let floor = after.max(until.saturating_sub(366 * 86_400));
        while t > floor {
            if self.matches(t) {
                return Some(t);
            }
            t -= 60;
        }
        None
    }

    /// The next scheduled time after `t`, within a year.
    pub fn next_after(&self, t: u64) -> Option<u64> {
        let mut c = t / 60 * 60 + 60;
        let end = t + 366 * 86_400;
        while c <= end {
            if self.matches(c) {
                return Some(c);
            }
            c += 60;
        }
        None
    }
}
