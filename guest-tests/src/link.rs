//! A slow network link between a client and a TCP server, in user space: a proxy on loopback
//! that forwards each direction at a set rate (bits per second) and one-way delay. The host
//! kernel here has no `sch_netem` (tc's delay), so the bench shapes the link itself: each
//! chunk read leaves the link's "wire" once the ones before it have (at the rate), and arrives
//! the one-way delay later. At most a bandwidth-delay product's worth plus 256 KiB is queued
//! per direction, so a sender feels back-pressure as on a real link.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

/// A shaped link to one TCP server; clients connect to [`ShapedLink::addr`].
pub struct ShapedLink {
    pub addr: String,
}

const CHUNK: usize = 16 * 1024;

impl ShapedLink {
    /// Listens on 127.0.0.1 (a free port) and forwards each connection to `target` at
    /// `bits_per_s` each way with `one_way` delay each way.
    pub fn start(target: &str, bits_per_s: u64, one_way: Duration) -> ShapedLink {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let target = target.to_string();
        std::thread::spawn(move || {
            for client in l.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || pipe(from, to, bits_per_s, one_way));
                }
            }
        });
        ShapedLink { addr }
    }
}

/// Forwards `from` to `to` through the shaped wire until `from` ends.
fn pipe(mut from: TcpStream, mut to: TcpStream, bits_per_s: u64, one_way: Duration) {
    // The bandwidth-delay product in chunks, plus 16.
    let bdp = (bits_per_s as f64 / 8.0 * one_way.as_secs_f64() * 2.0) as usize / CHUNK;
    let (tx, rx) = sync_channel::<(Instant, Vec<u8>)>(bdp + 16);
    std::thread::spawn(move || {
        let mut wire_free = Instant::now();
        for (at, chunk) in rx {
            let start = at.max(wire_free);
            wire_free =
                start + Duration::from_secs_f64(chunk.len() as f64 * 8.0 / bits_per_s as f64);
            let arrive = wire_free + one_way;
            let now = Instant::now();
            if arrive > now {
                std::thread::sleep(arrive - now);
            }
            if to.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    loop {
        let mut b = vec![0u8; CHUNK];
        match from.read(&mut b) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                b.truncate(n);
                if tx.send((Instant::now(), b)).is_err() {
                    return;
                }
            }
        }
    }
}
