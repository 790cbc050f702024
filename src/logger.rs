//! A small structured logger for the binary: one line per event,
//! `ts=… level=… target=… msg="…"`, on stderr.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use log::{Level, LevelFilter, Log, Metadata, Record};

struct Logger {
    level: LevelFilter,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let level = match record.level() {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        let thread = std::thread::current();
        let _ = writeln!(
            std::io::stderr().lock(),
            "ts={}.{:03} level={level} thread={} target={} msg={:?}",
            now.as_secs(),
            now.subsec_millis(),
            thread.name().unwrap_or("-"),
            record.target(),
            record.args().to_string()
        );
    }

    fn flush(&self) {}
}

/// Installs the logger at `level` (error, warn, info, debug, trace).
pub fn init(level: &str) -> Result<()> {
    let level: LevelFilter = match level.parse() {
        Ok(level) => level,
        Err(_) => bail!("log.level {level:?} is not one of error, warn, info, debug, trace"),
    };
    log::set_boxed_logger(Box::new(Logger { level }))
        .map_err(|_| anyhow::anyhow!("a logger is already installed"))?;
    log::set_max_level(level);
    Ok(())
}
