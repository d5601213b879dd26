//! `tcpstated`: wiring only. The stages are in the library (see its documentation).

use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser as _;
use tcpstate_daemon::{
    bpf::loader::{self, Tracer, TracerConfig},
    capabilities::{self, AfterStart, Keep},
    config::{Collectors, Flags, NamespaceScope},
    exit::Failure,
    http::{self, SocketsView, WebConfigSource, WebState},
    logging,
    metrics::{self, CollectorConfig, KernelState, TcpStateCollector},
    preflight,
    sockets::{census::Census, poller::PollThread, untracked::LabelRule},
    sys, systemd,
    trace::{self, command::Command},
    workload::Resolver,
};

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
            return Failure::Usage.exit_code();
        }
    };
    if flags.check {
        return check(&flags);
    }
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
    Failure::of(&error).exit_code()
}

/// `--check`: what the start does with the kernel (privileges, BTF, loading and attaching
/// every program) and the host (`--workloads`' hierarchy), then detaching, without serving and
/// without touching the pinned state (a running daemon's, or the one the next will adopt).
fn check(flags: &Flags) -> ExitCode {
    let checked = preflight::check_privileges()
        .map_err(anyhow::Error::from)
        .and_then(|()| Tracer::attach_unpinned(&TracerConfig::from_flags(flags)))
        .and_then(|tracer| tracer.trace.kernel.check_attach().map(|()| tracer))
        .and_then(|tracer| workload_resolver(flags).map(|_| tracer));
    match checked {
        Ok(tracer) => {
            let programs: Vec<&str> = tracer
                .maps
                .programs
                .iter()
                .map(|(name, _)| *name)
                .chain([tcpstate_common::program::TRACE_STATE_CHANGE])
                .collect();
            drop(tracer); // detaches
            log::info!(
                "check passed: tcpstated {} can run on this kernel with these flags (programs {} \
                 loaded, verified, attached and detached)",
                metrics::VERSION,
                programs.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(error) => fail(error),
    }
}

async fn run(flags: Flags, web_config: Option<Arc<WebConfigSource>>) -> anyhow::Result<()> {
    let shutdown = sys::shutdown_signal()?;
    preflight::check_privileges()?;
    let (bound, limits) = http::listen(&flags.listen_addresses, flags.max_connections)?;
    let collectors = flags.collectors();
    if collectors != Collectors::ALL {
        log::info!(
            "collectors turned off (--no-collector.NAME): {}",
            collectors.turned_off().join(", ")
        );
    }
    let tracer = Tracer::attach(&TracerConfig::from_flags(&flags))?;
    let adopted = tracer.kept.adopted;
    // Adopted whole, or an earlier state's maps continued with this daemon's programs.
    let programs_adopted = adopted && !tracer.kept.continued;
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
    let after_start = match flags.keep_capabilities {
        Keep::All => None,
        Keep::Only(kept) => Some(AfterStart::plan(
            kept,
            census.enters_other_namespaces(),
            capabilities::bpf_needs_capability(&programs_loaded),
        )),
    };
    let Tracer {
        maps,
        trace: trace_maps,
        links,
        kept,
        pin_root,
    } = tracer;
    let config = CollectorConfig::from_flags(&flags);
    let mut state = KernelState::new(maps, census).keeping(kept, &config);
    if let Some(resolver) = workload_resolver(&flags)? {
        state = state.with_workloads(resolver);
    }
    let poll_thread = PollThread::start(move || match after_start {
        Some(plan) => plan.confine_poll_thread(),
        None => Ok(()),
    })
    .context("cannot start the sock_diag poll thread")?;
    let poll_thread_id = poll_thread.id();
    let collector = TcpStateCollector::new(state, config, poll_thread);
    collector.start_background_poll();
    let view = collector.clone();
    let sockets: SocketsView = Arc::new(move |query| view.sockets(query));
    let registry = metrics::registry(collector)?;
    match after_start {
        // From here on no thread but the poll thread holds more than `--capabilities.keep`.
        Some(plan) => plan.enforce(poll_thread_id)?,
        None => log::info!("--capabilities.keep=all: every thread keeps its capabilities"),
    }
    // Its reader thread starts confined: it only reads the maps' descriptors and the ring.
    let events = match flags.disable_events {
        false => Some(trace::start(trace_maps, &flags, limits.max_connections)?),
        true => None,
    };

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
        if programs_adopted {
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
    systemd::notify("READY=1");
    // Event streams never end by themselves: they end at once, not after the grace.
    let shutdown = async move {
        shutdown.await;
        systemd::notify("STOPPING=1");
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

/// With `--workloads`, what decodes each socket's cgroup into a workload.
fn workload_resolver(flags: &Flags) -> anyhow::Result<Option<Resolver>> {
    if !flags.workloads {
        return Ok(None);
    }
    let cgroup_root = flags.cgroup_root.as_deref();
    let resolver = Resolver::new(&flags.host_root, cgroup_root, flags.max_workloads).context(
        "--workloads decodes each socket's cgroup v2 into a workload: give the host's cgroup v2 \
         hierarchy with --workloads.cgroup-root, or run without --workloads",
    )?;
    Ok(Some(resolver))
}
