//! Binding `--web.listen-address`es: `:PORT` is one IPv6 socket that takes IPv4 too
//! (IPV6_V6ONLY off, whatever `net.ipv6.bindv6only` says), or an IPv4 one where the host has no
//! IPv6.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use crate::config::ListenAddress;

/// Connections the kernel queues until the server accepts them (capped by
/// `net.core.somaxconn`): tokio's default, 128, overflows under a burst of connections, and each
/// overflow costs a client a one-second SYN retransmission.
const LISTEN_BACKLOG: i32 = 1024;

/// A bound listener and what the log calls it.
pub struct Bound {
    pub listener: TcpListener,
    /// `[::]:9816 (IPv6 and IPv4)`, `127.0.0.1:9816`.
    pub description: String,
}

/// Binds `address` (inside the runtime), explaining the usual failures.
pub fn bind(address: ListenAddress) -> anyhow::Result<Bound> {
    let (listener, both) = match address {
        ListenAddress::Socket(socket) => (bind_socket(socket, false), socket.ip().is_unspecified()),
        ListenAddress::Everywhere(port) => {
            let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
            match bind_socket(v6, true) {
                Err(error) if ipv6_is_off(&error) => {
                    log::info!("IPv6 is off on this host ({error}): listening on IPv4 only");
                    let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
                    (bind_socket(v4, false), false)
                }
                bound => (bound, true),
            }
        }
    };
    let listener = listener.map_err(|error| explain(error, address))?;
    let local = listener.local_addr()?;
    let description = if both && local.is_ipv6() {
        format!("{local} (IPv6 and IPv4)")
    } else {
        local.to_string()
    };
    Ok(Bound {
        listener,
        description,
    })
}

fn bind_socket(address: SocketAddr, dual_stack: bool) -> std::io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// No IPv6 in the kernel (`ipv6.disable=1`: no AF_INET6 sockets) or none configured.
fn ipv6_is_off(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
    )
}

fn explain(error: std::io::Error, address: ListenAddress) -> anyhow::Error {
    let hint = match error.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "address {address} is already in use (another tcpstated or exporter?): stop it or \
             choose another address with --web.listen-address"
        ),
        std::io::ErrorKind::AddrNotAvailable => {
            format!("address {address} is not an address of this host: fix --web.listen-address")
        }
        std::io::ErrorKind::PermissionDenied => format!(
            "not allowed to listen on {address} (ports below 1024 need CAP_NET_BIND_SERVICE)"
        ),
        _ => format!("cannot listen on {address}"),
    };
    anyhow::Error::new(error).context(hint)
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

    use super::*;

    /// Whether the host can make IPv6 loopback connections at all.
    fn has_ipv6_loopback() -> bool {
        std::net::TcpListener::bind("[::1]:0").is_ok()
    }

    fn runtime() -> tokio::runtime::Runtime {
        crate::http::runtime().unwrap()
    }

    #[test]
    fn every_address_takes_ipv4_and_ipv6_on_one_socket() {
        let runtime = runtime();
        let bound = runtime.block_on(async { bind(ListenAddress::Everywhere(0)).unwrap() });
        let port = bound.listener.local_addr().unwrap().port();
        let v4 = TcpStream::connect((Ipv4Addr::LOCALHOST, port));
        assert!(v4.is_ok(), "IPv4 to :{port}: {v4:?}");
        if has_ipv6_loopback() {
            assert!(
                bound.description.ends_with("(IPv6 and IPv4)"),
                "{}",
                bound.description
            );
            assert!(TcpStream::connect((Ipv6Addr::LOCALHOST, port)).is_ok());
        }
        let accepted = runtime.block_on(bound.listener.accept());
        assert!(accepted.is_ok());
    }

    #[test]
    fn an_address_in_use_says_which_flag_to_change() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = ListenAddress::Socket(taken.local_addr().unwrap());
        let error = runtime().block_on(async { bind(address).err().unwrap() });
        let text = format!("{error:#}");
        assert!(
            text.contains("already in use") && text.contains("--web.listen-address"),
            "{text}"
        );
    }
}
