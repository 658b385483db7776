//! What happens to a system call outside the policy: the filter answers SECCOMP_RET_TRAP, the
//! kernel raises SIGSYS in the thread that made it, and [`on_sigsys`] says which call, which
//! thread, and what happens next — on stderr and in the system log — before the process exits
//! with [`SANDBOX_EXIT`] (or, in log mode, before it carries the call out).
//!
//! The handler runs inside a signal: it allocates nothing, takes no lock and calls only
//! `prctl(PR_GET_NAME)`, `write`, `sendto` and `exit_group`, all allowed by the policy.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use seccompiler::{sock_filter, BpfProgram};

use super::{syscalls, Enforcement};

/// Exit status after a call outside the policy (128 + SIGSYS, as a shell reports a death by
/// SIGSYS; no other path of vhost-gpu exits with it).
pub const SANDBOX_EXIT: i32 = 128 + libc::SIGSYS;

static LOG_ONLY: AtomicBool = AtomicBool::new(false);
/// A connected datagram socket to the system log, or -1.
static SYSLOG_FD: AtomicI32 = AtomicI32::new(-1);
/// System calls already reported in log mode, one bit each.
static REPORTED: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

/// Also send the handler's report to this connected system-log socket.
pub fn set_syslog_fd(fd: i32) {
    SYSLOG_FD.store(fd, Ordering::Relaxed);
}

/// A fixed-size line built without allocating.
struct Line {
    buf: [u8; 384],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Line {
            buf: [0; 384],
            len: 0,
        }
    }

    fn push(&mut self, s: &[u8]) -> &mut Self {
        for &b in s {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
        self
    }

    fn num(&mut self, mut n: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 || i == 0 {
                break;
            }
        }
        self.push(&digits[i..])
    }

    fn hex(&mut self, n: u64) -> &mut Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        self.push(b"0x");
        let mut started = false;
        for shift in (0..16).rev() {
            let d = ((n >> (shift * 4)) & 0xf) as usize;
            if d != 0 || started || shift == 0 {
                started = true;
                self.push(&DIGITS[d..=d]);
            }
        }
        self
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The report of one call: "thread 'NAME' made system call NR (NAME) with arguments A, B, C,
/// which the sandbox's policy does not allow; " followed by `what_next`. (The first three
/// arguments name what was asked: an ioctl's request, a socket's family, clone's flags.)
fn report(nr: i64, args: [u64; 3], what_next: &[u8]) -> Line {
    let mut name = [0u8; 17];
    // SAFETY: PR_GET_NAME writes at most 16 bytes and a NUL into `name`, 17 bytes long.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(16);
    let mut l = Line::new();
    l.push(b"sandbox: thread '")
        .push(&name[..name_len])
        .push(b"' made system call ")
        .num(nr as u64)
        .push(b" (")
        .push(syscalls::name(nr).as_bytes())
        .push(b") with arguments ")
        .hex(args[0])
        .push(b", ")
        .hex(args[1])
        .push(b", ")
        .hex(args[2])
        .push(b", which the sandbox's policy does not allow; ")
        .push(what_next);
    l
}

/// Writes `msg` to stderr and, if there is one, to the system log (facility daemon, severity
/// error).
fn tell(msg: &Line) {
    let mut err = Line::new();
    err.push(b"vhost-gpu: ").push(msg.bytes()).push(b"\n");
    // SAFETY: write of an initialised stack buffer to fd 2; a failure is ignored (nothing
    // else could be done with it here).
    unsafe { libc::write(2, err.buf.as_ptr().cast(), err.len) };
    let fd = SYSLOG_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let mut sys = Line::new();
        // SAFETY: getpid has no arguments.
        let pid = unsafe { libc::getpid() };
        sys.push(b"<27>vhost-gpu[")
            .num(pid as u64)
            .push(b"]: ")
            .push(msg.bytes());
        // SAFETY: send of an initialised stack buffer on a connected socket.
        unsafe { libc::send(fd, sys.buf.as_ptr().cast(), sys.len, libc::MSG_DONTWAIT) };
    }
}

