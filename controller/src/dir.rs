//! The local source: Kubernetes YAML in a folder (multi-document files and `kind:
//! List` welcome), watched for changes. Each reload applies what is valid, refuses what
//! is not with a log line naming the file, document and field, and keeps the last good
//! version of a refused object in force.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;

use crate::convert;
use crate::gateway::{GatewayRoute, RouteSpec};
use crate::index::{Index, Kind, Object, ObjectRef, Rejected, SecuritySpec, TrafficSpec};

/// A document that could not be used, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file} document {document}{object}: {reason}")]
pub struct DocError {
    /// The file.
    pub file: String,
    /// The document's number in the file, from 1.
    pub document: usize,
    /// ` (Kind ns/name)` when known.
    pub object: String,
    /// What is wrong, naming the field.
    pub reason: String,
    /// The object it was meant to be, when known: its last good version stays.
    pub at: Option<ObjectRef>,
    /// Whether the rest of the object was applied (only some annotations refused).
    pub partly: bool,
}

/// Where an object came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file.
    pub file: String,
    /// The document's number in it, from 1.
    pub document: usize,
}

/// The outcome of reading a folder: usable objects, and documents refused.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Objects to apply, in file order, with where each came from.
    pub objects: Vec<(ObjectRef, Object, Origin)>,
    /// Documents refused.
    pub errors: Vec<DocError>,
    /// Files that could not be read to the end: everything they last gave stays.
    pub broken_files: HashSet<String>,
}

/// The largest manifest file read; a larger one is refused (and what it gave before
/// stays), so that one stray file cannot take the controller's memory.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// How deep below the folder files are looked for (symbolic links can make cycles).
const MAX_DEPTH: usize = 16;

/// A manifest's text, if it is a regular file of at most [`MAX_FILE_BYTES`].
fn read(file: &Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Opened without blocking (opening a FIFO for reading blocks until a writer comes),
    // then judged by the open file itself, so nothing can be swapped in between.
    const O_NONBLOCK: i32 = 0o4000; // Linux, every architecture the images are built for.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(file)
        .map_err(|e| format!("cannot read: {e}"))?;
    let meta = f.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file (a FIFO, socket or device?): skipped unread".into());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} bytes, larger than the {} MiB a manifest file may have: skipped",
            meta.len(),
            MAX_FILE_BYTES >> 20
        ));
    }
    let mut text = String::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read: {e}"))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "grew past the {} MiB a manifest file may have while read: skipped",
            MAX_FILE_BYTES >> 20
        ));
    }
    Ok(text)
}

fn collect(
    dir: &Path,
    depth: usize,
    seen: &mut HashSet<PathBuf>,
    out: &mut Vec<PathBuf>,
    loaded: &mut Loaded,
) -> std::io::Result<()> {
    // Each folder once, however many symbolic links lead to it.
    if !seen.insert(std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())) {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            if depth >= MAX_DEPTH {
                loaded.errors.push(doc_error(
                    &path,
                    0,
                    None,
                    format!("more than {MAX_DEPTH} folders deep (a symbolic link cycle?): skipped"),
                ));
                continue;
            }
            collect(&path, depth + 1, seen, out, loaded)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            out.push(path);
        }
    }
    Ok(())
}

fn doc_error(file: &Path, document: usize, at: Option<&ObjectRef>, reason: String) -> DocError {
    DocError {
        file: file.display().to_string(),
        document,
        object: at.map(|a| format!(" ({a})")).unwrap_or_default(),
        reason,
        at: at.cloned(),
        partly: false,
    }
}

/// Parses one file's documents into `loaded`.
pub fn parse(file: &Path, text: &str, loaded: &mut Loaded) {
    for (i, doc) in mesh_api::yaml::documents(text).enumerate() {
        match doc {
            Ok(value) => document(file, i + 1, value, loaded),
            Err(e) => {
                // After a syntax error the parser cannot find the next document: the rest
                // of the file is lost.
                loaded
                    .errors
                    .push(doc_error(file, i + 1, None, format!("invalid YAML: {e}")));
                loaded.broken_files.insert(file.display().to_string());
                break;
            }
        }
    }
}

