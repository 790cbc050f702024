//! `starling audit`: key generation, verification and export of an audit
//! log directory (`<data dir>/audit/`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use serde::Serialize;
use starling_storage::audit::{self, AuditRecord, ChainHash};

/// Name of the audit log's directory inside a data directory.
const AUDIT_DIRECTORY: &str = "audit";

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Generate the checkpoint signing key: FILE (private, PKCS#8 PEM, mode 0600) and FILE.pub.
    Keygen {
        /// Where to write the private key; the public key goes to FILE.pub.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check every entry, the hash chain and every checkpoint signature; exit 1 on the first problem.
    Verify {
        /// The audit directory, or a data directory holding `audit/`.
        dir: PathBuf,
        /// The public key (`.pub` file written by keygen, or 32 raw bytes);
        /// repeat it for a log whose signing key was rotated.
        #[arg(long, required = true)]
        public_key: Vec<PathBuf>,
        /// Fail unless signed checkpoints cover at least this many entries
        /// (the last signed seq noted from an earlier verify or export).
        #[arg(long)]
        expect_signed: Option<u64>,
    },
    /// Print entries and checkpoints as JSON lines (for ELK or any log shipper).
    Export {
        /// The audit directory, or a data directory holding `audit/`.
        dir: PathBuf,
        /// Start at this entry seq.
        #[arg(long, default_value_t = 1)]
        from: u64,
    },
}

pub fn run(command: AuditCommand) -> Result<()> {
    match command {
        AuditCommand::Keygen { out } => {
            let public = audit::generate_key_files(&out)?;
            println!(
                "wrote the private key to {} (mode 0600: keep it on the server, readable only by starling) and the public key to {} (give it to whoever verifies)",
                out.display(),
                public.display()
            );
            Ok(())
        }
        AuditCommand::Verify {
            dir,
            public_key,
            expect_signed,
        } => verify(&audit_dir(&dir), &public_key, expect_signed),
        AuditCommand::Export { dir, from } => export(&audit_dir(&dir), from),
    }
}

/// `DIR/audit` when DIR is a data directory, else DIR itself.
fn audit_dir(dir: &Path) -> PathBuf {
    let inner = dir.join(AUDIT_DIRECTORY);
    if inner.is_dir() {
        inner
    } else {
        dir.to_path_buf()
    }
}

fn verify(dir: &Path, public_keys: &[PathBuf], expect_signed: Option<u64>) -> Result<()> {
    let keys = public_keys
        .iter()
        .map(|path| audit::load_verifying_key(path))
        .collect::<Result<Vec<_>, _>>()?;
    let key_ids: Vec<String> = keys
        .iter()
        .map(|key| audit::hex(&audit::key_id(key)))
        .collect();
    let report = audit::verify_audit_dir(dir, &keys, expect_signed)
        .with_context(|| format!("{}: verification FAILED", dir.display()))?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}: ok: {} segments, {} entries, {} checkpoints checked (key ids {})",
        dir.display(),
        report.segments,
        report.entries,
        report.checkpoints,
        key_ids.join(", ")
    )?;
    match &report.last_signed_at {
        Some((file, position)) => writeln!(
            out,
            "last signed position: seq {} (checkpoint at byte {position} of {})",
            report.last_signed_seq,
            file.display()
        )?,
        None => writeln!(out, "last signed position: none (no checkpoint yet)")?,
    }
    if report.unsigned_entries == 0 {
        writeln!(out, "every entry is covered by a signature")?;
    } else {
        writeln!(
            out,
            "{} entries (seq {}..={}) are not yet covered by a signature",
            report.unsigned_entries,
            report.last_signed_seq + 1,
            report.last_seq
        )?;
    }
    Ok(())
}

/// One line of `starling audit export`. The field names are stable.
#[derive(Serialize)]
struct ExportLine<'a> {
    /// `entry` or `checkpoint`.
    record: &'static str,
    seq: u64,
    timestamp_ms: u64,
    /// RFC 3339, UTC.
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
    hash: String,
    previous_hash: String,
}

fn export_line<'a>(record: &AuditRecord<'a>, hash: &ChainHash) -> ExportLine<'a> {
    let mut line = ExportLine {
        record: "entry",
        seq: record.seq(),
        timestamp_ms: record.timestamp_ms(),
        time: rfc3339_utc(record.timestamp_ms()),
        kind: None,
        kind_code: None,
        actor: None,
        source: None,
        target: None,
        detail: None,
        key_id: None,
        signature: None,
        hash: audit::hex(hash),
        previous_hash: audit::hex(record.previous_hash()),
    };
    match record {
        AuditRecord::Entry(entry) => {
            line.kind = Some(entry.kind.name());
            line.kind_code = Some(entry.kind.code());
            line.actor = Some(entry.actor);
            line.source = Some(entry.source);
            line.target = Some(entry.target);
            line.detail = Some(entry.detail);
        }
        AuditRecord::Checkpoint(checkpoint) => {
            line.record = "checkpoint";
            line.key_id = Some(audit::hex(&checkpoint.key_id));
            line.signature = Some(audit::hex(&checkpoint.signature));
        }
    }
    line
}

fn export(dir: &Path, from: u64) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let torn = audit::read_audit_dir(dir, from, &mut |record, hash| {
        serde_json::to_writer(&mut out, &export_line(record, hash))?;
        out.write_all(b"\n")
    })
    .with_context(|| format!("cannot export {}", dir.display()))?;
    out.flush()?;
    if let Some((file, position)) = torn {
        eprintln!(
            "starling: note: {} ends with an incomplete record at byte {position} (a write in progress, or interrupted by a crash); it was not exported",
            file.display()
        );
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the Unix epoch.
fn rfc3339_utc(timestamp_ms: u64) -> String {
    let seconds = timestamp_ms / 1000;
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm, proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        timestamp_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339_utc;

    #[test]
    fn audit_export_times_are_rfc3339_utc() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_utc(1_764_314_700_123), "2025-11-28T07:25:00.123Z");
    }
}
