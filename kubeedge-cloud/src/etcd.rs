//! The embedded control plane's objects in etcd (`cloudcore --datastore etcd://host:port,...`), so
//! that several cloudcore replicas serve one API from the same state, and that state survives the
//! loss of a machine with a three-member etcd. redb in the data directory stays the default for
//! one machine.
//!
//! Each replica keeps a mirror of the etcd keys under its prefix ([`kubeedge_core::store::remote`]):
//! lists, gets and watches are served from it; writes are etcd transactions conditional on the
//! key's `mod_revision` (absent for a create), so resourceVersions are etcd revisions and every
//! replica hands out the same ones. The mirror follows one etcd watch of the prefix; when etcd
//! compacted past what the mirror has (after a long outage), the mirror is loaded again and the
//! API's watches end with `410 Gone`, so that their clients list again, as upstream's do.
//!
//! Keys: `{prefix}o/{resource}/{namespace}/{name}` for objects (JSON, as the API serves them, less
//! `resourceVersion`), `{prefix}a/{key}` for the store's auxiliary records (the token signing key,
//! the replicas' CA).
//!
//! The etcd client runs on a thread of its own: the store's writes block their caller until etcd
//! answered and the change came back through the watch, and that must never wait on the
//! caller's own runtime.
//!
//! etcd down at start: [`Etcd::open`] waits for it, saying every few seconds why it cannot
//! reach it. Gone later: writes fail with `503` saying so (nothing is written, nothing acknowledged
//! is lost: etcd has it), `/readyz` fails, reads are served from the mirror as it was; the watch
//! resumes where it stopped when etcd is back.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use kubeedge_core::store::{
    self, Commit, Expect, Remote, RemoteChange, RemoteKey, RemoteWrite, Store,
};
use tokio::sync::{mpsc, oneshot};

use crate::Error;

/// The key prefix when none is given.
pub const DEFAULT_PREFIX: &str = "/kubeedge-rs/";
/// How long one etcd request may take before the write fails as unavailable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often etcd's history is compacted by default.
pub const DEFAULT_COMPACT_EVERY: Duration = Duration::from_secs(300);
/// How often the datastore's health is checked.
const HEALTH_EVERY: Duration = Duration::from_secs(2);
/// Keys per page when loading the mirror.
const LOAD_PAGE: i64 = 500;
/// The largest etcd answer read (a page of the load; etcd's own request limit is 1.5 MiB).
const MAX_MESSAGE: usize = 64 << 20;

/// Where the datastore is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdConfig {
    /// Client URLs of the members (`http://host:port`, or `https://` with [`tls`](Self::tls)).
    pub endpoints: Vec<String>,
    /// The key prefix everything goes under ([`DEFAULT_PREFIX`]).
    pub prefix: String,
    /// Mutual TLS with the members, as production etcd runs. Default none (plain HTTP).
    pub tls: Option<EtcdTls>,
    /// How often etcd's history is compacted, each time up to the revision of the time before
    /// (so a watch may resume from anything newer than one interval). Default 5 minutes, as
    /// kube-apiserver does: without it etcd keeps every revision until its space quota is full
    /// and it refuses writes.
    pub compact_every: Duration,
}

/// The certificates of TLS with etcd (PEM), as K3s's `--datastore-cafile`, `--datastore-certfile`
/// and `--datastore-keyfile` give them.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdTls {
    /// The CA the members' serving certificates are checked against.
    pub ca_pem: String,
    /// This client's certificate (etcd's `--client-cert-auth` asks for one); with `key_pem`.
    pub cert_pem: Option<String>,
    /// Its private key.
    pub key_pem: Option<String>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("client_cert", &self.cert_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl EtcdTls {
    /// Reads the CA and, if given, the client certificate and key from files.
    pub fn from_files(
        ca: &Path,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<EtcdTls, Error> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| Error::Io {
                step: format!("reading {}", p.display()),
                source,
            })
        };
        if cert.is_some() != key.is_some() {
            return Err(Error::Config(
                "etcd TLS: a client certificate needs its key and a key its certificate".into(),
            ));
        }
        Ok(EtcdTls {
            ca_pem: read(ca)?,
            cert_pem: cert.map(read).transpose()?,
            key_pem: key.map(read).transpose()?,
        })
    }
}

