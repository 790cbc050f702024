//! Configuration changes in the audit log (docs/SECURITY.md, "Audit log").
//!
//! At every start with an audit log, `starling serve` writes one
//! `configuration_changed` entry with the SHA-256 of the effective
//! configuration in its canonical form and, when the configuration the
//! previous start ran with differs, the names of the settings that changed.
//! The previous effective configuration is kept in the data directory
//! ([`EFFECTIVE_CONFIG_FILE`]), written only after the entry is durable, so
//! a crash between the two reports the change again rather than never.
//!
//! The canonical form is one `section.setting = value` line per setting,
//! sorted by name, values in TOML (arrays and tables inline, their keys
//! sorted too). The configuration holds no secret values, only the paths of
//! the files that hold keys; the digest covers those paths, never the
//! files' contents.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use starling_broker::security::AuditWriter;
use starling_storage::audit::{AuditEntry, AuditKind, DETAIL_BYTES_MAX};

use crate::config::Config;

/// The effective configuration of the last start, in the data directory.
pub const EFFECTIVE_CONFIG_FILE: &str = "effective-config.toml";

/// Every setting by its dotted name, its value in TOML.
fn settings(value: &toml::Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, value: &toml::Value, into: &mut BTreeMap<String, String>) {
        match value {
            toml::Value::Table(table) => {
                for (key, value) in table {
                    let name = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&name, value, into);
                }
            }
            leaf => {
                into.insert(prefix.to_owned(), leaf.to_string());
            }
        }
    }
    let mut into = BTreeMap::new();
    walk("", value, &mut into);
    into
}

/// The canonical form of `config` (see the module documentation).
pub fn canonical(config: &Config) -> String {
    let value = toml::Value::try_from(config).expect("the configuration serializes");
    settings(&value)
        .into_iter()
        .map(|(name, value)| format!("{name} = {value}\n"))
        .collect()
}

