//! The control API of husk-vmm, typed: the JSON bodies its server sends and accepts, and a
//! small blocking [`Client`] for it, so the shim talks to the VMM without depending on the
//! microvm crate. The protocol (HTTP/1.1 on a unix socket, one request per connection) is
//! described in `microvm/API.md`.

mod client;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use client::{Client, ClientError, DEFAULT_TIMEOUT};

use crate::devices::validate_disk_serial;
use crate::error::{ConfigError, Result};
use crate::vm::VmConfig;

/// `GET /vm`.
pub const VM_PATH: &str = "/vm";
/// `GET /vm/counters`.
pub const COUNTERS_PATH: &str = "/vm/counters";
/// `GET /vm/disks`; one disk or slot is `/vm/disks/<name>` ([`disk_path`]).
pub const DISKS_PATH: &str = "/vm/disks";
/// `PUT /vm/snapshot`.
pub const SNAPSHOT_PATH: &str = "/vm/snapshot";

/// Body of `PUT /vm/snapshot`: the existing directory to save the paused VM into.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// An absolute path.
    pub dir: PathBuf,
}

/// Answer of `PUT /vm/snapshot`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDone {
    /// Paused: the VM stays paused after a snapshot.
    pub state: VmState,
    /// Where it was saved.
    pub dir: PathBuf,
}

/// Path of one disk or slot: `/vm/disks/<name>`.
pub fn disk_path(name: &str) -> String {
    format!("{DISKS_PATH}/{name}")
}

/// Body of `PUT /vm/disks/<slot>`: the image to attach to an empty disk slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachDisk {
    /// Raw image file (or block device) on the host, an absolute path. husk-vmm opens it when
    /// the request arrives (read-only if `read_only`), unless the request carries the open
    /// image as a descriptor ([`Client::attach_disk_fd`], SCM_RIGHTS): `path` then only names
    /// it (in `GET /vm/disks` and in messages), and a jailed husk-vmm, which cannot open host
    /// paths, gets its images this way.
    pub path: PathBuf,
    /// Serial the guest reads from `/sys/block/vdX/serial`: at most 20 printable ASCII
    /// characters without spaces; empty for none.
    #[serde(default)]
    pub id: String,
    /// Refuse the guest's writes (each one fails with an I/O error in the guest). The slot
    /// does not turn read-only in the guest's eyes: features are fixed at boot.
    #[serde(default)]
    pub read_only: bool,
}

impl AttachDisk {
    /// Checks the id and that the path is absolute (the file itself is checked when opened).
    pub fn validate(&self) -> Result<()> {
        validate_disk_serial("id", &self.id)?;
        if !self.path.is_absolute() {
            return Err(ConfigError::invalid("path", self.path.display(), "must be an absolute path"));
        }
        Ok(())
    }

    /// Parses and validates a request body; the error names the field and the value.
    pub fn from_json(body: &[u8]) -> std::result::Result<Self, AttachBodyError> {
        let req: AttachDisk = serde_json::from_slice(body).map_err(AttachBodyError::Json)?;
        req.validate().map_err(AttachBodyError::Invalid)?;
        Ok(req)
    }
}

/// Why a `PUT /vm/disks/<slot>` body is unusable.
#[derive(Debug, thiserror::Error)]
pub enum AttachBodyError {
    /// Not JSON, or not the [`AttachDisk`] schema.
    #[error("attach request body is not {{\"path\": ABSOLUTE_PATH, \"id\": SERIAL, \"read_only\": BOOL}}")]
    Json(#[source] serde_json::Error),
    /// A field holds a value that is not allowed.
    #[error("invalid attach request")]
    Invalid(#[source] ConfigError),
}

/// Whether a disk was given at boot or is a slot images are attached to at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskKind {
    /// A `disk` entry of the configuration: its image is fixed.
    Boot,
    /// One of the `disk_slots`: attach and detach through the API.
    Slot,
}

/// One disk or slot as `GET /vm/disks` and the attach/detach answers describe it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// Its name in the API: `slotN` for slots, the disk's `id` (or `diskN`) for boot disks.
    pub slot: String,
    /// Boot disk or slot.
    pub kind: DiskKind,
    /// Whether an image backs it (always true for a boot disk).
    pub attached: bool,
    /// Serial the guest sees; empty when detached.
    pub id: String,
    /// The backing image; none when detached.
    pub path: Option<PathBuf>,
    /// Writes are refused.
    pub read_only: bool,
    /// Capacity the guest sees, in 512-byte sectors; 0 when detached.
    pub sectors: u64,
}

