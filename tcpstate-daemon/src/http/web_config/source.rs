//! The web configuration in force: loaded at start-up, loaded again when the file or one of
//! the files it names has changed (exporter-toolkit reads them at each connection and request;
//! a look at their metadata does the same for less). A file broken after start-up fails the
//! handshakes and requests (500) until it is fixed, as in exporter-toolkit, and is logged.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use super::{WebConfig, WebConfigError};

/// What identifies a file's content without reading it: a replaced file (rename) changes its
/// inode, a rewritten one its size or modification time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(u64, u64, u64, SystemTime)>);

impl Stamp {
    fn of(path: &Path) -> Stamp {
        Stamp(
            std::fs::metadata(path)
                .ok()
                .map(|meta| (meta.dev(), meta.ino(), meta.len(), meta.modified().ok()))
                .map(|(dev, ino, len, modified)| {
                    (dev, ino, len, modified.unwrap_or(SystemTime::UNIX_EPOCH))
                }),
        )
    }
}

struct Current {
    stamps: Vec<(PathBuf, Stamp)>,
    loaded: Result<Arc<WebConfig>, WebConfigError>,
}

/// `--web.config.file`, kept current.
pub struct WebConfigSource {
    path: PathBuf,
    /// Whether the server speaks TLS: decided at start-up, as in exporter-toolkit.
    pub tls: bool,
    current: Mutex<Current>,
}

impl WebConfigSource {
    /// Loads the file, or says what is wrong with it.
    pub fn open(path: &Path) -> Result<WebConfigSource, WebConfigError> {
        let config = WebConfig::load(path)?;
        let tls = config.tls.is_some();
        let current = Current {
            stamps: stamps(path, &config.files),
            loaded: Ok(Arc::new(config)),
        };
        Ok(WebConfigSource {
            path: path.to_owned(),
            tls,
            current: Mutex::new(current),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration now: the last one loaded, or a new load if a file changed since.
    pub fn current(&self) -> Result<Arc<WebConfig>, WebConfigError> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let changed = current
            .stamps
            .iter()
            .any(|(path, stamp)| Stamp::of(path) != *stamp);
        if changed {
            let loaded = WebConfig::load(&self.path);
            let files = match &loaded {
                Ok(config) => config.files.clone(),
                // Watch the files the last good configuration named, to see them fixed too.
                Err(_) => current
                    .stamps
                    .iter()
                    .skip(1)
                    .map(|(p, _)| p.clone())
                    .collect(),
            };
            match &loaded {
                Ok(_) => log::info!("web config file {} loaded again", self.path.display()),
                Err(error) => log::error!("{error}; TLS handshakes and requests fail until fixed"),
            }
            *current = Current {
                stamps: stamps(&self.path, &files),
                loaded: loaded.map(Arc::new),
            };
        }
        current.loaded.clone()
    }
}

fn stamps(config: &Path, files: &[PathBuf]) -> Vec<(PathBuf, Stamp)> {
    std::iter::once(config)
        .chain(files.iter().map(PathBuf::as_path))
        .map(|path| (path.to_owned(), Stamp::of(path)))
        .collect()
}
