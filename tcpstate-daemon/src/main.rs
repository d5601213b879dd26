//! `tcpstated`: wiring only. The stages are in the library (see its documentation).

use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser as _;
use tcpstate_daemon::{
    bpf::loader::{self, Tracer, TracerConfig},
    config::Flags,
    http::{self, WebState},
    metrics::{self, CollectorConfig, KernelState, TcpStateCollector},
    preflight,
    sockets::census::Census,
    sys,
    workload::Resolver,
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
    let (listener, limits) = http::listen(flags.listen_address, flags.max_connections)?;
    let tracer = Tracer::attach(&TracerConfig::from_flags(&flags))?;
    let census = Census::at_start(
        &tracer,
        loader::port_set(&flags.ports),
        flags.buckets.nanoseconds(),
    )?;
    let programs_loaded = tracer.health_check()?;
    let Tracer { ebpf, maps } = tracer;
    let mut state = KernelState::new(maps, census);
    if flags.workloads {
        let cgroup_root = flags.cgroup_root.as_deref();
        let resolver = Resolver::new(&flags.host_root, cgroup_root, flags.max_workloads).context(
            "--workloads decodes each socket's cgroup v2 into a workload: give the host's \
                 cgroup v2 hierarchy with --workloads.cgroup-root, or run without --workloads",
        )?;
        state = state.with_workloads(resolver);
    }
    let collector = TcpStateCollector::new(state, CollectorConfig::from_flags(&flags));
    collector.start_background_poll();
    let registry = metrics::registry(collector)?;

    log::info!(
        "tcpstated {} attached to sock:inet_sock_set_state; serving http://{}{}",
        metrics::VERSION,
        listener.local_addr()?,
        flags.telemetry_path
    );
    let state = WebState {
        registry,
        programs_loaded: Arc::new(programs_loaded),
        telemetry_path: flags.telemetry_path.clone(),
    };
    http::serve(listener, state, limits, shutdown).await;
    drop(ebpf); // detaches the programs
    log::info!("detached; exiting");
    Ok(())
}
