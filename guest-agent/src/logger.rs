//! A minimal `log` backend writing one line per record to stderr (the serial console when the
//! agent is PID 1). Kept tiny on purpose: the agent must start in milliseconds and stay small.
use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        // ttrpc's per-connection info lines would cost a VM exit per byte on the serial
        // console: only its warnings and errors, unless debugging.
        let max = if metadata.target().starts_with("ttrpc") && log::max_level() < LevelFilter::Debug { LevelFilter::Warn } else { log::max_level() };
        metadata.level() <= max
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        // One write per line so lines from different threads do not interleave.
        let line = format!("husk-agent {level} {}\n", record.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Parses a level name ("error", "warn", "info", "debug", "trace", "off").
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    s.parse().ok()
}

/// Installs the logger with `level`.
pub fn init(level: LevelFilter) {
    // set_logger only fails if a logger is already set; keep the first one then.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
