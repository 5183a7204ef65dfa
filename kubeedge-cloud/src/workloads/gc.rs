//! The garbage collector: objects whose owners (`metadata.ownerReferences`) are all gone are
//! deleted (background deletion, the default), and owners deleted with a policy wait for it:
//! `Foreground` (the `foregroundDeletion` finalizer) until their dependents are gone, `Orphan`
//! (the `orphan` finalizer) until the owner references are taken off their dependents. Every
//! kind is covered, custom resources included: it reads the store's full change stream, and at
//! start every object that names an owner is checked once.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use kubeedge_core::kubeapi::ApiError;
use kubeedge_core::kubeapi::local::Kind;
use kubeedge_core::kubeapi::registry;
use kubeedge_core::store::{Event, EventType};
use serde_json::{Value, json};

use super::{Cache, Controller, Ctx, Key, meta, terminating};

/// Key separator between the store name and the namespace.
const SEP: char = '\u{1f}';

/// The garbage collector (see the module docs).
#[derive(Debug, Default)]
pub struct GarbageCollector {
    /// Owner uid → its dependents (store name, key).
    dependents: HashMap<String, BTreeSet<(String, Key)>>,
    /// Dependent → the owner uids it names.
    owners: HashMap<(String, Key), Vec<String>>,
    /// uid → the object with it, for owners being deleted with a policy.
    finalizing: HashMap<String, (String, Key)>,
    /// `apiVersion` and kind → store name.
    stores: HashMap<(String, String), String>,
    scanned: bool,
}

fn gc_key(store: &str, key: &Key) -> Key {
    (format!("{store}{SEP}{}", key.0), key.1.clone())
}

fn split_key(key: &Key) -> Option<(String, Key)> {
    let (store, ns) = key.0.split_once(SEP)?;
    Some((store.to_owned(), (ns.to_owned(), key.1.clone())))
}

/// A store name (`pods`, `replicasets.apps`) as the API's group and plural.
fn kind_of(store: &str) -> (String, String) {
    match store.split_once('.') {
        Some((plural, group)) => (group.to_owned(), plural.to_owned()),
        None => (String::new(), store.to_owned()),
    }
}

