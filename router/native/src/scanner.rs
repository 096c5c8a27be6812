//! The StudyInstanceUID scanner of `gatewaypool_router/scanner.py`, as an
//! explicit state machine instead of nested generators.
//!
//! Same contract, same verdicts, same detail strings and offsets: the Python
//! module's docstring is the specification, and the differential test runs
//! both against pydicom. Deflated transfer syntaxes stay in Python (the
//! router never splices them, so their per-PDU cost is not the hot path).
//!
//! The parser's generator frames become `Frame`s on a stack; what the parser
//! waits for becomes `Want`. `run` consumes a fragment until it is used up or
//! the scan is malformed; a header, a 32-bit length or the UID value that
//! straddles fragments is assembled in `buf`, as `_read` does.

pub const MAX_STUDY_UID_BYTES: u64 = 256;
pub const MAX_NESTING_DEPTH: u32 = 128;
const UID_MAX_CHARS: usize = 64;
const UNDEFINED: u64 = 0xFFFF_FFFF;
const STUDY_UID_TAG: u32 = 0x0020_000D;
const PIXEL_DATA_TAG: u32 = 0x7FE0_0010;
const ITEM_GROUP: u32 = 0xFFFE;
const ITEM_TAG: u32 = 0xFFFE_E000;
const ITEM_END_TAG: u32 = 0xFFFE_E00D;
const SEQUENCE_END_TAG: u32 = 0xFFFE_E0DD;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Encoding {
    ImplicitLe,
    ExplicitLe,
    ExplicitBe,
}

