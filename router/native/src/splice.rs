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
use std::time::Instant;

use crate::fdio::{deadline, splice, wait};

/// How a move ended; `moved` counts the bytes taken from the source.
#[derive(Debug)]
pub enum Outcome {
    Done,
    SourceTimeout { moved: u64 },
    SourceClosed { moved: u64 },
    SourceError { moved: u64, error: io::Error },
    SinkTimeout { moved: u64 },
    SinkError { moved: u64, error: io::Error },
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
    /// Run the move; `on_wait(false, taken, sent)` before waiting on the
    /// source, `on_wait(true, taken, sent)` before waiting on the sink (the
    /// first wait of a drain), with the bytes taken from the source and
    /// written to the sink so far: the caller's progress shows them while
    /// the move waits.
    pub fn run(&self, on_wait: &mut dyn FnMut(bool, u64, u64)) -> Outcome {
        let mut moved = 0u64;
        while moved < self.size {
            let want = (self.size - moved).min(self.capacity) as usize;
            let got = match splice(self.source, self.pipe_write, want, false) {
                Ok(0) => return Outcome::SourceClosed { moved },
                Ok(got) => got,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    on_wait(false, moved, moved);
                    if !wait(self.source, libc::POLLIN, deadline(self.source_timeout)) {
                        return Outcome::SourceTimeout { moved };
                    }
                    continue;
                }
                Err(error) => return Outcome::SourceError { moved, error },
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
                            on_wait(true, moved, moved - left as u64);
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
