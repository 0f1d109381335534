//! Herald's one WebSocket implementation: after the `101`, the connection
//! itself writes the session's frames and decodes the client's.
//!
//! The session queues [`WsFrame`]s in its outbound queue; the connection
//! takes them as the socket accepts them, puts a frame header in front of
//! each (an event's text is the shared encoded event, never copied), and
//! writes many at once with `writev`. Bytes from the client are decoded
//! here and go to the session as [`Message`]s, or as the [`Violation`] that
//! ends the connection with its RFC 6455 close code: masking, reserved
//! bits and opcodes, control frames, fragments, UTF-8 checked as each
//! fragment arrives, close codes, and the size limit read from the header
//! before any payload is held. After its close frame, the connection waits
//! (within [`CLOSE_TIMEOUT`]) for the client's before it ends. Nothing sits between the session and the
//! socket but the queue: no writer task, no second channel.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use actix_web::rt::net::TcpStream;
use actix_web::{HttpMessage, HttpRequest};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::input::{self, Feed, Input, Want};
use super::lean::{MAX_BATCH, Source, drive, read};
use crate::session::outbound::{OutboundRx, Stall};
use crate::session::ws::WsFrame;

/// How long a close frame may wait for a client that is not reading, and
/// then for the client's close frame, before the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The session's end of a lean WebSocket, handed over by the handler.
struct Attached {
    frames: OutboundRx<WsFrame>,
    feed: Feed<Received>,
    max_frame_bytes: usize,
}

/// The slot a lean WebSocket's request carries (in its extensions): the
/// handler that accepts the upgrade attaches the session to it.
#[derive(Clone, Default)]
pub struct Upgrade(Rc<RefCell<Option<Attached>>>);

impl Upgrade {
    /// The slot of `req`, when the lean path serves it.
    pub fn of(req: &HttpRequest) -> Option<Upgrade> {
        req.extensions().get::<Upgrade>().cloned()
    }

    /// The session's messages, for a session about to start.
    pub fn input() -> (Feed<Received>, Input<Received>) {
        input::pair()
    }

    /// Hands the session's ends to the connection.
    pub fn attach(
        &self,
        frames: OutboundRx<WsFrame>,
        feed: Feed<Received>,
        max_frame_bytes: usize,
    ) {
        *self.0.borrow_mut() = Some(Attached {
            frames,
            feed,
            max_frame_bytes,
        });
    }

    /// The connection's pump, once the handler attached a session.
    pub(super) fn pump(&self, io: TcpStream, head: Bytes) -> Option<WsPump> {
        let attached = self.0.borrow_mut().take()?;
        Some(WsPump {
            io,
            pending: VecDeque::from([head]),
            frames: FrameSource {
                stall: (attached.frames.stall(), false),
                frames: attached.frames,
                closing: None,
                ended: false,
            },
            feed: Some(attached.feed),
            decoder: Decoder::new(attached.max_frame_bytes),
            peer_closed: false,
            written: false,
        })
    }
}

/// Drives a lean WebSocket until the close frame is written and the client
/// answered it (or went, or the close timeout passed).
pub struct WsPump {
    io: TcpStream,
    /// Framed pieces not yet written; unallocated when idle.
    pending: VecDeque<Bytes>,
    frames: FrameSource,
    /// `None` once the client's side ended or the session stopped reading.
    feed: Option<Feed<Received>>,
    decoder: Decoder,
    /// The client sent its close frame, or ended its side.
    peer_closed: bool,
    /// The close frame is written.
    written: bool,
}

/// The session's frames as a pump's source.
struct FrameSource {
    frames: OutboundRx<WsFrame>,
    /// The queue's word on a stalled socket, and whether it is stalled now.
    stall: (Stall, bool),
    /// Set once the close frame is queued: how long it may take to write.
    closing: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The last frame is queued.
    ended: bool,
}

impl Source for FrameSource {
    fn stalled(&mut self, stalled: bool) {
        if self.stall.1 != stalled {
            self.stall.1 = stalled;
            self.stall.0.set(stalled);
        }
    }

