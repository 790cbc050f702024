//! `starling`: the server and its command-line tools.
//!
//! ```text
//! starling serve [--config FILE]          run the server (embedded defaults without a file)
//! starling config default                 print the defaults as TOML
//! starling pub CHANNEL [MESSAGE...]       publish (stdin lines without MESSAGE)
//! starling sub CHANNEL [--from S|--last N] print deliveries
//! starling history CHANNEL [--before S|--from S] [--limit N]
//! starling log verify DIR | log inspect DIR   offline checks of a data directory
//! starling audit keygen|verify|export     the audit log's key, checks and JSON-lines export
//! starling bench [...]                    open-loop load generator
//! ```

mod audit;
mod bench;
mod bench_mqtt;
mod bench_tls;
mod bench_ws;
mod config;
mod config_audit;
mod logger;
mod users;

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use starling_adapters::chat::ChatService;
use starling_adapters::client::{Client, PublishRequest};
use starling_adapters::http::request::HttpLimits;
use starling_adapters::http::security::SecurityApi;
use starling_adapters::http::server::{HttpProtocol, HttpTimeouts};
use starling_adapters::mqtt::MqttProtocol;
use starling_adapters::native::NativeProtocol;
use starling_adapters::sys_topics::{SysSource, SysTopics};
use starling_adapters::ws::WsLimits;
use starling_broker::security::{AuditWriter, SecurityAuthorizer, SecurityService};
use starling_broker::{
    auth::is_loopback, Authorizer, Engine, Listener, LoopbackAuthorizer, TlsAcceptor,
};
use starling_protocol::mqtt::MqttLimits;
use starling_protocol::{kind, HistoryQuery, Message, SubscribeStart};
use starling_storage::audit::{AuditEntry, AuditKind};

use crate::config::Config;

/// mimalloc instead of glibc's allocator: the hot path allocates small,
/// short-lived buffers on one thread and frees some on another, where glibc's
/// arenas spend a quarter of the server's CPU (measured with perf; see
/// docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The shards' idle-memory hook (`starling_broker::set_idle_memory_hook`):
/// mimalloc returns freed pages to the operating system only after a delay,
/// and only when the thread that freed them calls into it again, which an
/// idle shard does not; without this, the buffers a burst grew stay resident
/// after the shard frees them (docs/BENCHMARKS.md, session 5).
fn release_freed_memory() {
    // SAFETY: mi_collect takes no pointers; it frees and decommits the
    // calling thread's free pages, which any thread may ask for at any time.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Turns transparent huge pages off for the server process. mimalloc asks
/// for them (`madvise(MADV_HUGEPAGE)` on its arena), and the kernel then
/// backs a 2 MiB region with memory at the first touch of any of its bytes:
/// the server held ~10 MB more at rest, and 10,000 idle MQTT connections
/// ~0.3–1.2 KB more each, in 2 MiB steps, than the bytes they use
/// (docs/BENCHMARKS.md, "An idle MQTT connection under 1 KB"). The kernel
/// checks the flag at each page fault, so memory touched from here on is
/// mapped in ordinary pages.
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes one integer argument and sets a flag
    // of this process; no memory is passed.
    let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1 as libc::c_ulong, 0, 0, 0) };
    if result != 0 {
        log::warn!(
            "PR_SET_THP_DISABLE failed ({}): memory may be mapped in transparent huge pages",
            std::io::Error::last_os_error()
        );
    }
}