impl EtcdConfig {
    /// Reads `etcd://host:port[,host:port...][/prefix]` (the `--datastore` value).
    pub fn parse(url: &str) -> Result<EtcdConfig, Error> {
        let rest = url.strip_prefix("etcd://").ok_or_else(|| {
            Error::Config(format!(
                "--datastore {url:?}: expected etcd://host:port[,host:port...][/prefix]"
            ))
        })?;
        let (hosts, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, DEFAULT_PREFIX),
        };
        let endpoints: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("http://{h}"))
            .collect();
        if endpoints.is_empty() {
            return Err(Error::Config(format!(
                "--datastore {url:?} names no etcd member"
            )));
        }
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(EtcdConfig {
            endpoints,
            prefix,
            tls: None,
            compact_every: DEFAULT_COMPACT_EVERY,
        })
    }

    /// The same members over TLS with `tls` (the endpoints become `https://`).
    pub fn with_tls(mut self, tls: EtcdTls) -> EtcdConfig {
        for e in &mut self.endpoints {
            if let Some(rest) = e.strip_prefix("http://") {
                *e = format!("https://{rest}");
            }
        }
        self.tls = Some(tls);
        self
    }
}

/// A write waiting for etcd's answer.
type Pending = (
    RemoteWrite,
    std::sync::mpsc::SyncSender<Result<Commit, store::Error>>,
);

/// etcd as a store's [`Remote`]. Opened by [`Etcd::open`]; stopped by [`EtcdFeed::stop`].
#[derive(Debug)]
pub struct Etcd {
    writes: mpsc::UnboundedSender<Pending>,
    health: Arc<Mutex<Result<(), String>>>,
    endpoints: String,
}

/// The thread that runs the etcd client: it follows etcd's watch into the mirror and makes the
/// store's writes. Dropping it stops it too (without waiting).
#[derive(Debug)]
pub struct EtcdFeed {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EtcdFeed {
    /// Stops following etcd and waits for the thread to end (the store's writes fail from now
    /// on).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for EtcdFeed {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Remote for Etcd {
    fn commit(&self, write: RemoteWrite) -> Result<Commit, store::Error> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.writes
            .send((write, tx))
            .map_err(|_| store::Error::Unavailable("the etcd client has stopped".into()))?;
        match rx.recv_timeout(REQUEST_TIMEOUT + Duration::from_secs(1)) {
            Ok(result) => result,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                Err(store::Error::Unavailable(format!(
                    "etcd at {} did not answer within {}s",
                    self.endpoints,
                    REQUEST_TIMEOUT.as_secs()
                )))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(store::Error::Unavailable(
                "the etcd client has stopped".into(),
            )),
        }
    }

    fn health(&self) -> Result<(), String> {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Etcd {
    /// Connects to etcd (waiting for it, with a warning every few seconds saying why it cannot
    /// be reached), loads the mirror at `mirror` from it and follows it from then on. The store
    /// is ready for the API.
    pub async fn open(
        config: &EtcdConfig,
        mirror: &Path,
        store_config: store::Config,
    ) -> Result<(Store, EtcdFeed), Error> {
        let endpoints = config.endpoints.join(",");
        let health = Arc::new(Mutex::new(Err(format!(
            "etcd at {endpoints}: not connected yet"
        ))));
        let (writes, pending) = mpsc::unbounded_channel();
        let remote = Arc::new(Etcd {
            writes,
            health: health.clone(),
            endpoints: endpoints.clone(),
        });
        let store = Store::mirror(mirror, store_config, remote)?;
        let (stop, stopped) = oneshot::channel();
        let (loaded, first_load) = oneshot::channel();
        let feed = Feed {
            config: config.clone(),
            store: store.clone(),
            health,
            endpoints,
        };
        let thread = std::thread::Builder::new()
            .name("etcd".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "etcd: no runtime for the client");
                        return;
                    }
                };
                runtime.block_on(feed.run(pending, stopped, loaded));
            })
            .map_err(|source| Error::Io {
                step: "starting the etcd client's thread".into(),
                source,
            })?;
        let feed = EtcdFeed {
            stop: Some(stop),
            thread: Some(thread),
        };
        if first_load.await.is_err() {
            feed.stop().await;
            return Err(Error::Config(
                "the etcd client stopped before it loaded the datastore".into(),
            ));
        }
        Ok((store, feed))
    }
}

/// The etcd thread's state.
struct Feed {
    config: EtcdConfig,
    store: Store,
    health: Arc<Mutex<Result<(), String>>>,
    endpoints: String,
}

fn unavailable(endpoints: &str, e: impl std::fmt::Display) -> store::Error {
    store::Error::Unavailable(format!("etcd at {endpoints}: {e}"))
}

