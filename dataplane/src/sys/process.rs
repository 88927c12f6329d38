//! A child process that stops with its parent (`PR_SET_PDEATHSIG`), and the
//! allocator's free pages handed back to the system (`malloc_trim`).

use std::io;

/// Has the child `cmd` starts receive SIGTERM when the thread that starts it (the
/// caller's) exits, even by SIGKILL, and fail to start if that thread's process is
/// already gone. Linux only (`PR_SET_PDEATHSIG`); elsewhere it does nothing.
pub fn stop_with_parent(cmd: &mut std::process::Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the child between fork and exec and makes only
        // async-signal-safe system calls (prctl, getppid), allocating nothing.
        let parent = unsafe { libc::getpid() };
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent died before the line above: do not start at all.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// Hands the pages the allocator holds free back to the system (glibc's
/// `malloc_trim`): the memory of a burst of connections that ended is free inside the
/// process, but glibc keeps most of it, still counted in the process's resident size
/// (and its container's memory use). Elsewhere (musl, other systems) it does nothing.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the allocator's own locks and frees nothing that is
    // in use; it only advises the kernel about pages no allocation holds.
    unsafe {
        libc::malloc_trim(0);
    }
}
