//! The processes that hold sockets, found as `ss -p` finds them: every process's open files
//! (`/proc/PID/fd/*`, links named `socket:[INODE]`), for the few sockets a view lists.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::Path,
};

use serde::Serialize;

/// Processes listed per socket at most (a forking server's listener is held by every worker).
pub const MAX_OWNERS: usize = 8;

/// A process holding a socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub pid: u32,
    /// Its `comm` (the executable's name, at most 15 bytes, as `ss -p` shows).
    pub command: String,
}

/// The owners of each socket inode of `inodes`, from `proc` (the host's `/proc`). Processes
/// that exit during the walk, or whose files this process may not read, are passed over.
pub fn find(proc: &Path, inodes: &HashSet<u32>) -> HashMap<u32, Vec<Owner>> {
    let mut owners: HashMap<u32, Vec<Owner>> = HashMap::new();
    if inodes.is_empty() {
        return owners;
    }
    let Ok(processes) = fs::read_dir(proc) else {
        return owners;
    };
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        let Ok(files) = fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        let mut command = None;
        for file in files.flatten() {
            let Some(inode) = fs::read_link(file.path())
                .ok()
                .and_then(|target| socket_inode(&target))
                .filter(|inode| inodes.contains(inode))
            else {
                continue;
            };
            let holders = owners.entry(inode).or_default();
            if holders.len() >= MAX_OWNERS || holders.iter().any(|owner| owner.pid == pid) {
                continue;
            }
            let command = command
                .get_or_insert_with(|| {
                    fs::read_to_string(process.path().join("comm"))
                        .map(|comm| comm.trim_end().to_owned())
                        .unwrap_or_default()
                })
                .clone();
            holders.push(Owner { pid, command });
        }
    }
    owners
}

/// `socket:[12345]` -> 12345.
fn socket_inode(target: &Path) -> Option<u32> {
    target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, os::unix::fs::MetadataExt as _};

    use super::*;

    #[test]
    fn finds_this_process_holding_its_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let inode = fs::metadata(format!("/proc/self/fd/{fd}")).unwrap().ino() as u32;
        let owners = find(Path::new("/proc"), &HashSet::from([inode, 1]));
        let ours = &owners[&inode];
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0].pid, std::process::id());
        assert!(!ours[0].command.is_empty());
        assert!(!owners.contains_key(&1));
        assert_eq!(socket_inode(Path::new("socket:[42]")), Some(42));
        assert_eq!(socket_inode(Path::new("pipe:[42]")), None);
        assert_eq!(socket_inode(Path::new("socket:[x]")), None);
    }
}
