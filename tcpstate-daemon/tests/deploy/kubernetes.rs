//! The Kubernetes manifests keep to capabilities.

use crate::read;
use crate::support::files::deploy_directory;

#[test]
fn kubernetes_daemonset_uses_capabilities_not_privileged() {
    let manifest = read(&deploy_directory().join("kubernetes/tcpstated.yaml"));
    let lines: Vec<&str> = manifest.lines().map(str::trim).collect();
    for line in [
        "kind: DaemonSet",
        "hostNetwork: true",
        "privileged: false",
        "allowPrivilegeEscalation: false",
        "readOnlyRootFilesystem: true",
        "drop: [\"ALL\"]",
        "hostPID: true",
        "add: [\"BPF\", \"PERFMON\", \"SYS_ADMIN\", \"SYS_PTRACE\", \"DAC_READ_SEARCH\"]",
        "mountPath: /sys/kernel/btf",
        "path: /healthz",
        "prometheus.io/scrape: \"true\"",
    ] {
        assert!(lines.contains(&line), "tcpstated.yaml has `{line}`");
    }
    let btf_mount = manifest
        .split("mountPath: /sys/kernel/btf")
        .nth(1)
        .and_then(|rest| rest.lines().nth(1))
        .map(str::trim);
    assert_eq!(btf_mount, Some("readOnly: true"));
    assert!(!manifest.contains("privileged: true"));
    // The node's BPF filesystem, where the kernel state is pinned for the next pod.
    let bpffs_mount = manifest
        .split("mountPath: /sys/fs/bpf\n")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .map(str::trim);
    assert_eq!(bpffs_mount, Some("mountPropagation: HostToContainer"));
    // Workloads: the node's cgroup hierarchy and runtime state, read-only, and labels kept.
    for (flag, mount) in [
        (
            "--workloads.cgroup-root=/host/sys/fs/cgroup",
            "/host/sys/fs/cgroup",
        ),
        ("--workloads.host-root=/host", "/host/run/containerd"),
    ] {
        assert!(
            lines.contains(&format!("- {flag}").as_str()),
            "tcpstated.yaml has {flag}"
        );
        let read_only = manifest
            .split(&format!("mountPath: {mount}"))
            .nth(1)
            .and_then(|rest| rest.lines().nth(1))
            .map(str::trim);
        assert_eq!(
            read_only,
            Some("readOnly: true"),
            "{mount} is mounted read-only"
        );
    }
    let monitor = read(&deploy_directory().join("kubernetes/servicemonitor.yaml"));
    assert!(monitor.contains("kind: ServiceMonitor"));
    assert!(
        monitor
            .lines()
            .any(|line| line.trim() == "honorLabels: true"),
        "the ServiceMonitor keeps tcpstated's namespace, pod and container labels"
    );
}
