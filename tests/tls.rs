//! TLS on every listener, with real clients: curl (HTTPS), OpenSSL's
//! s_client (protocol versions and cipher suites), mosquitto_pub/sub (MQTT
//! over TLS), a rustls client carrying WebSocket (WSS) and native frames,
//! certificate reload on SIGHUP with a connection kept open across it, and
//! client certificates.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::Server;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use starling_protocol::{decode, Decoded, Envelope, Frame, Limits, PROTOCOL_VERSION};

/// Runs openssl with `args` in `dir`; panics with its output if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (apt package openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA (`<name>-ca.pem`) and a certificate it signed for `subject`
/// (`<name>.pem`, `<name>.key`), valid for 127.0.0.1 and localhost.
fn make_certificate(dir: &Path, name: &str, usage: &str) {
    let ca = format!("{name}-ca");
    // A new P-256 key written to `key`, and a request (or with -x509, a
    // self-signed certificate) for `subject` written to `out`.
    let new_key = |extra: &[&str], key: &str, out: &str, subject: &str| {
        let mut args = vec![
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-nodes", "-keyout", key, "-out", out, "-subj", subject]);
        openssl(dir, &args);
    };
    new_key(
        &["-x509", "-days", "2"],
        &format!("{ca}.key"),
        &format!("{ca}.pem"),
        &format!("/CN={name} test CA"),
    );
    new_key(
        &[],
        &format!("{name}.key"),
        &format!("{name}.csr"),
        &format!("/CN={name}"),
    );
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage={usage}\n"
        ),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// Writes the CA certificates of `names` (made by [`make_certificate`]) into
/// one PEM file, `file` in `dir`; returns its path.
fn write_ca_bundle(dir: &Path, file: &str, names: &[&str]) -> String {
    let bundle: String = names
        .iter()
        .map(|name| std::fs::read_to_string(dir.join(format!("{name}-ca.pem"))).unwrap())
        .collect();
    std::fs::write(dir.join(file), bundle).unwrap();
    path(dir, file)
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).to_str().unwrap().to_string()
}

/// Starts a server whose three listeners speak TLS only, with the
/// certificate `server.pem` of `dir`.
fn start_tls_server(dir: &Path, extra: &[(&str, &str)]) -> Server {
    let cert = path(dir, "server.pem");
    let key = path(dir, "server.key");
    let mut env = vec![
        ("STARLING_TLS_CERT_FILE", cert.as_str()),
        ("STARLING_TLS_KEY_FILE", key.as_str()),
        ("STARLING_NATIVE_TLS", "true"),
        ("STARLING_HTTP_TLS", "true"),
        ("STARLING_MQTT_TLS", "true"),
    ];
    env.extend_from_slice(extra);
    Server::start(&dir.join("data"), &env)
}

/// A rustls client connection to `address`, trusting the CA in `ca_file`,
/// optionally presenting a client certificate.
fn tls_connect(
    address: SocketAddr,
    ca_file: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(certificate.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
    };
    let connection =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let socket = TcpStream::connect(address).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut stream = rustls::StreamOwned::new(connection, socket);
    // Finish the handshake now, so a refusal shows here.
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(stream)
}

/// One HTTP/1.1 request on a kept-alive stream; returns the status and body.
fn http_get<S: Read + Write>(stream: &mut S, target: &str) -> (u16, String) {
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    stream.flush().unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let code = status.split(' ').nth(1).unwrap().parse().unwrap();
    (code, String::from_utf8(body).unwrap())
}