#[derive(Parser)]
#[command(
    name = "starling",
    version,
    about = "Starling: a durable messaging engine for office chat"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ServerArgs {
    /// Address of the server's native listener.
    #[arg(long, default_value = "127.0.0.1:7400", env = "STARLING_SERVER")]
    server: String,
    /// Session token (on an unauthenticated loopback server: the user name).
    #[arg(long, default_value = "", env = "STARLING_TOKEN")]
    token: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// A TOML configuration file; settings it lacks keep their defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Publish messages to a channel (arguments, or one per line of stdin).
    Pub {
        #[command(flatten)]
        server: ServerArgs,
        channel: String,
        messages: Vec<String>,
        /// Idempotency key: a retry with the same id is stored once.
        #[arg(long)]
        id: Option<String>,
        /// Deliver live only; do not store.
        #[arg(long)]
        ephemeral: bool,
    },
    /// Subscribe to a channel and print what arrives.
    Sub {
        #[command(flatten)]
        server: ServerArgs,
        channel: String,
        /// Start at this seq (catch up, then live).
        #[arg(long, conflicts_with = "last")]
        from: Option<u64>,
        /// Start with the last N messages, then live.
        #[arg(long)]
        last: Option<u64>,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Exit when nothing arrives for this many seconds.
        #[arg(long)]
        idle_exit_s: Option<u64>,
    },
    /// Print a page of a channel's history.
    History {
        #[command(flatten)]
        server: ServerArgs,
        channel: String,
        #[arg(long, conflicts_with = "from")]
        before: Option<u64>,
        #[arg(long)]
        from: Option<u64>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Offline tools for a data directory (the server must not be running).
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// The audit log: signing key, offline verification, JSON-lines export.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Open-loop load generator: publishers, subscribers, latency, loss and order checks.
    Bench(Box<bench::BenchArgs>),
    /// Manage users on a stopped server's data directory (a running server
    /// takes the same changes through its admin API).
    User {
        #[command(subcommand)]
        command: users::UserCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the embedded defaults as a TOML file.
    Default,
}

#[derive(Subcommand)]
enum LogCommand {
    /// Check every batch checksum and structure; exit 1 on corruption.
    /// With --key-file, also authenticate encrypted batches and check their
    /// records; without it they get the checksum and header checks only.
    Verify {
        data_dir: PathBuf,
        /// The encryption key file ([engine] encryption_key_file).
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Print records in log order (encrypted ones need --key-file).
    Inspect {
        data_dir: PathBuf,
        /// The encryption key file ([engine] encryption_key_file).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Only this channel.
        #[arg(long)]
        channel: Option<String>,
        /// Print at most this many records.
        #[arg(long)]
        limit: Option<u64>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config.as_deref()),
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{}", Config::default_toml());
            Ok(())
        }
        Command::Pub {
            server,
            channel,
            messages,
            id,
            ephemeral,
        } => publish(&server, &channel, messages, id, ephemeral),
        Command::Sub {
            server,
            channel,
            from,
            last,
            count,
            idle_exit_s,
        } => subscribe(&server, &channel, from, last, count, idle_exit_s),
        Command::History {
            server,
            channel,
            before,
            from,
            limit,
        } => history(&server, &channel, before, from, limit),
        Command::Log { command } => match command {
            LogCommand::Verify { data_dir, key_file } => log_verify(&data_dir, key_file.as_deref()),
            LogCommand::Inspect {
                data_dir,
                key_file,
                channel,
                limit,
            } => log_inspect(&data_dir, key_file.as_deref(), channel.as_deref(), limit),
        },
        Command::Audit { command } => audit::run(command),
        Command::Bench(args) => bench::run(*args),
        Command::User { command } => users::run(command),
    };
    if let Err(error) = result {
        eprintln!("starling: error: {}", describe(&error));
        std::process::exit(1);
    }
}

/// The error and its causes on one line, leaving out a cause whose text the
/// message before it already contains.
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn serve(config_file: Option<&Path>) -> Result<()> {
    let started = std::time::Instant::now();
    let config = Config::load(config_file, std::env::vars())?;
    logger::init(&config.log.level)?;
    disable_transparent_huge_pages();
    starling_broker::set_idle_memory_hook(release_freed_memory);
    for (setting, address) in [
        ("native.address", config.native.address),
        ("http.address", config.http.address),
        ("mqtt.address", config.mqtt.address),
    ] {
        if !is_loopback(&address) && !config.auth.enabled {
            bail!(
                "{setting} {address} is not a loopback address, and authentication is not configured; \
                 Starling serves other addresses only with authentication (see docs/SECURITY.md), \
                 or listen on 127.0.0.1"
            );
        }
    }
    let native = Arc::new(NativeProtocol::new(
        "starling",
        config.native.frame_bytes_max,
    ));
    let http_limits = HttpLimits {
        header_bytes_max: config.http.header_bytes_max,
        headers_max: config.http.headers_max,
        body_bytes_max: config.http.body_bytes_max,
        ..HttpLimits::default()
    };
    let ws_limits = WsLimits {
        message_bytes_max: config.http.websocket_message_bytes_max,
        frame_bytes_max: config.http.websocket_message_bytes_max,
    };
    let timeouts = HttpTimeouts {
        request_read: Duration::from_millis(config.http.request_read_timeout_ms),
        idle: Duration::from_millis(config.http.idle_timeout_ms),
    };
    let mqtt = Arc::new(
        MqttProtocol::new(MqttLimits {
            packet_bytes_max: config.mqtt.packet_bytes_max,
        })
        .with_live_only_qos0(config.mqtt.live_only_qos0.clone())
        .map_err(|error| {
            anyhow::anyhow!("{error}: give MQTT topic filters such as \"sensors/#\"")
        })?,
    );
    // MQTT over WebSocket (subprotocol `mqtt`) at /mqtt on the HTTP port.
    let http = Arc::new(
        HttpProtocol::new(http_limits, ws_limits, timeouts)
            .with_tunnel(
                "/mqtt",
                "mqtt",
                mqtt.clone(),
                starling_broker::security::roles::parse_networks(
                    "mqtt.allow_from",
                    &config.mqtt.allow_from,
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            )
            .with_trusted_proxies(
                starling_broker::security::roles::parse_networks(
                    "http.trusted_proxies",
                    &config.http.trusted_proxies,
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            )
            .with_allowed_origins(config.http.allowed_origins.clone()),
    );
    let chat_slot = http.chat_slot();
    let security_slot = http.security_slot();
    let ready = http.ready_flag();
    let security = if config.auth.enabled {
        Some(
            SecurityAuthorizer::new(&config.auth)
                .context("the [auth] configuration is not valid")?,
        )
    } else {
        None
    };
    let authorizer: Arc<dyn Authorizer> = match &security {
        Some(security) => security.clone(),
        None => Arc::new(LoopbackAuthorizer),
    };
    if config.mqtt.tls && !config.http.tls {
        log::warn!(
            "mqtt.tls is on but http.tls is off: MQTT over WebSocket at /mqtt on the HTTP port \
             ({}) is served without TLS; turn http.tls on too",
            config.http.address
        );
    }
    let tls_asked = !config.tls.cert_file.is_empty()
        || config.tls.client_auth != starling_broker::ClientAuth::None;
    if tls_asked && !(config.native.tls || config.http.tls || config.mqtt.tls) {
        log::warn!(
            "[tls] is configured but no listener has tls = true: every listener serves plain \
             text; set native.tls, http.tls or mqtt.tls"
        );
    }
    // One TLS configuration, shared by every listener that asks for TLS.
    let tls = if config.native.tls || config.http.tls || config.mqtt.tls {
        let files = config.tls.files()?;
        Some(TlsAcceptor::new(files).context("cannot set up TLS")?)
    } else {
        None
    };
    let tls_for = |on: bool| tls.clone().filter(|_| on);
    let networks = |setting: &str, list: &[String]| {
        starling_broker::security::roles::parse_networks(setting, list)
            .map_err(|e| anyhow::anyhow!("{e}"))
    };
    let listeners = vec![
        Listener {
            address: config.native.address,
            protocol: native,
            tls: tls_for(config.native.tls),
            allow_from: networks("native.allow_from", &config.native.allow_from)?,
        },
        Listener {
            address: config.http.address,
            protocol: http,
            tls: tls_for(config.http.tls),
            allow_from: networks("http.allow_from", &config.http.allow_from)?,
        },
        Listener {
            address: config.mqtt.address,
            protocol: mqtt.clone(),
            tls: tls_for(config.mqtt.tls),
            allow_from: networks("mqtt.allow_from", &config.mqtt.allow_from)?,
        },
    ];
    // Before the listeners open: a SIGHUP (whose default action ends the
    // process) sent as soon as the server is seen listening must reload,
    // not kill it. The flag is acted on in the loop at the end.
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .context("cannot install the SIGHUP handler")?;
    // Likewise SIGINT and SIGTERM: one that comes while the engine starts
    // (users loading, wills scheduled) stops it cleanly once it has, rather
    // than ending the process with acknowledged writes unsynced.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .context("cannot install signal handlers")?;
    }
    let engine = Engine::start(config.engine.clone(), authorizer, listeners)
        .context("cannot start the engine")?;
    let mut audit_to_close = None;
    if let Some(authorizer) = security {
        let client = engine.connect(SecurityService::principal());
        let audit = audit_writer(&config)?;
        if let Some(audit) = &audit {
            config_audit::record_start(audit, &config)?;
        }
        audit_to_close = audit.clone();
        let service = SecurityService::start(
            authorizer,
            config.auth.clone(),
            client,
            Some(engine.notifier()),
            audit,
        )
        .context("cannot load the users and sessions")?;
        let users = service.list_users().len();
        let _ = security_slot.set(SecurityApi::start(Arc::new(service), engine.notifier()));
        log::info!(
            "authentication is on: {users} users, {} roles",
            config.auth.roles.len()
        );
        if users == 0 {
            log::warn!("there are no users yet: add one with `starling user add NAME --role ROLE` while the server is stopped");
        }
    }
    let _ = chat_slot.set(ChatService::start(&engine, "starling"));
    // MQTT's delayed wills and the end of expired sessions.
    let mqtt_keeper = mqtt.start_keeper(&engine);
    let sys_topics = (config.mqtt.sys_interval_s > 0).then(|| {
        mqtt.serve_sys_values(SysSource::new(&engine, started));
        SysTopics::start(
            &engine,
            Duration::from_secs(config.mqtt.sys_interval_s),
            started,
        )
    });
    ready.store(true, Ordering::Relaxed);
    let routing = engine.routing();
    for (name, address) in engine.local_addresses() {
        log::info!("listening: protocol={name} address={address}");
    }
    log::info!(
        "serving: shards={} partitions={} data_dir={} durability={:?}",
        routing.shards,
        routing.partitions,
        config.engine.data_dir.display(),
        config.engine.durability
    );
    let mut running_keys = key_settings(&config);
    let mut failed_shard = None;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        failed_shard = engine.failed_shard();
        if failed_shard.is_some() {
            // A shard's thread ended (a panic): the server cannot serve its
            // channels, so it stops rather than run on half working; a
            // supervisor starts it again, from the log.
            break;
        }
        if reload.swap(false, Ordering::Relaxed) {
            let outcome = reload_tls(tls.as_deref());
            let reloaded = Config::load(config_file, std::env::vars());
            let keys_outcome = match &reloaded {
                Ok(reloaded) => reload_keys(&engine, &mut running_keys, reloaded),
                Err(error) => {
                    log::error!("SIGHUP: the configuration cannot be read, the encryption key ring stays as it is: {error:#}");
                    None
                }
            };
            if let Some(audit) = &audit_to_close {
                let entries = [("tls", Some(outcome)), ("encryption_key", keys_outcome)];
                for (target, outcome) in entries {
                    let Some(outcome) = outcome else { continue };
                    let entry = AuditEntry::new(
                        AuditKind::ConfigurationChanged,
                        "operator",
                        "SIGHUP",
                        target,
                        outcome,
                    );
                    if let Err(error) = audit.record(entry) {
                        log::error!("the SIGHUP reload of {target} could not be audited: {error}");
                    }
                }
                // The key settings in effect are not pending changes.
                let keys_applied = reloaded
                    .as_ref()
                    .is_ok_and(|reloaded| key_settings(reloaded) == running_keys);
                let applied: &[&str] = if keys_applied { &KEY_SETTINGS } else { &[] };
                config_audit::record_reload(audit, &config, reloaded, applied);
            }
        }
    }
    log::info!("shutting down: writing and syncing what is pending");
    drop(sys_topics);
    drop(mqtt_keeper);
    let stopped = engine.shutdown();
    if let Some(audit) = audit_to_close {
        audit.close();
    }
    if let Some(shard) = failed_shard {
        anyhow::bail!(
            "shard {shard} stopped after a panic (printed above), so the server stopped: start it \
             again (everything acknowledged is in the log) and report the panic"
        );
    }
    stopped.context("the server stopped, but not cleanly")?;
    log::info!("stopped");
    Ok(())
}

/// The settings SIGHUP applies to the encryption keys.
const KEY_SETTINGS: [&str; 2] = ["engine.encryption_key_file", "engine.encryption_key_id"];

/// `encryption_key_file` and `encryption_key_id` of `config`.
fn key_settings(config: &Config) -> (String, u16) {
    (
        config.engine.encryption_key_file.clone(),
        config.engine.encryption_key_id,
    )
}

/// SIGHUP: the encryption key ring of the reloaded configuration
/// (`[engine] encryption_key_file`, `encryption_key_id`) replaces the running
/// one if it holds every key the running one holds; `running` (the key
/// settings in effect) then records the new settings. Returns the outcome
/// for the audit log (key ids only), `None` when neither the running nor the
/// reloaded configuration has a key file or the ring is unchanged.
fn reload_keys(engine: &Engine, running: &mut (String, u16), reloaded: &Config) -> Option<String> {
    let new = &reloaded.engine;
    let (old_file, old_id) = running.clone();
    if old_file.is_empty() && new.encryption_key_file.is_empty() {
        return None;
    }
    let id = |id: u16| match id {
        0 => "none (plain)".to_string(),
        id => id.to_string(),
    };
    let outcome = match engine.rotate_keys(new) {
        Ok(rotation) if !rotation.changed => {
            // Nothing to rotate: not a configuration change to audit.
            log::info!(
                "SIGHUP: encryption at rest: the key ring is unchanged (key id {})",
                id(rotation.new_key_id.unwrap_or(0))
            );
            *running = key_settings(reloaded);
            return None;
        }
        Ok(rotation) => {
            log::info!(
                "SIGHUP: encryption at rest: new batches sealed with key id {} (was {}); key ids {:?} from {}",
                id(rotation.new_key_id.unwrap_or(0)),
                id(rotation.old_key_id.unwrap_or(0)),
                rotation.key_ids,
                new.encryption_key_file
            );
            *running = key_settings(reloaded);
            serde_json::json!({
                "applied": true,
                "old_key_id": rotation.old_key_id,
                "new_key_id": rotation.new_key_id,
                "key_ids": rotation.key_ids,
                "key_file": new.encryption_key_file,
            })
        }
        Err(error) => {
            log::error!(
                "SIGHUP: encryption key rotation refused, the running key ring stays in use (new batches sealed with key id {}): {error}",
                id(old_id)
            );
            serde_json::json!({
                "applied": false,
                "old_key_id": (old_id != 0).then_some(old_id),
                "requested_key_id": (new.encryption_key_id != 0).then_some(new.encryption_key_id),
                "error": error.to_string(),
            })
        }
    };
    Some(outcome.to_string())
}

/// The audit log writer when `[auth] audit_key_file` is set.
fn audit_writer(config: &Config) -> Result<Option<Arc<AuditWriter>>> {
    if config.auth.audit_key_file.is_empty() {
        if config.auth.enabled {
            log::warn!("[auth] audit_key_file is not set: sign-ins and changes are not audited");
        }
        return Ok(None);
    }
    let dir = config.engine.data_dir.join("audit");
    AuditWriter::start(&dir, Path::new(&config.auth.audit_key_file))
        .map(Some)
        .context("cannot open the audit log")
}

/// SIGHUP: read the certificate and key again; new connections use them,
/// open ones keep theirs. Returns what happened, for the audit log.
fn reload_tls(tls: Option<&TlsAcceptor>) -> String {
    let Some(tls) = tls else {
        log::info!("SIGHUP: no listener uses TLS; nothing to reload");
        return "no TLS listener; nothing reloaded".into();
    };
    match tls.reload() {
        Ok(()) => {
            log::info!(
                "SIGHUP: reloaded the TLS certificate {} and key {}",
                tls.files().cert_file.display(),
                tls.files().key_file.display()
            );
            // The certificate is public; its digest tells the renewals apart.
            let certificate = std::fs::read(&tls.files().cert_file).unwrap_or_default();
            format!(
                "reloaded {} (sha256 {})",
                tls.files().cert_file.display(),
                config_audit::sha256_hex(&certificate)
            )
        }
        Err(error) => {
            log::error!("SIGHUP: TLS reload failed, the old certificate stays in use: {error}");
            format!("reload failed: {error}")
        }
    }
}

fn connect(server: &ServerArgs, name: &str) -> Result<Client> {
    let address: SocketAddr = server.server.parse().with_context(|| {
        format!(
            "--server {:?} is not an address like 127.0.0.1:7400",
            server.server
        )
    })?;
    Client::connect(address, name, &server.token)
        .with_context(|| format!("cannot connect to {address}; is `starling serve` running there?"))
}

fn publish(
    server: &ServerArgs,
    channel: &str,
    messages: Vec<String>,
    id: Option<String>,
    ephemeral: bool,
) -> Result<()> {
    let mut client = connect(server, "starling-pub")?;
    let mut send = |body: String, index: usize| -> Result<()> {
        let client_message_id = match &id {
            Some(id) if index == 0 => Bytes::from(id.clone()),
            Some(id) => Bytes::from(format!("{id}-{index}")),
            None => Bytes::new(),
        };
        let request = PublishRequest {
            ephemeral,
            client_message_id,
            ..PublishRequest::new(channel, kind::MESSAGE, body)
        };
        let ack = client.publish_with(request)?;
        println!(
            "seq={} offset={} durable={} duplicate={}",
            ack.seq, ack.offset, ack.durable, ack.duplicate
        );
        Ok(())
    };
    if messages.is_empty() {
        for (index, line) in std::io::stdin().lock().lines().enumerate() {
            send(line.context("cannot read stdin")?, index)?;
        }
    } else {
        for (index, message) in messages.into_iter().enumerate() {
            send(message, index)?;
        }
    }
    Ok(())
}

fn print_message(out: &mut impl Write, channel: &str, message: &Message) -> std::io::Result<()> {
    writeln!(
        out,
        "{channel}\t{}\t{}\t{}",
        message.seq,
        String::from_utf8_lossy(&message.sender),
        String::from_utf8_lossy(&message.body)
    )
}

fn subscribe(
    server: &ServerArgs,
    channel: &str,
    from: Option<u64>,
    last: Option<u64>,
    count: Option<u64>,
    idle_exit_s: Option<u64>,
) -> Result<()> {
    let mut client = connect(server, "starling-sub")?;
    let start = match (from, last) {
        (Some(seq), _) => SubscribeStart::FromSeq(seq),
        (None, Some(n)) => SubscribeStart::LastN(n),
        (None, None) => SubscribeStart::Live,
    };
    let head = client.subscribe(channel, start)?;
    eprintln!("subscribed to {channel:?} at head seq {head}");
    let mut received = 0u64;
    let stdout = std::io::stdout();
    let idle = idle_exit_s.map(Duration::from_secs);
    loop {
        if count.is_some_and(|count| received >= count) {
            return Ok(());
        }
        match client.next_delivery(idle.unwrap_or(Duration::from_secs(3600)))? {
            Some((channel, messages)) => {
                let mut out = stdout.lock();
                for message in &messages {
                    print_message(&mut out, &channel, message)?;
                    received += 1;
                    if count.is_some_and(|count| received >= count) {
                        break;
                    }
                }
                out.flush()?;
            }
            None if idle.is_some() => {
                // Asked for a count and idle before it: the caller is told.
                if let Some(count) = count.filter(|count| received < *count) {
                    bail!(
                        "received {received} of {count} messages: nothing arrived for {} s (--idle-exit-s)",
                        idle_exit_s.unwrap_or_default()
                    );
                }
                return Ok(());
            }
            None => {}
        }
    }
}

fn history(
    server: &ServerArgs,
    channel: &str,
    before: Option<u64>,
    from: Option<u64>,
    limit: u32,
) -> Result<()> {
    let mut client = connect(server, "starling-history")?;
    let query = match (before, from) {
        (Some(seq), _) => HistoryQuery::Before(seq),
        (None, Some(seq)) => HistoryQuery::From(seq),
        (None, None) => HistoryQuery::Last,
    };
    let page = client.history(channel, query, limit)?;
    let mut out = std::io::stdout().lock();
    for message in &page.messages {
        print_message(&mut out, channel, message)?;
    }
    eprintln!("head seq {}", page.head_seq);
    Ok(())
}

/// Partition directories of a data directory, in id order.
fn partition_dirs(data_dir: &Path) -> Result<Vec<PathBuf>> {
    let partitions = data_dir.join("partitions");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&partitions)
        .with_context(|| {
            format!(
                "cannot read {}; is {} a Starling data directory?",
                partitions.display(),
                data_dir.display()
            )
        })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_dir())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// What the shard journals say of each partition directory's unsynced
