//! The agent serves only the host: a vsock peer that is not CID 2 gets no answer. Run by
//! tests/agent/test-peer.sh in the testbed's outer VM, where the agent listens on vsock and
//! this client reaches it through the vsock loopback transport (peer CID 1, as a container's
//! connection would be if the guest kernel had loopback); ignored in a plain `cargo test`.
#![allow(clippy::unwrap_used)]

use husk_protocol::agent::*;
use husk_protocol::agent_ttrpc::AgentClient;

#[test]
#[ignore = "needs an agent on vsock and the vsock loopback transport: run tests/agent/test-peer.sh"]
fn a_vsock_peer_other_than_the_host_gets_no_answer() {
    let addr = std::env::var("HUSK_AGENT_VSOCK").expect("HUSK_AGENT_VSOCK: vsock://1:<port>");
    // The kernel completes the connection (the agent listens); the agent then closes it unread.
    let client = ttrpc::Client::connect(&addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e:?}"));
    let c = AgentClient::new(client);
    let r = c.version(ttrpc::context::with_timeout(20_000_000_000), &VersionRequest::new());
    assert!(r.is_err(), "a peer with CID 1 got an answer from the agent: {r:?}");
    println!("refused as expected: {:?}", r.unwrap_err());
}
