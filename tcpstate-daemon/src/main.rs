//! `tcpstated`: wiring only. The stages are in the library (see its documentation).

use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser as _;
use tcpstate_daemon::{
    bpf::{
        loader::{self, Tracer, TracerConfig},
        pinning::PinError,
    },
    config::{Flags, NamespaceScope},
    http::{self, SocketsView, WebConfigSource, WebState},
    logging,
    metrics::{self, CollectorConfig, KernelState, TcpStateCollector},
    preflight,
    sockets::{census::Census, untracked::LabelRule},
    sys,
    trace::{self, command::Command},
    workload::Resolver,
};

/// Exit status for runtime failures; usage errors exit with clap's 2.
const EXIT_RUNTIME_FAILURE: u8 = 1;
/// Exit status for a bad `--web.config.file`: a usage error, as clap's.
const EXIT_USAGE: u8 = 2;
/// Exit status when another daemon holds the pinned state (`--bpf.pin-path`).
const EXIT_PIN_PATH_IN_USE: u8 = 3;

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
    match error.downcast_ref::<PinError>() {
        Some(PinError::InUse { .. }) => ExitCode::from(EXIT_PIN_PATH_IN_USE),
        _ => ExitCode::from(EXIT_RUNTIME_FAILURE),
    }
}

async fn run(flags: Flags, web_config: Option<Arc<WebConfigSource>>) -> anyhow::Result<()> {
    let shutdown = sys::shutdown_signal()?;
    preflight::check_privileges()?;
    let (bound, limits) = http::listen(&flags.listen_addresses, flags.max_connections)?;
    let tracer = Tracer::attach(&TracerConfig::from_flags(&flags))?;
    let adopted = tracer.kept.adopted;
    let label_rule = LabelRule {
        ports: loader::port_set(&flags.ports),
        owners: flags.workloads,
    };
    let census = Census::at_start(
        &tracer,
        label_rule,
        flags.buckets.nanoseconds(),
        flags.namespaces == NamespaceScope::All,
        tracer.kept.attached_ns(),
    )?;
    let programs_loaded = tracer.health_check()?;
    let Tracer {
        maps,
        trace: trace_maps,
        links,
        kept,
        pin_root,
    } = tracer;
    let events = match flags.disable_events {
        false => Some(trace::start(trace_maps, &flags, limits.max_connections)?),
        true => None,
    };
    let mut state = KernelState::new(maps, census).keeping(kept);
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
    let view = collector.clone();
    let sockets: SocketsView = Arc::new(move |query| view.sockets(query));
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
        "tcpstated {} {} sock:inet_sock_set_state; serving {}",
        metrics::VERSION,
        if adopted {
            "adopted the pinned programs on"
        } else {
            "attached to"
        },
        serving.join(", ")
    );
    let state = WebState {
        registry,
        programs_loaded: Arc::new(programs_loaded),
        telemetry_path: flags.telemetry_path.clone(),
        web_config,
        events: events.clone(),
        sockets: Some(sockets),
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
    // Detaches the programs, unless their state is pinned for the next daemon.
    drop(links);
    match pin_root {
        Some(root) if flags.pin_settings().persist => log::info!(
            "exiting; the programs stay attached, their state pinned in {}",
            root.path().display()
        ),
        _ => log::info!("detached; exiting"),
    }
    Ok(())
}
