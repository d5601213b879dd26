//! The build, as `--version` and `tcpstate_build_info` tell it (build.rs finds the revision,
//! rustc's version and the target; "unknown" where it could not).

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = env!("TCPSTATE_REVISION");
pub const RUSTC_VERSION: &str = env!("TCPSTATE_RUSTC_VERSION");
pub const TARGET: &str = env!("TCPSTATE_TARGET");

/// `--version`, after the program's name (node_exporter's layout).
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision: ",
    env!("TCPSTATE_REVISION"),
    ")\n  rustc version: ",
    env!("TCPSTATE_RUSTC_VERSION"),
    "\n  target: ",
    env!("TCPSTATE_TARGET"),
);
