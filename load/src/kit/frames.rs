//! What a subscriber reads: just enough of each WebSocket frame (the seq,
//! the send time in `data`, the end event, a reset), and which seqs of its
//! topic it has seen (lost, duplicated, out of order).

use std::collections::BTreeSet;

/// Client read buffer per subscriber.
pub(crate) const WS_READ_BUFFER: usize = 8 * 1024;

/// What a subscriber makes of a text frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// An event with its seq and, when present, the send time in its data.
    Event { seq: u64, sent_ns: Option<u64> },
    /// The end event.
    End { seq: u64 },
    /// `{"op":"reset",...}`.
    Reset,
    /// Anything else (`subscribed`, `error`, `expiring`, ...).
    Other,
}

/// Parses just enough of a frame: events are `{"op":"event","topic":...,
/// "seq":N,...,"data":{...}}` (Herald writes them in this order, once per
/// event) with `data` last and written by this tool as
/// `{"t":NS,...}` or `{"end":true}`. Topics and server-made ids cannot hold
/// a quote, so the first `,"seq":` is the seq.
pub(crate) fn parse_frame(text: &str) -> Frame {
    let Some(rest) = text.strip_prefix(r#"{"op":"event","#) else {
        // Control frames: keys in any order.
        return if text.contains(r#""op":"reset""#) {
            Frame::Reset
        } else {
            Frame::Other
        };
    };
    let Some(seq) = rest
        .find(r#","seq":"#)
        .and_then(|at| leading_u64(&rest[at + 7..]))
    else {
        return Frame::Other;
    };
    let data = rest.rfind(r#""data":"#).map_or("", |at| &rest[at + 7..]);
    if data.starts_with(r#"{"end":true"#) {
        return Frame::End { seq };
    }
    let sent_ns = data.strip_prefix(r#"{"t":"#).and_then(leading_u64);
    Frame::Event { seq, sent_ns }
}

/// The decimal number at the start of `s`.
fn leading_u64(s: &str) -> Option<u64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    s[..digits].parse().ok()
}

/// Which seqs of one topic a subscriber has seen: all up to `contiguous`,
/// plus the few above it (only after a gap or a reordering).
#[derive(Debug, Default)]
pub(crate) struct Seqs {
    pub(crate) contiguous: u64,
    above: BTreeSet<u64>,
    highest: u64,
    pub(crate) duplicates: u64,
    pub(crate) order_violations: u64,
}

impl Seqs {
    pub(crate) fn see(&mut self, seq: u64) {
        if seq <= self.contiguous || self.above.contains(&seq) {
            self.duplicates += 1;
            return;
        }
        if seq < self.highest {
            self.order_violations += 1;
        }
        self.highest = self.highest.max(seq);
        if seq == self.contiguous + 1 {
            self.contiguous = seq;
            while self.above.remove(&(self.contiguous + 1)) {
                self.contiguous += 1;
            }
        } else {
            self.above.insert(seq);
        }
    }

    /// Distinct seqs seen.
    pub(crate) fn distinct(&self) -> u64 {
        self.contiguous + self.above.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kit::publishing::event_body;

    #[test]
    fn event_frames_parse_to_seq_and_send_time() {
        let body = event_body("load.fanout.x", 1_790_000_000_123_456_789, 4, "xxxx", 40);
        serde_json::from_str::<serde_json::Value>(&body).expect("the body is JSON");
        // The data as the server keeps it: the publisher's text.
        let data = &body[body.find(r#""data":"#).expect("data") + 7..body.len() - 1];
        let frame = format!(
            r#"{{"op":"event","topic":"load.fanout.x","seq":17,"id":"h-00ff","time":"2026-11-24T10:00:00.123Z","data":{data}}}"#
        );
        assert_eq!(
            parse_frame(&frame),
            Frame::Event {
                seq: 17,
                sent_ns: Some(1_790_000_000_123_456_789)
            }
        );
        let end =
            r#"{"op":"event","topic":"t","seq":18,"id":"h-1","time":"x","data":{"end":true}}"#;
        assert_eq!(parse_frame(end), Frame::End { seq: 18 });
        assert_eq!(
            parse_frame(r#"{"from":3,"op":"reset","topic":"t"}"#),
            Frame::Reset
        );
        assert_eq!(
            parse_frame(r#"{"op":"subscribed","topics":["t"],"heads":"t:0"}"#),
            Frame::Other
        );
    }

    #[test]
    fn seqs_count_gaps_duplicates_and_reorderings() {
        let mut seqs = Seqs::default();
        for s in [1, 2, 3, 5, 4, 4, 7, 2] {
            seqs.see(s);
        }
        assert_eq!(seqs.distinct(), 6);
        assert_eq!(seqs.contiguous, 5);
        assert_eq!(seqs.duplicates, 2);
        // 4 after 5.
        assert_eq!(seqs.order_violations, 1);
        // Seq 6 of 7 is missing.
        assert_eq!(7 - seqs.distinct(), 1);
    }
}
