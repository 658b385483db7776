//! VNC input to the VM through QEMU's QMP (`--vnc-input-qmp PATH`): key and pointer events
//! become `input-send-event` commands, which QEMU hands to the guest's input devices (a
//! keyboard, and an absolute pointer such as `virtio-tablet-pci` or `usb-tablet`).
//!
//! One thread owns the QMP connection. It connects when the first event comes (QEMU usually
//! starts after vhost-gpu), sends each batch of queued events as one command and reads the
//! answer; on any failure it drops the connection and tries again at the next event, at most
//! once a second. A full queue drops events (a client can type faster than nothing).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use log::{info, warn};

/// Absolute axis range of QEMU's input layer (INPUT_EVENT_ABS_MAX).
pub const ABS_MAX: u32 = 0x7fff;

/// One input event for the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// A key (QEMU's QKeyCode name) pressed or released.
    Key { qcode: &'static str, down: bool },
    /// The pointer at an absolute position, each axis 0..=[`ABS_MAX`].
    Move { x: u32, y: u32 },
    /// A button pressed or released.
    Button { button: &'static str, down: bool },
}

impl Input {
    fn json(&self) -> String {
        match self {
            Input::Key { qcode, down } => format!(
                r#"{{"type":"key","data":{{"down":{down},"key":{{"type":"qcode","data":"{qcode}"}}}}}}"#
            ),
            Input::Move { x, y } => format!(
                r#"{{"type":"abs","data":{{"axis":"x","value":{x}}}}},{{"type":"abs","data":{{"axis":"y","value":{y}}}}}"#
            ),
            Input::Button { button, down } => {
                format!(r#"{{"type":"btn","data":{{"down":{down},"button":"{button}"}}}}"#)
            }
        }
    }
}

/// The `input-send-event` command for a batch of events.
pub fn command(events: &[Input]) -> String {
    let list: Vec<String> = events.iter().map(Input::json).collect();
    format!(
        r#"{{"execute":"input-send-event","arguments":{{"events":[{}]}}}}"#,
        list.join(",")
    )
}

/// Where VNC input goes.
#[derive(Clone)]
pub struct InputSink(SyncSender<Input>);

/// Events queued before the QMP thread takes them.
const QUEUE: usize = 1024;

impl InputSink {
    /// Starts the QMP thread for the socket at `path`.
    pub fn start(path: PathBuf) -> std::io::Result<InputSink> {
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("vnc-qmp".into())
            .spawn(move || run(&path, rx))?;
        Ok(InputSink(tx))
    }

    /// Queues an event; false when the queue is full (the event is dropped).
    pub fn send(&self, e: Input) -> bool {
        !matches!(self.0.try_send(e), Err(TrySendError::Full(_)))
    }
}

struct Qmp {
    out: UnixStream,
    lines: BufReader<UnixStream>,
}

impl Qmp {
    fn connect(path: &std::path::Path) -> std::io::Result<Qmp> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut q = Qmp {
            out: s.try_clone()?,
            lines: BufReader::new(s),
        };
        let greeting = q.line()?;
        if !greeting.contains("\"QMP\"") {
            return Err(std::io::Error::other(format!(
                "not a QMP greeting: {greeting:.80}"
            )));
        }
        q.execute(r#"{"execute":"qmp_capabilities"}"#)?;
        Ok(q)
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut l = String::new();
        // A line longer than this is not an answer worth reading.
        let n = Read::by_ref(&mut self.lines)
            .take(1 << 16)
            .read_line(&mut l)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(l)
    }

    /// Sends a command and reads lines until its answer (asynchronous events are skipped).
    fn execute(&mut self, cmd: &str) -> std::io::Result<()> {
        self.out.write_all(cmd.as_bytes())?;
        self.out.write_all(b"\n")?;
        loop {
            let l = self.line()?;
            if l.contains("\"return\"") {
                return Ok(());
            }
            if l.contains("\"error\"") {
                return Err(std::io::Error::other(format!(
                    "QMP refused: {}",
                    l.trim_end()
                )));
            }
        }
    }
}

fn run(path: &std::path::Path, rx: Receiver<Input>) {
    let mut qmp: Option<Qmp> = None;
    let mut last_try: Option<Instant> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(e) = rx.try_recv() {
            batch.push(e);
            if batch.len() >= 64 {
                break;
            }
        }
        if qmp.is_none() {
            if last_try.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                continue;
            }
            last_try = Some(Instant::now());
            match Qmp::connect(path) {
                Ok(q) => {
                    info!("VNC input: connected to QMP at {}", path.display());
                    qmp = Some(q);
                }
                Err(e) => {
                    warn!(
                        "VNC input: QMP at {}: {e}; input dropped until it answers",
                        path.display()
                    );
                    continue;
                }
            }
        }
        if let Some(q) = qmp.as_mut() {
            if let Err(e) = q.execute(&command(&batch)) {
                warn!("VNC input: QMP: {e}; reconnecting at the next event");
                qmp = None;
            }
        }
    }
}

