//! A shard whose thread panics (a bug in a protocol's session, say): the
//! engine says which one (`Engine::failed_shard`), the other shards carry
//! on, nothing waits for the dead one's inbox, and `shutdown` finishes and
//! reports the unclean stop. Its own test binary: the panic is deliberate.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use starling_broker::{
    Close, Engine, EngineConfig, EngineError, Listener, LoopbackAuthorizer, Principal, Protocol,
    Reply, Session, SessionContext,
};
use starling_protocol::{ErrorCode, Message, SubscribeStart};

/// A protocol whose sessions echo their input, and panic on `panic`.
struct Fragile;

struct FragileSession;

impl Protocol for Fragile {
    fn name(&self) -> &'static str {
        "fragile"
    }

    fn new_session(&self, _peer: SocketAddr) -> Box<dyn Session> {
        Box::new(FragileSession)
    }

    fn encode_delivery(&self, _channel: &str, _messages: &[Message]) -> Bytes {
        Bytes::new()
    }
}

impl Session for FragileSession {
    fn on_input(
        &mut self,
        input: &mut BytesMut,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let bytes = input.split();
        assert!(&bytes[..] != b"panic", "a deliberate bug");
        context.out().extend_from_slice(&bytes);
        Ok(())
    }

    fn on_reply(
        &mut self,
        _request_id: u32,
        _reply: &Reply,
        _context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        Ok(())
    }

    fn on_server_close(&mut self, _code: ErrorCode, _reason: &str, _out: &mut BytesMut) {}
}

fn echo(stream: &mut TcpStream, bytes: &[u8]) -> Vec<u8> {
    stream.write_all(bytes).unwrap();
    let mut answer = vec![0; bytes.len()];
    stream.read_exact(&mut answer).unwrap();
    answer
}

#[test]
fn a_panicking_shard_is_reported_and_the_engine_still_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        shards: 2,
        partitions: 4,
        data_dir: dir.path().to_path_buf(),
        ..EngineConfig::default()
    };
    let listener = Listener {
        address: "127.0.0.1:0".parse().unwrap(),
        protocol: Arc::new(Fragile),
        tls: None,
        allow_from: Vec::new(),
    };
    let engine = Engine::start(config, Arc::new(LoopbackAuthorizer), vec![listener]).unwrap();
    let address = engine.local_address("fragile").unwrap();
    // Connections go to the shards in turn: one on each.
    let mut first = TcpStream::connect(address).unwrap();
    let mut second = TcpStream::connect(address).unwrap();
    for stream in [&mut first, &mut second] {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(echo(stream, b"hello"), b"hello");
    }
    assert_eq!(engine.failed_shard(), None);

    first.write_all(b"panic").unwrap();
    let mut rest = Vec::new();
    // The dead shard's connections are closed with it.
    let _ = first.read_to_end(&mut rest);
    let failed = (0..200)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(25));
            engine.failed_shard()
        })
        .expect("the engine reports the shard that stopped");

    // The other shard carries on, and an in-process client of it works.
    assert_eq!(echo(&mut second, b"still"), b"still");
    let mut client = engine.connect(Principal::embedded("after"));
    if client.closed_reason().is_none() {
        let _ = client.subscribe("lobby", SubscribeStart::Live);
    }

    match engine.shutdown() {
        Err(EngineError::UncleanStop { shards }) => assert_eq!(shards, 1, "shard {failed}"),
        other => panic!("expected an unclean stop of one shard, got {other:?}"),
    }
}
