//! The few system calls the proxy makes outside monoio, each wrapped safely here.

use std::os::fd::RawFd;

/// Whether a pooled, idle connection can no longer carry a request: the peer closed it, reset
/// it, or sent bytes nobody asked for. One non-blocking `recv(MSG_PEEK)`; used only before
/// streaming a request body that could not be replayed.
#[allow(unsafe_code)]
pub fn idle_connection_is_dead(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: `fd` is a socket owned by the caller for the duration of the call; the buffer is
    // one valid, writable byte; MSG_PEEK leaves the socket's data untouched.
    let n = unsafe {
        libc::recv(
            fd,
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let err = std::io::Error::last_os_error();
        return !matches!(err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR));
    }
    true
}

/// Raises the soft limit on open files to the hard limit (a proxy holds two descriptors per
/// proxied connection). Returns the new soft limit.
#[allow(unsafe_code)]
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; raising the soft limit up to the hard one is allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// The CPUs this process may run on, from `/proc/self/status`; empty if unknown.
pub fn allowed_cpus() -> Vec<usize> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return Vec::new();
    };
    let Some(list) = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
    else {
        return Vec::new();
    };
    parse_cpu_list(list.trim())
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    cpus.extend(a..=b);
                }
            }
            None => {
                if let Ok(c) = part.parse() {
                    cpus.push(c);
                }
            }
        }
    }
    cpus
}

/// Shuts a socket down both ways: its peer sees the end at once, and operations pending on it
/// complete, even before the descriptor itself is closed.
#[allow(unsafe_code)]
pub fn shutdown(fd: RawFd) {
    // SAFETY: `fd` is a socket the caller owns; shutdown(2) neither closes nor frees it.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// Marks a descriptor close-on-exec. monoio's io_uring accept takes no flags, so accepted
/// sockets are inherited by any child the process starts, which then holds them open (and their
/// peers wait for an end that never comes).
#[allow(unsafe_code)]
pub fn set_cloexec(fd: RawFd) {
    // SAFETY: `fd` is a descriptor the caller owns; F_SETFD changes only its flags.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
}

/// Starts writing a file's dirty pages in `[offset, offset + len)` to disk, without waiting for
/// them (sync_file_range(2)); errors are ignored, as this only spreads writeback out.
#[allow(unsafe_code)]
pub fn start_writeback(fd: RawFd, offset: u64, len: u64) {
    // SAFETY: `fd` is a descriptor the caller owns; the call reads no memory of ours.
    unsafe {
        libc::sync_file_range(
            fd,
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Drops a file's cached pages in `[offset, offset + len)` that are already on disk (dirty pages
/// and pages being written stay); errors are ignored, as this only frees memory.
#[allow(unsafe_code)]
pub fn drop_cached(fd: RawFd, offset: u64, len: u64) {
    // SAFETY: as above; posix_fadvise(2) only advises the kernel.
    unsafe {
        libc::posix_fadvise(
            fd,
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn fd_limit_is_raised_to_the_hard_limit() {
        let n = raise_fd_limit().unwrap();
        assert!(n >= 1024);
        assert_eq!(raise_fd_limit().unwrap(), n);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8,10-11"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpu_list("1"), vec![1]);
        assert!(!allowed_cpus().is_empty());
    }

    #[test]
    fn peek_tells_alive_from_closed() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        assert!(!idle_connection_is_dead(c.as_raw_fd()));
        s.write_all(b"x").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(idle_connection_is_dead(c.as_raw_fd()), "unsolicited bytes");
        let c2 = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s2, _) = l.accept().unwrap();
        drop(s2);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(idle_connection_is_dead(c2.as_raw_fd()), "closed by peer");
    }
}
