//! Sockets as `ss -tan` lists them: what the tests compare tcpstate's gauges with.

/// One line of `ss -tanH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsSocket {
    /// ss's name: `ESTAB`, `SYN-SENT`, `SYN-RECV`, `FIN-WAIT-1`, `TIME-WAIT`, `LISTEN`, ...
    pub state: String,
    /// For a listener: the accept queue now; else unread bytes.
    pub recv_q: u64,
    /// For a listener: the backlog limit; else unacknowledged bytes.
    pub send_q: u64,
    pub local_port: u16,
    pub peer_port: u16,
}

impl SsSocket {
    pub fn parse(line: &str) -> Option<SsSocket> {
        let mut fields = line.split_whitespace();
        let port = |address: &str| address.rsplit_once(':')?.1.parse().ok();
        Some(SsSocket {
            state: fields.next()?.to_owned(),
            recv_q: fields.next()?.parse().ok()?,
            send_q: fields.next()?.parse().ok()?,
            local_port: port(fields.next()?)?,
            peer_port: fields.next().and_then(port).unwrap_or(0),
        })
    }

    /// The state as tcpstate names it (`SYN-RECV` is NEW_SYN_RECV or SYN_RECV there).
    pub fn tcpstate_state(&self) -> &str {
        match self.state.as_str() {
            "ESTAB" => "ESTABLISHED",
            "SYN-SENT" => "SYN_SENT",
            "SYN-RECV" => "SYN_RECV",
            "FIN-WAIT-1" => "FIN_WAIT1",
            "FIN-WAIT-2" => "FIN_WAIT2",
            "TIME-WAIT" => "TIME_WAIT",
            "CLOSE-WAIT" => "CLOSE_WAIT",
            "LAST-ACK" => "LAST_ACK",
            "UNCONN" => "CLOSE",
            other => other,
        }
    }

    pub fn has_port(&self, port: u16) -> bool {
        self.local_port == port || self.peer_port == port
    }
}
