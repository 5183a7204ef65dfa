//! A versioned object store on redb: what the embedded control plane and the edge metastore keep
//! Kubernetes objects in.
//!
//! * One monotonic resourceVersion for the whole store: every write (create, update, delete)
//!   takes the next number, stamps it into the object's `metadata.resourceVersion`, and records
//!   an event under it.
//! * Optimistic concurrency: an update carrying a resourceVersion that is not the stored one is a
//!   [`Error::Conflict`].
//! * Watch from a resourceVersion: the last [`Config::event_window`] events are kept, so a watcher
//!   resumes exactly where it left off; an older version is [`Error::Gone`] (HTTP 410), as
//!   etcd's compaction makes it upstream. The window counts every resource's events, but a watch
//!   of one resource ([`Store::watch_resource`]) resumes from any version after which none of that
//!   resource's events were dropped: a quiet kind is not re-listed because a busy one churned.
//!   A watcher that falls behind the live broadcast refills
//!   from the event log instead of losing events.
//! * Crash-safe: what a call returned is on disk. Writes that arrive while a commit is under way
//!   are committed together, in one durable redb transaction (a group commit: one fsync for
//!   many writers, each still checked, versioned and answered on its own).
//!
//! Objects are JSON values addressed by resource (plural name, with the group for non-core types:
//! `pods`, `devices.devices.kubeedge.io`), namespace (`None` when cluster-scoped) and name. The
//! Kubernetes semantics above storage (graceful deletion, defaulting, subresources) belong to the
//! API layer.
//!
//! ```no_run
//! # fn f() -> Result<(), kubeedge_core::store::Error> {
//! use kubeedge_core::store::{Config, Store};
//! let store = Store::open("/var/lib/kubeedge/objects.redb".as_ref(), Config::default())?;
//! let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}});
//! let stored = store.create("pods", Some("default"), pod)?;
//! assert_eq!(stored["metadata"]["resourceVersion"], "1");
//! # Ok(()) }
//! ```

pub mod remote;
pub mod selector;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::sync::stamp::IdGen;
pub use remote::{Commit, Expect, Remote, RemoteChange, RemoteKey, RemoteWrite};
pub use selector::{FieldSelector, LabelSelector, selector_text};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const AUX: TableDefinition<&str, &[u8]> = TableDefinition::new("aux");
const META_RV: &str = "resource_version";
const META_COMPACTED: &str = "compacted";
/// The compaction point when per-resource compaction marks began (a store written by an older
/// version has none before it).
const META_MARKS_SINCE: &str = "compacted/since";

/// The key of a resource's compaction mark: the version of its newest dropped event.
fn resource_mark(resource: &str) -> String {
    format!("compacted/r/{resource}")
}

/// An event's resource, read without building its object (serde skips it).
#[derive(Deserialize)]
struct EventResource<'a> {
    #[serde(borrow)]
    resource: std::borrow::Cow<'a, str>,
}

/// Store settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Events kept for watches that resume from a resourceVersion. Default 10,000.
    pub event_window: u64,
    /// Events buffered per live watcher before it refills from the log. Default 1,024.
    pub watch_buffer: usize,
    /// Bytes of database pages kept in memory (redb's cache). Reads beyond it come from the
    /// file, i.e. usually from the kernel's page cache, which the process's RSS does not count.
    /// Default 16 MiB (redb's own default is 1 GiB: a store that large keeps every page it has
    /// read or written in memory, up to that much).
    pub cache_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            event_window: 10_000,
            watch_buffer: 1_024,
            cache_bytes: 16 << 20,
        }
    }
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database file could not be opened (missing directory, not a redb file, corrupt).
    #[error("opening the store at {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: redb::DatabaseError,
    },
    /// A read or write failed.
    #[error("store I/O")]
    Db(#[source] Box<redb::Error>),
    /// No such object.
    #[error("{resource} {name:?} not found")]
    NotFound {
        /// The resource.
        resource: String,
        /// The name.
        name: String,
    },
    /// An object with that name exists.
    #[error("{resource} {name:?} already exists")]
    AlreadyExists {
        /// The resource.
        resource: String,
        /// The name.
        name: String,
    },
    /// The caller's resourceVersion is not the stored one.
    #[error("{resource} {name:?}: resourceVersion {given} is stale (now {current})")]
    Conflict {
        /// The resource.
        resource: String,
        /// The name.
        name: String,
        /// The version the caller gave.
        given: String,
        /// The stored version.
        current: u64,
    },
    /// The object cannot be stored as given.
    #[error("invalid object: {0}")]
    Invalid(String),
    /// The requested resourceVersion is older than the oldest event kept.
    #[error("resourceVersion {requested} is too old (oldest kept: {oldest})")]
    Gone {
        /// What was asked for.
        requested: u64,
        /// The oldest version a watch may start from.
        oldest: u64,
    },
    /// Stored bytes are not what the store wrote.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The datastore a mirror writes to ([`Store::mirror`]) is down, did not answer, or its
    /// change did not come back (the message says which).
    #[error("datastore unavailable: {0}")]
    Unavailable(String),
}

impl<E: Into<redb::Error>> From<E> for Error {
    fn from(e: E) -> Self {
        Error::Db(Box::new(e.into()))
    }
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Deleted (`object` is its last state).
    Deleted,
}

/// One change, as watches deliver it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The resource.
    pub resource: String,
    /// The namespace; `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// The object name.
    pub name: String,
    /// The store's resourceVersion after the change.
    pub rv: u64,
    /// The object after the change (before it, for a delete).
    pub object: Value,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The objects, in key order.
    pub items: Vec<Value>,
    /// The store's resourceVersion when the page was read.
    pub rv: u64,
    /// Where the next page starts, when `limit` cut this one short.
    pub continue_after: Option<String>,
}

