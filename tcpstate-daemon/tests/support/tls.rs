//! A TLS client for the daemon's HTTPS endpoints (rustls, as the daemon): trusts one CA, may
//! present a client certificate and basic-auth credentials.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::Arc,
    time::Duration,
};

use base64::Engine as _;
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
};
use tcpstate_testkit::http::Response;

/// How the client connects.
#[derive(Clone, Default)]
pub struct Client<'a> {
    pub ca: Option<&'a Path>,
    /// Certificate and key files.
    pub identity: Option<(&'a Path, &'a Path)>,
    /// User and password.
    pub basic_auth: Option<(&'a str, &'a str)>,
}

/// What a TLS GET got: the response, and the certificate the server presented.
pub struct Answer {
    pub response: Response,
    pub server_certificate: Vec<u8>,
}

impl Client<'_> {
    fn config(&self) -> ClientConfig {
        #[expect(
            deprecated,
            reason = "the daemon's provider, ring, for the same handshakes"
        )]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        if let Some(ca) = self.ca {
            for certificate in CertificateDer::pem_file_iter(ca).expect("the CA file") {
                roots.add(certificate.expect("a CA certificate")).unwrap();
            }
        }
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        match self.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = PrivateKeyDer::from_pem_file(key).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
        }
    }

    /// GET `path` over TLS (server name `localhost`); an error if the handshake fails.
    pub fn get(&self, address: SocketAddr, path: &str) -> std::io::Result<Answer> {
        let name = ServerName::try_from("localhost").unwrap();
        let connection =
            ClientConnection::new(Arc::new(self.config()), name).map_err(std::io::Error::other)?;
        let socket = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
        socket.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut stream = StreamOwned::new(connection, socket);
        let authorization = self
            .basic_auth
            .map(|(user, password)| {
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                format!("Authorization: Basic {token}\r\n")
            })
            .unwrap_or_default();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\n{authorization}Connection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        match stream.read_to_end(&mut raw) {
            Ok(_) => {}
            // The server may close without close_notify after a response with Connection: close.
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(error) => return Err(error),
        }
        let server_certificate = stream
            .conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|certificate| certificate.to_vec())
            .unwrap_or_default();
        Ok(Answer {
            response: Response::parse(&String::from_utf8_lossy(&raw)),
            server_certificate,
        })
    }
}

/// The DER of the first certificate of a PEM file.
pub fn certificate_der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}
