//! The server configuration: embedded defaults, then a TOML file, then
//! environment variables (`STARLING_<SECTION>_<KEY>`), each overriding the
//! one before.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use starling_broker::EngineConfig;

/// Prefix of environment variables that override single settings.
pub const ENV_PREFIX: &str = "STARLING_";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub engine: EngineConfig,
    pub native: NativeConfig,
    pub http: HttpConfig,
    pub mqtt: MqttConfig,
    pub tls: TlsConfig,
    pub auth: starling_broker::security::AuthConfig,
    pub log: LogConfig,
}

/// Certificates for the listeners that set `tls = true` (docs/SECURITY.md).
/// Empty paths are unset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM: the server certificate, then its intermediates.
    pub cert_file: String,
    /// PEM: its private key.
    pub key_file: String,
    /// PEM: CA certificates client certificates must chain to.
    pub client_ca_file: String,
    /// PEM: revocation lists (CRLs) of those CAs; reread on SIGHUP.
    pub client_crl_file: String,
    /// `none`, `optional` or `required`.
    pub client_auth: starling_broker::ClientAuth,
    /// `none` or `cn`: a client that gives no token signs in as the user
    /// its verified certificate's subject CN names.
    pub client_cert_user: starling_broker::ClientCertUser,
}

impl TlsConfig {
    /// The files, when a certificate and key are configured.
    pub fn files(&self) -> Result<starling_broker::TlsFiles> {
        if self.cert_file.is_empty() || self.key_file.is_empty() {
            bail!(
                "a listener has tls = true but [tls] cert_file and key_file are not both set                  (STARLING_TLS_CERT_FILE, STARLING_TLS_KEY_FILE): give the PEM files of the                  server certificate and its key"
            );
        }
        Ok(starling_broker::TlsFiles {
            cert_file: self.cert_file.clone().into(),
            key_file: self.key_file.clone().into(),
            client_ca_file: (!self.client_ca_file.is_empty())
                .then(|| self.client_ca_file.clone().into()),
            client_crl_file: (!self.client_crl_file.is_empty())
                .then(|| self.client_crl_file.clone().into()),
            client_auth: self.client_auth,
            client_cert_user: self.client_cert_user,
        })
    }
}

/// The MQTT 3.1.1/5 listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Where to listen. Loopback by default; any other address needs
    /// authentication to be configured.
    pub address: SocketAddr,
    /// Serve MQTT over TLS only (the certificate is in [tls]); 8883 is the
    /// usual port for it.
    pub tls: bool,
    /// When not empty, only clients from these networks (CIDRs) may
    /// connect; others are closed at once.
    pub allow_from: Vec<String>,
    /// Largest packet a client may send (the v5 Maximum Packet Size).
    pub packet_bytes_max: u32,
    /// Seconds between `$SYS/broker/…` updates (0 turns them off).
    pub sys_interval_s: u64,
    /// MQTT topic filters (e.g. "sensors/#") whose QoS 0 messages skip the
    /// log: delivered live only, at once, in no history and to no offline
    /// session. Empty by default: every MQTT message is in the log.
    pub live_only_qos0: Vec<String>,
}

impl Default for MqttConfig {
    fn default() -> MqttConfig {
        MqttConfig {
            address: "127.0.0.1:1883".parse().expect("valid address"),
            tls: false,
            allow_from: Vec::new(),
            packet_bytes_max: starling_protocol::mqtt::PACKET_BYTES_MAX_DEFAULT,
            sys_interval_s: 10,
            live_only_qos0: Vec::new(),
        }
    }
}

/// The HTTP listener: the web client, the JSON API, the chat WebSocket,
/// health and metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Where to listen. Loopback by default; any other address needs
    /// authentication to be configured.
    pub address: SocketAddr,
    /// Serve HTTPS and WSS only (the certificate is in [tls]).
    pub tls: bool,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed: from them, the
    /// client is the last address in the header that is not a trusted
    /// proxy. From anyone else the header is ignored.
    pub trusted_proxies: Vec<String>,
    /// Web origins (`https://chat.example.com`, or `*` for any) whose pages
    /// may open WebSockets (`/ws`, `/mqtt`) besides the server's own: a
    /// browser sends `Origin`, and a page of another site must not act as
    /// the signed-in user. Clients that send no `Origin` are not browsers
    /// and are not affected.
    pub allowed_origins: Vec<String>,
    /// When not empty, only clients from these networks (CIDRs) may
    /// connect; others are closed at once.
    pub allow_from: Vec<String>,
    /// Largest request head (request line and headers).
    pub header_bytes_max: usize,
    /// Most header fields in one request.
    pub headers_max: usize,
    /// Largest request body.
    pub body_bytes_max: usize,
    /// Largest WebSocket message (and frame) a client may send.
    pub websocket_message_bytes_max: usize,
    /// How long a started request may take to arrive (then 408).
    pub request_read_timeout_ms: u64,
    /// How long an idle keep-alive connection stays open.
    pub idle_timeout_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        let http = starling_adapters::http::request::HttpLimits::default();
        let ws = starling_adapters::ws::WsLimits::default();
        HttpConfig {
            address: "127.0.0.1:8080".parse().expect("valid address"),
            tls: false,
            allow_from: Vec::new(),
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
            header_bytes_max: http.header_bytes_max,
            headers_max: http.headers_max,
            body_bytes_max: http.body_bytes_max,
            websocket_message_bytes_max: ws.message_bytes_max,
            request_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
        }
    }
}

