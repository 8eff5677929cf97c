//! The ttrpc client to husk-agent inside the VM, reached over the VMM's hybrid vsock.

use std::os::fd::IntoRawFd;
use std::time::{Duration, Instant};

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

/// Connects to the agent: retries the vsock handshake and a `Check` call until it answers,
/// the VMM exits (reported with the VMM's reason) or `timeout` passes.
pub fn connect(vm: &Vm, port: u32, timeout: Duration) -> Result<AgentClient> {
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
        match try_once(&uds, port, step) {
            Ok(client) => return Ok(client),
            Err(e) => last = crate::error::chain(&e),
        }
        // The VMM exiting wakes this wait at once.
        exit.wait(Some(CONNECT_RETRY));
    }
}

fn try_once(uds: &std::path::Path, port: u32, step: Duration) -> Result<AgentClient> {
    let stream = connect_hybrid_vsock(uds, port, step)?;
    let client = ttrpc::Client::new(stream.into_raw_fd()).map_err(agent_err("connect"))?;
    let client = AgentClient::new(client);
    client.check(context::with_timeout(step.as_nanos() as i64), &agent::CheckRequest::new()).map_err(agent_err("Check"))?;
    Ok(client)
}
