//! The WebSocket framing of `--vnc-websocket` (after the opening handshake): arbitrary bytes
//! from a client, read as frames into the RFB byte stream. Masked data frames become stream
//! bytes, pings are answered on the connection, a close ends the stream; anything else must
//! end in an error, never a panic or a hang.
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;
use vhost_gpu::vnc::{ws, Conn};

fuzz_target!(|data: &[u8]| {
    let Ok((ours, mut client)) = UnixStream::pair() else {
        return;
    };
    // The server's answers (pongs, a close) go to a buffer the client never reads: large
    // enough for every pong a 64 KiB input can ask for.
    let _ = client.set_write_timeout(Some(std::time::Duration::from_secs(1)));
    if client.write_all(data).is_err() || client.shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    let mut w = ws::framed(Conn::Unix(ours));
    let mut buf = [0u8; 512];
    let mut total = 0usize;
    loop {
        match w.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                assert!(n <= buf.len());
                total += n;
                // Stream bytes come out of frames: never more than went in.
                assert!(total <= data.len());
            }
        }
    }
});
