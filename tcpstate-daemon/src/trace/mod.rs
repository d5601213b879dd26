//! The live event stream (`tcpstated trace`, `GET /events`): the transitions of the logical
//! view as they happen, beside the aggregates. The stream's kernel program is attached only
//! while the stream has subscribers, and sends the events that pass the union of their filters
//! (`kernel`); a reader thread reads them then (`reader`), decodes them (`event`) and hands each
//! to the subscribers whose filter (`filter`) it passes, through bounded queues (`hub`).
//! `command` is the trace subcommand, a client (`client`) of a running daemon's `/events`.
//!
//! Not in the stream: the transitions of timewait sockets, which the sock_diag polls find
//! (`TIME_WAIT -> CLOSE`, an orphan's `FIN_WAIT2 -> TIME_WAIT`); the full socket's
//! `... -> TIME_WAIT` and `FIN_WAIT1 -> FIN_WAIT2` are in it.

mod client;
pub mod command;
pub mod event;
pub mod filter;
pub mod hub;
mod kernel;
mod reader;

use std::sync::Arc;

pub use hub::{DEFAULT_MAX_SUBSCRIBERS, Hub, HubConfig, Subscription};
pub use kernel::{KernelTrace, TraceMaps};

use crate::{config::Flags, workload::Resolver};

/// Starts the stream's reader on its maps (idle until someone subscribes). At most half the
/// HTTP connections (`max_connections`) may be streams, so that scrapes always find room.
pub fn start(maps: TraceMaps, flags: &Flags, max_connections: usize) -> anyhow::Result<Arc<Hub>> {
    let TraceMaps { ring, kernel } = maps;
    let hub = Hub::new(HubConfig {
        max_subscribers: DEFAULT_MAX_SUBSCRIBERS.min((max_connections / 2).max(1)),
        workloads: flags.workloads,
    });
    let resolver = match flags.workloads {
        // Its own cache, without the labels' bound: a stream has no series to bound.
        true => Some(Resolver::new(
            &flags.host_root,
            flags.cgroup_root.as_deref(),
            usize::MAX,
        )?),
        false => None,
    };
    reader::spawn(hub.clone(), ring, kernel, resolver)?;
    Ok(hub)
}
