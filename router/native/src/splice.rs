//! `Splicer.move` of `gatewaypool_router/splice.py`, with the GIL released.
//!
//! The same loop: splice from the source socket into the pipe (non-blocking;
//! on EAGAIN wait for POLLIN up to the source's timeout, counted afresh at
//! each wait), then drain the pipe into the sink (on EAGAIN wait for
//! POLLOUT up to the sink's timeout, counted from the first wait and reset
//! by progress). What Python raised is returned as an `Outcome` and raised
//! by the Python side, so the exceptions stay where they are defined.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// How a move ended; `moved` counts the bytes taken from the source.
pub enum Outcome {
    Done,
    SourceTimeout,
    SourceClosed,
    SourceError(io::Error),
    SinkTimeout { moved: u64 },
    SinkError { moved: u64, error: io::Error },
}

fn splice(from: RawFd, to: RawFd, size: usize, more: bool) -> io::Result<usize> {
    let mut flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    if more {
        flags |= libc::SPLICE_F_MORE;
    }
    loop {
        // SAFETY: plain file descriptors, no offsets (sockets and pipes).
        let got = unsafe {
            libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), size, flags)
        };
        if got >= 0 {
            return Ok(got as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Wait for `events` on `fd` until `deadline` (None: forever); false when
/// the deadline passed. Any event (hang-up, error) counts as ready: the next
/// splice tells what it was.
fn wait(fd: RawFd, events: libc::c_short, deadline: Option<Instant>) -> bool {
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

fn deadline(timeout: Option<f64>) -> Option<Instant> {
    timeout.map(|seconds| Instant::now() + Duration::from_secs_f64(seconds.max(0.0)))
}

pub struct Move {
    pub source: RawFd,
    pub sink: RawFd,
    pub pipe_read: RawFd,
    pub pipe_write: RawFd,
    pub capacity: u64,
    pub size: u64,
    pub more: bool,
    pub source_timeout: Option<f64>,
    pub sink_timeout: Option<f64>,
}

impl Move {
    /// Run the move; `on_wait(false)` before waiting on the source,
    /// `on_wait(true)` before waiting on the sink (the first wait of a drain).
    pub fn run(&self, on_wait: &mut dyn FnMut(bool)) -> Outcome {
        let mut moved = 0u64;
        while moved < self.size {
            let want = (self.size - moved).min(self.capacity) as usize;
            let got = match splice(self.source, self.pipe_write, want, false) {
                Ok(0) => return Outcome::SourceClosed,
                Ok(got) => got,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    on_wait(false);
                    if !wait(self.source, libc::POLLIN, deadline(self.source_timeout)) {
                        return Outcome::SourceTimeout;
                    }
                    continue;
                }
                Err(error) => return Outcome::SourceError(error),
            };
            moved += got as u64;
            let more = self.more || moved < self.size;
            let mut left = got;
            let mut sink_deadline: Option<Option<Instant>> = None;
            while left > 0 {
                match splice(self.pipe_read, self.sink, left, more) {
                    Ok(sent) => {
                        left -= sent;
                        sink_deadline = None;
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        let until = *sink_deadline.get_or_insert_with(|| {
                            on_wait(true);
                            deadline(self.sink_timeout)
                        });
                        if !wait(self.sink, libc::POLLOUT, until) {
                            return Outcome::SinkTimeout { moved };
                        }
                    }
                    Err(error) => return Outcome::SinkError { moved, error },
                }
            }
        }
        Outcome::Done
    }
}
