//! When the sock_diag polls run. Scrapes start them (the daemon does nothing when nobody
//! scrapes); a poll starts no sooner than `--sockdiag.min-interval`, nor than 20 times the last
//! one's duration, after the last (at most 5% of one CPU); a quick one runs in the scrape, which
//! then shows the freshest figures, a slow one beside it.

use std::{
    io,
    panic::{self, AssertUnwindSafe},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use crate::{
    sockets::{
        census::Census,
        survey::{self, PollPlan, Survey},
    },
    sys::{self, netns::Home},
};

/// A poll starts at least this many times the last poll's duration after the last one started:
/// however often scrapes come, polls take at most 1/20 (5%) of one CPU. A poll walks every socket
/// of the host once per namespace it lists whole, so on a host with a million connections one
/// such listing takes about a third of a second.
const POLL_SPACING: u32 = 20;

/// A poll that took longer than this runs next time beside the scrape rather than in it, so
/// the scrape's latency does not grow with the host's sockets (the kernel walks all of them,
/// whatever states are asked for: about 0.2 µs each). Below it, the scrape waits and shows the
/// freshest figures.
const INLINE_POLL_LIMIT: Duration = Duration::from_millis(20);

/// Sockets in a poll past which the memory its lists took is handed back to the system once
/// folded in (otherwise the allocator keeps it, and the daemon's resident size stays at the
/// peak of the largest poll).
const LARGE_POLL: usize = 10_000;

/// Least time between the starts of two polls, after one that took `last_took`.
pub fn poll_interval(min_interval: Duration, last_took: Duration) -> Duration {
    min_interval.max(last_took.saturating_mul(POLL_SPACING))
}

/// What the scrapes know of the polls: when the last one started, how long it took and whether
/// it succeeded, and how many failed.
#[derive(Debug, Default)]
pub struct PollRecord {
    last: Option<(Instant, Duration)>,
    /// The last poll, or the last attempt to start one, failed.
    last_failed: bool,
    pub errors: u64,
}

impl PollRecord {
    /// How long the last poll took, if there was one.
    pub fn last_took(&self) -> Option<Duration> {
        self.last.map(|(_, took)| took)
    }

    /// Whether the last poll listed every namespace it entered (one it could not enter is no
    /// failure: `tcpstate_network_namespaces` counts those), and the last start succeeded.
    pub fn last_succeeded(&self) -> bool {
        !self.last_failed
    }

    /// A poll could not be started (logged by the caller).
    pub fn failed_to_start(&mut self) {
        self.errors += 1;
        self.last_failed = true;
    }

    /// Whether a poll is due: none yet, or the last is older than the least interval.
    pub fn due(&self, min_interval: Duration) -> bool {
        self.last
            .is_none_or(|(at, took)| at.elapsed() >= poll_interval(min_interval, took))
    }

    /// Whether a poll is quick enough to run in the scrape (see `INLINE_POLL_LIMIT`).
    pub fn quick(&self) -> bool {
        self.last_took().is_none_or(|took| took < INLINE_POLL_LIMIT)
    }

    /// Folds a finished poll, started at `started`, into `census`.
    pub fn fold(&mut self, census: &mut Census, poll: io::Result<Survey>, started: Instant) {
        match poll {
            Ok(survey) => {
                log::debug!(
                    "sock_diag poll: {} network namespaces ({} whole, {} missed), {} sockets, {:?}",
                    survey.visits.len(),
                    survey
                        .visits
                        .iter()
                        .filter(|visit| visit.depth == survey::Depth::Full)
                        .count(),
                    survey.failures.len(),
                    survey.sockets(),
                    started.elapsed()
                );
                let failed = survey
                    .failures
                    .iter()
                    .filter(|failure| matches!(failure.missed, survey::Missed::Failed(_)))
                    .count() as u64;
                self.errors += failed;
                self.last_failed = failed > 0;
                let large = survey.sockets() > LARGE_POLL;
                census.fold(survey);
                if large {
                    sys::release_free_memory();
                }
            }
            Err(error) => {
                self.errors += 1;
                self.last_failed = true;
                log::warn!("sock_diag poll failed: {error}");
            }
        }
        self.last = Some((started, started.elapsed()));
    }
}

/// A job for the poll thread, given the network namespace it started in.
type Job = Box<dyn FnOnce(&Home) + Send>;

/// The thread every poll runs on, for the daemon's life: a poll moves it between network
/// namespaces (setns changes only the calling thread: the others never leave the daemon's), it
/// alone keeps the capabilities that takes (`crate::capabilities`), and one thread keeps the
/// polls' large, short-lived lists in one malloc arena (a thread per poll left the daemon 10 MB
/// larger with 100,000 timewait sockets).
pub struct PollThread {
    jobs: Mutex<mpsc::Sender<Job>>,
    id: u32,
}

impl PollThread {
    /// Starts the poll thread, in the calling thread's network namespace and with its
    /// capabilities, which it first lowers with `confine` (it does not start if that fails).
    pub fn start(
        confine: impl FnOnce() -> io::Result<()> + Send + 'static,
    ) -> io::Result<PollThread> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (started, start) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("sock_diag poll".into())
            .spawn(move || {
                let home = match confine().and_then(|()| Home::here()) {
                    Ok(home) => home,
                    Err(error) => {
                        let _ = started.send(Err(error));
                        return;
                    }
                };
                let _ = started.send(Ok(sys::thread_id()));
                for job in queue {
                    // A panicking poll is a bug; the next one starts over (from home).
                    if panic::catch_unwind(AssertUnwindSafe(|| job(&home))).is_err() {
                        log::error!("a sock_diag poll panicked; the next one starts over");
                    }
                }
            })?;
        let id = start
            .recv()
            .map_err(|_| io::Error::other("the poll thread ended as it started"))??;
        Ok(PollThread {
            jobs: Mutex::new(jobs),
            id,
        })
    }

    /// The poll thread's id, as `/proc/self/task` lists it.
    pub fn id(&self) -> u32 {
        self.id
    }

    fn submit(&self, job: Job) -> io::Result<()> {
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .send(job)
            .map_err(|_| io::Error::other("the poll thread ended"))
    }

    /// Runs the poll `plan` on the poll thread and waits for it.
    pub fn run(&self, plan: PollPlan) -> io::Result<Survey> {
        self.run_job(move |home| survey::run(&plan, home))?
    }

    /// Runs `job` on the poll thread, where other network namespaces can be entered (`home`
    /// is where the thread returns), and waits for its answer.
    pub fn run_job<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Home) -> T + Send + 'static,
    ) -> io::Result<T> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.submit(Box::new(move |home| {
            let _ = reply.send(job(home));
        }))?;
        answer
            .recv()
            .map_err(|_| io::Error::other("the poll thread's job failed (the log says why)"))
    }

    /// Runs the poll `plan` on the poll thread, which hands it to `fold` when done; nothing if
    /// one is already running (`running`).
    pub fn spawn(
        &self,
        running: &Arc<AtomicBool>,
        plan: PollPlan,
        fold: impl FnOnce(io::Result<Survey>, Instant) + Send + 'static,
    ) -> io::Result<()> {
        if running.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let done = Running(running.clone());
        let submitted = self.submit(Box::new(move |home| {
            let _done = done;
            let started = Instant::now();
            fold(survey::run(&plan, home), started);
        }));
        if submitted.is_err() {
            running.store(false, Ordering::Release);
        }
        submitted
    }
}

