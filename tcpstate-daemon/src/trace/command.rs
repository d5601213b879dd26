//! `tcpstated trace`: prints transitions as they happen, as a client of a running daemon's
//! `/events` (`client`). The daemon owns the kernel programs and their ring buffer, so the
//! command needs no privilege, only the daemon's address, and a second reader costs the kernel
//! nothing more.

use std::{io, process::ExitCode};

use serde_json::Value;

use super::{
    client::{Connector, Credentials, Endpoint, Event, read_events},
    filter::Request,
};

/// tcpstated's subcommands; without one, it runs the daemon.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Prints TCP state transitions as they happen, like bcc's tcpstates but in the logical
    /// view (`... -> TIME_WAIT` where the kernel says `... -> CLOSE`), from a running
    /// tcpstated's live event stream (`GET /events`): no privilege needed. Transitions of
    /// timewait sockets (`TIME_WAIT -> CLOSE`) are not in the stream.
    Trace(TraceArgs),
}

/// `tcpstated trace`'s flags.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct TraceArgs {
    /// Only sockets whose local or remote port is PORT (repeat the flag or give a comma list;
    /// at most 16).
    #[arg(long = "port", value_name = "PORT", value_delimiter = ',')]
    pub ports: Vec<String>,

    /// Only transitions that leave or enter STATE (repeat the flag or give a comma list):
    /// ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE, CLOSE_WAIT,
    /// LAST_ACK, LISTEN, CLOSING.
    #[arg(long = "state", value_name = "STATE", value_delimiter = ',')]
    pub states: Vec<String>,

    /// Only sockets of this workload: `namespace/pod/container`, `namespace/pod`, a systemd
    /// unit, a container name, `host` (the daemon must run with --workloads).
    #[arg(long = "workload", value_name = "WORKLOAD")]
    pub workload: Option<String>,

    /// One JSON object per line instead of a table.
    #[arg(long = "json")]
    pub json: bool,

    /// Exit after this many transitions.
    #[arg(long = "limit", value_name = "COUNT")]
    pub limit: Option<String>,

    /// The daemon to read: http://HOST:PORT as its --web.listen-address, https:// when its
    /// --web.config.file asks for TLS.
    #[arg(
        long = "web.url",
        value_name = "URL",
        default_value = "http://127.0.0.1:9816"
    )]
    pub url: String,

    #[command(flatten)]
    pub credentials: Credentials,
}

/// Exit statuses: as the daemon's (2 for a usage error, 1 for a failure).
const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;

impl TraceArgs {
    /// The query of `/events`, checked here with the daemon's own rules.
    pub fn query(&self) -> Result<String, String> {
        let mut parts = Vec::new();
        let list = |name: &str, values: &[String]| format!("{name}={}", values.join(","));
        if !self.ports.is_empty() {
            parts.push(list("port", &self.ports));
        }
        if !self.states.is_empty() {
            parts.push(list("state", &self.states));
        }
        if let Some(limit) = &self.limit {
            parts.push(format!("limit={limit}"));
        }
        let mut request = Request::parse(&parts.join("&")).map_err(|e| e.to_string())?;
        if let Some(workload) = &self.workload {
            request
                .filter
                .set_workload(workload)
                .map_err(|e| e.to_string())?;
        }
        let mut query = request.filter.to_query();
        if let Some(limit) = request.limit {
            query.push_str(if query.is_empty() { "" } else { "&" });
            query.push_str(&format!("limit={limit}"));
        }
        Ok(query)
    }
}

