//! `tcpstated`: wiring only. The stages are in the library (see its documentation).

use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser as _;
use tcpstate_daemon::{
    bpf::loader::{self, Tracer, TracerConfig},
    config::Flags,
    http::{self, WebConfigSource, WebState},
    logging,
    metrics::{self, CollectorConfig, KernelState, TcpStateCollector},
    preflight,
    sockets::census::Census,
    sys,
    trace::{self, command::Command},
    workload::Resolver,
};

/// Exit status for runtime failures; usage errors exit with clap's 2.
const EXIT_RUNTIME_FAILURE: u8 = 1;
/// Exit status for a bad `--web.config.file`: a usage error, as clap's.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let flags = Flags::parse();
    if let Some(Command::Trace(args)) = &flags.command {
        return trace::command::run(args);
    }
    logging::init(flags.log_level, flags.log_format);
    let web_config = match flags.web_config_file.as_deref().map(WebConfigSource::open) {
        None => None,
        Some(Ok(source)) => Some(Arc::new(source)),
        Some(Err(error)) => {
            eprintln!("tcpstated: error: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match http::runtime() {
        Ok(runtime) => runtime,
        Err(error) => return fail(error.into()),
    };
    let result = runtime.block_on(run(flags, web_config));
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

async fn run(flags: Flags, web_config: Option<Arc<WebConfigSource>>) -> anyhow::Result<()> {
    let shutdown = sys::shutdown_signal()?;
    preflight::check_privileges()?;
    let (bound, limits) = http::listen(&flags.listen_addresses, flags.max_connections)?;
    let tracer = Tracer::attach(&TracerConfig::from_flags(&flags))?;
    let census = Census::at_start(
        &tracer,
        loader::port_set(&flags.ports),
        flags.buckets.nanoseconds(),
    )?;
    let programs_loaded = tracer.health_check()?;
    let Tracer { mut ebpf, maps } = tracer;
    let events = match flags.disable_events {
        false => Some(trace::start(&mut ebpf, &flags, limits.max_connections)?),
        true => None,
    };
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

    let scheme = match &web_config {
        Some(source) if source.tls => "https",
        _ => "http",
    };
    let serving: Vec<String> = bound
        .iter()
        .map(|bound| format!("{scheme}://{}{}", bound.description, flags.telemetry_path))
        .collect();
    log::info!(
        "tcpstated {} attached to sock:inet_sock_set_state; serving {}",
        metrics::VERSION,
        serving.join(", ")
    );
    let state = WebState {
        registry,
        programs_loaded: Arc::new(programs_loaded),
        telemetry_path: flags.telemetry_path.clone(),
        web_config,
        events: events.clone(),
    };
    let listeners = bound.into_iter().map(|bound| bound.listener).collect();
    // Event streams never end by themselves: they end at once, not after the grace.
    let shutdown = async move {
        shutdown.await;
        if let Some(hub) = events {
            hub.close();
        }
    };
    http::serve(listeners, state, limits, shutdown).await?;
    drop(ebpf); // detaches the programs
    log::info!("detached; exiting");
    Ok(())
}
