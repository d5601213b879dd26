//! The trace command's side of a daemon's `/events`: its URL, the connection (plain HTTP, or
//! TLS with the CA and client certificate the daemon's `--web.config.file` asks for), basic
//! auth, and the server-sent events read off the stream.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{TcpStream, ToSocketAddrs as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
    crypto::ring,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
};

/// How long the daemon may stay silent: it sends a comment every 15 s.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of an error answer shown.
const ERROR_BODY_BYTES: u64 = 4096;

/// What a daemon with `--web.config.file` may ask of its clients.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// For an https:// URL: the CA certificates (PEM) that signed the daemon's certificate.
    #[arg(long = "tls.ca-file", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// A client certificate (PEM) for a daemon whose client_auth_type asks for one; with
    /// --tls.key-file.
    #[arg(long = "tls.cert-file", value_name = "FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long = "tls.key-file", value_name = "FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,

    /// The name the daemon's certificate must carry (default: the URL's host).
    #[arg(long = "tls.server-name", value_name = "NAME")]
    pub server_name: Option<String>,

    /// A user of the daemon's basic_auth_users; the password is read from
    /// --basic-auth.password-file.
    #[arg(
        long = "basic-auth.username",
        value_name = "USER",
        requires = "password_file"
    )]
    pub username: Option<String>,

    /// A file whose first line is that user's password (not a flag: other users can read a
    /// process's command line).
    #[arg(
        long = "basic-auth.password-file",
        value_name = "FILE",
        requires = "username"
    )]
    pub password_file: Option<PathBuf>,
}

/// A daemon's address, from `--web.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    /// As the URL names it (the `Host` header, the certificate's name).
    pub host: String,
    pub port: u16,
    /// Where the daemon's paths start behind a proxy (`/tcpstate`), or empty.
    pub prefix: String,
}

impl Endpoint {
    /// `http[s]://HOST[:PORT][/PREFIX]`.
    pub fn parse(url: &str) -> anyhow::Result<Endpoint> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else {
            bail!("`{url}` is not an http:// or https:// URL");
        };
        let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            bail!(
                "`{url}` carries credentials: give them with --basic-auth.username and \
                 --basic-auth.password-file"
            );
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => {
                let port = port
                    .parse()
                    .map_err(|_| anyhow!("`{port}` in `{url}` is not a port"))?;
                (host, port)
            }
            _ => (authority, if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            bail!("`{url}` names no host");
        }
        let prefix = prefix.trim_end_matches('/');
        Ok(Endpoint {
            tls,
            host: host.to_owned(),
            port,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("/{prefix}")
            },
        })
    }

    /// The host without an IPv6 address's brackets, to resolve or to check a certificate
    /// against.
    fn bare_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.prefix)
    }
}

/// Checks what `credentials` name before anything is sent: files that cannot be read are usage
/// errors.
pub struct Connector {
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    /// The `Authorization` header's value.
    authorization: Option<String>,
}

impl Connector {
    pub fn new(endpoint: &Endpoint, credentials: &Credentials) -> anyhow::Result<Connector> {
        let tls = match endpoint.tls {
            true => {
                let name = credentials
                    .server_name
                    .clone()
                    .unwrap_or_else(|| endpoint.bare_host().to_owned());
                let name = ServerName::try_from(name.clone())
                    .map_err(|_| anyhow!("`{name}` is not a host name to check a certificate"))?;
                Some((tls_config(credentials)?, name))
            }
            false if credentials.ca_file.is_some() || credentials.cert_file.is_some() => bail!(
                "--tls.ca-file and --tls.cert-file are for an https:// URL: give --web.url \
                 https://..."
            ),
            false => None,
        };
        let authorization = match (&credentials.username, &credentials.password_file) {
            (Some(user), Some(file)) => {
                let password = password(file)?;
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Some(format!("Basic {token}"))
            }
            _ => None,
        };
        Ok(Connector { tls, authorization })
    }

