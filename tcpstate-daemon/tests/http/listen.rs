//! `--web.listen-address` as node_exporter takes it (`:PORT`, repeated, IPv6), and `/metrics`
//! compressed when the scraper asks.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    time::Duration,
};

use tcpstate_testkit::http;

use crate::support::{Daemon, free_local_address};

const READ_TIMEOUT: Duration = Duration::from_secs(10);

fn has_ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn every_listen_address_serves_and_port_alone_means_ipv4_and_ipv6() {
    let everywhere = free_local_address().port();
    let mut args = vec![format!("--web.listen-address=:{everywhere}")];
    let ipv6 = has_ipv6_loopback().then(|| {
        let port = free_local_address().port();
        args.push(format!("--web.listen-address=[::1]:{port}"));
        SocketAddr::from((Ipv6Addr::LOCALHOST, port))
    });
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The daemon's own loopback address is one more listen address.
    let daemon = Daemon::start(&args);
    let mut addresses = vec![
        daemon.address,
        SocketAddr::from((Ipv4Addr::LOCALHOST, everywhere)),
    ];
    if let Some(ipv6) = ipv6 {
        addresses.push(SocketAddr::from((Ipv6Addr::LOCALHOST, everywhere)));
        addresses.push(ipv6);
    }
    for address in addresses {
        let health = http::get(address, "/healthz", READ_TIMEOUT)
            .unwrap_or_else(|error| panic!("{address}: {error}"));
        assert_eq!(health.status, 200, "{address}: {}", health.body);
    }
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn metrics_are_gzipped_when_asked_for() {
    let daemon = Daemon::watching(&[24301]);
    let raw = |accept_encoding: &str| {
        let mut stream = TcpStream::connect(daemon.address).unwrap();
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.0\r\nHost: tcpstated\r\n{accept_encoding}\r\n"
        )
        .unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        let end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&answer[..end]).to_lowercase();
        (head, answer[end + 4..].to_vec())
    };
    let (head, body) = raw("Accept-Encoding: gzip\r\n");
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(head.contains("vary: accept-encoding"), "{head}");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut text)
        .expect("a gzip body");
    assert!(text.contains("tcpstate_build_info{"), "{text}");
    assert!(
        body.len() * 3 < text.len(),
        "{} -> {}",
        text.len(),
        body.len()
    );

    for refused in [
        "",
        "Accept-Encoding: identity\r\n",
        "Accept-Encoding: gzip;q=0\r\n",
    ] {
        let (head, body) = raw(refused);
        assert!(!head.contains("content-encoding"), "{refused:?}: {head}");
        assert!(head.contains("vary: accept-encoding"), "{head}");
        assert!(String::from_utf8_lossy(&body).contains("tcpstate_build_info{"));
    }
}
