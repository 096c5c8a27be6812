//! `gatewaypool_router._native`: the router's hot path in Rust (PyO3).
//!
//! # What is here, and why this piece first
//!
//! Profile (py-spy 0.4.3 `--gil`, 500 Hz, `gatewaypool bench --gateways fast
//! --workers 1`, 400 CT instances of 526 kB, loaded machine: load average
//! 2-5 on 2 cores), shares of the association thread's Python time,
//! inclusive: streaming a P-DATA-TF (`Forwarder._stream_pdu`) 74%, of which
//! splicing the routed rest (`_splice_rest`) 59%; answering the sender
//! (`_answer`: the gateway's C-STORE-RSP read and parsed, the reply, the
//! tally) 42%, `dimse.parse_response` alone 14%; socket reads of PDU and PDV
//! headers 10%, `send_buffers` 10%; the StudyInstanceUID scanner (set-up,
//! feed, finish) about 9%. About 0.55 ms of Python per instance in all.
//!
//! So the scanner alone is worth about 0.05 ms an instance; the target
//! (router CPU per GB at most 1.5x a bare splice forwarder's, which leaves
//! about 0.1 ms of Python per instance) needs the per-instance loop itself
//! out of the interpreter: reading PDU and PDV headers, scanning, splicing
//! with the GIL released, relaying the gateway's response. That loop drives
//! the scanner at every step, so the scanner comes first: it is also the one
//! piece with a byte-exact specification and two oracles (pydicom, and the
//! Python scanner, detail strings and offsets included), which makes a port
//! checkable. This module is therefore I/O-free and holds the GIL (a call
//! costs a microsecond or two; releasing and taking the GIL would cost as
//! much). The next step (NOTES.md beside this crate) was a native `stream` of the routed
//! rest of an instance that owns its sockets and pipe, returning to Python
//! once per instance.
//!
//! Second, `splice_move`: the loop of `Splicer.move` (splice in, drain out,
//! poll on EAGAIN) with the GIL released, the smallest piece of the socket
//! loop that moves without changing who decides what (Python still raises
//! the same errors from its outcome). It is the first brick of the native
//! `stream` the next step needs.
//!
//! Third, the per-instance loop itself, with the GIL released (modules
//! `stream`, `ahead`, `response`, over the socket calls of `fdio`):
//! `stream_rest` forwards the routed rest of one data set PDV
//! (`Forwarder._splice_rest`); `stream_pdus` takes a routed instance's
//! P-DATA-TF PDUs from their header on until its last PDV is out, then
//! reads the gateway's C-STORE-RSP in the same call. Each returns once, with
//! what it moved and where it stopped; anything that needs deciding (a
//! command, another context, another PDU, an unusual response, a failure)
//! goes back to Python with the header or bytes read, and Python goes on
//! from there with its own checks and errors. Python keeps the command,
//! routing, the answer, metrics, and progress (updated on return and, by a
//! callback, before every wait, so the stall log still names whom an
//! association waits on).
//!
//! `Scanner` is `gatewaypool_router.scanner.DatasetScanner` for the
//! non-deflated transfer syntaxes; `scanner.py` picks it at import
//! (`GATEWAYPOOL_HOT_PATH`: auto, native, python) and keeps the Python scan
//! as the fallback and the specification.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::os::fd::RawFd;

mod ahead;
mod fdio;
mod response;
mod scanner;
mod splice;
mod stream;

use response::Response;
use scanner::{Encoding, Scan};
use splice::{Move, Outcome};
use stream::{Counts, Host, Link, Pause, Stop, Stream, Wait};

/// The scan of one C-STORE data set; see `gatewaypool_router.scanner`.
///
/// `encoding`: 0 implicit VR little endian, 1 explicit VR little endian,
/// 2 explicit VR big endian (the deflated ones stay in Python).
/// `may_be_sequence(tag) -> bool`: the data dictionary's answer for an
/// implicit VR element of undefined length.
#[pyclass(subclass, module = "gatewaypool_router._native")]
pub struct Scanner {
    scan: Scan,
    may_be_sequence: Py<PyAny>,
    #[pyo3(get)]
    transfer_syntax: String,
}

