//! A routed instance's data set bytes, from the sender's socket to its
//! gateway's, without the interpreter: `Forwarder._splice_rest` (with
//! `_splice_run`, `_scan_run` and `Splicer.move`) of
//! `gatewaypool_router/forwarding.py`, which stays the specification and
//! the fallback.
//!
//! Why here: once an instance is routed, the Python loop did nothing but
//! move bytes and count them, yet cost tens of microseconds of interpreter
//! time per PDU (headers, a splice run, the final byte), on the serial
//! chain every C-STORE waits on. Here it runs with the GIL released; Python
//! is called back only before a wait (to name whom the association waits
//! on, for the stall log) and when the data dictionary must answer the
//! scanner.
//!
//! What stays the same, byte for byte: the PDV is re-framed for the
//! gateway's maximum PDU, each piece's 12 header bytes written first; runs
//! the scanner would skip (at least `MIN_SPLICE` bytes) are spliced, the
//! rest is read in `SCAN_CHUNK` pieces, scanned and written; the data set's
//! final byte is always read and the scan judged before it goes out, so a
//! truncated instance is aborted at its gateway, never stored.

use std::io;
use std::os::fd::RawFd;

use crate::ahead::Ahead;
use crate::fdio::{recv_some, send_all, SocketError};
use crate::response::{self, Response};
use crate::scanner::Scan;
use crate::splice::{Move, Outcome};

/// Bytes read at a time while the scanner must see them (`_SCAN_CHUNK`).
pub const SCAN_CHUNK: usize = 4096;
/// Shorter skippable runs are read and written: two splices cost more.
pub const MIN_SPLICE: u64 = 1024;
/// The PDV control header's "last fragment" bit.
pub const MCH_LAST: u8 = 0x02;
const P_DATA_TF: u8 = 0x04;

/// The two sockets and the pipe between them, with each socket's timeout.
pub struct Link {
    pub sender: RawFd,
    pub gateway: RawFd,
    pub pipe_read: RawFd,
    pub pipe_write: RawFd,
    /// The pipe's size: the most one splice moves.
    pub capacity: u64,
    /// The gateway's maximum PDU length (0: no limit).
    pub peer_max_pdu: u64,
    pub sender_timeout: Option<f64>,
    pub gateway_timeout: Option<f64>,
}

/// Bytes of the data set taken from the sender, and written to the gateway.
#[derive(Clone, Copy, Default, Debug)]
pub struct Counts {
    pub taken: u64,
    pub forwarded: u64,
}

/// Why a stream stopped before its bytes were all forwarded.
#[derive(Debug)]
pub enum Stop {
    /// The final byte ended a malformed (or truncated) data set: it was not
    /// sent, and the gateway must be aborted with the PDU still open.
    Malformed,
    SenderTimeout,
    /// The sender closed; `mid_pdu`: with a PDU begun (else between PDUs).
    SenderClosed {
        mid_pdu: bool,
    },
    SenderError(io::Error),
    /// The gateway stopped reading; `pipe_dirty`: bytes may be left in the pipe.
    GatewayTimeout {
        pipe_dirty: bool,
    },
    GatewayError {
        error: io::Error,
        pipe_dirty: bool,
    },
}

/// Where a run of P-DATA-TF PDUs handed back to Python (no failure).
#[derive(Debug)]
pub enum Pause {
    /// The data set's last PDV went out (`pdu_left`: the PDU goes on).
    DataSetEnd,
    /// The header of a PDU this loop does not stream: any but a P-DATA-TF
    /// of an acceptable length. Python reads its body and handles it.
    PduHeader([u8; 6]),
    /// The header of a PDV this loop does not stream (a command, another
    /// context, an empty or impossible one), `pdu_left` bytes of its PDU
    /// after it; None when fewer than 6 bytes of the PDU are left.
    PdvHeader(Option<[u8; 6]>),
}

/// What a stream is about to wait for (the association's progress says so).
#[derive(Clone, Copy, Debug)]
pub enum Wait {
    /// The sender's next bytes.
    Sender = 0,
    /// Room in the gateway's socket.
    GatewaySend = 1,
    /// The gateway's C-STORE-RSP.
    GatewayResponse = 2,
}