/// QEMU's QKeyCode for an X11 keysym (what VNC clients send), for the keys of a US keyboard;
/// shifted characters map to their key (the client sends Shift itself).
pub fn qcode(keysym: u32) -> Option<&'static str> {
    const LETTERS: [&str; 26] = [
        "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r",
        "s", "t", "u", "v", "w", "x", "y", "z",
    ];
    const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    const FKEYS: [&str; 12] = [
        "f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8", "f9", "f10", "f11", "f12",
    ];
    const KP: [&str; 10] = [
        "kp_0", "kp_1", "kp_2", "kp_3", "kp_4", "kp_5", "kp_6", "kp_7", "kp_8", "kp_9",
    ];
    Some(match keysym {
        0x61..=0x7a => LETTERS[(keysym - 0x61) as usize],
        0x41..=0x5a => LETTERS[(keysym - 0x41) as usize],
        0x30..=0x39 => DIGITS[(keysym - 0x30) as usize],
        0xffbe..=0xffc9 => FKEYS[(keysym - 0xffbe) as usize],
        0xffb0..=0xffb9 => KP[(keysym - 0xffb0) as usize],
        0x20 => "spc",
        0x21 => "1",
        0x40 => "2",
        0x23 => "3",
        0x24 => "4",
        0x25 => "5",
        0x5e => "6",
        0x26 => "7",
        0x2a => "8",
        0x28 => "9",
        0x29 => "0",
        0x2d | 0x5f => "minus",
        0x3d | 0x2b => "equal",
        0x5b | 0x7b => "bracket_left",
        0x5d | 0x7d => "bracket_right",
        0x3b | 0x3a => "semicolon",
        0x27 | 0x22 => "apostrophe",
        0x60 | 0x7e => "grave_accent",
        0x5c | 0x7c => "backslash",
        0x2c | 0x3c => "comma",
        0x2e | 0x3e => "dot",
        0x2f | 0x3f => "slash",
        0xff08 => "backspace",
        0xff09 | 0xfe20 => "tab",
        0xff0d => "ret",
        0xff1b => "esc",
        0xffff => "delete",
        0xff50 => "home",
        0xff51 => "left",
        0xff52 => "up",
        0xff53 => "right",
        0xff54 => "down",
        0xff55 => "pgup",
        0xff56 => "pgdn",
        0xff57 => "end",
        0xff63 => "insert",
        0xff61 => "print",
        0xff13 => "pause",
        0xff67 => "menu",
        0xff14 => "scroll_lock",
        0xff7f => "num_lock",
        0xffe5 => "caps_lock",
        0xffe1 => "shift",
        0xffe2 => "shift_r",
        0xffe3 => "ctrl",
        0xffe4 => "ctrl_r",
        0xffe9 | 0xffe7 => "alt",
        0xffea | 0xfe03 | 0xffe8 => "alt_r",
        0xffeb => "meta_l",
        0xffec => "meta_r",
        0xff8d => "kp_enter",
        0xffab => "kp_add",
        0xffad => "kp_subtract",
        0xffaa => "kp_multiply",
        0xffaf => "kp_divide",
        0xffae => "kp_decimal",
        _ => return None,
    })
}

/// RFB pointer button bits and QEMU's names for them.
pub const BUTTONS: [(u8, &str); 5] = [
    (1, "left"),
    (2, "middle"),
    (4, "right"),
    (8, "wheel-up"),
    (16, "wheel-down"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keysyms_map_to_qcodes_and_commands_are_qmp_json() {
        assert_eq!(qcode(0x61), Some("a"));
        assert_eq!(qcode(0x5a), Some("z"));
        assert_eq!(qcode(0x21), Some("1"));
        assert_eq!(qcode(0xff0d), Some("ret"));
        assert_eq!(qcode(0xffc9), Some("f12"));
        assert_eq!(qcode(0x1234_5678), None);
        assert_eq!(
            command(&[
                Input::Key {
                    qcode: "a",
                    down: true
                },
                Input::Move { x: 1, y: 2 },
                Input::Button {
                    button: "left",
                    down: false
                }
            ]),
            r#"{"execute":"input-send-event","arguments":{"events":[{"type":"key","data":{"down":true,"key":{"type":"qcode","data":"a"}}},{"type":"abs","data":{"axis":"x","value":1}},{"type":"abs","data":{"axis":"y","value":2}},{"type":"btn","data":{"down":false,"button":"left"}}]}}"#
        );
    }
}
