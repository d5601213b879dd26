//! Whose a socket is: the cgroup the kernel program read from it, decoded into the names people
//! use (Kubernetes namespace, pod and container; systemd unit; container name), with a hard
//! bound on how many distinct workloads get a name of their own.

pub mod cgroup;
pub mod runtime;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use cgroup::Owner;
use runtime::RuntimeState;

/// A workload's label values: `namespace` and `pod` for Kubernetes (empty otherwise),
/// `container` always set (the container, unit or group name).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Workload {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl Workload {
    fn named(container: impl Into<String>) -> Self {
        Workload {
            namespace: String::new(),
            pod: String::new(),
            container: container.into(),
        }
    }

    /// Past the bound on named workloads.
    pub fn other() -> Self {
        Workload::named("other")
    }

    /// The host's own processes (the root cgroup) and sockets no cgroup was read for.
    pub fn host() -> Self {
        Workload::named("host")
    }
}

/// Decodes the cgroup inodes the kernel program reads into workloads, caching each.
pub struct Resolver {
    /// The cgroup v2 hierarchy as this process sees it.
    cgroup_root: PathBuf,
    runtime: RuntimeState,
    /// Group paths by inode, from the last walk of the hierarchy.
    paths: HashMap<u32, String>,
    /// Walks of the hierarchy so far, and the last one's number when each inode was missing.
    walks: u64,
    missing_since: HashMap<u32, u64>,
    named: BTreeMap<u32, Workload>,
    /// Distinct workloads with a name of their own, and the bound on them.
    distinct: BTreeMap<Workload, usize>,
    max_workloads: usize,
    /// Groups whose workload folded into `other`.
    pub folded: u64,
    /// When the hierarchy was last walked, and since when each named group has been missing
    /// from it.
    last_walk: Option<Instant>,
    gone_since: HashMap<u32, Instant>,
    /// Groups gone for good, whose figures are no longer exported.
    retired: HashSet<u32>,
}

/// How often the hierarchy is walked to notice groups that are gone.
const REFRESH: Duration = Duration::from_secs(60);
/// How long a gone group's figures stay exported (a few scrapes see its last values) before
/// its workload is retired and its name's place in `--workloads.max` is freed.
const GRACE: Duration = Duration::from_secs(300);

impl Resolver {
    /// `host_root`: where the host's `/` is (the runtimes' state); `cgroup_root`: where the
    /// host's cgroup v2 hierarchy is (default: this process's cgroup2 mount);
    /// `max_workloads`: how many distinct workloads get a name of their own.
    pub fn new(
        host_root: &Path,
        cgroup_root: Option<&Path>,
        max_workloads: usize,
    ) -> io::Result<Self> {
        let cgroup_root =
            match cgroup_root {
                Some(root) if root.join("cgroup.procs").exists() => root.to_owned(),
                Some(root) => {
                    return Err(io::Error::other(format!(
                        "{} is no cgroup v2 hierarchy (no cgroup.procs in it)",
                        root.display()
                    )));
                }
                None => cgroup2_mount(&fs::read_to_string("/proc/self/mountinfo")?).ok_or_else(
                    || io::Error::other("no cgroup v2 hierarchy is mounted (fstype cgroup2)"),
                )?,
            };
        Ok(Resolver::with_cgroup_root(
            cgroup_root,
            host_root,
            max_workloads,
        ))
    }

    fn with_cgroup_root(cgroup_root: PathBuf, host_root: &Path, max_workloads: usize) -> Self {
        Resolver {
            cgroup_root,
            runtime: RuntimeState::new(host_root),
            paths: HashMap::new(),
            walks: 0,
            missing_since: HashMap::new(),
            named: BTreeMap::new(),
            distinct: BTreeMap::new(),
            max_workloads,
            folded: 0,
            last_walk: None,
            gone_since: HashMap::new(),
            retired: HashSet::new(),
        }
    }

    /// Whether group `cgroup` is gone for good: its figures are no longer exported.
    pub fn is_retired(&self, cgroup: u32) -> bool {
        self.retired.contains(&cgroup)
    }

