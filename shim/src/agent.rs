//! The ttrpc client to husk-agent inside the VM, reached over the VMM's hybrid vsock.

use std::io::Read;
use std::os::fd::IntoRawFd;
use std::time::{Duration, Instant, SystemTime};

use husk_protocol::agent;
use husk_protocol::agent_ttrpc::AgentClient;
use ttrpc::context::{self, Context};

use crate::error::{Result, ShimError};
use crate::vm::{connect_hybrid_vsock, Vm, VmError};

/// Timeout of short agent requests.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Pause between two attempts to reach the agent while the guest boots. Each attempt the
/// guest refuses (its vsock is up, the agent not yet listening) costs it one packet and an
/// interrupt, so not much shorter; the agent is found at most this long after it listens.
const CONNECT_RETRY: Duration = Duration::from_millis(20);
/// Pause between two attempts while the VMM has not bound its vsock socket yet (costs the
/// guest nothing).
const SOCKET_RETRY: Duration = Duration::from_millis(5);

/// The call that proves the agent answers, and the first it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstCall {
    /// `Check` (a booted VM).
    Check,
    /// `SyncAfterRestore` (a VM restored from a snapshot: nothing may come before it).
    SyncAfterRestore,
}

/// Context for a short request.
pub fn short() -> Context {
    context::with_timeout(REQUEST_TIMEOUT.as_nanos() as i64)
}

/// Context for a long-poll request (no timeout; ends when the VM goes away).
pub fn long() -> Context {
    Context::default()
}

/// Wraps an agent ttrpc error with the name of the call.
pub fn agent_err(op: &'static str) -> impl FnOnce(ttrpc::Error) -> ShimError {
    move |source| ShimError::Agent { op, source }
}

/// Connects to the agent: retries the vsock handshake and the `first` call until it answers,
/// the VMM exits (reported with the VMM's reason) or `timeout` passes.
pub fn connect(vm: &Vm, port: u32, timeout: Duration, first: FirstCall) -> Result<AgentClient> {
    let deadline = Instant::now() + timeout;
    let exit = vm.exit_watch();
    let uds = vm.plan().vsock_uds();
    let mut last = String::from("not tried");
    loop {
        if let Some(st) = exit.get() {
            return Err(VmError::ExitedDuringBoot { status: st.to_string(), reason: vm.exit_reason() }.into());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(VmError::BootTimeout { port, secs: timeout.as_secs(), last }.into());
        }
        let step = (deadline - now).min(Duration::from_secs(5));
        if std::fs::symlink_metadata(&uds).is_err() {
            last = format!("{uds:?} does not exist yet");
            exit.wait(Some(SOCKET_RETRY));
            continue;
        }
        match try_once(&uds, port, step, first) {
            Ok(client) => return Ok(client),
            Err(e) => last = crate::error::chain(&e),
        }
        // The VMM exiting wakes this wait at once.
        exit.wait(Some(CONNECT_RETRY));
    }
}

fn try_once(uds: &std::path::Path, port: u32, step: Duration, first: FirstCall) -> Result<AgentClient> {
    let stream = connect_hybrid_vsock(uds, port, step)?;
    let client = ttrpc::Client::new(stream.into_raw_fd()).map_err(agent_err("connect"))?;
    let client = AgentClient::new(client);
    match first {
        FirstCall::Check => {
            client.check(context::with_timeout(step.as_nanos() as i64), &agent::CheckRequest::new()).map_err(agent_err("Check"))?;
        }
        FirstCall::SyncAfterRestore => sync_after_restore(&client, step)?,
    }
    Ok(client)
}

/// Bytes of host randomness [`sync_after_restore`] hands the guest (512 bits).
const RESTORE_ENTROPY_BYTES: usize = 64;
// The agent refuses other amounts.
const _: () = assert!(RESTORE_ENTROPY_BYTES >= husk_protocol::MIN_RESTORE_ENTROPY && RESTORE_ENTROPY_BYTES <= husk_protocol::MAX_RESTORE_ENTROPY);

/// Brings a VM restored from a snapshot up to date, right after connecting to it: sets the
/// guest's wall clock to the host's (the guest's went on from the moment of the snapshot) and
/// credits the guest kernel with fresh host randomness (every clone of a snapshot starts with
/// the same random state), through the agent's `SyncAfterRestore`.
pub fn sync_after_restore(agent: &AgentClient, timeout: Duration) -> Result<()> {
    let mut req = agent::SyncAfterRestoreRequest::new();
    let mut entropy = vec![0; RESTORE_ENTROPY_BYTES];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut entropy)).map_err(|e| ShimError::io("read random bytes from", "/dev/urandom", e))?;
    req.entropy = entropy;
    // Read last, so the time the guest gets is as fresh as it can be.
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).ok().and_then(|d| i64::try_from(d.as_nanos()).ok());
    req.realtime_ns = now.ok_or_else(|| ShimError::FailedPrecondition("the host's clock is before 1970 or after 2262".into()))?;
    let ctx = context::with_timeout(i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX));
    agent.sync_after_restore(ctx, &req).map_err(agent_err("SyncAfterRestore"))?;
    Ok(())
}
