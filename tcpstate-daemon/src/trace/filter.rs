//! What a subscriber asks for (`/events?port=&state=&workload=&limit=&queue=`), checked, and
//! the union of every subscriber's filter that the kernel applies before the daemon applies
//! each one's own.

use tcpstate_common::{TRACE_MAX_CGROUPS, TRACE_MAX_PORTS, TcpState, TraceControl};

use super::event::{Transition, workload_name};

/// Transitions a subscriber's queue holds by default, and at most (`queue=`): a queue of
/// JSON lines of about 450 bytes, so at most about 1 MiB each.
pub const DEFAULT_QUEUE: usize = 1024;
pub const MAX_QUEUE: usize = 2048;
/// Most transitions one stream delivers before it ends (`limit=`).
pub const MAX_LIMIT: u64 = 1_000_000_000;

/// Which transitions a subscriber wants; an empty part takes everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// The socket's local or remote port is one of these.
    pub ports: Vec<u16>,
    /// The transition leaves or enters one of these (logical view).
    pub states: Vec<TcpState>,
    /// The owner's workload name is this, or starts with it and a `/` (`default/web-0` takes
    /// every container of that pod).
    pub workload: Option<String>,
}

/// A subscription's request: its filter, when it ends, its queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub filter: Filter,
    /// End the stream after this many transitions.
    pub limit: Option<u64>,
    /// Transitions waiting for a slow reader before the next ones are dropped (and counted).
    pub queue: usize,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("unknown parameter `{0}`: /events takes port, state, workload, limit and queue")]
    UnknownParameter(String),
    #[error("`{0}` is not a port: give a number from 1 to 65535")]
    BadPort(String),
    #[error("at most {TRACE_MAX_PORTS} ports")]
    TooManyPorts,
    #[error("`{0}` is not a TCP state: give one of {STATE_NAMES}")]
    UnknownState(String),
    #[error("give at most one workload")]
    TwoWorkloads,
    #[error("`{0}` is not a workload name (namespace/pod/container, a unit, a container name)")]
    BadWorkload(String),
    #[error("`{value}` is not a valid {name}: give a whole number from 1 to {most}")]
    OutOfRange {
        name: &'static str,
        value: String,
        most: u64,
    },
    #[error("`{0}` is not percent-encoded correctly")]
    BadEncoding(String),
}

const STATE_NAMES: &str = "ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, TIME_WAIT, \
                           CLOSE, CLOSE_WAIT, LAST_ACK, LISTEN, CLOSING";

impl Request {
    /// Parses a query string (without the `?`). Lists take commas or repeated parameters.
    pub fn parse(query: &str) -> Result<Request, FilterError> {
        let mut request = Request {
            filter: Filter::default(),
            limit: None,
            queue: DEFAULT_QUEUE,
        };
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = percent_decode(name)?;
            let value = percent_decode(value)?;
            let values = value.split(',').map(str::trim).filter(|v| !v.is_empty());
            match name.as_str() {
                "port" => {
                    for port in values {
                        request.filter.ports.push(parse_port(port)?);
                    }
                    if request.filter.ports.len() > TRACE_MAX_PORTS {
                        return Err(FilterError::TooManyPorts);
                    }
                }
                "state" => {
                    for state in values {
                        request.filter.states.push(parse_state(state)?);
                    }
                }
                "workload" if value.trim().is_empty() => {}
                "workload" => request.filter.set_workload(value.trim())?,
                "limit" => request.limit = Some(parse_count("limit", &value, MAX_LIMIT)?),
                "queue" => request.queue = parse_count("queue", &value, MAX_QUEUE as u64)? as usize,
                _ => return Err(FilterError::UnknownParameter(name)),
            }
        }
        request.filter.ports.sort_unstable();
        request.filter.ports.dedup();
        request.filter.states.sort_unstable();
        request.filter.states.dedup();
        Ok(request)
    }
}

impl Filter {
    pub fn set_workload(&mut self, name: &str) -> Result<(), FilterError> {
        if self.workload.is_some() {
            return Err(FilterError::TwoWorkloads);
        }
        let valid = !name.starts_with('/')
            && !name.ends_with('/')
            && !name.contains("//")
            && name.len() <= 512
            && !name.chars().any(char::is_control);
        if !valid {
            return Err(FilterError::BadWorkload(name.escape_default().to_string()));
        }
        self.workload = Some(name.to_owned());
        Ok(())
    }

