//! Talking to etcd: a client with the local file's timeouts, TLS and user,
//! and the few requests the agent and `lb-agent cluster` make. Every request
//! is bounded by `source.timeout`; the password never reaches a log.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use etcd_client::{Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, TlsOptions, Txn, TxnOp};

use super::{ClusterDoc, host_state::HostState};
use crate::config::source::{SourceConfig, hosts_prefix, members_prefix};

/// A connected client. Each request below is bounded by the configured timeout.
pub struct Etcd {
    client: Client,
    timeout: Duration,
    endpoints: String,
}

/// Connects to the first endpoint that answers, within `source.timeout`.
pub async fn connect(source: &SourceConfig) -> Result<Etcd> {
    let mut options = ConnectOptions::new().with_connect_timeout(source.timeout).with_timeout(source.timeout).with_keep_alive(source.timeout, source.timeout);
    if let Some((user, password_file)) = &source.user {
        let password = std::fs::read_to_string(password_file)
            .with_context(|| format!("reading source.password_file {} (it should hold only the etcd password)", password_file.display()))?;
        options = options.with_user(user.clone(), password.trim_end_matches(['\n', '\r']).to_string());
    }
    if let Some(tls) = &source.tls {
        let read = |p: &std::path::Path, what: &str| std::fs::read(p).with_context(|| format!("reading {what} {}", p.display()));
        let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca, "source.ca_file")?));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(read(cert, "source.cert_file")?, read(key, "source.key_file")?));
        }
        options = options.with_tls(config);
    }
    let endpoints = source.endpoints.join(", ");
    let client = tokio::time::timeout(source.timeout, Client::connect(&source.endpoints, Some(options)))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {:?}", source.timeout))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| format!("connecting to etcd at {endpoints}"))?;
    Ok(Etcd { client, timeout: source.timeout, endpoints })
}

impl Etcd {
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs one request within the timeout, naming `what` and the endpoints on failure.
    pub async fn bounded<T>(&self, what: &str, request: impl std::future::Future<Output = Result<T, etcd_client::Error>>) -> Result<T> {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(anyhow::Error::from(e).context(format!("etcd at {}: {what}", self.endpoints))),
            Err(_) => bail!("etcd at {}: {what}: no answer within {:?}", self.endpoints, self.timeout),
        }
    }

    /// The document at `key` and its revision; None if the key does not exist.
    /// Also returns the store's current revision (to watch from).
    pub async fn document(&mut self, key: &str) -> Result<(Option<ClusterDoc>, i64)> {
        let client = &mut self.client.clone();
        let response = self.bounded(&format!("reading {key}"), client.get(key, None)).await?;
        let store_revision = response.header().map_or(0, |h| h.revision());
        let Some(kv) = response.kvs().first() else { return Ok((None, store_revision)) };
        let text = kv.value_str().with_context(|| format!("the document at {key} is not UTF-8"))?.to_string();
        Ok((Some(ClusterDoc { text, revision: kv.mod_revision() }), store_revision))
    }

    /// Every host's published state under `key`, by host name.
    pub async fn hosts(&mut self, key: &str) -> Result<Vec<HostState>> {
        let prefix = hosts_prefix(key);
        let client = &mut self.client.clone();
        let response = self.bounded(&format!("reading {prefix}*"), client.get(prefix.as_str(), Some(GetOptions::new().with_prefix()))).await?;
        let mut hosts = Vec::new();
        for kv in response.kvs() {
            let name = kv.key_str().unwrap_or("?").to_string();
            match serde_json::from_slice::<HostState>(kv.value()) {
                Ok(h) => hosts.push(h),
                Err(e) => tracing::warn!("ignoring {name}: not a host state ({e})"),
            }
        }
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        Ok(hosts)
    }

    /// Names of the hosts that ever joined (see [`members_prefix`]).
    pub async fn members(&mut self, key: &str) -> Result<Vec<String>> {
        let prefix = members_prefix(key);
        let client = &mut self.client.clone();
        let response = self.bounded(&format!("reading {prefix}*"), client.get(prefix.as_str(), Some(GetOptions::new().with_prefix()))).await?;
        Ok(response.kvs().iter().filter_map(|kv| kv.key_str().ok()?.strip_prefix(&prefix).map(str::to_string)).collect())
    }

    /// Removes a member; true if it was one.
    pub async fn forget(&mut self, key: &str, host: &str) -> Result<bool> {
        let member = format!("{}{host}", members_prefix(key));
        let client = &mut self.client.clone();
        Ok(self.bounded(&format!("deleting {member}"), client.delete(member.as_str(), None)).await?.deleted() > 0)
    }

    /// Writes `text` at `key` if its revision is still `base` (0: the key
    /// must not exist yet). Ok(new revision) or Err(Refused(current)).
    pub async fn put_if_unchanged(&mut self, key: &str, text: &str, base: i64) -> Result<Result<i64, i64>> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, base)])
            .and_then([TxnOp::put(key, text, None)])
            .or_else([TxnOp::get(key, None)]);
        let client = &mut self.client.clone();
        let response = self.bounded(&format!("writing {key}"), client.txn(txn)).await?;
        if response.succeeded() {
            return Ok(Ok(response.header().map_or(0, |h| h.revision())));
        }
        let current = response
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(g) => Some(g.kvs().first().map_or(0, |kv| kv.mod_revision())),
                _ => None,
            })
            .unwrap_or(0);
        Ok(Err(current))
    }
}
