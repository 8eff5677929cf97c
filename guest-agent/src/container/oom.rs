//! OOM events: an inotify watch on every container's memory.events; when its oom_kill counter
//! grows, the container id is queued for GetOomEvent.
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use super::cgroup::Cgroup;

#[derive(Default)]
struct State {
    /// watch → (container id, memory.events path, last oom_kill count).
    watches: HashMap<WatchDescriptor, (String, std::path::PathBuf, u64)>,
    queue: VecDeque<String>,
}

/// Watches containers for OOM kills.
pub struct OomWatcher {
    inotify: Option<Inotify>,
    state: Mutex<State>,
    cond: Condvar,
}

const MAX_QUEUED: usize = 1024;

impl OomWatcher {
    /// Starts the watcher thread. Without inotify, containers are not watched (logged).
    pub fn start() -> Arc<OomWatcher> {
        let inotify = match Inotify::init(InitFlags::IN_CLOEXEC) {
            Ok(i) => Some(i),
            Err(e) => {
                log::warn!("inotify unavailable, no OOM events: {e}");
                None
            }
        };
        let w = Arc::new(OomWatcher { inotify, state: Mutex::default(), cond: Condvar::new() });
        if w.inotify.is_some() {
            let t = w.clone();
            let spawned = std::thread::Builder::new().name("oom".into()).stack_size(128 << 10).spawn(move || t.run());
            if let Err(e) = spawned {
                log::warn!("starting the OOM watcher: {e}");
            }
        }
        w
    }

    /// Watches a container's cgroup (no-op without the memory controller).
    pub fn watch(&self, id: &str, cg: &Cgroup) {
        let (Some(inotify), path) = (&self.inotify, cg.memory_events()) else { return };
        if !Path::new(&path).exists() {
            return;
        }
        match inotify.add_watch(&path, AddWatchFlags::IN_MODIFY) {
            Ok(wd) => {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                st.watches.insert(wd, (id.to_string(), path, cg.oom_kills()));
            }
            Err(e) => log::warn!("watching {} for OOM: {e}", path.display()),
        }
    }

    /// Stops watching a container.
    pub fn unwatch(&self, id: &str) {
        let Some(inotify) = &self.inotify else { return };
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let wds: Vec<WatchDescriptor> = st.watches.iter().filter(|(_, v)| v.0 == id).map(|(k, _)| *k).collect();
        for wd in wds {
            st.watches.remove(&wd);
            let _ = inotify.rm_watch(wd);
        }
    }

    fn run(&self) {
        let Some(inotify) = &self.inotify else { return };
        loop {
            let events = match inotify.read_events() {
                Ok(ev) => ev,
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    log::error!("OOM watcher stopped: {e}");
                    return;
                }
            };
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            for ev in events {
                let Some((id, path, last)) = st.watches.get_mut(&ev.wd) else { continue };
                let text = std::fs::read_to_string(&*path).unwrap_or_default();
                let now = text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(*last);
                if now > *last {
                    *last = now;
                    let id = id.clone();
                    log::info!("container {id}: OOM kill");
                    if st.queue.len() < MAX_QUEUED {
                        st.queue.push_back(id);
                    }
                    self.cond.notify_all();
                }
            }
        }
    }

    /// Long-poll: the next container that had an OOM kill.
    pub fn next(&self) -> String {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(id) = st.queue.pop_front() {
                return id;
            }
            st = self.cond.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}