/// Call the dictionary callback; an exception in it counts as "may be" (as
/// Python's KeyError branch does) rather than unwinding through the scan.
fn ask(py: Python<'_>, callback: &Py<PyAny>, tag: u32) -> bool {
    callback
        .call1(py, (tag,))
        .and_then(|answer| answer.is_truthy(py))
        .unwrap_or(true)
}

/// Run `f` on the bytes of any object with the buffer protocol (bytes,
/// bytearray, a memoryview of any item type: counted in bytes), released
/// before returning, so that the caller may resize a bytearray right after.
fn with_bytes<R>(fragment: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
    // SAFETY: PyObject_GetBuffer fills `view` when it returns 0; PyBUF_SIMPLE
    // asks for one C-contiguous run of bytes whatever the item type.
    let view = unsafe {
        if ffi::PyObject_GetBuffer(fragment.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_SIMPLE) != 0 {
            return Err(PyErr::fetch(fragment.py()));
        }
        view.assume_init()
    };
    struct Release(ffi::Py_buffer);
    impl Drop for Release {
        fn drop(&mut self) {
            // SAFETY: the buffer was obtained above and is released once.
            unsafe { ffi::PyBuffer_Release(&mut self.0) }
        }
    }
    let held = Release(view);
    let data = if held.0.len == 0 {
        &[][..]
    } else {
        // SAFETY: `len` bytes at `buf`, valid until `held` is dropped; the
        // scan only reads them and keeps no reference past `f`.
        unsafe { std::slice::from_raw_parts(held.0.buf as *const u8, held.0.len as usize) }
    };
    Ok(f(data))
}

#[pymethods]
impl Scanner {
    #[new]
    fn new(encoding: u8, may_be_sequence: Py<PyAny>, transfer_syntax: String) -> PyResult<Self> {
        let enc = match encoding {
            0 => Encoding::ImplicitLe,
            1 => Encoding::ExplicitLe,
            2 => Encoding::ExplicitBe,
            _ => return Err(PyValueError::new_err("encoding must be 0, 1 or 2")),
        };
        Ok(Scanner {
            scan: Scan::new(enc),
            may_be_sequence,
            transfer_syntax,
        })
    }

    /// 0 need more, 1 found, 2 missing, 3 invalid UID, 4 malformed.
    #[getter]
    fn state_code(&self) -> u8 {
        if self.scan.malformed {
            4
        } else {
            self.scan.uid_state as u8
        }
    }

    #[getter]
    fn decided(&self) -> bool {
        self.scan.decided()
    }

    #[getter]
    fn study_uid(&self) -> Option<String> {
        self.scan.study_uid.clone()
    }

    #[getter]
    fn detail(&self) -> String {
        self.scan.detail.clone()
    }

    #[getter]
    fn offending(&self) -> Option<u32> {
        self.scan.offending
    }

    #[getter]
    fn bytes_seen(&self) -> u64 {
        self.scan.bytes_seen
    }

    #[getter]
    fn buffered_bytes(&self) -> usize {
        self.scan.buffered_bytes()
    }

    #[getter]
    fn deflated(&self) -> bool {
        false
    }

    #[getter]
    fn skippable(&self) -> u64 {
        self.scan.skippable()
    }

    fn skip(&mut self, size: i64) -> PyResult<()> {
        let skippable = self.scan.skippable();
        if size < 0 || size as u64 > skippable {
            return Err(PyValueError::new_err(format!(
                "skip({size}) beyond the {skippable} skippable bytes"
            )));
        }
        self.scan.skip_unseen(size as u64);
        Ok(())
    }

    fn feed(&mut self, py: Python<'_>, fragment: &Bound<'_, PyAny>) -> PyResult<()> {
        let callback = &self.may_be_sequence;
        let scan = &mut self.scan;
        let mut ask_dictionary = |tag: u32| ask(py, callback, tag);
        with_bytes(fragment, |data| scan.feed(data, &mut ask_dictionary))?
            .map_err(|()| PyRuntimeError::new_err("feed() called after finish()"))
    }