fn document(file: &Path, n: usize, value: mesh_api::yaml::Value, loaded: &mut Loaded) {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_string();
    if kind == "List" {
        for item in value
            .get("items")
            .and_then(|i| i.as_array())
            .cloned()
            .unwrap_or_default()
        {
            document(file, n, item, loaded);
        }
        return;
    }
    let api_version = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or_default();
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_string();
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .unwrap_or("default")
        .to_string();
    let kind = match (kind.as_str(), api_version) {
        ("Namespace", "v1") => Kind::Namespace,
        ("Service", "v1") => Kind::Service,
        ("Pod", "v1") => Kind::Pod,
        ("EndpointSlice", "discovery.k8s.io/v1") => Kind::EndpointSlice,
        ("ServiceProfile", v) if v.starts_with("linkerd.io/") => Kind::ServiceProfile,
        ("TrafficSplit", v) if v.starts_with("split.smi-spec.io/") => Kind::TrafficSplit,
        ("HTTPRoute", "gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1") => {
            Kind::HttpRoute
        }
        ("HTTPRoute", v) if mesh_api::linkerd::served("HTTPRoute", v) => Kind::HttpRoute,
        ("GRPCRoute", "gateway.networking.k8s.io/v1") => Kind::GrpcRoute,
        ("Server", v) if mesh_api::linkerd::served("Server", v) => Kind::Server,
        ("AuthorizationPolicy", v) if mesh_api::linkerd::served("AuthorizationPolicy", v) => {
            Kind::LinkerdAuthorizationPolicy
        }
        ("MeshTLSAuthentication", v) if mesh_api::linkerd::served("MeshTLSAuthentication", v) => {
            Kind::MeshTlsAuthentication
        }
        ("NetworkAuthentication", v) if mesh_api::linkerd::served("NetworkAuthentication", v) => {
            Kind::NetworkAuthentication
        }
        ("HTTPLocalRateLimitPolicy", v)
            if mesh_api::linkerd::served("HTTPLocalRateLimitPolicy", v) =>
        {
            Kind::HttpLocalRateLimitPolicy
        }
        (
            "ReferenceGrant",
            "gateway.networking.k8s.io/v1beta1" | "gateway.networking.k8s.io/v1",
        ) => Kind::ReferenceGrant,
        ("PeerAuthentication", v) if istio_version(v, mesh_api::istio::SECURITY_GROUP) => {
            Kind::PeerAuthentication
        }
        ("AuthorizationPolicy", v) if istio_version(v, mesh_api::istio::SECURITY_GROUP) => {
            Kind::IstioAuthorizationPolicy
        }
        ("RequestAuthentication", v) if istio_version(v, mesh_api::istio::SECURITY_GROUP) => {
            Kind::RequestAuthentication
        }
        ("EnvoyFilter", v) if istio_version(v, mesh_api::istio::NETWORKING_GROUP) => {
            Kind::EnvoyFilter
        }
        ("VirtualService", v) if mesh_api::istio_networking::served(v) => Kind::VirtualService,
        ("DestinationRule", v) if mesh_api::istio_networking::served(v) => Kind::DestinationRule,
        ("Telemetry", v)
            if istio_version(v, mesh_api::istio_networking::TELEMETRY_GROUP)
                || v == "telemetry.istio.io/v1alpha1" =>
        {
            Kind::Telemetry
        }
        ("", _) => {
            loaded
                .errors
                .push(doc_error(file, n, None, "no kind".into()));
            return;
        }
        _ => return, // Deployments, ServiceAccounts, …: not the index's business.
    };
    let at = ObjectRef {
        kind,
        namespace: if kind == Kind::Namespace {
            String::new()
        } else {
            namespace
        },
        name,
    };
    if at.name.is_empty() {
        loaded.errors.push(doc_error(
            file,
            n,
            None,
            format!("{} without metadata.name", kind.as_str()),
        ));
        return;
    }
    let created = meta
        .and_then(|m| m.get("creationTimestamp"))
        .and_then(|c| c.as_str())
        .map(str::to_string);
    let annotations: Option<std::collections::BTreeMap<String, String>> = meta
        .and_then(|m| m.get("annotations"))
        .and_then(|a| serde_json::from_value(a.clone()).ok());
    let client = || crate::annotations::parse(annotations.as_ref(), false).map_err(joined);
    let generation = meta
        .and_then(|m| m.get("generation"))
        .and_then(|g| g.as_i64());
    let object =
        match kind {
            Kind::Namespace => typed::<Namespace>(value).and_then(|ns| {
                convert::namespace(&ns)
                    .map(Object::Namespace)
                    .map_err(joined)
            }),
            Kind::Service => typed::<Service>(value)
                .and_then(|s| convert::service(&s).map(Object::Service).map_err(joined)),
            Kind::Pod => {
                typed::<Pod>(value).and_then(|p| convert::pod(&p).map(Object::Pod).map_err(joined))
            }
            Kind::EndpointSlice => typed::<EndpointSlice>(value).and_then(|s| {
                convert::endpoint_slice(&s)
                    .map(Object::EndpointSlice)
                    .map_err(joined)
            }),
            Kind::ServiceProfile => spec(value).map(Object::ServiceProfile),
            Kind::TrafficSplit => spec(value).map(Object::TrafficSplit),
            Kind::ReferenceGrant => spec(value).map(Object::ReferenceGrant),
            Kind::PeerAuthentication => {
                spec(value).map(|s| Object::Security(SecuritySpec::Peer(s), created))
            }
            Kind::IstioAuthorizationPolicy => {
                spec(value).map(|s| Object::Security(SecuritySpec::Authorization(s), created))
            }
            Kind::RequestAuthentication => spec(value)
                .map(|s| Object::Security(SecuritySpec::RequestAuthentication(s), created)),
            Kind::EnvoyFilter => {
                spec(value).map(|s| Object::Security(SecuritySpec::EnvoyFilter(s), created))
            }
            Kind::Server => spec(value).map(|s| Object::Security(SecuritySpec::Server(s), created)),
            Kind::VirtualService => spec(value)
                .map(|s| Object::Traffic(TrafficSpec::VirtualService(Box::new(s)), created)),
            Kind::DestinationRule => spec(value)
                .map(|s| Object::Traffic(TrafficSpec::DestinationRule(Box::new(s)), created)),
            Kind::Telemetry => {
                spec(value).map(|s| Object::Traffic(TrafficSpec::Telemetry(Box::new(s)), created))
            }
            Kind::LinkerdAuthorizationPolicy => spec(value)
                .map(|s| Object::Security(SecuritySpec::LinkerdAuthorization(s), created)),
            Kind::MeshTlsAuthentication => {
                spec(value).map(|s| Object::Security(SecuritySpec::MeshTls(s), created))
            }
            Kind::NetworkAuthentication => {
                spec(value).map(|s| Object::Security(SecuritySpec::Network(s), created))
            }
            Kind::HttpLocalRateLimitPolicy => {
                spec(value).map(|s| Object::Security(SecuritySpec::LinkerdRateLimit(s), created))
            }
            Kind::HttpRoute => client().and_then(|client| {
                spec(value).map(|spec| {
                    Object::Route(GatewayRoute {
                        spec: RouteSpec::Http(spec),
                        created,
                        client,
                        generation,
                    })
                })
            }),
            Kind::GrpcRoute => client().and_then(|client| {
                spec(value).map(|spec| {
                    Object::Route(GatewayRoute {
                        spec: RouteSpec::Grpc(spec),
                        created,
                        client,
                        generation,
                    })
                })
            }),
        };
    match object {
        Ok(object) => loaded.objects.push((
            at,
            object,
            Origin {
                file: file.display().to_string(),
                document: n,
            },
        )),
        Err(reason) => loaded.errors.push(doc_error(file, n, Some(&at), reason)),
    }
}

