//! Netlink sock_diag (INET_DIAG), the interface `ss` uses: lists the TCP sockets of a network
//! namespace (the one the calling thread was in when it opened the socket), including the timewait sockets (TIME_WAIT, and FIN_WAIT2 of orphaned
//! connections) and request sockets (the half-open queue) that `inet_sock_set_state` never
//! reports. Requests are built and answers parsed here; `sys::SockDiagSocket` moves the bytes.
//! Format: include/uapi/linux/inet_diag.h, include/uapi/linux/sock_diag.h.
//!
//! A dump walks every socket of the kernel's TCP hash tables, whatever it asks for (about
//! 0.15 µs each here), and a `SOCK_DIAG_BY_FAMILY` request names one family, so listing both
//! takes two walks. The older `TCPDIAG_GETSOCK` request dumps both families in one walk (the
//! kernel runs it with `AF_UNSPEC`; `ss -t` uses it the same way) and takes the same attributes,
//! so every dump here is one such request.

use std::{
    io,
    mem::offset_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::RawFd,
};

use tcpstate_common::{
    Labels, SocketRecord, TransitionKey,
    state::{NEW_SYN_RECV, SYN_RECV},
};

use crate::sys::{monotonic_ns, netlink::SockDiagSocket};

/// The request type that dumps TCP sockets of both families (`inet_diag_rcv_msg_compat`).
const TCPDIAG_GETSOCK: u16 = 18;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HEADER_LEN: usize = 16;
/// `struct inet_diag_req`.
const REQUEST_LEN: usize = 60;
/// `struct inet_diag_msg`.
const MESSAGE_LEN: usize = 72;
const INET_DIAG_REQ_SK_BPF_STORAGES: u16 = 2;
const SK_DIAG_BPF_STORAGE_REQ_MAP_FD: u16 = 1;
const INET_DIAG_SK_BPF_STORAGES: u16 = 20;
/// In `INET_DIAG_SK_BPF_STORAGES`: one map's storage (nested), and in it the map's value.
const SK_DIAG_BPF_STORAGE: u16 = 1;
const SK_DIAG_BPF_STORAGE_MAP_VALUE: u16 = 3;
/// u8: the socket's shutdown flags, which the kernel puts in every full socket's message (not
/// in a timewait or request socket's).
const INET_DIAG_SHUTDOWN: u16 = 8;
/// u64: the socket's cgroup v2 id (full sockets only).
const INET_DIAG_CGROUP_ID: u16 = 21;
/// `idiag_timer` of a timewait socket.
const TIMER_TIMEWAIT: u8 = 3;

/// Bit masks of `idiag_states`: `1 << state`.
pub fn state_mask(states: &[u8]) -> u32 {
    states.iter().fold(0, |mask, state| mask | 1 << state)
}

/// One socket as sock_diag reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiagSocket {
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// Kernel state number; for timewait sockets their substate (TIME_WAIT or FIN_WAIT2); for
    /// request sockets NEW_SYN_RECV (sock_diag says SYN_RECV, as `ss` shows them, and lists
    /// them when either state is asked for).
    pub state: u8,
    pub timewait: bool,
    pub local_port: u16,
    pub remote_port: u16,
    pub cookie: u64,
    /// Time left on the socket's timer, in milliseconds (for a timewait socket: until it ends;
    /// for a request socket: until its SYN-ACK timer fires).
    pub expires_ms: u32,
    /// `idiag_retrans`: for a request socket, the SYN-ACKs it retransmitted
    /// (`request_sock::num_retrans`).
    pub retransmits: u8,
    /// For listeners: the accept queue now. Otherwise the receive queue.
    pub receive_queue: u32,
    /// For listeners: the accept queue's limit (backlog). Otherwise the send queue.
    pub send_queue: u32,
    /// Whether the kernel program has a record for the socket: its entry in the BPF
    /// socket-storage map the dump asked about; the caller adds the records in slots.
    pub tracked: bool,
    /// That socket-storage record's entry time and labels (see `SocketRecord`).
    pub stored: Option<(u64, Labels)>,
    /// The owner's cgroup v2: the low 32 bits of its id, the inode of its directory (what the
    /// kernel programs keep in `Labels::cgroup`). 0 for timewait and request sockets, which
    /// have none.
    pub cgroup: u32,
    /// When it was read (CLOCK_MONOTONIC ns): `expires_ms` counts from then.
    pub seen_ns: u64,
}

