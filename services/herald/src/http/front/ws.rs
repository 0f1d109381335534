//! A lean WebSocket: after the `101`, the connection itself writes the
//! session's frames and decodes the client's.
//!
//! The session queues [`WsFrame`]s in its outbound queue; the connection
//! takes them as the socket accepts them, puts a frame header in front of
//! each (an event's text is the shared encoded event, never copied), and
//! writes many at once with `writev`. Bytes from the client are decoded
//! here (masking, fragments, control frames, the frame size limit) and go
//! to the session as messages. Nothing sits between the session and the
//! socket but the queue: no writer task, no second channel.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use actix_http::ws::{OpCode, Parser, ProtocolError};
use actix_web::rt::net::TcpStream;
use actix_web::{HttpMessage, HttpRequest};
use actix_ws::AggregatedMessage;
use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::input::{self, Feed, Input, Want};
use super::lean::{MAX_BATCH, Source, drive, read};
use crate::session::outbound::OutboundRx;
use crate::session::ws::WsFrame;

/// How long a close frame may wait for a client that is not reading
/// before the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the client sent, as the session reads it.
pub type Message = Result<AggregatedMessage, ProtocolError>;

/// The session's end of a lean WebSocket, handed over by the handler.
struct Attached {
    frames: OutboundRx<WsFrame>,
    feed: Feed<Message>,
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
    pub fn input() -> (Feed<Message>, Input<Message>) {
        input::pair()
    }

    /// Hands the session's ends to the connection.
    pub fn attach(&self, frames: OutboundRx<WsFrame>, feed: Feed<Message>, max_frame_bytes: usize) {
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
                frames: attached.frames,
                closing: None,
                ended: false,
            },
            feed: Some(attached.feed),
            decoder: Decoder::new(attached.max_frame_bytes),
        })
    }
}

/// Drives a lean WebSocket until the close frame is written or the client
/// goes.
pub struct WsPump {
    io: TcpStream,
    /// Framed pieces not yet written; unallocated when idle.
    pending: VecDeque<Bytes>,
    frames: FrameSource,
    /// `None` once the client's side ended or the session stopped reading.
    feed: Option<Feed<Message>>,
    decoder: Decoder,
}

/// The session's frames as a pump's source.
struct FrameSource {
    frames: OutboundRx<WsFrame>,
    /// Set once the close frame is queued: how long it may take to write.
    closing: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The last frame is queued.
    ended: bool,
}

impl Source for FrameSource {
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
        if let Some(feed) = &self.feed
            && !self.decoder.decode(data, |message| feed.push(message))
        {
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
                Some(bytes) if bytes.is_empty() => self.feed = None,
                // A protocol error went to the session, which closes.
                Some(bytes) if !self.decoder.decode(&bytes, |message| feed.push(message)) => {
                    self.feed = None
                }
                Some(_) => {}
            }
        }
        Poll::Pending
    }
}

