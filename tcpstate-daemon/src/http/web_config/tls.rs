//! `tls_server_config` to a rustls server configuration (ring provider), with exporter-toolkit's
//! meanings: Go's client auth types, TLS 1.2 cipher suites by Go's names, curves by Go's names.

use std::{path::Path, sync::Arc};

use rustls::{
    RootCertStore, ServerConfig, SupportedProtocolVersion,
    crypto::{CryptoProvider, SupportedKxGroup, ring},
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};

use super::{
    Problem,
    schema::{ClientAuth, TlsServerConfig, TlsVersion},
    verifiers::{AllowedSans, AnyClientCert},
};

/// The server configuration, or `None` when the file configures no TLS (plain HTTP).
pub(super) fn server_config(tls: &TlsServerConfig) -> Result<Option<Arc<ServerConfig>>, Problem> {
    let set = |text: &Option<String>| text.as_deref().is_some_and(|text| !text.is_empty());
    let enabled = set(&tls.cert)
        || set(&tls.key)
        || set(&tls.client_ca)
        || tls.cert_file.is_some()
        || tls.key_file.is_some()
        || tls.client_ca_file.is_some()
        || tls.client_auth_type.is_some();
    if !enabled {
        return Ok(None);
    }
    let chain = certificates(tls)?;
    let key = private_key(tls)?;
    let provider = Arc::new(provider(tls)?);
    let versions = versions(tls)?;
    let verifier = client_verifier(tls, &provider)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|error| Problem::at("tls_server_config", error.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|error| {
            Problem::at(
                "tls_server_config.key_file",
                format!("the key does not fit the certificate: {error}"),
            )
        })?;
    // Go's prefer_server_cipher_suites, true by default.
    config.ignore_client_order = tls.prefer_server_cipher_suites.unwrap_or(true);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// PEM from `file` (read now) or inline `text`; `what` names the keys for messages.
fn pem(
    file: &Option<std::path::PathBuf>,
    text: &Option<String>,
    keys: (&str, &str),
) -> Result<Option<(Vec<u8>, String)>, Problem> {
    let text = text.as_deref().filter(|text| !text.is_empty());
    match (file, text) {
        (Some(_), Some(_)) => Err(Problem::at(
            format!("tls_server_config.{}", keys.1),
            format!("give either {} or {}, not both", keys.0, keys.1),
        )),
        (Some(path), None) => read(path, keys.0).map(|bytes| Some((bytes, keys.0.to_owned()))),
        (None, Some(text)) => Ok(Some((text.as_bytes().to_vec(), keys.1.to_owned()))),
        (None, None) => Ok(None),
    }
}

fn read(path: &Path, key: &str) -> Result<Vec<u8>, Problem> {
    std::fs::read(path).map_err(|error| {
        Problem::at(
            format!("tls_server_config.{key}"),
            format!("cannot read {}: {error}", path.display()),
        )
    })
}

fn certificates(tls: &TlsServerConfig) -> Result<Vec<CertificateDer<'static>>, Problem> {
    let Some((bytes, key)) = pem(&tls.cert_file, &tls.cert, ("cert_file", "cert"))? else {
        return Err(Problem::at(
            "tls_server_config",
            "missing one of cert or cert_file",
        ));
    };
    let key = format!("tls_server_config.{key}");
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| Problem::at(&key, format!("not a PEM certificate: {error}")))?;
    if chain.is_empty() {
        return Err(Problem::at(key, "holds no PEM certificate"));
    }
    Ok(chain)
}

fn private_key(tls: &TlsServerConfig) -> Result<PrivateKeyDer<'static>, Problem> {
    let Some((bytes, key)) = pem(&tls.key_file, &tls.key, ("key_file", "key"))? else {
        return Err(Problem::at(
            "tls_server_config",
            "missing one of key or key_file",
        ));
    };
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| {
        Problem::at(
            format!("tls_server_config.{key}"),
            format!("not a PEM private key: {error}"),
        )
    })
}

