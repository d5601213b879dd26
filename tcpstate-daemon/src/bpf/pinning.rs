//! The kernel state pinned in the BPF filesystem, so that a restarted daemon adopts it:
//! `<pin path>/v<layout>-<maps>-<digest>/` holds the maps, the programs, their links (which
//! keep them attached while no daemon runs) and the daemon's own figures. `<digest>` covers the
//! embedded object and every load-time setting, so a daemon adopts whole only programs and maps
//! it would have made itself; `<maps>` covers what the maps hold (their definitions and the
//! histogram's bounds), so a daemon whose programs differ (an upgrade, other ports) keeps the
//! maps of a state with the same `<maps>` and swaps the programs. Anything else under the pin
//! path is removed. The pin path's directory is locked (flock) by the daemon using it.
//! docs/restarts.md tells the whole story.

use std::{
    fs::{self, File, TryLockError},
    io,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// The pinned state's layout: bump it with any change to what the maps' entries mean that
/// their definitions do not show (a key's or record's fields, a counter's index), to the
/// directory's layout or to the kept figures' encoding (`crate::kept`). A daemon never adopts
/// nor continues a state of another layout.
pub const LAYOUT_VERSION: u32 = 2;

/// bpffs' magic in `statfs`; here read from the mount table instead.
const BPF_FS_TYPE: &str = "bpf";

/// Subdirectories and files of a pinned state.
pub const MAPS: &str = "maps";
pub const PROGRAMS: &str = "programs";
pub const LINKS: &str = "links";
pub const FIGURES: &str = "figures";

/// `--bpf.pin-path` and `--bpf.persist`.
#[derive(Clone, Debug)]
pub struct PinSettings {
    pub path: PathBuf,
    /// Keep the state pinned for the next daemon; without, the state is unpinned as soon as
    /// it is adopted or made, and ends with this process.
    pub persist: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "another tcpstated is using the pinned state at {path} (it holds its lock): stop it \
         first, or give this one another --bpf.pin-path"
    )]
    InUse { path: PathBuf },
    #[error("cannot use the pin path {path}")]
    Unusable {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
}

/// The pin path, locked by this daemon for as long as it lives.
#[derive(Debug)]
pub struct PinRoot {
    path: PathBuf,
    _lock: File,
}

impl PinRoot {
    /// The pin path of `settings`, locked; `None` when nothing is to be pinned or adopted there:
    /// no BPF filesystem (one warning says what to run), or, without persistence, nothing
    /// pinned or another daemon's state.
    pub fn open(settings: &PinSettings) -> Result<Option<PinRoot>, PinError> {
        let path = &settings.path;
        let unusable = |error| PinError::Unusable {
            path: path.clone(),
            error,
        };
        if !settings.persist && !path.exists() {
            return Ok(None);
        }
        if !is_on_bpffs(path).map_err(unusable)? {
            log::warn!(
                "{} is not on a BPF filesystem: nothing is kept across restarts (counters start \
                 from 0 at each start). Mount one (`mount -t bpf bpf /sys/fs/bpf`; systemd \
                 does at boot), give --bpf.pin-path on one, or pass --no-bpf.persist to silence \
                 this",
                path.display()
            );
            return Ok(None);
        }
        fs::create_dir_all(path).map_err(unusable)?;
        let lock = File::open(path).map_err(unusable)?;
        match lock.try_lock() {
            Ok(()) => Ok(Some(PinRoot {
                path: path.clone(),
                _lock: lock,
            })),
            Err(TryLockError::WouldBlock) if !settings.persist => {
                log::info!(
                    "another tcpstated holds the pinned state at {}: this one leaves it alone",
                    path.display()
                );
                Ok(None)
            }
            Err(TryLockError::WouldBlock) => Err(PinError::InUse { path: path.clone() }),
            Err(TryLockError::Error(error)) => Err(unusable(error)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes everything under the pin path but the state `keep` (unpinning detaches the
    /// programs of a state no daemon can use: they would keep counting for nobody). One log
    /// line for each; `own` is this daemon's state, unpinned because it does not persist.
    pub fn remove_all_but(&self, keep: Option<&str>, own: &str) {
        let Ok(entries) = fs::read_dir(&self.path) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if keep.is_some_and(|keep| name == keep) {
                continue;
            }
            let path = entry.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match removed {
                Ok(()) if name == own => log::info!(
                    "unpinned the state {} (--no-bpf.persist): it ends with this daemon",
                    path.display()
                ),
                Ok(()) => log::info!("{}", removal_message(&name.to_string_lossy(), &path)),
                Err(error) => log::warn!(
                    "cannot remove {} from the pin path ({error}): remove it by hand",
                    path.display()
                ),
            }
        }
    }
}

impl PinRoot {
    /// Another state whose maps a daemon of state `name` can keep: the same layout and maps
    /// part of the name (see the module's doc), another digest.
    pub fn compatible_state(&self, name: &str) -> Option<PathBuf> {
        let maps_part = maps_part(name)?;
        fs::read_dir(&self.path)
            .ok()?
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .find(|other| other != name && maps_part_of(other) == Some(maps_part))
            .map(|other| self.path.join(other))
    }
}

/// `v<layout>-<maps>` of a state's name.
fn maps_part(name: &str) -> Option<&str> {
    let (maps_part, _digest) = name.rsplit_once('-')?;
    maps_part.starts_with('v').then_some(maps_part)
}

fn maps_part_of(name: &str) -> Option<&str> {
    maps_part(name).filter(|part| part.matches('-').count() == 1)
}

/// What the log says of a removed entry.
fn removal_message(name: &str, path: &Path) -> String {
    match name.strip_prefix('v').and_then(|rest| rest.split_once('-')) {
        Some((layout, _)) if layout == LAYOUT_VERSION.to_string() => format!(
            "removed the pinned state {} of another build or configuration of tcpstated \
             whose maps differ (their sizes, the buckets, or what they hold): its counters are \
             not continued",
            path.display()
        ),
        Some((layout, _)) => format!(
            "removed the pinned state {} of layout {layout} (this tcpstated uses layout \
             {LAYOUT_VERSION}): its counters are not continued",
            path.display()
        ),
        None => format!(
            "removed {}: not a state tcpstated pinned (or one it was pinning when it stopped)",
            path.display()
        ),
    }
}

/// The name of the state made by this build with this configuration: `maps` is what the maps
/// hold (their definitions, the histogram's bounds), `whole` the embedded object and every
/// load-time setting.
pub fn state_name(maps: &[&[u8]], whole: &[&[u8]]) -> String {
    format!(
        "v{LAYOUT_VERSION}-{:016x}-{:016x}",
        digest(maps),
        digest(whole)
    )
}

fn digest(parts: &[&[u8]]) -> u64 {
    let mut bytes = Vec::new();
    for part in parts {
        bytes.extend_from_slice(&(part.len() as u64).to_le_bytes());
        bytes.extend_from_slice(part);
    }
    super::figure_store::fnv1a(&bytes)
}

/// Whether `path`, or the nearest directory above it that exists, is on a BPF filesystem:
/// the longest mount point above it in the mount table.
fn is_on_bpffs(path: &Path) -> io::Result<bool> {
    let mut existing = path;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    let existing = existing.canonicalize()?;
    let mounts = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mount_type(&mounts, &existing) == Some(BPF_FS_TYPE))
}

/// The file system type of the mount `path` is under, from a `mountinfo` listing (the last of
/// the longest mount points, as later mounts hide earlier ones).
fn mount_type<'a>(mountinfo: &'a str, path: &Path) -> Option<&'a str> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let mount_point = fields.nth(4)?;
            let mut rest = fields.skip_while(|field| *field != "-");
            let fs_type = rest.nth(1)?;
            let mount_point = unescape(mount_point);
            path.starts_with(&mount_point)
                .then_some((mount_point.len(), fs_type))
        })
        .fold(
            None,
            |best: Option<(usize, &str)>, (len, fs_type)| match best {
                Some((best_len, _)) if best_len > len => best,
                _ => Some((len, fs_type)),
            },
        )
        .map(|(_, fs_type)| fs_type)
}