fn joined(errors: Vec<mesh_api::FieldError>) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Deserializes with the failing field's path in the error (`spec.ports[0].port: …`).
fn typed<T: DeserializeOwned>(value: mesh_api::yaml::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| format!("{}: {}", e.path(), e.inner()))
}

/// Whether `api_version` is one of the versions Istio serves of `group`.
fn istio_version(api_version: &str, group: &str) -> bool {
    api_version
        .strip_prefix(group)
        .and_then(|v| v.strip_prefix('/'))
        .is_some_and(|v| matches!(v, "v1" | "v1beta1" | "v1alpha3"))
}

fn spec<T: DeserializeOwned>(value: mesh_api::yaml::Value) -> Result<T, String> {
    let Some(spec) = value.get("spec").cloned() else {
        return Err("spec: missing".into());
    };
    serde_path_to_error::deserialize(spec).map_err(|e| format!("spec.{}: {}", e.path(), e.inner()))
}

/// What a folder has put into the index: each object and the file it came from, and
/// each file's objects, so that what one file gave is found without looking at others.
#[derive(Debug, Default)]
pub struct Applied {
    file_of: HashMap<ObjectRef, String>,
    of_file: HashMap<String, HashSet<ObjectRef>>,
}

impl Applied {
    /// Nothing applied yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&mut self, at: ObjectRef, file: String) {
        if let Some(old) = self.file_of.get(&at) {
            if *old == file {
                return;
            }
            let old = old.clone();
            self.forget(&at, &old);
        }
        self.of_file
            .entry(file.clone())
            .or_default()
            .insert(at.clone());
        self.file_of.insert(at, file);
    }

    fn remove(&mut self, at: &ObjectRef) {
        if let Some(file) = self.file_of.remove(at) {
            self.forget(at, &file);
        }
    }

    fn forget(&mut self, at: &ObjectRef, file: &str) {
        if let Some(set) = self.of_file.get_mut(file) {
            set.remove(at);
            if set.is_empty() {
                self.of_file.remove(file);
            }
        }
    }

    /// The objects `file` gave.
    fn of(&self, file: &str) -> impl Iterator<Item = &ObjectRef> {
        self.of_file.get(file).into_iter().flatten()
    }
}

/// Applies a load of the whole folder to the index: valid objects in dependency order,
/// refused ones kept at their last good version, and objects no longer in the folder
/// removed.
pub fn sync(index: &Index, loaded: Loaded, applied: &mut Applied) -> Vec<DocError> {
    sync_files(index, loaded, applied, None)
}

/// [`sync`] for a load of some files only (`Some(files)`: those read again, and those
/// gone): objects that other files gave are left alone.
fn sync_files(
    index: &Index,
    loaded: Loaded,
    applied: &mut Applied,
    files: Option<&HashSet<String>>,
) -> Vec<DocError> {
    let mut errors = loaded.errors;
    let mut present: HashSet<ObjectRef> = errors.iter().filter_map(|e| e.at.clone()).collect();
    // A file that could not be read to the end keeps everything it gave before.
    for f in &loaded.broken_files {
        present.extend(applied.of(f).cloned());
    }
    let mut objects = loaded.objects;
    // Splits check that their backends exist, so services come first.
    objects.sort_by_key(|(at, _, _)| at.kind);
    for (at, object, origin) in objects {
        present.insert(at.clone());
        match index.apply(&at, object) {
            Ok(()) => {
                applied.insert(at, origin.file);
            }
            Err(rejected) => {
                let partly = matches!(rejected, Rejected::Partly(_));
                errors.push(DocError {
                    file: origin.file.clone(),
                    document: origin.document,
                    object: format!(" ({at})"),
                    reason: rejected.to_string(),
                    at: Some(at.clone()),
                    partly,
                });
                if partly {
                    applied.insert(at, origin.file);
                }
            }
        }
    }
    // What the files read gave before (or, for the whole folder, everything) and no
    // longer does.
    let before: Vec<&ObjectRef> = match files {
        Some(files) => files.iter().flat_map(|f| applied.of(f)).collect(),
        None => applied.file_of.keys().collect(),
    };
    let gone: Vec<ObjectRef> = before
        .into_iter()
        .filter(|a| !present.contains(*a))
        .cloned()
        .collect();
    for at in gone {
        index.delete(&at);
        applied.remove(&at);
    }
    for e in &errors {
        if e.partly {
            tracing::error!("{e}");
        } else {
            tracing::error!("refused {e}; the last good version, if any, stays in force");
        }
    }
    errors
}

