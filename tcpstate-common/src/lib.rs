//! The kernel/user boundary of tcpstate, typed once.
//!
//! Everything that crosses between `tcpstate-ebpf` and `tcpstate-daemon` is defined here, in
//! small modules re-exported at the root: the names of programs, maps and globals (`names`),
//! map sizes (`capacity`), the load-time configuration (`config`), the labels (`labels`), the
//! per-socket records and handoffs (`records`), the aggregation keys and values
//! (`transitions`, `events`), the counters (`counters`), the nested-event bookkeeping
//! (`handled`), the TCP states (`state`) and the live event stream (`trace`). Layouts are
//! `#[repr(C)]`, fixed-width integers and explicit padding only, each with a size assertion;
//! the `user` feature adds `aya::Pod` beside each type so the daemon can read the maps.
#![no_std]

pub mod capacity;
pub mod config;
pub mod counters;
pub mod events;
pub mod handled;
pub mod labels;
pub mod names;
pub mod records;
pub mod state;
pub mod trace;
pub mod transitions;

pub use capacity::*;
pub use config::*;
pub use counters::counter;
pub use events::*;
pub use handled::*;
pub use labels::*;
pub use names::{global, map, program};
pub use records::*;
pub use state::{STATE_COUNT, TcpState};
pub use trace::*;
pub use transitions::*;
