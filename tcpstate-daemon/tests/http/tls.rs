//! `--web.config.file` in exporter-toolkit's format on the real daemon: TLS with a client
//! certificate, basic auth, plaintext to the TLS port, a certificate replaced on disk, and a
//! real Prometheus scraping over all of it.

use std::{
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use tcpstate_testkit::{Exposition, certificates::Certificates, http};

use crate::support::{
    Daemon,
    files::temporary_directory,
    prometheus::Prometheus,
    tls::{Client, certificate_der},
};

const USER: &str = "prometheus";
const PASSWORD: &str = "scrape-me";

/// A web config file requiring a client certificate of `certificates`' CA and basic auth.
fn web_config(directory: &Path, certificates: &Certificates) -> PathBuf {
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    let text = format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n\
         http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n\
         basic_auth_users:\n  {USER}: {hash}\n",
        certificates.server_cert.display(),
        certificates.server_key.display(),
        certificates.ca.display(),
    );
    let path = directory.join("web-config.yml");
    std::fs::write(&path, text).unwrap();
    path
}

fn client(certificates: &Certificates) -> Client<'_> {
    Client {
        ca: Some(&certificates.ca),
        identity: Some((&certificates.client_cert, &certificates.client_key)),
        basic_auth: Some((USER, PASSWORD)),
    }
}

