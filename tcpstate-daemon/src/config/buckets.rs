//! `--buckets`: the histogram's bounds, validated for the kernel (which counts in u64
//! nanoseconds, into at most `MAX_BUCKETS` bounds).

use std::time::Duration;

use tcpstate_common::MAX_BUCKETS;

/// The default histogram bounds, in seconds.
pub const DEFAULT_BUCKETS: [f64; 18] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0, 1800.0, 3600.0,
];

/// The largest histogram bound, in seconds: the kernel counts in u64 nanoseconds and keeps
/// `u64::MAX` for "no bound" (`DurationBuckets::UNUSED`).
pub const MAX_BUCKET_SECONDS: f64 = 18_446_744_073.0;

/// Validated histogram bounds, in seconds and in the kernel's nanoseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets {
    seconds: Vec<f64>,
}

impl Buckets {
    pub fn new(seconds: Vec<f64>) -> Result<Self, String> {
        if seconds.is_empty() {
            return Err("at least one bucket bound is needed".into());
        }
        if seconds.len() > MAX_BUCKETS {
            return Err(format!(
                "{} bounds given, at most {MAX_BUCKETS} are supported",
                seconds.len()
            ));
        }
        for &bound in &seconds {
            if !(bound.is_finite() && bound > 0.0) {
                return Err(format!("bound {bound} is not a positive number of seconds"));
            }
            if bound > MAX_BUCKET_SECONDS {
                return Err(format!(
                    "bound {} is too large: the kernel counts in u64 nanoseconds, so the largest \
                     bound is {MAX_BUCKET_SECONDS} s (about 584 years)",
                    // 1e300 would print as 301 digits.
                    if bound < 1e15 {
                        bound.to_string()
                    } else {
                        format!("{bound:e}")
                    }
                ));
            }
            if bound < 1e-9 {
                return Err(format!("bound {bound} is below the 1 ns resolution"));
            }
        }
        if let Some(pair) = seconds.windows(2).find(|pair| pair[0] >= pair[1]) {
            return Err(format!(
                "bounds must be strictly increasing, but {} is followed by {}",
                pair[0], pair[1]
            ));
        }
        let buckets = Buckets { seconds };
        if let Some(pair) = buckets
            .nanoseconds()
            .windows(2)
            .find(|pair| pair[0] >= pair[1])
        {
            return Err(format!(
                "bounds {} ns and {} ns are equal at 1 ns resolution",
                pair[0], pair[1]
            ));
        }
        Ok(buckets)
    }

    pub fn seconds(&self) -> &[f64] {
        &self.seconds
    }

    pub fn nanoseconds(&self) -> Vec<u64> {
        self.seconds
            .iter()
            .map(|s| Duration::from_secs_f64(*s).as_nanos() as u64)
            .collect()
    }
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            seconds: DEFAULT_BUCKETS.to_vec(),
        }
    }
}

pub(super) fn parse_buckets(text: &str) -> Result<Buckets, String> {
    let seconds = text
        .split(',')
        .map(str::trim)
        .map(|item| {
            item.parse::<f64>()
                .map_err(|_| format!("`{item}` is not a number of seconds"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Buckets::new(seconds)
}