    pub fn matches(&self, transition: &Transition) -> bool {
        let (local, remote) = (transition.local.port(), transition.remote.port());
        (self.ports.is_empty() || self.ports.iter().any(|&p| p == local || p == remote))
            && (self.states.is_empty()
                || self.states.contains(&transition.from)
                || self.states.contains(&transition.to))
            && self.workload.as_deref().is_none_or(|wanted| {
                transition
                    .workload
                    .as_ref()
                    .is_some_and(|workload| workload_matches(wanted, &workload_name(workload)))
            })
    }

    /// The query string asking for this filter (the trace command's request).
    pub fn to_query(&self) -> String {
        let mut parts = Vec::new();
        if !self.ports.is_empty() {
            let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
            parts.push(format!("port={}", ports.join(",")));
        }
        if !self.states.is_empty() {
            let states: Vec<&str> = self.states.iter().map(|state| state.name()).collect();
            parts.push(format!("state={}", states.join(",")));
        }
        if let Some(workload) = &self.workload {
            parts.push(format!("workload={}", percent_encode(workload)));
        }
        parts.join("&")
    }
}

/// `name` is the workload `wanted`, or one of its parts (`default/web-0` of
/// `default/web-0/nginx`).
pub fn workload_matches(wanted: &str, name: &str) -> bool {
    name.strip_prefix(wanted)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The kernel's filter for these subscribers: each with its filter and, for a workload filter,
/// the cgroups of that workload now. The union of theirs (wider where the kernel's room ends):
/// every transition one of them wants passes it.
pub fn kernel_filter<'a>(
    subscribers: impl IntoIterator<Item = (&'a Filter, Option<&'a [u32]>)>,
) -> TraceControl {
    let mut control = TraceControl::OFF;
    let (mut any_state, mut any_port, mut any_owner) = (false, false, false);
    let (mut ports, mut cgroups) = (Vec::new(), Vec::new());
    for (filter, groups) in subscribers {
        control.subscribers += 1;
        any_state |= filter.states.is_empty();
        for state in &filter.states {
            control.states |= 1 << (*state as u8);
        }
        any_port |= filter.ports.is_empty();
        ports.extend_from_slice(&filter.ports);
        match groups {
            Some(groups) => cgroups.extend_from_slice(groups),
            None => any_owner = true,
        }
    }
    if any_state {
        control.states = 0;
    }
    ports.sort_unstable();
    ports.dedup();
    if !any_port && ports.len() <= TRACE_MAX_PORTS {
        control.ports[..ports.len()].copy_from_slice(&ports);
        control.port_count = ports.len() as u32;
    }
    cgroups.sort_unstable();
    cgroups.dedup();
    if !any_owner && control.subscribers > 0 && cgroups.len() <= TRACE_MAX_CGROUPS {
        if cgroups.is_empty() {
            // No group of the workloads asked for exists now: none passes (0 would pass all).
            cgroups.push(NO_CGROUP);
        }
        control.cgroups[..cgroups.len()].copy_from_slice(&cgroups);
        control.cgroup_count = cgroups.len() as u32;
    }
    control
}

/// A cgroup inode no group has (ids count up from 1; the top bits are never reached).
const NO_CGROUP: u32 = u32::MAX;

fn parse_port(text: &str) -> Result<u16, FilterError> {
    match text.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(FilterError::BadPort(text.escape_default().to_string())),
    }
}

fn parse_state(text: &str) -> Result<TcpState, FilterError> {
    let upper = text.to_ascii_uppercase().replace('-', "_");
    let name = match upper.as_str() {
        "CLOSED" => "CLOSE",
        name => name,
    };
    TcpState::ALL
        .into_iter()
        .filter(|state| *state != TcpState::NewSynRecv)
        .find(|state| state.name() == name)
        .ok_or_else(|| FilterError::UnknownState(text.escape_default().to_string()))
}

fn parse_count(name: &'static str, text: &str, most: u64) -> Result<u64, FilterError> {
    match text.trim().parse::<u64>() {
        Ok(count) if (1..=most).contains(&count) => Ok(count),
        _ => Err(FilterError::OutOfRange {
            name,
            value: text.escape_default().to_string(),
            most,
        }),
    }
}

fn percent_decode(text: &str) -> Result<String, FilterError> {
    let bad = || FilterError::BadEncoding(text.escape_default().to_string());
    let mut bytes = Vec::with_capacity(text.len());
    let mut input = text.bytes();
    while let Some(byte) = input.next() {
        match byte {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = [input.next().ok_or_else(bad)?, input.next().ok_or_else(bad)?];
                let hex = std::str::from_utf8(&hex).map_err(|_| bad())?;
                bytes.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            }
            byte => bytes.push(byte),
        }
    }
    String::from_utf8(bytes).map_err(|_| bad())
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' | b':' => {
                char::from(byte).to_string()
            }
            byte => format!("%{byte:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests;