/// tail (none for a data directory without journals).
fn unsynced_tail_of(
    tails: &std::collections::HashMap<u32, starling_storage::UnsyncedTail>,
    dir: &Path,
) -> Option<starling_storage::UnsyncedTail> {
    let id = dir.file_name()?.to_str()?.parse::<u32>().ok()?;
    tails.get(&id).copied()
}

fn journal_tails(
    data_dir: &Path,
) -> Result<std::collections::HashMap<u32, starling_storage::UnsyncedTail>> {
    starling_storage::journal::unsynced_tails(data_dir)
        .with_context(|| format!("cannot read the shard journals of {}", data_dir.display()))
}

/// The key ring of `--key-file` (no current key: the tools only read).
fn key_ring(key_file: Option<&Path>) -> Result<Option<starling_storage::KeyRing>> {
    key_file
        .map(|path| starling_storage::KeyRing::load(path, None))
        .transpose()
        .map_err(Into::into)
}

fn log_verify(data_dir: &Path, key_file: Option<&Path>) -> Result<()> {
    let mut failed = false;
    let mut unauthenticated = 0;
    let mut out = std::io::stdout().lock();
    let tails = journal_tails(data_dir)?;
    let keys = key_ring(key_file)?;
    let dirs = partition_dirs(data_dir)?;
    if dirs.is_empty() {
        bail!(
            "{} holds no partitions: nothing to verify; give the data directory of a server that has run (engine.data_dir)",
            data_dir.join("partitions").display()
        );
    }
    for dir in dirs {
        let tail = unsynced_tail_of(&tails, &dir);
        match starling_storage::verify_partition_dir_keyed(&dir, tail, keys.as_ref()) {
            Ok(report) => {
                let tail = match &report.would_truncate {
                    Some((file, at, bytes)) => format!(
                        "; a torn tail of {bytes} bytes at byte {at} of {} would be truncated on start",
                        file.display()
                    ),
                    None => String::new(),
                };
                let sealed = match (report.encrypted_batches, report.unauthenticated_batches) {
                    (0, _) => String::new(),
                    (encrypted, 0) => format!(" ({encrypted} encrypted, authenticated)"),
                    (encrypted, skipped) => {
                        unauthenticated += skipped;
                        format!(
                            " ({encrypted} encrypted; {skipped} NOT authenticated: no --key-file, so only their checksums and headers were checked)"
                        )
                    }
                };
                writeln!(
                    out,
                    "{}: ok: {} segments, {} batches{sealed}, {} records, {} channels, {} bytes{tail}",
                    dir.display(),
                    report.segments,
                    report.batches,
                    report.records,
                    report.channels,
                    report.bytes
                )?;
            }
            Err(error) => {
                failed = true;
                writeln!(out, "{}: CORRUPT: {error}", dir.display())?;
            }
        }
    }
    if failed {
        bail!("corruption found; see the lines marked CORRUPT above");
    }
    if unauthenticated > 0 {
        writeln!(
            out,
            "could not authenticate {unauthenticated} encrypted batches: give the key file with --key-file to check them and their records"
        )?;
    }
    Ok(())
}

