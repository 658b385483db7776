//! The test guests' QEMU settings make the guest's atomic instructions atomic for host
//! processes too. Venus's ring status word is changed by the guest's driver and the render
//! server at once; under QEMU's TCG with one possible vCPU the guest's `lock` instructions are
//! a plain load and store, and vkmark hung when one of them undid the server's "idle" bit.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::infra::*;

#[test]
#[ignore = "needs QEMU and the test guest: run by scripts/test"]
fn guest_atomics_on_shared_memory_are_atomic_for_host_processes() {
    on(Release::Bookworm, || {
        // As every test guest runs (TCG: maxcpus=2): no add is lost.
        let (counter, guest, host) = race(&TCG);
        eprintln!("maxcpus=2: counter {counter}, guest adds {guest}, host adds {host}");
        assert!(host > 0, "the host added nothing while the guest did");
        assert_eq!(counter, guest + host, "adds were lost with maxcpus=2");
        // The control, TCG as the guests ran before (one vCPU, maxcpus 1): QEMU makes the
        // guest's `lock xadd` a load and a store, and adds are lost. (If this part fails, QEMU
        // changed, and the setting may no longer be needed.)
        let (counter, guest, host) = race(&["-accel", "tcg"]);
        eprintln!("maxcpus=1: counter {counter}, guest adds {guest}, host adds {host}");
        assert!(host > 0, "the host added nothing while the guest did");
        assert!(
            counter < guest + host,
            "no add was lost with maxcpus=1: counter {counter} = {guest} + {host}"
        );
    });
}

/// Boots a guest whose agent adds 2 million times to a counter on a page of its memory while
/// this process adds to the same counter through QEMU's memory file, until the guest is done.
/// Returns the counter, the guest's adds and the host's.
fn race(accel: &[&str]) -> (u64, u64, u64) {
    let dir = std::env::temp_dir().join(format!(
        "vhost-gpu-vm-atomics-{}-{}",
        std::process::id(),
        accel.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let guest_ops = 2000u64 * 1000;
    let mut vm = Vm::boot_device_accel(
        &dir,
        "atomics",
        &[],
        "atomics",
        "vgt.frames=2000",
        &[],
        &[],
        accel,
    );
    let boot = Duration::from_secs(240);
    vm.wait_serial("AGENT: atomics page", boot, |_| Ok(()))
        .unwrap_or_else(|e| panic!("{e}"));
    let phys = vm
        .line_after("AGENT: atomics page")
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .expect("the page's address");
    // QEMU's guest memory: the memfd of memory-backend-memfd, guest-physical address = offset
    // (1 GiB of RAM, all below the PCI hole).
    let pid = vm.child.id();
    let mem = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read_link(e.path())
                .map(|t| t.to_string_lossy().starts_with("/memfd:mem"))
                .unwrap_or(false)
        })
        .map(|e| e.path())
        .expect("QEMU's memfd");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&mem)
        .unwrap();
    // SAFETY: a shared mapping of one page of QEMU's guest memory file, at a page-aligned
    // offset inside it; unmapped below, and only reached through atomics.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            phys as libc::off_t,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
    // SAFETY: three aligned u32 at the start of the page just mapped, which stays mapped while
    // the slice is used.
    let words: &[AtomicU32] = unsafe { std::slice::from_raw_parts(p.cast::<AtomicU32>(), 3) };
    words[1].store(1, Ordering::SeqCst);
    let mut host = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while words[2].load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the guest did not finish its adds"
        );
        words[0].fetch_add(1, Ordering::SeqCst);
        host += 1;
    }
    let counter = u64::from(words[0].load(Ordering::SeqCst));
    // SAFETY: the mapping made above; `words` is not used after this.
    unsafe { libc::munmap(p, 4096) };
    vm.wait_serial("AGENT: result pass", boot, |_| Ok(()))
        .unwrap_or_else(|e| panic!("{e}"));
    vm.quit();
    let _ = std::fs::remove_dir_all(&dir);
    (counter, guest_ops, host)
}
