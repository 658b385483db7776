//! The binary's command line, as QEMU and libvirt use it.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::process::Command;

use guest_tests::frontend::{binary_path, ConnectOptions, Connection};
use guest_tests::wire::*;
use guest_tests::Gpu;

#[test]
fn print_capabilities_tells_the_truth() {
    let out = Command::new(binary_path())
        .arg("--print-capabilities")
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(s.contains("\"type\": \"gpu\""), "{s}");
    // This build has no virgl: it must not claim it.
    assert!(s.contains("\"features\": []"), "{s}");
}

#[test]
fn virgl_is_refused_with_a_clear_message() {
    for args in [
        &["--virgl", "--socket-path", "/tmp/never.sock"][..],
        &["--renderer", "virgl", "-s", "/tmp/never.sock"],
    ] {
        let out = Command::new(binary_path()).args(args).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("virgl"), "{err}");
    }
}

#[test]
fn bad_arguments_fail_at_start() {
    for args in [
        &["--socket-path", "/tmp/x.sock", "--display", "0x0"][..],
        &["--socket-path", "/tmp/x.sock", "--display", "640x480x3"],
        &["--socket-path", "/tmp/x.sock", "--max-host-memory", "lots"],
        &[],
        &["--fd", "0"],
    ] {
        let out = Command::new(binary_path()).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
    }
    let many: Vec<String> = (0..17)
        .flat_map(|_| ["--display".to_string(), "64x64".to_string()])
        .collect();
    let out = Command::new(binary_path())
        .args(&many)
        .args(["-s", "/tmp/x.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "17 scanouts accepted");
}

#[test]
fn inherited_listening_socket() {
    let dir = std::env::temp_dir().join(format!("vhost-gpu-fd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gpu.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let fd = listener.as_raw_fd();
    // Let the child inherit it, as libvirt does.
    // SAFETY: clears FD_CLOEXEC on a listener this test owns.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    let mut child = Command::new(binary_path())
        .arg(format!("--fd={fd}"))
        .spawn()
        .unwrap();
    let conn = Connection::connect(&path, &ConnectOptions::default());
    let mut g = Gpu {
        conn: conn.unwrap(),
    };
    assert_eq!(g.create_2d(1, B8G8R8X8, 16, 16), OK_NODATA);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
