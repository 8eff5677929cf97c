//! From a parsed HTTP request to what it asks for: method, path and body checked here,
//! without touching the VM (so the fuzz target and the unit tests run it alone).

use husk_config::api::{AttachDisk, SnapshotRequest, COUNTERS_PATH, DISKS_PATH, SNAPSHOT_PATH, VM_PATH};

use super::http::Request;

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /vm`.
    Describe,
    /// `GET /vm/counters`.
    Counters,
    /// `PUT|POST /vm/pause`.
    Pause,
    /// `PUT|POST /vm/resume`.
    Resume,
    /// `PUT|POST /vm/shutdown`.
    Shutdown,
    /// `PUT|POST /vm/kill`.
    Kill,
    /// `PUT|POST /vm/snapshot` with `{"dir": ABSOLUTE_PATH}`.
    Snapshot(std::path::PathBuf),
    /// `GET /vm/disks`.
    Disks,
    /// `GET /vm/disks/<name>`.
    Disk(String),
    /// `PUT /vm/disks/<name>` with an attach body.
    Attach(String, AttachDisk),
    /// `DELETE /vm/disks/<name>`.
    Detach(String),
}

/// A request refused before it reaches the VM: status and message.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status (400, 404, 405).
    pub status: u16,
    /// What was wrong, naming the value.
    pub message: String,
}

impl Refusal {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Refusal { status, message: message.into() }
    }
}

/// An error and its sources, joined with ": " (for error bodies).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Finds the route of `req`.
pub fn route(req: &Request) -> Result<Route, Refusal> {
    let method = req.method.as_str();
    let action = matches!(method, "PUT" | "POST");
    let not_allowed = || Refusal::new(405, format!("{method} not allowed on {}", req.path));
    let path = req.path.as_str();
    if let Some(name) = path.strip_prefix(DISKS_PATH).and_then(|rest| rest.strip_prefix('/')) {
        if name.is_empty() || name.contains('/') {
            return Err(Refusal::new(404, format!("no such resource {path}")));
        }
        let name = name.to_string();
        return match method {
            "GET" => Ok(Route::Disk(name)),
            "PUT" => match AttachDisk::from_json(&req.body) {
                Ok(body) => Ok(Route::Attach(name, body)),
                Err(e) => Err(Refusal::new(400, format!("PUT {path}: {}", error_chain(&e)))),
            },
            "DELETE" => Ok(Route::Detach(name)),
            _ => Err(not_allowed()),
        };
    }
    let route = match path {
        VM_PATH => (method == "GET").then_some(Route::Describe),
        COUNTERS_PATH => (method == "GET").then_some(Route::Counters),
        DISKS_PATH => (method == "GET").then_some(Route::Disks),
        "/vm/pause" => action.then_some(Route::Pause),
        "/vm/resume" => action.then_some(Route::Resume),
        "/vm/shutdown" => action.then_some(Route::Shutdown),
        "/vm/kill" => action.then_some(Route::Kill),
        SNAPSHOT_PATH if action => {
            return match serde_json::from_slice::<SnapshotRequest>(&req.body) {
                Ok(b) if b.dir.is_absolute() => Ok(Route::Snapshot(b.dir)),
                Ok(b) => Err(Refusal::new(400, format!("PUT {path}: dir {:?} is not an absolute path", b.dir))),
                Err(e) => Err(Refusal::new(400, format!("PUT {path}: the body must be {{\"dir\": ABSOLUTE_PATH}}: {e}"))),
            };
        }
        SNAPSHOT_PATH => None,
        _ => return Err(Refusal::new(404, format!("no such resource {path}"))),
    };
    route.ok_or_else(not_allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request { method: method.into(), path: path.into(), body: body.as_bytes().to_vec() }
    }

    #[test]
    fn known_routes() {
        assert_eq!(route(&req("GET", "/vm", "")), Ok(Route::Describe));
        assert_eq!(route(&req("POST", "/vm/pause", "")), Ok(Route::Pause));
        assert_eq!(route(&req("PUT", "/vm/snapshot", r#"{"dir": "/s"}"#)), Ok(Route::Snapshot("/s".into())));
        assert_eq!(route(&req("PUT", "/vm/kill", "")), Ok(Route::Kill));
        assert_eq!(route(&req("GET", "/vm/disks", "")), Ok(Route::Disks));
        assert_eq!(route(&req("GET", "/vm/disks/slot1", "")), Ok(Route::Disk("slot1".into())));
        assert_eq!(route(&req("DELETE", "/vm/disks/slot0", "")), Ok(Route::Detach("slot0".into())));
        let r = route(&req("PUT", "/vm/disks/slot0", r#"{"path":"/i/a.img","id":"c1","read_only":true}"#)).unwrap();
        assert_eq!(r, Route::Attach("slot0".into(), AttachDisk { path: "/i/a.img".into(), id: "c1".into(), read_only: true }));
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let refused = |m: &str, p: &str, b: &str| route(&req(m, p, b)).unwrap_err();
        let r = refused("PUT", "/vm/disks/slot0", "");
        assert_eq!(r.status, 400);
        assert!(r.message.contains("PUT /vm/disks/slot0") && r.message.contains("EOF"), "{}", r.message);
        let r = refused("PUT", "/vm/disks/slot0", r#"{"path":"/a","ro":true}"#);
        assert!(r.status == 400 && r.message.contains("unknown field `ro`"), "{}", r.message);
        let r = refused("PUT", "/vm/disks/slot0", r#"{"path":"a.img"}"#);
        assert!(r.status == 400 && r.message.contains("\"a.img\"") && r.message.contains("absolute"), "{}", r.message);
        let r = refused("PUT", "/vm/disks/slot0", r#"{"path":"/a","id":"123456789012345678901"}"#);
        assert!(r.status == 400 && r.message.contains("123456789012345678901") && r.message.contains("20"), "{}", r.message);
        let r = refused("PUT", "/vm/disks/slot0", "\u{ff}garbage");
        assert_eq!(r.status, 400);

        assert_eq!(refused("POST", "/vm/disks/slot0", "{}").status, 405);
        assert_eq!(refused("DELETE", "/vm/disks", "").status, 405);
        assert_eq!(refused("GET", "/vm/pause", "").status, 405);
        let r = refused("PUT", "/vm/snapshot", r#"{"dir": "s"}"#);
        assert!(r.status == 400 && r.message.contains("\"s\" is not an absolute path"), "{}", r.message);
        let r = refused("PUT", "/vm/snapshot", r#"{"path": "/s"}"#);
        assert!(r.status == 400 && r.message.contains("unknown field `path`"), "{}", r.message);
        assert_eq!(refused("GET", "/vm/snapshot", "").status, 405);
        assert_eq!(refused("DELETE", "/vm", "").status, 405);
        for p in ["/vm/disks/", "/vm/disks/a/b", "/vm/diskss", "/nope", "/vm/disks/slot0/"] {
            let r = refused("GET", p, "");
            assert!(r.status == 404 && r.message.contains(p), "{p}: {r:?}");
        }
    }
}