/// Builds a dump request for TCP sockets of both families in `states`, optionally asking whether
/// each socket has storage in the socket-storage map `storage_map`.
pub fn dump_request(states: u32, storage_map: Option<RawFd>, sequence: u32) -> Vec<u8> {
    let mut attributes = Vec::new();
    if let Some(fd) = storage_map {
        // Nested: INET_DIAG_REQ_SK_BPF_STORAGES { SK_DIAG_BPF_STORAGE_REQ_MAP_FD: u32 fd }.
        attributes.extend(12u16.to_ne_bytes());
        attributes.extend(INET_DIAG_REQ_SK_BPF_STORAGES.to_ne_bytes());
        attributes.extend(8u16.to_ne_bytes());
        attributes.extend(SK_DIAG_BPF_STORAGE_REQ_MAP_FD.to_ne_bytes());
        attributes.extend((fd as u32).to_ne_bytes());
    }
    let length = NLMSG_HEADER_LEN + REQUEST_LEN + attributes.len();
    let mut message = Vec::with_capacity(length);
    message.extend((length as u32).to_ne_bytes());
    message.extend(TCPDIAG_GETSOCK.to_ne_bytes());
    message.extend((NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    message.extend(sequence.to_ne_bytes());
    message.extend(0u32.to_ne_bytes()); // pid: the kernel fills it in
    // family (the kernel dumps both whatever it says), source and destination prefix lengths,
    // extensions.
    message.extend([0u8; 4]);
    message.extend([0u8; 48]); // inet_diag_sockid: no filter
    message.extend(states.to_ne_bytes());
    message.extend(0u32.to_ne_bytes()); // idiag_dbs: unused
    message.extend(attributes);
    message
}

/// Where a socket is, and which file holds it, as sock_diag reports it (the sockets view asks
/// for these of a few sockets; polls never keep addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub cookie: u64,
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The inode of the socket's file (0 for timewait and request sockets, which have none):
    /// what `/proc/PID/fd/*` links name as `socket:[inode]`.
    pub inode: u32,
}

/// What one received datagram held.
#[derive(Debug, PartialEq, Eq)]
pub struct Batch<T = DiagSocket> {
    pub sockets: Vec<T>,
    pub done: bool,
}

impl<T> Default for Batch<T> {
    fn default() -> Self {
        Batch {
            sockets: Vec::new(),
            done: false,
        }
    }
}

/// Parses one datagram of dump answers. Malformed input is an error, never a panic.
pub fn parse_batch(data: &[u8]) -> io::Result<Batch> {
    parse_messages(data, parse_socket)
}

/// [`parse_batch`], each socket message read by `parse`.
fn parse_messages<T>(mut data: &[u8], parse: fn(&[u8]) -> Option<T>) -> io::Result<Batch<T>> {
    let malformed =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {what}"));
    let mut batch = Batch::default();
    while data.len() >= NLMSG_HEADER_LEN {
        let length = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(data[4..6].try_into().unwrap());
        if length < NLMSG_HEADER_LEN || length > data.len() {
            return Err(malformed("message length out of bounds"));
        }
        let payload = &data[NLMSG_HEADER_LEN..length];
        match kind {
            NLMSG_DONE => {
                batch.done = true;
                return Ok(batch);
            }
            NLMSG_ERROR => {
                let errno = payload
                    .get(0..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                    .ok_or_else(|| malformed("short error message"))?;
                return Err(io::Error::from_raw_os_error(-errno));
            }
            TCPDIAG_GETSOCK => batch
                .sockets
                .push(parse(payload).ok_or_else(|| malformed("short socket message"))?),
            _ => {}
        }
        data = &data[align(length).min(data.len())..];
    }
    Ok(batch)
}

fn align(length: usize) -> usize {
    (length + 3) & !3
}

fn parse_socket(payload: &[u8]) -> Option<DiagSocket> {
    let message = payload.get(..MESSAGE_LEN)?;
    let u32_at = |at: usize| u32::from_ne_bytes(message[at..at + 4].try_into().unwrap());
    // inet_diag_sockid starts at 4: sport, dport (network order), src[16], dst[16], if, cookie[2].
    let cookie = u64::from(u32_at(44)) | u64::from(u32_at(48)) << 32;
    let (mut tracked, mut cgroup, mut full) = (false, 0, false);
    let mut stored = None;
    let mut attributes = &payload[MESSAGE_LEN..];
    while attributes.len() >= 4 {
        let length = u16::from_ne_bytes([attributes[0], attributes[1]]) as usize;
        let kind = u16::from_ne_bytes([attributes[2], attributes[3]]) & 0x3fff;
        if length < 4 || length > attributes.len() {
            break;
        }
        if kind == INET_DIAG_SK_BPF_STORAGES {
            tracked = true;
            stored = stored_record(&attributes[4..length]);
        }
        full |= kind == INET_DIAG_SHUTDOWN;
        if kind == INET_DIAG_CGROUP_ID
            && let Some(id) = attributes.get(4..12)
        {
            // The low 32 bits: the inode of the group's directory.
            cgroup = u64::from_ne_bytes(id.try_into().unwrap()) as u32;
        }
        attributes = &attributes[align(length).min(attributes.len())..];
    }
    let timewait = message[2] == TIMER_TIMEWAIT;
    let state = match message[1] {
        SYN_RECV if !timewait && !full => NEW_SYN_RECV,
        state => state,
    };
    Some(DiagSocket {
        family: message[0],
        state,
        timewait,
        local_port: u16::from_be_bytes([message[4], message[5]]),
        remote_port: u16::from_be_bytes([message[6], message[7]]),
        cookie,
        expires_ms: u32_at(52),
        retransmits: message[3],
        receive_queue: u32_at(56),
        send_queue: u32_at(60),
        tracked,
        stored,
        cgroup,
        seen_ns: 0,
    })
}

/// The entry time and labels of the `SocketRecord` in an `INET_DIAG_SK_BPF_STORAGES`
/// attribute's payload (nested attributes: one `SK_DIAG_BPF_STORAGE` per map, holding the
/// map's id and value).
fn stored_record(storages: &[u8]) -> Option<(u64, Labels)> {
    let storage = nested(storages)
        .find(|(kind, _)| *kind == SK_DIAG_BPF_STORAGE)?
        .1;
    let value = nested(storage)
        .find(|(kind, _)| *kind == SK_DIAG_BPF_STORAGE_MAP_VALUE)?
        .1;
    let word = |at: usize| Some(u64::from_ne_bytes(value.get(at..at + 8)?.try_into().ok()?));
    let entered_ns = word(offset_of!(SocketRecord, entered_ns))?;
    let labels = word(offset_of!(SocketRecord, labels))?;
    Some((entered_ns, TransitionKey::from_words([labels, 0]).labels))
}

/// The netlink attributes in `payload`: `(kind, payload)` each, while whole.
fn nested(mut payload: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let length = u16::from_ne_bytes(payload.get(0..2)?.try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(payload.get(2..4)?.try_into().unwrap()) & 0x3fff;
        let attribute = payload.get(4..length)?;
        payload = &payload[align(length).min(payload.len())..];
        Some((kind, attribute))
    })
}

fn parse_located(payload: &[u8]) -> Option<(DiagSocket, Endpoint)> {
    Some((parse_socket(payload)?, parse_endpoint(payload)?))
}

fn parse_endpoint(payload: &[u8]) -> Option<Endpoint> {
    let message = payload.get(..MESSAGE_LEN)?;
    let u32_at = |at: usize| u32::from_ne_bytes(message[at..at + 4].try_into().unwrap());
    // inet_diag_sockid at 4: sport, dport (network order), src[16], dst[16], if, cookie[2];
    // then expires, rqueue, wqueue, uid, inode.
    let address = |at: usize| -> IpAddr {
        let bytes: [u8; 16] = message[at..at + 16].try_into().unwrap();
        if message[0] == libc::AF_INET as u8 {
            IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
    };
    let port = |at: usize| u16::from_be_bytes([message[at], message[at + 1]]);
    Some(Endpoint {
        cookie: u64::from(u32_at(44)) | u64::from(u32_at(48)) << 32,
        state: message[1],
        local: SocketAddr::new(address(8), port(4)),
        remote: SocketAddr::new(address(24), port(6)),
        inode: u32_at(68),
    })
}

/// A sock_diag socket, answering for the network namespace the calling thread was in when it
/// opened it, and the buffer its answers are read into. Closed on drop (it holds a reference
/// to its namespace).
pub struct Session {
    socket: SockDiagSocket,
    buffer: Vec<u8>,
    sequence: u32,
}

impl Session {
    pub fn open() -> io::Result<Self> {
        Ok(Session {
            socket: SockDiagSocket::open()?,
            buffer: vec![0u8; 64 * 1024],
            sequence: 0,
        })
    }

    /// The cookie of the namespace this session answers for (0: unknown, before Linux 5.14).
    pub fn namespace_cookie(&self) -> u64 {
        self.socket.namespace_cookie()
    }

    /// Dumps the TCP sockets of both families in `states` (see [`state_mask`]).
    pub fn dump(&mut self, states: u32, storage_map: Option<RawFd>) -> io::Result<Vec<DiagSocket>> {
        let mut sockets = Vec::new();
        self.for_each(states, storage_map, |socket| sockets.push(socket))?;
        Ok(sockets)
    }

    /// Hands each TCP socket of both families in `states` to `visit` as it is read, keeping
    /// none: memory stays flat whatever the number of sockets.
    pub fn for_each(
        &mut self,
        states: u32,
        storage_map: Option<RawFd>,
        mut visit: impl FnMut(DiagSocket),
    ) -> io::Result<()> {
        self.for_each_parsed(states, storage_map, parse_socket, |socket, seen_ns| {
            visit(DiagSocket { seen_ns, ..socket })
        })
    }

    /// Hands `visit` each TCP socket of both families in `states` with its endpoint.
    pub fn for_each_located(
        &mut self,
        states: u32,
        storage_map: Option<RawFd>,
        mut visit: impl FnMut(DiagSocket, Endpoint),
    ) -> io::Result<()> {
        self.for_each_parsed(
            states,
            storage_map,
            parse_located,
            |(socket, endpoint), seen_ns| visit(DiagSocket { seen_ns, ..socket }, endpoint),
        )
    }

    fn for_each_parsed<T>(
        &mut self,
        states: u32,
        storage_map: Option<RawFd>,
        parse: fn(&[u8]) -> Option<T>,
        mut visit: impl FnMut(T, u64),
    ) -> io::Result<()> {
        self.sequence = self.sequence.wrapping_add(1);
        self.socket
            .send(&dump_request(states, storage_map, self.sequence))?;
        loop {
            // The kernel fills each datagram during the receive call: that is when these
            // sockets' timers were read.
            let before = monotonic_ns();
            let length = self.socket.receive(&mut self.buffer)?;
            let seen_ns = before + (monotonic_ns() - before) / 2;
            let batch = parse_messages(&self.buffer[..length], parse)?;
            batch
                .sockets
                .into_iter()
                .for_each(|socket| visit(socket, seen_ns));
            if batch.done || length == 0 {
                return Ok(());
            }
        }
    }
}

/// Dumps the TCP sockets of both families in `states` of the calling thread's namespace.
pub fn dump(states: u32, storage_map: Option<RawFd>) -> io::Result<Vec<DiagSocket>> {
    Session::open()?.dump(states, storage_map)
}

/// [`Session::for_each`] on a session of its own.
pub fn for_each(
    states: u32,
    storage_map: Option<RawFd>,
    visit: impl FnMut(DiagSocket),
) -> io::Result<()> {
    Session::open()?.for_each(states, storage_map, visit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket_message(
        state: u8,
        timer: u8,
        local: u16,
        remote: u16,
        cookie: u64,
        storage: bool,
    ) -> Vec<u8> {
        let mut payload = vec![0u8; MESSAGE_LEN];
        payload[0] = 10;
        payload[1] = state;
        payload[2] = timer;
        payload[4..6].copy_from_slice(&local.to_be_bytes());
        payload[6..8].copy_from_slice(&remote.to_be_bytes());
        payload[44..48].copy_from_slice(&(cookie as u32).to_ne_bytes());
        payload[48..52].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        payload[52..56].copy_from_slice(&59_000u32.to_ne_bytes());
        payload[56..60].copy_from_slice(&3u32.to_ne_bytes());
        payload[60..64].copy_from_slice(&128u32.to_ne_bytes());
        if storage {
            payload.extend(8u16.to_ne_bytes());
            payload.extend((INET_DIAG_SK_BPF_STORAGES | 0x8000).to_ne_bytes());
            payload.extend([0u8; 4]);
        }
        if !timer_is_timewait(timer) {
            // Every full socket's message: its shutdown flags (padded to 4 bytes), its cgroup.
            payload.extend(5u16.to_ne_bytes());
            payload.extend(INET_DIAG_SHUTDOWN.to_ne_bytes());
            payload.extend([0u8; 4]);
            payload.extend(12u16.to_ne_bytes());
            payload.extend(INET_DIAG_CGROUP_ID.to_ne_bytes());
            payload.extend(0x0000_0001_0000_02c8u64.to_ne_bytes());
        }
        let mut message = Vec::new();
        message.extend(((NLMSG_HEADER_LEN + payload.len()) as u32).to_ne_bytes());
        message.extend(TCPDIAG_GETSOCK.to_ne_bytes());
        message.extend([0u8; 10]);
        message.extend(payload);
        message
    }

    fn timer_is_timewait(timer: u8) -> bool {
        timer == TIMER_TIMEWAIT
    }

    #[test]
    fn request_sockets_read_as_new_syn_recv_with_their_retransmits() {
        // A request socket's message: SYN_RECV, its SYN-ACK timer, no attributes.
        let mut request = socket_message(SYN_RECV, 1, 443, 50_000, 9, false);
        request.truncate(NLMSG_HEADER_LEN + MESSAGE_LEN);
        request[0..4].copy_from_slice(&((NLMSG_HEADER_LEN + MESSAGE_LEN) as u32).to_ne_bytes());
        request[NLMSG_HEADER_LEN + 3] = 2;
        let full = socket_message(SYN_RECV, 1, 443, 50_001, 10, false);
        let mut data = request;
        data.extend(full);
        let batch = parse_batch(&data).unwrap();
        let [request, full] = [batch.sockets[0], batch.sockets[1]];
        assert_eq!(
            (request.state, request.retransmits, request.expires_ms),
            (NEW_SYN_RECV, 2, 59_000)
        );
        assert_eq!(full.state, SYN_RECV, "a full socket in SYN_RECV stays one");
    }

    #[test]
    fn endpoints_carry_both_addresses_and_the_sockets_inode() {
        let mut message = socket_message(8, 0, 8080, 50_000, 7, false);
        let payload = NLMSG_HEADER_LEN;
        message[payload + 8..payload + 24]
            .copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        message[payload + 24..payload + 40].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        message[payload + 68..payload + 72].copy_from_slice(&4242u32.to_ne_bytes());
        let batch = parse_messages(&message, parse_endpoint).unwrap();
        assert_eq!(
            batch.sockets,
            [Endpoint {
                cookie: 7,
                state: 8,
                local: "[2001:db8::1]:8080".parse().unwrap(),
                remote: "[::1]:50000".parse().unwrap(),
                inode: 4242,
            }]
        );
        let mut ipv4 = message.clone();
        ipv4[payload] = libc::AF_INET as u8;
        ipv4[payload + 8..payload + 12].copy_from_slice(&[10, 0, 0, 1]);
        let endpoint = parse_messages(&ipv4, parse_endpoint).unwrap().sockets[0];
        assert_eq!(endpoint.local, "10.0.0.1:8080".parse().unwrap());
        // A truncated message is an error, not a panic.
        assert!(parse_messages(&message[..message.len() - 10], parse_endpoint).is_err());
    }

    fn done() -> Vec<u8> {
        let mut message = Vec::new();
        message.extend(20u32.to_ne_bytes());
        message.extend(NLMSG_DONE.to_ne_bytes());
        message.extend([0u8; 14]);
        message
    }

    #[test]
    fn parses_sockets_then_done() {
        let mut data = socket_message(6, TIMER_TIMEWAIT, 443, 51000, 0x1_0000_0002, false);
        data.extend(socket_message(10, 0, 443, 0, 7, true));
        data.extend(done());
        let batch = parse_batch(&data).unwrap();
        assert!(batch.done);
        assert_eq!(batch.sockets.len(), 2);
        let tw = batch.sockets[0];
        assert_eq!((tw.family, tw.state, tw.timewait), (10, 6, true));
        assert_eq!(
            (tw.local_port, tw.remote_port, tw.cookie),
            (443, 51000, 0x1_0000_0002)
        );
        assert_eq!(
            (tw.expires_ms, tw.receive_queue, tw.send_queue, tw.tracked),
            (59_000, 3, 128, false)
        );
        assert!(batch.sockets[1].tracked && !batch.sockets[1].timewait);
        // The cgroup id's low 32 bits; a timewait socket has none.
        assert_eq!((tw.cgroup, batch.sockets[1].cgroup), (0, 0x2c8));
    }

    const SK_DIAG_BPF_STORAGE_MAP_ID: u16 = 2;

    #[test]
    fn a_socket_storage_record_gives_its_entry_time_and_labels() {
        let attribute = |kind: u16, payload: &[u8]| {
            let mut bytes = Vec::new();
            bytes.extend(((4 + payload.len()) as u16).to_ne_bytes());
            bytes.extend(kind.to_ne_bytes());
            bytes.extend(payload);
            bytes.resize(align(bytes.len()), 0);
            bytes
        };
        // The record as the kernel lays it out: entered_ns, labels (port, family, role,
        // cgroup), cookie, state, home, padding, net_inode.
        let mut record = Vec::new();
        record.extend(123_456_789u64.to_le_bytes());
        record.extend(8080u16.to_le_bytes());
        record.extend([10, 2]);
        record.extend(0x2c8u32.to_le_bytes());
        record.extend(7u64.to_le_bytes());
        record.extend([8, 1, 0, 0]);
        record.extend(4026531840u32.to_le_bytes());
        let mut storage = attribute(SK_DIAG_BPF_STORAGE_MAP_ID, &5u32.to_ne_bytes());
        storage.extend(attribute(SK_DIAG_BPF_STORAGE_MAP_VALUE, &record));
        let storages = attribute(SK_DIAG_BPF_STORAGE | 0x8000, &storage);
        let mut message = socket_message(8, 0, 8080, 50_000, 7, false);
        let length = message.len() + 4 + storages.len();
        message.extend(((4 + storages.len()) as u16).to_ne_bytes());
        message.extend((INET_DIAG_SK_BPF_STORAGES | 0x8000).to_ne_bytes());
        message.extend(&storages);
        message[0..4].copy_from_slice(&(length as u32).to_ne_bytes());
        let socket = parse_batch(&message).unwrap().sockets[0];
        let labels = Labels {
            port: 8080,
            family: 10,
            role: 2,
            cgroup: 0x2c8,
        };
        assert!(socket.tracked);
        assert_eq!(socket.stored, Some((123_456_789, labels)));
        // A value too short for a record: tracked, with no record read.
        let mut short = storage.clone();
        short.truncate(storage.len() - 16);
        assert_eq!(stored_record(&attribute(SK_DIAG_BPF_STORAGE, &short)), None);
    }

    #[test]
    fn errors_and_garbage_are_errors_not_panics() {
        let mut error = Vec::new();
        error.extend(20u32.to_ne_bytes());
        error.extend(NLMSG_ERROR.to_ne_bytes());
        error.extend([0u8; 10]);
        error.extend((-libc::EPERM).to_ne_bytes());
        assert_eq!(
            parse_batch(&error).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        let mut truncated = socket_message(1, 0, 1, 2, 3, false);
        truncated.truncate(40);
        assert!(parse_batch(&truncated).is_err());
        let mut short = socket_message(1, 0, 1, 2, 3, false);
        short[0..4].copy_from_slice(&20u32.to_ne_bytes());
        assert!(parse_batch(&short).is_err());
        assert_eq!(parse_batch(&[1, 2, 3]).unwrap(), Batch::default());
    }

    #[test]
    fn requests_carry_states_and_the_storage_map() {
        let plain = dump_request(state_mask(&[6, 10]), None, 9);
        assert_eq!(plain.len(), NLMSG_HEADER_LEN + REQUEST_LEN);
        assert_eq!(
            u32::from_ne_bytes(plain[0..4].try_into().unwrap()) as usize,
            plain.len()
        );
        assert_eq!(
            u16::from_ne_bytes(plain[4..6].try_into().unwrap()),
            TCPDIAG_GETSOCK
        );
        assert_eq!(plain[16], 0, "both families");
        assert_eq!(
            u32::from_ne_bytes(plain[68..72].try_into().unwrap()),
            1 << 6 | 1 << 10
        );
        let with_map = dump_request(0, Some(42), 1);
        assert_eq!(with_map.len(), plain.len() + 12);
        assert_eq!(
            u32::from_ne_bytes(with_map[with_map.len() - 4..].try_into().unwrap()),
            42
        );
    }
}
