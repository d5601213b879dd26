//! The census of a daemon starting: the network namespaces it covers (every one of the host's
//! if it may enter them; one log line says when it may not), and in each the sockets older
//! than the kernel programs (its baseline).

use std::{io, path::Path, thread};

use crate::{
    bpf::loader::Tracer,
    capabilities::{CAP_SYS_PTRACE, CapabilitySet},
    sockets::{
        census::{Baseline, Census, Coverage, baseline},
        namespaces::{self, Namespaces},
        untracked::LabelRule,
    },
    sys::{self, netns::Home},
};

/// Where the host's processes are (the daemon needs the host's PID namespace to see them).
const PROC: &str = "/proc";

impl Census {
    /// The census of a daemon starting now, with the programs of `tracer` attached: the
    /// sockets older than them listed in every namespace it covers (or, where sock_diag cannot,
    /// counted from their first move).
    /// Other namespaces are covered only if `every_namespace`. `attached_ns`: when the
    /// programs were first attached (by an earlier daemon, if their state was adopted).
    pub fn at_start(
        tracer: &Tracer,
        rule: LabelRule,
        bounds_ns: Vec<u64>,
        every_namespace: bool,
        attached_ns: u64,
    ) -> anyhow::Result<Self> {
        let started_ns = attached_ns;
        let own = sys::net_namespace_inode()?;
        let mut baseline = baseline::list_here(tracer, &rule, own).unwrap_or_else(|error| {
            log::warn!(
                "cannot list existing sockets with sock_diag ({error}): sockets older than \
                 tcpstated are not counted until they change state"
            );
            Baseline::default()
        });
        let listing = if every_namespace {
            enterable_namespaces()
        } else {
            None
        };
        let coverage = match listing {
            Some(listing) => {
                baseline.merge(baselines_elsewhere(tracer, &rule, own, &listing));
                Coverage::every(own, PROC.into(), &listing)
            }
            None => Coverage::own_only(own),
        };
        match tracer.maps.drain_first_seen() {
            Ok(cookies) => cookies
                .into_iter()
                .for_each(|cookie| baseline.first_seen(cookie)),
            Err(error) => log::warn!("cannot read the sockets first seen by the programs: {error}"),
        }
        log::debug!(
            "{} network namespaces covered, {} sockets older than tcpstated",
            coverage.len(),
            baseline.len()
        );
        Ok(Census::covering(
            rule, coverage, bounds_ns, started_ns, baseline,
        ))
    }
}

/// The host's network namespaces, if this process may enter them; else one log line says so,
/// and the polls cover its own namespace only.
fn enterable_namespaces() -> Option<Namespaces> {
    let entering = Home::here().and_then(|home| home.check_can_enter());
    if let Err(error) = entering {
        log::warn!(
            "tcpstated cannot enter other network namespaces ({error}; it needs CAP_SYS_ADMIN, \
             and CAP_SYS_PTRACE to open other users' processes' namespaces): timewait and \
             request sockets, accept queues, listen overflows and sockets older than tcpstated \
             are counted for its own network namespace only"
        );
        return None;
    }
    if let Ok(refused) = namespaces::refused_links(Path::new(PROC))
        && refused > 0
    {
        // With CAP_SYS_PTRACE only a security module or a sandbox refuses: not actionable.
        let level = if CapabilitySet::held_by_this_thread().contains(CAP_SYS_PTRACE) {
            log::Level::Debug
        } else {
            log::Level::Warn
        };
        log::log!(
            level,
            "{refused} processes of other users refuse tcpstated their network namespace (it \
             needs CAP_SYS_PTRACE): namespaces only they hold, with no bind mount, are not \
             polled (their timewait and request sockets and accept queues are not counted)"
        );
    }
    match namespaces::list(Path::new(PROC)) {
        Ok(listing) => Some(listing),
        Err(error) => {
            log::warn!(
                "cannot list the host's network namespaces ({error}): the polls cover \
                 tcpstated's own only"
            );
            None
        }
    }
}

/// The baselines of every namespace in `listing` but `own`, each listed from inside it on a
/// thread of its own (it moves between namespaces).
fn baselines_elsewhere(
    tracer: &Tracer,
    rule: &LabelRule,
    own: u32,
    listing: &Namespaces,
) -> Baseline {
    let list_all = || -> io::Result<Baseline> {
        let home = Home::here()?;
        let mut all = Baseline::default();
        for (inode, path) in listing.iter().filter(|(inode, _)| **inode != own) {
            let listed = home.enter(path, *inode).map(|inside| {
                let listed = baseline::list_here(tracer, rule, *inode);
                (inside, listed)
            });
            let listed = match listed {
                Ok((inside, listed)) => {
                    inside.leave()?;
                    listed
                }
                Err(error) => Err(error),
            };
            match listed {
                Ok(baseline) => all.merge(baseline),
                // Gone since it was listed, or cannot be entered (the polls say so, once).
                Err(error) => log::debug!(
                    "cannot list the sockets older than tcpstated in network namespace {inode} \
                     ({}): {error}; they are counted from their first move",
                    path.display()
                ),
            }
        }
        Ok(all)
    };
    let listed = thread::scope(|scope| {
        thread::Builder::new()
            .name("namespace baseline".into())
            .spawn_scoped(scope, list_all)
            .and_then(|lister| {
                lister
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
    });
    listed.unwrap_or_else(|error| {
        log::warn!("cannot list the sockets older than tcpstated in other namespaces: {error}");
        Baseline::default()
    })
}
