//! Certificates for TLS tests, made by Debian's `openssl` in a folder of the test's: a CA, a
//! server certificate for `localhost`/127.0.0.1/::1 signed by it, a client certificate signed by
//! it, and a client certificate signed by nobody the server trusts.

use std::{
    io,
    path::{Path, PathBuf},
    process::Command,
};

/// The PEM files of a test's certificates.
#[derive(Debug, Clone)]
pub struct Certificates {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A self-signed client certificate (and key) the CA never signed.
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
}

impl Certificates {
    /// Makes them in `directory` (which must exist), named `<prefix>-*.pem`.
    pub fn make(directory: &Path, prefix: &str) -> io::Result<Certificates> {
        let file = |name: &str| directory.join(format!("{prefix}-{name}.pem"));
        let certificates = Certificates {
            ca: file("ca"),
            server_cert: file("server"),
            server_key: file("server-key"),
            client_cert: file("client"),
            client_key: file("client-key"),
            stranger_cert: file("stranger"),
            stranger_key: file("stranger-key"),
        };
        let ca_key = file("ca-key");
        let c = &certificates;
        self_signed(
            (&c.ca, &ca_key),
            "/CN=tcpstate test CA",
            &[
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )?;
        signed(
            directory,
            (&c.ca, &ca_key),
            (&c.server_cert, &c.server_key),
            "/CN=localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth",
        )?;
        signed(
            directory,
            (&c.ca, &ca_key),
            (&c.client_cert, &c.client_key),
            "/CN=prometheus",
            "subjectAltName=DNS:prometheus.example\nextendedKeyUsage=clientAuth",
        )?;
        self_signed((&c.stranger_cert, &c.stranger_key), "/CN=stranger", &[])?;
        Ok(certificates)
    }
}

/// A new P-256 key and a certificate for it signed by itself, with `extra` arguments.
fn self_signed((cert, key): (&Path, &Path), subject: &str, extra: &[&str]) -> io::Result<()> {
    let mut args = vec![
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        subject,
        "-keyout",
        path(key),
        "-out",
        path(cert),
    ];
    args.extend_from_slice(extra);
    openssl(&args)
}

/// A key and a certificate for it signed by `ca`, with the extensions `extensions`.
fn signed(
    directory: &Path,
    (ca, ca_key): (&Path, &Path),
    (cert, key): (&Path, &Path),
    subject: &str,
    extensions: &str,
) -> io::Result<()> {
    let request = cert.with_extension("csr");
    let extension_file = cert.with_extension("ext");
    std::fs::write(&extension_file, extensions)?;
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        subject,
        "-keyout",
        path(key),
        "-out",
        path(&request),
    ])?;
    let serial = directory.join("serial");
    openssl(&[
        "x509",
        "-req",
        "-in",
        path(&request),
        "-CA",
        path(ca),
        "-CAkey",
        path(ca_key),
        "-CAserial",
        path(&serial),
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        path(cert),
        "-extfile",
        path(&extension_file),
    ])
}

fn path(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

fn openssl(args: &[&str]) -> io::Result<()> {
    let output = Command::new("openssl").args(args).output()?;
    if output.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    )))
}