/// What identifies a file's contents without reading it: device, inode, size and
/// modification and change times (of the file a symbolic link leads to).
type Stamp = (u64, u64, u64, i64, i64, i64, i64);

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

/// A folder followed file by file: each scan reads only the files whose stamp changed
/// since the last one, so an edit costs what the edited file holds, not the folder.
#[derive(Debug)]
pub struct Folder {
    dir: PathBuf,
    stamps: HashMap<PathBuf, Option<Stamp>>,
    applied: Applied,
}

/// Which paths a scan looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every file below the folder (stat only, unless changed).
    All,
    /// These paths only (as file events name them).
    Paths(HashSet<PathBuf>),
}

/// What a scan found: what changed files gave, and which files it covers.
#[derive(Debug, Default)]
pub struct Scan {
    /// What the files read gave.
    pub loaded: Loaded,
    /// The files read again or gone, by name.
    pub files: HashSet<String>,
}

impl Folder {
    /// Follows `dir`; nothing is read until the first scan.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            stamps: HashMap::new(),
            applied: Applied::new(),
        }
    }

    /// Reads the files in `scope` that changed since the last scan. This blocks: call
    /// it off the async runtime.
    pub fn scan(&mut self, scope: &Scope) -> std::io::Result<Scan> {
        let mut scan = Scan::default();
        let candidates: Vec<PathBuf> = match scope {
            Scope::All => {
                let mut files = Vec::new();
                let mut seen = HashSet::new();
                collect(&self.dir, 0, &mut seen, &mut files, &mut scan.loaded)?;
                let files: HashSet<PathBuf> = files.into_iter().collect();
                // Files gone since the last scan.
                let mut all: Vec<PathBuf> = self
                    .stamps
                    .keys()
                    .filter(|f| !files.contains(*f))
                    .cloned()
                    .collect();
                all.extend(files);
                all
            }
            Scope::Paths(paths) => paths.iter().cloned().collect(),
        };
        let mut candidates = candidates;
        candidates.sort();
        for file in candidates {
            let now = stamp(&file);
            let before = self.stamps.get(&file).copied().flatten();
            if now.is_some() && now == before {
                continue;
            }
            let name = file.display().to_string();
            if now.is_none() {
                // Gone: what it gave goes too.
                if self.stamps.remove(&file).is_some() {
                    scan.files.insert(name);
                }
                continue;
            }
            self.stamps.insert(file.clone(), now);
            scan.files.insert(name.clone());
            match read(&file) {
                Ok(text) => parse(&file, &text, &mut scan.loaded),
                Err(reason) => {
                    scan.loaded.errors.push(doc_error(&file, 0, None, reason));
                    scan.loaded.broken_files.insert(name);
                    // Read again next time, whatever its stamp.
                    self.stamps.insert(file, None);
                }
            }
        }
        Ok(scan)
    }

    /// Applies a scan to `index`: what the files read gave, and nothing more of what
    /// files no longer give.
    pub fn apply(&mut self, index: &Index, scan: Scan) -> Vec<DocError> {
        sync_files(index, scan.loaded, &mut self.applied, Some(&scan.files))
    }

    /// Whether a changed path can be checked alone: a manifest's name, not hidden, in
    /// a folder that is not hidden (hidden entries are how ConfigMap volumes swap
    /// their contents, and anything else may be a folder appearing or going).
    fn alone(&self, path: &Path) -> bool {
        let Ok(rel) = path.strip_prefix(&self.dir) else {
            return false;
        };
        let visible = rel
            .components()
            .all(|c| c.as_os_str().to_str().is_some_and(|c| !c.starts_with('.')));
        visible
            && rel.components().count() <= MAX_DEPTH
            && path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            && !path.is_dir()
    }
}

/// Changes noticed and not yet read: the paths events named, or the whole folder.
#[derive(Debug, Default)]
struct Noticed {
    all: bool,
    paths: HashSet<PathBuf>,
}

/// Paths remembered before a change is treated as "the whole folder".
const MAX_NOTICED: usize = 4096;

/// How long the folder must be quiet after a change before it is read again.
const QUIET: Duration = Duration::from_millis(20);
/// The longest a read waits for the folder to be quiet.
const QUIET_MAX: Duration = Duration::from_secs(1);

/// How often the whole folder is checked (stat only) in case an event was missed.
const RESCAN: Duration = Duration::from_secs(30);

