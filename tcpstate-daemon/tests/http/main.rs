//! The HTTP server of the real daemon: clients that misbehave (`connections`), TLS, client
//! certificates and basic auth from an exporter-toolkit web config file, with a real Prometheus
//! scraping over them (`tls`), listen addresses and gzip (`listen`). They need root (the daemon
//! loads its programs): `cargo xtask test` runs them (`--ignored`, one at a time).

#[path = "../support/mod.rs"]
mod support;

mod connections;
mod listen;
mod tls;
