//! The last applied cluster document on disk: an agent restarted while etcd
//! is down starts from it. Written only after a document was applied, so it
//! always holds one that validated on this host.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

use super::ClusterDoc;

/// First line of the file: the key and revision it came from.
const HEADER: &str = "# lb-agent: last applied cluster document; key ";

pub fn store(path: &Path, key: &str, doc: &ClusterDoc) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{HEADER}{key} revision {}\n{}", doc.revision, doc.text)).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// The cached document of `key`, or None if there is none (a cache of
/// another key is ignored: the local file changed its source).
pub fn load(path: &Path, key: &str) -> Result<Option<ClusterDoc>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading the cached cluster document {}", path.display())),
    };
    let Some((first, rest)) = text.split_once('\n') else { bail!("{} is not a cached cluster document (no header line)", path.display()) };
    let Some((cached_key, revision)) = first.strip_prefix(HEADER).and_then(|h| h.rsplit_once(" revision ")) else {
        bail!("{} is not a cached cluster document (its first line is {first:?})", path.display());
    };
    if cached_key != key {
        tracing::warn!("ignoring the cached cluster document {}: it is of key {cached_key}, the config names {key}", path.display());
        return Ok(None);
    }
    let revision = revision.parse().with_context(|| format!("{}: bad revision {revision:?} in its header", path.display()))?;
    Ok(Some(ClusterDoc { text: rest.to_string(), revision }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_document_comes_back_for_its_key_only() {
        let dir = std::env::temp_dir().join(format!("lb-cache-test-{}", std::process::id()));
        let path = dir.join("sub/cluster.toml");
        let doc = ClusterDoc { text: "[lb]\nring_size = 65537\n".into(), revision: 42 };
        store(&path, "/lb/a", &doc).unwrap();
        assert_eq!(load(&path, "/lb/a").unwrap(), Some(doc));
        assert_eq!(load(&path, "/lb/b").unwrap(), None);
        assert_eq!(load(&dir.join("none"), "/lb/a").unwrap(), None);
        std::fs::write(&path, "garbage").unwrap();
        assert!(load(&path, "/lb/a").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