/// `mountinfo` writes a space, tab, newline and backslash as octal escapes.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Where a pinned state keeps its part `part` named `name`.
pub fn pin_of(state: &Path, part: &str, name: &str) -> PathBuf {
    state.join(part).join(name)
}

/// The name the object's map `name` is pinned under: its own, but bpffs refuses a dot, and the
/// one data section the daemon writes, `.bss` (the event stream's `TRACE_CONTROL`), goes by
/// its global's name.
pub fn map_pin_name(name: &str) -> &str {
    match name {
        tcpstate_common::map::TRACE_CONTROL => "TRACE_CONTROL",
        name => name,
    }
}

/// Makes the directories of a state being pinned at `state`.
pub fn make_state_dirs(state: &Path) -> anyhow::Result<()> {
    for part in [MAPS, PROGRAMS, LINKS] {
        fs::create_dir_all(state.join(part))
            .with_context(|| format!("cannot make {}", state.join(part).display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw
40 23 0:33 / /sys/fs/bpf rw,nosuid shared:15 - bpf bpf rw,mode=700
41 22 0:34 / /tmp/a\\040b rw - bpf bpf rw
";

    #[test]
    fn the_longest_mount_point_decides() {
        assert_eq!(
            mount_type(MOUNTINFO, Path::new("/sys/fs/bpf/tcpstate")),
            Some("bpf")
        );
        assert_eq!(
            mount_type(MOUNTINFO, Path::new("/sys/fs/bpfx")),
            Some("sysfs")
        );
        assert_eq!(mount_type(MOUNTINFO, Path::new("/var/lib")), Some("ext4"));
        assert_eq!(mount_type(MOUNTINFO, Path::new("/tmp/a b/x")), Some("bpf"));
    }

    #[test]
    fn state_names_follow_every_byte_and_the_layout() {
        let name = state_name(&[b"maps"], &[b"object", b"config"]);
        assert!(name.starts_with(&format!("v{LAYOUT_VERSION}-")));
        assert_eq!(name, state_name(&[b"maps"], &[b"object", b"config"]));
        assert_ne!(name, state_name(&[b"maps"], &[b"object", b"confih"]));
        // Parts are delimited: moving a byte across a boundary is another configuration.
        assert_ne!(name, state_name(&[b"maps"], &[b"objectc", b"onfig"]));
    }

    #[test]
    fn states_with_the_same_maps_are_compatible() {
        let name = state_name(&[b"maps"], &[b"object"]);
        let upgraded = state_name(&[b"maps"], &[b"object 2"]);
        let other_maps = state_name(&[b"maps 2"], &[b"object"]);
        assert_eq!(maps_part_of(&name), maps_part_of(&upgraded));
        assert_ne!(maps_part_of(&name), maps_part_of(&other_maps));
        // Layout 1 named states v1-<digest>: never compatible.
        assert_eq!(maps_part_of("v1-00000000000000ff"), None);
        assert_eq!(maps_part_of("partial-v2-01-02"), None);
    }

    #[test]
    fn removals_say_why() {
        let path = Path::new("/p/x");
        assert!(removal_message("v0-00ff", path).contains("layout 0"));
        let name = state_name(&[b"m"], &[b"x"]);
        assert!(removal_message(&name, path).contains("another build"));
        assert!(removal_message("junk", path).contains("not a state"));
    }
}
