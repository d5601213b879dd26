//! What a request to the sockets view asks for: `?state=CLOSE_WAIT&port=8080&workload=shop/
//! &min_age=300&limit=50`. Anything else is refused with a message saying what is allowed.

use std::time::Duration;

use tcpstate_common::{OTHER_PORT, TcpState};

/// Sockets listed when the request does not say.
pub const DEFAULT_LIMIT: usize = 100;
/// The most sockets one answer lists: the addresses and owners of each are looked up.
pub const MAX_LIMIT: usize = 1000;

#[derive(Clone, Debug, PartialEq)]
pub struct SocketQuery {
    /// Kernel state numbers; empty: every state.
    pub states: Vec<u8>,
    /// The `port` label's number (`OTHER_PORT` for `other`).
    pub port: Option<u16>,
    /// Part of `namespace/pod/container`.
    pub workload: Option<String>,
    pub min_age: Duration,
    pub limit: usize,
}

impl Default for SocketQuery {
    fn default() -> Self {
        SocketQuery {
            states: Vec::new(),
            port: None,
            workload: None,
            min_age: Duration::ZERO,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// A request the view cannot answer, and why (the answer's 400 body).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

impl SocketQuery {
    /// Parses a URL's query string (`None`: no query).
    pub fn parse(query: Option<&str>) -> Result<SocketQuery, QueryError> {
        let mut parsed = SocketQuery::default();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)
                .ok_or_else(|| QueryError(format!("{name}: not valid percent-encoded UTF-8")))?;
            match name {
                "state" => {
                    for name in value.split(',').filter(|name| !name.is_empty()) {
                        parsed.states.push(parse_state(name)?);
                    }
                }
                "port" => parsed.port = Some(parse_port(&value)?),
                "workload" if !value.is_empty() => parsed.workload = Some(value),
                "workload" => {}
                "min_age" => parsed.min_age = parse_seconds(&value)?,
                "limit" => parsed.limit = parse_limit(&value)?,
                _ => {
                    return Err(QueryError(format!(
                        "unknown parameter {name:?}: give state, port, workload, min_age \
                         (seconds) or limit (at most {MAX_LIMIT})"
                    )));
                }
            }
        }
        Ok(parsed)
    }
}

fn parse_state(name: &str) -> Result<u8, QueryError> {
    TcpState::ALL
        .iter()
        .find(|state| state.name().eq_ignore_ascii_case(name))
        .map(|state| *state as u8)
        .filter(|state| *state != TcpState::Close as u8)
        .ok_or_else(|| {
            let names: Vec<&str> = TcpState::ALL
                .iter()
                .filter(|state| **state != TcpState::Close)
                .map(|state| state.name())
                .collect();
            QueryError(format!(
                "unknown state {name:?}: give one or more (comma-separated) of {}",
                names.join(", ")
            ))
        })
}

fn parse_port(value: &str) -> Result<u16, QueryError> {
    if value == "other" {
        return Ok(OTHER_PORT);
    }
    value
        .parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| QueryError(format!("port {value:?}: give 1-65535 or other")))
}

fn parse_seconds(value: &str) -> Result<Duration, QueryError> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .ok_or_else(|| QueryError(format!("min_age {value:?}: give seconds, e.g. 300")))
}

fn parse_limit(value: &str) -> Result<usize, QueryError> {
    match value.parse::<usize>() {
        Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
        _ => Err(QueryError(format!(
            "limit {value:?}: give 1 to {MAX_LIMIT} (the sockets listed, oldest first)"
        ))),
    }
}

/// `%XX` escapes and `+` (a space, in forms) decoded; `None` if the result is not UTF-8 or an
/// escape is cut short.
fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        match byte {
            b'%' => {
                let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
                rest = &tail[2..];
            }
            b'+' => {
                bytes.push(b' ');
                rest = tail;
            }
            _ => {
                bytes.push(byte);
                rest = tail;
            }
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use tcpstate_common::state::{CLOSE_WAIT, LAST_ACK};

    use super::*;

    #[test]
    fn reads_every_filter() {
        let query = SocketQuery::parse(Some(
            "state=close_wait,LAST_ACK&port=8080&workload=shop%2Fcart&min_age=2.5&limit=7",
        ))
        .unwrap();
        assert_eq!(
            query,
            SocketQuery {
                states: vec![CLOSE_WAIT, LAST_ACK],
                port: Some(8080),
                workload: Some("shop/cart".into()),
                min_age: Duration::from_millis(2500),
                limit: 7,
            }
        );
        assert_eq!(SocketQuery::parse(None).unwrap(), SocketQuery::default());
        assert_eq!(
            SocketQuery::parse(Some("port=other")).unwrap().port,
            Some(OTHER_PORT)
        );
    }

    #[test]
    fn refuses_what_it_cannot_answer_saying_what_to_give() {
        for (query, says) in [
            ("state=OPEN", "unknown state \"OPEN\": give one or more"),
            ("state=CLOSE", "unknown state \"CLOSE\""),
            ("port=0", "give 1-65535 or other"),
            ("port=70000", "give 1-65535 or other"),
            ("min_age=-1", "give seconds"),
            ("min_age=1e400", "give seconds"),
            ("limit=0", "give 1 to 1000"),
            ("limit=1001", "give 1 to 1000"),
            ("limit=99999999999999999999999", "give 1 to 1000"),
            ("colour=red", "unknown parameter \"colour\""),
            ("workload=%zz", "not valid percent-encoded"),
            ("workload=%f0%28", "not valid percent-encoded"),
            ("workload=%4", "not valid percent-encoded"),
        ] {
            let error = SocketQuery::parse(Some(query)).unwrap_err();
            assert!(error.0.contains(says), "{query}: {error}");
        }
    }
}