pub fn run(args: &TraceArgs) -> ExitCode {
    let query = match args.query() {
        Ok(query) => query,
        Err(error) => return fail(EXIT_USAGE, &error),
    };
    let connector = Endpoint::parse(&args.url)
        .and_then(|endpoint| Ok((Connector::new(&endpoint, &args.credentials)?, endpoint)));
    let (connector, endpoint) = match connector {
        Ok(connector) => connector,
        Err(error) => return fail(EXIT_USAGE, &format!("{error:#}")),
    };
    let path = format!("/events?{query}");
    let stream = match connector.open(&endpoint, &path) {
        Ok(stream) => stream,
        Err(error) => return fail(EXIT_FAILURE, &format!("{error:#}")),
    };
    let mut printer = Printer {
        json: args.json,
        out: io::stdout().lock(),
        remaining: args.limit.as_deref().and_then(|limit| limit.parse().ok()),
        source: format!("{endpoint}{path}"),
    };
    match read_events(stream, |event| printer.event(event)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => fail(EXIT_FAILURE, &format!("{endpoint} closed the stream")),
        // `tcpstated trace | head`: the reader went, quietly.
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => fail(EXIT_FAILURE, &format!("reading {endpoint}: {error}")),
    }
}

fn fail(status: u8, message: &str) -> ExitCode {
    eprintln!("tcpstated trace: error: {message}");
    ExitCode::from(status)
}

struct Printer<W> {
    json: bool,
    out: W,
    /// Transitions still to print (`--limit`).
    remaining: Option<u64>,
    /// The stream's URL, for the notice that it started.
    source: String,
}

/// The table's columns: a title and a width each (the last one unpadded).
const COLUMNS: [(&str, usize); 9] = [
    ("TIME (UTC)", 16),
    ("COOKIE", 10),
    ("LOCAL", 22),
    ("REMOTE", 22),
    ("TRANSITION", 27),
    ("MS", 11),
    ("ROLE", 9),
    ("PORT", 6),
    ("WORKLOAD", 0),
];

/// A line of the table: the cells padded to their columns.
fn line(cells: [&str; 9]) -> String {
    let padded: Vec<String> = cells
        .iter()
        .zip(COLUMNS)
        .map(|(cell, (_, width))| format!("{cell:<width$}"))
        .collect();
    padded.join(" ")
}

fn header() -> String {
    line(COLUMNS.map(|(title, _)| title))
}

impl<W: io::Write> Printer<W> {
    /// Prints one event; false once `--limit` transitions are printed.
    fn event(&mut self, event: &Event) -> io::Result<bool> {
        let value: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        match event.name.as_str() {
            "ready" => {
                // On stderr: stdout may be a pipe of JSON lines.
                eprintln!("tcpstated trace: reading {} (Ctrl-C stops)", self.source);
                if !self.json {
                    writeln!(self.out, "{}", header())?;
                }
            }
            "transition" => {
                if self.json {
                    writeln!(self.out, "{}", event.data)?;
                } else {
                    writeln!(self.out, "{}", table_row(&value))?;
                }
                if let Some(remaining) = &mut self.remaining {
                    *remaining = remaining.saturating_sub(1);
                    return Ok(*remaining > 0);
                }
            }
            "dropped" => eprintln!(
                "tcpstated trace: {}",
                value["message"].as_str().unwrap_or(&event.data)
            ),
            _ => {}
        }
        Ok(true)
    }
}

/// A transition as a line of the table.
pub fn table_row(value: &Value) -> String {
    let text = |key: &str| value[key].as_str().unwrap_or("?").to_owned();
    let endpoint = |address: &str, port: &str| {
        let address = value[address].as_str().unwrap_or("?");
        let port = &value[port];
        if address.contains(':') {
            format!("[{address}]:{port}")
        } else {
            format!("{address}:{port}")
        }
    };
    let time = text("time");
    let time = time.get(11..26).unwrap_or(&time);
    let milliseconds = value["duration_ns"]
        .as_u64()
        .map_or_else(|| "-".to_owned(), |ns| format!("{:.3}", ns as f64 / 1e6));
    let transition = format!("{} -> {}", text("from"), text("to"));
    line([
        time,
        &value["cookie"].to_string(),
        &endpoint("local_address", "local_port"),
        &endpoint("remote_address", "remote_port"),
        &transition,
        &milliseconds,
        &text("role"),
        &text("port"),
        value["workload"]["name"].as_str().unwrap_or("-"),
    ])
}

#[cfg(test)]
mod tests;
