//! Human units used on the command line and in profiles: sizes ("512m", "1.5g"), durations
//! ("30s", "1h30m") and CPU quotas ("1.5"). Parsed once into types; nothing downstream sees
//! strings.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Why a unit string was rejected. The message names the input and shows a valid example.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("invalid size '{input}': {reason} — use a number with an optional k, m, g or t suffix (binary units), e.g. 512m or 2g")]
    Size { input: String, reason: String },
    #[error("invalid duration '{input}': {reason} — use e.g. 500ms, 30s, 5m, 1h30m (a bare number means seconds)")]
    Duration { input: String, reason: String },
    #[error("invalid CPU quota '{input}': {reason} — use a number of cores such as 1, 0.5 or 2.5")]
    Cpus { input: String, reason: String },
}

/// A byte count. Parsing accepts binary suffixes (k = 1024) with optional "b"/"ib".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn bytes(self) -> u64 {
        self.0
    }
    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| UnitError::Size {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        if number.is_empty() {
            return Err(err("it does not start with a number"));
        }
        let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            other => return Err(err(&format!("unknown unit '{other}'"))),
        };
        let bytes = if let Some((whole, frac)) = number.split_once('.') {
            if frac.contains('.') || (whole.is_empty() && frac.is_empty()) {
                return Err(err("it is not a number"));
            }
            let value: f64 = number.parse().map_err(|_| err("it is not a number"))?;
            let bytes = value * multiplier as f64;
            if !bytes.is_finite() || bytes >= u64::MAX as f64 {
                return Err(err("it is too large"));
            }
            bytes.round() as u64
        } else {
            let value: u64 = number.parse().map_err(|_| err("it is too large"))?;
            value
                .checked_mul(multiplier)
                .ok_or_else(|| err("it is too large"))?
        };
        Ok(ByteSize(bytes))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (name, size) in UNITS {
            if self.0 >= size {
                let value = self.0 as f64 / size as f64;
                return if self.0 % size == 0 {
                    write!(f, "{} {name}", self.0 / size)
                } else {
                    write!(f, "{value:.1} {name}")
                };
            }
        }
        write!(f, "{} B", self.0)
    }
}

/// Parses a duration such as "1h30m", "250ms", "10" (seconds).
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let err = |reason: &str| UnitError::Duration {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    if let Ok(secs) = s.parse::<f64>() {
        if !(secs.is_finite() && secs >= 0.0) {
            return Err(err("it must be a positive number"));
        }
        // Too long for a Duration (about 584 billion years) is an error, not a panic
        // (found by fuzz/recipe through a recipe's timeout).
        return Duration::try_from_secs_f64(secs).map_err(|_| err("it is too long"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| err("a number at the end has no unit"))?;
        let (number, tail) = rest.split_at(split);
        if number.is_empty() {
            return Err(err("expected a number"));
        }
        let value: f64 = number.parse().map_err(|_| err("it is not a number"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let seconds = match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            "d" => value * 86400.0,
            other => return Err(err(&format!("unknown unit '{other}'"))),
        };
        total = Duration::try_from_secs_f64(seconds)
            .ok()
            .and_then(|d| total.checked_add(d))
            .ok_or_else(|| err("it is too long"))?;
        rest = next;
    }
    Ok(total)
}

/// Formats a duration the way users write them ("1h30m", "2.5s", "250ms").
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    if secs < 60 {
        return if ms % 1000 == 0 {
            format!("{secs}s")
        } else {
            format!("{:.1}s", d.as_secs_f64())
        };
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// A CPU quota in thousandths of a core (1500 = one and a half cores).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CpuQuota(pub u64);

impl FromStr for CpuQuota {
    type Err = UnitError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| UnitError::Cpus {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let value: f64 = input
            .trim()
            .parse()
            .map_err(|_| err("it is not a number"))?;
        if !value.is_finite() || value <= 0.0 {
            return Err(err("it must be greater than zero"));
        }
        let millis = (value * 1000.0).round();
        if millis < 10.0 {
            return Err(err("the smallest quota is 0.01 cores"));
        }
        if millis > 1_000_000.0 {
            return Err(err("it is too large"));
        }
        Ok(CpuQuota(millis as u64))
    }
}

impl fmt::Display for CpuQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 1000 == 0 {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}", self.0 as f64 / 1000.0)
        }
    }
}

/// "none", "unlimited" and "max" switch a limit off.
pub fn is_unlimited(input: &str) -> bool {
    matches!(
        input.trim().to_ascii_lowercase().as_str(),
        "none" | "unlimited" | "max" | "off"
    )
}

/// A limit given on the command line: a value, or "none" to switch the profile's limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit<T> {
    Unlimited,
    Value(T),
}

impl<T: std::str::FromStr> std::str::FromStr for Limit<T> {
    type Err = T::Err;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if is_unlimited(s) {
            Ok(Limit::Unlimited)
        } else {
            s.parse().map(Limit::Value)
        }
    }
}