/// Runs `openssl s_client` against `address` with `args`; returns whether
/// a session was established, and the output.
fn s_client(address: SocketAddr, args: &[&str]) -> (bool, String) {
    let connect = address.to_string();
    let mut command = Command::new("openssl");
    command
        .args(["s_client", "-connect", &connect, "-brief"])
        .args(args)
        .stdin(Stdio::null());
    let output = command.output().expect("openssl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let established = output.status.success() && text.contains("Protocol version");
    (established, text)
}

#[test]
fn every_listener_speaks_tls_to_real_clients() {
    let dir = tempfile::tempdir().unwrap();
    make_certificate(dir.path(), "server", "serverAuth");
    let server = start_tls_server(dir.path(), &[]);
    let ca = dir.path().join("server-ca.pem");

    // HTTPS with curl, which checks the certificate against the CA.
    let url = format!("https://{}/healthz", server.http);
    let output = Command::new("curl")
        .args(["-sS", "--cacert", ca.to_str().unwrap(), &url])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "{\"status\":\"ok\"}"
    );
    // Plain HTTP on the TLS port gets nowhere.
    let output = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://{}/healthz", server.http),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    // A client that does not trust the certificate refuses it.
    let output = Command::new("curl").args(["-sS", &url]).output().unwrap();
    assert!(!output.status.success());

    // WSS: the chat WebSocket through a rustls stream.
    let stream = tls_connect(server.http, &ca, None).unwrap();
    let (mut socket, response) =
        tungstenite::client(format!("wss://localhost:{}/ws", server.http.port()), stream)
            .expect("WebSocket handshake over TLS");
    assert_eq!(response.status(), 101);
    socket
        .send(tungstenite::Message::text(
            r#"{"type":"connect","id":1,"token":"alice"}"#,
        ))
        .unwrap();
    let reply = socket.read().unwrap().into_text().unwrap();
    assert!(reply.contains("\"user\":\"alice\""), "{reply}");

    // MQTT over TLS with the mosquitto clients.
    let port = server.mqtt.port().to_string();
    let cafile = ca.to_str().unwrap();
    let mut subscriber = Command::new("stdbuf")
        .args([
            "-oL",
            "mosquitto_sub",
            "--cafile",
            cafile,
            "-h",
            "127.0.0.1",
            "-p",
        ])
        .args([
            port.as_str(),
            "-t",
            "tls/room",
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "20",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub runs");
    std::thread::sleep(Duration::from_millis(500));
    let status = Command::new("mosquitto_pub")
        .args(["--cafile", cafile, "-h", "127.0.0.1", "-p", &port])
        .args(["-t", "tls/room", "-m", "over tls", "-q", "1"])
        .status()
        .unwrap();
    assert!(status.success());
    let mut received = String::new();
    subscriber
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut received)
        .unwrap();
    assert!(subscriber.wait().unwrap().success());
    assert_eq!(received.trim(), "over tls");

    // The native protocol: Hello → Welcome through a rustls stream.
    let mut stream = tls_connect(server.address, &ca, None).unwrap();
    let mut out = BytesMut::new();
    Envelope {
        request_id: 0,
        frame: Frame::Hello {
            version: PROTOCOL_VERSION,
            client_name: "tls-test".into(),
            token: "bob".into(),
        },
    }
    .encode(&mut out);
    stream.write_all(&out).unwrap();
    stream.flush().unwrap();
    let mut input = Vec::new();
    let welcome = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "the server closed before Welcome");
        input.extend_from_slice(&chunk[..n]);
        if let Decoded::Complete { envelope, .. } = decode(&input, &Limits::default()).unwrap() {
            break envelope;
        }
    };
    assert!(
        matches!(welcome.frame, Frame::Welcome { .. }),
        "{welcome:?}"
    );
}

