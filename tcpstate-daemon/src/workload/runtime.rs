//! The names container runtimes keep on the host for a container ID: plain files a daemon can
//! read without credentials (README, "Workloads", lists them). Kubernetes names come from the
//! annotations the CRI runtimes write into each container's OCI config (containerd's
//! `io.kubernetes.cri.*`, CRI-O's and cri-dockerd's `io.kubernetes.pod.*`); a plain container's
//! name from Docker's or Podman's own state.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use serde_json::Value;

/// A Kubernetes container's names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodContainer {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// What the runtimes say about a container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerNames {
    pub kubernetes: Option<PodContainer>,
    /// The runtime's own name for it (Docker, Podman).
    pub name: Option<String>,
}

/// (namespace, pod, container) annotation keys: containerd's CRI plugin, then the kubelet's
/// labels that CRI-O copies into annotations and cri-dockerd into Docker labels.
const KUBERNETES_KEYS: [[&str; 3]; 2] = [
    [
        "io.kubernetes.cri.sandbox-namespace",
        "io.kubernetes.cri.sandbox-name",
        "io.kubernetes.cri.container-name",
    ],
    [
        "io.kubernetes.pod.namespace",
        "io.kubernetes.pod.name",
        "io.kubernetes.container.name",
    ],
];
/// containerd's mark of a pod's sandbox (pause) container, which has no container name.
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// The runtimes' state, under `root` (the host's `/`, or where a container mounts it).
#[derive(Clone, Debug)]
pub struct RuntimeState {
    root: PathBuf,
}

impl RuntimeState {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RuntimeState { root: root.into() }
    }

    /// What the runtimes on this host say about container `id`; an error names the file that
    /// could not be read or parsed (the caller falls back to the ID).
    pub fn names(&self, id: &str) -> io::Result<ContainerNames> {
        let mut names = ContainerNames::default();
        for config in self.oci_configs(id)? {
            let annotations = annotations(&read_json(&config)?);
            if let Some(kubernetes) = kubernetes_names(&annotations) {
                names.kubernetes = Some(kubernetes);
                return Ok(names);
            }
        }
        let docker = self.path(&format!("var/lib/docker/containers/{id}/config.v2.json"));
        if docker.exists() {
            let config = read_json(&docker)?;
            let labels = string_map(&config["Config"]["Labels"]);
            names.kubernetes = kubernetes_names(&labels);
            names.name = config["Name"]
                .as_str()
                .map(|name| name.trim_start_matches('/').to_owned());
            return Ok(names);
        }
        let podman = self.path("var/lib/containers/storage/overlay-containers/containers.json");
        if podman.exists() {
            let containers = read_json(&podman)?;
            names.name = containers
                .as_array()
                .into_iter()
                .flatten()
                .find(|container| container["id"] == id)
                .and_then(|container| container["names"][0].as_str())
                .map(str::to_owned);
        }
        Ok(names)
    }

    /// The OCI configs of container `id` the runtimes keep, most specific first.
    fn oci_configs(&self, id: &str) -> io::Result<Vec<PathBuf>> {
        let mut configs = Vec::new();
        // containerd's shims, any containerd namespace (`k8s.io` for Kubernetes).
        let tasks = self.path("run/containerd/io.containerd.runtime.v2.task");
        if let Ok(namespaces) = fs::read_dir(&tasks) {
            for namespace in namespaces.flatten() {
                configs.push(namespace.path().join(id).join("config.json"));
            }
        }
        // CRI-O (and Podman, whose config carries no Kubernetes names).
        configs.push(self.path(&format!(
            "run/containers/storage/overlay-containers/{id}/userdata/config.json"
        )));
        configs.push(self.path(&format!("run/crun/{id}/config.json")));
        // runc keeps the bundle's annotations as `k=v` labels and the bundle as `bundle=...`.
        for state in [
            format!("run/runc/{id}/state.json"),
            format!("run/docker/runtime-runc/moby/{id}/state.json"),
        ] {
            let state = self.path(&state);
            if state.exists() {
                let labels = read_json(&state)?["config"]["labels"].clone();
                if let Some(bundle) = labels
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .find_map(|label| label.strip_prefix("bundle="))
                {
                    configs.push(
                        self.path(bundle.trim_start_matches('/'))
                            .join("config.json"),
                    );
                }
            }
        }
        configs.retain(|config| config.exists());
        Ok(configs)
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }
}

fn read_json(path: &Path) -> io::Result<Value> {
    let text = fs::read(path)?;
    serde_json::from_slice(&text).map_err(|error| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {error}", path.display()),
        )
    })
}