/// The body of every error answer (4xx, 5xx).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What failed and with which value.
    pub error: String,
}

/// Run state of the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// vCPUs run.
    Running,
    /// vCPUs are parked (`PUT /vm/pause`).
    Paused,
    /// The guest was asked to shut down (`PUT /vm/shutdown`).
    ShuttingDown,
    /// husk-vmm is exiting (`PUT /vm/kill`).
    Stopped,
}

/// `GET /vm`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDescription {
    /// Running or paused.
    pub state: VmState,
    /// The configuration the VM was started with.
    pub config: VmConfig,
    /// The kernel command line as given to the guest, device announcements included.
    pub cmdline: String,
}

/// Answer of pause, resume, shutdown and kill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    /// The state the VM is in (or going to).
    pub state: VmState,
    /// What was sent to the guest (`ctrl-alt-del` for shutdown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<String>,
}

/// `GET /vm/counters`: counter values by device name (`block.<id>`, `net.<tap>`, `vsock`),
/// then by counter name.
pub type Counters = BTreeMap<String, BTreeMap<String, u64>>;

/// Whether `name` can be put into a request path as it is (letters, digits, `-`, `_`, `.`).
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_bodies_good_and_bad() {
        let ok = AttachDisk::from_json(br#"{"path":"/img/a.ext4","id":"ctr-1","read_only":true}"#).unwrap();
        assert_eq!(ok, AttachDisk { path: "/img/a.ext4".into(), id: "ctr-1".into(), read_only: true });
        let min = AttachDisk::from_json(br#"{"path":"/a"}"#).unwrap();
        assert_eq!((min.id.as_str(), min.read_only), ("", false));

        let chain = |body: &[u8]| {
            let e = AttachDisk::from_json(body).unwrap_err();
            let mut s = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(c) = src {
                s += &format!(": {c}");
                src = c.source();
            }
            s
        };
        let e = chain(b"not json");
        assert!(e.contains("expected") && e.contains("line 1"), "{e}");
        let e = chain(br#"{"id":"x"}"#);
        assert!(e.contains("missing field `path`"), "{e}");
        let e = chain(br#"{"path":"/a","size":3}"#);
        assert!(e.contains("unknown field `size`"), "{e}");
        let e = chain(br#"{"path":"/a","read_only":"yes"}"#);
        assert!(e.contains("read_only") || e.contains("invalid type"), "{e}");
        let e = chain(br#"{"path":"relative.img"}"#);
        assert!(e.contains("relative.img") && e.contains("absolute"), "{e}");
        let e = chain(format!(r#"{{"path":"/a","id":"{}"}}"#, "x".repeat(21)).as_bytes());
        assert!(e.contains(&"x".repeat(21)) && e.contains("20"), "{e}");
        let e = chain(br#"{"path":"/a","id":"has space"}"#);
        assert!(e.contains("has space"), "{e}");
    }

    #[test]
    fn wire_names() {
        let info =
            DiskInfo { slot: "slot0".into(), kind: DiskKind::Slot, attached: true, id: "c1".into(), path: Some("/a".into()), read_only: false, sectors: 8 };
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["kind"], "slot");
        assert_eq!(v["slot"], "slot0");
        let s = StateChange { state: VmState::ShuttingDown, sent: Some("ctrl-alt-del".into()) };
        assert_eq!(serde_json::to_string(&s).unwrap(), r#"{"state":"shutting-down","sent":"ctrl-alt-del"}"#);
        let s = StateChange { state: VmState::Paused, sent: None };
        assert_eq!(serde_json::to_string(&s).unwrap(), r#"{"state":"paused"}"#);
        let d = VmDescription { state: VmState::Running, config: VmConfig::default(), cmdline: "x".into() };
        let back: VmDescription = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn plain_names() {
        assert!(is_plain_name("slot0") && is_plain_name("rootfs-1.a_b"));
        assert!(!is_plain_name("") && !is_plain_name("a/b") && !is_plain_name("a b") && !is_plain_name("x?y"));
    }
}
