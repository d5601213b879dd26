//! Kernel settings the benchmark changes for its run, restored afterwards.
//!
//! A [`Sysctl`] guard restores the value it found when dropped, also when the benchmark fails.
//! Each change is also written to a restore file first, so that a benchmark killed outright
//! (Ctrl-C, SIGKILL) has its changes undone by the next `cargo xtask bench`.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// `name=value` lines: settings changed by a benchmark that may not have restored them.
fn restore_file() -> PathBuf {
    crate::workspace_root().join("target/bench/sysctl-restore")
}

fn proc_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name.replace('.', "/"))
}

pub fn read(name: &str) -> anyhow::Result<String> {
    let path = proc_path(name);
    Ok(fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .trim()
        .to_owned())
}

fn write(name: &str, value: &str) -> anyhow::Result<()> {
    let path = proc_path(name);
    fs::write(&path, value)
        .with_context(|| format!("cannot set {name} (write {} as root)", path.display()))
}

pub fn parse_restore_lines(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

fn format_restore_lines(values: &BTreeMap<String, String>) -> String {
    values
        .iter()
        .map(|(name, value)| format!("{name}={value}\n"))
        .collect()
}

fn update_restore_file(change: impl FnOnce(&mut BTreeMap<String, String>)) -> anyhow::Result<()> {
    let path = restore_file();
    let mut values = parse_restore_lines(&fs::read_to_string(&path).unwrap_or_default());
    change(&mut values);
    if values.is_empty() {
        let _ = fs::remove_file(&path);
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(&path, format_restore_lines(&values))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Restores what an interrupted benchmark left changed.
pub fn restore_leftovers() -> anyhow::Result<()> {
    let path = restore_file();
    let Ok(text) = fs::read_to_string(&path) else {
        return Ok(());
    };
    for (name, value) in parse_restore_lines(&text) {
        eprintln!("bench: restoring {name}={value}, left changed by an interrupted benchmark");
        write(&name, &value)?;
    }
    let _ = fs::remove_file(&path);
    Ok(())
}

/// A kernel setting changed for the benchmark; the original value comes back on drop.
pub struct Sysctl {
    name: &'static str,
    original: String,
}

impl Sysctl {
    /// Takes charge of `name`, remembering its current value.
    pub fn take(name: &'static str) -> anyhow::Result<Sysctl> {
        let original = read(name)?;
        update_restore_file(|values| {
            values
                .entry(name.to_owned())
                .or_insert_with(|| original.clone());
        })?;
        Ok(Sysctl { name, original })
    }

    pub fn set(&self, value: &str) -> anyhow::Result<()> {
        write(self.name, value)
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        match write(self.name, &self.original) {
            Ok(()) => {
                let _ = update_restore_file(|values| {
                    values.remove(self.name);
                });
            }
            Err(error) => eprintln!(
                "bench: warning: could not restore {}={}: {error:#}; set it by hand",
                self.name, self.original
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_lines_round_trip() {
        let values = BTreeMap::from([
            ("kernel.bpf_stats_enabled".to_owned(), "0".to_owned()),
            (
                "net.ipv4.ip_local_port_range".to_owned(),
                "32768\t60999".to_owned(),
            ),
        ]);
        assert_eq!(parse_restore_lines(&format_restore_lines(&values)), values);
    }

    #[test]
    fn sysctl_names_map_to_proc_sys_paths() {
        assert_eq!(
            proc_path("kernel.bpf_stats_enabled"),
            Path::new("/proc/sys/kernel/bpf_stats_enabled")
        );
    }
}