/// The native binary protocol listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NativeConfig {
    /// Where to listen. Loopback by default; any other address needs
    /// authentication to be configured.
    pub address: SocketAddr,
    /// Serve the native protocol over TLS only (the certificate is in [tls]).
    pub tls: bool,
    /// When not empty, only clients from these networks (CIDRs) may
    /// connect; others are closed at once.
    pub allow_from: Vec<String>,
    /// Largest frame a client may send.
    pub frame_bytes_max: u32,
}

impl Default for NativeConfig {
    fn default() -> NativeConfig {
        NativeConfig {
            address: "127.0.0.1:7400".parse().expect("valid address"),
            tls: false,
            allow_from: Vec::new(),
            frame_bytes_max: starling_protocol::FRAME_BYTES_MAX_DEFAULT,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// error, warn, info, debug or trace.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            level: "info".to_string(),
        }
    }
}

impl Config {
    /// The embedded defaults as a TOML document.
    pub fn default_toml() -> String {
        let body = toml::to_string_pretty(&Config::default()).expect("the defaults serialize");
        format!(
            "# Starling configuration: the embedded defaults.\n\
             # Any setting can also be set with an environment variable\n\
             # STARLING_<SECTION>_<KEY>, e.g. STARLING_ENGINE_DURABILITY=interval.\n\
             # durability: \"fsync\" (default: fdatasync before every ack, group commit),\n\
             # \"interval\" (fdatasync every interval_ms; acks are not durable),\n\
             # \"none\" (never fdatasync; acks are not durable).\n\n{body}"
        )
    }

    /// Defaults, overridden by `file` (if given), overridden by the
    /// environment variables in `environment`.
    pub fn load(
        file: Option<&Path>,
        environment: impl Iterator<Item = (String, String)>,
    ) -> Result<Config> {
        let mut value = toml::Value::try_from(Config::default()).expect("the defaults serialize");
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!("cannot read the configuration file {}", path.display())
            })?;
            let overrides: toml::Value = toml::from_str(&text).with_context(|| {
                format!(
                    "the configuration file {} is not valid TOML",
                    path.display()
                )
            })?;
            merge(&mut value, overrides);
        }
        for (name, text) in environment {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let Some((section, key)) = rest.split_once('_') else {
                continue;
            };
            let table = value.as_table_mut().expect("the config is a table");
            let Some(section_value) = table.get_mut(section).and_then(|s| s.as_table_mut()) else {
                bail!("environment variable {name}: there is no configuration section [{section}]; run `starling config default` to see them");
            };
            let Some(current) = section_value.get(key) else {
                bail!("environment variable {name}: section [{section}] has no setting `{key}`; run `starling config default` to see them");
            };
            let parsed = parse_like(current, &text)
                .with_context(|| format!("environment variable {name}={text:?}"))?;
            section_value.insert(key.to_string(), parsed);
        }
        let config: Config = value
            .try_into()
            .context("the configuration is not valid; compare it with `starling config default`")?;
        // A zero interval makes every shard's loop wake at once, for good.
        for (name, value, least) in [
            (
                "engine.retention_check_ms",
                config.engine.retention_check_ms,
                10,
            ),
            (
                "engine.session_check_ms",
                config.engine.session_check_ms,
                10,
            ),
            ("engine.interval_ms", config.engine.interval_ms, 1),
        ] {
            if value < least {
                let variable = name.replace('.', "_").to_uppercase();
                bail!("{name} is {value}; it must be at least {least} ms (STARLING_{variable})");
            }
        }
        let idle_ms = config.auth.session_idle_timeout_s.saturating_mul(1000);
        if config.auth.enabled
            && idle_ms > 0
            && config.engine.session_check_ms.saturating_mul(2) > idle_ms
        {
            bail!(
                "engine.session_check_ms ({} ms) must be at most half auth.session_idle_timeout_s ({} s): \
                 an open connection counts as use of its session only at these checks; \
                 set STARLING_ENGINE_SESSION_CHECK_MS to at most half the idle timeout",
                config.engine.session_check_ms,
                config.auth.session_idle_timeout_s
            );
        }
        for origin in &config.http.allowed_origins {
            if let Err(error) = starling_adapters::http::server::check_origin_setting(origin) {
                bail!("http.allowed_origins (STARLING_HTTP_ALLOWED_ORIGINS): {error}");
            }
        }
        for filter in &config.mqtt.live_only_qos0 {
            if let Err(error) = starling_broker::pattern::validate(filter) {
                bail!(
                    "mqtt.live_only_qos0 (STARLING_MQTT_LIVE_ONLY_QOS0): {filter:?} is not an MQTT \
                     topic filter ({error}); give filters such as \"sensors/#\" or \"+/status\""
                );
            }
        }
        Ok(config)
    }
}

