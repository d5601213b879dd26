//! Web configuration files, good and bad: each bad one is refused with the key and the line
//! that are wrong.

use std::path::{Path, PathBuf};

use tcpstate_testkit::certificates::Certificates;

use super::*;

/// A folder of the test's own, with certificates made by openssl.
fn folder(name: &str) -> (PathBuf, Certificates) {
    let directory =
        std::env::temp_dir().join(format!("tcpstate-web-config-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    let certificates = Certificates::make(&directory, "test").expect("openssl makes certificates");
    (directory, certificates)
}

fn load(directory: &Path, text: &str) -> Result<WebConfig, WebConfigError> {
    let path = directory.join("web.yml");
    std::fs::write(&path, text).unwrap();
    WebConfig::load(&path)
}

/// A bcrypt hash of "secret" (cost 4: quick to check in tests).
fn hash() -> String {
    bcrypt::hash("secret", 4).unwrap()
}

#[test]
fn a_full_file_in_exporter_toolkits_format_loads() {
    let (directory, _) = folder("full");
    let text = format!(
        "# node_exporter's file, unchanged\n\
         tls_server_config:\n  cert_file: test-server.pem\n  key_file: test-server-key.pem\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: test-ca.pem\n  \
         client_allowed_sans:\n    - prometheus.example\n  min_version: TLS12\n  \
         max_version: TLS13\n  cipher_suites:\n    - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\n  \
         prefer_server_cipher_suites: true\n  curve_preferences: [X25519, CurveP256]\n\
         http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n    \
         Content-Security-Policy: \"default-src 'self'\"\n\
         basic_auth_users:\n  prometheus: '{}'\n\
         rate_limit:\n  interval: 100ms\n  burst: 10\n",
        hash()
    );
    let config = load(&directory, &text).unwrap();
    assert!(config.tls.is_some());
    assert_eq!(config.users.len(), 1);
    assert_eq!(config.headers.len(), 2);
    assert_eq!(
        config.rate_limit,
        Some((std::time::Duration::from_millis(100), 10))
    );
    assert_eq!(config.files.len(), 3, "{:?}", config.files);
}

#[test]
fn empty_files_and_files_without_tls_serve_plain_http() {
    let (directory, _) = folder("plain");
    for text in ["", "# nothing yet\n", "basic_auth_users: {}\n"] {
        let config = load(&directory, text).unwrap();
        assert!(config.tls.is_none() && config.users.is_empty(), "{text:?}");
    }
}

/// The start of a TLS configuration that loads.
macro_rules! good_tls {
    () => {
        "tls_server_config:\n  cert_file: test-server.pem\n  key_file: test-server-key.pem\n"
    };
}

/// Bad files: (text, the line, the key, part of the message).
const BAD_FILES: &[(&str, usize, &str, &str)] = &[
    (
        "tls_server_config:\n  cert_file: a.pem\n   key_file: b.pem\n",
        3,
        "",
        "mapping values are not allowed",
    ),
    (
        "tls_server_config:\n  cert_file: [a.pem]\n",
        2,
        "tls_server_config.cert_file",
        "invalid type: sequence",
    ),
    (
        concat!(good_tls!(), "basic_auth_user:\n  alice: x\n"),
        4,
        "",
        "unknown field `basic_auth_user`",
    ),
    (
        concat!(good_tls!(), "  certfile: other.pem\n"),
        4,
        "tls_server_config",
        "unknown field `certfile`",
    ),
    (
        concat!(good_tls!(), "  client_auth_type: RequireCert\n"),
        4,
        "tls_server_config.client_auth_type",
        "unknown variant `RequireCert`",
    ),
    (
        concat!(good_tls!(), "  min_version: TLS14\n"),
        4,
        "tls_server_config.min_version",
        "unknown variant `TLS14`",
    ),
    (
        "tls_server_config:\n  cert_file: missing.pem\n  key_file: test-server-key.pem\n",
        2,
        "tls_server_config.cert_file",
        "cannot read",
    ),
    (
        "tls_server_config:\n  cert_file: test-server.pem\n  key_file: test-client-key.pem\n",
        3,
        "tls_server_config.key_file",
        "does not fit the certificate",
    ),
    (
        "tls_server_config:\n  cert_file: test-server-key.pem\n  key_file: test-server-key.pem\n",
        2,
        "tls_server_config.cert_file",
        "no PEM certificate",
    ),
    (
        "tls_server_config:\n  cert_file: test-server.pem\n",
        1,
        "tls_server_config",
        "missing one of key or key_file",
    ),
    (
        concat!(good_tls!(), "  client_ca_file: test-ca.pem\n"),
        4,
        "tls_server_config.client_ca_file",
        "without a client auth type",
    ),
    (
        concat!(
            good_tls!(),
            "  client_auth_type: RequireAndVerifyClientCert\n"
        ),
        4,
        "tls_server_config.client_auth_type",
        "needs client_ca_file",
    ),
    (
        concat!(good_tls!(), "  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n"),
        4,
        "tls_server_config.cipher_suites",
        "TLS_RSA_WITH_RC4_128_SHA",
    ),
    (
        concat!(good_tls!(), "  curve_preferences:\n    - CurveP521\n"),
        4,
        "tls_server_config.curve_preferences",
        "CurveP521",
    ),
    (
        concat!(good_tls!(), "  min_version: TLS13\n  max_version: TLS12\n"),
        4,
        "tls_server_config.min_version",
        "above max_version",
    ),
    (
        "basic_auth_users:\n  alice: secret\n",
        2,
        "basic_auth_users.alice",
        "not a bcrypt hash",
    ),
    (
        "http_server_config:\n  headers:\n    X-Powered-By: tcpstated\n",
        3,
        "http_server_config.headers.X-Powered-By",
        "cannot be set",
    ),
    (
        "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
        3,
        "http_server_config.headers.X-Frame-Options",
        "not one of",
    ),
    (
        "rate_limit:\n  interval: soon\n  burst: 1\n",
        2,
        "rate_limit.interval",
        "not a duration",
    ),
    (
        "basic_auth_users: [alice]\n",
        1,
        "basic_auth_users",
        "invalid type",
    ),
];

#[test]
fn bad_files_name_the_key_and_the_line() {
    let (directory, _) = folder("bad");
    let mut wrong = Vec::new();
    for &(text, line, key, message) in BAD_FILES {
        let error = load(&directory, text).expect_err(text);
        let shown = error.to_string();
        let right = (error.line, error.key.as_str()) == (Some(line), key)
            && error.message.contains(message)
            && shown.contains(&format!("line {line}"))
            && shown.contains("web.yml");
        if !right {
            wrong.push(format!(
                "{text}=> {shown:?}\n   want line {line}, key {key:?}, {message:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[test]
fn an_unreadable_file_is_an_error_about_the_file() {
    let error = WebConfig::load(Path::new("/nonexistent/web.yml")).unwrap_err();
    assert_eq!((error.line, error.key.as_str()), (None, ""));
    assert!(error.to_string().contains("cannot read it"), "{error}");
}

#[test]
fn lines_are_found_by_indentation() {
    let text = "a:\n  b: 1\nc:\n  # comment\n  b: 2\n  d:\n    - b: 3\n";
    assert_eq!(line_of(text, "a.b"), Some(2));
    assert_eq!(line_of(text, "c.b"), Some(5));
    assert_eq!(line_of(text, "c.d"), Some(6));
    assert_eq!(line_of(text, "a.d"), None);
    assert_eq!(line_of(text, "x"), None);
}