    fn fill(&mut self, pending: &mut VecDeque<Bytes>, cx: &mut Context<'_>) -> io::Result<bool> {
        while !self.ended && pending.len() < MAX_BATCH {
            match self.frames.poll_next(cx) {
                Poll::Ready(Some(frame)) => {
                    self.ended = matches!(frame, WsFrame::Close(..));
                    encode(frame, pending);
                }
                Poll::Ready(None) => {
                    // The session went without a close frame.
                    self.ended = true;
                    pending.push_back(Bytes::from_static(&[0x88, 0]));
                }
                Poll::Pending => break,
            }
        }
        if self.ended {
            let closing = self
                .closing
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(CLOSE_TIMEOUT)));
            if closing.as_mut().poll(cx).is_ready() {
                return Err(io::ErrorKind::TimedOut.into());
            }
        }
        Ok(self.ended)
    }
}

impl WsPump {
    /// Decodes frames the client sent together with its request.
    pub(super) fn take(&mut self, data: &[u8]) {
        self.decode(data);
    }

    /// Hands what `data` completes to the session. After a violation, or
    /// once the client sent its close frame, nothing more goes to it.
    fn decode(&mut self, data: &[u8]) {
        let Some(feed) = &self.feed else {
            return;
        };
        let mut closed = false;
        let ok = self.decoder.decode(data, |message| {
            closed |= matches!(message, Ok(Message::Close(_)));
            feed.push(message);
        });
        if closed {
            self.peer_closed = true;
        }
        if !ok || closed {
            // The session closes; what follows is read only to see the
            // client's close frame or its end.
            self.decoder.reset();
            self.feed = None;
        }
    }

