//! TLS on an accepted connection: the web configuration in force at that moment (so a
//! certificate replaced on disk serves the next connection), and a plain HTTP request to the
//! TLS port answered 400 as Go's server does, instead of a bare reset.

use std::sync::Arc;

use prometheus::IntCounter;
use tokio::io::AsyncWriteExt as _;
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::{connections::WatchedStream, web_config::WebConfigSource};

/// What the server needs to accept TLS connections.
pub struct TlsAcceptance {
    pub source: Arc<WebConfigSource>,
    pub failures: IntCounter,
}

/// The first byte of a TLS record carrying a handshake.
const HANDSHAKE_RECORD: u8 = 0x16;

const PLAINTEXT_ANSWER: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\n\
Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// The TLS stream once the handshake is done; `None` (counted, logged at debug) when it fails.
pub async fn accept(
    stream: WatchedStream,
    tls: &TlsAcceptance,
) -> Option<TlsStream<WatchedStream>> {
    let outcome = handshake(stream, tls).await;
    if let Err(reason) = &outcome {
        tls.failures.inc();
        log::debug!("TLS handshake failed: {reason}");
    }
    outcome.ok()
}

async fn handshake(
    mut stream: WatchedStream,
    tls: &TlsAcceptance,
) -> Result<TlsStream<WatchedStream>, String> {
    let mut first = [0; 1];
    let peeked = stream
        .stream
        .peek(&mut first)
        .await
        .map_err(|error| error.to_string())?;
    if peeked == 0 {
        return Err("closed before the handshake".into());
    }
    if first[0] != HANDSHAKE_RECORD {
        if first[0].is_ascii_uppercase() {
            let _ = stream.write_all(PLAINTEXT_ANSWER).await;
            let _ = stream.shutdown().await;
        }
        return Err("not a TLS handshake (plain HTTP to the TLS port?)".into());
    }
    let config = tls.source.current().map_err(|error| error.to_string())?;
    let Some(server_config) = config.tls.clone() else {
        return Err(format!(
            "{} no longer configures TLS (restart to serve plain HTTP)",
            tls.source.path().display()
        ));
    };
    TlsAcceptor::from(server_config)
        .accept(stream)
        .await
        .map_err(|error| error.to_string())
}