struct Inner {
    /// The open database; `None` only while it is being opened again after an I/O error.
    db: std::sync::RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    config: Config,
    live: broadcast::Sender<Live>,
    /// Held across commit and broadcast so that live events go out in version order.
    write: Mutex<IdGen>,
    /// Changes waiting for the next group commit ([`Store::write`]).
    pending: Mutex<Vec<Pending>>,
    /// The datastore this store mirrors ([`Store::mirror`]): writes go there, and come back
    /// through [`Store::mirror_apply`].
    remote: Option<Arc<dyn Remote>>,
    /// The remote revision applied so far (mirrors only), and its waiters.
    applied: (Mutex<u64>, std::sync::Condvar),
}

/// What the live broadcast carries.
#[derive(Debug, Clone)]
enum Live {
    /// An event, and the version of the event before it (versions need not be contiguous: a
    /// mirror's are the remote's revisions).
    Event { prev: u64, event: Arc<Event> },
    /// The content was replaced ([`Store::mirror_load`]): every watch ends, as `Gone`.
    Reset { oldest: u64 },
}

/// One change of a [`Store::batch`].
#[derive(Debug, Clone, PartialEq)]
pub enum BatchOp {
    /// Creates or replaces an object as given, keeping the metadata it carries (uid,
    /// creationTimestamp, labels: a copy of an object owned elsewhere, e.g. the cloud's); only
    /// `resourceVersion` is the store's. A missing uid or creationTimestamp is filled in.
    Put {
        /// Store resource name (`pods`, `endpointslices.discovery.k8s.io`, ...).
        resource: String,
        /// Namespace, `None` for cluster-scoped objects.
        namespace: Option<String>,
        /// The object; `metadata.name` is required.
        object: Value,
    },
    /// Removes an object; nothing happens if it is absent.
    Remove {
        /// Store resource name.
        resource: String,
        /// Namespace.
        namespace: Option<String>,
        /// Name.
        name: String,
    },
    /// Sets an auxiliary record: bookkeeping kept beside the objects and committed with them.
    SetAux {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
    },
    /// Removes an auxiliary record.
    RemoveAux {
        /// Key.
        key: String,
    },
}

impl BatchOp {
    /// Whether the op can be applied (a `Put` needs an object with a valid `metadata.name`).
    pub fn check(&self) -> Result<(), Error> {
        match self {
            BatchOp::Put { object, .. } => {
                if !object.get("metadata").is_some_and(Value::is_object) {
                    return Err(Error::Invalid("metadata must be an object".into()));
                }
                validate_name(
                    object
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                )
            }
            BatchOp::Remove { name, .. } => validate_name(name),
            BatchOp::SetAux { .. } | BatchOp::RemoveAux { .. } => Ok(()),
        }
    }
}

/// The store. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    /// Writes are checked and answered but never committed (see [`Store::dry_run`]).
    dry_run: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("config", &self.inner.config)
            .finish()
    }
}

fn key(resource: &str, namespace: Option<&str>, name: &str) -> String {
    format!("{resource}/{}/{name}", namespace.unwrap_or(""))
}

fn prefix(resource: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{resource}/{ns}/"),
        None => format!("{resource}/"),
    }
}

fn decode(bytes: &[u8]) -> Result<Value, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(e.to_string()))
}

fn stored_rv(object: &Value) -> u64 {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The civil date (year, month, day) of a day counted from 1970-01-01 (Howard Hinnant's
/// algorithm).
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// RFC 3339 in UTC with second precision, as Kubernetes writes timestamps.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// The error for a file redb panicked on.
fn damaged(path: &Path, panic: &(dyn std::any::Any + Send)) -> Error {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    Error::Corrupt(format!("{} is damaged: {what}", path.display()))
}

fn open_database(path: &Path, config: &Config) -> Result<Database, Error> {
    std::panic::catch_unwind(|| open_database_unguarded(path, config))
        .unwrap_or_else(|panic| Err(damaged(path, panic.as_ref())))
}

fn open_database_unguarded(path: &Path, config: &Config) -> Result<Database, Error> {
    let db = Database::builder()
        .set_cache_size(config.cache_bytes)
        .create(path)
        .map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })?;
    let txn = db.begin_write()?;
    {
        txn.open_table(OBJECTS)?;
        txn.open_table(EVENTS)?;
        txn.open_table(META)?;
        txn.open_table(AUX)?;
    }
    txn.commit()?;
    Ok(db)
}

impl Store {
    /// How many handles (clones of this store, dry-run ones included) are alive: the file is
    /// closed when the last one goes.
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// A handle whose writes ([`create`](Self::create), [`update`](Self::update),
    /// [`delete`](Self::delete), [`batch`](Self::batch)) run every check and return what they would
    /// have stored, but commit nothing and wake no watch: the API's `dryRun=All`.
    pub fn dry_run(&self) -> Store {
        Store {
            inner: self.inner.clone(),
            dry_run: true,
        }
    }

    /// A name for an object with `metadata.generateName: base`, as [`create`](Self::create) makes
    /// one (for a caller that must know the name before the object is stored).
    #[cfg_attr(not(feature = "kubeapi"), allow(dead_code))]
    pub(crate) fn generate_name(&self, base: &str) -> String {
        generated_name(base, &mut self.lock_ids())
    }

