//! The host side of guest-initiated connections is opened on a thread of its own,
//! `vsock-connect`, never on the event loop: the event loop's seccomp filter allows neither
//! `socket` nor `connect`, and this thread's allows only unix stream sockets. The event loop
//! asks for a port and gets the connected stream back (a non-blocking connect returns at
//! once, so the event loop waits microseconds). What the thread connects to is fixed when
//! the device starts, `<uds>_<port>`: the event loop can only name a port.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;

use seccompiler::BpfProgram;

use super::unix::connect_nonblocking;

enum Msg {
    /// Connect to `<uds>_<port>` and send the result back.
    Connect(u32, SyncSender<io::Result<UnixStream>>),
    /// Install this seccomp filter on the thread and report the outcome.
    Seccomp(Arc<BpfProgram>, Sender<Result<(), seccompiler::Error>>),
}

/// Why the connector thread could not be told something.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The thread is gone.
    #[error("the vsock connector thread has exited")]
    Gone,
    /// Installing the seccomp filter failed.
    #[error("cannot install the seccomp filter of the vsock connector thread")]
    Seccomp(#[source] seccompiler::Error),
}

/// The device's handle on its connector thread; the thread ends when the last handle goes.
#[derive(Debug, Clone)]
pub struct Connector {
    tx: Sender<Msg>,
}

impl Connector {
    /// Starts the thread that connects guest requests to `<uds>_<port>`.
    pub fn start(uds: &Path) -> io::Result<Self> {
        let base = uds.display().to_string();
        let (tx, rx) = mpsc::channel();
        crate::thread_builder("vsock-connect").spawn(move || serve(&base, rx))?;
        Ok(Self { tx })
    }

    /// Connects to `<uds>_<port>` without blocking (a full backlog refuses with EAGAIN).
    pub fn connect(&self, port: u32) -> io::Result<UnixStream> {
        let (reply, answer) = mpsc::sync_channel(1);
        let gone = || io::Error::other(ConnectorError::Gone);
        self.tx.send(Msg::Connect(port, reply)).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }

    /// Makes the thread confine itself with `filter`; returns once it has.
    pub fn install_filter(&self, filter: Arc<BpfProgram>) -> Result<(), ConnectorError> {
        let (ack, done) = mpsc::channel();
        self.tx.send(Msg::Seccomp(filter, ack)).map_err(|_| ConnectorError::Gone)?;
        done.recv().map_err(|_| ConnectorError::Gone)?.map_err(ConnectorError::Seccomp)
    }
}

fn serve(base: &str, rx: Receiver<Msg>) {
    for msg in rx {
        match msg {
            Msg::Connect(port, reply) => {
                let _ = reply.send(connect_nonblocking(&format!("{base}_{port}")));
            }
            Msg::Seccomp(filter, ack) => {
                let _ = ack.send(crate::seccomp::apply(&filter, crate::seccomp::ThreadKind::VsockConnect));
            }
        }
    }
}