/// The SIGSYS layout of `siginfo_t` on x86_64 (`_sigsys` of the kernel's union).
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    call_addr: *mut libc::c_void,
    syscall: i32,
    arch: u32,
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS, whose layout SigsysInfo
    // describes (same size or smaller: siginfo_t is 128 bytes).
    let nr = i64::from(unsafe { (*info.cast::<SigsysInfo>()).syscall });
    // SAFETY: `ctx` is the ucontext_t the kernel saved for this thread; its registers hold the
    // trapped call's arguments (x86_64 ABI: rdi, rsi, rdx, r10, r8, r9).
    let g = unsafe { &mut (*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
    let reg = |r: libc::c_int| g[r as usize];
    let args = [
        reg(libc::REG_RDI) as u64,
        reg(libc::REG_RSI) as u64,
        reg(libc::REG_RDX) as u64,
    ];
    if !LOG_ONLY.load(Ordering::Relaxed) {
        let mut what = Line::new();
        what.push(b"exiting with status ")
            .num(SANDBOX_EXIT as u64)
            .push(b" (--sandbox log reports such calls and lets them run)");
        tell(&report(nr, args, what.bytes()));
        // SAFETY: exit_group ends the process; nothing is left to clean up that matters.
        unsafe { libc::syscall(libc::SYS_exit_group, SANDBOX_EXIT) };
        return;
    }
    let bit = (nr as u64) % 512;
    let word = &REPORTED[(bit / 64) as usize];
    if word.fetch_or(1 << (bit % 64), Ordering::Relaxed) & (1 << (bit % 64)) == 0 {
        tell(&report(
            nr,
            args,
            b"allowed (--sandbox log; reported once per call)",
        ));
    }
    // SAFETY: the call is made again, with the arguments it was made with, from
    // `vhost_gpu_replay_syscall`, whose address the filter lets through, and its result put
    // where the interrupted code expects it (rax).
    unsafe {
        let r = vhost_gpu_replay_syscall(
            nr,
            g[libc::REG_RDI as usize],
            g[libc::REG_RSI as usize],
            g[libc::REG_RDX as usize],
            g[libc::REG_R10 as usize],
            g[libc::REG_R8 as usize],
            g[libc::REG_R9 as usize],
        );
        g[libc::REG_RAX as usize] = r;
    }
}

std::arch::global_asm!(
    ".globl vhost_gpu_replay_syscall",
    ".globl vhost_gpu_replay_syscall_ret",
    "vhost_gpu_replay_syscall:",
    "mov rax, rdi",
    "mov rdi, rsi",
    "mov rsi, rdx",
    "mov rdx, rcx",
    "mov r10, r8",
    "mov r8, r9",
    "mov r9, [rsp + 8]",
    "syscall",
    "vhost_gpu_replay_syscall_ret:",
    "ret",
);

extern "C" {
    /// Makes system call `nr` with six arguments from one fixed instruction, which the log-mode
    /// filter allows (see [`allow_replays`]).
    fn vhost_gpu_replay_syscall(nr: i64, a: i64, b: i64, c: i64, d: i64, e: i64, f: i64) -> i64;
    /// The address right after that instruction: what seccomp sees as the caller.
    static vhost_gpu_replay_syscall_ret: u8;
}

/// Puts a check in front of `prog`: a call made from `vhost_gpu_replay_syscall`'s instruction is
/// allowed. Log mode only: it lets the handler carry out a reported call.
pub fn allow_replays(prog: BpfProgram) -> BpfProgram {
    // Only the label's address is taken; nothing is read through it.
    let ip = std::ptr::addr_of!(vhost_gpu_replay_syscall_ret) as u64;
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
                             // struct seccomp_data: nr at 0, arch at 4, instruction_pointer at 8 (low word first).
    let mut out = vec![
        sock_filter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 8,
        },
        sock_filter {
            code: JEQ_K,
            jt: 0,
            jf: 3,
            k: ip as u32,
        },
        sock_filter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 12,
        },
        sock_filter {
            code: JEQ_K,
            jt: 0,
            jf: 1,
            k: (ip >> 32) as u32,
        },
        sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    out.extend(prog);
    out
}

/// Sets `handler` (address of an `extern "C"` function of the right kind for `flags`) as the
/// process-wide action for `sig`.
fn set_handler(sig: libc::c_int, handler: usize, flags: libc::c_int) -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction with a handler function of this module and an empty mask;
    // sigaction only copies it into the kernel.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        sa.sa_flags = flags;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Installs [`on_sigsys`] for the whole process.
pub fn install_handler(enforcement: Enforcement) -> std::io::Result<()> {
    LOG_ONLY.store(enforcement == Enforcement::Log, Ordering::Relaxed);
    set_handler(
        libc::SIGSYS,
        on_sigsys as *const () as usize,
        libc::SA_SIGINFO | libc::SA_ONSTACK,
    )
}

extern "C" fn on_term(sig: libc::c_int) {
    let mut l = Line::new();
    l.push(b"exiting: signal ")
        .num(sig as u64)
        .push(if sig == libc::SIGTERM {
            b" (SIGTERM)".as_slice()
        } else {
            b" (SIGINT)".as_slice()
        });
    tell(&l);
    // SAFETY: exit_group ends the process, with the status a shell gives a death by `sig`.
    unsafe { libc::syscall(libc::SYS_exit_group, 128 + sig) };
}

/// Reports SIGTERM and SIGINT (how launchers stop a backend) before exiting, so that this exit
/// too names its reason, in the system log as well.
pub fn report_termination() -> std::io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        set_handler(sig, on_term as *const () as usize, 0)?;
    }
    Ok(())
}