    /// Reads and decodes what the client sent: `Ready` when reading failed
    /// (the connection is over).
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(feed) = &self.feed {
            match feed.want(cx) {
                Want::More => {}
                Want::Later => return Poll::Pending,
                Want::Nothing => {
                    self.feed = None;
                    return Poll::Pending;
                }
            }
            ready!(self.io.poll_read_ready(cx))?;
            match read(&self.io)? {
                None => {}
                // The client closed its side: the session's stream ends.
                Some(bytes) if bytes.is_empty() => {
                    self.peer_closed = true;
                    self.feed = None;
                }
                Some(bytes) => self.decode(&bytes),
            }
        }
        Poll::Pending
    }

    /// After the close frame is written: waits for the client's close
    /// frame or its end (RFC 6455 §7.1.1: the client answers the close, and
    /// the server then closes TCP), within what is left of the close
    /// timeout. What the client sends meanwhile is dropped.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.peer_closed {
            if let Some(closing) = self.frames.closing.as_mut()
                && closing.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Ok(()));
            }
            ready!(self.io.poll_read_ready(cx))?;
            match read(&self.io)? {
                None => {}
                Some(bytes) if bytes.is_empty() => self.peer_closed = true,
                Some(bytes) => {
                    let mut closed = false;
                    let ok = self.decoder.decode(&bytes, |message| {
                        closed |= matches!(message, Ok(Message::Close(_)));
                    });
                    self.peer_closed = closed;
                    if !ok {
                        // Not frames: wait for the end or the timeout.
                        self.decoder.reset();
                    }
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Future for WsPump {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.written {
            match drive(&this.io, &mut this.pending, &mut this.frames, cx) {
                Poll::Ready(Ok(())) => this.written = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return this.poll_read(cx),
            }
        }
        this.poll_linger(cx)
    }
}

/// Appends `frame` as it goes on the wire: a server frame is never masked.
fn encode(frame: WsFrame, out: &mut VecDeque<Bytes>) {
    match frame {
        WsFrame::Text(text) => {
            let payload = text.into_bytes();
            out.push_back(header(0x81, payload.len()));
            out.push_back(payload);
        }
        WsFrame::Ping => out.push_back(Bytes::from_static(&[0x89, 0])),
        WsFrame::Pong(payload) => {
            out.push_back(header(0x8A, payload.len()));
            out.push_back(payload);
        }
        WsFrame::Close(None, _) => out.push_back(Bytes::from_static(&[0x88, 0])),
        WsFrame::Close(Some(code), reason) => {
            // A control frame's payload is at most 125 bytes: the code and
            // up to 123 bytes of reason, cut on a character boundary.
            let mut end = reason.len().min(123);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            let mut frame = BytesMut::with_capacity(4 + end);
            frame.put_u8(0x88);
            frame.put_u8((2 + end) as u8);
            frame.put_u16(code);
            frame.put_slice(&reason.as_bytes()[..end]);
            out.push_back(frame.freeze());
        }
    }
}

/// A frame header: `first` (FIN and opcode) and the payload length.
fn header(first: u8, len: usize) -> Bytes {
    let mut header = BytesMut::with_capacity(10);
    header.put_u8(first);
    if len < 126 {
        header.put_u8(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        header.put_u8(126);
        header.put_u16(len);
    } else {
        header.put_u8(127);
        header.put_u64(len as u64);
    }
    header.freeze()
}

/// A message from the client, decoded: fragments joined, text checked as
/// UTF-8, a close frame's code checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(ByteString),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    /// A close frame: its status code, `None` when it carried none.
    Close(Option<u16>),
}

/// How the client broke RFC 6455: the close code the connection ends with
/// ([`code::PROTOCOL_ERROR`], [`code::INVALID_DATA`], [`code::TOO_BIG`])
/// and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

/// What the client sent, as the session reads it.
pub type Received = Result<Message, Violation>;

/// WebSocket close codes (RFC 6455 §7.4, and Herald's own in 4000-4999).
pub mod code {
    /// A normal end.
    pub const NORMAL: u16 = 1000;
    /// The client broke the protocol (framing, control frames, close codes).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message or close reason that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A frame or message over `HERALD_MAX_FRAME_BYTES`.
    pub const TOO_BIG: u16 = 1009;
    /// The store could not be read.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The node is draining: reconnect elsewhere.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The node is at a limit: try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Not authenticated, or the token expired or was revoked.
    pub const UNAUTHORIZED: u16 = 4001;
    /// A refreshed token allows none of the connection's topics.
    pub const FORBIDDEN: u16 = 4003;
    /// The client fell behind.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The client broke Herald's protocol (no answer to pings).
    pub const HERALD_PROTOCOL: u16 = 4400;

    /// Whether a client may send `code` in a close frame: 1000-1003,
    /// 1007-1014 and 3000-4999. 1005, 1006 and 1015 are never sent; the
    /// rest below 3000 is unassigned.
    pub fn may_be_sent(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

const fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

/// The client's frames, decoded into messages (fragments joined). Holds
/// bytes only while a frame or a fragmented message is incomplete; a frame
/// header announcing more than the limit is refused before its payload.
pub struct Decoder {
    partial: BytesMut,
    /// A fragmented message so far.
    message: Option<Fragmented>,
    max_frame_bytes: usize,
}

/// A data message whose last fragment has not come yet.
struct Fragmented {
    text: bool,
    payload: BytesMut,
    /// Bytes of `payload` known to be whole UTF-8 characters (text only).
    checked: usize,
}

/// One frame, unmasked.
struct Frame {
    fin: bool,
    opcode: u8,
    payload: BytesMut,
}

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

impl Decoder {
    pub fn new(max_frame_bytes: usize) -> Decoder {
        Decoder {
            partial: BytesMut::new(),
            message: None,
            max_frame_bytes,
        }
    }

    /// Forgets everything held: the next bytes start a frame.
    pub fn reset(&mut self) {
        self.partial = BytesMut::new();
        self.message = None;
    }

    /// Decodes `data`, handing each complete message to `emit`; `false`
    /// after a violation (handed on too): nothing more is read.
    pub fn decode(&mut self, data: &[u8], mut emit: impl FnMut(Received)) -> bool {
        let mut buf = std::mem::take(&mut self.partial);
        buf.extend_from_slice(data);
        let ok = loop {
            match parse(&mut buf, self.max_frame_bytes) {
                Ok(None) => break true,
                Ok(Some(frame)) => match self.frame(frame) {
                    Ok(Some(message)) => emit(Ok(message)),
                    Ok(None) => {}
                    Err(e) => {
                        emit(Err(e));
                        break false;
                    }
                },
                Err(e) => {
                    emit(Err(e));
                    break false;
                }
            }
        };
        if ok && !buf.is_empty() {
            self.partial = buf;
        } else if !ok {
            self.message = None;
        }
        ok
    }

    fn frame(&mut self, frame: Frame) -> Result<Option<Message>, Violation> {
        let Frame {
            fin,
            opcode,
            payload,
        } = frame;
        match opcode {
            CONTINUATION => {
                let Some(message) = self.message.as_mut() else {
                    return Err(violation(
                        code::PROTOCOL_ERROR,
                        "a continuation frame with no message started",
                    ));
                };
                if message.payload.len() + payload.len() > self.max_frame_bytes {
                    return Err(violation(code::TOO_BIG, "message too large"));
                }
                message.payload.extend_from_slice(&payload);
                if message.text {
                    message.checked = check_utf8(&message.payload, message.checked, fin)?;
                }
                if !fin {
                    return Ok(None);
                }
                let whole = self.message.take().expect("checked above");
                data_message(whole.text, whole.payload).map(Some)
            }
            TEXT | BINARY => {
                if self.message.is_some() {
                    return Err(violation(
                        code::PROTOCOL_ERROR,
                        "a new data frame inside a fragmented message",
                    ));
                }
                let text = opcode == TEXT;
                let checked = if text {
                    check_utf8(&payload, 0, fin)?
                } else {
                    0
                };
                if fin {
                    return data_message(text, payload).map(Some);
                }
                self.message = Some(Fragmented {
                    text,
                    payload,
                    checked,
                });
                Ok(None)
            }
            PING => Ok(Some(Message::Ping(payload.freeze()))),
            PONG => Ok(Some(Message::Pong(payload.freeze()))),
            CLOSE => close_message(&payload).map(Some),
            _ => Err(violation(code::PROTOCOL_ERROR, "unknown opcode")),
        }
    }
}

/// Checks `payload[checked..]` as UTF-8: how much of it is whole
/// characters. A character cut at the end is fine unless this is the last
/// fragment (`fin`).
fn check_utf8(payload: &[u8], checked: usize, fin: bool) -> Result<usize, Violation> {
    const INVALID: Violation = violation(code::INVALID_DATA, "text is not UTF-8");
    match std::str::from_utf8(&payload[checked..]) {
        Ok(_) => Ok(payload.len()),
        Err(e) if e.error_len().is_none() && !fin => Ok(checked + e.valid_up_to()),
        Err(_) => Err(INVALID),
    }
}

fn data_message(text: bool, payload: BytesMut) -> Result<Message, Violation> {
    if !text {
        return Ok(Message::Binary(payload.freeze()));
    }
    // Checked as it came (check_utf8); this check is the type's.
    ByteString::try_from(payload.freeze())
        .map(Message::Text)
        .map_err(|_| violation(code::INVALID_DATA, "text is not UTF-8"))
}

/// A close frame's payload: nothing, or a code a client may send and a
/// UTF-8 reason.
fn close_message(payload: &[u8]) -> Result<Message, Violation> {
    match payload {
        [] => Ok(Message::Close(None)),
        [_] => Err(violation(
            code::PROTOCOL_ERROR,
            "a close frame's payload is empty or starts with a 2-byte code",
        )),
        [high, low, reason @ ..] => {
            let status = u16::from_be_bytes([*high, *low]);
            if !code::may_be_sent(status) {
                return Err(violation(
                    code::PROTOCOL_ERROR,
                    "a close code a client may not send",
                ));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(violation(
                    code::INVALID_DATA,
                    "the close reason is not UTF-8",
                ));
            }
            Ok(Message::Close(Some(status)))
        }
    }
}

/// Takes one whole frame off the front of `buf`, unmasked; `None` while it
/// is incomplete. Every check a header allows is made as soon as its bytes
/// are there, before any payload is waited for.
fn parse(buf: &mut BytesMut, max_frame_bytes: usize) -> Result<Option<Frame>, Violation> {
    let [first, second, ..] = buf[..] else {
        return Ok(None);
    };
    let fin = first & 0x80 != 0;
    if first & 0x70 != 0 {
        // No extension is agreed at the handshake.
        return Err(violation(code::PROTOCOL_ERROR, "reserved bits set"));
    }
    let opcode = first & 0x0F;
    if !matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG) {
        return Err(violation(code::PROTOCOL_ERROR, "unknown opcode"));
    }
    if second & 0x80 == 0 {
        return Err(violation(
            code::PROTOCOL_ERROR,
            "client frames must be masked",
        ));
    }
    let control = opcode >= CLOSE;
    if control && !fin {
        return Err(violation(
            code::PROTOCOL_ERROR,
            "a control frame may not be fragmented",
        ));
    }
    let (len, at) = match second & 0x7F {
        _ if control && second & 0x7F > 125 => {
            return Err(violation(
                code::PROTOCOL_ERROR,
                "a control frame's payload is at most 125 bytes",
            ));
        }
        126 => match buf.get(2..4) {
            Some(len) => (u64::from(u16::from_be_bytes([len[0], len[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|len| <[u8; 8]>::try_from(len).ok()) {
            Some(len) => {
                let len = u64::from_be_bytes(len);
                if len >> 63 != 0 {
                    return Err(violation(
                        code::PROTOCOL_ERROR,
                        "a payload length with its top bit set",
                    ));
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        len => (u64::from(len), 2),
    };
    if len > max_frame_bytes as u64 {
        return Err(violation(code::TOO_BIG, "frame too large"));
    }
    // At most the limit: it fits.
    let len = len as usize;
    let Some(mask) = buf
        .get(at..at + 4)
        .and_then(|m| <[u8; 4]>::try_from(m).ok())
    else {
        return Ok(None);
    };
    if buf.len() < at + 4 + len {
        return Ok(None);
    }
    buf.advance(at + 4);
    let mut payload = buf.split_to(len);
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
    Ok(Some(Frame {
        fin,
        opcode,
        payload,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as clients must send them.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![first];
        match payload.len() {
            len if len < 126 => frame.push(0x80 | len as u8),
            len if len <= 0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    fn decode_all(decoder: &mut Decoder, data: &[u8]) -> (bool, Vec<Received>) {
        let mut out = Vec::new();
        let ok = decoder.decode(data, |m| out.push(m));
        (ok, out)
    }

    fn text(message: &Received) -> &str {
        match message {
            Ok(Message::Text(text)) => text,
            other => panic!("expected text, got {other:?}"),
        }
    }

    #[test]
    fn frames_split_anywhere_are_joined_and_an_idle_decoder_holds_nothing() {
        let mut bytes = client_frame(0x81, br#"{"op":"ping"}"#);
        bytes.extend(client_frame(0x89, b"p"));
        for cut in 0..bytes.len() {
            let mut decoder = Decoder::new(1024);
            let (ok, mut out) = decode_all(&mut decoder, &bytes[..cut]);
            assert!(ok);
            let (ok, rest) = decode_all(&mut decoder, &bytes[cut..]);
            assert!(ok);
            out.extend(rest);
            assert_eq!(out.len(), 2, "cut at {cut}");
            assert_eq!(text(&out[0]), r#"{"op":"ping"}"#);
            assert!(matches!(&out[1], Ok(Message::Ping(p)) if &p[..] == b"p"));
            assert_eq!(decoder.partial.capacity(), 0, "nothing kept once complete");
        }
    }

    #[test]
    fn fragments_make_one_message_with_control_frames_between() {
        let mut bytes = client_frame(0x01, b"hel");
        bytes.extend(client_frame(0x8A, b""));
        bytes.extend(client_frame(0x80, b"lo"));
        let mut decoder = Decoder::new(1024);
        let (ok, out) = decode_all(&mut decoder, &bytes);
        assert!(ok);
        assert!(matches!(&out[0], Ok(Message::Pong(_))));
        assert_eq!(text(&out[1]), "hello");
    }

    #[test]
    fn oversized_frames_and_messages_are_refused_before_they_arrive() {
        let mut decoder = Decoder::new(100);
        // Only the header of a 1 MB frame: refused at once.
        let header = &client_frame(0x81, &vec![b'a'; 1 << 20])[..14];
        let (ok, out) = decode_all(&mut decoder, header);
        assert!(!ok);
        assert_eq!(out, [Err(violation(code::TOO_BIG, "frame too large"))]);
        let mut decoder = Decoder::new(100);
        let mut bytes = client_frame(0x01, &[b'a'; 60]);
        bytes.extend(client_frame(0x80, &[b'a'; 60]));
        let (ok, out) = decode_all(&mut decoder, &bytes);
        assert!(!ok);
        assert_eq!(out, [Err(violation(code::TOO_BIG, "message too large"))]);
    }

    fn close(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        client_frame(0x88, &payload)
    }

    #[test]
    fn violations_carry_their_close_code() {
        let mut split_then_new = client_frame(0x01, b"a");
        split_then_new.extend(client_frame(0x81, b"b"));
        let mut truncated = client_frame(0x01, "é".as_bytes().get(..1).expect("2 bytes"));
        truncated.extend(client_frame(0x80, b""));
        for (bytes, expected, what) in [
            (vec![0x81, 0x01, b'a'], code::PROTOCOL_ERROR, "unmasked"),
            (
                client_frame(0x80, b"x"),
                code::PROTOCOL_ERROR,
                "continuation not started",
            ),
            (
                split_then_new,
                code::PROTOCOL_ERROR,
                "a new message inside one",
            ),
            (
                client_frame(0x83, b""),
                code::PROTOCOL_ERROR,
                "reserved opcode",
            ),
            (
                client_frame(0x8B, b""),
                code::PROTOCOL_ERROR,
                "reserved control opcode",
            ),
            (client_frame(0xC1, b"a"), code::PROTOCOL_ERROR, "RSV1"),
            (client_frame(0xA1, b"a"), code::PROTOCOL_ERROR, "RSV2"),
            (client_frame(0x91, b"a"), code::PROTOCOL_ERROR, "RSV3"),
            (
                client_frame(0x09, b""),
                code::PROTOCOL_ERROR,
                "fragmented ping",
            ),
            (
                client_frame(0x89, &[0; 126]),
                code::PROTOCOL_ERROR,
                "control frame too long",
            ),
            (
                client_frame(0x88, &[3]),
                code::PROTOCOL_ERROR,
                "1-byte close",
            ),
            (
                client_frame(0x81, &[0xFF, 0xFE]),
                code::INVALID_DATA,
                "text not UTF-8",
            ),
            (truncated, code::INVALID_DATA, "a character cut at the end"),
            (
                close(1000, &[0xC3]),
                code::INVALID_DATA,
                "close reason not UTF-8",
            ),
        ] {
            let mut decoder = Decoder::new(1024);
            let (ok, out) = decode_all(&mut decoder, &bytes);
            assert!(!ok, "{what}");
            assert!(
                matches!(out.last(), Some(Err(v)) if v.code == expected),
                "{what}: {out:?}"
            );
        }
    }

    #[test]
    fn close_codes_a_client_may_not_send_are_protocol_errors() {
        for refused in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            let mut decoder = Decoder::new(1024);
            let (ok, out) = decode_all(&mut decoder, &close(refused, b""));
            assert!(!ok, "{refused}");
            assert!(
                matches!(out[..], [Err(v)] if v.code == code::PROTOCOL_ERROR),
                "{refused}"
            );
        }
        for allowed in [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999] {
            let mut decoder = Decoder::new(1024);
            let (ok, out) = decode_all(&mut decoder, &close(allowed, "bye é".as_bytes()));
            assert!(ok, "{allowed}");
            assert_eq!(out, [Ok(Message::Close(Some(allowed)))]);
        }
        let (ok, out) = decode_all(&mut Decoder::new(8), &client_frame(0x88, b""));
        assert!(ok);
        assert_eq!(out, [Ok(Message::Close(None))]);
    }

    #[test]
    fn a_character_split_between_fragments_is_whole_text_and_a_bad_one_fails_early() {
        let word = "añ€𝄞".as_bytes();
        for cut in 0..word.len() {
            let mut bytes = client_frame(0x01, &word[..cut]);
            bytes.extend(client_frame(0x80, &word[cut..]));
            let (ok, out) = decode_all(&mut Decoder::new(64), &bytes);
            assert!(ok, "cut at {cut}");
            assert_eq!(text(&out[0]), "añ€𝄞");
        }
        // An invalid byte in the first fragment fails before the rest comes.
        let (ok, out) = decode_all(&mut Decoder::new(64), &client_frame(0x01, &[b'a', 0xFF]));
        assert!(!ok);
        assert!(matches!(out[..], [Err(v)] if v.code == code::INVALID_DATA));
    }

    #[test]
    fn a_header_announcing_two_to_the_40_is_refused_with_nothing_buffered() {
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 40).to_be_bytes());
        let mut decoder = Decoder::new(65536);
        let (ok, out) = decode_all(&mut decoder, &header);
        assert!(!ok);
        assert!(matches!(out[..], [Err(v)] if v.code == code::TOO_BIG));
        assert_eq!(decoder.partial.capacity(), 0);
    }

    #[test]
    fn server_frames_carry_the_length_in_the_header_and_are_not_masked() {
        let mut out = VecDeque::new();
        encode(WsFrame::Text(ByteString::from("hi")), &mut out);
        encode(WsFrame::Text(ByteString::from("x".repeat(300))), &mut out);
        encode(WsFrame::Close(Some(4001), "é".repeat(100)), &mut out);
        let wire: Vec<u8> = out.iter().flat_map(|b| b.to_vec()).collect();
        assert_eq!(&wire[..4], b"\x81\x02hi");
        assert_eq!(&wire[4..8], &[0x81, 126, 1, 44]);
        let close = &wire[8 + 300..];
        assert_eq!(close[0], 0x88);
        assert_eq!(usize::from(close[1]), close.len() - 2);
        assert!(close.len() - 2 <= 125);
        assert_eq!(&close[2..4], &4001u16.to_be_bytes());
        assert!(
            std::str::from_utf8(&close[4..]).is_ok(),
            "cut on a character boundary"
        );
    }
}
