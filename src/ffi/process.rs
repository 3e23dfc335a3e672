//! Process-level unsafe calls with safe faces: SIGINT/SIGTERM handlers that only set a flag
//! (async-signal-safe) and end the process at once on the second signal, a SIGUSR1 handler that
//! counts save requests, a self-SIGKILL for
//! fault-injection tests, signals for children (and children that die with their parent), and
//! whether a PID is alive.

use std::sync::atomic::{AtomicI32, Ordering};

/// The first termination signal received (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // A second signal ends the process at once, with the shell's code for that signal.
    if RECEIVED.swap(sig, Ordering::SeqCst) != 0 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + sig) };
    }
}

/// SIGUSR1s received and not yet taken (a request to save now and go on).
static SAVE_REQUESTS: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_save_signal(_sig: libc::c_int) {
    SAVE_REQUESTS.fetch_add(1, Ordering::SeqCst);
}

/// Installs the handlers for SIGINT and SIGTERM (stop), and SIGUSR1 (save now) (idempotent).
pub fn install_termination_handlers() -> std::io::Result<()> {
    let handlers: [(libc::c_int, extern "C" fn(libc::c_int)); 3] =
        [(libc::SIGINT, on_signal), (libc::SIGTERM, on_signal), (libc::SIGUSR1, on_save_signal)];
    for (sig, handler) in handlers {
        // SAFETY: a zeroed sigaction with a plain handler function that only touches an atomic
        // (or calls _exit); sigemptyset and sigaction get valid pointers.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes a closed stdout end the process quietly, as it ends `cat` or `grep` (`resnet-train
/// predict ... | head`): the default SIGPIPE action, which Rust's runtime replaces with "ignore"
/// (a write then fails and `println!` panics). Only for commands that print reports and open no
/// sockets: with the default action a write to a dead peer's socket would kill the process.
pub fn end_quietly_on_closed_stdout() {
    // SAFETY: restoring a signal's default disposition has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// The termination signal received so far, if any (`libc::SIGINT` or `libc::SIGTERM`).
pub fn termination_requested() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Whether a SIGUSR1 arrived since the last call (a cluster's "save now": the run saves `last`
/// at the next step boundary and goes on).
pub fn take_save_request() -> bool {
    SAVE_REQUESTS.swap(0, Ordering::SeqCst) > 0
}

/// Sends SIGKILL to this process (fault injection: a kill at an exact instant).
pub fn kill_self() -> ! {
    // SAFETY: plain syscalls with valid arguments; SIGKILL cannot be caught, so this does not return.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

/// Asks a child process to stop (SIGTERM: a training run checkpoints and exits, resumable).
pub fn terminate(pid: u32) {
    send_signal(pid, libc::SIGTERM);
}

/// Sends `signal` to process `pid` (one that has already exited just makes it fail).
pub fn send_signal(pid: u32, signal: i32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return };
    // SAFETY: a plain syscall.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Makes a child started by `cmd` its own process group (a terminal's Ctrl-C reaches only this
/// process, which forwards it once) and sends it SIGTERM if this process dies (no orphaned ranks).
pub fn own_group_dies_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Whether a process with this PID exists on this machine.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The process's peak resident set size in bytes (getrusage's ru_maxrss; 0 if unavailable).
pub fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    usage.ru_maxrss.max(0) as u64 * 1024 // KiB on Linux
}

/// The current resident set size in bytes (/proc/self/statm's second field, in pages; 0 if
/// unavailable).
pub fn current_rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .unwrap_or(0);
    // SAFETY: sysconf with a valid name has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64
}
