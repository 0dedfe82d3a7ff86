//! Join requests filed from this home and not yet decided: where each was sent and as whom,
//! so `kith project request --resume ID` needs nothing else.
//!
//! One small JSON file per request, `requests/ID.json`, written when the request is filed
//! and removed once it is decided. The ID comes from the command line; only IDs of the
//! authority's alphabet name a file.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::{Home, make_private_dir, write_private_atomic};

/// 16 KiB: the largest record read back (a record is a few hundred bytes).
const MAX_RECORD: u64 = 16 * 1024;

/// How a pending request reached its authority: the options that chose it, as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRequest {
    /// `--project-file`, made absolute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_file: Option<PathBuf>,
    /// `--project`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// `--authority-route`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority_route: Option<String>,
    /// The identifier of the authority that answered, when only a route named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority_identity: Option<String>,
    /// `--identity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// `--node`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Refuse an ID that could name anything but one file of the directory.
fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        bail!(
            "{id:?} is not a request ID (letters, digits, '-' and '_', as `kith project request` printed it)"
        );
    }
    Ok(())
}

impl Home {
    fn requests_dir(&self) -> PathBuf {
        self.root().join("requests")
    }

    /// The record's file; IDs are case-blind, as the authority reads them.
    fn request_path(&self, id: &str) -> Result<PathBuf> {
        let id = id.trim().to_ascii_uppercase();
        check_id(&id)?;
        Ok(self.requests_dir().join(format!("{id}.json")))
    }

    /// Remember how request `id` was filed.
    pub fn save_pending_request(&self, id: &str, request: &PendingRequest) -> Result<()> {
        let path = self.request_path(id)?;
        make_private_dir(&self.requests_dir())?;
        let json = serde_json::to_vec_pretty(request).context("cannot encode a request record")?;
        write_private_atomic(&path, &json)
    }

    /// How request `id` was filed from this home, if it was and is not decided yet.
    pub fn pending_request(&self, id: &str) -> Result<Option<PendingRequest>> {
        let path = self.request_path(id)?;
        let text = match read_limited(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .with_context(|| format!("{} is not a request record", path.display()))
    }

    /// Forget request `id` (it was decided). Missing is fine.
    pub fn forget_pending_request(&self, id: &str) -> Result<()> {
        let path = self.request_path(id)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot delete {}", path.display()))
            }
            _ => Ok(()),
        }
    }
}

fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(MAX_RECORD)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(dir.path()).unwrap();
        assert_eq!(home.pending_request("r1").unwrap(), None);
        let record = PendingRequest {
            authority_route: Some("/ip4/127.0.0.1/tcp/4000".into()),
            authority_identity: Some("I00".into()),
            identity: Some("alice".into()),
            ..PendingRequest::default()
        };
        home.save_pending_request("r1", &record).unwrap();
        assert_eq!(home.pending_request(" R1 ").unwrap(), Some(record));
        home.forget_pending_request("r1").unwrap();
        home.forget_pending_request("r1").unwrap();
        assert_eq!(home.pending_request("r1").unwrap(), None);
    }

    #[test]
    fn ids_that_could_name_another_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(dir.path()).unwrap();
        for bad in ["", "../x", "a/b", "a.json", ".", &"x".repeat(65), "a b"] {
            assert!(home.pending_request(bad).is_err(), "{bad:?}");
            assert!(
                home.save_pending_request(bad, &PendingRequest::default())
                    .is_err(),
                "{bad:?}"
            );
        }
    }
}
