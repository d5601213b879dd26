//! A minimal HTTP/1.0 GET over a plain TCP stream: no client library, no connection reuse, the
//! whole answer read until the server closes. Enough for `/metrics`, `/healthz` and Prometheus'
//! HTTP API on loopback.

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// How long a connect may take: on loopback, refused or accepted at once.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A status code and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    /// Splits a raw HTTP/1.x answer; status 0 when the status line is missing or malformed.
    pub fn parse(raw: &str) -> Response {
        let status = raw
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        Response { status, body }
    }
}

/// GET `path` from `address`, waiting at most `read_timeout` for each read of the answer.
pub fn get(address: SocketAddr, path: &str, read_timeout: Duration) -> io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(read_timeout))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    Ok(Response::parse(&raw))
}

/// Why [`get_ok`] has no body to give.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("GET http://{address}{path} failed")]
    Io {
        address: SocketAddr,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("GET http://{address}{path} answered {status}: {body}")]
    Status {
        address: SocketAddr,
        path: String,
        status: u16,
        body: String,
    },
}

/// The body of a GET that must answer 200.
pub fn get_ok(address: SocketAddr, path: &str, read_timeout: Duration) -> Result<String, Error> {
    let response = get(address, path, read_timeout).map_err(|source| Error::Io {
        address,
        path: path.to_owned(),
        source,
    })?;
    if response.status != 200 {
        return Err(Error::Status {
            address,
            path: path.to_owned(),
            status: response.status,
            body: response.body,
        });
    }
    Ok(response.body)
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, thread};

    use super::*;

    #[test]
    fn an_answer_splits_into_status_and_body() {
        let response = Response::parse("HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno");
        assert_eq!(response.status, 404);
        assert_eq!(response.body, "no");
        assert_eq!(Response::parse("garbage").status, 0);
    }

    #[test]
    fn get_sends_a_request_and_reads_the_answer_to_its_end() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // The whole request first: closing with unread bytes would reset the connection.
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                if stream.read(&mut byte).unwrap() == 0 {
                    break;
                }
                request.push(byte[0]);
            }
            stream
                .write_all(b"HTTP/1.0 503 Service Unavailable\r\n\r\nnot yet")
                .unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        let error = get_ok(address, "/healthz", Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(&error, Error::Status { status: 503, body, .. } if body == "not yet"),
            "{error}"
        );
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /healthz HTTP/1.0\r\n"),
            "{request}"
        );
    }
}
