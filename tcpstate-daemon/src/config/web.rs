//! `--web.listen-address`: where the HTTP server listens, in Go's `net.Listen` spellings.

use std::{
    fmt,
    net::{Ipv6Addr, SocketAddr, ToSocketAddrs as _},
};

/// One `--web.listen-address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenAddress {
    /// `:PORT` or `[::]:PORT`: every address of the host, IPv6 and IPv4 on one socket
    /// (IPV6_V6ONLY off), or IPv4 alone where the host has IPv6 off.
    Everywhere(u16),
    /// One address (`0.0.0.0:PORT` is every IPv4 address only).
    Socket(SocketAddr),
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddress::Everywhere(port) => write!(out, ":{port}"),
            ListenAddress::Socket(address) => write!(out, "{address}"),
        }
    }
}

/// `:9816`, `[::]:9816`, `10.0.0.5:9816`, `[fd00::5]:9816`, `localhost:9816` (a name is
/// resolved once, at start-up, to its first address).
pub fn parse_listen_address(text: &str) -> Result<ListenAddress, String> {
    let usage = "give HOST:PORT, [IPv6]:PORT or :PORT (every address)";
    if let Some(port) = text.strip_prefix(':').filter(|port| !port.contains(':')) {
        return parse_listen_port(port, text).map(ListenAddress::Everywhere);
    }
    if let Ok(address) = text.parse::<SocketAddr>() {
        if address.ip() == Ipv6Addr::UNSPECIFIED {
            return Ok(ListenAddress::Everywhere(address.port()));
        }
        return Ok(ListenAddress::Socket(address));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("`{text}` has no port: {usage}"));
    };
    let port = parse_listen_port(port, text)?;
    if host.is_empty() || host.contains(':') || host.contains(['[', ']', ' ', '/']) {
        return Err(format!("`{text}` is not a listen address: {usage}"));
    }
    let resolved = (host, port)
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve `{host}` ({error}): {usage}"))?
        .next();
    resolved
        .map(ListenAddress::Socket)
        .ok_or_else(|| format!("`{host}` has no address: {usage}"))
}

fn parse_listen_port(port: &str, text: &str) -> Result<u16, String> {
    port.parse::<u16>()
        .map_err(|_| format!("`{text}`: `{port}` is not a port (0-65535; 0: the kernel picks)"))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::config::{Flags, LogFormat, LogLevel};

    fn parse(args: &[&str]) -> Result<Flags, clap::Error> {
        Flags::try_parse_from(std::iter::once("tcpstated").chain(args.iter().copied()))
    }

    #[test]
    fn listen_addresses_repeat() {
        let flags = parse(&[
            "--web.listen-address=:9816",
            "--web.listen-address",
            "[::1]:1",
        ]);
        assert_eq!(
            flags.unwrap().listen_addresses,
            [
                ListenAddress::Everywhere(9816),
                ListenAddress::Socket("[::1]:1".parse().unwrap())
            ]
        );
        let err = parse(&["--web.listen-address", "9816"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains(":PORT"), "{err}");
    }

    #[test]
    fn log_flags_take_exporter_toolkits_values() {
        let flags = parse(&["--log.level=debug", "--log.format=json"]).unwrap();
        assert_eq!(
            (flags.log_level, flags.log_format),
            (LogLevel::Debug, LogFormat::Json)
        );
        for (flag, bad) in [("--log.level", "trace"), ("--log.format", "text")] {
            let err = parse(&[flag, bad]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{flag}");
        }
    }

    #[test]
    fn version_names_the_revision_the_compiler_and_the_target() {
        let text = parse(&["--version"]).unwrap_err().to_string();
        for needle in ["tcpstated 0.", "revision: ", "rustc version: ", "target: "] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
    }

    #[test]
    fn listen_addresses_take_gos_spellings() {
        let everywhere = ListenAddress::Everywhere(9816);
        for (text, want) in [
            (":9816", everywhere),
            ("[::]:9816", everywhere),
            (
                "0.0.0.0:9816",
                ListenAddress::Socket("0.0.0.0:9816".parse().unwrap()),
            ),
            (
                "[::1]:9816",
                ListenAddress::Socket("[::1]:9816".parse().unwrap()),
            ),
            (":0", ListenAddress::Everywhere(0)),
        ] {
            assert_eq!(parse_listen_address(text), Ok(want), "{text}");
        }
        assert!(matches!(
            parse_listen_address("localhost:9816"),
            Ok(ListenAddress::Socket(address)) if address.ip().is_loopback() && address.port() == 9816
        ));
        assert_eq!(everywhere.to_string(), ":9816");
    }

    #[test]
    fn bad_listen_addresses_say_what_to_give() {
        for (text, expected) in [
            ("9816", "has no port"),
            (":http", "is not a port"),
            (":65536", "is not a port"),
            ("10.0.0.5:", "is not a port"),
            ("::1:9816", "is not a listen address"),
            ("[::1]9816", "is not a port"),
            ("no such host.invalid:9816", "not a listen address"),
        ] {
            let error = parse_listen_address(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