impl Feed {
    fn set_health(&self, h: Result<(), String>) {
        *self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = h;
    }

    async fn connect(&self) -> Result<Client, store::Error> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &self.config.tls {
            let mut t = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem));
            if let (Some(cert), Some(key)) = (&tls.cert_pem, &tls.key_pem) {
                t = t.identity(etcd_client::Identity::from_pem(cert, key));
            }
            options = options.with_tls(t);
        }
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            Client::connect(&self.config.endpoints, Some(options)),
        )
        .await
        .map_err(|_| unavailable(&self.endpoints, "connecting timed out"))?
        .map_err(|e| unavailable(&self.endpoints, e))
    }

    async fn run(
        self,
        mut pending: mpsc::UnboundedReceiver<Pending>,
        mut stopped: oneshot::Receiver<()>,
        loaded: oneshot::Sender<()>,
    ) {
        // Connected and loaded first, however long etcd takes to come.
        let mut warned = None::<tokio::time::Instant>;
        let client = loop {
            let attempt = async {
                let client = self.connect().await?;
                self.load(&client).await?;
                Ok::<_, store::Error>(client)
            };
            let result = tokio::select! {
                r = attempt => r,
                _ = &mut stopped => return,
            };
            match result {
                Ok(client) => break client,
                Err(e) => {
                    self.set_health(Err(e.to_string()));
                    if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                        tracing::warn!(error = %e, "waiting for etcd");
                        warned = Some(tokio::time::Instant::now());
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = &mut stopped => return,
                    }
                }
            }
        };
        self.set_health(Ok(()));
        tracing::info!(endpoints = %self.endpoints, prefix = %self.config.prefix, revision = self.store.mirror_applied(), "etcd: mirror loaded");
        let _ = loaded.send(());

        let prefix = self.config.prefix.clone();
        let endpoints = self.endpoints.clone();
        let kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
        let writer = async {
            while let Some((write, answer)) = pending.recv().await {
                let (mut kv, prefix, endpoints) = (kv.clone(), prefix.clone(), endpoints.clone());
                tokio::spawn(async move {
                    let result = commit(&mut kv, &prefix, write)
                        .await
                        .map_err(|e| unavailable(&endpoints, e));
                    let _ = answer.send(result);
                });
            }
        };
        tokio::select! {
            _ = writer => {}
            _ = self.follow(&client) => {}
            _ = self.check_health(&client) => {}
            _ = self.compact(&client) => {}
            _ = &mut stopped => {}
        }
    }

    /// Loads the mirror from etcd: every key under the prefix, page by page, at one revision.
    async fn load(&self, client: &Client) -> Result<(), store::Error> {
        let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
        let prefix = self.config.prefix.as_bytes();
        let end = prefix_end(prefix);
        let mut from = prefix.to_vec();
        let mut revision = 0i64;
        let mut items = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LOAD_PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let page = tokio::time::timeout(REQUEST_TIMEOUT, kv.get(from.clone(), Some(options)))
                .await
                .map_err(|_| unavailable(&self.endpoints, "loading timed out"))?
                .map_err(|e| unavailable(&self.endpoints, e))?;
            if revision == 0 {
                revision = page.header().map_or(0, |h| h.revision());
            }
            for kv in page.kvs() {
                if let Some(key) = store_key(&self.config.prefix, kv.key()) {
                    items.push((key, kv.value().to_vec(), kv.mod_revision().max(0) as u64));
                }
            }
            match page.kvs().last() {
                Some(last) if page.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        self.store
            .mirror_load(revision.max(0) as u64, items)
            .map_err(|e| store::Error::Unavailable(format!("loading the mirror: {e}")))
    }

    /// Follows etcd's watch of the prefix into the mirror, reconnecting (and loading again after
    /// a compaction) for as long as the feed runs.
    async fn follow(&self, client: &Client) {
        let prefix = self.config.prefix.as_bytes().to_vec();
        let mut warned = None::<tokio::time::Instant>;
        let mut failed = 0u32;
        loop {
            let began = tokio::time::Instant::now();
            let result = self.follow_once(client, &prefix).await;
            let e = match result {
                Ok(()) => continue,
                Err(e) => e,
            };
            // A watch that broke (its member went) resumes at once on another member; only
            // one that cannot be started again says etcd is unavailable.
            let ran = began.elapsed() >= Duration::from_secs(1);
            failed = if ran { 0 } else { failed + 1 };
            if failed >= 2 {
                self.set_health(Err(e.to_string()));
            }
            if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                tracing::warn!(error = %e, "etcd watch interrupted; resuming");
                warned = Some(tokio::time::Instant::now());
            }
            if failed >= 1 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// One watch, from the revision after the mirror's; `Ok` when it must start again (etcd
    /// compacted past the mirror: loaded again first).
    async fn follow_once(&self, client: &Client, prefix: &[u8]) -> Result<(), store::Error> {
        let from = self.store.mirror_applied() + 1;
        let options = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_start_revision(from as i64)
            .with_progress_notify();
        let mut watch = client
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE)
            .watch(prefix.to_vec(), Some(options))
            .await
            .map_err(|e| unavailable(&self.endpoints, e))?;
        loop {
            let Some(resp) = watch
                .message()
                .await
                .map_err(|e| unavailable(&self.endpoints, e))?
            else {
                return Err(unavailable(&self.endpoints, "the watch ended"));
            };
            if resp.compact_revision() > 0 {
                tracing::warn!(
                    mirror = self.store.mirror_applied(),
                    compacted = resp.compact_revision(),
                    "etcd compacted past the mirror: loading it again (watches end with 410)"
                );
                self.load(client).await?;
                return Ok(());
            }
            if resp.canceled() {
                return Err(unavailable(
                    &self.endpoints,
                    format!("the watch was cancelled: {}", resp.cancel_reason()),
                ));
            }
            self.set_health(Ok(()));
            let changes: Vec<RemoteChange> = resp
                .events()
                .iter()
                .filter_map(|ev| {
                    let kv = ev.kv()?;
                    let key = store_key(&self.config.prefix, kv.key())?;
                    let value = match ev.event_type() {
                        etcd_client::EventType::Put => Some(kv.value().to_vec()),
                        etcd_client::EventType::Delete => None,
                    };
                    Some(RemoteChange::new(
                        key,
                        value,
                        kv.mod_revision().max(0) as u64,
                    ))
                })
                .collect();
            // A progress notification (no events) says everything up to its revision came.
            let revision = if resp.events().is_empty() && !resp.created() {
                resp.header().map_or(0, |h| h.revision().max(0) as u64)
            } else {
                0
            };
            if changes.is_empty() && revision == 0 {
                continue;
            }
            let store = self.store.clone();
            store
                .mirror_apply(revision, changes)
                .map_err(|e| store::Error::Unavailable(format!("applying to the mirror: {e}")))?;
        }
    }

    /// Compacts etcd's history every [`EtcdConfig::compact_every`], up to the revision seen one
    /// interval before. Every replica does (a compaction already made is refused by etcd and
    /// ignored here); a mirror that falls further behind loads again.
    async fn compact(&self, client: &Client) {
        let mut kv = client.kv_client();
        let mut previous: Option<i64> = None;
        loop {
            tokio::time::sleep(self.config.compact_every.max(Duration::from_millis(100))).await;
            let now = tokio::time::timeout(
                REQUEST_TIMEOUT,
                kv.get(
                    self.config.prefix.as_bytes().to_vec(),
                    Some(GetOptions::new().with_count_only()),
                ),
            )
            .await;
            let Ok(Ok(now)) = now else { continue };
            let revision = now.header().map_or(0, |h| h.revision());
            if let Some(at) = previous.filter(|&at| at > 0) {
                match tokio::time::timeout(REQUEST_TIMEOUT, kv.compact(at, None)).await {
                    Ok(Ok(_)) => tracing::debug!(revision = at, "etcd: history compacted"),
                    Ok(Err(e)) if e.to_string().contains("compacted") => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "etcd: compacting the history"),
                    Err(_) => tracing::warn!("etcd: compacting the history timed out"),
                }
            }
            previous = Some(revision);
        }
    }

    /// Asks etcd for its status now and then: `/readyz` says whether it answers.
    async fn check_health(&self, client: &Client) {
        let mut maintenance = client.maintenance_client();
        // One failed check may have gone to a member that just went (the next goes to another):
        // unhealthy after two in a row.
        let mut failed = 0u32;
        loop {
            tokio::time::sleep(HEALTH_EVERY).await;
            let status = tokio::time::timeout(HEALTH_EVERY, maintenance.status()).await;
            failed = if matches!(status, Ok(Ok(_))) {
                0
            } else {
                failed + 1
            };
            if (1..2).contains(&failed) {
                continue;
            }
            match status {
                Ok(Ok(_)) => {
                    let was_down = self.health.lock().is_ok_and(|h| h.is_err());
                    if was_down {
                        tracing::info!(endpoints = %self.endpoints, "etcd answers again");
                    }
                    self.set_health(Ok(()));
                }
                Ok(Err(e)) => self.set_health(Err(format!("etcd at {}: {e}", self.endpoints))),
                Err(_) => self.set_health(Err(format!(
                    "etcd at {}: no answer within {}s",
                    self.endpoints,
                    HEALTH_EVERY.as_secs()
                ))),
            }
        }
    }
}

