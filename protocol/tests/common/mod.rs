//! Shared helpers for the protocol's public-API tests: sample frames and a seeded generator.

#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use starling_protocol::{kind, Envelope, ErrorCode, Frame, HistoryQuery, Message, SubscribeStart};

/// A message whose bytes are written out by hand in the fixed-bytes tests.
pub fn sample_message() -> Message {
    Message {
        seq: 3,
        offset: 0x0102,
        timestamp_ms: 0x0A0B_0C0D,
        kind: kind::REPLY,
        sender: Bytes::from_static(b"al"),
        client_message_id: Bytes::from_static(&[0xAA]),
        relation: 2,
        headers: Bytes::from_static(b"h"),
        body: Bytes::from_static(b"hi"),
    }
}

/// One envelope of every frame type, in the order of the fixed-bytes table.
pub fn sample_envelopes() -> Vec<Envelope> {
    let envelope = |request_id, frame| Envelope { request_id, frame };
    vec![
        envelope(
            1,
            Frame::Hello {
                version: 1,
                client_name: "cli".into(),
                token: "tk".into(),
            },
        ),
        envelope(
            1,
            Frame::Welcome {
                version: 1,
                server_name: "srv".into(),
                frame_bytes_max: 0x0011_0000,
            },
        ),
        envelope(
            2,
            Frame::Publish {
                ephemeral: true,
                kind: kind::TYPING,
                channel: "c".into(),
                client_message_id: Bytes::from_static(&[9]),
                relation: 0x0100,
                headers: Bytes::new(),
                body: Bytes::from_static(b"xyz"),
            },
        ),
        envelope(
            2,
            Frame::PublishAck {
                seq: 5,
                offset: 6,
                timestamp_ms: 7,
                durable: true,
                duplicate: true,
            },
        ),
        envelope(
            3,
            Frame::Subscribe {
                channel: "c".into(),
                start: SubscribeStart::FromSeq(4),
            },
        ),
        envelope(3, Frame::Subscribed { head_seq: 9 }),
        envelope(
            4,
            Frame::Unsubscribe {
                channel: "c".into(),
            },
        ),
        envelope(4, Frame::Unsubscribed),
        envelope(
            5,
            Frame::History {
                channel: "c".into(),
                query: HistoryQuery::Before(10),
                limit: 50,
            },
        ),
        envelope(
            5,
            Frame::HistoryPage {
                channel: "c".into(),
                head_seq: 10,
                messages: vec![sample_message()],
            },
        ),
        envelope(
            6,
            Frame::CursorSet {
                consumer: "u".into(),
                channel: "c".into(),
                seq: 3,
            },
        ),
        envelope(6, Frame::CursorAck),
        envelope(
            7,
            Frame::CursorGet {
                consumer: "u".into(),
                channel: "c".into(),
            },
        ),
        envelope(7, Frame::CursorValue { seq: 3 }),
        envelope(8, Frame::Ping),
        envelope(8, Frame::Pong),
        envelope(
            0,
            Frame::Deliver {
                channel: "c".into(),
                messages: vec![sample_message()],
            },
        ),
        envelope(
            0,
            Frame::Error {
                code: ErrorCode::SlowConsumer,
                temporary: true,
                message: "slow".into(),
            },
        ),
    ]
}

pub fn encode(envelope: &Envelope) -> BytesMut {
    let mut out = BytesMut::new();
    envelope.encode(&mut out);
    out
}

