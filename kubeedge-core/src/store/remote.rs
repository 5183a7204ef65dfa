//! A store that mirrors a datastore elsewhere (etcd, for several cloudcore replicas serving one
//! API): the objects live in the remote datastore, whose revisions are their resourceVersions;
//! each replica keeps a local copy of them (the mirror, a redb file rebuilt at every start) that
//! the remote's watch feeds ([`Store::mirror_load`], [`Store::mirror_apply`]).
//!
//! * Reads, lists and watches are served from the mirror, as from any store: the same code, the
//!   same event log and per-resource compaction marks.
//! * Writes go to the remote as one conditional change each ([`Remote::commit`]: "this key is
//!   still at the revision the mirror has", or "absent"); a write returns once its change has come
//!   back through the feed, so that whoever wrote reads it next on this replica. When the
//!   condition fails (another replica wrote first, or the mirror lagged), the write waits for the
//!   mirror to catch up and is decided again on the fresh state: a stale resourceVersion is then a
//!   [`Error::Conflict`] as it would be on one store.
//! * [`Store::batch`] commits its changes one by one, in order (each its own revision): an
//!   etcd transaction gives all its keys one revision, which a watch resuming "after version N"
//!   could not tell apart.
//!
//! The remote side (the client, its watch, reconnecting) is the implementer's; `kubeedge-cloud`
//! has one for etcd.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::ReadableTable;
use serde_json::Value;

use super::{
    AUX, EVENTS, Error, Event, EventType, Live, META, META_COMPACTED, META_MARKS_SINCE, META_RV,
    OBJECTS, Store, decode, key, log_event, set_rv, stored_rv, take,
};

/// How long a write waits for its change to come back through the feed.
const APPLY_WAIT: Duration = Duration::from_secs(30);
/// How often a write is decided again when the remote keeps refusing its condition.
const MAX_ATTEMPTS: usize = 64;
/// Mirror commits are not synced to disk (the mirror is rebuilt at every start) but for one in
/// this many, which lets redb reuse the pages the others freed.
const SYNC_EVERY: u64 = 256;

/// A key of the remote datastore, as the store names it (the remote adds its own prefix).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RemoteKey {
    /// An object: `resource/namespace/name` (namespace empty when cluster-scoped).
    Object(String),
    /// An auxiliary record (see [`BatchOp::SetAux`](super::BatchOp::SetAux)).
    Aux(String),
}

/// The condition of a [`RemoteWrite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expect {
    /// The key must not exist.
    Absent,
    /// The key must exist, last changed at this revision.
    Revision(u64),
    /// No condition.
    Any,
}

/// One conditional change of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteWrite {
    /// The key.
    pub key: RemoteKey,
    /// The new value; `None` deletes the key.
    pub value: Option<Vec<u8>>,
    /// What must hold for the change to be made.
    pub expect: Expect,
}

/// What the remote did with a [`RemoteWrite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Commit {
    /// Made, at this revision.
    Done {
        /// The change's revision.
        revision: u64,
    },
    /// The condition did not hold; nothing was written.
    Failed {
        /// The revision at which the key last changed, if it exists.
        current: Option<u64>,
    },
}

/// One change the remote's watch reported, for [`Store::mirror_apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteChange {
    /// The key.
    pub key: RemoteKey,
    /// Its new value; `None` when it was deleted.
    pub value: Option<Vec<u8>>,
    /// The revision of the change.
    pub revision: u64,
}

impl RemoteChange {
    /// A change of `key` to `value` (`None`: deleted) at `revision`.
    pub fn new(key: RemoteKey, value: Option<Vec<u8>>, revision: u64) -> RemoteChange {
        RemoteChange {
            key,
            value,
            revision,
        }
    }
}

impl RemoteWrite {
    /// A change of `key` to `value` (`None`: delete) if `expect` holds.
    pub fn new(key: RemoteKey, value: Option<Vec<u8>>, expect: Expect) -> RemoteWrite {
        RemoteWrite { key, value, expect }
    }
}

/// A datastore a [`Store`] mirrors. Calls block (the store's writes do); an implementation runs
/// its client where blocking the caller cannot stall it (its own thread or runtime).
pub trait Remote: Send + Sync + std::fmt::Debug + 'static {
    /// Makes `write` if its condition holds. [`Error::Unavailable`] when the datastore cannot
    /// be reached or did not answer in time: then nothing is known to be written.
    fn commit(&self, write: RemoteWrite) -> Result<Commit, Error>;

    /// Whether the datastore answers: `Err` says why not.
    fn health(&self) -> Result<(), String>;
}