#[test]
fn old_protocol_versions_and_weak_ciphers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    make_certificate(dir.path(), "server", "serverAuth");
    let server = start_tls_server(dir.path(), &[]);
    let ca = path(dir.path(), "server-ca.pem");
    for address in [server.http, server.mqtt, server.address] {
        // OpenSSL's own security level would refuse these before asking, so
        // it is lowered to 0: the refusal must come from the server.
        for version in ["-tls1", "-tls1_1"] {
            let (established, text) =
                s_client(address, &[version, "-cipher", "DEFAULT@SECLEVEL=0"]);
            assert!(!established, "{version} accepted by {address}: {text}");
            assert!(
                text.contains("alert"),
                "{version}: the server answers with an alert: {text}"
            );
        }
        for cipher in [
            "AES128-SHA",
            "DES-CBC3-SHA",
            "ECDHE-RSA-AES128-SHA",
            "NULL-SHA256",
        ] {
            let (established, text) = s_client(
                address,
                &["-tls1_2", "-cipher", &format!("{cipher}:@SECLEVEL=0")],
            );
            assert!(!established, "{cipher} accepted by {address}: {text}");
        }
        let (established, text) = s_client(address, &["-tls1_2", "-CAfile", &ca]);
        assert!(established && text.contains("TLSv1.2"), "{text}");
        let (established, text) = s_client(address, &["-tls1_3", "-CAfile", &ca]);
        assert!(established && text.contains("TLSv1.3"), "{text}");
    }
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    make_certificate(dir.path(), "server", "serverAuth");
    make_certificate(dir.path(), "renewed", "serverAuth");
    let server = start_tls_server(dir.path(), &[]);
    let first_ca = dir.path().join("server-ca.pem");
    let second_ca = dir.path().join("renewed-ca.pem");

    let mut kept = tls_connect(server.http, &first_ca, None).unwrap();
    assert_eq!(http_get(&mut kept, "/healthz").0, 200);
    assert!(tls_connect(server.http, &second_ca, None).is_err());

    // Renew: new files in place, then SIGHUP.
    for (from, to) in [("renewed.pem", "server.pem"), ("renewed.key", "server.key")] {
        std::fs::copy(dir.path().join(from), dir.path().join(to)).unwrap();
    }
    let line = server.sighup_and_wait_for("SIGHUP");
    assert!(line.contains("reloaded the TLS certificate"), "{line}");

    // New connections get the renewed certificate ...
    let mut fresh = tls_connect(server.http, &second_ca, None).unwrap();
    assert_eq!(http_get(&mut fresh, "/healthz").0, 200);
    assert!(tls_connect(server.http, &first_ca, None).is_err());
    // ... and the connection opened before the reload still works.
    let (status, body) = http_get(&mut kept, "/healthz");
    assert_eq!((status, body.as_str()), (200, "{\"status\":\"ok\"}"));
}

