//! A fake containerd event service for `fake_vm.rs`: the ttrpc `containerd.services.events.
//! ttrpc.v1.Events` the shim publishes to (TTRPC_ADDRESS), recording each event's topic and
//! the container it names. It can be stopped and started again at the same address, as a
//! containerd restart looks to a shim.

use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_shim_protos::api::{Empty, ForwardRequest};
use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim_sync::{create_events, Events};
use ttrpc::TtrpcContext;

#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(String, String)>>,
}

impl Events for Recorder {
    fn forward(&self, _: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
        let env = req.envelope();
        let any = env.event();
        let id = match env.topic() {
            "/tasks/exit" => TaskExit::parse_from_bytes(&any.value).map(|e| e.id).unwrap_or_default(),
            "/tasks/oom" => TaskOOM::parse_from_bytes(&any.value).map(|e| e.container_id).unwrap_or_default(),
            _ => String::new(),
        };
        self.seen.lock().unwrap().push((env.topic().to_string(), id));
        Ok(Empty::new())
    }
}

/// The fake containerd: a socket path and what arrived on it.
pub struct FakeContainerd {
    path: PathBuf,
    recorder: Arc<Recorder>,
    server: Option<ttrpc::Server>,
}

impl FakeContainerd {
    /// Serves at `path`.
    pub fn start(path: &Path) -> FakeContainerd {
        let mut c = FakeContainerd { path: path.to_path_buf(), recorder: Arc::default(), server: None };
        c.restart();
        c
    }

    /// `unix://<path>`, for TTRPC_ADDRESS.
    pub fn address(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Stops serving: connections close and the socket goes away.
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
        let _ = std::fs::remove_file(&self.path);
    }

    /// Serves again at the same path (what it records is kept).
    pub fn restart(&mut self) {
        self.stop();
        let listener = UnixListener::bind(&self.path).unwrap();
        let events = create_events(self.recorder.clone());
        let mut server = ttrpc::Server::new().add_listener(listener.into_raw_fd()).unwrap().register_service(events);
        server.start().unwrap();
        self.server = Some(server);
    }

    /// How many events of `topic` naming `id` arrived.
    pub fn count(&self, topic: &str, id: &str) -> usize {
        self.recorder.seen.lock().unwrap().iter().filter(|(t, i)| t == topic && i == id).count()
    }

    /// Waits up to `limit` for an event of `topic` naming `id`.
    pub fn wait_for(&self, topic: &str, id: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.count(topic, id) == 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }
}

impl Drop for FakeContainerd {
    fn drop(&mut self) {
        self.stop();
    }
}
