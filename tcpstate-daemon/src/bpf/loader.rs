//! Loads the embedded eBPF object with this host's configuration and attaches its programs.

use std::{
    fs,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, anyhow};
use aya::{
    Btf, Ebpf, EbpfError, EbpfLoader, Endianness,
    maps::{Map, MapData, MapError},
    programs::{
        BtfTracePoint, ProgramError,
        links::{FdLink, PinnedLink},
    },
};
use tcpstate_common::{
    AddressLayout, DurationBuckets, PortSet, SocketLayout, global, map, program,
};

use super::{
    btf::{self, KernelBtf},
    figure_store::FigureStore,
    maps::KernelMaps,
    pinning::{self, PinRoot, PinSettings},
};
use crate::{
    config::{Buckets, Collectors, Flags},
    kept::{self, DaemonFigures, Reader},
    sys::{self, ProgramStats},
    trace::TraceMaps,
};

/// The object `build.rs` compiled from `tcpstate-ebpf`, embedded so one binary is all a host needs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpstate"));

/// Attached programs and the maps the daemon reads.
pub struct Tracer {
    pub maps: KernelMaps,
    /// The live event stream's maps.
    pub trace: TraceMaps,
    /// The programs' attachments. Dropping them detaches the programs unless the state is
    /// pinned (then its links keep them attached for the next daemon).
    pub links: Vec<FdLink>,
    /// What an earlier daemon left, and where this one keeps its figures.
    pub kept: KeptState,
    /// The pin path, locked while this daemon lives.
    pub pin_root: Option<PinRoot>,
}

/// The daemon's side of a pinned state.
#[derive(Default)]
pub struct KeptState {
    /// Where this daemon writes its figures at each scrape (a persistent state only).
    pub store: Option<FigureStore>,
    /// The figures the daemon before this one wrote, if the state was adopted.
    pub earlier: Option<Vec<u8>>,
    /// Whether the programs and maps are an earlier daemon's, adopted.
    pub adopted: bool,
    /// Whether this daemon's programs continue an earlier state's maps (an upgrade; its
    /// programs' figures are in `earlier`).
    pub continued: bool,
}

pub struct TracerConfig<'a> {
    pub buckets: &'a Buckets,
    pub ports: &'a [u16],
    /// Entries of the socket slot table (a power of two).
    pub socket_slots: u32,
    /// Entries per CPU of the transition slot table (a power of two).
    pub transition_slots: u32,
    /// Whether the programs read each socket's owner (its cgroup) into its labels, and for how
    /// many workloads the transition map is sized then.
    pub workloads: Option<usize>,
    /// Where the state is pinned, and whether it outlives this daemon.
    pub pins: PinSettings,
    /// The parts turned off: their programs are neither loaded nor attached.
    pub collectors: Collectors,
}

impl KeptState {
    /// When the programs were first attached: told by the figures an earlier daemon kept, else
    /// now (for a new state, or one whose figures were lost: kernel times before then give no
    /// durations).
    pub fn attached_ns(&self) -> u64 {
        self.earlier
            .as_deref()
            .and_then(|bytes| DaemonFigures::restore(&mut Reader::new(bytes)).ok())
            .map_or_else(sys::monotonic_ns, |figures| figures.attached_ns)
    }
}

impl<'a> TracerConfig<'a> {
    pub fn from_flags(flags: &'a Flags) -> Self {
        TracerConfig {
            buckets: &flags.buckets,
            ports: &flags.ports,
            socket_slots: flags.socket_slots,
            transition_slots: flags.transition_slots,
            workloads: flags.workloads.then_some(flags.max_workloads),
            pins: flags.pin_settings(),
            collectors: flags.collectors(),
        }
    }

    fn transitions_capacity(&self) -> u32 {
        crate::config::transitions_capacity(self.workloads)
    }
}

