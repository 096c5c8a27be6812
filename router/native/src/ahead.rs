//! The few sender bytes read ahead of where the stream is: what
//! `pdus.SocketReader` does with `read_ahead = HEADERS_AHEAD` for the
//! splicing path, natively.
//!
//! A header read asks one `recv` for up to `HEADERS_AHEAD` bytes, so a
//! P-DATA-TF header and its first PDV header usually come in one system
//! call, and no more than that lands in user space: every byte held here is
//! handed out before the socket may be spliced again. What is left when the
//! native call returns goes back to the Python reader.

use std::os::fd::RawFd;

use crate::fdio::{recv_some, SocketError};

/// A P-DATA-TF header and the first PDV header (`forwarding.HEADERS_AHEAD`).
pub const HEADERS_AHEAD: usize = 12;
const CAPACITY: usize = 2 * HEADERS_AHEAD;

pub struct Ahead {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Ahead {
    /// Start with `bytes` the Python reader had buffered (a few: its own
    /// read-ahead rule; room is made for more all the same).
    pub fn new(bytes: &[u8]) -> Self {
        let mut buf = vec![0; CAPACITY.max(bytes.len())];
        buf[..bytes.len()].copy_from_slice(bytes);
        Ahead {
            buf,
            start: 0,
            end: bytes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The bytes held, for the Python reader when the call returns.
    pub fn held(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Hand out up to `out.len()` held bytes; how many.
    pub fn take(&mut self, out: &mut [u8]) -> usize {
        let count = out.len().min(self.end - self.start);
        out[..count].copy_from_slice(&self.buf[self.start..self.start + count]);
        self.start += count;
        count
    }

    /// Read exactly `N` header bytes: held ones first, then one `recv` of
    /// up to `HEADERS_AHEAD` more at a time.
    pub fn header<const N: usize>(
        &mut self,
        fd: RawFd,
        timeout: Option<f64>,
        on_wait: &mut dyn FnMut(),
    ) -> Result<[u8; N], SocketError> {
        if self.end - self.start < N {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            while self.end < N {
                let want = (N - self.end)
                    .max(HEADERS_AHEAD)
                    .min(self.buf.len() - self.end);
                let got = recv_some(
                    fd,
                    &mut self.buf[self.end..self.end + want],
                    timeout,
                    on_wait,
                )?;
                self.end += got;
            }
        }
        let mut header = [0u8; N];
        header.copy_from_slice(&self.buf[self.start..self.start + N]);
        self.start += N;
        Ok(header)
    }
}