/// What the stream asks of the Python side.
pub trait Host {
    /// The data dictionary: may an implicit VR element of undefined length
    /// with this tag be a sequence?
    fn may_be_sequence(&mut self, tag: u32) -> bool;
    /// About to wait for `what`, having moved `counts` so far in this call.
    fn waiting(&mut self, what: Wait, counts: Counts);
}

/// The PDV control header's command bit.
pub const MCH_COMMAND: u8 = 0x01;

/// The 12 bytes before `length` data bytes: P-DATA-TF header, PDV header.
pub fn piece_header(context_id: u8, control: u8, length: u64) -> [u8; 12] {
    let mut header = [0u8; 12];
    header[0] = P_DATA_TF;
    header[2..6].copy_from_slice(&((length + 6) as u32).to_be_bytes());
    header[6..10].copy_from_slice(&((length + 2) as u32).to_be_bytes());
    header[10] = context_id;
    header[11] = control;
    header
}

/// How a PDV of `length` bytes is split for a gateway's maximum PDU
/// (`pdus.piece_lengths`): each piece's 6 PDV header bytes count against
/// it; an empty PDV stays one empty piece. The pieces' lengths, in order.
pub fn piece_lengths(length: u64, max_body: u64) -> Vec<u64> {
    let room = if max_body == 0 {
        length.max(1)
    } else {
        max_body.saturating_sub(6).max(1)
    };
    let count = if length == 0 {
        1
    } else {
        length.div_ceil(room)
    };
    (0..count)
        .map(|index| (length - index * room).min(room))
        .collect()
}

/// One call's state: where bytes go, the instance's scan, what was moved.
pub struct Stream<'a> {
    pub link: &'a Link,
    pub scan: &'a mut Scan,
    pub host: &'a mut dyn Host,
    /// Sender bytes read ahead (at first, the Python reader's): they come
    /// first, and nothing may be spliced while any is held.
    pub ahead: Ahead,
    pub counts: Counts,
    /// Where a stop left the sender's stream: bytes of the current PDV and
    /// of the current P-DATA-TF after it not yet taken, and the PDV's
    /// control header (Python drops the rest of a failed PDV, then goes on).
    pub pdv_left: u64,
    pub pdu_left: u64,
    pub control: u8,
    /// A PDU to the gateway has begun and not ended: an abort must reset
    /// the connection (`Upstream.pdu_open`).
    pub gateway_pdu_open: bool,
    /// With `Some(max_body)`, the gateway's response is read once the data
    /// set is out (see `response.rs`); what was read ends up in `response`.
    pub read_response: Option<u64>,
    pub response: Option<Response>,
    chunk: Box<[u8; SCAN_CHUNK]>,
}

fn sender_stop(error: SocketError) -> Stop {
    match error {
        SocketError::Timeout => Stop::SenderTimeout,
        SocketError::Closed => Stop::SenderClosed { mid_pdu: true },
        SocketError::Os(error) => Stop::SenderError(error),
    }
}

fn gateway_stop(error: SocketError) -> Stop {
    match error {
        SocketError::Timeout => Stop::GatewayTimeout { pipe_dirty: false },
        SocketError::Closed => Stop::GatewayError {
            error: io::Error::from_raw_os_error(libc::EPIPE),
            pipe_dirty: false,
        },
        SocketError::Os(error) => Stop::GatewayError {
            error,
            pipe_dirty: false,
        },
    }
}

impl<'a> Stream<'a> {
    pub fn new(
        link: &'a Link,
        scan: &'a mut Scan,
        host: &'a mut dyn Host,
        prefix: &'a [u8],
    ) -> Self {
        Stream {
            link,
            scan,
            host,
            ahead: Ahead::new(prefix),
            counts: Counts::default(),
            pdv_left: 0,
            pdu_left: 0,
            control: 0,
            gateway_pdu_open: false,
            read_response: None,
            response: None,
            chunk: Box::new([0u8; SCAN_CHUNK]),
        }
    }