/// The tracepoint of each program loaded and its typedef's id in the kernel's BTF.
type TracepointIds = Vec<(&'static str, u32)>;

/// Everything the loader gives the kernel: the programs, their globals and the maps' sizes.
struct LoadSettings {
    programs: Vec<Program>,
    layout: SocketLayout,
    tracepoints: TracepointIds,
    addresses: AddressLayout,
    buckets: DurationBuckets,
    ports: PortSet,
    slot_mask: u32,
    transition_slot_mask: u32,
    socket_slots: u32,
    transition_slots: u32,
    transitions_capacity: u32,
}

impl LoadSettings {
    /// What `config` and this kernel's BTF ask of the loader.
    fn of(config: &TracerConfig<'_>) -> anyhow::Result<Self> {
        let programs = programs(&config.collectors);
        let (layout, addresses, tracepoints) = read_kernel_btf(config, &programs)?;
        Ok(LoadSettings {
            programs,
            layout,
            addresses,
            tracepoints,
            buckets: duration_buckets(config.buckets),
            ports: port_set(config.ports),
            slot_mask: config.socket_slots - 1,
            transition_slot_mask: config.transition_slots - 1,
            socket_slots: config.socket_slots,
            transition_slots: config.transition_slots,
            transitions_capacity: config.transitions_capacity(),
        })
    }

    /// The maps whose size the loader sets, and the sizes.
    fn map_sizes(&self) -> [(&'static str, u32); 4] {
        [
            (map::SOCKET_SLOTS, self.socket_slots),
            (map::TRANSITION_SLOTS, self.transition_slots),
            (map::TRANSITIONS, self.transitions_capacity),
            (map::TRACE_SOCKETS, self.socket_slots),
        ]
    }

    /// What the maps hold, for the state's name: each map's definition as loaded with these
    /// settings (name, type, key and value sizes, entries, flags), and the histogram's bounds.
    fn maps_description(&self) -> anyhow::Result<Vec<u8>> {
        let mut description = Vec::new();
        for (name, definition) in kept_maps()? {
            let entries = self
                .map_sizes()
                .iter()
                .find(|(sized, _)| *sized == name)
                .map_or(definition.max_entries(), |(_, entries)| *entries);
            description.extend_from_slice(name.as_bytes());
            for word in [
                definition.map_type(),
                definition.key_size(),
                definition.value_size(),
                entries,
                definition.map_flags(),
            ] {
                description.extend_from_slice(&word.to_le_bytes());
            }
        }
        description.extend_from_slice(sys::bpf::bytes_of(&self.buckets));
        Ok(description)
    }

    /// The name of the pinned state these settings and this build make.
    fn state_name(&self) -> anyhow::Result<String> {
        let words = [
            self.slot_mask,
            self.transition_slot_mask,
            self.socket_slots,
            self.transition_slots,
            self.transitions_capacity,
        ]
        .map(u32::to_le_bytes);
        let mut parts = vec![
            EBPF_OBJECT,
            sys::bpf::bytes_of(&self.layout),
            sys::bpf::bytes_of(&self.addresses),
            sys::bpf::bytes_of(&self.buckets),
            sys::bpf::bytes_of(&self.ports),
        ];
        parts.extend(words.iter().map(|word| word.as_slice()));
        // The programs turned off (none by default, which leaves the default's name as it was).
        parts.extend(
            PROGRAMS
                .iter()
                .filter(|program| !self.programs.contains(program))
                .map(|(name, _)| name.as_bytes()),
        );
        Ok(pinning::state_name(&[&self.maps_description()?], &parts))
    }
}

impl Tracer {
    /// Adopts the programs and maps pinned by an earlier daemon of this build and
    /// configuration, or loads and attaches new ones (pinned if the state persists).
    pub fn attach(config: &TracerConfig<'_>) -> anyhow::Result<Self> {
        let settings = LoadSettings::of(config)?;
        let name = settings.state_name()?;
        let pin_root = PinRoot::open(&config.pins)?;
        let state = pin_root.as_ref().map(|root| root.path().join(&name));
        let adopted = match &state {
            Some(state) if state.exists() => match Tracer::adopt(state, &settings) {
                Ok(tracer) => Some(tracer),
                Err(error) => {
                    log::warn!(
                        "cannot adopt the pinned state {} ({error:#}): starting clean, its \
                         counters are not continued",
                        state.display()
                    );
                    None
                }
            },
            _ => None,
        };
        let pin_at = state.as_deref().filter(|_| config.pins.persist);
        let compatible = pin_root
            .as_ref()
            .and_then(|root| root.compatible_state(&name));
        let continued = match (adopted.is_some(), compatible) {
            (false, Some(earlier)) => match Tracer::continue_maps(&settings, &earlier, pin_at) {
                Ok(tracer) => Some(tracer),
                Err(error) => {
                    log::warn!(
                        "cannot continue the maps of the pinned state {} ({error:#}): starting \
                         clean, its counters are not continued",
                        earlier.display()
                    );
                    None
                }
            },
            _ => None,
        };
        let mut tracer = match adopted.or(continued) {
            Some(tracer) => tracer,
            None => Tracer::load(&settings, pin_at, None)?,
        };
        // Only now, with this daemon's programs attached: a state it cannot use is detached
        // and removed (its figures are not continued, so events counted twice meanwhile are
        // counted nowhere twice).
        if let Some(root) = &pin_root {
            root.remove_all_but(config.pins.persist.then_some(name.as_str()), &name);
        }
        if !config.pins.persist {
            // Unpinned: nothing will read what this daemon would keep.
            tracer.kept.store = None;
        }
        tracer.pin_root = pin_root;
        // The kernel's BTF, parsed above, is large: hand its memory back.
        sys::release_free_memory();
        Ok(tracer)
    }

    /// Loads and attaches new programs, as `attach` would where nothing is pinned, leaving the
    /// pin path alone (`--check`); dropping the result detaches them.
    pub fn attach_unpinned(config: &TracerConfig<'_>) -> anyhow::Result<Self> {
        Tracer::load(&LoadSettings::of(config)?, None, None)
    }

    /// Loads new programs on the maps of the state pinned at `earlier` by a daemon of another
    /// build or configuration whose maps hold the same (see `pinning`), and swaps them for that
    /// state's programs: the counters, the sockets' records and the daemon's figures go on.
    /// The old programs are detached just before the new ones are attached: events in between
    /// (0.1 to 10 ms, see docs/restarts.md) are missed, and each socket's next event repairs
    /// its record (as after any event the kernel ran no program for). `earlier` is removed once
    /// its maps are pinned anew.
    fn continue_maps(
        settings: &LoadSettings,
        earlier: &Path,
        pin_at: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let figures = earlier.join(pinning::FIGURES);
        let mut earlier_store = FigureStore::open(&figures);
        let kept = read_earlier_figures(
            &figures,
            earlier_store.as_mut().map_err(|error| anyhow!("{error}")),
        );
        let mut tracer = Tracer::load(settings, pin_at, Some(earlier))?;
        // The earlier programs are detached: their figures are final.
        let replaced: Vec<(u64, ProgramStats)> = PROGRAMS
            .iter()
            .enumerate()
            .filter_map(|(index, (name, _))| {
                let pin = pinning::pin_of(earlier, pinning::PROGRAMS, name);
                let program = BtfTracePoint::from_pin(pin).ok()?;
                let stats = sys::program_stats(&program.fd().ok()?.as_fd().as_raw_fd()).ok()?;
                Some((index as u64, stats))
            })
            .collect();
        // With the replaced programs' figures, which only the daemon's figures keep now.
        let kept = kept.map(|bytes| {
            kept::with_replaced_programs(&bytes, &replaced).unwrap_or_else(|_| {
                log::warn!(
                    "the figures the last tcpstated kept are unreadable: the replaced programs' \
                     (tcpstate_bpf_program_*) start again from 0"
                );
                bytes
            })
        });
        if let (Some(store), Some(bytes)) = (&mut tracer.kept.store, &kept) {
            store
                .write(bytes)
                .context("cannot write the daemon's figures into the new state")?;
        }
        tracer.kept.earlier = kept;
        tracer.kept.adopted = true;
        tracer.kept.continued = true;
        fs::remove_dir_all(earlier)
            .with_context(|| format!("cannot remove {}", earlier.display()))?;
        log::info!(
            "continued the maps of the pinned state {} with this build's programs: counters, \
             sockets' records and the daemon's figures go on",
            earlier.display()
        );
        Ok(tracer)
    }

    /// The state pinned at `state` by an earlier daemon with `settings`: nothing is loaded or
    /// attached, the programs never stopped.
    fn adopt(state: &Path, settings: &LoadSettings) -> anyhow::Result<Self> {
        let links = settings
            .programs
            .iter()
            .map(|(name, _)| {
                let pin = pinning::pin_of(state, pinning::LINKS, name);
                let link = PinnedLink::from_pin(&pin)
                    .with_context(|| format!("link {}", pin.display()))?;
                Ok(FdLink::from(link))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let programs = settings
            .programs
            .iter()
            .map(|(name, _)| {
                let pin = pinning::pin_of(state, pinning::PROGRAMS, name);
                let program = BtfTracePoint::from_pin(&pin)
                    .with_context(|| format!("program {}", pin.display()))?;
                Ok((*name, program.fd()?.try_clone()?))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut take = |name: &str| {
            let pin = pinning::pin_of(state, pinning::MAPS, pinning::map_pin_name(name));
            let data = MapData::from_pin(&pin).with_context(|| format!("map {}", pin.display()))?;
            Ok(Map::from_map_data(data)?)
        };
        let trace_program = pinning::pin_of(state, pinning::PROGRAMS, program::TRACE_STATE_CHANGE);
        let trace_program = BtfTracePoint::from_pin(&trace_program)
            .with_context(|| format!("program {}", trace_program.display()))?
            .fd()?
            .try_clone()?;
        let maps = KernelMaps::take(&mut take, programs, settings.socket_slots)?;
        let trace = TraceMaps::take(take, trace_program, maps.socket_slots.try_clone()?)?;
        let figures = state.join(pinning::FIGURES);
        let mut store = FigureStore::open(&figures)
            .with_context(|| format!("the daemon's figures {}", figures.display()))?;
        let earlier = read_earlier_figures(&figures, Ok(&mut store));
        Ok(Tracer {
            maps,
            trace,
            links,
            kept: KeptState {
                store: Some(store),
                earlier,
                adopted: true,
                ..KeptState::default()
            },
            pin_root: None,
        })
    }

    /// Loads the embedded object with `settings`, attaches its programs and, if `pin_at` is
    /// given, pins the whole state there.
    fn load(
        settings: &LoadSettings,
        pin_at: Option<&Path>,
        maps_of: Option<&Path>,
    ) -> anyhow::Result<Self> {
        // No CO-RE relocations to make (the offsets replace them): no target BTF, and none
        // parsed for nothing by `EbpfLoader::new()` (see `sys::mount`).
        let mut loader = sys::mount::without_kernel_btf(EbpfLoader::new);
        for (name, entries) in settings.map_sizes() {
            loader.map_max_entries(name, entries);
        }
        let kept_maps: Vec<(String, PathBuf)> = match maps_of {
            Some(state) => kept_maps()?
                .into_iter()
                .map(|(name, _)| {
                    let pin = pinning::pin_of(state, pinning::MAPS, pinning::map_pin_name(&name));
                    anyhow::ensure!(pin.exists(), "map {} is missing", pin.display());
                    Ok((name, pin))
                })
                .collect::<anyhow::Result<_>>()?,
            None => Vec::new(),
        };
        for (name, pin) in &kept_maps {
            // An existing pin is opened, not created.
            loader.map_pin_path(name, pin.as_path());
        }
        let mut ebpf = loader
            .btf(None)
            .override_global(global::SOCKET_LAYOUT, &settings.layout, true)
            .override_global(global::ADDRESS_LAYOUT, &settings.addresses, true)
            .override_global(global::DURATION_BUCKETS, &settings.buckets, true)
            .override_global(global::SERVICE_PORTS, &settings.ports, true)
            .override_global(global::SOCKET_SLOT_MASK, &settings.slot_mask, true)
            .override_global(
                global::TRANSITION_SLOT_MASK,
                &settings.transition_slot_mask,
                true,
            )
            .load(EBPF_OBJECT)
            .map_err(explain_load_error)?;

        let btf = Btf::parse(
            &btf::tracepoints_only(&settings.tracepoints),
            Endianness::default(),
        )
        .context("cannot parse the tracepoints' BTF")?;
        // All verified first, so that a swap's gap is only the attachments. The event stream's
        // is attached by its reader, while someone listens.
        for (name, tracepoint) in settings.programs.iter().chain([&STREAM_PROGRAM]) {
            load_btf_tracepoint(&mut ebpf, name, tracepoint, &btf)?;
        }
        drop(btf);
        // Primary first: on each event the kernel runs them in attach order; the nested-event
        // program only acts while the primary one is mid-run on the CPU, so order is not
        // essential, but this keeps the common case's second call a cheap no-op. A swap goes
        // tracepoint by tracepoint, each earlier program detached (its link unpinned and
        // closed) just before this build's is attached, the state changes' first: their
        // nested-event program before their primary, which holds the tracepoint until the new
        // primary comes (see docs/restarts.md, "Upgrades").
        let mut earlier_links = match maps_of {
            Some(state) => earlier_links(state)?,
            None => Vec::new(),
        };
        let mut links = Vec::new();
        let mut swap_took = None;
        for (index, &(name, tracepoint)) in settings.programs.iter().enumerate() {
            let first_of_tracepoint = settings.programs[..index]
                .iter()
                .all(|(_, other)| *other != tracepoint);
            let swap_started = Instant::now();
            if first_of_tracepoint {
                // Closed, not only unpinned: the last descriptor's close detaches at once, where
                // an unpinned link is released later, by a kernel worker.
                let (now, later) = earlier_links
                    .into_iter()
                    .partition(|(_, earlier)| *earlier == tracepoint);
                earlier_links = later;
                drop::<Vec<_>>(now);
            }
            let program: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| missing_program(name))?
                .try_into()?;
            let link = program
                .attach()
                .map_err(|err| explain_program_error(name, err))?;
            links.push(FdLink::from(program.take_link(link)?));
            if maps_of.is_some() && name == program::RECORD_STATE_CHANGE {
                swap_took = Some(swap_started.elapsed());
            }
        }
        // Any left (a program this daemon does not load) go now.
        drop(earlier_links);
        if let Some(took) = swap_took {
            log::info!(
                "swapped the earlier state changes' programs for this build's in {} µs: events \
                 in between are not counted (each socket's next event repairs its record)",
                took.as_micros()
            );
        }
        sys::release_free_memory();
        let store = match pin_at {
            Some(state) => {
                let (pinned, store) = pin_state(&mut ebpf, &settings.programs, links, state)?;
                links = pinned;
                Some(store)
            }
            None => None,
        };
        let programs = settings
            .programs
            .iter()
            .map(|(name, _)| {
                let program = ebpf
                    .program(name)
                    .ok_or_else(|| anyhow!("program {name} vanished"))?;
                Ok((*name, program.fd()?.try_clone()?))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let trace_program = ebpf
            .program(program::TRACE_STATE_CHANGE)
            .ok_or_else(|| missing_program(program::TRACE_STATE_CHANGE))?
            .fd()?
            .try_clone()?;
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("map {name} is missing from the eBPF object"))
        };
        let maps = KernelMaps::take(&mut take, programs, settings.socket_slots)?;
        let trace = TraceMaps::take(take, trace_program, maps.socket_slots.try_clone()?)?;
        Ok(Tracer {
            maps,
            trace,
            links,
            kept: KeptState {
                store,
                ..KeptState::default()
            },
            pin_root: None,
        })
    }

    /// Whether the programs are still loaded, for `/healthz` (which must not wait for the
    /// collector's lock: it holds its own descriptors).
    pub fn health_check(&self) -> anyhow::Result<impl Fn() -> bool + Send + Sync + 'static> {
        let program_fds = self
            .maps
            .programs
            .iter()
            .map(|(_, fd)| fd.try_clone())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(move || {
            program_fds
                .iter()
                .all(|fd| sys::program_stats(&fd.as_fd().as_raw_fd()).is_ok())
        })
    }

    /// The socket-storage map, for sock_diag to tell tracked sockets from untracked ones.
    pub fn socket_records_fd(&self) -> Option<RawFd> {
        Some(self.maps.socket_records.fd().as_fd().as_raw_fd())
    }
}

/// A program of the object and the tracepoint it attaches to.
pub type Program = (&'static str, &'static str);

/// What the last daemon kept in the figure store at `path`. Unreadable, the kernel's figures
/// are kept all the same: the log says which of the daemon's own start again.
fn read_earlier_figures(path: &Path, store: anyhow::Result<&mut FigureStore>) -> Option<Vec<u8>> {
    match store.and_then(|store| Ok(store.read()?)) {
        Ok(figures) => figures,
        Err(error) => {
            log::warn!(
                "cannot read the figures the last tcpstated kept in {} ({error:#}): TIME_WAIT \
                 ends, close_undelivered and listen counters of gone namespaces start again \
                 from 0",
                path.display()
            );
            None
        }
    }
}

/// The maps a state keeps, by name, with their definitions in the object: all but the data
/// sections the programs hold (`.rodata`, and `.bss`, the event stream's filter, which each
/// daemon resets).
fn kept_maps() -> anyhow::Result<Vec<(String, aya_obj::Map)>> {
    let object = aya_obj::Object::parse(EBPF_OBJECT)
        .context("cannot read the embedded eBPF object: rebuild tcpstate")?;
    let mut maps: Vec<_> = object
        .maps
        .into_iter()
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    maps.sort_by(|(one, _), (other, _)| one.cmp(other));
    Ok(maps)
}

/// The links of the state pinned at `state`, unpinned, each with its tracepoint, in the order
/// they detach in when dropped: on each tracepoint the nested-event program's before the
/// primary's (which then holds the tracepoint alone, recording every event).
fn earlier_links(state: &Path) -> anyhow::Result<Vec<(FdLink, &'static str)>> {
    let mut links = Vec::new();
    for &(name, tracepoint) in PROGRAMS.iter().rev() {
        let pin = pinning::pin_of(state, pinning::LINKS, name);
        if !pin.exists() {
            continue;
        }
        let link = PinnedLink::from_pin(&pin)
            .with_context(|| format!("link {}", pin.display()))?
            .unpin()
            .with_context(|| format!("cannot unpin {}", pin.display()))?;
        links.push((link, tracepoint));
    }
    Ok(links)
}

/// The event stream's program and its tracepoint: loaded with `PROGRAMS`, attached only while
/// someone listens.
const STREAM_PROGRAM: Program = (program::TRACE_STATE_CHANGE, program::TRACEPOINT);

/// The programs, each with the tracepoint it attaches to, in attach order.
pub const PROGRAMS: [Program; 5] = [
    (program::RECORD_STATE_CHANGE, program::TRACEPOINT),
    (program::RECORD_NESTED_STATE_CHANGE, program::TRACEPOINT),
    (program::RECORD_RESET_SENT, "tcp_send_reset"),
    (program::RECORD_RESET_RECEIVED, "tcp_receive_reset"),
    (program::RECORD_SYNACK_RETRANSMIT, "tcp_retransmit_synack"),
];

/// The programs of `PROGRAMS` that `collectors` leaves on, in attach order: the state
/// programs always, the event programs unless their part is turned off.
pub fn programs(collectors: &Collectors) -> Vec<Program> {
    PROGRAMS
        .into_iter()
        .filter(|(name, _)| match *name {
            program::RECORD_RESET_SENT | program::RECORD_RESET_RECEIVED => collectors.resets,
            program::RECORD_SYNACK_RETRANSMIT => collectors.synack_retransmits,
            _ => true,
        })
        .collect()
}

/// Loads the object's program `name` and attaches it to the BTF tracepoint `tracepoint`; errors
/// say what to do (privileges, the verifier's log, a stale build).
pub fn attach_btf_tracepoint<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
    tracepoint: &str,
    btf: &Btf,
) -> anyhow::Result<&'a mut BtfTracePoint> {
    let program = load_btf_tracepoint(ebpf, name, tracepoint, btf)?;
    program
        .attach()
        .map_err(|err| explain_program_error(name, err))?;
    Ok(program)
}

/// Loads the object's program `name` for the BTF tracepoint `tracepoint` (the verifier runs
/// here), not attached yet.
fn load_btf_tracepoint<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
    tracepoint: &str,
    btf: &Btf,
) -> anyhow::Result<&'a mut BtfTracePoint> {
    let program: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| missing_program(name))?
        .try_into()?;
    program
        .load(tracepoint, btf)
        .map_err(|err| explain_program_error(name, err))?;
    Ok(program)
}

