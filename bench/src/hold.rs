//! Holds loopback connections open, for the scale measurements: tcpstated must keep a record per
//! socket while its scrapes stay as fast as with a few.
//!
//! One holder process (`bench hold`) keeps both sides of its connections: a listener on an
//! address of its own (127.1.x.y, on the benchmark's port), its clients connected to it, and
//! every accepted socket. A process may only hold as many sockets as its file limit allows
//! (`RLIMIT_NOFILE`; raising the hard limit needs CAP_SYS_RESOURCE, which containers often
//! lack), so the benchmark starts as many holders as the count needs. Each prints `held=<n>`
//! once all its connections are up, and exits (closing them all) when its stdin closes.

use std::{
    io::{self, BufRead as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use socket2::{Domain, SockRef, Socket, Type};

#[derive(clap::Args, Debug, Clone)]
pub struct HoldArgs {
    /// Port of the listener.
    #[arg(long)]
    pub port: u16,
    /// Which holder this is: its listener address is [`holder_address`] of it.
    #[arg(long)]
    pub index: u16,
    /// Connections to open and keep (two sockets, two file descriptors each).
    #[arg(long)]
    pub connections: u32,
    /// Exit after this long even if stdin stays open.
    #[arg(long, default_value_t = 1800)]
    pub max_seconds: u64,
}

/// Holder `index`'s listener: 127.1.0.1, 127.1.0.2, ... 127.1.0.250, 127.1.1.1, ... Each is its
/// own space of ~28k source ports for the clients connecting to it, and none is one of the churn's
/// 127.0.0.x addresses.
pub fn holder_address(index: u16, port: u16) -> SocketAddr {
    let (high, low) = (index / 250, index % 250);
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(127, 1, high as u8, 1 + low as u8),
        port,
    ))
}

/// Connect attempts per connection before giving up.
const CONNECT_ATTEMPTS: u32 = 3;

pub fn main(args: &HoldArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let address = holder_address(args.index, args.port);
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    listener.set_reuse_address(true)?;
    listener
        .bind(&address.into())
        .with_context(|| format!("cannot listen on {address}: the port is taken"))?;
    // Backlog beyond the count: no SYN is ever dropped for a full queue, even if the accepting
    // thread falls behind (the kernel caps it at net.core.somaxconn).
    listener.listen(i32::try_from(args.connections).unwrap_or(i32::MAX).max(128))?;
    listener.set_read_timeout(Some(Duration::from_millis(100)))?;

    let wanted = args.connections as usize;
    let accepting = thread::spawn(move || -> anyhow::Result<Vec<Socket>> {
        let mut accepted = Vec::with_capacity(wanted);
        while accepted.len() < wanted {
            if Instant::now() > deadline {
                bail!(
                    "accepted {} of {wanted} connections in time",
                    accepted.len()
                );
            }
            match listener.accept() {
                Ok((socket, _)) => accepted.push(socket),
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(error) => return Err(error).context("accept failed"),
            }
        }
        Ok(accepted)
    });

    let mut clients = Vec::with_capacity(wanted);
    while clients.len() < wanted {
        let mut attempt = 0;
        let stream = loop {
            match TcpStream::connect(address) {
                Ok(stream) => break stream,
                Err(error) => {
                    attempt += 1;
                    if attempt >= CONNECT_ATTEMPTS || Instant::now() > deadline {
                        return Err(error).with_context(|| {
                            format!(
                                "cannot connect to {address} after {} connections",
                                clients.len()
                            )
                        });
                    }
                }
            }
        };
        clients.push(stream);
    }
    let accepted = accepting
        .join()
        .map_err(|_| anyhow::anyhow!("the accepting thread panicked"))??;

    let mut stdout = io::stdout().lock();
    writeln!(stdout, "held={}", clients.len().min(accepted.len()))?;
    stdout.flush()?;
    drop(stdout);
    wait_for_stdin_close(deadline);
    // Reset rather than close: no TIME_WAIT sockets left behind, whose number would weigh on
    // the next level's sock_diag polls.
    for client in &clients {
        let _ = SockRef::from(client).set_linger(Some(Duration::ZERO));
    }
    // Exiting closes every socket at once, faster than dropping them one by one.
    std::process::exit(0)
}

/// Returns when stdin reaches end of file (the benchmark closes it) or at `deadline`.
fn wait_for_stdin_close(deadline: Instant) {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut line = String::new();
        while stdin.read_line(&mut line).is_ok_and(|read| read > 0) {
            line.clear();
        }
        let _ = sender.send(());
    });
    let _ = receiver.recv_timeout(deadline.saturating_duration_since(Instant::now()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_addresses_never_repeat_and_avoid_the_churn_addresses() {
        assert_eq!(holder_address(0, 9).to_string(), "127.1.0.1:9");
        assert_eq!(holder_address(249, 9).to_string(), "127.1.0.250:9");
        assert_eq!(holder_address(250, 9).to_string(), "127.1.1.1:9");
        let addresses: std::collections::BTreeSet<_> =
            (0..1000).map(|index| holder_address(index, 9)).collect();
        assert_eq!(addresses.len(), 1000);
    }
}
