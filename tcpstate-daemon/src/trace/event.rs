//! A kernel [`TraceEvent`] decoded into a transition of the logical view, and its JSON line.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};
use tcpstate_common::{TRACE_NO_DURATION, TcpState, TraceEvent, TransitionKey, family};

use crate::{labels, model::logical_edge, workload::Workload};

/// One transition as subscribers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub time: SystemTime,
    pub cookie: u64,
    pub family: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub from: TcpState,
    pub to: TcpState,
    /// Time spent in `from`, when the socket was seen entering it.
    pub duration_ns: Option<u64>,
    pub role: u8,
    /// The `port` label ([`tcpstate_common::OTHER_PORT`] for `other`).
    pub port_label: u16,
    /// The owner's cgroup inode (0: not read).
    pub cgroup: u32,
    /// With `--workloads`.
    pub workload: Option<Workload>,
}

/// Turns the programs' CLOCK_MONOTONIC into wall-clock time: the two clocks' difference, read
/// once per batch of events.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock time at monotonic 0, in nanoseconds since the epoch.
    epoch_at_boot_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i128;
        Clock::from_readings(wall, crate::sys::monotonic_ns())
    }

    pub fn from_readings(wall_ns: i128, monotonic_ns: u64) -> Self {
        Clock {
            epoch_at_boot_ns: wall_ns - i128::from(monotonic_ns),
        }
    }

    pub fn wall(&self, monotonic_ns: u64) -> SystemTime {
        let since_epoch = (self.epoch_at_boot_ns + i128::from(monotonic_ns)).max(0);
        UNIX_EPOCH + Duration::from_nanos(u64::try_from(since_epoch).unwrap_or(u64::MAX))
    }
}

/// The transition of `event` in the logical view, or `None` where that view has none (an
/// orphan's FIN_WAIT2 handed to a timewait socket goes on; a state set again).
pub fn decode(event: &TraceEvent, clock: &Clock) -> Option<Transition> {
    let key = TransitionKey::new(
        event.labels,
        event.from,
        event.to,
        event.flags,
        event.recorder,
        event.detail,
    );
    let edge = logical_edge(&key)?;
    let family = event.labels.family;
    let address = |words: [u64; 2]| -> IpAddr {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&words[0].to_le_bytes());
        bytes[8..].copy_from_slice(&words[1].to_le_bytes());
        match family {
            family::IPV6 => Ipv6Addr::from(bytes).into(),
            _ => Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into(),
        }
    };
    Some(Transition {
        time: clock.wall(event.time_ns),
        cookie: event.cookie,
        family,
        local: SocketAddr::new(address(event.local_address), event.local_port),
        remote: SocketAddr::new(address(event.remote_address), event.remote_port),
        from: TcpState::try_from(edge.from).ok()?,
        to: TcpState::try_from(edge.to).ok()?,
        duration_ns: (event.duration_ns != TRACE_NO_DURATION).then_some(event.duration_ns),
        role: event.labels.role,
        port_label: event.labels.port,
        cgroup: event.labels.cgroup,
        workload: None,
    })
}

/// A workload as one name: `namespace/pod/container`, its empty parts left out (`host`,
/// `nginx.service`, `default/web-0/nginx`).
pub fn workload_name(workload: &Workload) -> String {
    [&workload.namespace, &workload.pod, &workload.container]
        .into_iter()
        .filter(|part| !part.is_empty())
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("/")
}

impl Transition {
    /// The JSON object of the stream (`/events`, `tcpstated trace --json`).
    pub fn to_json(&self) -> Value {
        let since_epoch = self.time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut object = json!({
            "time": rfc3339(since_epoch),
            "time_unix_ns": since_epoch.as_nanos() as u64,
            "cookie": self.cookie,
            "family": labels::family(self.family),
            "local_address": self.local.ip().to_string(),
            "local_port": self.local.port(),
            "remote_address": self.remote.ip().to_string(),
            "remote_port": self.remote.port(),
            "from": self.from.name(),
            "to": self.to.name(),
            "duration_ns": self.duration_ns,
            "role": labels::role(self.role),
            "port": labels::port(self.port_label),
            "cgroup": self.cgroup,
        });
        if let Some(workload) = &self.workload {
            object["workload"] = json!({
                "name": workload_name(workload),
                "namespace": workload.namespace,
                "pod": workload.pod,
                "container": workload.container,
            });
        }
        object
    }
}