/// ring's provider with the TLS 1.2 suites and the groups the file lists, in its order.
fn provider(tls: &TlsServerConfig) -> Result<CryptoProvider, Problem> {
    #[expect(
        deprecated,
        reason = "ring has no post-quantum key exchange; aws-lc-rs, which has, needs a C build \
                  of minutes per clean build, and exporter-toolkit's files name no such group"
    )]
    let mut provider = ring::default_provider();
    if let Some(names) = tls.cipher_suites.as_ref().filter(|names| !names.is_empty()) {
        // TLS 1.3's suites are not configurable (in Go either): all stay.
        let mut suites: Vec<_> = Vec::new();
        for name in names {
            let found = ring::ALL_CIPHER_SUITES
                .iter()
                .find(|suite| suite.suite().as_str() == Some(name.as_str()));
            match found {
                Some(suite) if suite.version() == &rustls::version::TLS12 => suites.push(*suite),
                Some(_) => {}
                None => {
                    let known: Vec<&str> = ring::ALL_CIPHER_SUITES
                        .iter()
                        .filter(|suite| suite.version() == &rustls::version::TLS12)
                        .filter_map(|suite| suite.suite().as_str())
                        .collect();
                    return Err(Problem::at(
                        "tls_server_config.cipher_suites",
                        format!(
                            "`{name}` is not a TLS 1.2 cipher suite tcpstated has: use {known:?}"
                        ),
                    ));
                }
            }
        }
        suites.extend(
            ring::ALL_CIPHER_SUITES
                .iter()
                .filter(|suite| suite.version() == &rustls::version::TLS13),
        );
        provider.cipher_suites = suites;
    }
    if let Some(names) = tls
        .curve_preferences
        .as_ref()
        .filter(|names| !names.is_empty())
    {
        let mut groups: Vec<&'static dyn SupportedKxGroup> = Vec::new();
        for name in names {
            let group = match name.as_str() {
                "X25519" => ring::kx_group::X25519,
                "CurveP256" => ring::kx_group::SECP256R1,
                "CurveP384" => ring::kx_group::SECP384R1,
                other => {
                    return Err(Problem::at(
                        "tls_server_config.curve_preferences",
                        format!(
                            "`{other}` is not a curve tcpstated has: use X25519, CurveP256 or CurveP384"
                        ),
                    ));
                }
            };
            groups.push(group);
        }
        provider.kx_groups = groups;
    }
    Ok(provider)
}

/// min_version..=max_version (TLS12 and TLS13 by default); rustls has no TLS 1.0 or 1.1, so
/// a minimum below 1.2 means 1.2.
fn versions(tls: &TlsServerConfig) -> Result<Vec<&'static SupportedProtocolVersion>, Problem> {
    let min = tls.min_version.unwrap_or(TlsVersion::TLS12);
    let max = tls.max_version.unwrap_or(TlsVersion::TLS13);
    if min > max {
        return Err(Problem::at(
            "tls_server_config.min_version",
            format!("{min:?} is above max_version {max:?}"),
        ));
    }
    let versions: Vec<_> = [
        (TlsVersion::TLS12, &rustls::version::TLS12),
        (TlsVersion::TLS13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(version, _)| (min..=max).contains(version))
    .map(|(_, supported)| supported)
    .collect();
    if versions.is_empty() {
        return Err(Problem::at(
            "tls_server_config.max_version",
            format!("{max:?}: tcpstated speaks TLS 1.2 and 1.3 only"),
        ));
    }
    Ok(versions)
}

fn client_verifier(
    tls: &TlsServerConfig,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, Problem> {
    let auth = tls.client_auth_type.unwrap_or_default();
    let roots = match pem(
        &tls.client_ca_file,
        &tls.client_ca,
        ("client_ca_file", "client_ca"),
    )? {
        Some((bytes, key)) => Some((roots(&bytes, &key)?, key)),
        None => None,
    };
    let key = "tls_server_config.client_auth_type";
    let verifier: Arc<dyn ClientCertVerifier> = match (auth, roots) {
        (ClientAuth::NoClientCert, None) => WebPkiClientVerifier::no_client_auth(),
        (ClientAuth::NoClientCert, Some((_, ca_key))) => {
            return Err(Problem::at(
                format!("tls_server_config.{ca_key}"),
                "client CAs are configured without a client auth type: set \
                 RequireAndVerifyClientCert (or VerifyClientCertIfGiven)",
            ));
        }
        (ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert, _) => {
            Arc::new(AnyClientCert {
                mandatory: auth == ClientAuth::RequireAnyClientCert,
                provider: provider.clone(),
            })
        }
        (ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert, None) => {
            return Err(Problem::at(
                key,
                format!("{auth:?} needs client_ca_file (or client_ca): the CAs to verify with"),
            ));
        }
        (_, Some((roots, _))) => {
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let builder = if auth == ClientAuth::VerifyClientCertIfGiven {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            builder
                .build()
                .map_err(|error| Problem::at(key, error.to_string()))?
        }
    };
    match tls
        .client_allowed_sans
        .as_ref()
        .filter(|sans| !sans.is_empty())
    {
        None => Ok(verifier),
        Some(sans) => Ok(Arc::new(AllowedSans::new(verifier, sans)?)),
    }
}

fn roots(bytes: &[u8], key: &str) -> Result<RootCertStore, Problem> {
    let key = format!("tls_server_config.{key}");
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(bytes) {
        let certificate = certificate
            .map_err(|error| Problem::at(&key, format!("not a PEM certificate: {error}")))?;
        roots
            .add(certificate)
            .map_err(|error| Problem::at(&key, format!("not a CA certificate: {error}")))?;
    }
    if roots.is_empty() {
        return Err(Problem::at(key, "holds no PEM certificate"));
    }
    Ok(roots)
}
