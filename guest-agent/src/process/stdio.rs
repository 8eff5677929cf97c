//! stdio streams of a process: a reader thread per output stream fills a bounded buffer that
//! the host drains with long-poll reads; stdin is written with backpressure.
//!
//! The "nothing lost" guarantee: when the reaper reports the exit, the stream is told; the reader
//! thread then reads until the pipe is empty (or EOF) and only then marks the stream drained.
//! `Process::wait` waits for the drain, so everything the process wrote before it exited is in
//! the buffer when the exit is reported. The buffer is bounded: when it is full the reader stops
//! reading, the pipe fills and the process blocks in write() (backpressure).
use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// Most bytes buffered per output stream before the process is made to wait.
pub const STREAM_BUFFER: usize = 256 << 10;
const READ_CHUNK: usize = 64 << 10;
const READER_STACK: usize = 128 << 10;

#[derive(Default)]
struct StreamState {
    buf: VecDeque<u8>,
    /// The writer side closed (or the stream was abandoned) and nothing more will arrive.
    eof: bool,
    /// The process exited.
    exited: bool,
    /// After the exit, the pipe was seen empty: everything written before the exit is in `buf`.
    drained: bool,
    /// Removed: the reader thread must stop.
    abandoned: bool,
}

/// One output stream (stdout or stderr, or the terminal).
pub struct Stream {
    state: Mutex<StreamState>,
    cond: Condvar,
    wake: Option<EventFd>,
}

impl Stream {
    /// A stream that never has data (stderr of a terminal process).
    pub fn closed() -> Arc<Stream> {
        let state = StreamState { eof: true, drained: true, ..Default::default() };
        Arc::new(Stream { state: Mutex::new(state), cond: Condvar::new(), wake: None })
    }

    /// Starts a reader thread on `fd` (made non-blocking) feeding a new stream.
    pub fn start(fd: OwnedFd, name: String) -> std::io::Result<Arc<Stream>> {
        set_nonblocking(&fd)?;
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).map_err(std::io::Error::from)?;
        let stream = Arc::new(Stream { state: Mutex::new(StreamState::default()), cond: Condvar::new(), wake: Some(wake) });
        let s = stream.clone();
        std::thread::Builder::new().name(name).stack_size(READER_STACK).spawn(move || s.reader(fd))?;
        Ok(stream)
    }

    fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kick(&self) {
        if let Some(w) = &self.wake {
            let _ = w.write(1);
        }
    }

    fn reader(&self, fd: OwnedFd) {
        let mut tmp = vec![0u8; READ_CHUNK];
        loop {
            let (exited_before, room) = {
                let mut st = self.lock();
                while st.buf.len() >= STREAM_BUFFER && !st.abandoned {
                    st = self.cond.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                if st.abandoned {
                    return;
                }
                (st.exited, STREAM_BUFFER - st.buf.len())
            };
            let want = room.min(tmp.len());
            match nix::unistd::read(&fd, &mut tmp[..want]) {
                Ok(0) | Err(Errno::EIO) => break, // EIO: pty whose slave side is gone.
                Ok(n) => {
                    let mut st = self.lock();
                    st.buf.extend(&tmp[..n]);
                    self.cond.notify_all();
                }
                Err(Errno::EAGAIN) => {
                    if exited_before {
                        let mut st = self.lock();
                        if !st.drained {
                            st.drained = true;
                            self.cond.notify_all();
                        }
                    }
                    self.wait_readable(&fd);
                }
                Err(Errno::EINTR) => {}
                Err(e) => {
                    log::warn!("reading process output: {e}");
                    break;
                }
            }
        }
        let mut st = self.lock();
        st.eof = true;
        st.drained = true;
        self.cond.notify_all();
    }

    fn wait_readable(&self, fd: &OwnedFd) {
        let Some(wake) = &self.wake else { return };
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN), PollFd::new(wake.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::NONE);
        if fds[1].revents().is_some_and(|r| r.contains(PollFlags::POLLIN)) {
            let _ = wake.read();
        }
    }

    /// Tells the stream its process exited: the reader drains what is left in the pipe.
    pub fn mark_exited(&self) {
        self.lock().exited = true;
        self.kick();
    }

    /// Stops the reader thread and makes reads return EOF (container removed).
    pub fn abandon(&self) {
        let mut st = self.lock();
        st.abandoned = true;
        st.eof = true;
        st.drained = true;
        st.buf = VecDeque::new();
        self.cond.notify_all();
        drop(st);
        self.kick();
    }

    /// Long-poll read: blocks until data or EOF; returns (data, eof).
    pub fn read(&self, max: usize) -> (Vec<u8>, bool) {
        let mut st = self.lock();
        while st.buf.is_empty() && !st.eof {
            st = self.cond.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.buf.is_empty() {
            return (Vec::new(), true);
        }
        let n = max.min(st.buf.len());
        let data: Vec<u8> = st.buf.drain(..n).collect();
        if st.buf.capacity() > STREAM_BUFFER && st.buf.len() < STREAM_BUFFER / 4 {
            st.buf.shrink_to(STREAM_BUFFER / 4);
        }
        self.cond.notify_all();
        (data, false)
    }

    /// Blocks until everything written before the exit is buffered (or the stream ended).
    pub fn wait_drained(&self) {
        let mut st = self.lock();
        while !st.drained {
            st = self.cond.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The write side of a process's stdin.
pub struct Stdin {
    fd: Mutex<Option<Arc<OwnedFd>>>,
    /// For a terminal, closing stdin sends VEOF instead of closing the fd.
    tty: bool,
}

impl Stdin {
    /// No stdin stream.
    pub fn none() -> Stdin {
        Stdin { fd: Mutex::new(None), tty: false }
    }

    /// Stdin writing to `fd` (a pipe, or the pty master when `tty`).
    pub fn new(fd: Arc<OwnedFd>, tty: bool) -> std::io::Result<Stdin> {
        set_nonblocking(&fd)?;
        Ok(Stdin { fd: Mutex::new(Some(fd)), tty })
    }

    fn get(&self) -> Option<Arc<OwnedFd>> {
        self.fd.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Writes all of `data`, waiting while the pipe is full. `None` if stdin is closed.
    pub fn write_all(&self, data: &[u8]) -> Option<std::io::Result<()>> {
        let fd = self.get()?;
        Some(write_all(&fd, data))
    }

    /// Closes stdin; a terminal gets its VEOF character. False if it was already closed.
    pub fn close(&self) -> std::io::Result<bool> {
        let Some(fd) = self.fd.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Ok(false);
        };
        if self.tty {
            let veof = nix::sys::termios::tcgetattr(fd.as_fd()).map(|t| t.control_chars[libc::VEOF]).unwrap_or(4);
            write_all(&fd, &[veof])?;
        }
        Ok(true)
    }
}

fn write_all(fd: &OwnedFd, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EAGAIN) => {
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
                poll(&mut fds, PollTimeout::NONE).map_err(std::io::Error::from)?;
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Sets O_NONBLOCK on `fd`.
pub fn set_nonblocking(fd: &impl AsFd) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
    Ok(())
}
