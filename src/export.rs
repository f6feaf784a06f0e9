//! `hemvist orgs export ORG --out FILE [--format sqlite|jsonl]`: the org's GDPR export, made on
//! its home node and streamed here through the admin API. Written to `FILE.partial`, checked
//! against its manifest (bytes and SHA-256), then renamed; the manifest is `FILE.manifest.json`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use sha2::{Digest, Sha256};

use crate::client::Client;
use crate::out::outln;
use crate::ApiArgs;

#[derive(Args)]
pub struct ExportArgs {
    /// The org.
    pub org: String,
    /// Where to write it (refused if it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// sqlite (a database file) or jsonl (one JSON line per row).
    #[arg(long, default_value = "sqlite")]
    pub format: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let org = hemvist_proto::OrgId::parse(&args.org)?;
    if args.out.exists() {
        bail!("{} exists: pick a new file", args.out.display());
    }
    let client = Client::new(&args.api)?;
    let mut resp = client
        .get_raw(&format!("/orgs/{org}/export?format={}", args.format))
        .await?;
    let manifest: serde_json::Value = resp
        .headers()
        .get("x-hemvist-manifest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| serde_json::from_str(v).ok())
        .context("the export came without its manifest")?;
    let partial = PathBuf::from(format!("{}.partial", args.out.display()));
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&partial).with_context(|| format!("create {}", partial.display()))?,
    );
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = resp.chunk().await.context("the export stream broke off")? {
        hash.update(&chunk);
        bytes += chunk.len() as u64;
        file.write_all(&chunk)?;
    }
    file.flush()?;
    file.get_ref().sync_all()?;
    drop(file);
    let sha = hex::encode(hash.finalize());
    if Some(bytes) != manifest["bytes"].as_u64()
        || Some(sha.as_str()) != manifest["sha256"].as_str()
    {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "the export arrived damaged ({bytes} bytes, SHA-256 {sha}; the manifest says {} bytes, {}): nothing was kept",
            manifest["bytes"],
            manifest["sha256"].as_str().unwrap_or("")
        );
    }
    std::fs::rename(&partial, &args.out)?;
    let manifest_path = PathBuf::from(format!("{}.manifest.json", args.out.display()));
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest)?)?;
    if args.api.json {
        outln!("{}", serde_json::to_string_pretty(&manifest)?);
    } else {
        outln!(
            "{}: {} bytes of {org} as of {}, SHA-256 {sha}; manifest in {}",
            args.out.display(),
            bytes,
            manifest["as_of_ms"]
                .as_i64()
                .map(hemvist_node::backup::format_time)
                .unwrap_or_default(),
            manifest_path.display()
        );
    }
    Ok(())
}