fn log_inspect(
    data_dir: &Path,
    key_file: Option<&Path>,
    channel: Option<&str>,
    limit: Option<u64>,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let mut printed = 0u64;
    let tails = journal_tails(data_dir)?;
    let keys = key_ring(key_file)?;
    for dir in partition_dirs(data_dir)? {
        let mut write_error = None;
        let report = starling_storage::inspect_partition_dir_keyed(
            &dir,
            unsynced_tail_of(&tails, &dir),
            keys.as_ref(),
            |record| {
                if write_error.is_some() || limit.is_some_and(|limit| printed >= limit) {
                    return;
                }
                if channel.is_some_and(|c| c.as_bytes() != &record.channel[..]) {
                    return;
                }
                printed += 1;
                let result = writeln!(
                out,
                "offset={} channel={} seq={} ts={} kind={} sender={} id={} relation={} body={:?}",
                record.offset,
                String::from_utf8_lossy(&record.channel),
                record.seq,
                record.timestamp_ms,
                record.kind,
                String::from_utf8_lossy(&record.sender),
                String::from_utf8_lossy(&record.client_message_id),
                record.relation,
                String::from_utf8_lossy(&record.body)
            );
                if let Err(error) = result {
                    write_error = Some(error);
                }
            },
        )
        .with_context(|| format!("cannot inspect {}", dir.display()))?;
        if report.unauthenticated_batches > 0 {
            eprintln!(
                "{}: {} encrypted batches not shown (and no record after the first of them): give the key file with --key-file",
                dir.display(),
                report.unauthenticated_batches
            );
        }
        if let Some(error) = write_error {
            if error.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(error.into());
        }
    }
    Ok(())
}
