//! `GET /events`: the live event stream (see `crate::trace`) as server-sent events. Events:
//! `ready` once the kernel sends what the query asked for, `transition` for each one (a JSON
//! object), `dropped` when transitions were lost (`"cause": "queue"`, this client read too
//! slowly; `"ring"`, the daemon did), and a comment every 15 s while nothing happens.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use http_body::Frame;
use serde_json::json;

use super::WebState;
use crate::trace::{
    Subscription,
    filter::Request,
    hub::{Message, SubscribeError},
};

/// How often a stream looks for drops to report while no transition comes.
const DROPS_CHECK: Duration = Duration::from_secs(1);
/// A comment after this long without an event: proxies and clients see the stream alive, and
/// the server's response deadline (no progress for 60 s) is never reached.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Bytes gathered into one write: the server's write buffer.
const FRAME_BYTES: usize = 8192;

pub(super) async fn events(State(state): State<WebState>, uri: Uri) -> Response {
    let Some(hub) = state.events.clone() else {
        let message = "this daemon serves no event stream: it runs with --web.disable-events\n";
        return (StatusCode::NOT_FOUND, message).into_response();
    };
    let request = match Request::parse(uri.query().unwrap_or_default()) {
        Ok(request) => request,
        Err(error) => return (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response(),
    };
    let subscription = match hub.subscribe(request) {
        Ok(subscription) => subscription,
        Err(error @ SubscribeError::Full(_)) => {
            let headers = [(header::RETRY_AFTER, "10")];
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                headers,
                format!("{error}\n"),
            )
                .into_response();
        }
        Err(error) => return (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response(),
    };
    let headers = [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    (headers, Body::new(EventStream::new(subscription))).into_response()
}

/// The response body: the subscription's messages as server-sent events, until the client
/// goes (hyper drops the body, which unsubscribes) or the `limit` is reached.
struct EventStream {
    subscription: Subscription,
    tick: tokio::time::Interval,
    last_write: Instant,
    delivered: u64,
    ended: bool,
}

impl EventStream {
    fn new(subscription: Subscription) -> Self {
        EventStream {
            subscription,
            tick: tokio::time::interval(DROPS_CHECK),
            last_write: Instant::now(),
            delivered: 0,
            ended: false,
        }
    }

    fn limit_reached(&self) -> bool {
        self.subscription
            .limit
            .is_some_and(|limit| self.delivered >= limit)
    }

    /// Appends the messages waiting in the queue (up to a frame), and the drops not reported.
    fn gather(&mut self, cx: &mut Context<'_>, out: &mut String) {
        while out.len() < FRAME_BYTES && !self.limit_reached() {
            self.report_drops(out);
            match self.subscription.receiver.poll_recv(cx) {
                Poll::Ready(Some(Message::Ready(json))) => event(out, "ready", &json),
                Poll::Ready(Some(Message::Transition(json))) => {
                    self.delivered += 1;
                    event(out, "transition", &json);
                }
                Poll::Ready(None) => {
                    self.ended = true;
                    return;
                }
                Poll::Pending => return,
            }
        }
        if self.limit_reached() {
            self.ended = true;
        }
    }

    fn report_drops(&self, out: &mut String) {
        let (queue, ring) = self.subscription.dropped.take();
        if queue > 0 {
            let notice = json!({
                "dropped": queue,
                "cause": "queue",
                "message": format!(
                    "{queue} transitions dropped: this client reads more slowly than they come \
                     (a larger queue= holds more)"
                ),
            });
            event(out, "dropped", &notice.to_string());
        }
        if ring > 0 {
            let notice = json!({
                "dropped": ring,
                "cause": "ring",
                "message": format!(
                    "{ring} transitions dropped in the kernel, whose ring buffer was full (of \
                     any stream's filter: maybe none of this one's)"
                ),
            });
            event(out, "dropped", &notice.to_string());
        }
    }
}

fn event(out: &mut String, name: &str, data: &str) {
    out.push_str("event: ");
    out.push_str(name);
    out.push_str("\ndata: ");
    out.push_str(data);
    out.push_str("\n\n");
}

impl http_body::Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let mut out = String::new();
        this.gather(cx, &mut out);
        // Nothing queued: the tick reports drops, and keeps the stream alive.
        while out.is_empty() && !this.ended && this.tick.poll_tick(cx).is_ready() {
            this.report_drops(&mut out);
            if out.is_empty() && this.last_write.elapsed() >= KEEP_ALIVE {
                out.push_str(": keep-alive\n\n");
            }
        }
        if out.is_empty() {
            return if this.ended {
                Poll::Ready(None)
            } else {
                Poll::Pending
            };
        }
        this.last_write = Instant::now();
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
    }
}
