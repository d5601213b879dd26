//! Whose a cgroup v2 path is, read from the names kubelet, systemd and container runtimes give
//! the groups they make. Pure: the path is handed in.
//!
//! Shapes recognised (a socket's group may be a sub-group of these: the nearest one counts):
//! - Kubernetes, systemd driver: `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid
//!   with _ for ->.slice/<runtime>-<id>.scope` (Guaranteed pods sit directly under
//!   `kubepods.slice` as `kubepods-pod<uid>.slice`); `<runtime>` is `cri-containerd`, `crio`
//!   or `docker`. cgroupfs driver: `/kubepods/<qos>/pod<uid>/<id>`.
//! - Docker `docker-<id>.scope` or `/docker/<id>`; Podman `libpod-<id>.scope` or `libpod-<id>`.
//! - systemd units: the deepest `.service` or `.scope` (`/system.slice/nginx.service`).

/// Whose a cgroup is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A Kubernetes pod's group, or one of its containers'.
    Pod {
        uid: String,
        container_id: Option<String>,
    },
    /// A container outside Kubernetes (or one whose pod is not in the path).
    Container { id: String },
    /// A systemd unit: service or scope.
    Unit(String),
    /// The root group: the host itself.
    Host,
    /// A group of no known shape: its last component.
    Other(String),
}

/// Whose the group at `path` (as /proc/PID/cgroup shows it: `/` is the root) is.
pub fn owner(path: &str) -> Owner {
    // containerd's systemd-style name used with the cgroupfs driver is one directory:
    // `kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>`.
    let segments: Vec<&str> = path
        .split('/')
        .flat_map(|segment| segment.splitn(3, ':'))
        .filter(|s| !s.is_empty() && !matches!(*s, "cri-containerd" | "crio" | "docker"))
        .collect();
    if let Some(pod) = segments.iter().position(|s| pod_uid(s).is_some()) {
        let uid = pod_uid(segments[pod]).unwrap_or_default();
        let container_id = segments.get(pod + 1).and_then(|s| container_id(s));
        return Owner::Pod { uid, container_id };
    }
    if let Some(id) = segments.iter().rev().find_map(|s| container_id(s)) {
        return Owner::Container { id };
    }
    if let Some(unit) = segments
        .iter()
        .rev()
        .find(|s| s.ends_with(".service") || s.ends_with(".scope"))
    {
        return Owner::Unit((*unit).to_owned());
    }
    match segments.last() {
        None => Owner::Host,
        Some(last) => Owner::Other((*last).to_owned()),
    }
}

/// The pod UID a path segment names: `kubepods[-<qos>]-pod<uid>.slice` (systemd, `_` for `-`)
/// or `pod<uid>` (cgroupfs).
fn pod_uid(segment: &str) -> Option<String> {
    let uid = match segment.strip_suffix(".slice") {
        Some(slice) if slice.starts_with("kubepods") => {
            slice.rsplit_once("-pod")?.1.replace('_', "-")
        }
        Some(_) => return None,
        None => segment.strip_prefix("pod")?.to_owned(),
    };
    is_uid(&uid).then_some(uid)
}

/// `8-4-4-4-12` hexadecimal digits.
fn is_uid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The container ID a path segment names: `<runtime>-<id>.scope`, `libpod-<id>`, or a bare
/// 64-digit hexadecimal ID. A runtime's monitor (`crio-conmon-`, `libpod-conmon-`) is none.
fn container_id(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    let id = match name.rsplit_once('-') {
        Some((prefix, _)) if prefix.ends_with("conmon") => return None,
        Some((_, id)) => id,
        None => name,
    };
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c2e9a0b3d4c5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6";
    const UID: &str = "0b4e6a31-7f0c-4a8e-9d2b-1c3e5f7a9b0d";

    fn pod(container: Option<&str>) -> Owner {
        Owner::Pod {
            uid: UID.into(),
            container_id: container.map(Into::into),
        }
    }

    #[test]
    fn kubelet_groups_with_the_systemd_driver() {
        let slice_uid = UID.replace('-', "_");
        for (qos, runtime) in [
            ("besteffort", "cri-containerd"),
            ("burstable", "crio"),
            ("burstable", "docker"),
        ] {
            let path = format!(
                "/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{slice_uid}.slice/\
                 {runtime}-{ID}.scope"
            );
            assert_eq!(owner(&path), pod(Some(ID)), "{path}");
            // A sub-group the container made belongs to the container.
            assert_eq!(owner(&format!("{path}/worker")), pod(Some(ID)));
        }
        let guaranteed =
            format!("/kubepods.slice/kubepods-pod{slice_uid}.slice/cri-containerd-{ID}.scope");
        assert_eq!(owner(&guaranteed), pod(Some(ID)));
        let pod_only = format!("/kubepods.slice/kubepods-pod{slice_uid}.slice");
        assert_eq!(owner(&pod_only), pod(None));
        let colons = format!("/kubepods-besteffort-pod{slice_uid}.slice:cri-containerd:{ID}");
        assert_eq!(owner(&colons), pod(Some(ID)));
        let monitor =
            format!("/kubepods.slice/kubepods-pod{slice_uid}.slice/crio-conmon-{ID}.scope");
        assert_eq!(owner(&monitor), pod(None));
    }

    #[test]
    fn kubelet_groups_with_the_cgroupfs_driver() {
        assert_eq!(
            owner(&format!("/kubepods/besteffort/pod{UID}/{ID}")),
            pod(Some(ID))
        );
        assert_eq!(owner(&format!("/kubepods/pod{UID}/{ID}")), pod(Some(ID)));
    }

    #[test]
    fn containers_outside_kubernetes() {
        let container = Owner::Container { id: ID.into() };
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/libpod_parent/libpod-{ID}"),
            format!("/default/{ID}"),
        ] {
            assert_eq!(owner(&path), container, "{path}");
        }
        assert_eq!(
            owner(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            Owner::Unit(format!("libpod-conmon-{ID}.scope"))
        );
    }

    #[test]
    fn systemd_units_host_and_the_rest() {
        assert_eq!(
            owner("/system.slice/nginx.service"),
            Owner::Unit("nginx.service".into())
        );
        assert_eq!(
            owner("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service"),
            Owner::Unit("foo.service".into())
        );
        assert_eq!(
            owner("/user.slice/user-1000.slice/session-3.scope"),
            Owner::Unit("session-3.scope".into())
        );
        assert_eq!(owner("/"), Owner::Host);
        assert_eq!(owner(""), Owner::Host);
        assert_eq!(owner("/tcpstate-test/web"), Owner::Other("web".into()));
        // Almost a pod: not a UID.
        assert_eq!(
            owner("/kubepods/besteffort/podnotauid/x"),
            Owner::Other("x".into())
        );
    }
}
