//! Scraping tcpstated, through the workspace's test kit (`tcpstate-testkit`): its HTTP GET and
//! its exposition parser, shared with the daemon's integration tests.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
pub use tcpstate_testkit::Exposition;
use tcpstate_testkit::http;

/// Longest wait for a read of an answer: a scrape of hundreds of thousands of sockets takes
/// seconds on this machine.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether `/healthz` answers 200.
pub fn healthy(address: SocketAddr) -> bool {
    http::get(address, "/healthz", READ_TIMEOUT).is_ok_and(|response| response.status == 200)
}

pub fn scrape(address: SocketAddr) -> anyhow::Result<Exposition> {
    let text = scrape_text(address)?;
    Exposition::parse(&text).with_context(|| format!("scraping http://{address}/metrics"))
}

/// The sockets view's JSON answer to `query`.
pub fn sockets_view(address: SocketAddr, query: &str) -> anyhow::Result<String> {
    Ok(http::get_ok(
        address,
        &format!("/sockets.json?{query}"),
        READ_TIMEOUT,
    )?)
}

/// The exposition text of one scrape (what the scrape latency times: parsing it is ours).
pub fn scrape_text(address: SocketAddr) -> anyhow::Result<String> {
    Ok(http::get_ok(address, "/metrics", READ_TIMEOUT)?)
}