/// Parses an environment value as the same TOML type as the current value.
fn parse_like(current: &toml::Value, text: &str) -> Result<toml::Value> {
    Ok(match current {
        toml::Value::String(_) => toml::Value::String(text.to_string()),
        toml::Value::Integer(_) => toml::Value::Integer(
            text.parse()
                .with_context(|| format!("expected an integer, got {text:?}"))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(
            text.parse()
                .with_context(|| format!("expected true or false, got {text:?}"))?,
        ),
        _ => {
            let document: toml::Value = toml::from_str(&format!("v = {text}"))
                .with_context(|| format!("expected a TOML value, got {text:?}"))?;
            document.get("v").cloned().expect("parsed above")
        }
    })
}

fn merge(base: &mut toml::Value, overrides: toml::Value) {
    match (base, overrides) {
        (toml::Value::Table(base), toml::Value::Table(overrides)) => {
            for (key, value) in overrides {
                match base.get_mut(&key) {
                    Some(existing) if existing.is_table() && value.is_table() => {
                        merge(existing, value)
                    }
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overrides) => *base = overrides,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_broker::Durability;

    #[test]
    fn default_toml_parses_back_to_the_defaults() {
        let text = Config::default_toml();
        let parsed: Config = toml::from_str(&text).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn file_then_environment_override() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("starling.toml");
        std::fs::write(&path, "[engine]\ndurability = \"none\"\nshards = 3\n").unwrap();
        let environment = vec![
            ("STARLING_ENGINE_SHARDS".to_string(), "5".to_string()),
            (
                "STARLING_NATIVE_ADDRESS".to_string(),
                "127.0.0.1:9999".to_string(),
            ),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let config = Config::load(Some(&path), environment.into_iter()).unwrap();
        assert_eq!(config.engine.durability, Durability::None);
        assert_eq!(config.engine.shards, 5);
        assert_eq!(config.native.address.port(), 9999);
    }

    #[test]
    fn session_checks_must_come_more_often_than_the_idle_timeout() {
        let environment = |idle: &str| {
            vec![
                ("STARLING_AUTH_ENABLED".to_string(), "true".to_string()),
                (
                    "STARLING_AUTH_SESSION_IDLE_TIMEOUT_S".to_string(),
                    idle.to_string(),
                ),
            ]
            .into_iter()
        };
        let error = Config::load(None, environment("30")).unwrap_err();
        assert!(
            format!("{error:#}").contains("engine.session_check_ms"),
            "{error:#}"
        );
        assert!(Config::load(None, environment("3600")).is_ok());
    }

    #[test]
    fn zero_intervals_are_refused() {
        for name in [
            "STARLING_ENGINE_RETENTION_CHECK_MS",
            "STARLING_ENGINE_SESSION_CHECK_MS",
            "STARLING_ENGINE_INTERVAL_MS",
        ] {
            let environment = vec![(name.to_string(), "0".to_string())].into_iter();
            let error = Config::load(None, environment).unwrap_err();
            assert!(format!("{error:#}").contains(name), "{error:#}");
        }
    }

    #[test]
    fn unknown_settings_are_refused() {
        let environment = vec![("STARLING_ENGINE_NOPE".to_string(), "1".to_string())];
        let error = Config::load(None, environment.into_iter()).unwrap_err();
        assert!(
            format!("{error:#}").contains("no setting `nope`"),
            "{error:#}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[engine]\ndurabilty = \"none\"\n").unwrap();
        assert!(Config::load(Some(&path), std::iter::empty()).is_err());
    }
}