    /// Retires the named groups gone for `GRACE` that no socket counted `in_use` still has (a
    /// pod ended, its last timewait sockets too): their series go from /metrics and their
    /// workloads' places in `--workloads.max` are freed. Walks the hierarchy at most every
    /// `REFRESH`.
    pub fn retire_gone(&mut self, in_use: &BTreeSet<u32>, now: Instant) {
        if self
            .last_walk
            .is_none_or(|at| now.duration_since(at) >= REFRESH)
        {
            self.walk_again(now);
        }
        let due: Vec<u32> = self
            .gone_since
            .iter()
            .filter(|(cgroup, since)| {
                now.duration_since(**since) >= GRACE && !in_use.contains(cgroup)
            })
            .map(|(cgroup, _)| *cgroup)
            .collect();
        for cgroup in due {
            self.gone_since.remove(&cgroup);
            self.retired.insert(cgroup);
            let Some(workload) = self.named.remove(&cgroup) else {
                continue;
            };
            if let Some(groups) = self.distinct.get_mut(&workload) {
                *groups -= 1;
                if *groups == 0 {
                    self.distinct.remove(&workload);
                }
            }
        }
    }

    /// Walks the hierarchy, noting which named groups are missing from it.
    fn walk_again(&mut self, now: Instant) {
        self.paths = walk(&self.cgroup_root);
        self.walks += 1;
        self.last_walk = Some(now);
        for cgroup in self.named.keys() {
            if self.paths.contains_key(cgroup) {
                self.gone_since.remove(cgroup);
            } else {
                self.gone_since.entry(*cgroup).or_insert(now);
            }
        }
    }

    /// The workload of the cgroup with inode `cgroup` (0: none was read).
    pub fn workload(&mut self, cgroup: u32) -> Workload {
        if cgroup == 0 {
            return Workload::host();
        }
        if let Some(workload) = self.named.get(&cgroup) {
            return workload.clone();
        }
        let Some(path) = self.path(cgroup) else {
            // Gone before it was first seen (a short-lived group): its inode.
            return Workload::named(format!("cgroup-{cgroup}"));
        };
        let workload = self.bounded(self.decode(&path));
        self.named.insert(cgroup, workload.clone());
        workload
    }

    /// The groups of the hierarchy, walked now, whose workload `matches` (named without the
    /// bound: for the event stream's filter, not for labels).
    pub fn groups_matching(&mut self, mut matches: impl FnMut(&Workload) -> bool) -> Vec<u32> {
        self.walk_again(Instant::now());
        let paths: Vec<(u32, String)> = self.paths.iter().map(|(c, p)| (*c, p.clone())).collect();
        paths
            .into_iter()
            .filter(|(_, path)| matches(&self.decode(path)))
            .map(|(cgroup, _)| cgroup)
            .collect()
    }

    /// The path of group `cgroup`, walking the hierarchy again (once per inode missing since
    /// the last walk) when it is not known yet.
    fn path(&mut self, cgroup: u32) -> Option<String> {
        if let Some(path) = self.paths.get(&cgroup) {
            return Some(path.clone());
        }
        if self.missing_since.get(&cgroup) == Some(&self.walks) {
            return None;
        }
        self.walk_again(Instant::now());
        let found = self.paths.get(&cgroup).cloned();
        if found.is_none() {
            self.missing_since.insert(cgroup, self.walks);
        }
        found
    }

    fn decode(&self, path: &str) -> Workload {
        match cgroup::owner(path) {
            Owner::Pod { uid, container_id } => {
                let names = container_id
                    .as_deref()
                    .map(|id| self.runtime_names(id))
                    .unwrap_or_default();
                match names.kubernetes {
                    Some(names) => Workload {
                        namespace: names.namespace,
                        pod: names.pod,
                        container: names.container,
                    },
                    // Joined with kube_pod_info{uid} by the recording rule of docs/fleet.md.
                    None => Workload {
                        namespace: String::new(),
                        pod: format!("uid:{uid}"),
                        container: container_id.map_or_else(|| "POD".to_owned(), |id| short(&id)),
                    },
                }
            }
            Owner::Container { id } => {
                let names = self.runtime_names(&id);
                match (names.kubernetes, names.name) {
                    (Some(names), _) => Workload {
                        namespace: names.namespace,
                        pod: names.pod,
                        container: names.container,
                    },
                    (None, Some(name)) => Workload::named(name),
                    (None, None) => Workload::named(short(&id)),
                }
            }
            Owner::Unit(unit) => Workload::named(unit),
            Owner::Host => Workload::host(),
            Owner::Other(name) => Workload::named(name),
        }
    }

