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
use crate::index::{Index, Kind, Object, ObjectRef};

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

/// Reads every `.yaml`, `.yml` and `.json` regular file below `dir` (symbolic links
/// followed, as ConfigMap volumes need). This blocks: call it off the async runtime.
/// Anything else with such a name (a FIFO, a socket, a device) is refused unread: a
/// read from it could block for ever.
pub fn load(dir: &Path) -> std::io::Result<Loaded> {
    let mut files = Vec::new();
    let mut loaded = Loaded::default();
    let mut seen = HashSet::new();
    collect(dir, 0, &mut seen, &mut files, &mut loaded)?;
    files.sort();
    for file in files {
        match read(&file) {
            Ok(text) => parse(&file, &text, &mut loaded),
            Err(reason) => {
                loaded.errors.push(doc_error(&file, 0, None, reason));
                loaded.broken_files.insert(file.display().to_string());
            }
        }
    }
    Ok(loaded)
}

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

/// [`load`] on a blocking thread, so that a slow disk never stalls the runtime.
async fn load_blocking(dir: &Path) -> std::io::Result<Loaded> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || load(&dir))
        .await
        .map_err(std::io::Error::other)?
}

fn doc_error(file: &Path, document: usize, at: Option<&ObjectRef>, reason: String) -> DocError {
    DocError {
        file: file.display().to_string(),
        document,
        object: at.map(|a| format!(" ({a})")).unwrap_or_default(),
        reason,
        at: at.cloned(),
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
            format!("{kind:?} without metadata.name"),
        ));
        return;
    }
    let object = match kind {
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

fn spec<T: DeserializeOwned>(value: mesh_api::yaml::Value) -> Result<T, String> {
    let Some(spec) = value.get("spec").cloned() else {
        return Err("spec: missing".into());
    };
    serde_path_to_error::deserialize(spec).map_err(|e| format!("spec.{}: {}", e.path(), e.inner()))
}

/// What a folder has put into the index: each object and the file it came from.
pub type Applied = HashMap<ObjectRef, String>;

/// Applies a load to the index: valid objects in dependency order, refused ones kept at
/// their last good version, and objects no longer in the folder removed.
pub fn sync(index: &Index, loaded: Loaded, applied: &mut Applied) -> Vec<DocError> {
    let mut errors = loaded.errors;
    let mut present: HashSet<ObjectRef> = errors.iter().filter_map(|e| e.at.clone()).collect();
    // A file that could not be read to the end keeps everything it gave before.
    present.extend(
        applied
            .iter()
            .filter(|(_, f)| loaded.broken_files.contains(*f))
            .map(|(a, _)| a.clone()),
    );
    let mut objects = loaded.objects;
    // Splits check that their backends exist, so services come first.
    objects.sort_by_key(|(at, _, _)| at.kind);
    for (at, object, origin) in objects {
        present.insert(at.clone());
        match index.apply(&at, object) {
            Ok(()) => {
                applied.insert(at, origin.file);
            }
            Err(rejected) => errors.push(DocError {
                file: origin.file,
                document: origin.document,
                object: format!(" ({at})"),
                reason: rejected.to_string(),
                at: Some(at),
            }),
        }
    }
    let gone: Vec<ObjectRef> = applied
        .keys()
        .filter(|a| !present.contains(*a))
        .cloned()
        .collect();
    for at in gone {
        index.delete(&at);
        applied.remove(&at);
    }
    for e in &errors {
        tracing::error!("refused {e}; the last good version, if any, stays in force");
    }
    errors
}

/// How long the folder must be quiet after a change before it is read again.
const QUIET: Duration = Duration::from_millis(100);
/// The longest a read waits for the folder to be quiet.
const QUIET_MAX: Duration = Duration::from_secs(1);

/// Loads `dir` into `index`, says so on `synced`, then reloads on every change until
/// the process ends.
pub async fn watch(
    dir: PathBuf,
    index: Arc<Index>,
    synced: tokio::sync::watch::Sender<bool>,
) -> std::io::Result<()> {
    use notify::Watcher;
    let mut applied = Applied::new();
    sync(&index, load_blocking(&dir).await?, &mut applied);
    synced.send_replace(true);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads (the controller's own among them) change nothing: reacting to them
        // would re-read the folder for ever.
        if let Ok(e) = &event
            && matches!(e.kind, notify::EventKind::Access(_))
        {
            return;
        }
        let _ = tx.try_send(());
    })
    .map_err(std::io::Error::other)?;
    watcher
        .watch(&dir, notify::RecursiveMode::Recursive)
        .map_err(std::io::Error::other)?;
    loop {
        // A rescan every few seconds as well, in case an event was missed.
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        // Editors and tools write in several steps (truncate, then write): read once
        // the folder has been quiet for QUIET, or after QUIET_MAX of steady changes.
        let settle = tokio::time::Instant::now() + QUIET_MAX;
        loop {
            tokio::time::sleep(QUIET).await;
            let mut changed = false;
            while rx.try_recv().is_ok() {
                changed = true;
            }
            if !changed || tokio::time::Instant::now() >= settle {
                break;
            }
        }
        match load_blocking(&dir).await {
            Ok(loaded) => {
                sync(&index, loaded, &mut applied);
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot read the folder; keeping what is known")
            }
        }
    }
}
