//! Network namespaces: moving the calling thread into one (`setns`), so that the sockets it
//! then creates and the `/proc/thread-self/net` and `/proc/sys/net` files it opens answer for
//! that namespace, and back. `setns` moves only the calling thread; nothing here keeps a
//! namespace open once the caller is back (a reference would keep a deleted namespace, and its
//! timewait sockets, alive).

use std::{
    fs::{self, File},
    io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::Path,
};

/// `NSFS_MAGIC` (include/uapi/linux/magic.h): the file system of namespace files.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// The network namespace a thread started in, held open while it visits others so that it
/// can return.
pub struct Home {
    namespace: File,
}

impl Home {
    /// The calling thread's network namespace now.
    pub fn here() -> io::Result<Home> {
        Ok(Home {
            namespace: File::open("/proc/thread-self/ns/net")?,
        })
    }

    /// The inode number of this namespace.
    pub fn inode(&self) -> io::Result<u32> {
        inode_of(&self.namespace)
    }

    /// Moves the calling thread back here if it is in another network namespace (one it
    /// could not leave before).
    pub fn return_if_away(&self) -> io::Result<()> {
        let here = fs::metadata("/proc/thread-self/ns/net")?.ino();
        if here == u64::from(self.inode()?) {
            return Ok(());
        }
        set_network_namespace(&self.namespace)
    }

    /// Whether this process may enter network namespaces: entering its own takes the same
    /// privilege as any other (CAP_SYS_ADMIN), and changes nothing.
    pub fn check_can_enter(&self) -> io::Result<()> {
        set_network_namespace(&self.namespace)
    }

    /// Moves the calling thread into the network namespace at `path`, which must be the one
    /// numbered `inode` (a process's `ns/net` link can name another namespace once its pid is
    /// reused): `NotFound` if the path is gone or names another namespace now,
    /// `InvalidInput` if it is no namespace file. The descriptor is closed before returning.
    pub fn enter(&self, path: &Path, inode: u32) -> io::Result<Inside<'_>> {
        let namespace = File::open(path)?;
        let metadata = namespace.metadata()?;
        if !is_namespace_file(&namespace)? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a namespace file (something is mounted over it)",
            ));
        }
        if metadata.ino() != u64::from(inode) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("it is now namespace {}", metadata.ino()),
            ));
        }
        set_network_namespace(&namespace)?;
        Ok(Inside {
            home: self,
            left: false,
        })
    }
}

/// The calling thread inside another network namespace; [`Inside::leave`] returns it home.
pub struct Inside<'a> {
    home: &'a Home,
    left: bool,
}

impl Inside<'_> {
    /// Returns the calling thread to its home namespace. An error leaves it where it is: the
    /// caller must not do any more work for its home namespace on this thread.
    pub fn leave(mut self) -> io::Result<()> {
        self.left = true;
        set_network_namespace(&self.home.namespace)
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        // Only when unwinding, or when the caller forgot: best effort.
        if !self.left {
            let _ = set_network_namespace(&self.home.namespace);
        }
    }
}

fn inode_of(file: &File) -> io::Result<u32> {
    u32::try_from(file.metadata()?.ino())
        .map_err(|_| io::Error::other("a network namespace inode above 2^32"))
}

fn is_namespace_file(file: &File) -> io::Result<bool> {
    // SAFETY: an all-zero statfs is a valid value for the kernel to overwrite.
    let mut info: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a statfs that outlives the call.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut info) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.f_type as i64 == NSFS_MAGIC)
}

fn set_network_namespace(namespace: &File) -> io::Result<()> {
    // SAFETY: setns reads the descriptor, open for the call, and moves only the calling thread.
    if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_no_namespace_is_refused() {
        let home = Home::here().unwrap();
        let error = home.enter(Path::new("/proc/self/status"), 1).err().unwrap();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        let gone = home.enter(Path::new("/nonexistent/ns"), 1).err().unwrap();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
    }
}