fn finalizers(obj: &Value) -> Vec<&str> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn owner_refs(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

impl GarbageCollector {
    fn index(&mut self, store: &str, obj: &Value, deleted: bool) {
        let key = (store.to_owned(), super::key_of(obj));
        if let Some(old) = self.owners.remove(&key) {
            for uid in old {
                if let Some(d) = self.dependents.get_mut(&uid) {
                    d.remove(&key);
                    if d.is_empty() {
                        self.dependents.remove(&uid);
                    }
                }
            }
        }
        let uid = meta(obj, "uid").to_owned();
        self.finalizing.remove(&uid);
        if deleted {
            return;
        }
        let uids: Vec<String> = owner_refs(obj)
            .iter()
            .filter_map(|r| r["uid"].as_str().map(str::to_owned))
            .collect();
        for owner in &uids {
            self.dependents
                .entry(owner.clone())
                .or_default()
                .insert(key.clone());
        }
        if !uids.is_empty() {
            self.owners.insert(key.clone(), uids);
        }
        if terminating(obj)
            && finalizers(obj)
                .iter()
                .any(|f| *f == "foregroundDeletion" || *f == "orphan")
        {
            self.finalizing.insert(uid, key);
        }
    }

    /// The store name of an owner reference's kind.
    fn store_of(&mut self, ctx: &Ctx<'_>, reference: &Value) -> Option<String> {
        let api_version = reference["apiVersion"].as_str()?.to_owned();
        let kind = reference["kind"].as_str()?.to_owned();
        let id = (api_version, kind);
        if let Some(s) = self.stores.get(&id) {
            return Some(s.clone());
        }
        for r in registry::all(ctx.local.api().store()) {
            self.stores
                .insert((r.api_version(), r.kind.clone()), r.store_name());
        }
        self.stores.get(&id).cloned()
    }

    /// Whether the owner a reference names still exists (same uid).
    fn owner_exists(&mut self, ctx: &Ctx<'_>, namespace: &str, reference: &Value) -> bool {
        let Some(store) = self.store_of(ctx, reference) else {
            // A kind the API does not serve (any more): its objects are gone.
            return false;
        };
        let name = reference["name"].as_str().unwrap_or_default();
        let s = ctx.local.api().store();
        let found = s
            .get(&store, Some(namespace).filter(|n| !n.is_empty()), name)
            .or_else(|_| s.get(&store, None, name));
        found.is_ok_and(|o| meta(&o, "uid") == reference["uid"].as_str().unwrap_or_default())
    }

    fn scan(&mut self, ctx: &Ctx<'_>) -> Vec<Key> {
        let store = ctx.local.api().store();
        let mut keys = Vec::new();
        let mut seen = BTreeSet::new();
        for r in registry::all(store) {
            let name = r.store_name();
            if r.create_only || !seen.insert(name.clone()) {
                continue;
            }
            for obj in store.list_all(&name, None).unwrap_or_default() {
                self.index(&name, &obj, false);
                if self
                    .owners
                    .contains_key(&(name.clone(), super::key_of(&obj)))
                    || self.finalizing.contains_key(meta(&obj, "uid"))
                {
                    keys.push(gc_key(&name, &super::key_of(&obj)));
                }
            }
        }
        keys
    }
}

impl Controller for GarbageCollector {
    fn name(&self) -> &'static str {
        "garbage-collector"
    }

    fn kind(&self) -> Kind<'static> {
        // Its keys are any kind's: none are "its own".
        ("", "")
    }

    fn resync(&mut self, _cache: &Cache) -> Vec<Key> {
        // The first pass scans the store (see `reconcile`); later ones recheck the owners being
        // deleted with a policy.
        if !self.scanned {
            return vec![(String::new(), String::new())];
        }
        self.finalizing
            .values()
            .map(|(s, k)| gc_key(s, k))
            .collect()
    }

    fn affected(&mut self, _cache: &Cache, ev: &Event) -> Vec<Key> {
        let key = (ev.namespace.clone().unwrap_or_default(), ev.name.clone());
        let deleted = ev.kind == EventType::Deleted;
        let had_owners = self
            .owners
            .contains_key(&(ev.resource.clone(), key.clone()));
        self.index(&ev.resource, &ev.object, deleted);
        let mut out = Vec::new();
        let uid = meta(&ev.object, "uid");
        if deleted {
            // Its dependents may be orphans now; an owner waiting for it may go on.
            if let Some(d) = self.dependents.get(uid) {
                out.extend(d.iter().map(|(s, k)| gc_key(s, k)));
            }
            for r in owner_refs(&ev.object) {
                if let Some((s, k)) = r["uid"].as_str().and_then(|u| self.finalizing.get(u)) {
                    out.push(gc_key(s, k));
                }
            }
        } else {
            if self
                .owners
                .contains_key(&(ev.resource.clone(), key.clone()))
                && !had_owners
                || ev.kind == EventType::Added
                    && self
                        .owners
                        .contains_key(&(ev.resource.clone(), key.clone()))
            {
                out.push(gc_key(&ev.resource, &key));
            }
            if self.finalizing.contains_key(uid) {
                out.push(gc_key(&ev.resource, &key));
            }
        }
        out
    }

    fn reconcile(&mut self, ctx: &mut Ctx<'_>, key: &Key) -> Result<Option<Duration>, ApiError> {
        if key.0.is_empty() && key.1.is_empty() {
            self.scanned = true;
            let keys = self.scan(ctx);
            for k in keys {
                self.reconcile(ctx, &k)?;
            }
            return Ok(None);
        }
        let Some((store, (ns, name))) = split_key(key) else {
            return Ok(None);
        };
        let (group, plural) = kind_of(&store);
        let kind: Kind<'_> = (&group, &plural);
        let nso = Some(ns.as_str()).filter(|n| !n.is_empty());
        let Ok(obj) = ctx.local.api().store().get(&store, nso, &name) else {
            return Ok(None);
        };
        let uid = meta(&obj, "uid").to_owned();
        let fins = finalizers(&obj);
        // An owner deleted with a policy.
        if terminating(&obj) && (fins.contains(&"orphan") || fins.contains(&"foregroundDeletion")) {
            let dependents: Vec<(String, Key)> = self
                .dependents
                .get(&uid)
                .map(|d| d.iter().cloned().collect())
                .unwrap_or_default();
            let drop_finalizer = |ctx: &mut Ctx<'_>, which: &str| -> Result<(), ApiError> {
                let mut next = obj.clone();
                let left: Vec<&str> = finalizers(&obj)
                    .into_iter()
                    .filter(|f| *f != which)
                    .collect();
                next["metadata"]["finalizers"] = json!(left);
                ctx.update(kind, next, false).map(|_| ())
            };
            if fins.contains(&"orphan") {
                for (s, k) in &dependents {
                    let (g, p) = kind_of(s);
                    let Ok(mut dep) = ctx.local.api().store().get(
                        s,
                        Some(k.0.as_str()).filter(|n| !n.is_empty()),
                        &k.1,
                    ) else {
                        continue;
                    };
                    let refs: Vec<Value> = owner_refs(&dep)
                        .into_iter()
                        .filter(|r| r["uid"] != uid.as_str())
                        .collect();
                    if refs.is_empty() {
                        if let Some(m) = dep["metadata"].as_object_mut() {
                            m.remove("ownerReferences");
                        }
                    } else {
                        dep["metadata"]["ownerReferences"] = json!(refs);
                    }
                    match ctx.update((&g, &p), dep, false) {
                        Ok(_) => {}
                        Err(e) if e.code == 404 => {}
                        Err(e) => return Err(e),
                    }
                }
                drop_finalizer(ctx, "orphan")?;
                return Ok(None);
            }
            // Foreground: the dependents go first (each in the foreground too, so that a
            // Deployment waits for its pods through its ReplicaSets).
            let mut left = 0;
            for (s, k) in &dependents {
                let (g, p) = kind_of(s);
                let Ok(dep) = ctx.local.api().store().get(
                    s,
                    Some(k.0.as_str()).filter(|n| !n.is_empty()),
                    &k.1,
                ) else {
                    continue;
                };
                left += 1;
                if !terminating(&dep) {
                    ctx.delete(
                        (&g, &p),
                        &k.0,
                        &k.1,
                        &json!({"propagationPolicy": "Foreground"}),
                    )?;
                }
            }
            if left == 0 {
                drop_finalizer(ctx, "foregroundDeletion")?;
                return Ok(None);
            }
            return Ok(Some(Duration::from_secs(2)));
        }
        // A dependent: gone with its last owner.
        let refs = owner_refs(&obj);
        if refs.is_empty() || terminating(&obj) {
            return Ok(None);
        }
        let mut living = Vec::new();
        for r in &refs {
            if self.owner_exists(ctx, &ns, r) {
                living.push(r.clone());
            }
        }
        if living.is_empty() {
            // Owners being deleted in the foreground take their dependents the same way.
            ctx.delete(
                kind,
                &ns,
                &name,
                &json!({"propagationPolicy": "Background"}),
            )?;
        } else if living.len() < refs.len() {
            let mut next = obj.clone();
            next["metadata"]["ownerReferences"] = json!(living);
            ctx.update(kind, next, false)?;
        }
        Ok(None)
    }
}
