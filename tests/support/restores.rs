//! Verbs for restores and rebuilds: `hemvist restore` against the test's S3 server, damage to
//! the newest pack, and waiting for the control plane to know how far an org was shipped.

use std::path::Path;

use serde_json::Value;

use super::cluster::{Cluster, ADMIN_TOKEN, BIN};
use super::s3::{self, S3};

impl Cluster {
    /// Runs `hemvist restore ORG --out OUT EXTRA..` against `s3` (and this control plane): the
    /// restored file's contact names (sorted), or the CLI's error.
    pub fn restore_from(
        &self,
        s3: &S3,
        org: &str,
        out: &Path,
        extra: &[&str],
    ) -> Result<Vec<String>, String> {
        let store = format!("s3://{}/hemvist", s3::BUCKET);
        let output = std::process::Command::new(BIN)
            .args(["restore", org, "--out"])
            .arg(out)
            .args(extra)
            .args(["--store", &store, "--endpoint", &s3.endpoint])
            .env("HEMVIST_S3_ACCESS_KEY_ID", s3::ACCESS_KEY)
            .env("HEMVIST_S3_SECRET_ACCESS_KEY", s3::SECRET_KEY)
            .env("HEMVIST_CONTROL", self.control_url())
            .env("HEMVIST_TOKEN", ADMIN_TOKEN)
            .output()
            .expect("run hemvist restore");
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        Ok(super::story::names_in(out))
    }

    /// Cuts the last `bytes` off the newest pack in `s3` (its index's checksum and the end of
    /// its index); the pack's file name.
    pub fn cut_newest_pack(&self, s3: &S3, bytes: u64) -> String {
        let packs = s3.objects("hemvist/packs");
        let newest = packs.last().expect("a pack was written");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(newest)
            .expect("open the pack");
        let len = file.metadata().expect("pack size").len();
        file.set_len(len - bytes).expect("cut the pack");
        newest
            .file_name()
            .expect("pack name")
            .to_string_lossy()
            .into_owned()
    }

    /// Waits until the control plane has stored the position the org's node reported after
    /// shipping everything written before `written_ms` (ms since the epoch); that position
    /// (generation, LSN).
    pub fn wait_position_known(&self, org: &str, written_ms: i64) -> (u64, u64) {
        self.wait_for(
            &format!("the control plane to know how far {org} was shipped"),
            || {
                let (status, shown) = self.admin("GET", &format!("/orgs/{org}"), None);
                let (known, reported) = (&shown["known_position"], &shown["replication"]);
                (status == 200
                    && reported["unshipped_since_ms"].is_null()
                    && reported["shipped_ms"].as_i64() >= Some(written_ms)
                    && known["lsn"].is_u64()
                    && known["lsn"] == reported["lsn"])
                    .then(|| {
                        (
                            known["generation"].as_u64().unwrap_or(0),
                            known["lsn"].as_u64().unwrap_or(0),
                        )
                    })
            },
        )
    }

    /// The org's `host` command on its node, as `orgs show` lists it, once it has an error.
    pub fn refused_host(&self, org: &str) -> Value {
        self.wait_for(&format!("the host of {org} to be refused"), || {
            let (_, shown) = self.admin("GET", &format!("/orgs/{org}"), None);
            shown["commands"]
                .as_array()?
                .iter()
                .find(|c| c["kind"] == "host" && c["error"].is_string())
                .cloned()
        })
    }
}