#[test]
fn client_certificates_when_required() {
    let dir = tempfile::tempdir().unwrap();
    make_certificate(dir.path(), "server", "serverAuth");
    make_certificate(dir.path(), "client", "clientAuth");
    make_certificate(dir.path(), "stranger", "clientAuth");
    let client_ca = path(dir.path(), "client-ca.pem");
    let server = start_tls_server(
        dir.path(),
        &[
            ("STARLING_TLS_CLIENT_AUTH", "required"),
            ("STARLING_TLS_CLIENT_CA_FILE", client_ca.as_str()),
        ],
    );
    let ca = dir.path().join("server-ca.pem");
    let client: (PathBuf, PathBuf) = (dir.path().join("client.pem"), dir.path().join("client.key"));
    let mut stream = tls_connect(
        server.http,
        &ca,
        Some((client.0.as_path(), client.1.as_path())),
    )
    .unwrap();
    assert_eq!(http_get(&mut stream, "/healthz").0, 200);

    // Without a certificate, or with one from another CA: refused. (With TLS
    // 1.3 the refusal can arrive after the client thinks the handshake is
    // done, so the first read is where it shows.)
    let refused = |client: Option<(&Path, &Path)>| match tls_connect(server.http, &ca, client) {
        Err(_) => true,
        Ok(mut stream) => {
            let _ = write!(stream, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut buffer = [0u8; 64];
            !matches!(stream.read(&mut buffer), Ok(n) if n > 0)
        }
    };
    assert!(refused(None));
    let stranger = (
        dir.path().join("stranger.pem"),
        dir.path().join("stranger.key"),
    );
    assert!(refused(Some((stranger.0.as_path(), stranger.1.as_path()))));
}

/// An `openssl ca` database for the CA `<name>-ca` of `dir`, and its
/// revocation list `<name>-crl.pem` (nothing revoked yet).
fn start_revocation_list(dir: &Path, name: &str) {
    std::fs::write(
        dir.join(format!("{name}-crl.cnf")),
        format!(
            "[ ca ]\ndefault_ca = crl_ca\n[ crl_ca ]\ndatabase = {name}-index.txt\n\
             crlnumber = {name}-crlnumber\ndefault_md = sha256\ndefault_crl_days = 2\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join(format!("{name}-index.txt")), "").unwrap();
    std::fs::write(dir.join(format!("{name}-crlnumber")), "01\n").unwrap();
    write_revocation_list(dir, name);
}

/// Writes `<name>-crl.pem` from the CA's database.
fn write_revocation_list(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "ca",
            "-config",
            &format!("{name}-crl.cnf"),
            "-gencrl",
            "-keyfile",
            &format!("{name}-ca.key"),
            "-cert",
            &format!("{name}-ca.pem"),
            "-out",
            &format!("{name}-crl.pem"),
        ],
    );
}

#[test]
fn revoked_client_certificates_are_refused_after_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    make_certificate(dir.path(), "server", "serverAuth");
    make_certificate(dir.path(), "client", "clientAuth");
    // A second client CA, trusted but without a revocation list.
    make_certificate(dir.path(), "other", "clientAuth");
    start_revocation_list(dir.path(), "client");
    let client_ca = write_ca_bundle(dir.path(), "client-cas.pem", &["client", "other"]);
    let client_crl = path(dir.path(), "client-crl.pem");
    let server = start_tls_server(
        dir.path(),
        &[
            ("STARLING_TLS_CLIENT_AUTH", "required"),
            ("STARLING_TLS_CLIENT_CA_FILE", client_ca.as_str()),
            ("STARLING_TLS_CLIENT_CRL_FILE", client_crl.as_str()),
        ],
    );
    let ca = dir.path().join("server-ca.pem");
    let cert = dir.path().join("client.pem");
    let key = dir.path().join("client.key");
    let mut kept = tls_connect(server.http, &ca, Some((&cert, &key))).unwrap();
    assert_eq!(http_get(&mut kept, "/healthz").0, 200);
    // With a list configured, a certificate whose issuer has none is
    // refused: its revocation status is unknown.
    let other = (dir.path().join("other.pem"), dir.path().join("other.key"));
    // (rustls answers an unknown status as it answers an unknown issuer;
    // the end of the test shows the certificate is good without a list.)
    let error = handshake_refusal(server.http, &ca, (&other.0, &other.1));
    assert!(error.contains("UnknownCA"), "{error}");

    // Revoke it, publish the new list, SIGHUP.
    openssl(
        dir.path(),
        &[
            "ca",
            "-config",
            "client-crl.cnf",
            "-revoke",
            "client.pem",
            "-keyfile",
            "client-ca.key",
            "-cert",
            "client-ca.pem",
        ],
    );
    write_revocation_list(dir.path(), "client");
    let line = server.sighup_and_wait_for("SIGHUP");
    assert!(line.contains("reloaded the TLS certificate"), "{line}");

    // A new handshake with the revoked certificate fails (with TLS 1.3 the
    // refusal may show only at the first read) ...
    let error = handshake_refusal(server.http, &ca, (&cert, &key));
    assert!(error.to_lowercase().contains("revoked"), "{error}");
    // ... and the connection made before the revocation still works (a
    // revocation takes effect for new handshakes; disable the user to cut
    // its open connections).
    assert_eq!(http_get(&mut kept, "/healthz").0, 200);
    drop(kept);
    drop(server);

    // Without a list, the second CA's certificate is good.
    let server = start_tls_server(
        dir.path(),
        &[
            ("STARLING_TLS_CLIENT_AUTH", "required"),
            ("STARLING_TLS_CLIENT_CA_FILE", client_ca.as_str()),
        ],
    );
    let mut stream = tls_connect(server.http, &ca, Some((&other.0, &other.1))).unwrap();
    assert_eq!(http_get(&mut stream, "/healthz").0, 200);
}

