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

use base64::Engine as _;
use serde_json::{Value, json};

use super::files::temporary_directory;

const ANSWER_WAIT: Duration = Duration::from_secs(30);

pub struct Chromium {
    child: Child,
    to_browser: ChildStdin,
    from_browser: Receiver<Value>,
    next_id: u64,
    profile: PathBuf,
}

/// One open tab (a DevTools session attached to it).
pub struct Tab {
    session: String,
}

impl Chromium {
    pub fn start(width: u32, height: u32) -> Chromium {
        let profile = temporary_directory("chromium");
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
                if let Ok(json) = serde_json::from_slice::<Value>(&message)
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
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = session.into();
        }
        let mut message = message.to_string().into_bytes();
        message.push(0);
        self.to_browser
            .write_all(&message)
            .and_then(|()| self.to_browser.flush())
            .expect("write to chromium");
        let deadline = Instant::now() + ANSWER_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .from_browser
                .recv_timeout(left)
                .unwrap_or_else(|error| panic!("chromium did not answer {method} ({error})"));
            if answer["id"].as_u64() != Some(id) {
                continue; // an event, or another command's answer
            }
            if answer["error"].is_object() {
                panic!("chromium refused {method}: {:?}", answer["error"]);
            }
            return answer["result"].clone();
        }
    }

    /// Opens `url` in a new tab.
    pub fn open(&mut self, url: &str) -> Tab {
        let target = self.call(None, "Target.createTarget", json!({"url": url}));
        let target = target["targetId"].as_str().expect("targetId");
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        );
        Tab {
            session: attached["sessionId"]
                .as_str()
                .expect("sessionId")
                .to_owned(),
        }
    }

    /// Evaluates a JavaScript expression in the tab and returns its value.
    pub fn evaluate(&mut self, tab: &Tab, expression: &str) -> Value {
        let result = self.call(
            Some(&tab.session),
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        if result["exceptionDetails"].is_object() {
            panic!("`{expression}` threw: {:?}", result["exceptionDetails"]);
        }
        result["result"]["value"].clone()
    }

    /// Sets the tab's viewport to `width` x `height` CSS pixels.
    pub fn set_viewport(&mut self, tab: &Tab, width: u32, height: u32) {
        self.call(
            Some(&tab.session),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
    }

    /// A PNG of the tab's viewport.
    pub fn screenshot(&mut self, tab: &Tab) -> Vec<u8> {
        let result = self.call(
            Some(&tab.session),
            "Page.captureScreenshot",
            json!({"format": "png"}),
        );
        let data = result["data"].as_str().expect("screenshot data");
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("a screenshot in base64")
    }
}

/// Checks that `png` is a screenshot worth keeping and writes it as `name` in the tests'
/// directory, or in docs/ when `TCPSTATE_UPDATE_SCREENSHOT=1`.
pub fn keep_screenshot(png: &[u8], name: &str) {
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "a PNG"
    );
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&target, png).unwrap();
    if std::env::var_os("TCPSTATE_UPDATE_SCREENSHOT").is_some_and(|value| value == "1") {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../docs")
            .join(name);
        std::fs::write(&docs, png).unwrap();
        eprintln!("wrote {}", docs.display());
    } else {
        eprintln!(
            "screenshot: {} (TCPSTATE_UPDATE_SCREENSHOT=1 updates docs/)",
            target.display()
        );
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