    fn finish(&mut self, py: Python<'_>) -> bool {
        let callback = &self.may_be_sequence;
        let mut ask_dictionary = |tag: u32| ask(py, callback, tag);
        self.scan.finish(&mut ask_dictionary)
    }
}

/// `Splicer.move`'s loop with the GIL released (see `splice.rs`). Returns
/// (outcome, moved, errno): 0 done, 1 source timed out, 2 source closed,
/// 3 sink timed out, 4 sink failed (with its errno); an error reading the
/// source is raised as the OSError it is.
#[pyfunction]
#[pyo3(signature = (source, sink, pipe_read, pipe_write, capacity, size, more, source_timeout, sink_timeout, on_wait))]
#[allow(clippy::too_many_arguments)]
fn splice_move(
    py: Python<'_>,
    source: RawFd,
    sink: RawFd,
    pipe_read: RawFd,
    pipe_write: RawFd,
    capacity: u64,
    size: u64,
    more: bool,
    source_timeout: Option<f64>,
    sink_timeout: Option<f64>,
    on_wait: Option<Py<PyAny>>,
) -> PyResult<(u8, u64, i32)> {
    let job = Move {
        source,
        sink,
        pipe_read,
        pipe_write,
        capacity: capacity.max(1),
        size,
        more,
        source_timeout,
        sink_timeout,
    };
    let outcome = py.detach(|| {
        let mut report = |on_sink: bool, _taken: u64, _sent: u64| {
            if let Some(callback) = &on_wait {
                // Progress bookkeeping only: an exception in it must not
                // leave bytes in the pipe, so it is reported, not raised.
                Python::attach(|py| {
                    if let Err(error) = callback.call1(py, (on_sink,)) {
                        error.write_unraisable(py, None);
                    }
                });
            }
        };
        job.run(&mut report)
    });
    match outcome {
        Outcome::Done => Ok((0, size, 0)),
        Outcome::SourceTimeout { .. } => Ok((1, 0, 0)),
        Outcome::SourceClosed { .. } => Ok((2, 0, 0)),
        Outcome::SourceError { error, .. } => Err(error.into()),
        Outcome::SinkTimeout { moved } => Ok((3, moved, 0)),
        Outcome::SinkError { moved, error } => Ok((4, moved, error.raw_os_error().unwrap_or(0))),
    }
}

/// The Python side of a stream: the scanner's dictionary callback and the
/// association's progress, each called with the GIL taken back.
struct PyHost {
    dictionary: Py<PyAny>,
    on_wait: Py<PyAny>,
}

impl Host for PyHost {
    fn may_be_sequence(&mut self, tag: u32) -> bool {
        Python::attach(|py| ask(py, &self.dictionary, tag))
    }

    fn waiting(&mut self, what: Wait, counts: Counts) {
        Python::attach(|py| {
            // Progress bookkeeping only: an exception in it must not leave
            // a PDU half written, so it is reported, not raised.
            if let Err(error) = self
                .on_wait
                .call1(py, (what as u8, counts.taken, counts.forwarded))
            {
                error.write_unraisable(py, None);
            }
        });
    }
}

/// (sender fd, gateway fd, pipe read fd, pipe write fd, pipe capacity,
/// gateway's max PDU, sender timeout, gateway timeout), as Python passes it.
type LinkTuple = (
    RawFd,
    RawFd,
    RawFd,
    RawFd,
    u64,
    u64,
    Option<f64>,
    Option<f64>,
);

fn link_from(link: LinkTuple) -> Link {
    let (
        sender,
        gateway,
        pipe_read,
        pipe_write,
        capacity,
        peer_max_pdu,
        sender_timeout,
        gateway_timeout,
    ) = link;
    Link {
        sender,
        gateway,
        pipe_read,
        pipe_write,
        capacity,
        peer_max_pdu,
        sender_timeout,
        gateway_timeout,
    }
}

