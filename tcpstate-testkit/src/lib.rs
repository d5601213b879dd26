//! What tcpstate's integration tests (`tcpstate-daemon/tests/`) and its benchmark share to talk
//! to a running `tcpstated`: a minimal HTTP GET ([`http`]) and a reader of the text exposition
//! format ([`exposition`]) with the figures both read from it (transitions by edge, recording
//! failures by reason), and test certificates made with `openssl` ([`certificates`]). No
//! dependency on either user, so each can move on its own.
#![forbid(unsafe_code)]

pub mod certificates;
pub mod exposition;
pub mod http;

pub use exposition::{Edge, Exposition, Series, TransitionCounts};
