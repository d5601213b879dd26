//! When the sock_diag polls run. Scrapes start them (the daemon does nothing when nobody
//! scrapes); a poll starts no sooner than `--sockdiag.min-interval`, nor than 20 times the last
//! one's duration, after the last (at most 5% of one CPU); a quick one runs in the scrape, which
//! then shows the freshest figures, a slow one beside it.

use std::{
    io,
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
    sys,
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

/// What the scrapes know of the polls: when the last one started and how long it took, and
/// how many failed.
#[derive(Debug, Default)]
pub struct PollRecord {
    last: Option<(Instant, Duration)>,
    pub errors: u64,
}

impl PollRecord {
    /// How long the last poll took, if there was one.
    pub fn last_took(&self) -> Option<Duration> {
        self.last.map(|(_, took)| took)
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
                self.errors += survey
                    .failures
                    .iter()
                    .filter(|failure| matches!(failure.missed, survey::Missed::Failed(_)))
                    .count() as u64;
                let large = survey.sockets() > LARGE_POLL;
                census.fold(survey);
                if large {
                    sys::release_free_memory();
                }
            }
            Err(error) => {
                self.errors += 1;
                log::warn!("sock_diag poll failed: {error}");
            }
        }
        self.last = Some((started, started.elapsed()));
    }
}

/// A job for the poll thread: false if the thread must end after it.
type Job = Box<dyn FnOnce() -> bool + Send>;

/// The thread every poll runs on, for the daemon's life: a poll moves it between network
/// namespaces (setns changes only the calling thread: the others never leave the daemon's),
/// and one thread keeps the polls' large, short-lived lists in one malloc arena (a thread per
/// poll left the daemon 10 MB larger with 100,000 timewait sockets). Started again if a poll
/// could not bring it back to the daemon's namespace.
#[derive(Default)]
pub struct PollThread {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
}

impl PollThread {
    fn submit(&self, job: Job) -> io::Result<()> {
        let mut jobs = self
            .jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let job = match jobs.as_ref() {
            Some(sender) => match sender.send(job) {
                Ok(()) => return Ok(()),
                // It ended after a poll that left it in another namespace.
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        let (sender, receiver) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sock_diag poll".into())
            .spawn(move || {
                for job in receiver {
                    if !job() {
                        return;
                    }
                }
            })?;
        let sent = sender
            .send(job)
            .map_err(|_| io::Error::other("the poll thread ended"));
        *jobs = Some(sender);
        sent
    }

    /// Runs the poll `plan` on the poll thread and waits for it.
    pub fn run(&self, plan: PollPlan) -> io::Result<Survey> {
        self.run_job(move || survey::run(&plan))?
    }

    /// Runs `job` on the poll thread, where other network namespaces can be entered, and
    /// waits for its answer; `job` also says whether it left the thread stranded in another
    /// namespace (the thread then ends, and the next job starts a new one).
    pub fn run_job<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> (T, bool) + Send + 'static,
    ) -> io::Result<T> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.submit(Box::new(move || {
            let (answer, stranded) = job();
            let _ = reply.send(answer);
            !stranded
        }))?;
        answer
            .recv()
            .map_err(|_| io::Error::other("the poll thread ended during the job"))
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
        let done = running.clone();
        let submitted = self.submit(Box::new(move || {
            let started = Instant::now();
            let (survey, stranded) = survey::run(&plan);
            fold(survey, started);
            done.store(false, Ordering::Release);
            !stranded
        }));
        if submitted.is_err() {
            running.store(false, Ordering::Release);
        }
        submitted
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
        let polls = PollThread::default();
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
}