/// How `stream_rest` ended, first of what it returns (forwarding.py names them).
fn stop_code(stop: &Stop) -> (u8, i32) {
    let errno = |error: &std::io::Error| error.raw_os_error().unwrap_or(0);
    match stop {
        Stop::Malformed => (1, 0),
        Stop::SenderTimeout => (2, 0),
        Stop::SenderClosed { mid_pdu: true } => (3, 0),
        Stop::SenderClosed { mid_pdu: false } => (9, 0),
        Stop::SenderError(error) => (4, errno(error)),
        Stop::GatewayTimeout { pipe_dirty } => (if *pipe_dirty { 7 } else { 5 }, 0),
        Stop::GatewayError { error, pipe_dirty } => (if *pipe_dirty { 8 } else { 6 }, errno(error)),
    }
}

/// `Forwarder._splice_rest` with the GIL released (see `stream.rs`): the
/// last `size` bytes of a routed data set PDV, `prefix` (the reader's
/// buffered bytes of it) first. `link`: (sender fd, gateway fd, pipe read
/// fd, pipe write fd, pipe capacity, gateway's max PDU, sender timeout,
/// gateway timeout). `on_wait(what, taken, forwarded)` runs before each
/// wait (`what` as for `stream_pdus`).
///
/// Returns (code, taken, forwarded, errno): 0 done, 1 malformed at the end
/// (the final byte unsent), 2 sender timed out, 3 sender closed mid-PDU,
/// 4 sender error, 5 gateway timed out, 6 gateway error; 7 and 8 as 5 and 6
/// with bytes possibly left in the pipe; 9 sender closed between PDUs.
#[pyfunction]
#[pyo3(signature = (scanner, link, context_id, control, size, prefix, on_wait))]
#[allow(clippy::too_many_arguments)]
fn stream_rest(
    py: Python<'_>,
    scanner: &Bound<'_, Scanner>,
    link: LinkTuple,
    context_id: u8,
    control: u8,
    size: u64,
    prefix: Vec<u8>,
    on_wait: Py<PyAny>,
) -> PyResult<(u8, u64, u64, i32)> {
    let link = link_from(link);
    let mut guard = scanner.try_borrow_mut()?;
    let Scanner {
        scan,
        may_be_sequence,
        ..
    } = &mut *guard;
    let mut host = PyHost {
        dictionary: may_be_sequence.clone_ref(py),
        on_wait,
    };
    let (result, counts) = py.detach(|| {
        let mut stream = Stream::new(&link, scan, &mut host, &prefix);
        let result = stream.rest(context_id, control, size);
        (result, stream.counts)
    });
    let (code, errno) = match &result {
        Ok(()) => (0, 0),
        Err(stop) => stop_code(stop),
    };
    Ok((code, counts.taken, counts.forwarded, errno))
}

/// What `stream_pdus` did, and where it left the sender's stream.
#[pyclass(frozen, get_all, module = "gatewaypool_router._native")]
pub struct Streamed {
    /// As `stream_rest`'s first value (0 also when paused, see `pause`).
    code: u8,
    errno: i32,
    taken: u64,
    forwarded: u64,
    /// With code 0: 0 the data set's last PDV went out, 1 a PDU header
    /// (`header`) not streamed, 2 a PDV header (`header`, empty when fewer
    /// than 6 bytes of the PDU were left) not streamed.
    pause: u8,
    header: Py<PyBytes>,
    /// Bytes of the failed PDV not taken, its control header, and bytes of
    /// the P-DATA-TF after the PDV (or after `header`, for a PDV header).
    pdv_left: u64,
    control: u8,
    pdu_left: u64,
    /// Sender bytes read ahead and not used: back to the Python reader.
    unread: Py<PyBytes>,
    /// A PDU to the gateway is open (`Upstream.pdu_open`).
    gateway_pdu_open: bool,
    /// The gateway's response, when asked for and the data set went out:
    /// 0 not read, 1 the command set (`response`), 2 something else (all
    /// of it in `response_unread`), 3 timed out, 4 failed (`response_errno`).
    response_code: u8,
    response: Option<Py<PyBytes>>,
    /// Gateway bytes read beyond the response: back to the upstream's reader.
    response_unread: Py<PyBytes>,
    response_errno: i32,
}

