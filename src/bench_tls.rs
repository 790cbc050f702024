//! TLS for `starling bench --tls`: the client configuration, the setup of a
//! connection (handshake, `Hello`, subscriptions) and [`Wire`], the socket
//! that the bench's event loops read from and write to, plain or TLS.
//!
//! A rustls session is one state machine for both directions, so it cannot
//! be split between a sending and a receiving thread the way a plain
//! `TcpStream` can. With `--tls`, one thread drives each connection through
//! [`Wire`] (mio, non-blocking): a publisher's pacing thread keeps its
//! open-loop timing and hands the encoded frames of each burst to that
//! thread (`bench.rs`, `PublishSink`), which seals them, writes them and
//! reads the acks; a subscriber thread reads its connections as in the
//! plain case.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::{Buf, BytesMut};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use starling_adapters::client::INCOMING_FRAME_BYTES_MAX;
use starling_protocol::{decode, Decoded, Envelope, Frame, Limits, PROTOCOL_VERSION};

/// Bytes asked of the socket (or of the TLS session) per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// How the bench reaches a server over TLS.
#[derive(Clone)]
pub(crate) struct TlsClient {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl TlsClient {
    /// Trusts the CA certificates in `ca_file` (PEM) and checks the server's
    /// certificate for `server_name`, or for the address's IP when `None`.
    /// With `client` (certificate chain, key; PEM), presents that certificate.
    pub(crate) fn new(
        ca_file: &Path,
        server_name: Option<&str>,
        address: SocketAddr,
        client: Option<(&Path, &Path)>,
    ) -> Result<TlsClient> {
        let mut roots = RootCertStore::empty();
        for certificate in read_certificates(ca_file)? {
            roots.add(certificate).with_context(|| {
                format!(
                    "--tls-ca {}: not a usable CA certificate",
                    ca_file.display()
                )
            })?;
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .context("rustls refused TLS 1.2/1.3 with the ring provider")?
                .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert_file, key_file)) => {
                let key = PrivateKeyDer::from_pem_file(key_file).with_context(|| {
                    format!(
                        "--tls-key {}: cannot read a PEM private key",
                        key_file.display()
                    )
                })?;
                builder
                    .with_client_auth_cert(read_certificates(cert_file)?, key)
                    .context("--tls-cert and --tls-key do not form a usable client certificate")?
            }
        };
        let server_name = match server_name {
            Some(name) => ServerName::try_from(name.to_owned()).with_context(|| {
                format!("--tls-server-name {name:?} is not a DNS name or an IP address")
            })?,
            None => ServerName::IpAddress(address.ip().into()),
        };
        Ok(TlsClient {
            config: Arc::new(config),
            server_name,
        })
    }

    /// Connects, completes the handshake and says `Hello` (blocking). The
    /// connection is ready for [`Setup::call`] and then [`Setup::into_wire`].
    pub(crate) fn connect(&self, address: SocketAddr, client_name: &str) -> Result<Setup> {
        let socket =
            TcpStream::connect(address).with_context(|| format!("cannot connect to {address}"))?;
        socket.set_nodelay(true)?;
        let mut session = ClientConnection::new(self.config.clone(), self.server_name.clone())
            .context("cannot start a TLS session")?;
        // The window of unacknowledged publishes bounds what waits here.
        session.set_buffer_limit(None);
        let mut setup = Setup {
            stream: rustls::StreamOwned::new(session, socket),
            buffer: BytesMut::new(),
            request_id_last: 0,
        };
        while setup.stream.conn.is_handshaking() {
            setup
                .stream
                .conn
                .complete_io(&mut setup.stream.sock)
                .with_context(|| {
                    format!(
                        "TLS handshake with {address} failed; check --tls-ca and --tls-server-name"
                    )
                })?;
        }
        let hello = Frame::Hello {
            version: PROTOCOL_VERSION,
            client_name: client_name.to_owned(),
            token: String::new(),
        };
        match setup.call(hello)? {
            Frame::Welcome { .. } => Ok(setup),
            other => bail!("the server answered Hello with {}", other.name()),
        }
    }
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read PEM certificates from {}", path.display()))?;
    if certificates.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certificates)
}

