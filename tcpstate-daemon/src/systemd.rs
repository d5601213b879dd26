//! systemd's service notifications (sd_notify(3), `Type=notify`): `READY=1` once tcpstated
//! serves, `STOPPING=1` when it starts shutting down, each one datagram to the socket systemd
//! names in `$NOTIFY_SOCKET` (a path, or `@` and an abstract name). Without the variable (not
//! started by such a unit) nothing is sent.

use std::{
    ffi::OsStr,
    io,
    os::{
        linux::net::SocketAddrExt as _,
        unix::{
            ffi::OsStrExt as _,
            net::{SocketAddr, UnixDatagram},
        },
    },
    path::Path,
};

/// The variable systemd sets for `Type=notify` services.
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Tells the service manager about `state` (`READY=1`, `STOPPING=1`), if it listens; a failure
/// is logged (the service manager then times out the start, and says so).
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    if let Err(error) = send(&socket, state) {
        log::warn!(
            "cannot tell the service manager {state} through {NOTIFY_SOCKET}={}: {error}",
            socket.to_string_lossy()
        );
    }
}

fn send(socket: &OsStr, state: &str) -> io::Result<()> {
    let address = match socket.as_bytes() {
        [b'@', name @ ..] => SocketAddr::from_abstract_name(name)?,
        [b'/', ..] => SocketAddr::from_pathname(Path::new(socket))?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "neither an absolute path nor an abstract socket name (`@...`)",
            ));
        }
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &address)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_arrive_as_one_datagram_each_at_a_path_or_an_abstract_name() {
        let directory =
            std::env::temp_dir().join(format!("tcpstate-notify-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("notify");
        let _ = std::fs::remove_file(&path);
        let at_path = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1").unwrap();
        let mut buffer = [0u8; 64];
        let length = at_path.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..length], b"READY=1");

        let name = format!("tcpstate-notify-{}", std::process::id());
        let abstract_address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_socket = UnixDatagram::bind_addr(&abstract_address).unwrap();
        send(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let length = abstract_socket.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..length], b"STOPPING=1");

        let error = send(OsStr::new("relative/notify"), "READY=1").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        let _ = std::fs::remove_dir_all(directory);
    }
}
