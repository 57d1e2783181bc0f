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

/// A second descriptor for the socket `fd` (close-on-exec), closed when the result is dropped.
#[allow(unsafe_code)]
pub fn duplicate(fd: RawFd) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) touches no memory of ours; it fails on a bad descriptor.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `n` is a descriptor fcntl just opened for us: nothing else owns or closes it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(n) })
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
/// The effective user id of this process.
#[allow(unsafe_code)]
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The IP addresses of this host's interfaces (for a certificate a server bound to every
/// address presents). Empty when they cannot be listed.
#[allow(unsafe_code)]
pub fn local_addresses() -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list that freeifaddrs releases; every node
    // and address is read only while the list lives, and each sockaddr is read as the type its
    // family names.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut at = list;
        while !at.is_null() {
            let a = (*at).ifa_addr;
            if !a.is_null() {
                match i32::from((*a).sa_family) {
                    libc::AF_INET => {
                        let v4 = &*(a as *const libc::sockaddr_in);
                        out.push(std::net::IpAddr::V4(std::net::Ipv4Addr::from(
                            u32::from_be(v4.sin_addr.s_addr),
                        )));
                    }
                    libc::AF_INET6 => {
                        let v6 = &*(a as *const libc::sockaddr_in6);
                        out.push(std::net::IpAddr::V6(std::net::Ipv6Addr::from(
                            v6.sin6_addr.s6_addr,
                        )));
                    }
                    _ => {}
                }
            }
            at = (*at).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    out.sort();
    out.dedup();
    out
}

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

/// Puts the calling thread in the `SCHED_BATCH` class: it still gets its fair share of the
/// CPU, but waking it does not preempt the thread running there (a worker on the same core).
/// Errors are ignored: this only changes when the thread runs.
#[allow(unsafe_code)]
pub fn batch_scheduling() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param; pid 0 names the calling thread.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
}

/// Turns `O_DIRECT` on or off for a file descriptor (fcntl(2) `F_SETFL`).
#[allow(unsafe_code)]
pub fn set_direct(fd: RawFd, on: bool) -> std::io::Result<()> {
    // SAFETY: `fd` is a descriptor the caller owns; F_GETFL and F_SETFL read and change only its
    // status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The alignment [`AlignedBuf`] gives: direct I/O (`O_DIRECT`) wants the memory, the file offset
/// and the length aligned to the device's logical block, 4 KiB at most on common disks.
pub const DIRECT_ALIGN: usize = 4096;

#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Block([u8; DIRECT_ALIGN]);

/// A growable byte buffer that starts on a [`DIRECT_ALIGN`] boundary in memory.
#[derive(Default)]
pub struct AlignedBuf {
    blocks: Vec<Block>,
    len: usize,
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish()
    }
}

#[allow(unsafe_code)]
impl AlignedBuf {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `Block` is a `repr(C)` byte array without padding, the blocks are contiguous
        // and initialised, and `len` never passes their size.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr().cast::<u8>(), self.len) }
    }

    /// All the blocks' bytes, past `len` included.
    fn bytes_mut(&mut self) -> &mut [u8] {
        let size = self.blocks.len() * DIRECT_ALIGN;
        // SAFETY: as in `as_slice`, over every block; the borrow of `self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast::<u8>(), size) }
    }

    /// Sets the length, growing the buffer if needed; bytes it did not hold before are zero.
    pub fn resize(&mut self, len: usize) {
        let blocks = len.div_ceil(DIRECT_ALIGN);
        if blocks > self.blocks.len() {
            self.blocks.resize(blocks, Block([0; DIRECT_ALIGN]));
        }
        self.len = len;
    }

    pub fn extend_from_slice(&mut self, data: &[u8]) {
        let at = self.len;
        self.resize(at + data.len());
        self.bytes_mut()[at..at + data.len()].copy_from_slice(data);
    }

    /// Removes the first `n` bytes, moving the rest to the front.
    pub fn discard_front(&mut self, n: usize) {
        let len = self.len;
        self.bytes_mut().copy_within(n..len, 0);
        self.len = len - n;
    }
}

/// Gives the allocator's free memory back to the system: glibc keeps what a burst freed in its
/// arenas (`malloc_trim` returns the free pages in the middle of them too, not only at the
/// top). Called by the trimming thread ([`crate::trim`]) after a burst has passed, never on
/// the request path; a no-op with other C libraries.
#[allow(unsafe_code)]
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and only rearranges the allocator's own free lists
    // under its locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `SO_ORIGINAL_DST` and its IPv6 form `IP6T_SO_ORIGINAL_DST` (both 80 in `<linux/netfilter_ipv4.h>`
/// and `<linux/netfilter_ipv6/ip6_tables.h>`).
const SO_ORIGINAL_DST: libc::c_int = 80;

