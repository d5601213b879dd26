use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use clap::Parser as _;
use prometheus::Registry;
use tcpstate_daemon::{
    baseline,
    census::Census,
    collector::{CollectorConfig, KernelState, TcpStateCollector},
    config::Flags,
    http::{self, Limits, WebState},
    loader::{self, Tracer, TracerConfig},
    preflight, sys,
};

/// Exit status for runtime failures; usage errors exit with clap's 2.
const EXIT_RUNTIME_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let flags = Flags::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let runtime = match http::runtime() {
        Ok(runtime) => runtime,
        Err(error) => return fail(error.into()),
    };
    let result = runtime.block_on(run(flags));
    // Not waiting for a scrape still blocked in a collector: the programs are detached.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(error),
    }
}

fn fail(error: anyhow::Error) -> ExitCode {
    eprintln!("tcpstated: error: {error:#}");
    ExitCode::from(EXIT_RUNTIME_FAILURE)
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let shutdown = sys::shutdown_signal()?;
    preflight::check_privileges()?;
    let listener = http::bind(flags.listen_address)?;
    let fd_limit = sys::raise_fd_limit().unwrap_or_else(|error| {
        log::warn!("cannot read or raise the fd limit ({error}); assuming 1024");
        1024
    });
    let max_connections = http::connections_within(fd_limit, flags.max_connections);
    if max_connections < flags.max_connections {
        log::warn!(
            "serving at most {max_connections} HTTP connections, not {}: the fd limit is \
             {fd_limit} (raise LimitNOFILE= in the systemd unit, or ulimit -n)",
            flags.max_connections
        );
    }
    let tracer = Tracer::attach(&TracerConfig {
        buckets: &flags.buckets,
        ports: &flags.ports,
        socket_slots: flags.socket_slots,
        transition_slots: flags.transition_slots,
    })?;
    let started_ns = sys::monotonic_ns();

    // Sockets older than the programs: counted once now, then as they move (first seen).
    let ports = loader::port_set(&flags.ports);
    let baseline = baseline::list(&tracer, &ports).unwrap_or_else(|error| {
        log::warn!(
            "cannot list existing sockets with sock_diag ({error}): sockets older than tcpstated \
             are not counted until they change state"
        );
        Default::default()
    });
    let census = Census::new(
        ports,
        flags.buckets.nanoseconds(),
        started_ns,
        sys::net_namespace_inode()?,
        baseline,
    );

    let Tracer {
        ebpf,
        maps,
        kernel_log,
    } = tracer;
    if let Some(kernel_log) = kernel_log {
        tcpstate_daemon::kernel_log::forward(kernel_log)?;
    }
    let program_fds = maps
        .programs
        .iter()
        .map(|(_, fd)| fd.try_clone())
        .collect::<Result<Vec<_>, _>>()?;
    let programs_loaded = move || {
        program_fds
            .iter()
            .all(|fd| sys::program_stats(&fd.as_fd().as_raw_fd()).is_ok())
    };
    let config = CollectorConfig {
        bucket_bounds: flags.buckets.seconds().to_vec(),
        view: flags.view,
        poll_min_interval: flags.poll_min_interval,
        socket_slots: flags.socket_slots,
    };
    let state = KernelState::new(maps, census);
    let collector = TcpStateCollector::new(state, config);
    collector.start_background_poll();

    let registry = Registry::new();
    registry.register(Box::new(collector))?;
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;

    log::info!(
        "tcpstated {} attached to sock:inet_sock_set_state; serving http://{}{}",
        tcpstate_daemon::collector::VERSION,
        listener.local_addr()?,
        flags.telemetry_path
    );
    let state = WebState {
        registry,
        programs_loaded: Arc::new(programs_loaded),
        telemetry_path: flags.telemetry_path.clone(),
    };
    let limits = Limits {
        max_connections,
        ..Limits::default()
    };
    http::serve(listener, state, limits, shutdown).await;
    drop(ebpf); // detaches the programs
    log::info!("detached; exiting");
    Ok(())
}
