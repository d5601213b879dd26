//! What `inet_sock_set_state` never shows, from netlink sock_diag in every network namespace of
//! the host: `sock_diag` lists sockets, `namespaces` finds the namespaces, `poller` decides when
//! (polls are started by scrapes, spaced by their cost), `survey` carries a poll out across the
//! namespaces, and `census` counts what the lists say: timewait sockets, request sockets and
//! accept queues, records the kernel programs left behind, and the sockets older than the
//! daemon (its baseline, listed at `start`). `untracked` labels a socket the programs have no
//! record for, by their rule; `timers` reads how long a request or timewait socket has been in
//! its state off its timer.

pub mod census;
pub mod namespaces;
pub mod poller;
pub mod sock_diag;
pub mod start;
pub mod survey;
pub mod timers;
pub mod untracked;