/// What a write makes of an object, decided on the mirror's current state.
pub(super) enum Plan {
    /// Store this object.
    Put(Value),
    /// Remove it.
    Delete,
    /// Nothing to do (a batch's removal of an absent object).
    Nothing,
}

impl Store {
    /// Opens a store at `path` that mirrors `remote` (see the [module docs](self)). Whatever
    /// the file held is discarded: the content comes from [`mirror_load`](Self::mirror_load),
    /// which the feed calls first.
    pub fn mirror(
        path: &std::path::Path,
        config: super::Config,
        remote: Arc<dyn Remote>,
    ) -> Result<Store, Error> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Invalid(format!(
                    "removing the old mirror {}: {e}",
                    path.display()
                )));
            }
        }
        Store::open_with(path, config, Some(remote))
    }

    /// Whether this store mirrors a remote datastore.
    pub fn is_mirror(&self) -> bool {
        self.inner.remote.is_some()
    }

    /// Whether the store can take writes: always for a local one; for a mirror, whether its
    /// datastore answers (`Err` says why not).
    pub fn health(&self) -> Result<(), String> {
        match &self.inner.remote {
            Some(remote) => remote.health(),
            None => Ok(()),
        }
    }

    /// The remote revision the mirror has applied (0 before the first load).
    pub fn mirror_applied(&self) -> u64 {
        *super::lock(&self.inner.applied.0)
    }

    /// Replaces the mirror's content with the remote's at `revision`: `items` are every key with
    /// its value and the revision it last changed at. Watches of this store end (as
    /// [`Error::Gone`], so that their clients list again); watching resumes from `revision`.
    pub fn mirror_load(
        &self,
        revision: u64,
        items: Vec<(RemoteKey, Vec<u8>, u64)>,
    ) -> Result<(), Error> {
        self.guarded(|db| {
            let txn = db.begin_write()?;
            txn.delete_table(OBJECTS)?;
            txn.delete_table(AUX)?;
            txn.delete_table(EVENTS)?;
            txn.delete_table(META)?;
            {
                let mut objects = txn.open_table(OBJECTS)?;
                let mut aux = txn.open_table(AUX)?;
                txn.open_table(EVENTS)?;
                let mut meta = txn.open_table(META)?;
                for (k, value, changed) in items {
                    match k {
                        RemoteKey::Object(k) => match stamped(&value, changed) {
                            Some(bytes) => {
                                objects.insert(k.as_str(), bytes.as_slice())?;
                            }
                            None => tracing::warn!(key = %k, "mirror: not a JSON object, left out"),
                        },
                        RemoteKey::Aux(k) => {
                            aux.insert(k.as_str(), value.as_slice())?;
                        }
                    }
                }
                meta.insert(META_RV, revision)?;
                meta.insert(META_COMPACTED, revision)?;
                meta.insert(META_MARKS_SINCE, revision)?;
            }
            txn.commit()?;
            Ok(())
        })?;
        self.set_applied(revision);
        let _ = self.inner.live.send(Live::Reset { oldest: revision });
        Ok(())
    }

    /// Applies changes the remote's watch reported, in their order, as events (a change of an
    /// object the mirror lacks is an `ADDED`, a deletion of one it lacks nothing). `revision` is
    /// where the feed stands after them (at least the last change's).
    pub fn mirror_apply(&self, revision: u64, changes: Vec<RemoteChange>) -> Result<(), Error> {
        let before = self.mirror_applied();
        let changes: Vec<RemoteChange> = changes
            .into_iter()
            .filter(|c| c.revision > before)
            .collect();
        let revision = changes
            .iter()
            .map(|c| c.revision)
            .max()
            .unwrap_or(0)
            .max(revision);
        if revision <= before {
            return Ok(());
        }
        let _order = self.lock_ids();
        let (out, first_prev) = self.guarded(|db| {
            let mut txn = db.begin_write()?;
            if !revision.is_multiple_of(SYNC_EVERY) {
                txn.set_durability(redb::Durability::None)?;
            }
            let mut out = Vec::new();
            let prev;
            {
                let mut objects = txn.open_table(OBJECTS)?;
                let mut aux = txn.open_table(AUX)?;
                let mut events = txn.open_table(EVENTS)?;
                let mut meta = txn.open_table(META)?;
                prev = match events.last()? {
                    Some((k, _)) => k.value(),
                    None => meta.get(META_COMPACTED)?.map(|v| v.value()).unwrap_or(0),
                };
                for change in changes {
                    let event = match change.key {
                        RemoteKey::Aux(k) => {
                            match change.value {
                                Some(v) => aux.insert(k.as_str(), v.as_slice())?,
                                None => aux.remove(k.as_str())?,
                            };
                            None
                        }
                        RemoteKey::Object(k) => {
                            let Some((resource, namespace, name)) = split_key(&k) else {
                                tracing::warn!(key = %k, "mirror: not an object key, left out");
                                continue;
                            };
                            match change.value {
                                Some(value) => {
                                    let Some(bytes) = stamped(&value, change.revision) else {
                                        tracing::warn!(key = %k, "mirror: not a JSON object, left out");
                                        continue;
                                    };
                                    let existed =
                                        objects.insert(k.as_str(), bytes.as_slice())?.is_some();
                                    let kind = if existed {
                                        EventType::Modified
                                    } else {
                                        EventType::Added
                                    };
                                    Some(Event::new(
                                        kind,
                                        resource,
                                        namespace,
                                        name,
                                        change.revision,
                                        decode(&bytes)?,
                                    ))
                                }
                                None => {
                                    match take(&mut objects, &k)? {
                                        Some(mut old) => {
                                            set_rv(&mut old, change.revision);
                                            Some(Event::new(
                                                EventType::Deleted,
                                                resource,
                                                namespace,
                                                name,
                                                change.revision,
                                                old,
                                            ))
                                        }
                                        None => None,
                                    }
                                }
                            }
                        }
                    };
                    if let Some(event) = event {
                        log_event(&mut events, &event)?;
                        out.push(Arc::new(event));
                    }
                }
                self.trim_and_stamp(&mut meta, &mut events, revision)?;
            }
            txn.commit()?;
            Ok((out, prev))
        })?;
        let mut prev = first_prev;
        for event in out {
            let rv = event.rv;
            let _ = self.inner.live.send(Live::Event { prev, event });
            prev = rv;
        }
        self.set_applied(revision);
        Ok(())
    }

    fn set_applied(&self, revision: u64) {
        let (lock, waiters) = &self.inner.applied;
        let mut applied = super::lock(lock);
        *applied = (*applied).max(revision);
        waiters.notify_all();
    }

    /// Blocks until the mirror has applied `revision`.
    fn wait_applied(&self, revision: u64) -> Result<(), Error> {
        self.wait_applied_within(revision, APPLY_WAIT)
    }

    /// Blocks until the mirror has applied `revision`, up to `limit`.
    pub(super) fn wait_applied_within(&self, revision: u64, limit: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + limit;
        let (lock, waiters) = &self.inner.applied;
        let mut applied = super::lock(lock);
        while *applied < revision {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Unavailable(format!(
                    "revision {revision} has not come back through the datastore's watch within {}s (the mirror is at {}); a write made may still arrive",
                    limit.as_secs(),
                    *applied
                )));
            }
            applied = waiters
                .wait_timeout(applied, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        Ok(())
    }

    /// Blocks until the mirror's copy of an object is no longer at `seen` (the remote has it
    /// changed or gone, and the change is on its way).
    fn wait_changed(
        &self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
        seen: Option<u64>,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + APPLY_WAIT;
        loop {
            let now = match self.get(resource, namespace, name) {
                Ok(v) => Some(stored_rv(&v)),
                Err(Error::NotFound { .. }) => None,
                Err(e) => return Err(e),
            };
            if now != seen {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "{} changed in the datastore, but its watch has not brought the change within {}s",
                    key(resource, namespace, name),
                    APPLY_WAIT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Changes one object through the remote: `plan` decides on the mirror's current copy, the
    /// remote commits if that copy is still the current one, and the change comes back through
    /// the feed before this returns its event (`None` for [`Plan::Nothing`]).
    pub(super) fn remote_change(
        &self,
        remote: &Arc<dyn Remote>,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
        mut plan: impl FnMut(Option<&Value>) -> Result<Plan, Error>,
    ) -> Result<Option<Arc<Event>>, Error> {
        // A datastore known to be down fails the write at once, not after its timeouts.
        remote.health().map_err(Error::Unavailable)?;
        let k = key(resource, namespace, name);
        for _ in 0..MAX_ATTEMPTS {
            let current = match self.get(resource, namespace, name) {
                Ok(v) => Some(v),
                Err(Error::NotFound { .. }) => None,
                Err(e) => return Err(e),
            };
            let seen = current.as_ref().map(stored_rv);
            let expect = match seen {
                Some(rv) => Expect::Revision(rv),
                None => Expect::Absent,
            };
            let (kind, object, value) = match plan(current.as_ref())? {
                Plan::Nothing => return Ok(None),
                Plan::Put(mut object) => {
                    if let Some(m) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove("resourceVersion");
                    }
                    let bytes =
                        serde_json::to_vec(&object).map_err(|e| Error::Invalid(e.to_string()))?;
                    let kind = if current.is_some() {
                        EventType::Modified
                    } else {
                        EventType::Added
                    };
                    (kind, object, Some(bytes))
                }
                Plan::Delete => match current {
                    Some(old) => (EventType::Deleted, old, None),
                    None => return Ok(None),
                },
            };
            let event = |rv: u64| {
                let mut object = object.clone();
                set_rv(&mut object, rv);
                Arc::new(Event::new(kind, resource, namespace, name, rv, object))
            };
            if self.dry_run {
                return Ok(Some(event(self.mirror_applied())));
            }
            let puts = value.is_some();
            let write = RemoteWrite::new(RemoteKey::Object(k.clone()), value, expect);
            match remote.commit(write)? {
                Commit::Done { revision } => {
                    self.wait_applied(revision)?;
                    return Ok(Some(event(revision)));
                }
                Commit::Failed { current } => {
                    match current {
                        Some(revision) if Some(revision) != seen => self.wait_applied(revision)?,
                        _ => self.wait_changed(resource, namespace, name, seen)?,
                    }
                    // The remote may have made this very create already (an attempt whose
                    // answer was lost, retried by the remote): the object, with the uid made
                    // for this call, is there. Then it is done. (An update cannot be told from
                    // another writer's identical one: it is decided again, as any conflict.)
                    if let Some(revision) = current
                        && puts
                        && expect == Expect::Absent
                        && let Ok(now) = self.get(resource, namespace, name)
                        && without_rv(&now) == without_rv(&object)
                    {
                        return Ok(Some(event(revision)));
                    }
                }
            }
        }
        Err(Error::Unavailable(format!(
            "{k} kept changing in the datastore: not written after {MAX_ATTEMPTS} attempts"
        )))
    }

    /// Sets or removes an auxiliary record through the remote, unconditionally.
    pub(super) fn remote_aux(
        &self,
        remote: &Arc<dyn Remote>,
        k: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), Error> {
        if self.dry_run {
            return Ok(());
        }
        remote.health().map_err(Error::Unavailable)?;
        match remote.commit(RemoteWrite::new(
            RemoteKey::Aux(k.to_owned()),
            value,
            Expect::Any,
        ))? {
            Commit::Done { revision } => self.wait_applied(revision),
            Commit::Failed { .. } => Err(Error::Unavailable(format!(
                "the datastore refused an unconditional write of {k}"
            ))),
        }
    }

    /// [`Store::aux_init`] through the remote.
    pub(super) fn remote_aux_init(
        &self,
        remote: &Arc<dyn Remote>,
        k: &str,
        value: Vec<u8>,
    ) -> Result<Vec<u8>, Error> {
        if let Some(stored) = self.aux_get(k)? {
            return Ok(stored);
        }
        if self.dry_run {
            return Ok(value);
        }
        remote.health().map_err(Error::Unavailable)?;
        let write = RemoteWrite::new(
            RemoteKey::Aux(k.to_owned()),
            Some(value.clone()),
            Expect::Absent,
        );
        match remote.commit(write)? {
            Commit::Done { revision } => {
                self.wait_applied(revision)?;
                Ok(value)
            }
            Commit::Failed { current } => {
                self.wait_applied(current.unwrap_or(0))?;
                self.aux_get(k)?.ok_or_else(|| {
                    Error::Unavailable(format!("{k} exists in the datastore but did not arrive"))
                })
            }
        }
    }
}

/// `value` (an object's JSON) with `metadata.resourceVersion` set to `revision`; `None` when it
/// is not a JSON object with metadata.
fn stamped(value: &[u8], revision: u64) -> Option<Vec<u8>> {
    let mut object: Value = serde_json::from_slice(value).ok()?;
    object.get("metadata")?.as_object()?;
    set_rv(&mut object, revision);
    serde_json::to_vec(&object).ok()
}

/// `object` without its resourceVersion.
fn without_rv(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(m) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    object
}

/// `resource/namespace/name` apart (namespace `None` when empty).
fn split_key(k: &str) -> Option<(&str, Option<&str>, &str)> {
    let mut parts = k.splitn(3, '/');
    let resource = parts.next().filter(|s| !s.is_empty())?;
    let namespace = parts.next()?;
    let name = parts.next().filter(|s| !s.is_empty() && !s.contains('/'))?;
    Some((resource, Some(namespace).filter(|s| !s.is_empty()), name))
}
