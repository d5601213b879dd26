//! Headless Chromium (Debian's `chromium`) driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: NUL-separated JSON on file descriptors 3 and 4, no port, no
//! WebSocket). The page runs in real time, so the rates it computes between two fetches are
//! real rates; the tests read its figures with `Runtime.evaluate` and take screenshots with
//! `Page.captureScreenshot`. Chromium is kept off every network but loopback.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use super::json::{Json, quote};

const ANSWER_WAIT: Duration = Duration::from_secs(30);

pub struct Chromium {
    child: Child,
    to_browser: ChildStdin,
    from_browser: Receiver<Json>,
    next_id: u64,
    profile: PathBuf,
}

/// One open tab (a DevTools session attached to it).
pub struct Tab {
    session: String,
}

impl Chromium {
    pub fn start(width: u32, height: u32) -> Chromium {
        let profile = super::temporary_directory("chromium");
        // The shell moves our pipes to the descriptors Chromium reads (3) and writes (4).
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec chromium "$@" 3<&0 4>&1 </dev/null >/dev/null"#)
            .arg("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--disable-extensions",
                "--hide-scrollbars",
                "--mute-audio",
                // No name resolution nor route beyond loopback: the page needs none.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium starts (Debian package chromium; `cargo xtask setup` installs it)");
        let to_browser = child.stdin.take().unwrap();
        let from_chromium = child.stdout.take().unwrap();
        let (sender, from_browser) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(from_chromium);
            loop {
                let mut message = Vec::new();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                message.pop_if(|byte| *byte == 0);
                if let Ok(json) = Json::parse(&String::from_utf8_lossy(&message))
                    && sender.send(json).is_err()
                {
                    return;
                }
            }
        });
        Chromium {
            child,
            to_browser,
            from_browser,
            next_id: 1,
            profile,
        }
    }

    /// Sends one DevTools command (`params` is a JSON object) and waits for its answer.
    pub fn call(&mut self, session: Option<&str>, method: &str, params: &str) -> Json {
        let id = self.next_id;
        self.next_id += 1;
        let session = session
            .map(|session| format!(",\"sessionId\":{}", quote(session)))
            .unwrap_or_default();
        let message = format!(
            "{{\"id\":{id},\"method\":{}{session},\"params\":{params}}}\0",
            quote(method)
        );
        self.to_browser
            .write_all(message.as_bytes())
            .and_then(|()| self.to_browser.flush())
            .expect("write to chromium");
        let deadline = Instant::now() + ANSWER_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .from_browser
                .recv_timeout(left)
                .unwrap_or_else(|error| panic!("chromium did not answer {method} ({error})"));
            if answer.get("id").as_f64() != Some(id as f64) {
                continue; // an event, or another command's answer
            }
            if let Json::Object(_) = answer.get("error") {
                panic!("chromium refused {method}: {:?}", answer.get("error"));
            }
            return answer.get("result").clone();
        }
    }

    /// Opens `url` in a new tab.
    pub fn open(&mut self, url: &str) -> Tab {
        let target = self.call(
            None,
            "Target.createTarget",
            &format!("{{\"url\":{}}}", quote(url)),
        );
        let target = target
            .get("targetId")
            .as_str()
            .expect("targetId")
            .to_owned();
        let attached = self.call(
            None,
            "Target.attachToTarget",
            &format!("{{\"targetId\":{},\"flatten\":true}}", quote(&target)),
        );
        Tab {
            session: attached
                .get("sessionId")
                .as_str()
                .expect("sessionId")
                .to_owned(),
        }
    }

    /// Evaluates a JavaScript expression in the tab and returns its value.
    pub fn evaluate(&mut self, tab: &Tab, expression: &str) -> Json {
        let result = self.call(
            Some(&tab.session),
            "Runtime.evaluate",
            &format!(
                "{{\"expression\":{},\"returnByValue\":true}}",
                quote(expression)
            ),
        );
        if let Json::Object(_) = result.get("exceptionDetails") {
            panic!("`{expression}` threw: {:?}", result.get("exceptionDetails"));
        }
        result.get("result").get("value").clone()
    }

    /// Sets the tab's viewport to `width` x `height` CSS pixels.
    pub fn set_viewport(&mut self, tab: &Tab, width: u32, height: u32) {
        self.call(
            Some(&tab.session),
            "Emulation.setDeviceMetricsOverride",
            &format!(
                "{{\"width\":{width},\"height\":{height},\"deviceScaleFactor\":1,\"mobile\":false}}"
            ),
        );
    }

    /// A PNG of the tab's viewport.
    pub fn screenshot(&mut self, tab: &Tab) -> Vec<u8> {
        let result = self.call(
            Some(&tab.session),
            "Page.captureScreenshot",
            "{\"format\":\"png\"}",
        );
        decode_base64(result.get("data").as_str().expect("screenshot data"))
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |byte: u8| -> u32 {
        match byte {
            b'A'..=b'Z' => u32::from(byte - b'A'),
            b'a'..=b'z' => u32::from(byte - b'a') + 26,
            b'0'..=b'9' => u32::from(byte - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            other => panic!("not base64: {other}"),
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|byte| *byte != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let bits = chunk.iter().enumerate().fold(0u32, |bits, (index, byte)| {
            bits | value(*byte) << (18 - 6 * index)
        });
        let produced = chunk.len() * 6 / 8;
        out.extend_from_slice(&bits.to_be_bytes()[1..1 + produced]);
    }
    out
}
