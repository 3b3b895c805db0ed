//! Watching xDS files as Envoy does: a file is replaced by renaming a new one over it, so the
//! watch is on its directory, for files moved into it (`IN_MOVED_TO`). A `watched_directory`
//! reports any move into it (the symlink swap of a Kubernetes ConfigMap). Writes in place are
//! not seen, as in Envoy: a reader could see half a file.
//!
//! One thread blocks on inotify and sends the registered keys whose file changed into a
//! channel the control runtime reads.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use inotify::{Inotify, WatchDescriptor, WatchMask};
use tokio::sync::mpsc;

/// What a registration watches: one file name in a directory, or every move into it.
#[derive(Debug)]
struct Interest<K> {
    /// `None`: anything moved into the directory.
    name: Option<OsString>,
    key: K,
}

struct Watches<K> {
    by_descriptor: HashMap<WatchDescriptor, Vec<Interest<K>>>,
    by_directory: HashMap<PathBuf, WatchDescriptor>,
}

/// A watcher delivering `K`s (the caller's name for what changed) on a channel.
pub struct FileWatcher<K> {
    inotify: Mutex<inotify::Watches>,
    watches: Arc<Mutex<Watches<K>>>,
}

impl<K: Clone + PartialEq + Send + 'static> FileWatcher<K> {
    /// Starts the watching thread; changes arrive on the returned channel.
    pub fn start() -> io::Result<(FileWatcher<K>, mpsc::UnboundedReceiver<K>)> {
        let mut inotify = Inotify::init()?;
        let handle = inotify.watches();
        let watches: Arc<Mutex<Watches<K>>> = Arc::new(Mutex::new(Watches {
            by_descriptor: HashMap::new(),
            by_directory: HashMap::new(),
        }));
        let (tx, rx) = mpsc::unbounded_channel();
        let seen = watches.clone();
        std::thread::Builder::new()
            .name("legate:watch".into())
            .spawn(move || {
                let mut buffer = [0u8; 8192];
                loop {
                    let events = match inotify.read_events_blocking(&mut buffer) {
                        Ok(events) => events,
                        Err(e) => {
                            tracing::error!("file watch stopped: {e}");
                            return;
                        }
                    };
                    let mut changed = Vec::new();
                    {
                        let watches = seen.lock().unwrap_or_else(|p| p.into_inner());
                        for event in events {
                            let Some(interests) = watches.by_descriptor.get(&event.wd) else {
                                continue;
                            };
                            for i in interests {
                                let hit = match &i.name {
                                    None => true,
                                    Some(name) => event.name == Some(name.as_os_str()),
                                };
                                if hit && !changed.contains(&i.key) {
                                    changed.push(i.key.clone());
                                }
                            }
                        }
                    }
                    for key in changed {
                        if tx.send(key).is_err() {
                            return;
                        }
                    }
                }
            })?;
        Ok((
            FileWatcher {
                inotify: Mutex::new(handle),
                watches,
            },
            rx,
        ))
    }

    /// Reports `key` when a file is moved onto `path`.
    pub fn watch_file(&self, path: &Path, key: K) -> io::Result<()> {
        let directory = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
        self.add(directory, Some(name.to_owned()), key)
    }

    /// Reports `key` when anything is moved into `directory`.
    pub fn watch_directory(&self, directory: &Path, key: K) -> io::Result<()> {
        self.add(directory, None, key)
    }

    /// Whether anything is watched.
    pub fn is_watching(&self) -> bool {
        !self
            .watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_descriptor
            .is_empty()
    }

    fn add(&self, directory: &Path, name: Option<OsString>, key: K) -> io::Result<()> {
        let directory = std::fs::canonicalize(directory)?;
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let descriptor = match watches.by_directory.get(&directory) {
            Some(d) => d.clone(),
            None => {
                let d = self
                    .inotify
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .add(&directory, WatchMask::MOVED_TO)?;
                watches.by_directory.insert(directory, d.clone());
                d
            }
        };
        let interests = watches.by_descriptor.entry(descriptor).or_default();
        if !interests.iter().any(|i| i.name == name && i.key == key) {
            interests.push(Interest { name, key });
        }
        Ok(())
    }
}
