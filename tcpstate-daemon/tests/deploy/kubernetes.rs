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
        "add: [\"BPF\", \"PERFMON\"]",
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
    assert!(!manifest.contains("SYS_ADMIN"));
    let monitor = read(&deploy_directory().join("kubernetes/servicemonitor.yaml"));
    assert!(monitor.contains("kind: ServiceMonitor"));
}
