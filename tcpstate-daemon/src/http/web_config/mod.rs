//! `--web.config.file`: prometheus/exporter-toolkit's web configuration (docs/web-configuration.md
//! there), so that a fleet's node_exporter file serves tcpstated too: TLS (`tls_server_config`),
//! response headers (`http_server_config`), `basic_auth_users` (bcrypt), `rate_limit`.
//!
//! As exporter-toolkit: unknown keys are errors, relative paths are relative to the file's
//! folder, whether the server speaks TLS is decided at start-up, and the file and the
//! certificates it names are read again when they change (`source`), so certificates rotate
//! without a restart.

mod schema;
mod source;
#[cfg(test)]
mod tests;
mod tls;
mod verifiers;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

pub use source::WebConfigSource;

/// A web configuration file, checked: what the server needs of it.
#[derive(Debug)]
pub struct WebConfig {
    /// The server configuration, when the file configures TLS.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Extra response headers (`http_server_config.headers`).
    pub headers: Vec<(String, String)>,
    /// `basic_auth_users`: user name to bcrypt hash; empty: no authentication.
    pub users: BTreeMap<String, String>,
    /// `rate_limit`: at most `burst` requests at once, refilled one per `interval`.
    pub rate_limit: Option<(Duration, u32)>,
    /// Files the configuration names (certificates, key, client CAs): a change reloads it.
    pub files: Vec<PathBuf>,
}

/// Why a web configuration file cannot be used: which key, on which line, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfigError {
    pub file: PathBuf,
    /// 1-based; `None` for the file as a whole.
    pub line: Option<usize>,
    /// The dotted path of the key (`tls_server_config.cert_file`), empty for the whole file.
    pub key: String,
    pub message: String,
}

impl fmt::Display for WebConfigError {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(out, "web config file {}", self.file.display())?;
        if let Some(line) = self.line {
            write!(out, ", line {line}")?;
        }
        if !self.key.is_empty() {
            write!(out, ", {}", self.key)?;
        }
        write!(out, ": {}", self.message)
    }
}

impl std::error::Error for WebConfigError {}

impl WebConfig {
    /// Reads and checks the file and everything it names, as at start-up.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| WebConfigError {
            file: path.to_owned(),
            line: None,
            key: String::new(),
            message: format!("cannot read it: {error}"),
        })?;
        let directory = path.parent().unwrap_or(Path::new("."));
        schema::parse(&text, directory).map_err(|problem| WebConfigError {
            file: path.to_owned(),
            line: problem.line.or_else(|| line_of(&text, &problem.key)),
            key: problem.key,
            message: problem.message,
        })
    }
}

/// A problem found in the file's text, before the file's name is known to it.
#[derive(Debug)]
struct Problem {
    key: String,
    line: Option<usize>,
    message: String,
}

impl Problem {
    fn at(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            line: None,
            message: message.into(),
        }
    }
}

/// The line (1-based) where the dotted `key` is set in a YAML block mapping, found by its
/// indentation: each part of the path is looked for under the line of the one before.
fn line_of(text: &str, key: &str) -> Option<usize> {
    if key.is_empty() {
        return None;
    }
    let mut found = None;
    let mut from = 0;
    let mut parent_indent: Option<usize> = None;
    for part in key.split('.') {
        let (index, indent) = text
            .lines()
            .enumerate()
            .skip(from)
            .map(|(index, line)| (index, line, line.len() - line.trim_start().len()))
            .take_while(|(index, line, indent)| {
                *index == from
                    || line.trim().is_empty()
                    || line.trim_start().starts_with('#')
                    || parent_indent.is_none_or(|parent| *indent > parent)
            })
            .find(|(_, line, indent)| {
                parent_indent.is_none_or(|parent| *indent > parent) && is_key_line(line, part)
            })
            .map(|(index, _, indent)| (index, indent))?;
        found = Some(index + 1);
        from = index + 1;
        parent_indent = Some(indent);
    }
    found
}

/// Whether `line` sets `key` (bare or quoted) in a block mapping, or is a list item that does.
fn is_key_line(line: &str, key: &str) -> bool {
    let content = line.trim_start().trim_start_matches("- ").trim_start();
    [key.to_owned(), format!("\"{key}\""), format!("'{key}'")]
        .iter()
        .any(|spelled| {
            content
                .strip_prefix(spelled.as_str())
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
}