/// Where a connection accepted by a netfilter `redirect` (or `dnat`) was going before it was
/// redirected, read from conntrack. `ipv6`: the connection is IPv6 (not IPv4, and not IPv4
/// mapped onto an IPv6 socket, whose conntrack entry is IPv4). `ENOENT`: the connection was
/// not redirected.
#[allow(unsafe_code)]
pub fn original_dst(fd: RawFd, ipv6: bool) -> std::io::Result<std::net::SocketAddr> {
    // SAFETY: `storage` is a zeroed sockaddr_storage, large enough for either family; `len`
    // tells the kernel its size and comes back with the length written; each form is read as
    // the family the kernel reports.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let level = if ipv6 { libc::SOL_IPV6 } else { libc::SOL_IP };
        let rc = libc::getsockopt(
            fd,
            level,
            SO_ORIGINAL_DST,
            (&raw mut storage).cast(),
            &mut len,
        );
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        match i32::from(storage.ss_family) {
            libc::AF_INET => {
                let v4 = &*((&raw const storage) as *const libc::sockaddr_in);
                Ok(std::net::SocketAddr::from((
                    std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
                    u16::from_be(v4.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let v6 = &*((&raw const storage) as *const libc::sockaddr_in6);
                Ok(std::net::SocketAddr::V6(std::net::SocketAddrV6::new(
                    std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr),
                    u16::from_be(v6.sin6_port),
                    // Left out: the flow label and scope are no part of where it was going,
                    // and the address is compared with configured ones.
                    0,
                    0,
                )))
            }
            _ => Err(std::io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
        }
    }
}

/// An address as the IPv4 address it is when the kernel reports it in the mapped IPv6 form
/// (`::ffff:10.0.0.1`, as a dual-stack socket does for IPv4 peers and destinations).
pub fn unmapped(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    match addr {
        std::net::SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => std::net::SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

/// Copies the bytes waiting on a socket into `buf` without taking them (`MSG_PEEK`), without
/// waiting. `Ok(0)`: the peer closed; `WouldBlock`: nothing yet.
#[allow(unsafe_code)]
pub fn peek(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `fd` is a socket owned by the caller for the duration of the call; `buf` is valid
    // and writable for its length; MSG_PEEK leaves the socket's data in place.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Bytes this TCP socket has handed to IP (`tcpi_bytes_sent`). Bytes the kernel shortcut
/// (`ringmesh init --accelerate`) moved straight to the peer's receive queue are not counted,
/// which is how the proxy tells that the shortcut is in force.
#[allow(unsafe_code)]
pub fn tcp_bytes_sent(fd: RawFd) -> std::io::Result<u64> {
    // SAFETY: `info` is a zeroed tcp_info and `len` its size; the kernel writes at most `len`
    // bytes and the field read is inside them (checked against `len` below).
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        );
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let end = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_sent) + 8;
        if (len as usize) < end {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "the kernel's tcp_info has no tcpi_bytes_sent (Linux 4.19 or newer has)",
            ));
        }
        Ok(info.tcpi_bytes_sent)
    }
}

/// `O_NOFOLLOW` for `OpenOptionsExt::custom_flags`: the last component, if a symbolic link,
/// is refused rather than followed.
pub const O_NOFOLLOW: i32 = libc::O_NOFOLLOW;

/// Waits for an exclusive `flock` on `fd` (released when the file is closed): what makes two
/// processes take turns (`ringmesh init` mounting the BPF filesystem and attaching).
#[allow(unsafe_code)]
pub fn lock_exclusive(fd: RawFd) -> std::io::Result<()> {
    loop {
        // SAFETY: flock takes a descriptor and a flag; an invalid one is an error, not UB.
        if unsafe { libc::flock(fd, libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_counts_the_bytes_it_sends() {
        use std::io::{Read as _, Write as _};
        use std::os::fd::AsRawFd as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        assert_eq!(tcp_bytes_sent(client.as_raw_fd()).unwrap(), 0);
        client.write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).unwrap();
        assert_eq!(tcp_bytes_sent(client.as_raw_fd()).unwrap(), 5);
        assert!(tcp_bytes_sent(-1).is_err());
    }

    #[test]
    fn a_mapped_address_is_its_ipv4_address() {
        let mapped = "[::ffff:10.1.2.3]:4000".parse().unwrap();
        assert_eq!(unmapped(mapped), "10.1.2.3:4000".parse().unwrap());
        let v6 = "[fd00::1]:4000".parse().unwrap();
        assert_eq!(unmapped(v6), v6);
    }

    #[test]
    fn the_loopback_address_is_among_the_local_ones() {
        let addrs = local_addresses();
        assert!(addrs.contains(&"127.0.0.1".parse().unwrap()), "{addrs:?}");
    }
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn fd_limit_is_raised_to_the_hard_limit() {
        let n = raise_fd_limit().unwrap();
        assert!(n >= 1024);
        assert_eq!(raise_fd_limit().unwrap(), n);
    }

    #[test]
    fn an_aligned_buffer_stays_aligned_as_it_grows_and_moves() {
        let mut b = AlignedBuf::default();
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        b.extend_from_slice(&data[..100]);
        b.extend_from_slice(&data[100..]);
        assert_eq!(b.as_slice(), &data[..]);
        assert_eq!(b.as_slice().as_ptr() as usize % DIRECT_ALIGN, 0);
        b.discard_front(8192);
        assert_eq!(b.as_slice(), &data[8192..]);
        b.resize(3);
        b.extend_from_slice(b"xyz");
        assert_eq!(b.as_slice(), [&data[8192..8195], b"xyz"].concat());
        assert_eq!(b.as_slice().as_ptr() as usize % DIRECT_ALIGN, 0);
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
