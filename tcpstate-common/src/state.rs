//! TCP states as the kernel numbers them (`include/net/tcp_states.h`). They cross the boundary as
//! the kernel's `u8`; user space converts with `TryFrom` and names them.

// The numbers, as they cross the boundary (`u8`): match on these; name them with `TcpState`.
pub const ESTABLISHED: u8 = 1;
pub const SYN_SENT: u8 = 2;
pub const SYN_RECV: u8 = 3;
pub const FIN_WAIT1: u8 = 4;
pub const FIN_WAIT2: u8 = 5;
pub const TIME_WAIT: u8 = 6;
pub const CLOSE: u8 = 7;
pub const CLOSE_WAIT: u8 = 8;
pub const LAST_ACK: u8 = 9;
pub const LISTEN: u8 = 10;
pub const CLOSING: u8 = 11;
pub const NEW_SYN_RECV: u8 = 12;

/// Number of states, including the unused 0; state numbers are 1..=12.
pub const STATE_COUNT: usize = 13;

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    Established = ESTABLISHED,
    SynSent = SYN_SENT,
    SynRecv = SYN_RECV,
    FinWait1 = FIN_WAIT1,
    FinWait2 = FIN_WAIT2,
    TimeWait = TIME_WAIT,
    Close = CLOSE,
    CloseWait = CLOSE_WAIT,
    LastAck = LAST_ACK,
    Listen = LISTEN,
    Closing = CLOSING,
    NewSynRecv = NEW_SYN_RECV,
}

impl TcpState {
    pub const ALL: [TcpState; 12] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
    ];

    /// The states of a full socket (`struct sock`) that is connecting, connected or listening:
    /// all but TIME_WAIT and NEW_SYN_RECV (held by timewait and request sockets) and CLOSE (a
    /// socket not connected, or no longer).
    pub const FULL_SOCKET_STATES: [TcpState; 9] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
    ];

    /// The label value, as `ss` and the kernel spell it.
    pub const fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
        }
    }

    pub const fn is_valid(state: u8) -> bool {
        state >= ESTABLISHED && state <= NEW_SYN_RECV
    }
}

/// The number is not a TCP state of this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownState(pub u8);

impl TryFrom<u8> for TcpState {
    type Error = UnknownState;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        TcpState::ALL
            .iter()
            .copied()
            .find(|state| *state as u8 == value)
            .ok_or(UnknownState(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_match_the_kernel() {
        for state in TcpState::ALL {
            assert_eq!(TcpState::try_from(state as u8), Ok(state));
            assert!(TcpState::is_valid(state as u8));
        }
        assert_eq!(TcpState::Established as u8, 1);
        assert_eq!(TcpState::Close as u8, 7);
        assert_eq!(TcpState::NewSynRecv as u8, 12);
        assert_eq!(TcpState::try_from(0), Err(UnknownState(0)));
        assert_eq!(TcpState::try_from(13), Err(UnknownState(13)));
        assert!(!TcpState::is_valid(0) && !TcpState::is_valid(13));
    }

    #[test]
    fn names_are_the_metric_contract() {
        let names: [&str; 12] = TcpState::ALL.map(TcpState::name);
        assert_eq!(
            names,
            [
                "ESTABLISHED",
                "SYN_SENT",
                "SYN_RECV",
                "FIN_WAIT1",
                "FIN_WAIT2",
                "TIME_WAIT",
                "CLOSE",
                "CLOSE_WAIT",
                "LAST_ACK",
                "LISTEN",
                "CLOSING",
                "NEW_SYN_RECV"
            ]
        );
    }
}