/// What the daemon reads from this kernel's BTF, which it parses once: the offsets of `struct
/// sock` (with the owner's when workloads are labelled), the addresses' for the event stream,
/// and the ids of the tracepoints of `programs`.
fn read_kernel_btf(
    config: &TracerConfig<'_>,
    programs: &[Program],
) -> anyhow::Result<(SocketLayout, AddressLayout, TracepointIds)> {
    let kernel_btf = KernelBtf::from_sys_fs()?;
    let tracepoints = programs
        .iter()
        .map(|&(_, tracepoint)| Ok((tracepoint, kernel_btf.tracepoint_id(tracepoint)?)))
        .collect::<anyhow::Result<TracepointIds>>()?;
    let layout = kernel_btf.socket_layout()?;
    let layout = match config.workloads {
        Some(_) => kernel_btf.with_owner_cgroup(layout).context(
            "--workloads reads each socket's cgroup (struct sock_cgroup_data.cgroup, Linux 5.15 \
             and later): this kernel has no such field, run without --workloads",
        )?,
        None => layout,
    };
    Ok((layout, kernel_btf.address_layout()?, tracepoints))
}

/// Pins the state of a new `ebpf` at `state`: its maps, `programs`, their `links` (which keep
/// the programs attached while no daemon runs) and a new store for the daemon's figures.
/// Pinned first under a partial name, renamed when whole: a daemon stopped midway leaves
/// nothing the next one would adopt.
fn pin_state(
    ebpf: &mut Ebpf,
    programs: &[Program],
    links: Vec<FdLink>,
    state: &Path,
) -> anyhow::Result<(Vec<FdLink>, FigureStore)> {
    let name = state
        .file_name()
        .ok_or_else(|| anyhow!("{} has no name", state.display()))?;
    // bpffs refuses names with a dot.
    let partial = state.with_file_name(format!("partial-{}", name.to_string_lossy()));
    let _ = fs::remove_dir_all(&partial);
    pinning::make_state_dirs(&partial)?;
    let pin_error = |what: &str, path: &Path| format!("cannot pin {what} at {}", path.display());
    for (name, map) in ebpf.maps() {
        // `.rodata` and the like: the programs hold them, the daemon never reads them (it
        // writes `.bss`, the event stream's filter).
        if name.starts_with('.') && name != map::TRACE_CONTROL {
            continue;
        }
        let path = pinning::pin_of(&partial, pinning::MAPS, pinning::map_pin_name(name));
        map.pin(&path).with_context(|| pin_error("map", &path))?;
    }
    for (name, _) in programs.iter().chain([&STREAM_PROGRAM]) {
        let program: &mut BtfTracePoint = ebpf
            .program_mut(name)
            .ok_or_else(|| missing_program(name))?
            .try_into()?;
        let path = pinning::pin_of(&partial, pinning::PROGRAMS, name);
        program
            .pin(&path)
            .with_context(|| pin_error("program", &path))?;
    }
    let links = links
        .into_iter()
        .zip(programs)
        .map(|(link, (name, _))| {
            let path = pinning::pin_of(&partial, pinning::LINKS, name);
            let pinned = link.pin(&path).with_context(|| pin_error("link", &path))?;
            Ok(FdLink::from(pinned))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let store = FigureStore::create(&partial.join(pinning::FIGURES))
        .context("cannot pin the map of the daemon's figures")?;
    if state.exists() {
        // A state of this name that could not be adopted.
        fs::remove_dir_all(state).with_context(|| format!("cannot remove {}", state.display()))?;
    }
    fs::rename(&partial, state)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), state.display()))?;
    Ok((links, store))
}