impl Future for WsPump {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Poll::Ready(done) = drive(&this.io, &mut this.pending, &mut this.frames, cx) {
            return Poll::Ready(done);
        }
        this.poll_read(cx)
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
        WsFrame::Close(code, reason) => {
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

/// The client's frames, decoded into messages (fragments joined). Holds
/// bytes only while a frame or a fragmented message is incomplete.
pub struct Decoder {
    partial: BytesMut,
    /// A fragmented message so far: its opcode and payload.
    message: Option<(OpCode, BytesMut)>,
    max_frame_bytes: usize,
}

impl Decoder {
    pub fn new(max_frame_bytes: usize) -> Decoder {
        Decoder {
            partial: BytesMut::new(),
            message: None,
            max_frame_bytes,
        }
    }

    /// Decodes `data`, handing each complete message to `emit`; `false`
    /// after a protocol error (handed on too): nothing more is read.
    pub fn decode(&mut self, data: &[u8], mut emit: impl FnMut(Message)) -> bool {
        let mut buf = std::mem::take(&mut self.partial);
        buf.extend_from_slice(data);
        let ok = loop {
            if let Some(len) = payload_len(&buf)
                && len > self.max_frame_bytes as u64
            {
                emit(Err(ProtocolError::Overflow));
                break false;
            }
            match Parser::parse(&mut buf, true, self.max_frame_bytes) {
                Ok(None) => break true,
                Ok(Some((fin, opcode, payload))) => {
                    let payload = payload.unwrap_or_default();
                    match self.frame(fin, opcode, payload) {
                        Ok(Some(message)) => emit(Ok(message)),
                        Ok(None) => {}
                        Err(e) => {
                            emit(Err(e));
                            break false;
                        }
                    }
                }
                Err(e) => {
                    emit(Err(e));
                    break false;
                }
            }
        };
        if ok && !buf.is_empty() {
            self.partial = buf;
        }
        ok
    }

    fn frame(
        &mut self,
        fin: bool,
        opcode: OpCode,
        payload: BytesMut,
    ) -> Result<Option<AggregatedMessage>, ProtocolError> {
        match opcode {
            OpCode::Continue => {
                let Some((_, so_far)) = self.message.as_mut() else {
                    return Err(ProtocolError::ContinuationNotStarted);
                };
                if so_far.len() + payload.len() > self.max_frame_bytes {
                    return Err(ProtocolError::Overflow);
                }
                so_far.extend_from_slice(&payload);
                if !fin {
                    return Ok(None);
                }
                let (opcode, whole) = self.message.take().expect("checked above");
                data_message(opcode, whole).map(Some)
            }
            OpCode::Text | OpCode::Binary => {
                if self.message.is_some() {
                    return Err(ProtocolError::ContinuationStarted);
                }
                if fin {
                    return data_message(opcode, payload).map(Some);
                }
                self.message = Some((opcode, payload));
                Ok(None)
            }
            OpCode::Ping => Ok(Some(AggregatedMessage::Ping(payload.freeze()))),
            OpCode::Pong => Ok(Some(AggregatedMessage::Pong(payload.freeze()))),
            OpCode::Close => Ok(Some(AggregatedMessage::Close(
                Parser::try_parse_close_payload(&payload)?,
            ))),
            OpCode::Bad => Err(ProtocolError::BadOpCode),
        }
    }
}

fn data_message(opcode: OpCode, payload: BytesMut) -> Result<AggregatedMessage, ProtocolError> {
    if opcode == OpCode::Binary {
        return Ok(AggregatedMessage::Binary(payload.freeze()));
    }
    ByteString::try_from(payload.freeze())
        .map(AggregatedMessage::Text)
        .map_err(|e| ProtocolError::Io(io::Error::new(io::ErrorKind::InvalidData, e)))
}

/// The payload length a frame header announces, once its bytes are there.
fn payload_len(buf: &[u8]) -> Option<u64> {
    let second = *buf.get(1)?;
    match second & 0x7F {
        126 => Some(u64::from(u16::from_be_bytes(
            buf.get(2..4)?.try_into().ok()?,
        ))),
        127 => Some(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)),
        len => Some(u64::from(len)),
    }
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

    fn decode_all(decoder: &mut Decoder, data: &[u8]) -> (bool, Vec<Message>) {
        let mut out = Vec::new();
        let ok = decoder.decode(data, |m| out.push(m));
        (ok, out)
    }

    fn text(message: &Message) -> &str {
        match message {
            Ok(AggregatedMessage::Text(text)) => text,
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
            assert!(matches!(&out[1], Ok(AggregatedMessage::Ping(p)) if &p[..] == b"p"));
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
        assert!(matches!(&out[0], Ok(AggregatedMessage::Pong(_))));
        assert_eq!(text(&out[1]), "hello");
    }

    #[test]
    fn oversized_frames_and_messages_are_refused_before_they_arrive() {
        let mut decoder = Decoder::new(100);
        // Only the header of a 1 MB frame: refused at once.
        let header = &client_frame(0x81, &vec![b'a'; 1 << 20])[..14];
        let (ok, out) = decode_all(&mut decoder, header);
        assert!(!ok);
        assert!(matches!(out[..], [Err(ProtocolError::Overflow)]));
        let mut decoder = Decoder::new(100);
        let mut bytes = client_frame(0x01, &[b'a'; 60]);
        bytes.extend(client_frame(0x80, &[b'a'; 60]));
        let (ok, out) = decode_all(&mut decoder, &bytes);
        assert!(!ok);
        assert!(matches!(out[..], [Err(ProtocolError::Overflow)]));
    }

    #[test]
    fn protocol_errors_are_reported() {
        for (bytes, what) in [
            (vec![0x81, 0x01, b'a'], "unmasked"),
            (client_frame(0x80, b"x"), "continuation not started"),
            (client_frame(0x81, &[0xFF, 0xFE]), "text not UTF-8"),
            (client_frame(0x83, b""), "reserved opcode"),
            (client_frame(0x89, &[0; 126]), "control frame too long"),
        ] {
            let mut decoder = Decoder::new(1024);
            let (ok, out) = decode_all(&mut decoder, &bytes);
            assert!(!ok, "{what}");
            assert!(matches!(out.last(), Some(Err(_))), "{what}: {out:?}");
        }
    }

    #[test]
    fn server_frames_carry_the_length_in_the_header_and_are_not_masked() {
        let mut out = VecDeque::new();
        encode(WsFrame::Text(ByteString::from("hi")), &mut out);
        encode(WsFrame::Text(ByteString::from("x".repeat(300))), &mut out);
        encode(WsFrame::Close(4001, "é".repeat(100)), &mut out);
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
