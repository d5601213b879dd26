//! The subscribers of the event stream: at most `max_subscribers` at once, each with its filter
//! and a bounded queue. The reader (`reader.rs`) fills the queues; a full queue drops the
//! transition and counts it for that subscriber, so a slow one costs memory for its queue only.

use std::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use tokio::sync::{mpsc, watch};

use super::filter::{Filter, Request};

/// Most streams at once by default (`HubConfig::max_subscribers`).
pub const DEFAULT_MAX_SUBSCRIBERS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubConfig {
    pub max_subscribers: usize,
    /// Whether transitions carry their workload (`--workloads`), which `workload=` needs.
    pub workloads: bool,
}

/// What the reader sends a subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// The kernel now sends what this subscriber asked for: the JSON of the `ready` event.
    Ready(Arc<str>),
    /// A transition's JSON.
    Transition(Arc<str>),
}

/// Between the reader and one subscriber's stream: what it could not be given.
#[derive(Debug, Default)]
pub struct Dropped {
    /// Transitions its queue had no room for (it read too slowly), not yet reported.
    pub queue: AtomicU64,
    /// Transitions the kernel's ring had no room for (the daemon read too slowly), not yet
    /// reported: those of any subscriber's filter, maybe not this one's.
    pub ring: AtomicU64,
}

impl Dropped {
    /// Takes the counts not yet reported: `(queue, ring)`.
    pub fn take(&self) -> (u64, u64) {
        (
            self.queue.swap(0, Ordering::AcqRel),
            self.ring.swap(0, Ordering::AcqRel),
        )
    }
}

/// A subscriber as the reader sees it.
#[derive(Clone, Debug)]
pub struct Subscriber {
    pub id: u64,
    pub request: Request,
    pub sender: mpsc::Sender<Message>,
    pub dropped: Arc<Dropped>,
    /// Set once the reader has told it `ready`.
    pub ready: Arc<AtomicBool>,
}

impl Subscriber {
    pub fn filter(&self) -> &Filter {
        &self.request.filter
    }

    /// Queues `message`; counts it as dropped when the queue is full.
    pub fn offer(&self, message: Message) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.sender.try_send(message) {
            self.dropped.queue.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The subscribers, shared by the HTTP handlers (who come and go) and the reader.
pub struct Hub {
    config: HubConfig,
    subscribers: Mutex<(u64, Vec<Subscriber>)>,
    /// Bumped on every arrival and departure: the reader then rewrites the kernel's filter.
    changed: watch::Sender<u64>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error(
        "{0} event streams are open, the most this daemon serves at once: close one, or retry \
         later"
    )]
    Full(usize),
    #[error(
        "this daemon runs without --workloads, so transitions carry no workload to filter on: \
         restart it with --workloads, or leave out workload="
    )]
    NoWorkloads,
}

impl Hub {
    pub fn new(config: HubConfig) -> Arc<Hub> {
        Arc::new(Hub {
            config,
            subscribers: Mutex::new((0, Vec::new())),
            changed: watch::Sender::new(0),
        })
    }

    pub fn config(&self) -> HubConfig {
        self.config
    }

    fn lock(&self) -> MutexGuard<'_, (u64, Vec<Subscriber>)> {
        self.subscribers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a subscriber for `request`; its messages come on the subscription's receiver once
    /// the reader has set the kernel's filter (the first one is [`Message::Ready`]).
    pub fn subscribe(self: &Arc<Self>, request: Request) -> Result<Subscription, SubscribeError> {
        if request.filter.workload.is_some() && !self.config.workloads {
            return Err(SubscribeError::NoWorkloads);
        }
        let (sender, receiver) = mpsc::channel(request.queue);
        let dropped = Arc::new(Dropped::default());
        let limit = request.limit;
        let id = {
            let mut subscribers = self.lock();
            if subscribers.1.len() >= self.config.max_subscribers {
                return Err(SubscribeError::Full(subscribers.1.len()));
            }
            subscribers.0 += 1;
            let id = subscribers.0;
            subscribers.1.push(Subscriber {
                id,
                request,
                sender,
                dropped: dropped.clone(),
                ready: Arc::new(AtomicBool::new(false)),
            });
            id
        };
        self.changed.send_modify(|generation| *generation += 1);
        Ok(Subscription {
            id,
            hub: self.clone(),
            receiver,
            dropped,
            limit,
        })
    }

    /// The subscribers now.
    pub fn subscribers(&self) -> Vec<Subscriber> {
        self.lock().1.clone()
    }

    pub fn count(&self) -> usize {
        self.lock().1.len()
    }

    /// Resolves at the next arrival or departure.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Ends every stream (the daemon is stopping): their queues close once they are read.
    pub fn close(&self) {
        self.lock().1.clear();
        self.changed.send_modify(|generation| *generation += 1);
    }

    fn unsubscribe(&self, id: u64) {
        self.lock().1.retain(|subscriber| subscriber.id != id);
        self.changed.send_modify(|generation| *generation += 1);
    }
}

/// One subscriber's end: its messages, and what it missed. Dropping it unsubscribes.
pub struct Subscription {
    id: u64,
    hub: Arc<Hub>,
    pub receiver: mpsc::Receiver<Message>,
    pub dropped: Arc<Dropped>,
    /// Transitions to deliver before the stream ends.
    pub limit: Option<u64>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(max_subscribers: usize) -> Arc<Hub> {
        Hub::new(HubConfig {
            max_subscribers,
            workloads: false,
        })
    }

    #[test]
    fn subscribers_are_capped_and_leave_when_dropped() {
        let hub = hub(2);
        let mut changes = hub.watch();
        let first = hub.subscribe(Request::parse("").unwrap()).unwrap();
        let _second = hub.subscribe(Request::parse("port=80").unwrap()).unwrap();
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert_eq!(
            hub.subscribe(Request::parse("").unwrap()).err(),
            Some(SubscribeError::Full(2))
        );
        drop(first);
        assert!(changes.has_changed().unwrap());
        assert_eq!(hub.count(), 1);
        assert!(hub.subscribe(Request::parse("").unwrap()).is_ok());
    }

    #[test]
    fn a_full_queue_counts_what_it_drops() {
        let hub = hub(1);
        let mut subscription = hub.subscribe(Request::parse("queue=2").unwrap()).unwrap();
        let subscriber = hub.subscribers().remove(0);
        for index in 0..5 {
            subscriber.offer(Message::Transition(format!("{index}").into()));
        }
        assert_eq!(subscription.dropped.take(), (3, 0));
        assert_eq!(subscription.dropped.take(), (0, 0), "reported once");
        assert_eq!(
            subscription.receiver.try_recv(),
            Ok(Message::Transition("0".into()))
        );
    }

    #[test]
    fn closing_ends_every_stream() {
        let hub = hub(2);
        let mut subscription = hub.subscribe(Request::parse("").unwrap()).unwrap();
        hub.close();
        assert_eq!(hub.count(), 0);
        assert_eq!(
            subscription.receiver.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        );
    }

    #[test]
    fn workload_filters_need_workloads() {
        let request = Request::parse("workload=host").unwrap();
        assert_eq!(
            hub(4).subscribe(request).err(),
            Some(SubscribeError::NoWorkloads)
        );
    }
}