/// Says a poll is no longer running when dropped: when it is done, or when it panicked.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_polls_are_spaced_to_a_twentieth_of_one_cpu() {
        let second = Duration::from_secs(1);
        assert_eq!(poll_interval(second, Duration::from_millis(20)), second);
        assert_eq!(
            poll_interval(second, Duration::from_millis(337)),
            Duration::from_millis(6740)
        );
        assert_eq!(poll_interval(second, Duration::MAX), Duration::MAX);
    }

    #[test]
    fn polls_run_one_after_another_on_the_same_thread() {
        let own = sys::net_namespace_inode().unwrap();
        let polls = PollThread::start(|| Ok(())).unwrap();
        assert_ne!(polls.id(), sys::thread_id());
        for _ in 0..2 {
            let survey = polls.run(PollPlan::own_only(own)).unwrap();
            assert_eq!(survey.visits.len(), 1);
            assert_eq!(survey.visits[0].inode, own);
        }
        let running = Arc::new(AtomicBool::new(false));
        let (sender, receiver) = mpsc::channel();
        polls
            .spawn(&running, PollPlan::own_only(own), move |survey, _| {
                sender.send(survey.is_ok()).unwrap()
            })
            .unwrap();
        assert!(receiver.recv().unwrap());
    }

    #[test]
    fn a_poll_thread_that_cannot_confine_itself_does_not_start() {
        let refused = PollThread::start(|| Err(io::Error::other("capset refused")));
        assert_eq!(refused.err().unwrap().to_string(), "capset refused");
    }
}
