//! The binary's command line, as QEMU and libvirt use it.

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};

use guest_tests::frontend::{fresh_command, ConnectOptions, Connection};
use guest_tests::wire::*;
use guest_tests::Gpu;

/// Whether `vhost-gpu` starts serving with `args` (true) or exits with an error (false).
fn starts(args: &[&str]) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!(
        "vhost-gpu-cli-{}-{}",
        std::process::id(),
        args.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("s.sock");
    let mut child = fresh_command()
        .args(args)
        .arg("--socket-path")
        .arg(&sock)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let ok = loop {
        if sock.exists() {
            break true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            break false;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "neither served nor failed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (ok, String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn print_capabilities_tells_the_truth() {
    let out = fresh_command()
        .arg("--print-capabilities")
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(
        s.starts_with('{') && s.trim_end().ends_with('}'),
        "only JSON on stdout: {s}"
    );
    assert!(s.contains("\"type\": \"gpu\""), "{s}");
    // "virgl" is listed exactly when --virgl really starts on this host.
    let claims_virgl = s.contains("\"virgl\"");
    let (virgl_starts, err) = starts(&["--virgl"]);
    assert_eq!(
        claims_virgl, virgl_starts,
        "capabilities {s} vs --virgl: {err}"
    );
}

#[test]
fn virgl_on_a_missing_render_node_fails_clearly() {
    let (ok, err) = starts(&["--virgl", "--render-node", "/nonexistent/renderD128"]);
    assert!(!ok, "virgl claimed to start on a missing render node");
    assert!(err.contains("virgl"), "{err}");
    // auto falls back to 2D on the same node, and says why.
    let (ok, err) = starts(&[
        "--render-node",
        "/nonexistent/renderD128",
        "--log-level",
        "info",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("renderer auto: 2d"), "{err}");
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
        let out = fresh_command().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
    }
    let many: Vec<String> = (0..17)
        .flat_map(|_| ["--display".to_string(), "64x64".to_string()])
        .collect();
    let out = fresh_command()
        .args(&many)
        .args(["-s", "/tmp/x.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "17 scanouts accepted");
    // VNC: a scanout the device does not have, and an open address without a password.
    for (args, why) in [
        (
            &["--vnc", "127.0.0.1:0", "--vnc-scanout", "1"][..],
            "--vnc-scanout 1 names no scanout",
        ),
        (&["--vnc", "0.0.0.0:0"], "is not a loopback address"),
    ] {
        let out = fresh_command()
            .args(["-s", "/tmp/x-vnc.sock", "--renderer", "2d"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(why),
            "{args:?}: {err}"
        );
    }
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
    let mut child = fresh_command().arg(format!("--fd={fd}")).spawn().unwrap();
    let conn = Connection::connect(&path, &ConnectOptions::default());
    let mut g = Gpu {
        conn: conn.unwrap(),
    };
    assert_eq!(g.create_2d(1, B8G8R8X8, 16, 16), OK_NODATA);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// How libvirt starts a backend: `--fd=N`, N one end of a connected socket pair whose other
/// end QEMU gets. vhost-gpu serves that one frontend and exits when it hangs up.
#[test]
fn inherited_connected_socket_serves_one_frontend_then_exits() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fd = theirs.as_raw_fd();
    // SAFETY: clears FD_CLOEXEC on a socket this test owns, so that the child inherits it.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    let mut child = fresh_command()
        .arg(format!("--fd={fd}"))
        .args(["--renderer", "2d"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(theirs);
    let mut g = Gpu {
        conn: Connection::over_stream(ours, &ConnectOptions::default()).unwrap(),
    };
    assert_eq!(g.create_2d(1, B8G8R8X8, 16, 16), OK_NODATA);
    assert_eq!(g.create_2d(1, B8G8R8X8, 16, 16), ERR_INVALID_RESOURCE_ID);
    drop(g);
    // The frontend left: the backend ends on its own, with success.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("vhost-gpu kept running after its one frontend left");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(st.success(), "{st}: {err}");
    assert!(err.contains("connected socket"), "{err}");
}

/// A descriptor that cannot be served fails at start, saying what it is.
#[test]
fn a_bad_fd_is_refused_with_its_reason() {
    let file = std::fs::File::open("/dev/null").unwrap();
    let (d, _d2) = std::os::unix::net::UnixDatagram::pair().unwrap();
    for (fd, want) in [
        (file.as_raw_fd(), "not a socket"),
        (d.as_raw_fd(), "not a stream socket"),
        (999, "not open"),
    ] {
        // SAFETY: clears FD_CLOEXEC on descriptors this test owns (999 is not open: EBADF).
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        let out = fresh_command()
            .arg(format!("--fd={fd}"))
            .args(["--renderer", "2d"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{fd}: {err}");
        assert!(err.contains(want), "--fd {fd}: want {want:?} in {err}");
    }
}

#[test]
fn sandbox_is_on_by_default_on_every_thread_and_off_on_request() {
    use guest_tests::{Backend, BackendOptions};
    for (args, want) in [(vec![], "2"), (vec!["--sandbox", "off"], "0")] {
        let mut args: Vec<String> = args.into_iter().map(String::from).collect();
        args.extend(["--renderer", "2d"].map(String::from));
        let mut b = Backend::start(&BackendOptions { args });
        // Serving one guest starts more threads; all of them carry the filter.
        let mut g = Gpu::connect(&b, &ConnectOptions::default());
        assert_eq!(g.create_2d(1, B8G8R8X8, 4, 4), OK_NODATA);
        // The filter is installed after the socket is up: wait for the log line.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !b.log_text().contains("sandbox") && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let tasks = std::fs::read_dir(format!("/proc/{}/task", b.pid())).unwrap();
        let mut n = 0;
        for t in tasks {
            let tid: u32 = t.unwrap().file_name().to_str().unwrap().parse().unwrap();
            let status = format!("/proc/{}/task/{tid}/status", b.pid());
            let mode =
                guest_tests::frontend::status_field(std::path::Path::new(&status), "Seccomp");
            assert_eq!(mode, want, "thread {tid}, args {want}");
            n += 1;
        }
        assert!(n >= 2, "{n} threads");
        assert_eq!(b.status_field("Seccomp"), want);
        assert!(b.alive());
    }
}

/// Started as root with `--user nobody`, vhost-gpu serves as nobody, with no home to cache
/// shaders in (said in its log). Not as root, `--user` is refused with its reason.
#[test]
fn user_drops_root_after_the_socket_is_up() {
    use guest_tests::{Backend, BackendOptions};
    let args = ["--user", "nobody", "--renderer", "2d"]
        .map(String::from)
        .to_vec();
    // SAFETY: geteuid has no arguments.
    if unsafe { libc::geteuid() } != 0 {
        let out = fresh_command()
            .args(&args)
            .args(["--socket-path", "/tmp/vhost-gpu-user.sock"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("needs vhost-gpu to start as root"));
        return;
    }
    let mut b = Backend::start(&BackendOptions { args });
    let mut g = Gpu::connect(&b, &ConnectOptions::default());
    assert_eq!(g.create_2d(1, B8G8R8X8, 8, 8), OK_NODATA);
    let log = b.log_text();
    assert!(log.contains("running as user nobody (uid 65534"), "{log}");
    assert!(log.contains("shader cache: off"), "{log}");
    for key in ["Uid", "Gid"] {
        let ids = b.status_field(key);
        assert!(
            ids.split_whitespace().all(|id| id == "65534"),
            "{key}: {ids}"
        );
    }
    assert_eq!(b.status_field("Groups"), "65534");
    assert!(b.alive());
}