/// `since_epoch` as RFC 3339 in UTC with nanoseconds (`2026-12-06T06:54:41.123456789Z`).
pub fn rfc3339(since_epoch: Duration) -> String {
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_date(seconds / 86_400);
    let of_day = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since_epoch.subsec_nanos()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days after the epoch).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let days = days + 719_468;
    let era = days / 146_097;
    let of_era = days % 146_097;
    let year_of_era = (of_era - of_era / 1460 + of_era / 36_524 - of_era / 146_096) / 365;
    let of_year = of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * of_year + 2) / 153;
    let day = of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use tcpstate_common::{
        Labels, recorder, role,
        state::{CLOSE, FIN_WAIT1, FIN_WAIT2, TIME_WAIT},
        transition_detail, transition_flag,
    };

    use super::*;

    fn event(from: u8, to: u8, detail: u8) -> TraceEvent {
        TraceEvent {
            time_ns: 5_000_000_000,
            cookie: 42,
            duration_ns: 1_500,
            labels: Labels {
                port: 26201,
                family: family::IPV4,
                role: role::CLIENT,
                cgroup: 7,
            },
            local_address: [u64::from(u32::from_le_bytes([127, 0, 0, 1])), 0],
            remote_address: [u64::from(u32::from_le_bytes([10, 1, 2, 3])), 0],
            local_port: 50000,
            remote_port: 26201,
            from,
            to,
            flags: transition_flag::FROM_TRACKED | transition_flag::DURATION_OBSERVED,
            detail,
            recorder: recorder::PRIMARY,
            _padding: [0; 7],
        }
    }

    #[test]
    fn close_events_become_the_logical_views_transitions() {
        let clock = Clock::from_readings(1_000_000_000_000_000_000, 1_000_000_000);
        let handed = event(FIN_WAIT2, CLOSE, transition_detail::TIME_WAIT_HANDOFF);
        let transition = decode(&handed, &clock).unwrap();
        assert_eq!(
            (transition.from, transition.to),
            (TcpState::FinWait2, TcpState::TimeWait)
        );
        assert_eq!(transition.local, "127.0.0.1:50000".parse().unwrap());
        assert_eq!(transition.remote, "10.1.2.3:26201".parse().unwrap());
        assert_eq!(transition.duration_ns, Some(1_500));
        // Monotonic 5 s is 4 s after the clock's reading.
        let wall = transition.time.duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(wall.as_nanos(), 1_000_000_004_000_000_000);
        let orphan = event(FIN_WAIT1, CLOSE, transition_detail::FIN_WAIT2_HANDOFF);
        let orphan = decode(&orphan, &clock).unwrap();
        assert_eq!(orphan.to, TcpState::FinWait2);
        let goes_on = event(FIN_WAIT2, CLOSE, transition_detail::FIN_WAIT2_HANDOFF);
        assert_eq!(decode(&goes_on, &clock), None);
        let again = event(FIN_WAIT1, FIN_WAIT1, transition_detail::NONE);
        assert_eq!(decode(&again, &clock), None);
        assert_eq!(TIME_WAIT, TcpState::TimeWait as u8);
    }

    #[test]
    fn ipv6_addresses_and_unknown_durations_decode() {
        let mut v6 = event(1, 4, transition_detail::NONE);
        v6.labels.family = family::IPV6;
        let address: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let octets = address.octets();
        let word = |at: usize| u64::from_le_bytes(octets[at..at + 8].try_into().unwrap());
        v6.local_address = [word(0), word(8)];
        v6.duration_ns = TRACE_NO_DURATION;
        let transition = decode(&v6, &Clock::from_readings(0, 0)).unwrap();
        assert_eq!(transition.local.ip(), IpAddr::from(address));
        assert_eq!(transition.duration_ns, None);
        let json = transition.to_json();
        assert_eq!(json["duration_ns"], Value::Null);
        assert_eq!(json["local_address"], "2001:db8::1");
        assert_eq!(json["from"], "ESTABLISHED");
        assert_eq!(json["port"], "26201");
        assert!(json.get("workload").is_none());
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(Duration::ZERO), "1970-01-01T00:00:00.000000000Z");
        let leap_day = Duration::new(951_782_400 + 3_723, 5);
        assert_eq!(rfc3339(leap_day), "2000-02-29T01:02:03.000000005Z");
        assert_eq!(
            rfc3339(Duration::from_secs(1_796_601_599)),
            "2026-12-06T23:59:59.000000000Z"
        );
    }

    #[test]
    fn workload_names_leave_out_empty_parts() {
        assert_eq!(workload_name(&Workload::host()), "host");
        let pod = Workload {
            namespace: "default".into(),
            pod: "web-0".into(),
            container: "nginx".into(),
        };
        assert_eq!(workload_name(&pod), "default/web-0/nginx");
    }
}