/// One write as an etcd transaction: the change if the condition holds, else a read of the key.
async fn commit(kv: &mut KvClient, prefix: &str, write: RemoteWrite) -> Result<Commit, String> {
    let key = etcd_key(prefix, &write.key);
    let when: Vec<Compare> = match write.expect {
        Expect::Absent => vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)],
        Expect::Revision(r) => vec![Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            r as i64,
        )],
        _ => Vec::new(),
    };
    let change = match &write.value {
        Some(v) => TxnOp::put(key.clone(), v.clone(), None),
        None => TxnOp::delete(key.clone(), None),
    };
    let txn = Txn::new()
        .when(when)
        .and_then([change])
        .or_else([TxnOp::get(key, None)]);
    // A member that goes away mid-request fails it: the balanced channel sends the retry to
    // another. (Were the first attempt applied after all, the retry's condition fails and the
    // store recognises its own change.)
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    let mut attempt = 0;
    let resp = loop {
        attempt += 1;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, kv.txn(txn.clone())).await {
            Ok(Ok(resp)) => break resp,
            Ok(Err(e)) if attempt < 3 => {
                tracing::debug!(error = %e, attempt, "etcd: transaction failed; again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())),
        }
    };
    let ops = resp.op_responses();
    if resp.succeeded() {
        // Deleting a key that was not there makes no revision (and no event to wait for).
        if let Some(TxnOpResponse::Delete(d)) = ops.first()
            && d.deleted() == 0
        {
            return Ok(Commit::Done { revision: 0 });
        }
        let revision = resp.header().map_or(0, |h| h.revision().max(0) as u64);
        return Ok(Commit::Done { revision });
    }
    let found = match ops.first() {
        Some(TxnOpResponse::Get(g)) => g.kvs().first().cloned(),
        _ => None,
    };
    // A retry after an attempt that was made but whose answer was lost finds its own change.
    if attempt > 1 {
        match (&write.value, &found) {
            (Some(v), Some(kv)) if kv.value() == v.as_slice() => {
                return Ok(Commit::Done {
                    revision: kv.mod_revision().max(0) as u64,
                });
            }
            (None, None) => return Ok(Commit::Done { revision: 0 }),
            _ => {}
        }
    }
    Ok(Commit::Failed {
        current: found.map(|kv| kv.mod_revision().max(0) as u64),
    })
}

