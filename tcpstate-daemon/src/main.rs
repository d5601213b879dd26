use std::{process::ExitCode, sync::Arc};

use clap::Parser as _;
use prometheus::{Registry, core::Collector};
use tcpstate_daemon::{
    collector::TcpStateCollector,
    config::Flags,
    http::{self, WebState},
    loader::{Tracer, TracerConfig},
    preflight, sys,
};

/// Exit status for runtime failures; usage errors exit with clap's 2.
const EXIT_RUNTIME_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let flags = Flags::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(error.into()),
    };
    match runtime.block_on(run(flags)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(error),
    }
}

fn fail(error: anyhow::Error) -> ExitCode {
    eprintln!("tcpstated: error: {error:#}");
    ExitCode::from(EXIT_RUNTIME_FAILURE)
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    preflight::check_privileges()?;
    let listener = http::bind(flags.listen_address).await?;
    if let Err(error) = sys::raise_memlock_rlimit() {
        // Kernels since 5.11 charge BPF memory to the memory cgroup instead.
        log::debug!("could not raise RLIMIT_MEMLOCK ({error}); relying on memcg accounting");
    }
    let tracer = Tracer::attach(&TracerConfig {
        buckets: &flags.buckets,
        ports: &flags.ports,
    })?;
    let Tracer { ebpf, maps } = tracer;
    let collector = Arc::new(TcpStateCollector::new(
        maps,
        flags.buckets.seconds().to_vec(),
    ));

    let registry = Registry::new();
    registry.register(Box::new(SharedCollector(collector.clone())))?;
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;

    log::info!(
        "tcpstated {} attached to sock:inet_sock_set_state; serving http://{}{}",
        tcpstate_daemon::collector::VERSION,
        flags.listen_address,
        flags.telemetry_path
    );
    let state = WebState {
        registry,
        collector,
        telemetry_path: flags.telemetry_path.clone(),
    };
    http::serve(listener, state, shutdown_signal()).await?;
    drop(ebpf); // detaches the programs
    log::info!("detached; exiting");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match terminate.as_mut() {
                Some(terminate) => { terminate.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// Lets the registry own a handle on the collector that `/healthz` also uses.
struct SharedCollector(Arc<TcpStateCollector>);

impl Collector for SharedCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}
