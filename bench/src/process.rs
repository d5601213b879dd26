//! Child processes of the benchmark (tracers, load generator, connection holders): started with
//! their stdout read line by line in the background (a child never blocks on a full pipe), waited
//! for with time limits, and stopped by pid, never by name.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub struct Process {
    name: String,
    child: Child,
    lines: Receiver<String>,
    /// Everything read so far, for error messages and reports.
    seen: Vec<String>,
}

impl Process {
    /// Starts `command` with stdout piped (stdin piped too when `keep_stdin`: closing it is how
    /// the connection holders are told to exit).
    pub fn spawn(name: &str, command: &mut Command, keep_stdin: bool) -> anyhow::Result<Process> {
        command.stdout(Stdio::piped());
        command.stdin(if keep_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {name}: {command:?}"))?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Keep draining after the receiver is gone.
                let _ = sender.send(line);
            }
        });
        Ok(Process {
            name: name.to_owned(),
            child,
            lines,
            seen: Vec::new(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has ended.
    pub fn exit_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    pub fn stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// Waits for a stdout line starting with `prefix` and returns the rest of it. Fails when the
    /// process exits first or `timeout` passes.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.to_owned());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(status) = self.child.try_wait()? {
                        bail!(
                            "{} exited with {status} before printing `{prefix}`",
                            self.name
                        );
                    }
                    if Instant::now() >= deadline {
                        bail!("{} did not print `{prefix}` within {timeout:?}", self.name);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    bail!(
                        "{} exited with {status} before printing `{prefix}`",
                        self.name
                    );
                }
            }
        }
    }

    /// Waits (bounded) for the process to exit and returns its status and whole stdout.
    pub fn finish(mut self, timeout: Duration) -> anyhow::Result<(ExitStatus, String)> {
        let status = self.wait(timeout)?;
        Ok((status, self.all_output()))
    }

    /// Like [`Process::stop`], and returns the whole stdout too (what it printed on its way out).
    pub fn stop_with_output(mut self, timeout: Duration) -> anyhow::Result<(ExitStatus, String)> {
        let status = self.terminate(timeout)?;
        Ok((status, self.all_output()))
    }

    /// Everything the process printed, once it has exited.
    fn all_output(&mut self) -> String {
        // The reader thread ends at end of file, which follows the exit.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        std::mem::take(&mut self.seen).join("\n")
    }

    fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let status = self.child.wait()?;
                bail!(
                    "{} did not finish within {timeout:?}; killed ({status})",
                    self.name
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then SIGKILL if it is still running after `timeout`.
    pub fn stop(mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.terminate(timeout)
    }

    fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        // std can only SIGKILL; tracers detach cleanly on SIGTERM.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait(timeout)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.terminate(Duration::from_secs(10));
        }
    }
}