/// Connects with a client certificate the server must refuse; returns the
/// refusal (with TLS 1.3 it may show only at the first read).
fn handshake_refusal(address: SocketAddr, ca: &Path, client: (&Path, &Path)) -> String {
    match tls_connect(address, ca, Some(client)) {
        Err(error) => error,
        Ok(mut stream) => {
            let _ = write!(stream, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut buffer = [0u8; 64];
            match stream.read(&mut buffer) {
                Err(error) => error.to_string(),
                Ok(read) => panic!("the refused client certificate could read {read} bytes"),
            }
        }
    }
}

#[test]
fn bench_over_tls_delivers_every_message() {
    let dir = tempfile::tempdir().unwrap();
    make_certificate(dir.path(), "server", "serverAuth");
    let server = start_tls_server(dir.path(), &[]);
    let ca = path(dir.path(), "server-ca.pem");
    let address = server.address.to_string();
    // 2 publishers × 1,000 messages over 4 channels, each channel read by
    // one of 2 subscribers, all over TLS.
    let summary = common::bench(&[
        "--server",
        &address,
        "--tls",
        "--tls-ca",
        &ca,
        "--publishers",
        "2",
        "--subscribers",
        "2",
        "--channels",
        "4",
        "--rate",
        "2000",
        "--duration-s",
        "1",
    ]);
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["tls"], true, "{summary}");
    assert_eq!(summary["acked"], 2000, "{summary}");
    assert_eq!(summary["delivered"], 2000, "{summary}");
    assert_eq!(summary["lost"], 0, "{summary}");

    // A CA that did not sign the server's certificate: refused, saying so.
    make_certificate(dir.path(), "other", "serverAuth");
    let other_ca = path(dir.path(), "other-ca.pem");
    let (ok, _, stderr) = common::run(
        &[
            "bench",
            "--server",
            &address,
            "--tls",
            "--tls-ca",
            &other_ca,
            "--duration-s",
            "1",
        ],
        &[],
    );
    assert!(!ok);
    assert!(stderr.contains("TLS handshake"), "{stderr}");
}

/// Sends a native `Hello` with an empty token on `stream` and returns the
/// answer, then (when welcomed) publishes to each of `channels` and returns
/// whether each was acknowledged.
fn native_hello_and_publish<S: Read + Write>(
    stream: &mut S,
    channels: &[&str],
) -> (Frame, Vec<bool>) {
    let mut input = Vec::new();
    let mut exchange = |stream: &mut S, request_id: u32, frame: Frame| {
        let mut out = BytesMut::new();
        Envelope { request_id, frame }.encode(&mut out);
        stream.write_all(&out).unwrap();
        stream.flush().unwrap();
        loop {
            if let Decoded::Complete { envelope, used } =
                decode(&input, &Limits::default()).unwrap()
            {
                input.drain(..used);
                return envelope.frame;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(n) if n > 0 => input.extend_from_slice(&chunk[..n]),
                other => panic!("the server closed before answering: {other:?}"),
            }
        }
    };
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        client_name: "cert-test".into(),
        token: String::new(),
    };
    let answer = exchange(stream, 1, hello);
    let mut acknowledged = Vec::new();
    if matches!(answer, Frame::Welcome { .. }) {
        for (index, channel) in channels.iter().enumerate() {
            let publish = starling_adapters::client::PublishRequest::new(
                *channel,
                starling_protocol::kind::MESSAGE,
                "by certificate",
            )
            .to_frame();
            let reply = exchange(stream, index as u32 + 2, publish);
            acknowledged.push(matches!(reply, Frame::PublishAck { .. }));
        }
    }
    (answer, acknowledged)
}