/// The object embedded in this build lacks program `name`.
pub fn missing_program(name: &str) -> anyhow::Error {
    anyhow!("program {name} is missing from the embedded eBPF object: rebuild tcpstate")
}

pub fn duration_buckets(buckets: &Buckets) -> DurationBuckets {
    let mut kernel = DurationBuckets::EMPTY;
    for (slot, bound) in kernel.bounds_ns.iter_mut().zip(buckets.nanoseconds()) {
        *slot = bound;
    }
    kernel
}

pub fn port_set(ports: &[u16]) -> PortSet {
    let mut set = PortSet::EMPTY;
    ports.iter().for_each(|port| set.insert(*port));
    set
}

const PRIVILEGE_HINT: &str = "loading eBPF programs needs root, or the capabilities CAP_BPF and \
     CAP_PERFMON (CAP_SYS_ADMIN on kernels older than 5.8): run as root, or grant them (systemd: \
     AmbientCapabilities=CAP_BPF CAP_PERFMON; Kubernetes: securityContext.capabilities.add)";

/// Why the embedded object or one of its programs could not be loaded or attached, told apart
/// as the exit status tells them (`exit::Failure`).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The kernel refused for lack of privilege.
    #[error("{}", PRIVILEGE_HINT)]
    Denied(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The verifier rejected a program; its log says what failed.
    #[error("the kernel's verifier rejected program {name}:\n{log}")]
    Rejected { name: String, log: String },
    /// The kernel lacks what the object needs (a map or program type, an attach point).
    #[error("this kernel cannot {what}")]
    Unsupported {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn is_permission_error(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

/// Out of memory (the memory cgroup's limit, or the host's) is no lack of the kernel's.
fn is_out_of_memory(error: &std::io::Error) -> bool {
    error.raw_os_error() == Some(libc::ENOMEM)
}

fn explain_load_error(error: EbpfError) -> anyhow::Error {
    let EbpfError::MapError(MapError::CreateError { io_error, .. }) = &error else {
        return anyhow::Error::new(error).context("cannot load the eBPF object");
    };
    if is_permission_error(io_error) {
        return LoadError::Denied(error.into()).into();
    }
    if is_out_of_memory(io_error) {
        return anyhow::Error::new(error).context("cannot create the eBPF object's maps");
    }
    LoadError::Unsupported {
        what: "create the eBPF object's maps".into(),
        source: error.into(),
    }
    .into()
}

fn explain_program_error(name: &str, error: ProgramError) -> anyhow::Error {
    let (io_error, what) = match &error {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            // A rejection carries the verifier's log (whatever its errno: the verifier says
            // EACCES too); a refusal for privilege comes before the verifier runs.
            let log = verifier_log.to_string();
            if !log.trim().is_empty() {
                return LoadError::Rejected {
                    name: name.to_owned(),
                    log,
                }
                .into();
            }
            (io_error, format!("load program {name}"))
        }
        ProgramError::SyscallError(syscall) => {
            (&syscall.io_error, format!("attach program {name}"))
        }
        _ => {
            return anyhow::Error::new(error)
                .context(format!("cannot load or attach program {name}"));
        }
    };
    if is_permission_error(io_error) {
        return LoadError::Denied(error.into()).into();
    }
    if is_out_of_memory(io_error) {
        return anyhow::Error::new(error).context(format!("cannot {what}"));
    }
    LoadError::Unsupported {
        what,
        source: error.into(),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_buckets_hold_the_configured_bounds_then_unused_slots() {
        let buckets = Buckets::new(vec![0.001, 1.0]).unwrap();
        let kernel = duration_buckets(&buckets);
        assert_eq!(
            &kernel.bounds_ns[..3],
            &[1_000_000, 1_000_000_000, DurationBuckets::UNUSED]
        );
        assert_eq!(
            kernel.bucket_index(2_000_000_000),
            2,
            "above the last bound: ignored slot"
        );
    }

    /// The load settings of `collectors` (and of nothing else this kernel says).
    fn settings(collectors: Collectors) -> LoadSettings {
        let programs = programs(&collectors);
        LoadSettings {
            tracepoints: programs
                .iter()
                .map(|(_, tracepoint)| (*tracepoint, 1))
                .collect(),
            programs,
            layout: SocketLayout::default(),
            addresses: AddressLayout::default(),
            buckets: DurationBuckets::EMPTY,
            ports: PortSet::EMPTY,
            slot_mask: 7,
            transition_slot_mask: 1,
            socket_slots: 8,
            transition_slots: 2,
            transitions_capacity: 16,
        }
    }

    #[test]
    fn parts_turned_off_load_no_program_and_make_another_pinned_state() {
        let names = |settings: &LoadSettings| -> Vec<&str> {
            settings.programs.iter().map(|(name, _)| *name).collect()
        };
        let all = settings(Collectors::ALL);
        assert_eq!(all.programs, PROGRAMS);
        let no_resets = settings(Collectors {
            resets: false,
            ..Collectors::ALL
        });
        assert_eq!(
            names(&no_resets),
            [
                program::RECORD_STATE_CHANGE,
                program::RECORD_NESTED_STATE_CHANGE,
                program::RECORD_SYNACK_RETRANSMIT
            ]
        );
        let no_synack = settings(Collectors {
            synack_retransmits: false,
            ..Collectors::ALL
        });
        assert_eq!(names(&no_synack).len(), 4);
        assert!(!names(&no_synack).contains(&program::RECORD_SYNACK_RETRANSMIT));
        // Each program set is a state of its own; the polls and netstat are no kernel state.
        let user_space_off = settings(Collectors {
            sockdiag: false,
            netstat: false,
            ..Collectors::ALL
        });
        assert_eq!(user_space_off.programs, PROGRAMS);
        assert_eq!(
            user_space_off.state_name().unwrap(),
            all.state_name().unwrap()
        );
        let names: std::collections::BTreeSet<String> = [&all, &no_resets, &no_synack]
            .iter()
            .map(|settings| settings.state_name().unwrap())
            .collect();
        assert_eq!(names.len(), 3);
    }

    #[test]
    fn port_set_holds_exactly_the_configured_ports() {
        let set = port_set(&[22, 65535]);
        assert!(set.contains(22) && set.contains(65535));
        assert!(!set.contains(23) && !set.contains(0));
    }
}