/// splitmix64: a tiny seeded generator, so a failing seed reproduces without extra dependencies.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    pub fn flip(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }

    /// A u64 that is often small and sometimes extreme, to hit edge values.
    pub fn number(&mut self) -> u64 {
        match self.below(4) {
            0 => 0,
            1 => self.below(100),
            2 => u64::MAX - self.below(2),
            _ => self.next_u64(),
        }
    }

    pub fn bytes(&mut self, length_max: usize) -> Bytes {
        let length = self.below(length_max as u64 + 1) as usize;
        (0..length)
            .map(|_| self.next_u64() as u8)
            .collect::<Vec<u8>>()
            .into()
    }

    /// A string mixing ASCII and multi-byte characters.
    pub fn text(&mut self, chars_max: usize) -> String {
        const ALPHABET: [char; 8] = ['a', 'Z', '0', '-', '/', 'é', '中', '🐦'];
        let count = self.below(chars_max as u64 + 1);
        (0..count)
            .map(|_| ALPHABET[self.below(ALPHABET.len() as u64) as usize])
            .collect()
    }

    pub fn message(&mut self) -> Message {
        let client_message_id_max = if self.flip() { 16 } else { 255 };
        let body_max = if self.below(8) == 0 { 5000 } else { 300 };
        Message {
            seq: self.number(),
            offset: self.number(),
            timestamp_ms: self.number(),
            kind: self.next_u64() as u8,
            sender: Bytes::from(self.text(8)),
            client_message_id: self.bytes(client_message_id_max),
            relation: self.number(),
            headers: self.bytes(32),
            body: self.bytes(body_max),
        }
    }

    pub fn messages(&mut self, count_min: usize) -> Vec<Message> {
        let count = count_min + self.below(5) as usize;
        (0..count).map(|_| self.message()).collect()
    }

    /// A random valid envelope of a random frame type.
    pub fn envelope(&mut self) -> Envelope {
        let frame = match self.below(18) {
            0 => Frame::Hello {
                version: self.next_u64() as u16,
                client_name: self.text(20),
                token: self.text(40),
            },
            1 => Frame::Welcome {
                version: self.next_u64() as u16,
                server_name: self.text(20),
                frame_bytes_max: self.next_u64() as u32,
            },
            2 => Frame::Publish {
                ephemeral: self.flip(),
                kind: self.next_u64() as u8,
                channel: self.text(30).into(),
                client_message_id: self.bytes(255),
                relation: self.number(),
                headers: self.bytes(64),
                body: self.bytes(2000),
            },
            3 => Frame::PublishAck {
                seq: self.number(),
                offset: self.number(),
                timestamp_ms: self.number(),
                durable: self.flip(),
                duplicate: self.flip(),
            },
            4 => Frame::Subscribe {
                channel: self.text(30),
                start: match self.below(3) {
                    0 => SubscribeStart::Live,
                    1 => SubscribeStart::FromSeq(self.number()),
                    _ => SubscribeStart::LastN(self.number()),
                },
            },
            5 => Frame::Subscribed {
                head_seq: self.number(),
            },
            6 => Frame::Unsubscribe {
                channel: self.text(30),
            },
            7 => Frame::Unsubscribed,
            8 => Frame::History {
                channel: self.text(30),
                query: match self.below(3) {
                    0 => HistoryQuery::From(self.number()),
                    1 => HistoryQuery::Before(self.number()),
                    _ => HistoryQuery::Last,
                },
                limit: self.next_u64() as u32,
            },
            9 => Frame::HistoryPage {
                channel: self.text(30),
                head_seq: self.number(),
                messages: self.messages(0),
            },
            10 => Frame::CursorSet {
                consumer: self.text(20),
                channel: self.text(30),
                seq: self.number(),
            },
            11 => Frame::CursorAck,
            12 => Frame::CursorGet {
                consumer: self.text(20),
                channel: self.text(30),
            },
            13 => Frame::CursorValue { seq: self.number() },
            14 => Frame::Ping,
            15 => Frame::Pong,
            16 => Frame::Deliver {
                channel: self.text(30),
                messages: self.messages(1),
            },
            _ => Frame::Error {
                code: ErrorCode::ALL[self.below(ErrorCode::ALL.len() as u64) as usize],
                temporary: self.flip(),
                message: self.text(60),
            },
        };
        Envelope {
            request_id: self.next_u64() as u32,
            frame,
        }
    }
}