/// A TLS connection before the run: blocking, one request at a time.
pub(crate) struct Setup {
    stream: rustls::StreamOwned<ClientConnection, TcpStream>,
    /// Plaintext received and not yet decoded.
    buffer: BytesMut,
    request_id_last: u32,
}

impl Setup {
    /// Sends `frame` and returns the reply. Nothing but replies may arrive
    /// before the run starts, so anything else is an error.
    pub(crate) fn call(&mut self, frame: Frame) -> Result<Frame> {
        self.request_id_last += 1;
        let request_id = self.request_id_last;
        let mut out = BytesMut::new();
        Envelope { request_id, frame }.encode(&mut out);
        self.stream.write_all(&out)?;
        self.stream.flush()?;
        loop {
            if let Some(envelope) = next_envelope(&mut self.buffer)? {
                match envelope.frame {
                    Frame::Error { message, .. } => bail!("the server refused: {message}"),
                    frame if envelope.request_id == request_id => return Ok(frame),
                    frame => bail!("unexpected {} before the run started", frame.name()),
                }
            }
            let start = self.buffer.len();
            self.buffer.resize(start + READ_CHUNK_BYTES, 0);
            let read = self.stream.read(&mut self.buffer[start..]);
            self.buffer.truncate(start + *read.as_ref().unwrap_or(&0));
            if read? == 0 {
                bail!("the server closed the connection during setup");
            }
        }
    }

    /// The connection for an event loop: non-blocking, with the plaintext
    /// received but not yet decoded.
    pub(crate) fn into_wire(self) -> Result<(Wire, BytesMut)> {
        let (mut session, socket) = self.stream.into_parts();
        let mut buffer = self.buffer;
        // Plaintext the session decrypted along with the last reply.
        drain_plaintext(&mut session, &mut buffer)?;
        socket.set_nonblocking(true)?;
        let wire = Wire::Tls {
            socket: mio::net::TcpStream::from_std(socket),
            session: Box::new(session),
        };
        Ok((wire, buffer))
    }
}

/// Decodes the next envelope of `buffer`, if complete.
pub(crate) fn next_envelope(buffer: &mut BytesMut) -> Result<Option<Envelope>> {
    let limits = Limits {
        frame_bytes_max: INCOMING_FRAME_BYTES_MAX,
    };
    match decode(buffer, &limits).context("the server sent a malformed frame")? {
        Decoded::Complete { envelope, used } => {
            buffer.advance(used);
            Ok(Some(envelope))
        }
        _ => Ok(None),
    }
}

/// A non-blocking connection of the bench, plain or TLS.
pub(crate) enum Wire {
    Plain(mio::net::TcpStream),
    Tls {
        socket: mio::net::TcpStream,
        session: Box<ClientConnection>,
    },
}

/// What [`Wire::read_available`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// Everything available was read; the connection is open.
    Open,
    /// The server closed the connection.
    Closed,
}

impl Wire {
    /// The socket, to register with a poll.
    pub(crate) fn socket(&mut self) -> &mut mio::net::TcpStream {
        match self {
            Wire::Plain(socket) | Wire::Tls { socket, .. } => socket,
        }
    }

    /// Reads every byte available now (the poll is edge-triggered) and
    /// appends the plaintext to `into`.
    pub(crate) fn read_available(&mut self, into: &mut BytesMut) -> Result<ReadOutcome> {
        match self {
            Wire::Plain(socket) => Ok(read_until_blocked(socket, into)?),
            Wire::Tls { socket, session } => {
                loop {
                    match session.read_tls(socket) {
                        Ok(0) => {
                            drain_plaintext(session, into)?;
                            return Ok(ReadOutcome::Closed);
                        }
                        Ok(_) => {
                            session
                                .process_new_packets()
                                .context("the server's TLS records were refused")?;
                            if drain_plaintext(session, into)? == ReadOutcome::Closed {
                                return Ok(ReadOutcome::Closed);
                            }
                        }
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                        Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                        Err(error) => return Err(error.into()),
                    }
                }
                // Answers the session owes the server (alerts, key updates).
                self.write_pending()?;
                Ok(ReadOutcome::Open)
            }
        }
    }