    /// Whether this is a [`dry_run`](Self::dry_run) handle.
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    /// Lets go of this handle and waits, up to `limit`, until every other handle is gone too
    /// (server connections and watchers still winding down), so that the file is closed and can
    /// be opened again, in this process or another. `false` when other handles remained after
    /// `limit`.
    pub async fn close(self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let inner = Arc::downgrade(&self.inner);
        drop(self);
        while inner.strong_count() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        true
    }

    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path, config: Config) -> Result<Store, Error> {
        Store::open_with(path, config, None)
    }

    fn open_with(
        path: &Path,
        config: Config,
        remote: Option<Arc<dyn Remote>>,
    ) -> Result<Store, Error> {
        let db = open_database(path, &config)?;
        let (live, _) = broadcast::channel(config.watch_buffer.max(1));
        Ok(Store {
            dry_run: false,
            inner: Arc::new(Inner {
                db: std::sync::RwLock::new(Some(Arc::new(db))),
                path: path.to_owned(),
                config,
                live,
                write: Mutex::new(IdGen::new(crate::sync::stamp::random_seed())),
                pending: Mutex::new(Vec::new()),
                remote,
                applied: (Mutex::new(0), std::sync::Condvar::new()),
            }),
        })
    }

    /// The open database (opened again first if an I/O error closed it).
    fn db(&self) -> Result<Arc<Database>, Error> {
        if let Some(db) = self
            .inner
            .db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            return Ok(db.clone());
        }
        let mut slot = self
            .inner
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let db = Arc::new(open_database(&self.inner.path, &self.inner.config)?);
        *slot = Some(db.clone());
        Ok(db)
    }

    /// Runs `f` on the database. After an I/O error (a full disk, a failing device) redb refuses
    /// every later call on that handle until it is opened again, even once the cause is gone; so
    /// the handle is closed here and the next call opens the file again (redb checks and repairs
    /// it then). What was committed before stays; what failed was not acknowledged.
    ///
    /// A damaged file can make redb itself panic on a page it cannot make sense of; that is
    /// caught here and answered as [`Error::Corrupt`] (and the handle closed the same way), so
    /// that a bad file is an error for the caller, never a crash of the process.
    fn guarded<T>(&self, f: impl FnOnce(&Database) -> Result<T, Error>) -> Result<T, Error> {
        let db = self.db()?;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&db)))
            .unwrap_or_else(|panic| Err(damaged(&self.inner.path, panic.as_ref())));
        let broken = match &result {
            Err(Error::Db(e)) => matches!(**e, redb::Error::Io(_) | redb::Error::PreviousIo),
            Err(Error::Corrupt(_)) => true,
            _ => false,
        };
        if broken {
            self.close_after_io_error(db);
        }
        result
    }

    fn close_after_io_error(&self, failed: Arc<Database>) {
        let mut slot = self
            .inner
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !slot.as_ref().is_some_and(|db| Arc::ptr_eq(db, &failed)) {
            // Someone else closed it already.
            return;
        }
        drop(failed);
        // Calls that took the handle before are failing too; they let go of it in a moment
        // (new ones wait on the lock held here). The file is closed when the last one does.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while slot.as_ref().is_some_and(|db| Arc::strong_count(db) > 1)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        tracing::warn!(path = %self.inner.path.display(), "store: I/O error, the database is opened again on the next call");
        *slot = None;
    }

    /// The current resourceVersion (that of the last write; 0 for an empty store).
    pub fn resource_version(&self) -> Result<u64, Error> {
        self.guarded(|db| {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            Ok(meta.get(META_RV)?.map(|v| v.value()).unwrap_or(0))
        })
    }

    /// The oldest resourceVersion a watch may resume from.
    pub fn oldest_watchable(&self) -> Result<u64, Error> {
        self.guarded(|db| {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            Ok(meta.get(META_COMPACTED)?.map(|v| v.value()).unwrap_or(0))
        })
    }

    /// One object.
    pub fn get(&self, resource: &str, namespace: Option<&str>, name: &str) -> Result<Value, Error> {
        self.guarded(|db| {
            let txn = db.begin_read()?;
            let objects = txn.open_table(OBJECTS)?;
            match objects.get(key(resource, namespace, name).as_str())? {
                Some(v) => decode(v.value()),
                None => Err(Error::NotFound {
                    resource: resource.to_owned(),
                    name: name.to_owned(),
                }),
            }
        })
    }

    /// Every object of `resource` (in `namespace`, or in all namespaces) that the selectors match,
    /// with the resourceVersion of that consistent snapshot.
    pub fn list(
        &self,
        resource: &str,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Result<(Vec<Value>, u64), Error> {
        let page = self.list_page(resource, namespace, labels, fields, None, None)?;
        Ok((page.items, page.rv))
    }

    /// Every object of `resource` (in `namespace`, if given), unfiltered.
    pub fn list_all(&self, resource: &str, namespace: Option<&str>) -> Result<Vec<Value>, Error> {
        self.list(
            resource,
            namespace,
            &LabelSelector::default(),
            &FieldSelector::default(),
        )
        .map(|(items, _)| items)
    }

    /// Like [`list`](Self::list), at most `limit` objects, starting after the key `after` (a
    /// previous page's `continue_after`). Each page is a consistent snapshot of its own.
    pub fn list_page(
        &self,
        resource: &str,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
        after: Option<&str>,
    ) -> Result<Page, Error> {
        self.guarded(|db| {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            let rv = meta.get(META_RV)?.map(|v| v.value()).unwrap_or(0);
            let objects = txn.open_table(OBJECTS)?;
            let prefix = prefix(resource, namespace);
            let start = match after {
                Some(a) if a.starts_with(&prefix) => a.to_owned(),
                Some(_) => return Err(Error::Invalid("continue token from another list".into())),
                None => prefix.clone(),
            };
            let mut items = Vec::new();
            let mut continue_after = None;
            for entry in objects.range(start.as_str()..)? {
                let (k, v) = entry?;
                let k = k.value();
                if !k.starts_with(&prefix) {
                    break;
                }
                if after == Some(k) {
                    continue;
                }
                let object = decode(v.value())?;
                if !labels.matches(&object) || !fields.matches(&object) {
                    continue;
                }
                if limit.is_some_and(|l| items.len() >= l) {
                    continue_after = last_key(resource, namespace, &items);
                    break;
                }
                items.push(object);
            }
            Ok(Page {
                items,
                rv,
                continue_after,
            })
        })
    }

    /// Creates an object. Sets `metadata.uid`, `creationTimestamp`, `generation` (1) and
    /// `resourceVersion`; a `generateName` without a `name` gets a random suffix.
    pub fn create(
        &self,
        resource: &str,
        namespace: Option<&str>,
        mut object: Value,
    ) -> Result<Value, Error> {
        let meta = object
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| Error::Invalid("metadata must be an object".into()))?;
        let mut ids = self.lock_ids();
        if meta
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            let base = meta
                .get("generateName")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    Error::Invalid("metadata.name or metadata.generateName is required".into())
                })?;
            meta.insert("name".into(), Value::String(generated_name(base, &mut ids)));
        }
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        validate_name(&name)?;
        if let Some(ns) = namespace {
            meta.insert("namespace".into(), Value::String(ns.to_owned()));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), Value::String(ids.next_id()));
        meta.insert(
            "creationTimestamp".into(),
            Value::String(rfc3339(SystemTime::now())),
        );
        meta.insert("generation".into(), Value::from(1));
        drop(ids);
        if let Some(remote) = &self.inner.remote {
            return self
                .remote_change(
                    remote,
                    resource,
                    namespace,
                    &name,
                    |current| match current {
                        Some(_) => Err(Error::AlreadyExists {
                            resource: resource.to_owned(),
                            name: name.clone(),
                        }),
                        None => Ok(remote::Plan::Put(object.clone())),
                    },
                )
                .map(changed_object);
        }
        let k = key(resource, namespace, &name);
        let (resource, namespace) = (resource.to_owned(), namespace.map(str::to_owned));
        self.write(move |objects, rv| {
            if objects.get(k.as_str())?.is_some() {
                return Err(Error::AlreadyExists { resource, name });
            }
            set_rv(&mut object, rv);
            objects.insert(
                k.as_str(),
                serde_json::to_vec(&object).unwrap_or_default().as_slice(),
            )?;
            Ok(Event::new(
                EventType::Added,
                &resource,
                namespace.as_deref(),
                &name,
                rv,
                object,
            ))
        })
        .map(|ev| ev.object.clone())
    }

    /// Creates `object` unless one of its name is stored already (that one is left as it is);
    /// whether it created it. Looks first, so that an object that is there costs no write.
    pub fn create_if_missing(
        &self,
        resource: &str,
        namespace: Option<&str>,
        object: Value,
    ) -> Result<bool, Error> {
        let name = object_name(&object);
        match self.get(resource, namespace, &name) {
            Ok(_) => return Ok(false),
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        match self.create(resource, namespace, object) {
            Ok(_) => Ok(true),
            Err(Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Replaces an object. If `object` carries a `metadata.resourceVersion`, it must be the stored
    /// one. `uid` and `creationTimestamp` are kept; `generation` goes up when anything outside
    /// `metadata` and `status` changed.
    pub fn update(
        &self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
        mut object: Value,
    ) -> Result<Value, Error> {
        if !object.get("metadata").is_some_and(Value::is_object) {
            return Err(Error::Invalid("metadata must be an object".into()));
        }
        if object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .is_some_and(|n| n != name)
        {
            return Err(Error::Invalid(format!(
                "metadata.name does not match {name:?}"
            )));
        }
        let given = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        if let Some(remote) = &self.inner.remote {
            // A version read on another replica may be ahead of this mirror: catch up to it
            // (briefly) before judging it stale.
            if let Some(g) = given.as_deref().and_then(|g| g.parse::<u64>().ok()) {
                let _ = self.wait_applied_within(g, std::time::Duration::from_secs(2));
            }
            return self
                .remote_change(remote, resource, namespace, name, |current| {
                    let old = current.ok_or_else(|| not_found(resource, name))?;
                    check_version(old, given.as_deref(), resource, name)?;
                    let mut object = object.clone();
                    carry_metadata(old, &mut object, name, namespace);
                    Ok(remote::Plan::Put(object))
                })
                .map(changed_object);
        }
        let k = key(resource, namespace, name);
        let (resource, namespace, name) = (
            resource.to_owned(),
            namespace.map(str::to_owned),
            name.to_owned(),
        );
        self.write(move |objects, rv| {
            let namespace = namespace.as_deref();
            let old = load(objects, &k, &resource, &name)?;
            check_version(&old, given.as_deref(), &resource, &name)?;
            carry_metadata(&old, &mut object, &name, namespace);
            set_rv(&mut object, rv);
            objects.insert(
                k.as_str(),
                serde_json::to_vec(&object).unwrap_or_default().as_slice(),
            )?;
            Ok(Event::new(
                EventType::Modified,
                &resource,
                namespace,
                &name,
                rv,
                object,
            ))
        })
        .map(|ev| ev.object.clone())
    }

    /// Removes an object; with `precondition_rv`, only if it is still at that version. Returns its
    /// last state, stamped with the deletion's resourceVersion.
    pub fn delete(
        &self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
        precondition_rv: Option<u64>,
    ) -> Result<Value, Error> {
        let precondition = precondition_rv.map(|pre| pre.to_string());
        if let Some(remote) = &self.inner.remote {
            if let Some(pre) = precondition_rv {
                let _ = self.wait_applied_within(pre, std::time::Duration::from_secs(2));
            }
            return self
                .remote_change(remote, resource, namespace, name, |current| {
                    let old = current.ok_or_else(|| not_found(resource, name))?;
                    check_version(old, precondition.as_deref(), resource, name)?;
                    Ok(remote::Plan::Delete)
                })
                .map(changed_object);
        }
        let k = key(resource, namespace, name);
        let (resource, namespace, name) = (
            resource.to_owned(),
            namespace.map(str::to_owned),
            name.to_owned(),
        );
        self.write(move |objects, rv| {
            let mut old = load(objects, &k, &resource, &name)?;
            check_version(&old, precondition.as_deref(), &resource, &name)?;
            objects.remove(k.as_str())?;
            set_rv(&mut old, rv);
            Ok(Event::new(
                EventType::Deleted,
                &resource,
                namespace.as_deref(),
                &name,
                rv,
                old,
            ))
        })
        .map(|ev| ev.object.clone())
    }

    /// Every event after `rv`, oldest first; [`Error::Gone`] if some were already dropped.
    pub fn events_since(&self, rv: u64) -> Result<Vec<Arc<Event>>, Error> {
        self.events_after(rv, None).map(|(events, _)| events)
    }

    /// Every event kept after `rv`, oldest first, and the version of the last event read;
    /// [`Error::Gone`] if some were already dropped. With `resource`, only that resource's events
    /// (the others are skipped without being decoded: a watcher of a quiet kind that fell behind a
    /// busy one reads past the busy one's objects instead of building each), and `Gone` only if
    /// some of that resource's were dropped.
    fn events_after(
        &self,
        rv: u64,
        resource: Option<&str>,
    ) -> Result<(Vec<Arc<Event>>, u64), Error> {
        self.guarded(|db| {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            let compacted = meta.get(META_COMPACTED)?.map(|v| v.value()).unwrap_or(0);
            let resumable = |resource: &str| -> Result<bool, Error> {
                let since = meta.get(META_MARKS_SINCE)?.map_or(u64::MAX, |v| v.value());
                let mark = meta
                    .get(resource_mark(resource).as_str())?
                    .map_or(0, |v| v.value());
                Ok(rv >= since && mark <= rv)
            };
            if rv < compacted && !resource.map(resumable).transpose()?.unwrap_or(false) {
                return Err(Error::Gone {
                    requested: rv,
                    oldest: compacted,
                });
            }
            let events = txn.open_table(EVENTS)?;
            let mut out = Vec::new();
            let mut read = rv;
            for entry in events.range(rv + 1..)? {
                let (k, v) = entry?;
                read = read.max(k.value());
                let bytes = v.value();
                if let Some(wanted) = resource {
                    let of = serde_json::from_slice::<EventResource>(bytes)
                        .map_err(|e| Error::Corrupt(e.to_string()))?;
                    if of.resource != wanted {
                        continue;
                    }
                }
                let ev: Event =
                    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(e.to_string()))?;
                out.push(Arc::new(ev));
            }
            Ok((out, read))
        })
    }

    /// Watches every change after `rv` (all resources; filter on the events).
    pub fn watch(&self, rv: u64) -> Result<Watch, Error> {
        self.watch_from(rv, None)
    }

    /// Watches the changes of `resource` after `rv` (only its events come; [`Watch::last_rv`]
    /// still moves past the others'). It may resume from a version older than the window's when
    /// none of `resource`'s events after it were dropped.
    pub fn watch_resource(&self, rv: u64, resource: &str) -> Result<Watch, Error> {
        self.watch_from(rv, Some(resource))
    }

    fn watch_from(&self, rv: u64, resource: Option<&str>) -> Result<Watch, Error> {
        // Subscribe before reading the log, so nothing falls between the two.
        let live = self.inner.live.subscribe();
        let (backlog, read) = self.events_after(rv, resource)?;
        Ok(Watch {
            store: self.clone(),
            live,
            backlog: backlog.into(),
            read,
            last: rv,
            resource: resource.map(str::to_owned),
        })
    }

    /// Applies `ops` in one durable transaction (one fsync): a group commit. Each object change gets
    /// its own resourceVersion, in order, and its event; auxiliary records commit with them. Every
    /// op is checked first ([`BatchOp::check`]); if any is invalid nothing is written.
    pub fn batch(&self, ops: Vec<BatchOp>) -> Result<Vec<Arc<Event>>, Error> {
        for op in &ops {
            op.check()?;
        }
        if let Some(remote) = &self.inner.remote {
            return self.remote_batch(remote, ops);
        }
        let mut ids = self.lock_ids();
        self.batch_locked(&mut ids, ops)
    }

    /// [`batch`](Self::batch) of checked ops, the write lock held.
    fn batch_locked(&self, ids: &mut IdGen, ops: Vec<BatchOp>) -> Result<Vec<Arc<Event>>, Error> {
        self.guarded(|db| {
            let txn = db.begin_write()?;
            let mut out = Vec::new();
            {
                let mut meta = txn.open_table(META)?;
                let mut rv = meta.get(META_RV)?.map(|v| v.value()).unwrap_or(0);
                let mut objects = txn.open_table(OBJECTS)?;
                let mut aux = txn.open_table(AUX)?;
                let mut events = txn.open_table(EVENTS)?;
                for op in ops {
                    let event = match op {
                        BatchOp::Put {
                            resource,
                            namespace,
                            mut object,
                        } => {
                            let ns = namespace.as_deref();
                            let name = object_name(&object);
                            let k = key(&resource, ns, &name);
                            let existed = objects.get(k.as_str())?.is_some();
                            rv += 1;
                            fill_put_metadata(&mut object, ns, || ids.next_id());
                            set_rv(&mut object, rv);
                            objects.insert(
                                k.as_str(),
                                serde_json::to_vec(&object).unwrap_or_default().as_slice(),
                            )?;
                            let kind = if existed {
                                EventType::Modified
                            } else {
                                EventType::Added
                            };
                            Some(Event::new(kind, &resource, ns, &name, rv, object))
                        }
                        BatchOp::Remove {
                            resource,
                            namespace,
                            name,
                        } => {
                            let ns = namespace.as_deref();
                            let k = key(&resource, ns, &name);
                            match take(&mut objects, &k)? {
                                Some(mut old) => {
                                    rv += 1;
                                    set_rv(&mut old, rv);
                                    Some(Event::new(
                                        EventType::Deleted,
                                        &resource,
                                        ns,
                                        &name,
                                        rv,
                                        old,
                                    ))
                                }
                                None => None,
                            }
                        }
                        BatchOp::SetAux { key, value } => {
                            aux.insert(key.as_str(), value.as_slice())?;
                            None
                        }
                        BatchOp::RemoveAux { key } => {
                            aux.remove(key.as_str())?;
                            None
                        }
                    };
                    if let Some(event) = event {
                        log_event(&mut events, &event)?;
                        out.push(Arc::new(event));
                    }
                }
                self.trim_and_stamp(&mut meta, &mut events, rv)?;
            }
            if self.dry_run {
                txn.abort()?;
                return Ok(out);
            }
            txn.commit()?;
            for event in &out {
                let _ = self.inner.live.send(Live::Event {
                    prev: event.rv - 1,
                    event: event.clone(),
                });
            }
            Ok(out)
        })
    }

    /// The auxiliary record `key`, stored as `value` first if there is none: whichever value
    /// was stored first is the one every caller gets (for a mirror, across every replica
    /// writing to its datastore at once).
    pub fn aux_init(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, Error> {
        if let Some(remote) = &self.inner.remote {
            return self.remote_aux_init(remote, key, value);
        }
        let mut ids = self.lock_ids();
        if let Some(stored) = self.aux_get(key)? {
            return Ok(stored);
        }
        if !self.dry_run {
            self.batch_locked(
                &mut ids,
                vec![BatchOp::SetAux {
                    key: key.to_owned(),
                    value: value.clone(),
                }],
            )?;
        }
        Ok(value)
    }

    /// A batch through the remote: each change on its own, in order.
    fn remote_batch(
        &self,
        remote: &Arc<dyn Remote>,
        ops: Vec<BatchOp>,
    ) -> Result<Vec<Arc<Event>>, Error> {
        let mut out = Vec::new();
        for op in ops {
            let event = match op {
                BatchOp::Put {
                    resource,
                    namespace,
                    object,
                } => {
                    let ns = namespace.as_deref();
                    let name = object_name(&object);
                    // One uid for every attempt: a retried create recognises its own object.
                    let uid = self.lock_ids().next_id();
                    self.remote_change(remote, &resource, ns, &name, |_| {
                        let mut object = object.clone();
                        fill_put_metadata(&mut object, ns, || uid.clone());
                        Ok(remote::Plan::Put(object))
                    })?
                }
                BatchOp::Remove {
                    resource,
                    namespace,
                    name,
                } => self.remote_change(remote, &resource, namespace.as_deref(), &name, |c| {
                    Ok(match c {
                        Some(_) => remote::Plan::Delete,
                        None => remote::Plan::Nothing,
                    })
                })?,
                BatchOp::SetAux { key, value } => {
                    self.remote_aux(remote, &key, Some(value))?;
                    None
                }
                BatchOp::RemoveAux { key } => {
                    self.remote_aux(remote, &key, None)?;
                    None
                }
            };
            out.extend(event);
        }
        Ok(out)
    }

    /// An auxiliary record (see [`BatchOp::SetAux`]).
    pub fn aux_get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.guarded(|db| {
            let txn = db.begin_read()?;
            let aux = txn.open_table(AUX)?;
            Ok(aux.get(key)?.map(|v| v.value().to_vec()))
        })
    }

    /// Every auxiliary record whose key starts with `prefix`, in key order.
    pub fn aux_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, Error> {
        self.guarded(|db| {
            let txn = db.begin_read()?;
            let aux = txn.open_table(AUX)?;
            let mut out = Vec::new();
            for entry in aux.range(prefix..)? {
                let (k, v) = entry?;
                if !k.value().starts_with(prefix) {
                    break;
                }
                out.push((k.value().to_owned(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    /// Ends a write transaction's log: drops the oldest events beyond the event window and
    /// records the new resourceVersion and the compaction point.
    fn trim_and_stamp(
        &self,
        meta: &mut redb::Table<&str, u64>,
        events: &mut redb::Table<u64, &[u8]>,
        rv: u64,
    ) -> Result<(), Error> {
        let window = self.inner.config.event_window.max(1);
        let mut compacted = meta.get(META_COMPACTED)?.map(|v| v.value()).unwrap_or(0);
        if meta.get(META_MARKS_SINCE)?.is_none() {
            meta.insert(META_MARKS_SINCE, compacted)?;
        }
        while rv.saturating_sub(compacted) > window {
            let Some((first, value)) = events.pop_first()? else {
                break;
            };
            compacted = compacted.max(first.value());
            if let Ok(ev) = serde_json::from_slice::<EventResource>(value.value()) {
                meta.insert(resource_mark(&ev.resource).as_str(), first.value())?;
            }
        }
        meta.insert(META_COMPACTED, compacted)?;
        meta.insert(META_RV, rv)?;
        Ok(())
    }

    fn lock_ids(&self) -> std::sync::MutexGuard<'_, IdGen> {
        lock(&self.inner.write)
    }

    /// One object change, durable when this returns: `change` changes `objects` at the version it
    /// is given and says what happened; the event is logged, old events trimmed, and the event
    /// broadcast after the commit. A change must write nothing when it fails (check, then write),
    /// unless with a storage error ([`Error::Db`], [`Error::Corrupt`]).
    ///
    /// A group commit: changes that arrive while another commit is under way wait for it, then
    /// the first of them to take the write lock commits them all in one transaction (one fsync),
    /// each at its own version, in the order they arrived. A change that fails alone (a conflict,
    /// a missing object) fails alone; a storage error fails the whole group, and nothing of it is
    /// written.
    fn write(
        &self,
        change: impl FnOnce(&mut redb::Table<&str, &[u8]>, u64) -> Result<Event, Error> + Send + 'static,
    ) -> Result<Arc<Event>, Error> {
        if self.dry_run {
            let _order = self.lock_ids();
            return self.guarded(|db| {
                let txn = db.begin_write()?;
                let event = {
                    let meta = txn.open_table(META)?;
                    let rv = meta.get(META_RV)?.map(|v| v.value()).unwrap_or(0) + 1;
                    let mut objects = txn.open_table(OBJECTS)?;
                    change(&mut objects, rv)?
                };
                txn.abort()?;
                Ok(Arc::new(event))
            });
        }
        let answer: Arc<Answer> = Arc::default();
        lock(&self.inner.pending).push(Pending {
            change: Box::new(change),
            answer: answer.clone(),
        });
        let order = self.lock_ids();
        // A commit that took the lock first may have committed this change with its own.
        let group = std::mem::take(&mut *lock(&self.inner.pending));
        if !group.is_empty() {
            self.commit_group(group);
        }
        drop(order);
        lock(&answer)
            .take()
            .unwrap_or_else(|| Err(Error::Invalid("the change was not committed".into())))
    }

    /// Commits `group` in one transaction and answers each change (the write lock held).
    fn commit_group(&self, group: Vec<Pending>) {
        tracing::trace!(changes = group.len(), "group commit");
        let answers: Vec<Arc<Answer>> = group.iter().map(|p| p.answer.clone()).collect();
        let outcome = self.guarded(|db| {
            let txn = db.begin_write()?;
            let mut done = Vec::with_capacity(group.len());
            let mut changed = false;
            {
                let mut meta = txn.open_table(META)?;
                let mut rv = meta.get(META_RV)?.map(|v| v.value()).unwrap_or(0);
                let mut objects = txn.open_table(OBJECTS)?;
                let mut events = txn.open_table(EVENTS)?;
                for pending in group {
                    match (pending.change)(&mut objects, rv + 1) {
                        Ok(event) => {
                            log_event(&mut events, &event)?;
                            rv += 1;
                            changed = true;
                            done.push(Ok(Arc::new(event)));
                        }
                        Err(e @ (Error::Db(_) | Error::Corrupt(_))) => return Err(e),
                        Err(e) => done.push(Err(e)),
                    }
                }
                if changed {
                    self.trim_and_stamp(&mut meta, &mut events, rv)?;
                }
            }
            if changed {
                txn.commit()?;
            } else {
                txn.abort()?;
            }
            Ok(done)
        });
        match outcome {
            Ok(done) => {
                for (answer, result) in answers.iter().zip(done) {
                    if let Ok(event) = &result {
                        let _ = self.inner.live.send(Live::Event {
                            prev: event.rv - 1,
                            event: event.clone(),
                        });
                    }
                    *lock(answer) = Some(result);
                }
            }
            Err(e) => {
                for answer in &answers {
                    *lock(answer) = Some(Err(e.copy()));
                }
            }
        }
    }
}

/// Where a change waiting for a group commit gets its answer.
type Answer = Mutex<Option<Result<Arc<Event>, Error>>>;

/// A change of one object at the version it is given (see [`Store::write`]).
type Change =
    Box<dyn FnOnce(&mut redb::Table<&str, &[u8]>, u64) -> Result<Event, Error> + Send + 'static>;

/// A change waiting for a group commit.
struct Pending {
    change: Change,
    answer: Arc<Answer>,
}

/// `m` locked; a poisoned lock only means a holder panicked, and what it guards stays usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Error {
    /// The same failure, for every change of a group commit that failed as a whole.
    fn copy(&self) -> Error {
        match self {
            Error::Corrupt(m) => Error::Corrupt(m.clone()),
            Error::Db(e) => {
                let io = match &**e {
                    redb::Error::Io(io) => std::io::Error::new(io.kind(), io.to_string()),
                    other => std::io::Error::other(other.to_string()),
                };
                Error::Db(Box::new(redb::Error::Io(io)))
            }
            other => Error::Invalid(other.to_string()),
        }
    }
}

/// `base` with a random five-character suffix, as `metadata.generateName` asks.
fn generated_name(base: &str, ids: &mut IdGen) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = (0..5)
        .map(|_| ALPHABET[(ids.next_u64() % ALPHABET.len() as u64) as usize] as char)
        .collect();
    format!("{base}{suffix}")
}

/// A stale-version conflict unless `given` (a caller's resourceVersion, if any) is `old`'s.
fn check_version(
    old: &Value,
    given: Option<&str>,
    resource: &str,
    name: &str,
) -> Result<(), Error> {
    let current = stored_rv(old);
    match given {
        Some(given) if given.parse::<u64>().ok() != Some(current) => Err(Error::Conflict {
            resource: resource.to_owned(),
            name: name.to_owned(),
            given: given.to_owned(),
            current,
        }),
        _ => Ok(()),
    }
}

/// The object of a change's event (nothing when there was no change).
fn changed_object(event: Option<Arc<Event>>) -> Value {
    event.map(|e| e.object.clone()).unwrap_or_default()
}

/// `metadata.name`, empty when missing.
fn object_name(object: &Value) -> String {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// What a [`BatchOp::Put`] stores beside the object's own metadata: its namespace (none when
/// cluster-scoped) and, when it carries none, a `uid` (from `uid`) and a creation time.
fn fill_put_metadata(object: &mut Value, namespace: Option<&str>, uid: impl FnOnce() -> String) {
    if let Some(m) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        match namespace {
            Some(ns) => m.insert("namespace".into(), Value::String(ns.into())),
            None => m.remove("namespace"),
        };
        m.entry("uid").or_insert_with(|| Value::String(uid()));
        m.entry("creationTimestamp")
            .or_insert_with(|| Value::String(rfc3339(SystemTime::now())));
    }
}

/// Records `event` in the event log, under its version.
fn log_event(events: &mut redb::Table<u64, &[u8]>, event: &Event) -> Result<(), Error> {
    let bytes = serde_json::to_vec(event).map_err(|e| Error::Invalid(e.to_string()))?;
    events.insert(event.rv, bytes.as_slice())?;
    Ok(())
}

/// Removes `k` from `objects`: its last state, if it was there.
fn take(objects: &mut redb::Table<&str, &[u8]>, k: &str) -> Result<Option<Value>, Error> {
    objects.remove(k)?.map(|v| decode(v.value())).transpose()
}

fn not_found(resource: &str, name: &str) -> Error {
    Error::NotFound {
        resource: resource.to_owned(),
        name: name.to_owned(),
    }
}

fn load(
    objects: &redb::Table<&str, &[u8]>,
    k: &str,
    resource: &str,
    name: &str,
) -> Result<Value, Error> {
    match objects.get(k)? {
        Some(v) => decode(v.value()),
        None => Err(Error::NotFound {
            resource: resource.to_owned(),
            name: name.to_owned(),
        }),
    }
}

impl Event {
    fn new(
        kind: EventType,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
        rv: u64,
        object: Value,
    ) -> Event {
        Event {
            kind,
            resource: resource.to_owned(),
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
            rv,
            object,
        }
    }
}

fn last_key(resource: &str, namespace: Option<&str>, items: &[Value]) -> Option<String> {
    let last = items.last()?;
    let name = last.pointer("/metadata/name")?.as_str()?;
    let ns = last.pointer("/metadata/namespace").and_then(Value::as_str);
    Some(key(resource, namespace.or(ns), name))
}

fn validate_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'-' | b'.' | b':' | b'@' | b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!("invalid name {name:?}")))
    }
}

fn set_rv(object: &mut Value, rv: u64) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

/// Keeps what the server owns from the stored object: identity, creation time, generation (raised
/// when the object's body changed).
fn carry_metadata(old: &Value, new: &mut Value, name: &str, namespace: Option<&str>) {
    let body_changed = {
        let strip = |v: &Value| -> Value {
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove("metadata");
                o.remove("status");
            }
            v
        };
        strip(old) != strip(new)
    };
    let generation = old
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        + i64::from(body_changed);
    if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("name".into(), Value::String(name.to_owned()));
        match namespace {
            Some(ns) => meta.insert("namespace".into(), Value::String(ns.to_owned())),
            None => meta.remove("namespace"),
        };
        for field in ["uid", "creationTimestamp"] {
            match old.pointer(&format!("/metadata/{field}")) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        meta.insert("generation".into(), Value::from(generation));
    }
}

/// A stream of store events after a resourceVersion. See [`Store::watch`].
#[derive(Debug)]
pub struct Watch {
    store: Store,
    live: broadcast::Receiver<Live>,
    backlog: VecDeque<Arc<Event>>,
    /// The version the backlog was read from the log up to (its other resources' events
    /// skipped): where the watch stands once the backlog is delivered.
    read: u64,
    last: u64,
    /// The one resource the watcher wants, if it said so ([`Store::watch_resource`]).
    resource: Option<String>,
}

impl Watch {
    /// The next event. Fails with [`Error::Gone`] only if the watcher fell so far behind that the
    /// events it missed left the log.
    pub async fn next(&mut self) -> Result<Arc<Event>, Error> {
        loop {
            if let Some(ev) = self.backlog.pop_front() {
                if ev.rv > self.last {
                    self.last = ev.rv;
                    return Ok(ev);
                }
                continue;
            }
            // The log was read past events of other resources.
            self.last = self.last.max(self.read);
            match self.live.recv().await {
                Ok(Live::Event { prev, event }) if event.rv > self.last => {
                    if prev > self.last {
                        // Something was committed before we subscribed and after we read the log:
                        // fill the gap from the log first.
                        self.refill()?;
                        continue;
                    }
                    self.last = event.rv;
                    if self
                        .resource
                        .as_deref()
                        .is_some_and(|r| r != event.resource)
                    {
                        continue;
                    }
                    return Ok(event);
                }
                Ok(Live::Reset { oldest }) => {
                    return Err(Error::Gone {
                        requested: self.last,
                        oldest,
                    });
                }
                Ok(Live::Event { .. }) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => self.refill()?,
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(Error::Invalid("the store was dropped".into()));
                }
            }
        }
    }

    /// The backlog from the log, after the last event returned.
    fn refill(&mut self) -> Result<(), Error> {
        let (backlog, read) = self
            .store
            .events_after(self.last, self.resource.as_deref())?;
        tracing::debug!(
            resource = self.resource.as_deref().unwrap_or("*"),
            from = self.last,
            to = read,
            events = backlog.len(),
            "a watch refilled from the log"
        );
        self.backlog = backlog.into();
        self.read = read;
        Ok(())
    }

    /// The resourceVersion of the last event returned (or where the watch started); for a
    /// watch of one resource, of the last event of any resource it read past.
    pub fn last_rv(&self) -> u64 {
        self.last
    }
}
