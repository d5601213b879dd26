//! Owners for the tests' sockets: cgroup v2 groups the test process moves into (a socket's
//! owner is fixed when it is created), and a real runc container.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use tcpstate_testkit::Exposition;

use crate::support::run_checked;

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup/unified` on a hybrid host).
pub fn cgroup2_root() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find_map(|line| {
            let (mount, filesystem) = line.split_once(" - ")?;
            let mount_point = mount.split_whitespace().nth(4)?;
            (filesystem.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .expect("a cgroup v2 hierarchy is mounted")
}

/// This process's cgroup v2 path (`0::<path>` in /proc/self/cgroup).
fn own_group() -> String {
    fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("0::").map(str::to_owned))
        .expect("a cgroup v2 line in /proc/self/cgroup")
}

/// Groups of the test's own, made under the cgroup v2 root and removed (with their parents made
/// here) when dropped, after the test process has moved back to where it was.
pub struct Groups {
    root: PathBuf,
    home: String,
    made: Vec<PathBuf>,
}

impl Groups {
    pub fn new() -> Groups {
        Groups {
            root: cgroup2_root(),
            home: own_group(),
            made: Vec::new(),
        }
    }

    /// Makes the group at `path` (as /proc/PID/cgroup writes it).
    pub fn make(&mut self, path: &str) {
        let mut directory = self.root.clone();
        for part in path.split('/').filter(|part| !part.is_empty()) {
            directory.push(part);
            if !directory.exists() {
                fs::create_dir(&directory)
                    .unwrap_or_else(|error| panic!("mkdir {}: {error}", directory.display()));
                self.made.push(directory.clone());
            }
        }
    }

    /// Runs `make_sockets` with the whole test process in group `path`: the sockets it creates
    /// belong to that group for good. Then back home.
    pub fn within<T>(&self, path: &str, make_sockets: impl FnOnce() -> T) -> T {
        self.enter(path);
        let made = make_sockets();
        self.enter(&self.home);
        made
    }

    fn enter(&self, path: &str) {
        let procs = self
            .root
            .join(path.trim_start_matches('/'))
            .join("cgroup.procs");
        fs::write(&procs, std::process::id().to_string())
            .unwrap_or_else(|error| panic!("joining {}: {error}", procs.display()));
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        self.enter(&self.home.clone());
        for directory in self.made.iter().rev() {
            let _ = fs::remove_dir(directory);
        }
    }
}

/// A 64-digit container ID made of `digit`.
pub fn container_id(digit: char) -> String {
    std::iter::repeat_n(digit, 64).collect()
}

/// A Kubernetes pod UID made of `digit`.
pub fn pod_uid(digit: char) -> String {
    [8, 4, 4, 4, 12]
        .map(|length| std::iter::repeat_n(digit, length).collect::<String>())
        .join("-")
}

/// kubelet's group for a container of a best-effort pod, with the systemd driver and containerd.
pub fn kubelet_group(uid: &str, id: &str) -> String {
    let slice_uid = uid.replace('-', "_");
    format!(
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{slice_uid}.slice/\
         cri-containerd-{id}.scope"
    )
}

/// `tcpstate_transitions_total` of `port` for the workload `(namespace, pod, container)`, by
/// (role, from, to).
pub fn workload_transitions(
    scrape: &Exposition,
    port: u16,
    (namespace, pod, container): (&str, &str, &str),
) -> tcpstate_testkit::TransitionCounts {
    let port = port.to_string();
    scrape.transitions(&[
        ("port", &port),
        ("namespace", namespace),
        ("pod", pod),
        ("container", container),
    ])
}

/// A real runc container (busybox-static), deleted when dropped with the groups runc made.
pub struct Container {
    id: String,
    bundle: PathBuf,
    group: String,
}

impl Container {
    /// Starts `args` in container `id` (runc's default root, `/run/runc`), in the network
    /// namespace bind-mounted at `netns`, in the cgroup `group`, with `annotations`.
    pub fn run(
        id: &str,
        netns: &Path,
        group: &str,
        annotations: &[(&str, &str)],
        args: &[&str],
    ) -> Container {
        let bundle = std::env::temp_dir().join(format!("tcpstate-bundle-{}", &id[..12]));
        let _ = fs::remove_dir_all(&bundle);
        let rootfs = bundle.join("rootfs");
        for directory in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
            fs::create_dir_all(rootfs.join(directory)).unwrap();
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .expect("busybox-static (Debian package; cargo xtask setup installs it)");
        for applet in ["sh", "nc", "sleep", "cat"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        run_checked(Command::new("runc").args(["spec", "--bundle"]).arg(&bundle));
        let config_path = bundle.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_slice(&fs::read(&config_path).unwrap()).unwrap();
        config["process"]["terminal"] = false.into();
        config["process"]["args"] = args.into();
        config["root"] = serde_json::json!({ "path": rootfs, "readonly": true });
        for namespace in config["linux"]["namespaces"].as_array_mut().unwrap() {
            if namespace["type"] == "network" {
                namespace["path"] = netns.to_string_lossy().as_ref().into();
            }
        }
        config["linux"]["cgroupsPath"] = group.into();
        config["annotations"] = annotations
            .iter()
            .map(|(key, value)| (key.to_string(), serde_json::Value::from(*value)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let _ = Command::new("runc").args(["delete", "-f", id]).output();
        // The container's process inherits runc's stdout and stderr: files, not pipes, or a
        // reader would wait for the container to end.
        let log = bundle.join("runc.log");
        let started = Command::new("runc")
            .args(["run", "-d", "--bundle"])
            .arg(&bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .status()
            .expect("runc (Debian package runc; cargo xtask setup installs it)");
        assert!(
            started.success(),
            "runc run: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        Container {
            id: id.to_owned(),
            bundle,
            group: group.to_owned(),
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "-f", &self.id])
            .output();
        // runc made the group, and its parents, in every hierarchy (v1 controllers too).
        for hierarchy in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let mut directory = hierarchy.path().join(self.group.trim_start_matches('/'));
            // runc removes the leaf itself; a parent still in use stays.
            while directory.starts_with(hierarchy.path()) && directory != hierarchy.path() {
                match fs::remove_dir(&directory) {
                    Err(error) if error.kind() != std::io::ErrorKind::NotFound => break,
                    _ => {}
                }
                directory.pop();
            }
        }
        let _ = fs::remove_dir_all(&self.bundle);
    }
}