impl<T> Limit<T> {
    /// The value, or None for `none` (no limit).
    pub fn into_option(self) -> Option<T> {
        match self {
            Limit::Unlimited => None,
            Limit::Value(v) => Some(v),
        }
    }
}

/// A wall-clock limit in a form clap can parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(pub Duration);

impl std::str::FromStr for Timeout {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(Timeout)
    }
}

/// Unix seconds as RFC 3339 UTC (`2026-12-04T14:58:03Z`), the form OCI configs, runc's state
/// and E2B's API use. Civil date from days since 1970-01-01 by Howard Hinnant's algorithm (no
/// calendar crate for one function).
pub fn rfc3339(secs: u64) -> String {
    let (date, rem) = civil(secs);
    format!(
        "{date}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// [`rfc3339`] with milliseconds (`2026-12-04T14:58:03.042Z`), for event time stamps.
pub fn rfc3339_millis(secs: u64, millis: u32) -> String {
    let (date, rem) = civil(secs);
    format!(
        "{date}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The date (`YYYY-MM-DD`) of `secs` and the seconds since its midnight.
fn civil(secs: u64) -> (String, u64) {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (format!("{year:04}-{month:02}-{day:02}"), rem)
}

/// Days since 1970-01-01 of a civil date (year, month 1-12, day 1-31), the inverse of the
/// date [`rfc3339`] writes (Howard Hinnant's algorithm), for parsing RFC 3339 times.
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_from_civil_inverts_the_written_date() {
        for secs in [0u64, 951_782_400, 1_796_412_514, 4_102_444_800] {
            let date = rfc3339(secs);
            let n = |r: std::ops::Range<usize>| date[r].parse::<i64>().unwrap();
            assert_eq!(
                days_from_civil(n(0..4), n(5..7), n(8..10)),
                i64::try_from(secs / 86_400).unwrap(),
                "{date}"
            );
        }
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!("512m".parse::<ByteSize>().unwrap().0, 512 << 20);
        assert_eq!("1G".parse::<ByteSize>().unwrap().0, 1 << 30);
        assert_eq!("2GiB".parse::<ByteSize>().unwrap().0, 2 << 30);
        assert_eq!("64k".parse::<ByteSize>().unwrap().0, 64 << 10);
        assert_eq!("1.5g".parse::<ByteSize>().unwrap().0, 3 << 29);
        assert_eq!("4096".parse::<ByteSize>().unwrap().0, 4096);
        assert_eq!("10b".parse::<ByteSize>().unwrap().0, 10);
    }

    #[test]
    fn bad_sizes_say_what_is_wrong() {
        let e = "12xb".parse::<ByteSize>().unwrap_err().to_string();
        assert!(
            e.contains("'12xb'") && e.contains("unknown unit 'xb'"),
            "{e}"
        );
        assert!("".parse::<ByteSize>().is_err());
        assert!("m".parse::<ByteSize>().is_err());
        assert!("1.2.3m".parse::<ByteSize>().is_err());
        assert!("-1m".parse::<ByteSize>().is_err());
        assert!("99999999999999t".parse::<ByteSize>().is_err());
    }

    #[test]
    fn sizes_display_readably() {
        assert_eq!(ByteSize(256 << 20).to_string(), "256 MiB");
        assert_eq!(ByteSize(3 << 29).to_string(), "1.5 GiB");
        assert_eq!(ByteSize(12).to_string(), "12 B");
    }

    #[test]
    fn durations_parse_compound_forms() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5m3").is_err());
    }

    #[test]
    fn durations_too_long_are_errors_not_panics() {
        // fuzz/recipe found `timeout = "3044…4m"` panicking in Duration::from_secs_f64; the
        // same text as `--timeout` crashed nsbox (exit 101).
        let huge = format!("3{}m", "4".repeat(100));
        assert!(parse_duration(&huge)
            .unwrap_err()
            .to_string()
            .contains("too long"));
        assert!(parse_duration(&"9".repeat(40)).is_err());
        assert!(parse_duration("300000000000000000000d1s").is_err());
        assert!(parse_duration("18446744073709551615s1s").is_err());
    }

    #[test]
    fn durations_format_back() {
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_millis(2500)), "2.5s");
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
    }

    #[test]
    fn cpu_quotas() {
        assert_eq!("1.5".parse::<CpuQuota>().unwrap(), CpuQuota(1500));
        assert_eq!("2".parse::<CpuQuota>().unwrap(), CpuQuota(2000));
        assert!("0".parse::<CpuQuota>().is_err());
        assert!("abc".parse::<CpuQuota>().is_err());
        assert!("0.001".parse::<CpuQuota>().is_err());
        assert_eq!(CpuQuota(1500).to_string(), "1.5");
    }
}