    /// Forward the last `size` bytes of a data set PDV (`_splice_rest`).
    pub fn rest(&mut self, context_id: u8, control: u8, size: u64) -> Result<(), Stop> {
        let start = self.counts.taken;
        self.control = control;
        let result = self.pieces(context_id, control, size);
        self.pdv_left = size - (self.counts.taken - start);
        result
    }

    fn pieces(&mut self, context_id: u8, control: u8, size: u64) -> Result<(), Stop> {
        let last = control & MCH_LAST != 0;
        let pieces = piece_lengths(size, self.link.peer_max_pdu);
        let final_index = pieces.len() - 1;
        for (index, &piece) in pieces.iter().enumerate() {
            let final_piece = last && index == final_index;
            let piece_control = if index == final_index {
                control
            } else {
                control & !MCH_LAST
            };
            let header = piece_header(context_id, piece_control, piece);
            self.gateway_pdu_open = true;
            send_to_gateway(self.link, &mut *self.host, self.counts, &header, true)?;
            let mut todo = piece;
            while todo > 0 {
                let room = if final_piece { todo - 1 } else { todo };
                let run = if self.ahead.is_empty() {
                    self.scan.skippable().min(room)
                } else {
                    0
                };
                if run >= MIN_SPLICE {
                    self.splice_run(run, run < todo)?;
                    todo -= run;
                    continue;
                }
                todo -= self.scan_run(todo, final_piece)?;
            }
            self.gateway_pdu_open = false;
        }
        Ok(())
    }

    /// Stream P-DATA-TF PDUs of the instance's data set, from the next PDU
    /// header on (`_read_or_stream` and `_stream_pdu` for a routed
    /// instance), until its last PDV is out or something needs Python.
    ///
    /// Only what Python would stream without deciding anything is taken
    /// here: a P-DATA-TF no longer than `max_pdu`, whose PDVs are non-empty
    /// data of `context_id` that fit it. Anything else pauses with its
    /// header, and Python goes on from there with its own checks and errors.
    pub fn pdus(&mut self, context_id: u8, max_pdu: u64) -> Result<Pause, Stop> {
        loop {
            self.pdu_left = 0;
            let header = self.header(false)?;
            let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as u64;
            if header[0] != P_DATA_TF || length > max_pdu || length < 6 {
                return Ok(Pause::PduHeader(header));
            }
            self.pdu_left = length;
            while self.pdu_left > 0 {
                if self.pdu_left < 6 {
                    return Ok(Pause::PdvHeader(None));
                }
                let pdv = self.header(true)?;
                self.pdu_left -= 6;
                let item_length = u32::from_be_bytes([pdv[0], pdv[1], pdv[2], pdv[3]]) as u64;
                let (context, control) = (pdv[4], pdv[5]);
                if item_length <= 2
                    || item_length > self.pdu_left + 2
                    || control & MCH_COMMAND != 0
                    || context != context_id
                {
                    return Ok(Pause::PdvHeader(Some(pdv)));
                }
                let size = item_length - 2;
                self.pdu_left -= size;
                self.rest(context_id, control, size)?;
                if control & MCH_LAST != 0 {
                    if let Some(max_body) = self.read_response {
                        let counts = self.counts;
                        let host = &mut *self.host;
                        self.response = Some(response::read(
                            self.link.gateway,
                            self.link.gateway_timeout,
                            max_body,
                            &mut || host.waiting(Wait::GatewayResponse, counts),
                        ));
                    }
                    return Ok(Pause::DataSetEnd);
                }
            }
        }
    }

    /// The next 6-byte PDU or PDV header from the sender.
    fn header(&mut self, mid_pdu: bool) -> Result<[u8; 6], Stop> {
        let counts = self.counts;
        let host = &mut *self.host;
        let held = !self.ahead.is_empty();
        match self
            .ahead
            .header::<6>(self.link.sender, self.link.sender_timeout, &mut || {
                host.waiting(Wait::Sender, counts)
            }) {
            Ok(header) => Ok(header),
            Err(SocketError::Closed) => Err(Stop::SenderClosed {
                mid_pdu: mid_pdu || held || !self.ahead.is_empty(),
            }),
            Err(error) => Err(sender_stop(error)),
        }
    }