/// Loads `dir` into `index`, says so on `synced`, then reads again each file that
/// changes until the process ends.
pub async fn watch(
    dir: PathBuf,
    index: Arc<Index>,
    synced: tokio::sync::watch::Sender<bool>,
) -> std::io::Result<()> {
    use notify::Watcher;
    let mut folder = Folder::new(dir.clone());
    let scan;
    (folder, scan) = scan_blocking(folder, Scope::All).await;
    folder.apply(&index, scan?);
    synced.send_replace(true);
    let noticed = Arc::new(std::sync::Mutex::new(Noticed::default()));
    let wake = Arc::new(tokio::sync::Notify::new());
    let mut watcher = notify::recommended_watcher({
        let (noticed, wake) = (noticed.clone(), wake.clone());
        move |event: notify::Result<notify::Event>| {
            let mut n = noticed.lock().unwrap_or_else(|e| e.into_inner());
            match event {
                // Reads (the controller's own among them) change nothing: reacting to
                // them would read the folder for ever.
                Ok(e) if matches!(e.kind, notify::EventKind::Access(_)) => return,
                Ok(e) if !e.need_rescan() && n.paths.len() + e.paths.len() <= MAX_NOTICED => {
                    n.paths.extend(e.paths);
                }
                _ => n.all = true,
            }
            wake.notify_one();
        }
    })
    .map_err(std::io::Error::other)?;
    watcher
        .watch(&dir, notify::RecursiveMode::Recursive)
        .map_err(std::io::Error::other)?;
    loop {
        let rescan = tokio::time::timeout(RESCAN, wake.notified()).await.is_err();
        // Editors and tools write in several steps (truncate, then write): read once
        // the folder has been quiet for QUIET, or after QUIET_MAX of steady changes.
        let settle = tokio::time::Instant::now() + QUIET_MAX;
        while !rescan && tokio::time::Instant::now() < settle {
            if tokio::time::timeout(QUIET, wake.notified()).await.is_err() {
                break;
            }
        }
        let scope = {
            let mut n = noticed.lock().unwrap_or_else(|e| e.into_inner());
            let n = std::mem::take(&mut *n);
            if rescan || n.all || !n.paths.iter().all(|p| folder.alone(p)) {
                Scope::All
            } else {
                Scope::Paths(n.paths)
            }
        };
        let scan;
        (folder, scan) = scan_blocking(folder, scope).await;
        match scan {
            Ok(scan) => {
                if !scan.files.is_empty() {
                    tracing::debug!(files = scan.files.len(), "folder changed");
                }
                folder.apply(&index, scan);
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot read the folder; keeping what is known")
            }
        }
    }
}