fn start(config: &Path, certificates: &Certificates) -> Daemon {
    let flag = format!("--web.config.file={}", config.display());
    let client = client(certificates);
    Daemon::start_until(&[&flag], |address| {
        client
            .get(address, "/healthz")
            .is_ok_and(|answer| answer.response.status == 200)
    })
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn tls_with_a_client_certificate_and_basic_auth() {
    let directory = temporary_directory("tls");
    let certificates = Certificates::make(&directory, "first").unwrap();
    let daemon = start(&web_config(&directory, &certificates), &certificates);
    let good = client(&certificates);

    let scrape = good.get(daemon.address, "/metrics").unwrap().response;
    assert_eq!(scrape.status, 200, "{}", scrape.body);
    assert!(scrape.body.contains("tcpstate_build_info{"));

    let wrong_password = Client {
        basic_auth: Some((USER, "guess")),
        ..good.clone()
    };
    let refused = wrong_password.get(daemon.address, "/metrics").unwrap();
    assert_eq!(refused.response.status, 401, "{}", refused.response.body);
    let no_auth = Client {
        basic_auth: None,
        ..good.clone()
    };
    assert_eq!(
        no_auth
            .get(daemon.address, "/healthz")
            .unwrap()
            .response
            .status,
        401
    );

    let no_certificate = Client {
        identity: None,
        ..good.clone()
    };
    assert!(
        no_certificate.get(daemon.address, "/metrics").is_err(),
        "a client without a certificate completes a request"
    );
    let stranger = Client {
        identity: Some((&certificates.stranger_cert, &certificates.stranger_key)),
        ..good.clone()
    };
    assert!(
        stranger.get(daemon.address, "/metrics").is_err(),
        "a certificate of another CA is accepted"
    );

    // Plain HTTP to the TLS port: Go's answer, then the connection closes.
    let plain = http::get(daemon.address, "/metrics", Duration::from_secs(5)).unwrap();
    assert_eq!(plain.status, 400);
    assert!(plain.body.contains("HTTPS server"), "{}", plain.body);

    let metrics =
        Exposition::parse(&good.get(daemon.address, "/metrics").unwrap().response.body).unwrap();
    assert!(
        metrics.sum(
            "tcpstate_http_requests_total",
            &[("handler", "/metrics"), ("code", "401")]
        ) >= 1.0
    );
    assert!(metrics.sum("tcpstate_http_tls_handshake_failures_total", &[]) >= 3.0);
    let _ = std::fs::remove_dir_all(&directory);
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn a_certificate_replaced_on_disk_serves_the_next_connection() {
    let directory = temporary_directory("tls-rotation");
    let first = Certificates::make(&directory, "first").unwrap();
    let daemon = start(&web_config(&directory, &first), &first);
    let good = client(&first);
    let served = good.get(daemon.address, "/healthz").unwrap();
    assert_eq!(
        served.server_certificate,
        certificate_der(&first.server_cert)
    );

    // A new key and certificate from the same CA, moved over the old files as a renewal
    // tool does.
    let renewal = directory.join("renewal");
    std::fs::create_dir_all(&renewal).unwrap();
    let second = Certificates::make(&renewal, "second").unwrap();
    let resigned = resign(&renewal, &first, &second);
    std::fs::rename(&second.server_key, &first.server_key).unwrap();
    std::fs::rename(&resigned, &first.server_cert).unwrap();
    assert_ne!(
        served.server_certificate,
        certificate_der(&first.server_cert)
    );

    let answer = good.get(daemon.address, "/healthz").unwrap();
    assert_eq!(answer.response.status, 200);
    assert_eq!(
        answer.server_certificate,
        certificate_der(&first.server_cert),
        "the next connection still gets the old certificate"
    );
    let _ = std::fs::remove_dir_all(&directory);
}

/// `second`'s server key, certified by `first`'s CA (so the test's client still trusts it).
fn resign(directory: &Path, first: &Certificates, second: &Certificates) -> PathBuf {
    let request = directory.join("renewal.csr");
    let certificate = directory.join("renewal.pem");
    let extensions = directory.join("renewal.ext");
    std::fs::write(&extensions, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    let run = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "openssl {args:?}: {output:?}");
    };
    let path = |path: &Path| path.to_str().unwrap().to_owned();
    run(&[
        "req",
        "-new",
        "-key",
        &path(&second.server_key),
        "-subj",
        "/CN=localhost",
        "-out",
        &path(&request),
    ]);
    let ca_key = first.ca.with_file_name("first-ca-key.pem");
    run(&[
        "x509",
        "-req",
        "-in",
        &path(&request),
        "-CA",
        &path(&first.ca),
        "-CAkey",
        &path(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        &path(&certificate),
        "-extfile",
        &path(&extensions),
    ]);
    certificate
}

#[test]
#[ignore = "needs root and a BPF-capable kernel: run with `cargo xtask test`"]
fn prometheus_scrapes_over_tls_with_a_client_certificate_and_basic_auth() {
    let directory = temporary_directory("tls-prometheus");
    let certificates = Certificates::make(&directory, "first").unwrap();
    let daemon = start(&web_config(&directory, &certificates), &certificates);
    let job = |password: &str| {
        format!(
            "    scheme: https\n    tls_config:\n      ca_file: {}\n      cert_file: {}\n      \
             key_file: {}\n      server_name: localhost\n    basic_auth:\n      \
             username: {USER}\n      password: {password}\n",
            certificates.ca.display(),
            certificates.client_cert.display(),
            certificates.client_key.display(),
        )
    };
    let prometheus = Prometheus::start_with(daemon.address, &[], &job(PASSWORD));
    until(&prometheus, "up{job=\"tcpstate\"}", 1.0);
    until(
        &prometheus,
        "count(tcpstate_build_info{job=\"tcpstate\"})",
        1.0,
    );
    drop(prometheus);

    let refused = Prometheus::start_with(daemon.address, &[], &job("wrong"));
    until(&refused, "up{job=\"tcpstate\"}", 0.0);
    let metrics = Exposition::parse(
        &client(&certificates)
            .get(daemon.address, "/metrics")
            .unwrap()
            .response
            .body,
    )
    .unwrap();
    assert!(
        metrics.sum(
            "tcpstate_http_requests_total",
            &[("handler", "/metrics"), ("code", "401")]
        ) >= 1.0,
        "Prometheus' scrapes with a wrong password answered 401"
    );
    let _ = std::fs::remove_dir_all(&directory);
}

/// Polls Prometheus (bounded) until `expression` is `want`.
fn until(prometheus: &Prometheus, expression: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let value = prometheus.value(expression);
        if value == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{expression} is {value:?}, not {want}:\n{}",
            prometheus.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
}