    /// GETs `path` (with its query) as a stream of server-sent events and checks the answer's
    /// status; the body follows in the reader.
    pub fn open(&self, endpoint: &Endpoint, path: &str) -> anyhow::Result<impl BufRead + use<>> {
        let path = format!("{}{path}", endpoint.prefix);
        let socket = connect(endpoint)?;
        socket.set_read_timeout(Some(READ_TIMEOUT))?;
        let stream: Box<dyn ReadWrite> = match &self.tls {
            Some((config, name)) => {
                let connection = ClientConnection::new(config.clone(), name.clone())?;
                Box::new(StreamOwned::new(connection, socket))
            }
            None => Box::new(socket),
        };
        let mut reader = BufReader::new(stream);
        let authorization = self
            .authorization
            .as_deref()
            .map(|value| format!("Authorization: {value}\r\n"))
            .unwrap_or_default();
        // HTTP/1.0: the body is the stream itself, not chunks.
        let request = format!(
            "GET {path} HTTP/1.0\r\nHost: {}:{}\r\nAccept: text/event-stream\r\n\
             {authorization}\r\n",
            endpoint.host, endpoint.port
        );
        let asked = reader.get_mut().write_all(request.as_bytes());
        let status = asked.and_then(|()| read_head(&mut reader));
        let status = status.map_err(|error| match (endpoint.tls, error.kind()) {
            (false, io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset) => anyhow!(
                "{endpoint} closed the connection without an answer: if it serves TLS \
                 (--web.config.file), give an https:// URL"
            ),
            _ => anyhow::Error::new(error).context(format!("no answer from {endpoint}")),
        })?;
        if status != 200 {
            let mut body = String::new();
            let _ = reader
                .by_ref()
                .take(ERROR_BODY_BYTES)
                .read_to_string(&mut body);
            bail!(
                "{endpoint}{path} answered {status}: {}{}",
                body.trim_end(),
                hint(status, endpoint)
            );
        }
        Ok(reader)
    }
}

/// What to do about a refusal the daemon's answer may not spell out.
fn hint(status: u16, endpoint: &Endpoint) -> &'static str {
    match (status, endpoint.tls) {
        (400, false) => " (if the daemon serves TLS, give an https:// URL)",
        (401, _) => {
            " (the daemon asks for basic auth: give --basic-auth.username and \
             --basic-auth.password-file)"
        }
        (404, _) => " (an older tcpstated, without the event stream?)",
        _ => "",
    }
}

/// Plain or TLS, read and written alike.
trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// Connects to the first address of the endpoint's host that answers.
fn connect(endpoint: &Endpoint) -> anyhow::Result<TcpStream> {
    let addresses = (endpoint.bare_host(), endpoint.port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {}", endpoint.host))?;
    let mut last_error = None;
    for address in addresses {
        match TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = Some(error),
        }
    }
    let error = last_error.unwrap_or_else(|| io::Error::other("the host has no address"));
    Err(anyhow::Error::new(error).context(format!(
        "cannot connect to tcpstated at {endpoint}: is the daemon running there? (give its \
         address with --web.url)"
    )))
}

/// Reads the response's head; returns its status.
fn read_head(reader: &mut impl BufRead) -> io::Result<u16> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP answer"))?;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
            return Ok(status);
        }
    }
}

fn tls_config(credentials: &Credentials) -> anyhow::Result<Arc<ClientConfig>> {
    let Some(ca_file) = &credentials.ca_file else {
        bail!(
            "an https:// URL needs --tls.ca-file: the CA certificates that signed the daemon's \
             certificate"
        );
    };
    let mut roots = RootCertStore::empty();
    for certificate in pem_certificates(ca_file)? {
        roots.add(certificate).with_context(|| {
            format!(
                "{} holds a certificate rustls cannot use",
                ca_file.display()
            )
        })?;
    }
    #[expect(
        deprecated,
        reason = "the daemon's provider (ring, see http::web_config::tls), for the same handshakes"
    )]
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (&credentials.cert_file, &credentials.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let key = PrivateKeyDer::from_pem_file(key_file)
                .with_context(|| format!("no private key read from {}", key_file.display()))?;
            builder
                .with_client_auth_cert(pem_certificates(cert_file)?, key)
                .context("the client key does not fit its certificate")?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The certificates of a PEM file, at least one.
fn pem_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read certificates from {}", path.display()))?;
    if certificates.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certificates)
}

/// The first line of a password file.
fn password(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the password file {}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// One server-sent event: its name (`message` when it has none) and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub data: String,
}