    fn runtime_names(&self, id: &str) -> runtime::ContainerNames {
        self.runtime.names(id).unwrap_or_else(|error| {
            log::warn!(
                "cannot read the container runtime's state for {}: {error}",
                short(id)
            );
            Default::default()
        })
    }

    /// `workload`, or `other` once `max_workloads` distinct ones have a name.
    fn bounded(&mut self, workload: Workload) -> Workload {
        if workload == Workload::host() {
            return workload;
        }
        if let Some(groups) = self.distinct.get_mut(&workload) {
            *groups += 1;
            return workload;
        }
        if self.distinct.len() >= self.max_workloads {
            if self.folded == 0 {
                log::warn!(
                    "more than {} workloads: further ones are labelled container=\"other\" \
                     (raise --workloads.max; tcpstate_workloads_folded counts them)",
                    self.max_workloads
                );
            }
            self.folded += 1;
            return Workload::other();
        }
        self.distinct.insert(workload.clone(), 1);
        workload
    }
}

/// The index of a retired group's figures: not exported.
pub const RETIRED: u32 = u32::MAX - 1;

/// The workloads of one scrape: each cgroup seen, by the workload it belongs to. Groups of one
/// workload (a pod's containers restarted, groups folded into `other`) share its index, so
/// their series add up instead of repeating a label set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadTable {
    index: BTreeMap<u32, u32>,
    workloads: Vec<Workload>,
    /// Distinct workloads named so far, and groups folded into `other` (the resolver's).
    pub named: usize,
    pub folded: u64,
}

impl WorkloadTable {
    /// The table of `cgroups`, resolved with `resolver`.
    pub fn build(resolver: &mut Resolver, cgroups: impl IntoIterator<Item = u32>) -> Self {
        let mut table = WorkloadTable::default();
        let mut seen: BTreeMap<Workload, u32> = BTreeMap::new();
        for cgroup in cgroups {
            if table.index.contains_key(&cgroup) {
                continue;
            }
            if resolver.is_retired(cgroup) {
                table.index.insert(cgroup, RETIRED);
                continue;
            }
            let workload = resolver.workload(cgroup);
            let next = table.workloads.len() as u32;
            let index = *seen.entry(workload.clone()).or_insert(next);
            if index == next {
                table.workloads.push(workload);
            }
            table.index.insert(cgroup, index);
        }
        table.named = resolver.distinct.len();
        table.folded = resolver.folded;
        table
    }

    /// A table of `workloads` already known, by cgroup (for tests).
    pub fn of(workloads: &[(u32, Workload)]) -> Self {
        let mut table = WorkloadTable::default();
        for (cgroup, workload) in workloads {
            let index = match table.workloads.iter().position(|w| w == workload) {
                Some(index) => index as u32,
                None => {
                    table.workloads.push(workload.clone());
                    table.workloads.len() as u32 - 1
                }
            };
            table.index.insert(*cgroup, index);
        }
        table.named = table.workloads.len();
        table
    }

    /// The index of `cgroup`'s workload, which the labels then carry instead of the cgroup.
    pub fn index(&self, cgroup: u32) -> u32 {
        self.index.get(&cgroup).copied().unwrap_or(u32::MAX)
    }

    /// The workload at `index` (`host` for one not in the table).
    pub fn workload(&self, index: u32) -> Workload {
        self.workloads
            .get(index as usize)
            .cloned()
            .unwrap_or_else(Workload::host)
    }
}

/// A container ID as people read it: its first 12 digits.
fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

