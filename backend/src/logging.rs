//! Logging: env_logger on stderr, and the system log (journald or syslog, through `/dev/log`)
//! when no one watches stderr. libvirt, for one, starts backends with `--fd` and throws their
//! stderr away; then the system log is where a user finds why the backend stopped.
//!
//! The system-log socket is connected here, before the sandbox starts (which then allows only
//! `send` on it), and its descriptor is given to the sandbox's SIGSYS handler so that a
//! refused call is reported there too.

use std::io::IsTerminal;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use log::{Log, Metadata, Record};
use syslog::{Facility, Formatter3164, LoggerBackend};

use crate::cli::Syslog;

/// stderr always; the system log when connected.
struct Logger {
    stderr: env_logger::Logger,
    syslog: Option<Mutex<syslog::Logger<LoggerBackend, Formatter3164>>>,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.stderr.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !self.stderr.matches(record) {
            return;
        }
        self.stderr.log(record);
        if let Some(sys) = &self.syslog {
            let msg = format!("{}: {}", record.target(), record.args());
            // A poisoned lock means a panic elsewhere, and panics abort this process.
            let mut sys = sys.lock().unwrap_or_else(|p| p.into_inner());
            // A full or gone system log must not stop the device: the line still went to
            // stderr.
            let _ = match record.level() {
                log::Level::Error => sys.err(msg),
                log::Level::Warn => sys.warning(msg),
                log::Level::Info => sys.info(msg),
                log::Level::Debug | log::Level::Trace => sys.debug(msg),
            };
        }
    }

    fn flush(&self) {
        self.stderr.flush();
    }
}

/// Whether the system log is wanted: `auto` means when started with `--fd` or when stderr is
/// not a terminal.
pub fn wants_syslog(choice: Syslog, started_with_fd: bool) -> bool {
    match choice {
        Syslog::On => true,
        Syslog::Off => false,
        Syslog::Auto => started_with_fd || !std::io::stderr().is_terminal(),
    }
}

/// Sets up logging at `default_level` (RUST_LOG wins). Returns where lines go, for the log.
pub fn init(default_level: &str, syslog_wanted: bool) -> String {
    let stderr =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
            .build();
    let max = stderr.filter();
    let mut note = "stderr".to_string();
    let syslog = if syslog_wanted {
        let formatter = Formatter3164 {
            facility: Facility::LOG_DAEMON,
            hostname: None,
            process: "vhost-gpu".into(),
            pid: std::process::id(),
        };
        match syslog::unix(formatter) {
            Ok(l) => {
                if let LoggerBackend::Unix(sock) = &l.backend {
                    crate::sandbox::trap::set_syslog_fd(sock.as_raw_fd());
                }
                note.push_str(" and the system log (/dev/log)");
                Some(Mutex::new(l))
            }
            Err(e) => {
                note.push_str(&format!(" only (no system log: {e})"));
                None
            }
        }
    } else {
        None
    };
    if log::set_boxed_logger(Box::new(Logger { stderr, syslog })).is_ok() {
        log::set_max_level(max);
    }
    note
}

/// Logs a panic's message and place (to the system log too) before the default hook prints
/// it and the process aborts.
pub fn log_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        log::error!("exiting: panic: {info}");
        default(info);
    }));
}
