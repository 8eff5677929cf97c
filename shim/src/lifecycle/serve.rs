//! The long-lived shim server: the Task API on a unix socket, logs to the bundle's `log` FIFO.

use std::collections::HashMap;
use std::os::fd::IntoRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use containerd_shim::{ExitSignal, Flags};
use containerd_shim_protos::shim_sync::create_task;
use ttrpc::MethodHandler;

use super::{io_err, socket_path, LifecycleError};
use crate::task::{Containerd, Publish, Service};

/// How long an exiting shim waits for containerd to take its last events.
const EXIT_FLUSH: std::time::Duration = std::time::Duration::from_secs(10);

/// How long the ttrpc server may take to stop once the shim has nothing left to serve.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// containerd-shim-protos serves `containerd.task.v3.Task` (containerd 2.x); containerd 1.6
/// and 1.7 call `containerd.task.v2.Task`, whose messages are identical. Serve both names.
fn with_v2_aliases(
    methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>>,
    service: Arc<Service>,
) -> HashMap<String, Box<dyn MethodHandler + Send + Sync>> {
    let mut all = methods;
    let v2 = create_task(service);
    for (name, handler) in v2 {
        all.insert(name.replace("/containerd.task.v3.Task/", "/containerd.task.v2.Task/"), handler);
    }
    all
}

fn bind(path: &Path) -> Result<Option<UnixListener>, LifecycleError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err("create", parent.display()))?;
    }
    match UnixListener::bind(path) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                // Another server for this container already answers.
                return Ok(None);
            }
            std::fs::remove_file(path).map_err(io_err("remove stale socket", path.display()))?;
            UnixListener::bind(path).map(Some).map_err(io_err("bind", path.display()))
        }
        Err(e) => Err(io_err("bind", path.display())(e)),
    }
}

/// Runs the server until Shutdown.
pub fn run(flags: &Flags) -> Result<(), LifecycleError> {
    if flags.socket.is_empty() {
        return Err(LifecycleError::MissingFlag("socket"));
    }
    if let Err(e) = containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id) {
        eprintln!("logging to the bundle's log FIFO is unavailable: {e}");
    }
    // The shim's own memory is small and sparse (thread stacks, malloc arenas): where the host
    // backs anonymous memory with transparent huge pages ("always", and khugepaged collapsing
    // any 2 MiB range with one page in it) each would cost a whole 2 MiB. Children get the
    // host's policy back (crate::jail::spawn).
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        log::warn!("cannot opt the shim out of transparent huge pages: {e}");
    }
    // Like runc's shim: the bundle (our working directory) records the server's pid.
    if let Err(e) = std::fs::write("shim.pid", std::process::id().to_string()) {
        log::warn!("cannot write shim.pid in the bundle: {e}");
    }
    let path = Path::new(socket_path(&flags.socket)).to_path_buf();
    let Some(listener) = bind(&path)? else {
        signal_started();
        return Ok(());
    };
    // Connected on the first event and again whenever containerd went away (restarted).
    let publisher: Option<Box<dyn Publish>> = match std::env::var("TTRPC_ADDRESS") {
        Ok(addr) if !addr.is_empty() => Some(Box::new(Containerd::new(&addr))),
        _ => {
            log::warn!("TTRPC_ADDRESS is not set: task events are not published");
            None
        }
    };
    let exit = Arc::new(ExitSignal::default());
    let service = Arc::new(Service::new(&flags.namespace, publisher, exit.clone()));
    let methods = with_v2_aliases(create_task(service.clone()), service.clone());
    let mut server = ttrpc::Server::new().add_listener(listener.into_raw_fd())?.register_service(methods);
    server.start()?;
    signal_started();
    log::info!("husk shim for {} serving on {}", flags.id, path.display());
    exit.wait();
    if !service.flush_events(EXIT_FLUSH) {
        log::error!("exiting with {} event(s) containerd did not take", service.pending_events());
    }
    log::info!("husk shim for {} exiting", flags.id);
    // The socket goes first: a `start` for a new container must not find an exiting server.
    let _ = std::fs::remove_file(&path);
    // ttrpc's shutdown waits for every connection's handlers; one blocked in a call must not
    // keep the process (and its cgroup, its log FIFO) alive: nothing is left to serve.
    let spawned = std::thread::Builder::new().name("exit-watch".into()).spawn(|| {
        std::thread::sleep(SHUTDOWN_GRACE);
        log::warn!("the ttrpc server did not stop within {SHUTDOWN_GRACE:?}; exiting anyway");
        std::process::exit(0);
    });
    if spawned.is_err() {
        std::process::exit(0);
    }
    server.shutdown();
    Ok(())
}

/// Closes the stdout pipe `start` waits on by pointing stdout at stderr (/dev/null).
fn signal_started() {
    if let Err(e) = nix::unistd::dup2_stdout(std::io::stderr()) {
        log::error!("cannot release the start pipe: {e}");
    }
}
