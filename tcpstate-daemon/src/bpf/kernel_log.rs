//! The kernel programs' reports of their rare failures (aya-log; see
//! `tcpstate-ebpf/src/report.rs`) in the daemon's log, at most one line per condition a minute,
//! so that a storm cannot flood it. The counts are exact in `tcpstate_recording_failures_total`;
//! the log says when and what.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use aya::Ebpf;
use aya_log::EbpfLogger;
use log::{Log, Metadata, Record};

/// Least time between two lines of one condition.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// The reader of the programs' log ring, holding its descriptor.
pub type KernelLog = EbpfLogger<RateLimited<&'static dyn Log>>;

/// Takes the object's log ring (before the programs load, while it is in `ebpf`).
pub fn take(ebpf: &mut Ebpf) -> Result<KernelLog, aya_log::Error> {
    EbpfLogger::init_with_logger(ebpf, RateLimited::new(log::logger(), INTERVAL))
}

/// Writes the programs' records to the log as they come, on the runtime's thread (they are
/// rare: reading them costs nothing in between).
pub fn forward(kernel_log: KernelLog) -> std::io::Result<()> {
    let mut ring = crate::sys::bpf::watch_log_ring(kernel_log)?;
    tokio::spawn(async move {
        while let Ok(mut ready) = ring.readable_mut().await {
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
    Ok(())
}

/// A logger that passes on the first record of each condition (each call site of the kernel
/// programs: file and line), then at most one per `every`, saying how many it held back.
pub struct RateLimited<L> {
    inner: L,
    every: Duration,
    /// By condition: when its last line was written, and the records held back since.
    written: Mutex<HashMap<(String, u32), (Instant, u64)>>,
}

impl<L> RateLimited<L> {
    pub fn new(inner: L, every: Duration) -> Self {
        RateLimited {
            inner,
            every,
            written: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a record of `condition` is written now; if so, how many were held back.
    fn admit(&self, condition: (String, u32), now: Instant) -> Option<u64> {
        let mut written = self
            .written
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match written.get_mut(&condition) {
            Some((last, held_back)) if now.duration_since(*last) < self.every => {
                *held_back += 1;
                None
            }
            Some((last, held_back)) => {
                *last = now;
                Some(std::mem::take(held_back))
            }
            None => {
                written.insert(condition, (now, 0));
                Some(0)
            }
        }
    }
}

impl<L: Log> Log for RateLimited<L> {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let condition = (
            record.file().unwrap_or_default().to_owned(),
            record.line().unwrap_or(0),
        );
        match self.admit(condition, Instant::now()) {
            None => {}
            Some(0) => self.inner.log(record),
            Some(held_back) => self.inner.log(
                &Record::builder()
                    .metadata(record.metadata().clone())
                    .args(format_args!(
                        "{} ({held_back} more like it since the last such line)",
                        record.args()
                    ))
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            ),
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps the lines it is given.
    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);

    impl Log for &Lines {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }

        fn log(&self, record: &Record<'_>) {
            self.0.lock().unwrap().push(record.args().to_string());
        }

        fn flush(&self) {}
    }

    fn report(logger: &impl Log, line: u32, text: &str) {
        logger.log(
            &Record::builder()
                .args(format_args!("{text}"))
                .file(Some("src/report.rs"))
                .line(Some(line))
                .build(),
        );
    }

    #[test]
    fn a_storm_writes_one_line_per_condition_and_interval() {
        let lines = Lines::default();
        let logger = RateLimited::new(&lines, Duration::from_secs(3600));
        for _ in 0..1000 {
            report(&logger, 30, "map full");
        }
        report(&logger, 40, "unknown state");
        assert_eq!(*lines.0.lock().unwrap(), ["map full", "unknown state"]);
    }

    #[test]
    fn the_next_line_after_the_interval_counts_what_was_held_back() {
        let lines = Lines::default();
        let logger = RateLimited::new(&lines, Duration::from_millis(50));
        for _ in 0..3 {
            report(&logger, 30, "map full");
        }
        std::thread::sleep(Duration::from_millis(60));
        report(&logger, 30, "map full");
        assert_eq!(
            *lines.0.lock().unwrap(),
            [
                "map full",
                "map full (2 more like it since the last such line)"
            ]
        );
    }
}