#[test]
fn client_certificates_sign_in_as_their_user() {
    let dir = tempfile::tempdir().unwrap();
    make_certificate(dir.path(), "server", "serverAuth");
    // alice and bob are users (bob disabled); mallory is not. Their CAs
    // together are the client CA file.
    for name in ["alice", "bob", "mallory"] {
        make_certificate(dir.path(), name, "clientAuth");
    }
    write_ca_bundle(dir.path(), "clients-ca.pem", &["alice", "bob", "mallory"]);
    let config = dir.path().join("starling.toml");
    std::fs::write(
        &config,
        format!(
            r##"
[engine]
data_dir = "{data}"
[native]
tls = true
[http]
tls = true
[mqtt]
tls = true
[tls]
cert_file = "{dir}/server.pem"
key_file = "{dir}/server.key"
client_auth = "required"
client_ca_file = "{dir}/clients-ca.pem"
client_cert_user = "cn"
[auth]
enabled = true
[[auth.roles]]
name = "member"
publish = ["team/#"]
subscribe = ["team/#"]
history = ["team/#"]
"##,
            data = dir.path().join("data").display(),
            dir = dir.path().display(),
        ),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();
    for user in ["alice", "bob"] {
        common::add_user(&config, user, "member", "a long enough password");
    }
    let (ok, out, err) = common::run(&["user", "disable", "bob", "--config", config_arg], &[]);
    assert!(ok, "{out}{err}");
    let server = Server::start_with(&dir.path().join("data"), &["--config", config_arg], &[]);
    let ca = dir.path().join("server-ca.pem");
    let client = |name: &str| {
        (
            dir.path().join(format!("{name}.pem")),
            dir.path().join(format!("{name}.key")),
        )
    };
    let connect = |address: SocketAddr, name: &str| {
        let (cert, key) = client(name);
        tls_connect(address, &ca, Some((cert.as_path(), key.as_path()))).unwrap()
    };

    // Native: alice's certificate signs her in with her roles, no token.
    let mut stream = connect(server.address, "alice");
    let (answer, acknowledged) = native_hello_and_publish(&mut stream, &["team/room", "general"]);
    assert!(matches!(answer, Frame::Welcome { .. }), "{answer:?}");
    assert_eq!(
        acknowledged,
        [true, false],
        "team/# is allowed, general is not"
    );
    // A certificate of a disabled user, or of nobody known: no identity.
    for (name, reason) in [("bob", "disabled"), ("mallory", "not a user")] {
        let mut stream = connect(server.address, name);
        let (answer, _) = native_hello_and_publish(&mut stream, &[]);
        let Frame::Error { message, .. } = &answer else {
            panic!("{name} was let in: {answer:?}");
        };
        assert!(message.contains(reason), "{name}: {message}");
    }

    // WebSocket chat (WSS): `connect` without a token is alice.
    let chat_connect = |name: &str| {
        let stream = connect(server.http, name);
        let (mut socket, _) =
            tungstenite::client(format!("wss://localhost:{}/ws", server.http.port()), stream)
                .expect("WebSocket handshake over TLS");
        socket
            .send(tungstenite::Message::text(
                r#"{"type":"connect","id":1,"token":""}"#,
            ))
            .unwrap();
        socket.read().unwrap().into_text().unwrap().to_string()
    };
    let reply = chat_connect("alice");
    assert!(reply.contains("\"user\":\"alice\""), "{reply}");
    let reply = chat_connect("mallory");
    assert!(reply.contains("\"error\""), "{reply}");

    // MQTT over TLS with mosquitto, no user name or password.
    let mosquitto_pub = |name: &str| {
        let (cert, key) = client(name);
        Command::new("mosquitto_pub")
            .args([
                "--cafile",
                ca.to_str().unwrap(),
                "--cert",
                cert.to_str().unwrap(),
            ])
            .args(["--key", key.to_str().unwrap(), "-h", "127.0.0.1"])
            .args(["-p", &server.mqtt.port().to_string(), "-t", "team/mqtt"])
            .args(["-m", "by certificate", "-q", "1"])
            .output()
            .unwrap()
    };
    let output = mosquitto_pub("alice");
    assert!(output.status.success(), "{output:?}");
    let output = mosquitto_pub("mallory");
    assert!(!output.status.success(), "{output:?}");

    // The bench presents a certificate too.
    let (cert, key) = client("alice");
    let summary = common::bench(&[
        "--server",
        &server.address.to_string(),
        "--tls",
        "--tls-ca",
        ca.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--prefix",
        "team/bench",
        "--publishers",
        "1",
        "--subscribers",
        "1",
        "--rate",
        "100",
        "--duration-s",
        "1",
    ]);
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["delivered"], 100, "{summary}");
}