/// Reads server-sent events off `reader`, handing each to `handle` until it returns false;
/// `Ok(true)` when `handle` ended it, `Ok(false)` when the stream did.
pub fn read_events(
    mut reader: impl BufRead,
    mut handle: impl FnMut(&Event) -> io::Result<bool>,
) -> io::Result<bool> {
    let mut event = Event {
        name: String::new(),
        data: String::new(),
    };
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(false);
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(value) = line.strip_prefix("event:") {
            event.name = value.trim_start().to_owned();
        } else if let Some(value) = line.strip_prefix("data:") {
            if !event.data.is_empty() {
                event.data.push('\n');
            }
            event
                .data
                .push_str(value.strip_prefix(' ').unwrap_or(value));
        } else if line.is_empty() && !event.data.is_empty() {
            if event.name.is_empty() {
                event.name.push_str("message");
            }
            if !handle(&event)? {
                return Ok(true);
            }
            event.name.clear();
            event.data.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_scheme_address_and_a_prefix() {
        let endpoint = Endpoint::parse("http://127.0.0.1:9816").unwrap();
        assert_eq!(
            (endpoint.tls, endpoint.host.as_str(), endpoint.port),
            (false, "127.0.0.1", 9816)
        );
        assert_eq!(endpoint.prefix, "");
        let endpoint = Endpoint::parse("https://node-1/tcpstate/").unwrap();
        assert_eq!((endpoint.tls, endpoint.port), (true, 443));
        assert_eq!(endpoint.prefix, "/tcpstate");
        assert_eq!(endpoint.to_string(), "https://node-1:443/tcpstate");
        let endpoint = Endpoint::parse("http://[::1]:9816").unwrap();
        assert_eq!((endpoint.bare_host(), endpoint.port), ("::1", 9816));
        assert_eq!(Endpoint::parse("http://[::1]").unwrap().port, 80);
        for (url, expected) in [
            ("ftp://node-1", "not an http:// or https:// URL"),
            ("node-1:9816", "not an http:// or https:// URL"),
            ("http://:9816", "names no host"),
            (
                "http://node-1:http",
                "`http` in `http://node-1:http` is not a port",
            ),
            ("http://me:secret@node-1", "carries credentials"),
        ] {
            let error = Endpoint::parse(url).unwrap_err().to_string();
            assert!(error.contains(expected), "{url}: {error}");
        }
    }

    #[test]
    fn tls_needs_its_ca_and_plain_http_takes_no_certificates() {
        let https = Endpoint::parse("https://node-1:9816").unwrap();
        let error = Connector::new(&https, &Credentials::default())
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("needs --tls.ca-file"), "{error}");
        let missing = Credentials {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Credentials::default()
        };
        let error = format!("{:#}", Connector::new(&https, &missing).err().unwrap());
        assert!(
            error.contains("cannot read certificates from /nonexistent/ca.pem"),
            "{error}"
        );
        let http = Endpoint::parse("http://node-1:9816").unwrap();
        let error = Connector::new(&http, &missing).err().unwrap().to_string();
        assert!(error.contains("for an https:// URL"), "{error}");
    }

    #[test]
    fn basic_auth_reads_the_first_line_of_the_password_file() {
        let path = std::env::temp_dir().join(format!("tcpstate-password-{}", std::process::id()));
        std::fs::write(&path, "s3cret\nignored\n").unwrap();
        let credentials = Credentials {
            username: Some("prometheus".into()),
            password_file: Some(path.clone()),
            ..Credentials::default()
        };
        let http = Endpoint::parse("http://node-1:9816").unwrap();
        let connector = Connector::new(&http, &credentials).unwrap();
        let expected = base64::engine::general_purpose::STANDARD.encode("prometheus:s3cret");
        assert_eq!(connector.authorization, Some(format!("Basic {expected}")));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn events_are_read_with_their_names_and_data() {
        let stream = "event: ready\ndata: {}\n\n: keep-alive\n\ndata: a\ndata:b\n\n\
                      event: transition\r\ndata: {\"cookie\":8}\r\n\r\nevent: cut";
        let mut seen = Vec::new();
        let ended = read_events(stream.as_bytes(), |event| {
            seen.push(event.clone());
            Ok(true)
        });
        assert!(!ended.unwrap(), "the stream ended");
        let names: Vec<_> = seen
            .iter()
            .map(|e| (e.name.as_str(), e.data.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("ready", "{}"),
                ("message", "a\nb"),
                ("transition", "{\"cookie\":8}")
            ]
        );
        let mut count = 0;
        let stopped = read_events(stream.as_bytes(), |_| {
            count += 1;
            Ok(count < 2)
        });
        assert!(stopped.unwrap());
        assert_eq!(count, 2);
    }
}