impl Encoding {
    fn explicit(self) -> bool {
        !matches!(self, Encoding::ImplicitLe)
    }
    fn u16(self, b: &[u8]) -> u32 {
        match self {
            Encoding::ExplicitBe => u16::from_be_bytes([b[0], b[1]]) as u32,
            _ => u16::from_le_bytes([b[0], b[1]]) as u32,
        }
    }
    fn u32(self, b: &[u8]) -> u64 {
        match self {
            Encoding::ExplicitBe => u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64,
            _ => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UidState {
    NeedMore = 0,
    Found = 1,
    Missing = 2,
    InvalidUid = 3,
}

#[derive(Clone, Copy, Debug)]
enum Frame {
    /// Elements to the end of input (top), of an item's delimiter, or to `end`.
    Dataset {
        enc: Encoding,
        depth: u32,
        end: Option<u64>,
        top: bool,
        undecided: bool,
    },
    /// Items of a sequence, or pixel data fragments, to the delimiter.
    Items {
        enc: Encoding,
        depth: u32,
        fragments: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Want {
    /// The first 8 bytes of an element header (top frame: Dataset).
    Header,
    /// The 32-bit length after an explicit VR header of a long VR.
    LongLength { tag: u32, vr: [u8; 2] },
    /// The value of a top-level (0020,000D) of this many bytes.
    Uid { length: usize },
    /// An item or sequence delimiter header (top frame: Items).
    ItemHeader,
}

/// Why the data set broke: the reason, and the element to name, if any.
struct Malformed {
    reason: String,
    tag: Option<u32>,
}

fn malformed(reason: String, tag: Option<u32>) -> Malformed {
    Malformed { reason, tag }
}

pub fn tag_name(tag: u32) -> String {
    format!("({:04X},{:04X})", tag >> 16, tag & 0xFFFF)
}

fn is_long_vr(vr: &[u8; 2]) -> bool {
    matches!(
        vr,
        b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"SQ"
            | b"SV"
            | b"UC"
            | b"UN"
            | b"UR"
            | b"UT"
            | b"UV"
    )
}

fn is_short_vr(vr: &[u8; 2]) -> bool {
    matches!(
        vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    )
}

/// `[0-9]+(\.[0-9]+)*`, whole.
fn uid_syntax_ok(uid: &[u8]) -> bool {
    let mut previous_dot = true;
    for &c in uid {
        match c {
            b'0'..=b'9' => previous_dot = false,
            b'.' if !previous_dot => previous_dot = true,
            _ => return false,
        }
    }
    !previous_dot
}

/// Python's `bytes.__repr__` for a VR (always two bytes).
fn vr_repr(vr: &[u8; 2]) -> String {
    let mut out = String::from("b'");
    for &c in vr {
        match c {
            b'\\' => out.push_str("\\\\"),
            b'\'' => out.push_str("\\'"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            0x20..=0x7E => out.push(c as char),
            _ => out.push_str(&format!("\\x{c:02x}")),
        }
    }
    out.push('\'');
    out
}

/// The scan's state; the Python class wraps it. `may_be_sequence` answers
/// for implicit VR elements of undefined length (the data dictionary lives
/// in pydicom).
pub struct Scan {
    stack: Vec<Frame>,
    want: Want,
    buf: Vec<u8>,
    /// Bytes to pass over before the parser must see data again.
    pub skip: u64,
    /// Data set bytes handed to the parser (or skipped) so far.
    pub total: u64,
    /// Absolute data set offset of the parser's cursor.
    pos: u64,
    pub bytes_seen: u64,
    pub uid_state: UidState,
    pub malformed: bool,
    pub finished: bool,
    pub complete: bool,
    pub study_uid: Option<String>,
    pub detail: String,
    pub offending: Option<u32>,
    /// The top-level element being read (its header seen, not its end):
    /// what a data set that ends early ends inside (`_open_tag`).
    open_tag: Option<u32>,
}

impl Scan {
    pub fn new(enc: Encoding) -> Self {
        Scan {
            stack: vec![Frame::Dataset {
                enc,
                depth: 0,
                end: None,
                top: true,
                undecided: true,
            }],
            want: Want::Header,
            buf: Vec::with_capacity(16),
            skip: 0,
            total: 0,
            pos: 0,
            bytes_seen: 0,
            uid_state: UidState::NeedMore,
            malformed: false,
            finished: false,
            complete: false,
            study_uid: None,
            detail: String::new(),
            offending: None,
            open_tag: None,
        }
    }

    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn decided(&self) -> bool {
        self.malformed || self.uid_state != UidState::NeedMore
    }

    pub fn skippable(&self) -> u64 {
        if self.malformed || self.finished {
            0
        } else {
            self.skip
        }
    }

    /// `skip(size)` of the Python class; the caller checked the bound.
    pub fn skip_unseen(&mut self, size: u64) {
        self.skip -= size;
        self.total += size;
        self.pos += size;
        self.bytes_seen += size;
    }

    /// `feed` of the Python class, after its checks: `Err` is feed after finish.
    pub fn feed(
        &mut self,
        data: &[u8],
        may_be_sequence: &mut dyn FnMut(u32) -> bool,
    ) -> Result<(), ()> {
        let size = data.len() as u64;
        if self.skip > size {
            self.skip -= size;
            self.total += size;
            self.pos += size;
            self.bytes_seen += size;
            return Ok(());
        }
        if self.finished {
            return Err(());
        }
        self.bytes_seen += size;
        if self.malformed || size == 0 {
            return Ok(());
        }
        self.total += size;
        self.run(data, may_be_sequence);
        Ok(())
    }

    pub fn finish(&mut self, may_be_sequence: &mut dyn FnMut(u32) -> bool) -> bool {
        if self.finished {
            return self.complete;
        }
        self.finished = true;
        if !self.malformed {
            if self.skip != 0 {
                let reason = format!(
                    "data set ends {} bytes before the end of a value",
                    self.skip
                );
                self.fail(reason, self.open_tag, self.total);
            } else {
                self.run(&[], may_be_sequence);
            }
        }
        if !self.malformed {
            let at_boundary = self.stack.len() == 1 && self.want == Want::Header;
            if !self.buf.is_empty() || !at_boundary {
                // Inside a top-level header no element can be named.
                let tag = if at_boundary { None } else { self.open_tag };
                self.fail(
                    "data set ends inside an element header, sequence or item".to_string(),
                    tag,
                    self.total,
                );
            }
        }
        if self.uid_state == UidState::NeedMore {
            self.uid_state = UidState::Missing;
            if !self.malformed {
                self.detail =
                    "data set ends without a top-level StudyInstanceUID (0020,000D)".to_string();
            }
        }
        self.complete = !self.malformed;
        self.skip = 0;
        self.complete
    }

    fn fail(&mut self, reason: String, tag: Option<u32>, offset: u64) {
        self.malformed = true;
        self.offending = tag;
        self.skip = 0;
        self.buf.clear();
        self.detail = format!("{reason} (data set offset {offset})");
    }

    fn invalid(&mut self, reason: String) {
        self.uid_state = UidState::InvalidUid;
        self.detail = reason;
    }

    /// Let the parser use up `data` (the skip first).
    fn run(&mut self, data: &[u8], may_be_sequence: &mut dyn FnMut(u32) -> bool) {
        let mut at = 0usize;
        if let Err(m) = self.parse(data, &mut at, may_be_sequence) {
            let offset = self.pos;
            self.fail(m.reason, m.tag, offset);
        }
    }

    /// Take `n` bytes at the cursor, from `data` directly or assembled in
    /// `buf`; None when `data` ran out first (what there was is in `buf`).
    fn take<'a>(&'a mut self, data: &'a [u8], at: &mut usize, n: usize) -> Option<&'a [u8]> {
        let left = data.len() - *at;
        if self.buf.is_empty() && left >= n {
            let out = &data[*at..*at + n];
            *at += n;
            self.pos += n as u64;
            return Some(out);
        }
        let need = n - self.buf.len();
        let step = need.min(left);
        self.buf.extend_from_slice(&data[*at..*at + step]);
        *at += step;
        self.pos += step as u64;
        if self.buf.len() == n {
            Some(&self.buf[..])
        } else {
            None
        }
    }

    fn parse(
        &mut self,
        data: &[u8],
        at: &mut usize,
        may_be_sequence: &mut dyn FnMut(u32) -> bool,
    ) -> Result<(), Malformed> {
        loop {
            if self.skip != 0 {
                let left = (data.len() - *at) as u64;
                let step = self.skip.min(left);
                self.skip -= step;
                *at += step as usize;
                self.pos += step;
                if self.skip != 0 {
                    return Ok(());
                }
            }
            match self.want {
                Want::Header => {
                    let Frame::Dataset { enc, end, top, .. } = *self.stack.last().unwrap() else {
                        unreachable!("a header is read in a data set frame")
                    };
                    if self.buf.is_empty() {
                        if let Some(end) = end {
                            if self.pos == end {
                                self.stack.pop();
                                self.want = Want::ItemHeader;
                                continue;
                            }
                            if self.pos > end {
                                return Err(malformed(
                                    "an element runs past the end of its item".to_string(),
                                    None,
                                ));
                            }
                        }
                    }
                    let Some(raw) = self.take(data, at, 8) else {
                        return Ok(());
                    };
                    let raw: [u8; 8] = raw.try_into().expect("a header is 8 bytes");
                    let group = enc.u16(&raw[0..2]);
                    let elem = enc.u16(&raw[2..4]);
                    let tag = group << 16 | elem;
                    if top {
                        self.open_tag = Some(tag);
                    }
                    let (vr, length) = if enc.explicit() {
                        let vr = [raw[4], raw[5]];
                        if group == ITEM_GROUP {
                            (vr, enc.u32(&raw[4..8]))
                        } else if is_long_vr(&vr) {
                            self.buf.clear();
                            self.want = Want::LongLength { tag, vr };
                            continue;
                        } else if is_short_vr(&vr) {
                            (vr, enc.u16(&raw[6..8]) as u64)
                        } else {
                            return Err(malformed(
                                format!("unknown VR in element {}", tag_name(tag)),
                                Some(tag),
                            ));
                        }
                    } else {
                        ([0, 0], enc.u32(&raw[4..8]))
                    };
                    self.buf.clear();
                    self.element(tag, vr, length, may_be_sequence)?;
                }
                Want::LongLength { tag, vr } => {
                    let Frame::Dataset { enc, .. } = *self.stack.last().unwrap() else {
                        unreachable!("a length is read in a data set frame")
                    };
                    let Some(raw) = self.take(data, at, 4) else {
                        return Ok(());
                    };
                    let length = enc.u32(raw);
                    self.buf.clear();
                    self.want = Want::Header;
                    self.element(tag, vr, length, may_be_sequence)?;
                }
                Want::Uid { length } => {
                    let Some(raw) = self.take(data, at, length) else {
                        return Ok(());
                    };
                    let mut uid = raw;
                    while let [rest @ .., b'\0' | b' '] = uid {
                        uid = rest;
                    }
                    let verdict = if uid.is_empty() {
                        Err(true)
                    } else if uid.len() > UID_MAX_CHARS || !uid_syntax_ok(uid) {
                        Err(false)
                    } else {
                        Ok(String::from_utf8_lossy(uid).into_owned())
                    };
                    let uid_len = uid.len();
                    self.buf.clear();
                    self.want = Want::Header;
                    match verdict {
                        Ok(value) => {
                            self.study_uid = Some(value);
                            self.uid_state = UidState::Found;
                        }
                        Err(true) => {
                            // An empty Type 1 value is a missing value (0121H), not a wrong one.
                            self.uid_state = UidState::Missing;
                            self.detail = "StudyInstanceUID (0020,000D) is empty".to_string();
                        }
                        Err(false) => self.invalid(format!(
                            "StudyInstanceUID (0020,000D) is not a valid UID ({uid_len} bytes)"
                        )),
                    }
                }
                Want::ItemHeader => {
                    let Frame::Items {
                        enc,
                        depth,
                        fragments,
                    } = *self.stack.last().unwrap()
                    else {
                        unreachable!("an item header is read in an items frame")
                    };
                    let Some(raw) = self.take(data, at, 8) else {
                        return Ok(());
                    };
                    let tag = enc.u16(&raw[0..2]) << 16 | enc.u16(&raw[2..4]);
                    let length = enc.u32(&raw[4..8]);
                    self.buf.clear();
                    if tag == SEQUENCE_END_TAG {
                        self.stack.pop();
                        self.want = Want::Header;
                        continue;
                    }
                    if tag != ITEM_TAG {
                        return Err(malformed(
                            format!("{} where an item was expected", tag_name(tag)),
                            Some(tag),
                        ));
                    }
                    if length == UNDEFINED {
                        if fragments {
                            return Err(malformed(
                                "pixel data fragment of undefined length".to_string(),
                                None,
                            ));
                        }
                        self.push_dataset(enc, depth, None);
                    } else if length != 0 && !fragments {
                        let end = self.pos + length;
                        self.push_dataset(enc, depth, Some(end));
                    } else {
                        self.skip = length;
                    }
                }
            }
        }
    }

    fn push_dataset(&mut self, enc: Encoding, depth: u32, end: Option<u64>) {
        self.stack.push(Frame::Dataset {
            enc,
            depth,
            end,
            top: false,
            undecided: false,
        });
        self.want = Want::Header;
    }

    fn push_items(&mut self, enc: Encoding, depth: u32, fragments: bool) -> Result<(), Malformed> {
        if depth > MAX_NESTING_DEPTH {
            return Err(malformed(
                format!("sequences nested deeper than {MAX_NESTING_DEPTH}"),
                None,
            ));
        }
        self.stack.push(Frame::Items {
            enc,
            depth,
            fragments,
        });
        self.want = Want::ItemHeader;
        Ok(())
    }

    /// One element header read whole, in a data set frame: judge it and
    /// decide what the parser waits for next.
    fn element(
        &mut self,
        tag: u32,
        vr: [u8; 2],
        length: u64,
        may_be_sequence: &mut dyn FnMut(u32) -> bool,
    ) -> Result<(), Malformed> {
        let Some(Frame::Dataset {
            enc,
            depth,
            end,
            top,
            undecided,
        }) = self.stack.last_mut()
        else {
            unreachable!("an element is judged in a data set frame")
        };
        let (enc, depth, end, top) = (*enc, *depth, *end, *top);
        self.want = Want::Header;
        if tag >> 16 == ITEM_GROUP {
            if tag == ITEM_END_TAG && !top && end.is_none() {
                // A non-zero delimiter length is ignored, as pydicom does.
                self.stack.pop();
                self.want = Want::ItemHeader;
                return Ok(());
            }
            return Err(malformed(
                format!("unexpected {} among data elements", tag_name(tag)),
                Some(tag),
            ));
        }
        if top && tag == STUDY_UID_TAG {
            *undecided = false;
            if self.study_uid_header(length, &vr)? {
                return Ok(());
            }
        } else if *undecided && tag > STUDY_UID_TAG {
            *undecided = false;
            self.uid_state = UidState::Missing;
            self.detail = format!("no StudyInstanceUID (0020,000D) before {}", tag_name(tag));
        }
        if length != UNDEFINED {
            if let Some(end) = end {
                if self.pos + length > end {
                    return Err(malformed(
                        format!("element {} runs past the end of its item", tag_name(tag)),
                        Some(tag),
                    ));
                }
            }
            self.skip = length;
            return Ok(());
        }
        if !enc.explicit() {
            if tag != PIXEL_DATA_TAG && !may_be_sequence(tag) {
                return Err(malformed(
                    format!(
                        "undefined length in element {}, not a sequence by the data dictionary",
                        tag_name(tag)
                    ),
                    Some(tag),
                ));
            }
            return self.push_items(enc, depth + 1, tag == PIXEL_DATA_TAG);
        }
        match &vr {
            b"SQ" => self.push_items(enc, depth + 1, false),
            // PS3.5 6.2.2: an undefined-length UN holds implicit VR LE items.
            b"UN" => self.push_items(Encoding::ImplicitLe, depth + 1, false),
            b"OB" | b"OW" => self.push_items(enc, depth + 1, true),
            _ => Err(malformed(
                format!(
                    "undefined length in element {} of VR {}",
                    tag_name(tag),
                    vr_repr(&vr)
                ),
                Some(tag),
            )),
        }
    }

    /// A top-level (0020,000D): Ok(true) when its value is to be read (and
    /// so consumed), Ok(false) when it is judged from the header alone.
    fn study_uid_header(&mut self, length: u64, vr: &[u8; 2]) -> Result<bool, Malformed> {
        if self.uid_state != UidState::NeedMore {
            return Err(malformed(
                "StudyInstanceUID (0020,000D) repeated or after a later tag".to_string(),
                Some(STUDY_UID_TAG),
            ));
        }
        if length == UNDEFINED || vr == b"SQ" {
            self.invalid("StudyInstanceUID (0020,000D) is encoded as a sequence".to_string());
            return Ok(false);
        }
        if length > MAX_STUDY_UID_BYTES {
            self.invalid(format!(
                "StudyInstanceUID (0020,000D) value is {length} bytes long"
            ));
            return Ok(false);
        }
        self.want = Want::Uid {
            length: length as usize,
        };
        Ok(true)
    }
}
