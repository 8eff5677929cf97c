//! The generated sync client and server talk to each other over a unix socket.
#![allow(clippy::unwrap_used)]
use std::sync::Arc;

use husk_protocol::agent::{ReadStreamRequest, VersionRequest, VersionResponse};
use husk_protocol::agent_ttrpc::{create_agent, Agent, AgentClient};

struct Fake;

impl Agent for Fake {
    fn version(&self, _ctx: &ttrpc::TtrpcContext, _req: VersionRequest) -> ttrpc::Result<VersionResponse> {
        let mut resp = VersionResponse::new();
        resp.agent_version = "test".into();
        resp.api_version = husk_protocol::API_VERSION;
        Ok(resp)
    }
}

#[test]
fn client_reaches_server_and_unimplemented_calls_fail() {
    let dir = std::env::temp_dir().join(format!("husk-protocol-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("agent.sock");
    let addr = format!("unix://{}", sock.display());
    let mut server = ttrpc::Server::new().bind(&addr).unwrap().register_service(create_agent(Arc::new(Fake)));
    server.start().unwrap();

    let client = AgentClient::new(ttrpc::Client::connect(&addr).unwrap());
    let ctx = || ttrpc::context::with_timeout(5_000_000_000);
    let v = client.version(ctx(), &VersionRequest::new()).unwrap();
    assert_eq!(v.agent_version, "test");
    assert_eq!(v.api_version, 1);

    let err = client.read_stdout(ctx(), &ReadStreamRequest::new()).unwrap_err();
    match err {
        ttrpc::Error::RpcStatus(s) => assert_eq!(s.code(), ttrpc::Code::NOT_FOUND),
        other => panic!("unexpected error {other:?}"),
    }
    server.shutdown();
    std::fs::remove_dir_all(&dir).unwrap();
}
