//! The log: `--log.level` and `--log.format` (logfmt or JSON, as exporter-toolkit's promslog
//! writes them), to stderr. `RUST_LOG`, when set, overrides the level (a developer's filter,
//! per module).

use std::io::Write as _;

use crate::config::{LogFormat, LogLevel};

/// Installs the logger; call once, before anything logs.
pub fn init(level: LogLevel, format: LogFormat) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level.filter());
    if let Ok(filters) = std::env::var("RUST_LOG") {
        builder.parse_filters(&filters);
    }
    builder.format(move |out, record| {
        let time = out.timestamp_millis().to_string();
        let level = record.level().as_str().to_ascii_lowercase();
        let source = record.module_path().unwrap_or("tcpstated");
        let message = record.args().to_string();
        writeln!(out, "{}", line(format, &time, &level, source, &message))
    });
    builder.init();
}

/// One log line.
fn line(format: LogFormat, time: &str, level: &str, source: &str, message: &str) -> String {
    match format {
        LogFormat::Json => serde_json::json!({
            "time": time, "level": level, "source": source, "msg": message,
        })
        .to_string(),
        LogFormat::Logfmt => format!(
            "time={time} level={level} source={source} msg={}",
            logfmt_value(message)
        ),
    }
}

/// A logfmt value: bare if it has no space, quote, `=` or control character, else quoted
/// with `"`, `\` and control characters escaped.
fn logfmt_value(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c == ' ' || c == '"' || c == '=' || c == '\\' || c.is_control());
    if plain {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for character in value.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_quotes_only_what_needs_it() {
        let text = line(
            LogFormat::Logfmt,
            "2026-01-02T03:04:05.678Z",
            "warn",
            "tcpstate_daemon::http",
            "cannot accept (\"x\")\nagain",
        );
        assert_eq!(
            text,
            r#"time=2026-01-02T03:04:05.678Z level=warn source=tcpstate_daemon::http msg="cannot accept (\"x\")\nagain""#
        );
        assert_eq!(logfmt_value("ok"), "ok");
        assert_eq!(logfmt_value(""), r#""""#);
        assert_eq!(logfmt_value("a=b"), r#""a=b""#);
    }

    #[test]
    fn json_lines_are_one_object_each() {
        let text = line(LogFormat::Json, "t", "info", "tcpstated", "say \"hi\"");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["msg"], "say \"hi\"");
        assert_eq!(value["level"], "info");
        assert!(!text.contains('\n'));
    }
}