/// [`Folder::scan`] on a blocking thread, so that a slow disk never stalls the runtime.
async fn scan_blocking(mut folder: Folder, scope: Scope) -> (Folder, std::io::Result<Scan>) {
    let dir = folder.dir.clone();
    match tokio::task::spawn_blocking(move || {
        let scan = folder.scan(&scope);
        (folder, scan)
    })
    .await
    {
        Ok(done) => done,
        // The scan panicked: start over from nothing known (every file is read again).
        Err(e) => (Folder::new(dir), Err(std::io::Error::other(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Resolution;

    fn service(name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}-1, namespace: ns, labels: {{app: {name}}}}}\nspec: {{containers: [{{name: a, image: x}}]}}\nstatus: {{podIP: 10.0.0.1, phase: Running}}\n"
        )
    }

    fn names(scan: &Scan) -> Vec<String> {
        let mut files: Vec<String> = scan
            .files
            .iter()
            .map(|f| {
                Path::new(f)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn istios_traffic_examples_load_as_written_and_bad_ones_name_the_field() {
        let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/examples/istio");
        let index = Index::default();
        let mut applied = Applied::new();
        let mut loaded = Loaded::default();
        for file in ["routing.yaml", "resilience.yaml", "telemetry.yaml"] {
            let path = Path::new(examples).join(file);
            let text = std::fs::read_to_string(&path).expect("example");
            parse(&path, &text, &mut loaded);
        }
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let errors = sync(&index, loaded, &mut applied);
        assert!(errors.is_empty(), "{errors:?}");
        let objects = index.traffic_objects("default");
        assert_eq!(objects.len(), 13, "{objects:?}");
        assert!(objects.contains(&(Kind::VirtualService, "reviews".into())));
        assert_eq!(
            index.traffic_objects("istio-system").len(),
            1,
            "the Telemetry"
        );

        let mut loaded = Loaded::default();
        parse(
            Path::new("bad.yaml"),
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\n\
             spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}], timeout: soon}]}\n",
            &mut loaded,
        );
        let errors = sync(&index, loaded, &mut applied);
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|e| e.contains("VirtualService default/reviews")
                    && e.contains("spec.http[0].timeout")),
            "{text:?}"
        );
    }

    #[test]
    fn istios_virtual_services_compile_into_first_match_routes_with_subsets() {
        use mesh_api::policy as pb;
        let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/examples/istio");
        let index = Index::default();
        let mut applied = Applied::new();
        let mut loaded = Loaded::default();
        for file in ["routing.yaml", "resilience.yaml"] {
            let path = Path::new(examples).join(file);
            let text = std::fs::read_to_string(&path).expect("example");
            parse(&path, &text, &mut loaded);
        }
        let mut services = String::new();
        for (name, version) in [
            ("reviews", "v1"),
            ("reviews", "v2"),
            ("ratings", "v1"),
            ("helloworld", "v1"),
        ] {
            services.push_str(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}-{version}, namespace: default, labels: {{app: {name}, version: {version}}}}}\n\
                 spec: {{containers: [{{name: a, image: x}}]}}\nstatus: {{podIP: 10.0.{}.1, phase: Running}}\n---\n",
                if version == "v1" { 1 } else { 2 }
            ));
        }
        services.push_str(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: productpage, namespace: default}\n\
             spec: {hosts: [productpage], http: [{route: [{destination: {host: productpage, subset: v1}}]}]}\n---\n",
        );
        for name in ["reviews", "ratings", "helloworld", "productpage", "httpbin"] {
            services.push_str(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
                 spec: {{selector: {{app: {name}}}, ports: [{{port: 9080}}]}}\n---\n"
            ));
        }
        parse(Path::new("services.yaml"), &services, &mut loaded);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let errors = sync(&index, loaded, &mut applied);
        assert!(errors.is_empty(), "{errors:?}");

        // reviews: the oldest of the two claiming the host (folder objects tie on age:
        // the name decides), jason to v2, else 75/25, Istio's default retries.
        let p = index.outbound_policy("reviews:9080", "default", None);
        assert_eq!(p.sources.len(), 1, "{:?}", p.sources);
        assert_eq!(p.sources[0].name, "reviews");
        assert_eq!(p.route_order, pb::RouteOrder::FirstMatch as i32);
        assert_eq!(p.unmatched, pb::Unmatched::NotFound as i32);
        assert_eq!(p.routes.len(), 2, "{:?}", p.routes);
        let jason = &p.routes[0];
        assert_eq!(jason.matches[0].headers[0].name, "end-user");
        let subset =
            |b: &pb::WeightedBackend| match b.backend.as_ref().and_then(|b| b.kind.as_ref()) {
                Some(pb::backend::Kind::Subset(s)) => (
                    s.name.clone(),
                    s.labels.get("version").cloned(),
                    s.authority.clone(),
                    b.weight,
                ),
                other => panic!("{other:?}"),
            };
        assert_eq!(
            subset(&jason.backends[0]),
            (
                "v2".into(),
                Some("v2".into()),
                "reviews.default.svc.cluster.local:9080".into(),
                1
            )
        );
        let split: Vec<_> = p.routes[1]
            .backends
            .iter()
            .map(subset)
            .map(|s| (s.0, s.3))
            .collect();
        assert_eq!(split, vec![("v1".into(), 75), ("v2".into(), 25)]);
        let retry = jason.retry.as_ref().expect("Istio's default retries");
        assert_eq!(retry.max_retries, 2);
        let on = retry.conditions.as_ref().expect("conditions");
        assert!(on.connect_failure && on.reset, "{on:?}");
        assert_eq!(on.grpc_codes, vec![14, 1]);

        // The loser is reported, naming the winner.
        let reports = index.route_reports(
            &ObjectRef {
                kind: Kind::VirtualService,
                namespace: "default".into(),
                name: "reviews-content".into(),
            },
            None,
        );
        let problems: Vec<String> = reports.iter().flat_map(|(_, r)| r.problems()).collect();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("Superseded") && p.contains("default/reviews")),
            "{problems:?}"
        );

        // ratings: its timeout and retries (ratings-fault loses the host).
        let p = index.outbound_policy("ratings.default.svc.cluster.local:9080", "default", None);
        assert_eq!(p.sources[0].name, "ratings");
        let r = &p.routes[0];
        assert_eq!(r.timeouts.as_ref().map(|t| t.request_ms), Some(10_000));
        let retry = r.retry.as_ref().expect("retries");
        assert_eq!((retry.max_retries, retry.timeout_ms), (3, 2_000));

        // helloworld's subsets are defined by no DestinationRule: 503, and reported.
        let p = index.outbound_policy("helloworld:9080", "default", None);
        assert!(
            p.routes.iter().flat_map(|r| &r.backends).all(|b| matches!(
                b.backend.as_ref().and_then(|b| b.kind.as_ref()),
                Some(pb::backend::Kind::Failure(f)) if f.status == 503
            )),
            "{:?}",
            p.routes
        );
        let reports = index.route_reports(
            &ObjectRef {
                kind: Kind::VirtualService,
                namespace: "default".into(),
                name: "helloworld".into(),
            },
            None,
        );
        let problems: Vec<String> = reports.iter().flat_map(|(_, r)| r.problems()).collect();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("spec.http[0].route[0].destination.subset")),
            "{problems:?}"
        );
        assert!(
            index
                .routes(None)
                .iter()
                .any(|r| r.kind == Kind::VirtualService && r.name == "helloworld")
        );

        // Subsets resolve to the endpoints of their pods only.
        let labels = std::collections::BTreeMap::from([("version".to_string(), "v2".to_string())]);
        match index.resolve_selected(
            "reviews.default.svc.cluster.local:9080",
            "default",
            &labels,
            None,
        ) {
            Resolution::Service { endpoints, .. } => {
                let ips: Vec<String> = endpoints.keys().map(|a| a.ip().to_string()).collect();
                assert_eq!(ips, vec!["10.0.2.1".to_string()]);
            }
            other => panic!("{other:?}"),
        }

        // DestinationRule policies: the host's for the service itself, the subset's
        // over it for the subset's backend (its pool replaces the host's whole).
        let p = index.outbound_policy("productpage:9080", "default", None);
        let pool = p.connection_pool.as_ref().expect("the host's pool");
        assert_eq!(
            (pool.max_connections, pool.max_pending_requests),
            (100, 100)
        );
        assert!(matches!(
            p.load_balancer.as_ref().and_then(|l| l.kind.as_ref()),
            Some(pb::load_balancer::Kind::PeakEwma(_))
        ));
        let v1 = p.routes[0].backends[0]
            .policy
            .as_ref()
            .expect("v1's policy");
        let pool = v1.connection_pool.as_ref().expect("v1's pool");
        assert_eq!((pool.max_connections, pool.max_pending_requests), (10, 0));
        assert!(
            v1.load_balancer.is_some(),
            "the host's balancer, which v1 does not set"
        );
        // httpbin: the older consecutiveErrors counts gateway errors only.
        let p = index.outbound_policy("httpbin:9080", "default", None);
        let o = p.outlier_detection.as_ref().expect("outlier detection");
        assert_eq!(
            (
                o.consecutive_failures,
                o.consecutive_gateway_errors,
                o.base_ejection_ms,
                o.max_ejection_percent
            ),
            (0, 1, 180_000, 100)
        );
        assert!(o.linear);
        assert_eq!(
            p.connection_pool.as_ref().map(|c| c.max_connections),
            Some(1)
        );

        // A DestinationRule that goes takes its subsets with it, and wakes the policy.
        let mut watch = index.watch();
        let _ = index.outbound_policy("reviews:9080", "default", Some(&mut watch));
        index.delete(&ObjectRef {
            kind: Kind::DestinationRule,
            namespace: "default".into(),
            name: "reviews".into(),
        });
        assert!(
            watch.take_change(),
            "a DestinationRule's change wakes the policies reading it"
        );
        let p = index.outbound_policy("reviews:9080", "default", None);
        assert!(matches!(
            p.routes[0].backends[0]
                .backend
                .as_ref()
                .and_then(|b| b.kind.as_ref()),
            Some(pb::backend::Kind::Failure(_))
        ));
    }

    fn known(index: &Index, name: &str) -> bool {
        matches!(
            index.resolve(&format!("{name}.ns:80"), "ns", None),
            Resolution::Service { .. }
        )
    }

    #[test]
    fn a_bad_annotation_keeps_the_service_and_its_last_good_client_policy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("svc.yaml");
        let annotated = |limit: &str| {
            service("web").replacen(
                "namespace: ns}",
                &format!("namespace: ns, annotations: {{retry.linkerd.io/http: 5xx, retry.linkerd.io/limit: \"{limit}\"}}}}"),
                1,
            )
        };
        let index = Index::default();
        let mut folder = Folder::new(dir.path().to_path_buf());
        std::fs::write(&file, annotated("3")).expect("write");
        let scan = folder.scan(&Scope::All).expect("scan");
        assert_eq!(folder.apply(&index, scan), vec![]);
        let retries = |index: &Index| {
            index
                .outbound_policy("web.ns:80", "ns", None)
                .routes
                .first()
                .and_then(|r| r.retry.as_ref().map(|r| r.max_retries))
        };
        assert_eq!(retries(&index), Some(3));
        // A typo: reported naming the annotation; the Service stays, with its last
        // good retries.
        std::fs::write(&file, annotated("many")).expect("write");
        let scan = folder.scan(&Scope::All).expect("scan");
        let errors = folder.apply(&index, scan);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].partly);
        assert!(
            errors[0].reason.contains("retry.linkerd.io/limit"),
            "{errors:?}"
        );
        assert!(known(&index, "web"));
        assert_eq!(retries(&index), Some(3));
        // A new Service with a typo is known at once, without the bad policy.
        std::fs::write(
            dir.path().join("other.yaml"),
            annotated("x").replace("web", "api"),
        )
        .expect("write");
        let scan = folder.scan(&Scope::All).expect("scan");
        assert_eq!(folder.apply(&index, scan).len(), 1);
        assert!(known(&index, "api"));
        assert_eq!(retries_of(&index, "api"), None);
    }

    #[test]
    fn a_reference_grant_opens_a_backend_in_another_namespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let services = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: ns}\n\
             spec: {ports: [{port: 80}]}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: store, namespace: other}\n\
             spec: {ports: [{port: 80}]}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {name: r, namespace: ns}\n\
             spec: {parentRefs: [{group: '', kind: Service, name: web}], \
             rules: [{backendRefs: [{name: store, namespace: other, port: 80}]}]}\n";
        std::fs::write(dir.path().join("a.yaml"), services).expect("write");
        let index = Index::default();
        let mut folder = Folder::new(dir.path().to_path_buf());
        let scan = folder.scan(&Scope::All).expect("scan");
        assert_eq!(folder.apply(&index, scan), vec![]);
        let backend = |index: &Index| {
            let p = index.outbound_policy("web.ns:80", "ns", None);
            p.routes[0].backends[0]
                .backend
                .as_ref()
                .and_then(|b| b.kind.clone())
        };
        assert!(
            matches!(backend(&index), Some(mesh_api::policy::backend::Kind::Failure(f)) if f.message.contains("no ReferenceGrant")),
            "{:?}",
            backend(&index)
        );
        let route = ObjectRef {
            kind: Kind::HttpRoute,
            namespace: "ns".into(),
            name: "r".into(),
        };
        let mut watch = index.watch();
        let reports = index.route_reports(&route, Some(&mut watch));
        assert_eq!(reports[0].1.conditions[1].reason, "RefNotPermitted");
        // A grant in the Service's namespace, for HTTPRoutes of `ns`: it resolves, and
        // the route's conditions are woken.
        std::fs::write(
            dir.path().join("grant.yaml"),
            "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n\
             metadata: {name: g, namespace: other}\n\
             spec: {from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: ns}], \
             to: [{group: '', kind: Service}]}\n",
        )
        .expect("write");
        let scan = folder.scan(&Scope::All).expect("scan");
        assert_eq!(folder.apply(&index, scan), vec![]);
        assert!(watch.take_change(), "the grant woke the route's conditions");
        assert_eq!(
            backend(&index),
            Some(mesh_api::policy::backend::Kind::Authority(
                "store.other.svc.cluster.local:80".into()
            ))
        );
    }

    fn retries_of(index: &Index, name: &str) -> Option<u32> {
        index
            .outbound_policy(&format!("{name}.ns:80"), "ns", None)
            .routes
            .first()
            .and_then(|r| r.retry.as_ref().map(|r| r.max_retries))
    }

    #[test]
    fn a_scan_reads_only_the_files_that_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        for n in ["a", "b", "c"] {
            std::fs::write(dir.path().join(format!("{n}.yaml")), service(n)).expect("write");
        }
        let index = Index::default();
        let mut folder = Folder::new(dir.path().to_path_buf());
        let scan = folder.scan(&Scope::All).expect("scan");
        assert_eq!(names(&scan), ["a.yaml", "b.yaml", "c.yaml"]);
        folder.apply(&index, scan);
        assert!(known(&index, "a") && known(&index, "b") && known(&index, "c"));

        // Nothing changed: nothing is read.
        let scan = folder.scan(&Scope::All).expect("scan");
        assert!(scan.files.is_empty(), "{:?}", scan.files);

        // One file edited (its service renamed), one removed: only they are looked at,
        // and only what they gave changes.
        std::fs::write(dir.path().join("b.yaml"), service("b2")).expect("write");
        std::fs::remove_file(dir.path().join("c.yaml")).expect("rm");
        let scan = folder.scan(&Scope::All).expect("scan");
        assert_eq!(names(&scan), ["b.yaml", "c.yaml"]);
        folder.apply(&index, scan);
        assert!(known(&index, "a") && known(&index, "b2"));
        assert!(!known(&index, "b") && !known(&index, "c"));

        // The paths an event names are all a scan looks at.
        std::fs::write(dir.path().join("a.yaml"), service("a2")).expect("write");
        std::fs::write(dir.path().join("d.yaml"), service("d")).expect("write");
        let only = Scope::Paths([dir.path().join("d.yaml")].into());
        let scan = folder.scan(&only).expect("scan");
        assert_eq!(names(&scan), ["d.yaml"]);
        folder.apply(&index, scan);
        assert!(known(&index, "a") && known(&index, "d") && !known(&index, "a2"));
        let scan = folder.scan(&Scope::All).expect("scan");
        assert_eq!(names(&scan), ["a.yaml"]);
        folder.apply(&index, scan);
        assert!(known(&index, "a2") && !known(&index, "a"));
    }

    #[test]
    fn a_broken_edit_keeps_what_the_file_gave_and_other_files_are_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.yaml"), service("a")).expect("write");
        std::fs::write(dir.path().join("b.yaml"), service("b")).expect("write");
        let index = Index::default();
        let mut folder = Folder::new(dir.path().to_path_buf());
        let scan = folder.scan(&Scope::All).expect("scan");
        folder.apply(&index, scan);
        std::fs::write(dir.path().join("a.yaml"), "kind: [unclosed").expect("write");
        let scan = folder.scan(&Scope::All).expect("scan");
        let errors = folder.apply(&index, scan);
        assert!(errors[0].file.ends_with("a.yaml"), "{errors:?}");
        assert!(known(&index, "a") && known(&index, "b"));
        // A moved object (from a.yaml to b.yaml) stays in force throughout.
        std::fs::write(
            dir.path().join("b.yaml"),
            service("b") + "---\n" + &service("a"),
        )
        .expect("write");
        std::fs::write(dir.path().join("a.yaml"), "").expect("write");
        let scan = folder.scan(&Scope::All).expect("scan");
        folder.apply(&index, scan);
        assert!(known(&index, "a") && known(&index, "b"));
    }

    #[test]
    fn configmap_volumes_swap_their_contents_through_hidden_links() {
        // What the kubelet does: files are links into `..data`, itself a link to a
        // timestamped folder that an update replaces.
        let dir = tempfile::tempdir().expect("tempdir");
        let v1 = dir.path().join("..v1");
        let v2 = dir.path().join("..v2");
        std::fs::create_dir(&v1).expect("mkdir");
        std::fs::create_dir(&v2).expect("mkdir");
        std::fs::write(v1.join("s.yaml"), service("one")).expect("write");
        std::fs::write(v2.join("s.yaml"), service("two")).expect("write");
        std::os::unix::fs::symlink("..v1", dir.path().join("..data")).expect("link");
        std::os::unix::fs::symlink("..data/s.yaml", dir.path().join("s.yaml")).expect("link");
        let index = Index::default();
        let mut folder = Folder::new(dir.path().to_path_buf());
        let scan = folder.scan(&Scope::All).expect("scan");
        folder.apply(&index, scan);
        assert!(known(&index, "one"));
        let tmp = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink("..v2", &tmp).expect("link");
        std::fs::rename(&tmp, dir.path().join("..data")).expect("swap");
        // The event names a hidden path: the whole folder is checked.
        assert!(!folder.alone(&dir.path().join("..data")));
        assert!(folder.alone(&dir.path().join("s.yaml")));
        let scan = folder.scan(&Scope::All).expect("scan");
        assert_eq!(names(&scan), ["s.yaml"]);
        folder.apply(&index, scan);
        assert!(known(&index, "two") && !known(&index, "one"));
    }
}
