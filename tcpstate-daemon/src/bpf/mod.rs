//! The kernel side, seen from the daemon: `loader` loads the embedded object with this host's
//! configuration (`btf` and `layout` read the kernel's types for it) and attaches the
//! programs, or adopts those an earlier daemon left pinned (`pinning`; `figure_store` keeps
//! the daemon's own figures beside them); `maps` reads their aggregates at scrape time;
//! `socket_slots` is the slot table's protocol (handoffs to take, records to release).

pub mod btf;
pub mod figure_store;
mod layout;
pub mod loader;
pub mod maps;
pub mod pinning;
pub mod socket_slots;
