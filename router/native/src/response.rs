//! The gateway's C-STORE-RSP, read right after the data set's last byte
//! went out, in the same native call: `Upstream.read_response`'s common
//! case, without returning to the interpreter between the two.
//!
//! Nearly every response is one P-DATA-TF holding the whole command set in
//! its only PDV (`pdus.sole_command`); that is all this reads. Anything
//! else (another PDU type, a longer PDU, a command split over PDVs, the
//! gateway closing) is handed back as the bytes read, which go back into
//! the upstream's Python reader, and `read_response` goes on from them with
//! its own checks and errors. Python parses the command set either way.

use std::io;
use std::os::fd::RawFd;

use crate::fdio::{recv_some, SocketError};

/// The most read at once: far more than a C-STORE-RSP takes.
const BUFFER: usize = 4096;
const P_DATA_TF: u8 = 0x04;
/// Command and last-fragment bits of a PDV's control header.
const COMMAND_LAST: u8 = 0x03;

#[derive(Debug)]
pub enum Response {
    /// The command set, and bytes read after its PDU (for the reader).
    Command {
        command: Vec<u8>,
        extra: Vec<u8>,
    },
    /// Not the common case: the bytes read so far, for Python to go on from.
    Other(Vec<u8>),
    /// The gateway's timeout passed with no (whole) response.
    Timeout,
    Failed(io::Error),
}

/// The command set of a P-DATA-TF body holding it whole in its only PDV.
fn sole_command(body: &[u8]) -> Option<&[u8]> {
    if body.len() < 6 {
        return None;
    }
    let item_length = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
    if item_length + 4 != body.len() || body[5] & COMMAND_LAST != COMMAND_LAST {
        return None;
    }
    Some(&body[6..])
}

/// Read the gateway's response from `fd` (the upstream's reader holds
/// nothing): `max_body` is the longest PDU body `read_response` accepts.
pub fn read(fd: RawFd, timeout: Option<f64>, max_body: u64, on_wait: &mut dyn FnMut()) -> Response {
    let mut buf = vec![0u8; BUFFER];
    let mut have = 0;
    loop {
        match recv_some(fd, &mut buf[have..], timeout, on_wait) {
            Ok(count) => have += count,
            Err(SocketError::Closed) => return Response::Other(buf[..have].to_vec()),
            Err(SocketError::Timeout) => return Response::Timeout,
            Err(SocketError::Os(error)) => return Response::Failed(error),
        }
        if have < 6 {
            continue;
        }
        let length = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as u64;
        if buf[0] != P_DATA_TF || length > max_body || 6 + length > BUFFER as u64 {
            return Response::Other(buf[..have].to_vec());
        }
        let end = 6 + length as usize;
        if have < end {
            continue;
        }
        return match sole_command(&buf[6..end]) {
            Some(command) => Response::Command {
                command: command.to_vec(),
                extra: buf[end..have].to_vec(),
            },
            None => Response::Other(buf[..have].to_vec()),
        };
    }
}
