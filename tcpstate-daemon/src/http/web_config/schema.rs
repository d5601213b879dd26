//! The file's keys, as exporter-toolkit's `web.Config` declares them, and their checks.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use super::{Problem, WebConfig, tls};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tls_server_config: TlsServerConfig,
    #[serde(default)]
    http_server_config: HttpServerConfig,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
    #[serde(default)]
    rate_limit: RateLimit,
}

/// `tls_server_config`. Empty strings count as unset, as in Go.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsServerConfig {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub client_ca: Option<String>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    pub client_auth_type: Option<ClientAuth>,
    pub client_allowed_sans: Option<Vec<String>>,
    pub min_version: Option<TlsVersion>,
    pub max_version: Option<TlsVersion>,
    pub cipher_suites: Option<Vec<String>>,
    pub prefer_server_cipher_suites: Option<bool>,
    pub curve_preferences: Option<Vec<String>>,
}

/// Go's `tls.ClientAuthType`, by exporter-toolkit's names.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum ClientAuth {
    #[default]
    NoClientCert,
    RequestClientCert,
    #[serde(alias = "RequireClientCert")]
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TlsVersion {
    TLS10,
    TLS11,
    TLS12,
    TLS13,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HttpServerConfig {
    /// Accepted for compatibility: tcpstated speaks HTTP/1.1 only.
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "accepted so that exporter-toolkit files load; HTTP/1.1 only"
    )]
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RateLimit {
    /// A Go duration (`1s`, `250ms`); 0 or unset: no limit.
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    burst: u32,
}

/// The headers exporter-toolkit lets a file set, with the values it accepts (none: any).
const EXTRA_HEADERS: [(&str, &[&str]); 5] = [
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// Parses and checks the file's text; relative paths are taken from `directory`.
pub(super) fn parse(text: &str, directory: &Path) -> Result<WebConfig, Problem> {
    // An empty file (or one of comments) is a valid, empty configuration.
    let file: File = serde_yaml_ng::from_str::<Option<File>>(text)
        .map_err(yaml_problem)?
        .unwrap_or_default();
    let headers = check_headers(file.http_server_config.headers)?;
    let users = check_users(file.basic_auth_users)?;
    let rate_limit = check_rate_limit(&file.rate_limit)?;
    let mut tls_config = file.tls_server_config;
    for path in [
        &mut tls_config.cert_file,
        &mut tls_config.key_file,
        &mut tls_config.client_ca_file,
    ] {
        *path = path
            .take()
            .filter(|path| !path.as_os_str().is_empty())
            .map(|path| directory.join(path));
    }
    let files = [
        &tls_config.cert_file,
        &tls_config.key_file,
        &tls_config.client_ca_file,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect();
    let tls = tls::server_config(&tls_config)?;
    Ok(WebConfig {
        tls,
        headers,
        users,
        rate_limit,
        files,
    })
}

/// serde's message names the key's path (`tls_server_config.client_auth_type: unknown
/// variant ...`) and the line; both are kept apart.
fn yaml_problem(error: serde_yaml_ng::Error) -> Problem {
    let line = error.location().map(|location| location.line());
    let text = error.to_string();
    // serde_yaml_ng appends " at line L column C"; the line is reported on its own.
    let text = match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    };
    let (key, message) = match text.split_once(": ") {
        Some((key, message)) if !key.contains(' ') => (key.to_owned(), message.to_owned()),
        _ => (String::new(), text),
    };
    Problem { key, line, message }
}

fn check_headers(headers: BTreeMap<String, String>) -> Result<Vec<(String, String)>, Problem> {
    let mut out = Vec::new();
    for (name, value) in headers {
        let key = format!("http_server_config.headers.{name}");
        let Some((_, allowed)) = EXTRA_HEADERS.iter().find(|(known, _)| *known == name) else {
            let names: Vec<&str> = EXTRA_HEADERS.iter().map(|(name, _)| *name).collect();
            return Err(Problem::at(
                key,
                format!("this header cannot be set (exporter-toolkit allows {names:?})"),
            ));
        };
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            return Err(Problem::at(
                key,
                format!("`{value}` is not one of {allowed:?}"),
            ));
        }
        if axum::http::HeaderValue::from_str(&value).is_err() {
            return Err(Problem::at(key, "not a valid header value"));
        }
        // Blank: unset, as in exporter-toolkit.
        if !value.is_empty() {
            out.push((name, value));
        }
    }
    Ok(out)
}

fn check_users(users: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, Problem> {
    for (user, hash) in &users {
        if let Err(error) = hash.parse::<bcrypt::HashParts>() {
            return Err(Problem::at(
                format!("basic_auth_users.{user}"),
                format!(
                    "not a bcrypt hash ({error}): give the output of `htpasswd -nBC 10 \"\" | tr -d ':\\n'`"
                ),
            ));
        }
    }
    Ok(users)
}

fn check_rate_limit(limit: &RateLimit) -> Result<Option<(Duration, u32)>, Problem> {
    let Some(text) = limit.interval.as_deref() else {
        return Ok(None);
    };
    let interval = go_duration(text).ok_or_else(|| {
        Problem::at(
            "rate_limit.interval",
            format!("`{text}` is not a duration (e.g. 1s, 250ms, 1m30s)"),
        )
    })?;
    Ok((!interval.is_zero()).then_some((interval, limit.burst)))
}

/// A Go `time.Duration` string: numbers with units (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`).
fn go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0.0;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += number * seconds;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).ok()
}
