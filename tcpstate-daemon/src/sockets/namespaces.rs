//! The host's network namespaces, found wherever the host keeps them: those of running
//! processes (`/proc/PID/ns/net`) and bind-mounted ones (`ip netns`, CNI, container runtimes:
//! `nsfs` mounts in mountinfo), deduplicated by inode. Nothing here holds a namespace open: a
//! reference would keep a deleted namespace, and its timewait sockets, alive.

use std::{
    collections::BTreeMap,
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Where to open each network namespace found, by inode (`ns.inum`, what the kernel programs
/// read from a socket): a bind mount if it has one (it outlives processes), else a process's
/// `ns/net` link.
pub type Namespaces = BTreeMap<u32, PathBuf>;

/// Lists the network namespaces seen from `proc` (the host's `/proc`): bind mounts first,
/// then every process's.
pub fn list(proc: &Path) -> io::Result<Namespaces> {
    let mut found = Namespaces::new();
    let mountinfo = fs::read_to_string(proc.join("self/mountinfo"))?;
    for (inode, mount_point) in bind_mounts(&mountinfo) {
        found.entry(inode).or_insert(mount_point);
    }
    for entry in fs::read_dir(proc)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let link = entry.path().join("ns/net");
        // stat follows the link to the namespace: its inode. A process that exited meanwhile
        // or a kernel thread without one is skipped.
        if let Ok(metadata) = fs::metadata(&link)
            && let Ok(inode) = u32::try_from(metadata.ino())
        {
            found.entry(inode).or_insert(link);
        }
    }
    Ok(found)
}

/// How many processes seen from `proc` refuse this process their `ns/net` link (another
/// user's, without CAP_SYS_PTRACE): namespaces only they hold cannot be found.
pub fn refused_links(proc: &Path) -> io::Result<usize> {
    let mut refused = 0;
    for entry in fs::read_dir(proc)?.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
            && fs::metadata(entry.path().join("ns/net"))
                .is_err_and(|error| error.kind() == io::ErrorKind::PermissionDenied)
        {
            refused += 1;
        }
    }
    Ok(refused)
}

/// The `nsfs` mounts of network namespaces in a mountinfo listing: (inode, mount point).
fn bind_mounts(mountinfo: &str) -> Vec<(u32, PathBuf)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, filesystem) = line.split_once(" - ")?;
            if filesystem.split_whitespace().next()? != "nsfs" {
                return None;
            }
            let mut fields = mount.split_whitespace().skip(3);
            let root = fields.next()?;
            let mount_point = fields.next()?;
            let inode = root
                .strip_prefix("net:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            Some((inode, PathBuf::from(unescape(mount_point))))
        })
        .collect()
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as octal (`\040`).
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 4);
        match code.and_then(|digits| u8::from_str_radix(digits, 8).ok()) {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_mounted_network_namespaces_come_from_mountinfo() {
        let mountinfo = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
612 25 0:4 net:[4026532241] /run/netns/cni-1a2b rw - nsfs nsfs rw
613 25 0:4 net:[4026532241] /run/netns/again rw - nsfs nsfs rw
614 25 0:4 mnt:[4026532300] /run/mntns rw - nsfs nsfs rw
615 25 0:4 net:[4026532399] /run/docker/netns/with\\040space rw - nsfs nsfs rw
616 25 0:4 net:[oops] /run/netns/bad rw - nsfs nsfs rw
";
        assert_eq!(
            bind_mounts(mountinfo),
            [
                (4026532241, PathBuf::from("/run/netns/cni-1a2b")),
                (4026532241, PathBuf::from("/run/netns/again")),
                (4026532399, PathBuf::from("/run/docker/netns/with space")),
            ]
        );
        assert_eq!(unescape("a\\134b\\0"), "a\\b\\0");
    }

    #[test]
    fn this_process_namespace_is_listed() {
        let ours = fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        let found = list(Path::new("/proc")).unwrap();
        assert!(found.contains_key(&ours), "{found:?}");
    }
}