/// An OCI config's annotations.
fn annotations(config: &Value) -> BTreeMap<String, String> {
    string_map(&config["annotations"])
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
        .collect()
}

/// The Kubernetes names annotations carry, if they carry a namespace and a pod.
fn kubernetes_names(annotations: &BTreeMap<String, String>) -> Option<PodContainer> {
    KUBERNETES_KEYS
        .iter()
        .find_map(|[namespace, pod, container]| {
            let container = match annotations.get(*container) {
                Some(name) => name.clone(),
                // The sandbox (pause) container holds the pod's network namespace.
                None if annotations.get(CONTAINER_TYPE).map(String::as_str) == Some("sandbox") => {
                    "POD".to_owned()
                }
                None => return None,
            };
            Some(PodContainer {
                namespace: annotations.get(*namespace)?.clone(),
                pod: annotations.get(*pod)?.clone(),
                container,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c2e9a0b3d4c5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6";

    struct Root(PathBuf);

    impl Root {
        fn new(name: &str) -> Root {
            let root = std::env::temp_dir()
                .join(format!("tcpstate-runtime-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(&root).unwrap();
            Root(root)
        }

        fn write(&self, relative: &str, text: &str) {
            let path = self.0.join(relative);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }

        fn state(&self) -> RuntimeState {
            RuntimeState::new(&self.0)
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn web() -> Option<PodContainer> {
        Some(PodContainer {
            namespace: "shop".into(),
            pod: "web-7d4b9".into(),
            container: "nginx".into(),
        })
    }

    #[test]
    fn containerd_cri_annotations_name_the_pod() {
        let root = Root::new("containerd");
        root.write(
            &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"),
            r#"{"annotations": {"io.kubernetes.cri.container-type": "container",
                "io.kubernetes.cri.sandbox-namespace": "shop",
                "io.kubernetes.cri.sandbox-name": "web-7d4b9",
                "io.kubernetes.cri.container-name": "nginx"}}"#,
        );
        assert_eq!(root.state().names(ID).unwrap().kubernetes, web());
        root.write(
            &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"),
            r#"{"annotations": {"io.kubernetes.cri.container-type": "sandbox",
                "io.kubernetes.cri.sandbox-namespace": "shop",
                "io.kubernetes.cri.sandbox-name": "web-7d4b9"}}"#,
        );
        let sandbox = root.state().names(ID).unwrap().kubernetes.unwrap();
        assert_eq!(sandbox.container, "POD");
    }

    #[test]
    fn cri_o_and_runc_bundles_carry_the_kubelets_labels() {
        let labels = r#"{"annotations": {"io.kubernetes.pod.namespace": "shop",
            "io.kubernetes.pod.name": "web-7d4b9", "io.kubernetes.container.name": "nginx"}}"#;
        let crio = Root::new("crio");
        crio.write(
            &format!("run/containers/storage/overlay-containers/{ID}/userdata/config.json"),
            labels,
        );
        assert_eq!(crio.state().names(ID).unwrap().kubernetes, web());
        let runc = Root::new("runc");
        runc.write("bundles/web/config.json", labels);
        // The bundle path is the host's: it is found under the root.
        runc.write(
            &format!("run/runc/{ID}/state.json"),
            r#"{"config": {"labels": ["a=b", "bundle=/bundles/web"]}}"#,
        );
        assert_eq!(runc.state().names(ID).unwrap().kubernetes, web());
    }

    #[test]
    fn docker_and_podman_give_their_names() {
        let docker = Root::new("docker");
        docker.write(
            &format!("var/lib/docker/containers/{ID}/config.v2.json"),
            r#"{"Name": "/cache", "Config": {"Labels": {"a": "b"}}}"#,
        );
        let names = docker.state().names(ID).unwrap();
        assert_eq!(
            (names.kubernetes, names.name.as_deref()),
            (None, Some("cache"))
        );
        let podman = Root::new("podman");
        podman.write(
            "var/lib/containers/storage/overlay-containers/containers.json",
            &format!(r#"[{{"id": "other", "names": ["x"]}}, {{"id": "{ID}", "names": ["db"]}}]"#),
        );
        assert_eq!(
            podman.state().names(ID).unwrap().name.as_deref(),
            Some("db")
        );
    }

    #[test]
    fn a_broken_state_file_is_an_error_naming_it_and_an_unknown_id_has_no_names() {
        let root = Root::new("broken");
        root.write(
            &format!("var/lib/docker/containers/{ID}/config.v2.json"),
            "{not json",
        );
        let error = root.state().names(ID).unwrap_err();
        assert!(error.to_string().contains("config.v2.json"), "{error}");
        assert_eq!(
            root.state().names("feed").unwrap(),
            ContainerNames::default()
        );
    }
}
