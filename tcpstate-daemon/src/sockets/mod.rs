//! What `inet_sock_set_state` never shows, from netlink sock_diag: `sock_diag` lists sockets,
//! `poller` decides when (polls are started by scrapes, spaced by their cost), and `census`
//! counts what the lists say: timewait sockets, request sockets and accept queues, records the
//! kernel programs left behind, and the sockets older than the daemon (its baseline).
//! `untracked` labels a socket the programs have no record for, by their rule; `namespaces`
//! lists the host's network namespaces.

pub mod census;
pub mod namespaces;
pub mod poller;
pub mod sock_diag;
pub mod untracked;