/// Stream the routed instance's P-DATA-TF PDUs from the next PDU header
/// on, with the GIL released (see `Stream::pdus`): the same as repeated
/// `_read_or_stream` calls would, until the data set's last PDV is out or
/// a PDU or PDV needs Python. `max_pdu`: the longest PDU taken from the
/// sender; `prefix`: the Python reader's buffered bytes; `read_response`:
/// the longest response PDU body accepted, to read the gateway's response
/// once the data set is out (None: leave it to Python).
/// `on_wait(what, taken, forwarded)`: `what` 0 the sender, 1 room at the
/// gateway, 2 the gateway's response.
#[pyfunction]
#[pyo3(signature = (scanner, link, context_id, max_pdu, prefix, read_response, on_wait))]
#[allow(clippy::too_many_arguments)]
fn stream_pdus(
    py: Python<'_>,
    scanner: &Bound<'_, Scanner>,
    link: LinkTuple,
    context_id: u8,
    max_pdu: u64,
    prefix: Vec<u8>,
    read_response: Option<u64>,
    on_wait: Py<PyAny>,
) -> PyResult<Streamed> {
    let link = link_from(link);
    let mut guard = scanner.try_borrow_mut()?;
    let Scanner {
        scan,
        may_be_sequence,
        ..
    } = &mut *guard;
    let mut host = PyHost {
        dictionary: may_be_sequence.clone_ref(py),
        on_wait,
    };
    let (result, stream) = py.detach(|| {
        let mut stream = Stream::new(&link, scan, &mut host, &prefix);
        stream.read_response = read_response;
        let result = stream.pdus(context_id, max_pdu);
        let left = (
            stream.counts,
            stream.pdv_left,
            stream.control,
            stream.pdu_left,
            stream.ahead.held().to_vec(),
            stream.gateway_pdu_open,
            stream.response.take(),
        );
        (result, left)
    });
    let (counts, pdv_left, control, pdu_left, unread, gateway_pdu_open, response) = stream;
    let (response_code, command, response_unread, response_errno) = match response {
        None => (0, None, Vec::new(), 0),
        Some(Response::Command { command, extra }) => (1, Some(command), extra, 0),
        Some(Response::Other(read)) => (2, None, read, 0),
        Some(Response::Timeout) => (3, None, Vec::new(), 0),
        Some(Response::Failed(error)) => (4, None, Vec::new(), error.raw_os_error().unwrap_or(0)),
    };
    let (code, errno, pause, header): (u8, i32, u8, &[u8]) = match &result {
        Ok(Pause::DataSetEnd) => (0, 0, 0, b""),
        Ok(Pause::PduHeader(header)) => (0, 0, 1, header),
        Ok(Pause::PdvHeader(Some(header))) => (0, 0, 2, header),
        Ok(Pause::PdvHeader(None)) => (0, 0, 2, b""),
        Err(stop) => {
            let (code, errno) = stop_code(stop);
            (code, errno, 0, b"")
        }
    };
    Ok(Streamed {
        code,
        errno,
        taken: counts.taken,
        forwarded: counts.forwarded,
        pause,
        header: PyBytes::new(py, header).unbind(),
        pdv_left,
        control,
        pdu_left,
        unread: PyBytes::new(py, &unread).unbind(),
        gateway_pdu_open,
        response_code,
        response: command.map(|command| PyBytes::new(py, &command).unbind()),
        response_unread: PyBytes::new(py, &response_unread).unbind(),
        response_errno,
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Scanner>()?;
    m.add_function(wrap_pyfunction!(splice_move, m)?)?;
    m.add_function(wrap_pyfunction!(stream_rest, m)?)?;
    m.add_function(wrap_pyfunction!(stream_pdus, m)?)?;
    m.add_class::<Streamed>()?;
    m.add("MAX_STUDY_UID_BYTES", scanner::MAX_STUDY_UID_BYTES)?;
    m.add("MAX_NESTING_DEPTH", scanner::MAX_NESTING_DEPTH)?;
    Ok(())
}