fn etcd_key(prefix: &str, key: &RemoteKey) -> Vec<u8> {
    match key {
        RemoteKey::Object(k) => format!("{prefix}o/{k}"),
        RemoteKey::Aux(k) => format!("{prefix}a/{k}"),
        other => format!("{prefix}x/{other:?}"),
    }
    .into_bytes()
}

fn store_key(prefix: &str, key: &[u8]) -> Option<RemoteKey> {
    let key = std::str::from_utf8(key).ok()?.strip_prefix(prefix)?;
    if let Some(k) = key.strip_prefix("o/") {
        Some(RemoteKey::Object(k.to_owned()))
    } else {
        key.strip_prefix("a/").map(|k| RemoteKey::Aux(k.to_owned()))
    }
}

/// The first key after every key starting with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datastore_urls() {
        let c = EtcdConfig::parse("etcd://127.0.0.1:2379,10.0.0.2:2379").expect("parses");
        assert_eq!(
            c.endpoints,
            ["http://127.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(c.prefix, DEFAULT_PREFIX);
        let c = EtcdConfig::parse("etcd://h:1/site-a").expect("parses");
        assert_eq!(c.prefix, "/site-a/");
        assert!(EtcdConfig::parse("http://h:1").is_err());
        assert!(EtcdConfig::parse("etcd://").is_err());
    }

    #[test]
    fn keys_round_trip() {
        let k = RemoteKey::Object("pods/default/web".into());
        let e = etcd_key("/p/", &k);
        assert_eq!(e, b"/p/o/pods/default/web");
        assert_eq!(store_key("/p/", &e), Some(k));
        assert_eq!(store_key("/p/", b"/q/o/x"), None);
        assert_eq!(prefix_end(b"/p/"), b"/p0");
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b");
    }
}