    /// Seals `plaintext` (TLS) and writes what the socket takes now; the
    /// rest waits for [`Wire::write_pending`].
    pub(crate) fn send(&mut self, plaintext: &[u8]) -> Result<()> {
        match self {
            Wire::Plain(_) => unreachable!("plain publishers write through their ClientWriter"),
            Wire::Tls { session, .. } => session.writer().write_all(plaintext)?,
        }
        self.write_pending()
    }

    /// Writes sealed records until the socket would block (a writable
    /// event calls this again).
    pub(crate) fn write_pending(&mut self) -> Result<()> {
        if let Wire::Tls { socket, session } = self {
            while session.wants_write() {
                match session.write_tls(socket) {
                    Ok(_) => {}
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(error.into()),
                }
            }
        }
        Ok(())
    }
}

/// Reads `source` until it would block.
fn read_until_blocked(source: &mut impl Read, into: &mut BytesMut) -> io::Result<ReadOutcome> {
    loop {
        let start = into.len();
        into.resize(start + READ_CHUNK_BYTES, 0);
        let read = source.read(&mut into[start..]);
        into.truncate(start + *read.as_ref().unwrap_or(&0));
        match read {
            Ok(0) => return Ok(ReadOutcome::Closed),
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                return Ok(ReadOutcome::Open)
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}

/// Moves the plaintext a TLS session decrypted into `into`.
fn drain_plaintext(session: &mut ClientConnection, into: &mut BytesMut) -> Result<ReadOutcome> {
    // The session's reader says WouldBlock when it has nothing more.
    Ok(read_until_blocked(&mut session.reader(), into)?)
}

/// The poll token of a publisher connection's socket.
const SOCKET: mio::Token = mio::Token(0);
/// The poll token of the waker the pacing thread rings after each burst.
pub(crate) const WAKER: mio::Token = mio::Token(1);

/// What a publisher connection does with what it reads.
pub(crate) trait Answers {
    /// One envelope from the server, read at `now_ns` (ns since the run's epoch).
    fn on_envelope(&mut self, envelope: Envelope, now_ns: u64);
    /// After the envelopes of one read.
    fn after_read(&mut self);
    /// Whether the connection is done; an error ends it.
    fn finished(&self) -> Result<bool>;
}

/// Drives one publisher connection until `answers` is finished: writes the
/// bursts the pacing thread sends through `bursts` (their number is bounded
/// by the publisher's window of unacknowledged messages) and hands every
/// envelope read to `answers` with the time it was read (ns since `epoch`),
/// which is asked at least every 100 ms.
pub(crate) fn drive_publisher(
    mut poll: mio::Poll,
    mut wire: Wire,
    mut buffer: BytesMut,
    bursts: std::sync::mpsc::Receiver<bytes::Bytes>,
    epoch: std::time::Instant,
    answers: &mut impl Answers,
) -> Result<()> {
    poll.registry().register(
        wire.socket(),
        SOCKET,
        mio::Interest::READABLE | mio::Interest::WRITABLE,
    )?;
    let mut events = mio::Events::with_capacity(16);
    loop {
        let now_ns = epoch.elapsed().as_nanos() as u64;
        while let Some(envelope) = next_envelope(&mut buffer)? {
            answers.on_envelope(envelope, now_ns);
        }
        answers.after_read();
        if answers.finished()? {
            return Ok(());
        }
        poll.poll(&mut events, Some(std::time::Duration::from_millis(100)))?;
        let mut readable = false;
        for event in events.iter() {
            if event.token() == WAKER {
                while let Ok(burst) = bursts.try_recv() {
                    wire.send(&burst)?;
                }
            } else {
                readable |= event.is_readable() || event.is_read_closed();
            }
        }
        wire.write_pending()?;
        if readable && wire.read_available(&mut buffer)? == ReadOutcome::Closed {
            let now_ns = epoch.elapsed().as_nanos() as u64;
            while let Some(envelope) = next_envelope(&mut buffer)? {
                answers.on_envelope(envelope, now_ns);
            }
            answers.after_read();
            bail!("the server closed the connection");
        }
    }
}