/// Hex SHA-256 of a canonical form.
pub fn digest(canonical: &str) -> String {
    sha256_hex(canonical.as_bytes())
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Names of the settings whose value differs between two canonical forms
/// (including settings only one of them has), sorted.
pub fn changed_settings(before: &str, after: &str) -> Result<Vec<String>> {
    let parse = |text: &str| -> Result<BTreeMap<String, String>> {
        Ok(settings(&toml::from_str::<toml::Value>(text)?))
    };
    let before = parse(before)?;
    let after = parse(after)?;
    let mut names: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|name| before.get(*name) != after.get(*name))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// The entry's detail: JSON with the digests and as many changed names as
/// fit in an entry (`more` counts the rest).
fn detail(
    digest: &str,
    previous: Option<&str>,
    changed: &[String],
    extra: serde_json::Value,
) -> String {
    let mut shown = changed.len();
    loop {
        let mut detail = serde_json::json!({
            "digest": digest,
            "previous_digest": previous,
            "changed": &changed[..shown],
        });
        if shown < changed.len() {
            detail["more"] = (changed.len() - shown).into();
        }
        if let (Some(detail), Some(extra)) = (detail.as_object_mut(), extra.as_object()) {
            detail.extend(extra.clone());
        }
        let text = detail.to_string();
        if text.len() <= DETAIL_BYTES_MAX || shown == 0 {
            return text;
        }
        shown -= 1;
    }
}

fn effective_file(config: &Config) -> PathBuf {
    config.engine.data_dir.join(EFFECTIVE_CONFIG_FILE)
}

/// Writes `text` to `path` so that a crash leaves the old file or the new
/// one, never a part.
fn write_durably(path: &Path, text: &str) -> std::io::Result<()> {
    let temporary = path.with_extension("toml.new");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// At start: audits the effective configuration (its digest, and what
/// changed since the previous start), then keeps it for the next start.
pub fn record_start(audit: &AuditWriter, config: &Config) -> Result<()> {
    let path = effective_file(config);
    let current = canonical(config);
    let previous = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    let changed = match &previous {
        Some(previous) => changed_settings(previous, &current).with_context(|| {
            format!(
                "{} is not a configuration written by Starling; move it away to start afresh",
                path.display()
            )
        })?,
        None => Vec::new(),
    };
    let previous_digest = previous.as_deref().map(digest);
    let entry = AuditEntry::new(
        AuditKind::ConfigurationChanged,
        "operator",
        "start",
        "config",
        detail(
            &digest(&current),
            previous_digest.as_deref(),
            &changed,
            serde_json::json!({}),
        ),
    );
    audit
        .record(entry)
        .context("cannot write the configuration to the audit log")?;
    if previous.as_deref() != Some(current.as_str()) {
        write_durably(&path, &current)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if !changed.is_empty() {
        log::info!(
            "configuration changed since the last start: {}",
            changed.join(", ")
        );
    }
    Ok(())
}

/// At SIGHUP: reads the configuration again and, when it differs from the
/// one started with in more than the settings named in `applied` (those the
/// reload put into effect: the encryption keys), audits which settings
/// changed. They are not applied (only the TLS certificate and key and the
/// encryption keys are reloaded at run time); they take effect at the next
/// start, which audits them again.
pub fn record_reload(
    audit: &AuditWriter,
    running: &Config,
    reloaded: Result<Config>,
    applied: &[&str],
) {
    let entry = match reloaded {
        Err(error) => AuditEntry::new(
            AuditKind::ConfigurationChanged,
            "operator",
            "SIGHUP",
            "config",
            serde_json::json!({ "error": format!("{error:#}") }).to_string(),
        ),
        Ok(reloaded) => {
            let running = canonical(running);
            let current = canonical(&reloaded);
            if running == current {
                return;
            }
            let mut changed = changed_settings(&running, &current).expect("canonical forms parse");
            changed.retain(|name| !applied.contains(&name.as_str()));
            if changed.is_empty() {
                return;
            }
            log::warn!(
                "SIGHUP: the configuration changed ({}); this takes effect at the next start",
                changed.join(", ")
            );
            AuditEntry::new(
                AuditKind::ConfigurationChanged,
                "operator",
                "SIGHUP",
                "config",
                detail(
                    &digest(&current),
                    Some(&digest(&running)),
                    &changed,
                    serde_json::json!({ "applied": false }),
                ),
            )
        }
    };
    if let Err(error) = audit.record(entry) {
        log::error!("the configuration change could not be audited: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_form_names_every_setting_once_and_parses_back() {
        let config = Config::default();
        let text = canonical(&config);
        assert!(text.contains("engine.durability = \"fsync\"\n"), "{text}");
        assert!(text.contains("tls.client_auth = \"none\"\n"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        let mut sorted = lines.clone();
        sorted.sort();
        assert_eq!(lines, sorted);
        assert_eq!(
            changed_settings(&text, &text).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(digest(&text), digest(&canonical(&Config::default())));
    }

    #[test]
    fn changed_settings_are_named() {
        let before = Config::default();
        let mut after = before.clone();
        after.engine.shards = 7;
        after.native.tls = true;
        after.auth.roles.push(Default::default());
        let changed = changed_settings(&canonical(&before), &canonical(&after)).unwrap();
        assert_eq!(changed, ["auth.roles", "engine.shards", "native.tls"]);
        assert_ne!(digest(&canonical(&before)), digest(&canonical(&after)));
    }

    #[test]
    fn a_long_list_of_changes_fits_in_an_entry() {
        let changed: Vec<String> = (0..2000).map(|i| format!("section.setting_{i}")).collect();
        let text = detail("d", Some("p"), &changed, serde_json::json!({}));
        assert!(text.len() <= DETAIL_BYTES_MAX);
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        let shown = parsed["changed"].as_array().unwrap().len();
        assert!(shown > 100);
        assert_eq!(parsed["more"], 2000 - shown);
    }
}
