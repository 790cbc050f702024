//! A session that wants no input (`Session::input_paused`) is not read: the
//! client's bytes wait in the kernel (its writes block), and reading goes
//! on once a later callback finds the session ready again. HTTP/1.1 uses it
//! so that what a client pipelines behind a slow request is not buffered
//! without bound.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use crossbeam_channel::Sender;
use starling_broker::{
    Close, ConnRef, Engine, EngineConfig, Listener, LoopbackAuthorizer, Protocol, Reply, Session,
    SessionContext, SessionEvent,
};
use starling_protocol::{ErrorCode, Message};

/// Sessions that pause on `wait\n` (telling the test their connection)
/// and resume on any event; they count what they are given and answer the
/// count on `!`.
struct Pausing {
    conns: Sender<ConnRef>,
    received: Arc<AtomicUsize>,
}

struct PausingSession {
    conns: Sender<ConnRef>,
    received: Arc<AtomicUsize>,
    paused: bool,
}

impl Protocol for Pausing {
    fn name(&self) -> &'static str {
        "pausing"
    }

    fn new_session(&self, _peer: SocketAddr) -> Box<dyn Session> {
        Box::new(PausingSession {
            conns: self.conns.clone(),
            received: self.received.clone(),
            paused: false,
        })
    }

    fn encode_delivery(&self, _channel: &str, _messages: &[Message]) -> Bytes {
        Bytes::new()
    }
}

impl Session for PausingSession {
    fn on_input(
        &mut self,
        input: &mut BytesMut,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let bytes = input.split();
        if &bytes[..] == b"wait\n" {
            self.paused = true;
            self.conns.send(context.conn().unwrap()).unwrap();
            context.out().extend_from_slice(b"paused\n");
            return Ok(());
        }
        let total = self.received.fetch_add(bytes.len(), Ordering::SeqCst) + bytes.len();
        if bytes.ends_with(b"!") {
            context
                .out()
                .extend_from_slice(format!("{total}\n").as_bytes());
        }
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

    fn on_event(
        &mut self,
        _event: SessionEvent,
        _context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        self.paused = false;
        Ok(())
    }

    fn input_paused(&self) -> bool {
        self.paused
    }

    fn on_server_close(&mut self, _code: ErrorCode, _reason: &str, _out: &mut BytesMut) {}
}

#[test]
fn a_paused_session_is_not_read_until_it_wants_input_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        shards: 1,
        partitions: 1,
        data_dir: dir.path().to_path_buf(),
        ..EngineConfig::default()
    };
    let (conns, conn_received) = crossbeam_channel::bounded(1);
    let received = Arc::new(AtomicUsize::new(0));
    let listener = Listener {
        address: "127.0.0.1:0".parse().unwrap(),
        protocol: Arc::new(Pausing {
            conns,
            received: received.clone(),
        }),
        tls: None,
        allow_from: Vec::new(),
    };
    let engine = Engine::start(config, Arc::new(LoopbackAuthorizer), vec![listener]).unwrap();
    let mut stream = TcpStream::connect(engine.local_address("pausing").unwrap()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    stream.write_all(b"wait\n").unwrap();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "paused\n");
    let conn = conn_received.recv_timeout(Duration::from_secs(20)).unwrap();

    // Write until the kernel's buffers are full (bounded: 1 GiB at most).
    stream.set_nonblocking(true).unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut written = 0usize;
    loop {
        assert!(written < 1 << 30, "the server reads a paused connection");
        match stream.write(&chunk) {
            Ok(n) => written += n,
            Err(error) if error.kind() == ErrorKind::WouldBlock => break,
            Err(error) => panic!("write: {error}"),
        }
    }
    assert_eq!(
        received.load(Ordering::SeqCst),
        0,
        "nothing was read while paused ({written} bytes written)"
    );

    // Resumed by an event, the session gets everything.
    engine.notifier().notify(conn, Box::new(()));
    stream.set_nonblocking(false).unwrap();
    let rest = std::thread::spawn(move || {
        stream.write_all(b"!").unwrap();
        stream
    });
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line.trim().parse::<usize>().unwrap(), written + 1);
    drop(rest.join().unwrap());
    engine.shutdown().unwrap();
}