    /// Splice `run` bytes the scanner may skip (`_splice_run`).
    fn splice_run(&mut self, run: u64, more: bool) -> Result<(), Stop> {
        let link = self.link;
        let job = Move {
            source: link.sender,
            sink: link.gateway,
            pipe_read: link.pipe_read,
            pipe_write: link.pipe_write,
            capacity: link.capacity.max(1),
            size: run,
            more,
            source_timeout: link.sender_timeout,
            sink_timeout: link.gateway_timeout,
        };
        let before = self.counts;
        let host = &mut *self.host;
        let outcome = job.run(&mut |on_gateway, taken, sent| {
            host.waiting(
                if on_gateway {
                    Wait::GatewaySend
                } else {
                    Wait::Sender
                },
                Counts {
                    taken: before.taken + taken,
                    forwarded: before.forwarded + sent,
                },
            )
        });
        // Bytes taken before a failure count as taken (the caller must not
        // read them again); on the sender's side they also went out.
        let counts = &mut self.counts;
        match outcome {
            Outcome::Done => {
                self.scan.skip_unseen(run);
                counts.taken += run;
                counts.forwarded += run;
                Ok(())
            }
            Outcome::SourceTimeout { moved } => {
                counts.taken += moved;
                counts.forwarded += moved;
                Err(Stop::SenderTimeout)
            }
            Outcome::SourceClosed { moved } => {
                counts.taken += moved;
                counts.forwarded += moved;
                Err(Stop::SenderClosed { mid_pdu: true })
            }
            Outcome::SourceError { moved, error } => {
                counts.taken += moved;
                counts.forwarded += moved;
                Err(Stop::SenderError(error))
            }
            Outcome::SinkTimeout { moved } => {
                counts.taken += moved;
                Err(Stop::GatewayTimeout { pipe_dirty: true })
            }
            Outcome::SinkError { moved, error } => {
                counts.taken += moved;
                Err(Stop::GatewayError {
                    error,
                    pipe_dirty: true,
                })
            }
        }
    }

    /// Read, scan and send up to `todo` bytes of a piece; how many
    /// (`_scan_run`). `Malformed` when they end the data set (`final_piece`)
    /// and the scan finds it incomplete: they are not sent.
    fn scan_run(&mut self, todo: u64, final_piece: bool) -> Result<u64, Stop> {
        let want = (todo as usize).min(SCAN_CHUNK);
        let count = if !self.ahead.is_empty() {
            self.ahead.take(&mut self.chunk[..want])
        } else {
            let counts = self.counts;
            let host = &mut *self.host;
            recv_some(
                self.link.sender,
                &mut self.chunk[..want],
                self.link.sender_timeout,
                &mut || host.waiting(Wait::Sender, counts),
            )
            .map_err(sender_stop)?
        };
        self.counts.taken += count as u64;
        let host = &mut *self.host;
        let mut dictionary = |tag| host.may_be_sequence(tag);
        // feed() fails only after finish(), which only the final byte calls.
        let _ = self.scan.feed(&self.chunk[..count], &mut dictionary);
        if final_piece && count as u64 == todo && !self.scan.finish(&mut dictionary) {
            return Err(Stop::Malformed);
        }
        let more = (count as u64) < todo;
        send_to_gateway(
            self.link,
            &mut *self.host,
            self.counts,
            &self.chunk[..count],
            more,
        )?;
        self.counts.forwarded += count as u64;
        Ok(count as u64)
    }
}

/// Write `data` to the gateway, waiting up to its timeout.
fn send_to_gateway(
    link: &Link,
    host: &mut dyn Host,
    counts: Counts,
    data: &[u8],
    more: bool,
) -> Result<(), Stop> {
    send_all(link.gateway, data, more, link.gateway_timeout, &mut || {
        host.waiting(Wait::GatewaySend, counts)
    })
    .map_err(gateway_stop)
}
