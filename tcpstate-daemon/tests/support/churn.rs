//! Connection churn for tests that restart a daemon under it: a server that reads each
//! connection to its end, clients that connect, send a byte and close, both until stopped.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    thread,
    time::Duration,
};

/// Accepts, reads each connection to its end (waiting at most `read_limit`) and closes it,
/// until `stop` is set and no connection waits; returns how many it served.
pub fn serve_until(listener: &TcpListener, stop: &AtomicBool, read_limit: Duration) -> u64 {
    listener.set_nonblocking(true).unwrap();
    let mut served = 0;
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(read_limit)).unwrap();
                let _ = stream.read_to_end(&mut Vec::new());
                served += 1;
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                if stop.load(Relaxed) {
                    return served;
                }
                thread::sleep(Duration::from_micros(50));
            }
            Err(error) => panic!("accept: {error}"),
        }
    }
}

/// Connects to `address`, sends a byte and closes, until `stop` is set; returns how many
/// connections it made.
pub fn connect_until(address: SocketAddr, stop: &AtomicBool) -> u64 {
    let mut made = 0;
    while !stop.load(Relaxed) {
        let mut stream = TcpStream::connect(address).expect("connect");
        stream.write_all(b"x").unwrap();
        made += 1;
    }
    made
}
