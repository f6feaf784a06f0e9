//! The source node's backup objects as an [`ObjectStore`], for the target of a move: reads only
//! (`GET`, ranged or whole), over the node-to-node channel, with the move's bearer credential.
//! Everything else is refused: a target never lists, writes or deletes anything through it.
//!
//! The bytes that cross are the org's sealed backup objects (LZ4, then XChaCha20-Poly1305 under
//! the org's data key), so the channel carries nothing readable without that key, and what the
//! target applies is verified exactly as a restore verifies it.

use std::fmt;
use std::ops::Range;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// The header a source answers with the whole object's size in (a ranged read needs it).
pub const OBJECT_SIZE: &str = "x-hemvist-object-size";

/// One move's view of its source's objects.
#[derive(Clone)]
pub struct SourceObjects {
    client: reqwest::Client,
    /// `{source_url}/internal/v1/moves/{org}`.
    base: String,
    secret: String,
}

impl fmt::Debug for SourceObjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceObjects({})", self.base)
    }
}

impl fmt::Display for SourceObjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the move source {}", self.base)
    }
}

fn generic(e: impl std::error::Error + Send + Sync + 'static) -> object_store::Error {
    object_store::Error::Generic {
        store: "move source",
        source: Box::new(e),
    }
}

fn refused(operation: &str) -> object_store::Error {
    object_store::Error::NotImplemented {
        operation: operation.into(),
        implementer: "a move's source (reads only)".into(),
    }
}

#[derive(Debug)]
struct Answer(String);

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Answer {}

impl SourceObjects {
    pub fn new(client: reqwest::Client, source_url: &str, org: &str, secret: String) -> Self {
        SourceObjects {
            client,
            base: format!(
                "{}/internal/v1/moves/{org}",
                source_url.trim_end_matches('/')
            ),
            secret,
        }
    }

    /// `GET {base}/{what}` with the credential; the answer's body, or why not.
    pub async fn get_json(&self, what: &str) -> anyhow::Result<serde_json::Value> {
        let resp = self
            .client
            .get(format!("{}/{what}", self.base))
            .bearer_auth(&self.secret)
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            anyhow::bail!(
                "the move source answered {status}: {}",
                body.chars().take(300).collect::<String>()
            );
        }
        Ok(resp.json().await?)
    }
}

#[async_trait]
impl ObjectStore for SourceObjects {
    async fn put_opts(
        &self,
        _location: &ObjectPath,
        _payload: PutPayload,
        _opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        Err(refused("put"))
    }

    async fn put_multipart_opts(
        &self,
        _location: &ObjectPath,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(refused("put_multipart"))
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let mut req = self
            .client
            .get(format!("{}/objects/{}", self.base, location.as_ref()))
            .bearer_auth(&self.secret);
        let asked: Option<Range<u64>> = match &options.range {
            None => None,
            Some(GetRange::Bounded(r)) => Some(r.clone()),
            Some(_) => return Err(refused("get with an open range")),
        };
        if let Some(r) = &asked {
            if r.end <= r.start {
                return Err(refused("get of an empty range"));
            }
            req = req.header("range", format!("bytes={}-{}", r.start, r.end - 1));
        }
        let resp = req.send().await.map_err(generic)?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(object_store::Error::NotFound {
                path: location.to_string(),
                source: Box::new(Answer("the move source has no such object".into())),
            });
        }
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(generic(Answer(format!(
                "the move source answered {status} for {location}: {}",
                body.chars().take(300).collect::<String>()
            ))));
        }
        let size = resp
            .headers()
            .get(OBJECT_SIZE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                generic(Answer(
                    "the move source did not say the object's size".into(),
                ))
            })?;
        let bytes = resp.bytes().await.map_err(generic)?;
        let start = asked.as_ref().map_or(0, |r| r.start);
        let range = start..start + bytes.len() as u64;
        if asked.as_ref().is_some_and(|r| r.end.min(size) != range.end) {
            return Err(generic(Answer(format!(
                "the move source sent {} bytes of {location} for the range {asked:?}",
                bytes.len()
            ))));
        }
        Ok(GetResult {
            payload: GetResultPayload::Stream(
                futures::stream::once(async move { Ok(bytes) }).boxed(),
            ),
            meta: ObjectMeta {
                location: location.clone(),
                last_modified: Default::default(),
                size,
                e_tag: None,
                version: None,
            },
            range,
            attributes: Default::default(),
            extensions: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        locations.map(|_| Err(refused("delete"))).boxed()
    }

    fn list(
        &self,
        _prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        futures::stream::once(async { Err(refused("list")) }).boxed()
    }

    async fn list_with_delimiter(
        &self,
        _prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        Err(refused("list"))
    }

    async fn copy_opts(
        &self,
        _from: &ObjectPath,
        _to: &ObjectPath,
        _options: CopyOptions,
    ) -> object_store::Result<()> {
        Err(refused("copy"))
    }
}