/// Where the cgroup v2 hierarchy is mounted, from a mountinfo listing.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, filesystem) = line.split_once(" - ")?;
        (filesystem.split_whitespace().next()? == "cgroup2")
            .then(|| mount.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// Every group under `root`, by inode: its path relative to `root`, as `/proc/PID/cgroup`
/// writes it.
fn walk(root: &Path) -> HashMap<u32, String> {
    let mut paths = HashMap::new();
    let mut pending = vec![(root.to_owned(), String::from("/"))];
    while let Some((directory, path)) = pending.pop() {
        if let Ok(metadata) = fs::metadata(&directory) {
            paths.insert(metadata.ino() as u32, path.clone());
        }
        let Ok(entries) = fs::read_dir(&directory) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = if path == "/" {
                    format!("/{name}")
                } else {
                    format!("{path}/{name}")
                };
                pending.push((entry.path(), child));
            }
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_in_a_hybrid_hierarchy() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
";
        assert_eq!(
            cgroup2_mount(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/vda rw"), None);
    }

    #[test]
    fn groups_resolve_by_inode_and_the_bound_folds_the_rest() {
        // A directory tree stands for the hierarchy: its walk is the same.
        let root = std::env::temp_dir().join(format!("tcpstate-cgroups-{}", std::process::id()));
        let groups = ["system.slice/web.service", "system.slice/db.service"].map(|g| root.join(g));
        for group in &groups {
            fs::create_dir_all(group).unwrap();
        }
        let inode = |group: &Path| fs::metadata(group).unwrap().ino() as u32;
        let mut resolver = Resolver::with_cgroup_root(root.clone(), Path::new("/nonexistent"), 1);
        assert_eq!(resolver.workload(inode(&root)), Workload::host());
        assert_eq!(resolver.workload(0), Workload::host());
        let web = inode(&groups[0]);
        assert_eq!(resolver.workload(web), Workload::named("web.service"));
        assert_eq!(
            resolver.workload(inode(&groups[1])),
            Workload::other(),
            "one at most"
        );
        assert_eq!(resolver.folded, 1);
        fs::remove_dir_all(&root).unwrap();
        // Cached once resolved; one never seen before and gone is named by its inode, and the
        // hierarchy is walked again once for it.
        assert_eq!(resolver.workload(web), Workload::named("web.service"));
        let walks = resolver.walks;
        let gone = u32::MAX - 1;
        assert_eq!(resolver.workload(gone).container, format!("cgroup-{gone}"));
        assert_eq!(resolver.workload(gone).container, format!("cgroup-{gone}"));
        assert_eq!(resolver.walks, walks + 1);
    }

    #[test]
    fn groups_are_found_by_their_workload() {
        let root = std::env::temp_dir().join(format!("tcpstate-match-{}", std::process::id()));
        let groups = ["system.slice/web.service", "system.slice/db.service"].map(|g| root.join(g));
        for group in &groups {
            fs::create_dir_all(group).unwrap();
        }
        let web = fs::metadata(&groups[0]).unwrap().ino() as u32;
        // A bound of one name does not hide the others from a filter.
        let mut resolver = Resolver::with_cgroup_root(root.clone(), Path::new("/nonexistent"), 1);
        resolver.workload(fs::metadata(&groups[1]).unwrap().ino() as u32);
        let found = resolver.groups_matching(|workload| workload.container == "web.service");
        assert_eq!(found, [web]);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn gone_groups_retire_after_the_grace_unless_sockets_still_count_them() {
        let root = std::env::temp_dir().join(format!("tcpstate-retire-{}", std::process::id()));
        let groups = ["a.service", "b.service", "c.service"].map(|g| root.join(g));
        for group in &groups {
            fs::create_dir_all(group).unwrap();
        }
        let [a, b, c] = groups
            .clone()
            .map(|group| fs::metadata(group).unwrap().ino() as u32);
        let mut resolver = Resolver::with_cgroup_root(root.clone(), Path::new("/nonexistent"), 2);
        assert_eq!(resolver.workload(a).container, "a.service");
        assert_eq!(resolver.workload(b).container, "b.service");
        assert_eq!(resolver.workload(c), Workload::other(), "two at most");
        fs::remove_dir(&groups[0]).unwrap();
        fs::remove_dir(&groups[1]).unwrap();
        let start = Instant::now();
        resolver.retire_gone(&BTreeSet::new(), start + REFRESH);
        assert!(!resolver.is_retired(a), "within the grace");
        // `b` still has sockets counted: it stays.
        resolver.retire_gone(&BTreeSet::from([b]), start + REFRESH + GRACE);
        assert!(resolver.is_retired(a) && !resolver.is_retired(b));
        let table = WorkloadTable::build(&mut resolver, [a, b]);
        assert_eq!((table.index(a), table.named), (RETIRED, 1));
        // `a`'s place is free: a new workload gets a name.
        let d = root.join("d.service");
        fs::create_dir(&d).unwrap();
        let d = fs::metadata(&d).unwrap().ino() as u32;
        assert_eq!(resolver.workload(d).container, "d.service");
        fs::remove_dir_all(&root).unwrap();
    }
}
