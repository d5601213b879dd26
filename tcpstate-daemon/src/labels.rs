//! Decoders from the kernel's numbers to label values (the metric contract's spellings).

use tcpstate_common::{Labels, OTHER_PORT, TcpState, family, role};

pub fn state(number: u8) -> Option<&'static str> {
    TcpState::try_from(number).ok().map(TcpState::name)
}

pub fn family(number: u8) -> &'static str {
    match number {
        family::IPV4 => "ipv4",
        family::IPV6 => "ipv6",
        _ => "unknown",
    }
}

pub fn role(number: u8) -> &'static str {
    match number {
        role::CLIENT => "client",
        role::SERVER => "server",
        role::LISTENER => "listener",
        _ => "unknown",
    }
}

pub fn port(number: u16) -> String {
    match number {
        OTHER_PORT => "other".to_owned(),
        port => port.to_string(),
    }
}

/// The `family`, `role` and `port` label pairs of a socket, in exposition order.
pub fn socket_labels(labels: &Labels) -> [(&'static str, String); 3] {
    [
        ("family", family(labels.family).to_owned()),
        ("role", role(labels.role).to_owned()),
        ("port", port(labels.port)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_value_of_the_contract() {
        assert_eq!(state(1), Some("ESTABLISHED"));
        assert_eq!(state(12), Some("NEW_SYN_RECV"));
        assert_eq!(state(0), None);
        assert_eq!(state(200), None);
        assert_eq!(
            (family(2), family(10), family(1)),
            ("ipv4", "ipv6", "unknown")
        );
        assert_eq!(
            [0, 1, 2, 3, 9].map(role),
            ["unknown", "client", "server", "listener", "unknown"]
        );
        assert_eq!((port(0), port(443)), ("other".to_owned(), "443".to_owned()));
        let labels = Labels {
            port: 8080,
            family: 10,
            role: 2,
            cgroup: 0,
        };
        assert_eq!(
            socket_labels(&labels),
            [
                ("family", "ipv6".into()),
                ("role", "server".into()),
                ("port", "8080".into())
            ]
        );
    }
}
