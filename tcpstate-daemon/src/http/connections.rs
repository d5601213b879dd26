//! The server's book of its connections: each one's phase and deadline, the table the cap
//! is enforced on, the streams and bodies that tell it when a request starts and a response
//! is handed over, and the limiter of the accept loop's log lines.

use std::{
    collections::HashMap,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::Notify,
};

use std::pin::pin;

use super::server::Limits;

/// Where a connection is in its exchange, which decides its deadline and whether it may be
/// closed for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Connected, or a request's first bytes came, and its head is not complete.
    ReadingHead,
    /// A request is being answered: from its head until hyper has its response's last byte.
    Responding,
    /// Between requests (keep-alive).
    Idle,
}

/// A connection's phase and since when, shared by its task, its stream and the accept loop.
pub(super) struct Activity {
    pub(super) phase: Mutex<(Phase, Instant)>,
    /// Asks the connection's task to drop it (the cap, the end of the shutdown grace).
    pub(super) close: Notify,
    pub(super) closing: AtomicBool,
    /// [`Connections::changed`].
    pub(super) changed: Arc<Notify>,
}

impl Activity {
    pub(super) fn new(changed: Arc<Notify>) -> Self {
        Activity {
            phase: Mutex::new((Phase::ReadingHead, Instant::now())),
            close: Notify::new(),
            closing: AtomicBool::new(false),
            changed,
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, (Phase, Instant)> {
        self.phase
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn phase(&self) -> (Phase, Instant) {
        *self.lock()
    }

    pub(super) fn enter(&self, phase: Phase) {
        *self.lock() = (phase, Instant::now());
    }

    /// Bytes came from the client: between requests, a new request starts.
    pub(super) fn received(&self) {
        let mut state = self.lock();
        if state.0 == Phase::Idle {
            *state = (Phase::ReadingHead, Instant::now());
        }
    }

    pub(super) fn deadline(&self, limits: &Limits) -> Instant {
        let (phase, since) = self.phase();
        since
            + match phase {
                Phase::ReadingHead => limits.header_read_timeout,
                Phase::Responding => limits.response_timeout,
                Phase::Idle => limits.idle_timeout,
            }
    }

    /// Asks the connection to close, once.
    pub(super) fn close(&self) -> bool {
        let first = !self.closing.swap(true, Ordering::AcqRel);
        if first {
            // A stored permit: the task sees it at its next wait.
            self.close.notify_one();
        }
        first
    }
}

/// The open connections.
#[derive(Default)]
pub(super) struct Connections {
    pub(super) open: Mutex<ConnectionTable>,
    /// Woken whenever a connection closes or a response ends.
    pub(super) changed: Arc<Notify>,
}

#[derive(Default)]
pub(super) struct ConnectionTable {
    pub(super) by_id: HashMap<u64, Arc<Activity>>,
    pub(super) next_id: u64,
}

impl Connections {
    pub(super) fn table(&self) -> MutexGuard<'_, ConnectionTable> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn count(&self) -> usize {
        self.table().by_id.len()
    }

    pub(super) fn register(self: &Arc<Self>) -> Registration {
        let activity = Arc::new(Activity::new(self.changed.clone()));
        let mut table = self.table();
        let id = table.next_id;
        table.next_id += 1;
        table.by_id.insert(id, activity.clone());
        Registration {
            id,
            activity,
            connections: self.clone(),
        }
    }

    /// Closes the connection that has waited longest without a request in progress (idle since
    /// its last response, or still sending its head), unless one is closing already; false if
    /// none is closing now (every one has a request in progress).
    pub(super) fn make_room(&self) -> bool {
        let table = self.table();
        let open = table.by_id.values();
        if open
            .clone()
            .any(|activity| activity.closing.load(Ordering::Acquire))
        {
            return true;
        }
        let longest = open
            .map(|activity| (activity, activity.phase()))
            .filter(|(_, (phase, _))| *phase != Phase::Responding)
            .min_by_key(|(_, (_, since))| *since);
        longest.is_some_and(|(activity, _)| activity.close())
    }

    pub(super) fn close_all(&self) {
        for activity in self.table().by_id.values() {
            activity.close();
        }
    }

    /// Resolves once fewer than `cap` connections are open, closing connections as they stop
    /// having a request in progress.
    pub(super) async fn room_for_one(&self, cap: usize) {
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            if self.count() < cap {
                return;
            }
            self.make_room();
            changed.await;
        }
    }

    pub(super) async fn all_closed(&self) {
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            changed.await;
        }
    }
}

/// A connection's entry in [`Connections`], removed when its task ends.
pub(super) struct Registration {
    pub(super) id: u64,
    pub(super) activity: Arc<Activity>,
    pub(super) connections: Arc<Connections>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.connections.table().by_id.remove(&self.id);
        self.connections.changed.notify_waiters();
    }
}

/// The connection's socket, telling its [`Activity`] when the client sends.
pub(super) struct WatchedStream {
    pub(super) stream: TcpStream,
    pub(super) activity: Arc<Activity>,
}

impl AsyncRead for WatchedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.received();
        }
        read
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Marks the connection idle when dropped: hyper drops a response's body once it has it all
/// (or the connection ends first).
pub(super) struct ResponseDone(pub(super) Arc<Activity>);

impl Drop for ResponseDone {
    fn drop(&mut self) {
        self.0.enter(Phase::Idle);
        self.0.changed.notify_waiters();
    }
}

/// A response body that marks its connection idle when hyper is done with it.
pub(super) struct TrackedBody {
    pub(super) body: axum::body::Body,
    pub(super) _done: ResponseDone,
}

impl http_body::Body for TrackedBody {
    type Data = <axum::body::Body as http_body::Body>::Data;
    type Error = <axum::body::Body as http_body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &frame {
            // hyper asks for a frame only once it has room for it: a stream (`/events`) that
            // keeps handing frames over makes progress, one whose client stops reading does
            // not, and its response deadline runs out.
            this._done.0.enter(Phase::Responding);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Lets a repeated log line through at most once per `every`, counting those held back.
#[derive(Debug)]
pub(super) struct RateLimited {
    pub(super) every: Duration,
    pub(super) last: Option<Instant>,
    pub(super) held_back: u64,
}

impl RateLimited {
    pub(super) fn new(every: Duration) -> Self {
        RateLimited {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(lines held back since the last one let through)` if a line may be logged now.
    pub(super) fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}
