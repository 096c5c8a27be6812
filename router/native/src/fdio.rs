//! System calls on the router's sockets and pipe, as Python's socket module
//! makes them: descriptors in non-blocking mode (a Python socket with a
//! timeout is one), EINTR retried, EAGAIN answered by `poll` up to the
//! socket's timeout.
//!
//! Timeouts follow CPython's: a receive waits up to the timeout once per
//! call, a send's deadline is reset whenever bytes go out. So a native loop
//! times out exactly where the Python loop it replaces would have.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// The deadline for a wait starting now, `None` for a socket without timeout.
pub fn deadline(timeout: Option<f64>) -> Option<Instant> {
    timeout.map(|seconds| Instant::now() + Duration::from_secs_f64(seconds.max(0.0)))
}

/// Wait for `events` on `fd` until `deadline` (None: forever); false when
/// the deadline passed. Any event (hang-up, error) counts as ready: the next
/// call on the descriptor tells what it was.
pub fn wait(fd: RawFd, events: libc::c_short, deadline: Option<Instant>) -> bool {
    loop {
        let timeout_ms = match deadline {
            None => -1,
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    return false;
                }
                let left = deadline - now;
                (left.as_millis().max(1)).min(i32::MAX as u128) as i32
            }
        };
        let mut poll = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: one pollfd, owned here.
        let ready = unsafe { libc::poll(&mut poll, 1, timeout_ms) };
        if ready > 0 {
            return true;
        }
    }
}

/// Retry `call` on EINTR; a negative result is the errno it left.
fn retry(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let result = call();
        if result >= 0 {
            return Ok(result as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// One non-blocking `splice(2)` between a socket and a pipe.
pub fn splice(from: RawFd, to: RawFd, size: usize, more: bool) -> io::Result<usize> {
    let mut flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    if more {
        flags |= libc::SPLICE_F_MORE;
    }
    // SAFETY: plain file descriptors, no offsets (sockets and pipes).
    retry(|| unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            size,
            flags,
        )
    })
}

/// How a receive or a send on one socket failed.
pub enum SocketError {
    /// The socket's timeout passed while waiting.
    Timeout,
    /// The peer closed the connection (a receive got end of file).
    Closed,
    /// Any other error, as the system reported it.
    Os(io::Error),
}

/// Receive between 1 and `buf.len()` bytes, as `socket.recv` does: when
/// nothing is there, `on_wait` is called and the wait lasts up to `timeout`,
/// counted once for the whole call.
pub fn recv_some(
    fd: RawFd,
    buf: &mut [u8],
    timeout: Option<f64>,
    on_wait: &mut dyn FnMut(),
) -> Result<usize, SocketError> {
    let mut until: Option<Option<Instant>> = None;
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes and written only by recv.
        let got =
            retry(|| unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) as isize });
        match got {
            Ok(0) if !buf.is_empty() => return Err(SocketError::Closed),
            Ok(count) => return Ok(count),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                let deadline = *until.get_or_insert_with(|| {
                    on_wait();
                    deadline(timeout)
                });
                if !wait(fd, libc::POLLIN, deadline) {
                    return Err(SocketError::Timeout);
                }
            }
            Err(error) => return Err(SocketError::Os(error)),
        }
    }
}

/// Send all of `data`; `more` sets MSG_MORE (the rest of the PDU follows at
/// once). Waits up to `timeout` whenever the socket takes nothing, the wait
/// reset by progress, as `sendmsg` in a loop does (`pdus.send_buffers`).
pub fn send_all(
    fd: RawFd,
    mut data: &[u8],
    more: bool,
    timeout: Option<f64>,
    on_wait: &mut dyn FnMut(),
) -> Result<(), SocketError> {
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    let mut until: Option<Option<Instant>> = None;
    while !data.is_empty() {
        // SAFETY: `data` is valid for `data.len()` bytes, only read.
        match retry(|| unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), flags) as isize })
        {
            Ok(sent) => {
                data = &data[sent..];
                until = None;
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                let deadline = *until.get_or_insert_with(|| {
                    on_wait();
                    deadline(timeout)
                });
                if !wait(fd, libc::POLLOUT, deadline) {
                    return Err(SocketError::Timeout);
                }
            }
            Err(error) => return Err(SocketError::Os(error)),
        }
    }
    Ok(())
}
