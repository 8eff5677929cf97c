//! Configuration of the virtio devices of one microVM (`--disk`, `--net`, `--vsock`, `--fs`).
//!
//! Each type parses from the comma-separated `key=value` form of its command-line flag and
//! deserializes from the equivalent TOML table.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, Result};

/// Longest virtio-blk serial (the `id`), fixed by the virtio spec (GET_ID returns 20 bytes).
pub const MAX_DISK_ID_LEN: usize = 20;
/// Longest Linux interface name (IFNAMSIZ - 1).
pub const MAX_TAP_NAME_LEN: usize = 15;
/// Guest CID used when `--vsock` gives none.
pub const DEFAULT_GUEST_CID: u32 = 3;
/// Longest virtio-fs tag: the size of the `tag` field of the device's config space.
pub const MAX_FS_TAG_LEN: usize = 36;
/// Longest unix socket path (`sun_path` holds 108 bytes with the terminating NUL).
pub const MAX_SOCKET_PATH_LEN: usize = 107;

/// One virtio-blk disk. `--disk path=PATH[,id=NAME][,ro][,fd=N]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Backing file or block device on the host.
    pub path: PathBuf,
    /// Serial the guest sees (`/sys/block/vdX/serial`), at most 20 printable ASCII bytes.
    /// Defaults to `disk<N>` with N the position of the disk (0-based).
    #[serde(default)]
    pub id: Option<String>,
    /// Expose the disk read-only (`ro` flag).
    #[serde(default)]
    pub read_only: bool,
    /// The image opened by the parent, inherited as this descriptor number (3 or more),
    /// read-write unless `read_only`: husk-vmm then opens nothing and `path` only names the
    /// image (a jailed VMM's uid need not be allowed to open it).
    #[serde(default)]
    pub fd: Option<i32>,
}

/// One virtio-net device backed by a tap.
/// `--net tap=NAME[,mac=AA:BB:..][,netns=PATH | ,fd=N]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Name of the tap device on the host (created if it does not exist). With `fd`, the name
    /// the open tap must have (checked; it also names the device's counters).
    pub tap: String,
    /// MAC address of the guest's interface, `AA:BB:CC:DD:EE:FF`; none lets the guest pick one.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// Network namespace (a bind-mounted nsfs path) in which the tap is opened.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// An open tap inherited from the parent as this descriptor number (3 or more), opened
    /// with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`: the VMM then opens nothing and enters no
    /// namespace (the shim creates the tap in the pod's namespace). Excludes `netns`.
    #[serde(default)]
    pub fd: Option<i32>,
}

/// A virtio-vsock device with the hybrid (unix socket) host side. `--vsock cid=N,uds=PATH`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Context id of the guest (3 or more).
    #[serde(default = "default_cid")]
    pub cid: u32,
    /// Unix socket the host connects to (`CONNECT <port>\n`); guest-initiated connections to
    /// host port P go to `<uds>_<P>`.
    pub uds: PathBuf,
}

/// A virtio-fs device served by a vhost-user backend such as virtiofsd.
/// `--fs tag=TAG,socket=PATH[,fd=N]`. The guest mounts it with `mount -t virtiofs TAG DIR`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// Name the guest mounts the file system by: 1 to 36 printable ASCII characters without
    /// spaces or commas, unique among the VM's fs devices.
    pub tag: String,
    /// The vhost-user socket the backend (virtiofsd `--socket-path`) listens on; it must exist
    /// when husk-vmm starts. With `fd`, only the name of the backend in messages.
    pub socket: PathBuf,
    /// A connection to the backend the parent opened, inherited as this descriptor number (3
    /// or more): husk-vmm then connects to nothing (a jailed VMM cannot reach `socket`).
    #[serde(default)]
    pub fd: Option<i32>,
}

fn default_cid() -> u32 {
    DEFAULT_GUEST_CID
}

/// A MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Parses `AA:BB:CC:DD:EE:FF`; `field` names the setting in the error.
    pub fn parse(field: &str, s: &str) -> Result<Self> {
        let bad = || ConfigError::invalid(field, s, "expected six hex bytes like 02:00:00:00:00:01");
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if out[0] & 1 != 0 {
            return Err(ConfigError::invalid(field, s, "a multicast address cannot be an interface's MAC"));
        }
        Ok(MacAddr(out))
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        MacAddr::parse("net.mac", &s).map_err(serde::de::Error::custom)
    }
}

/// Checks a virtio-blk serial (a disk's `id`): at most [`MAX_DISK_ID_LEN`] printable ASCII
/// characters, no spaces. `field` names the setting in the error.
pub fn validate_disk_serial(field: &str, id: &str) -> Result<()> {
    if id.len() > MAX_DISK_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::invalid(field, id, format!("must be at most {MAX_DISK_ID_LEN} printable ASCII characters without spaces")));
    }
    Ok(())
}

/// Splits `a=1,b=2,flag` into pairs; a bare word has an empty value.
fn pairs<'a>(flag: &str, s: &'a str) -> Result<Vec<(&'a str, &'a str)>> {
    if s.trim().is_empty() {
        return Err(ConfigError::invalid(flag, s, "empty"));
    }
    Ok(s.split(',').map(|kv| kv.split_once('=').unwrap_or((kv, ""))).collect())
}

impl DiskConfig {
    /// Parses the value of one `--disk` flag.
    pub fn parse_flag(s: &str) -> Result<Self> {
        let mut path = None;
        let mut id = None;
        let mut read_only = false;
        let mut fd = None;
        for (k, v) in pairs("--disk", s)? {
            match (k, v) {
                ("path", p) if !p.is_empty() => path = Some(PathBuf::from(p)),
                ("id", i) => id = Some(i.to_string()),
                ("ro", "") | ("ro", "on") | ("ro", "true") => read_only = true,
                ("ro", "off") | ("ro", "false") => read_only = false,
                ("fd", n) => fd = Some(n.parse().map_err(|_| ConfigError::invalid("disk.fd", n, "not a descriptor number"))?),
                _ => return Err(ConfigError::invalid("--disk", s, format!("unknown or empty key `{k}` (expected path=PATH[,id=NAME][,ro][,fd=N])"))),
            }
        }
        let path = path.ok_or_else(|| ConfigError::invalid("--disk", s, "path=PATH is required"))?;
        Ok(DiskConfig { path, id, read_only, fd })
    }

    /// Checks the id and that the backing file exists (or, given as a descriptor, that the
    /// number is past stdio).
    pub fn validate(&self) -> Result<()> {
        if let Some(id) = &self.id {
            if id.is_empty() {
                return Err(ConfigError::invalid("disk.id", id, format!("must be 1 to {MAX_DISK_ID_LEN} printable ASCII characters without spaces or commas")));
            }
            validate_disk_serial("disk.id", id)?;
        }
        match self.fd {
            Some(fd) if fd < 3 => return Err(ConfigError::invalid("disk.fd", fd, "0-2 are stdio; an inherited image is 3 or more")),
            Some(_) => {}
            None => {
                std::fs::metadata(&self.path).map_err(|source| ConfigError::File { field: "disk.path".into(), path: self.path.clone(), source })?;
            }
        }
        Ok(())
    }
}

impl NetConfig {
    /// Parses the value of one `--net` flag.
    pub fn parse_flag(s: &str) -> Result<Self> {
        let mut tap = None;
        let mut mac = None;
        let mut netns = None;
        let mut fd = None;
        for (k, v) in pairs("--net", s)? {
            match (k, v) {
                ("tap", t) => tap = Some(t.to_string()),
                ("mac", m) => mac = Some(MacAddr::parse("net.mac", m)?),
                ("netns", n) if !n.is_empty() => netns = Some(PathBuf::from(n)),
                ("fd", n) => fd = Some(n.parse().map_err(|_| ConfigError::invalid("net.fd", n, "not a descriptor number"))?),
                _ => return Err(ConfigError::invalid("--net", s, format!("unknown or empty key `{k}` (expected tap=NAME[,mac=..][,netns=PATH | ,fd=N])"))),
            }
        }
        let tap = tap.ok_or_else(|| ConfigError::invalid("--net", s, "tap=NAME is required"))?;
        Ok(NetConfig { tap, mac, netns, fd })
    }

    /// Checks the tap name, and that an inherited descriptor is not stdio and comes without a
    /// namespace.
    pub fn validate(&self) -> Result<()> {
        if self.tap.is_empty() || self.tap.len() > MAX_TAP_NAME_LEN || self.tap.contains(['/', ' ', '\0']) {
            return Err(ConfigError::invalid("net.tap", &self.tap, format!("must be a 1 to {MAX_TAP_NAME_LEN} byte interface name")));
        }
        if let Some(fd) = self.fd {
            if fd < 3 {
                return Err(ConfigError::invalid("net.fd", fd, "must be 3 or more (0-2 are stdio)"));
            }
            if self.netns.is_some() {
                return Err(ConfigError::invalid("net.fd", fd, "an inherited tap is already in its namespace: give fd or netns, not both"));
            }
        }
        Ok(())
    }
}

impl VsockConfig {
    /// Parses the value of the `--vsock` flag.
    pub fn parse_flag(s: &str) -> Result<Self> {
        let mut cid = DEFAULT_GUEST_CID;
        let mut uds = None;
        for (k, v) in pairs("--vsock", s)? {
            match (k, v) {
                ("cid", c) => cid = c.parse().map_err(|_| ConfigError::invalid("vsock.cid", c, "not a number"))?,
                ("uds", u) if !u.is_empty() => uds = Some(PathBuf::from(u)),
                _ => return Err(ConfigError::invalid("--vsock", s, format!("unknown or empty key `{k}` (expected cid=N,uds=PATH)"))),
            }
        }
        let uds = uds.ok_or_else(|| ConfigError::invalid("--vsock", s, "uds=PATH is required"))?;
        Ok(VsockConfig { cid, uds })
    }

    /// Checks the CID (0, 1 and 2 are reserved; u32::MAX is VMADDR_CID_ANY).
    pub fn validate(&self) -> Result<()> {
        if self.cid < 3 || self.cid == u32::MAX {
            return Err(ConfigError::invalid("vsock.cid", self.cid, "must be at least 3 (0-2 are reserved)"));
        }
        if self.uds.as_os_str().len() >= 108 {
            return Err(ConfigError::invalid("vsock.uds", self.uds.display(), "unix socket paths are limited to 107 bytes"));
        }
        Ok(())
    }
}

impl FsConfig {
    /// Parses the value of one `--fs` flag.
    pub fn parse_flag(s: &str) -> Result<Self> {
        let mut tag = None;
        let mut socket = None;
        let mut fd = None;
        for (k, v) in pairs("--fs", s)? {
            match (k, v) {
                ("tag", t) => tag = Some(t.to_string()),
                ("socket", p) if !p.is_empty() => socket = Some(PathBuf::from(p)),
                ("fd", n) => fd = Some(n.parse().map_err(|_| ConfigError::invalid("fs.fd", n, "not a descriptor number"))?),
                _ => return Err(ConfigError::invalid("--fs", s, format!("unknown or empty key `{k}` (expected tag=TAG,socket=PATH[,fd=N])"))),
            }
        }
        let tag = tag.ok_or_else(|| ConfigError::invalid("--fs", s, "tag=TAG is required"))?;
        let socket = socket.ok_or_else(|| ConfigError::invalid("--fs", s, "socket=PATH is required"))?;
        Ok(FsConfig { tag, socket, fd })
    }

    /// Checks the tag, and that the socket exists and is a unix socket (without `fd`) or that
    /// the inherited descriptor is not stdio (with it).
    pub fn validate(&self) -> Result<()> {
        if self.tag.is_empty() || self.tag.len() > MAX_FS_TAG_LEN || !self.tag.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            return Err(ConfigError::invalid(
                "fs.tag",
                &self.tag,
                format!("must be 1 to {MAX_FS_TAG_LEN} printable ASCII characters without spaces or commas"),
            ));
        }
        if let Some(fd) = self.fd {
            if fd < 3 {
                return Err(ConfigError::invalid("fs.fd", fd, "must be 3 or more (0-2 are stdio)"));
            }
            return Ok(());
        }
        if self.socket.as_os_str().len() > MAX_SOCKET_PATH_LEN {
            return Err(ConfigError::invalid("fs.socket", self.socket.display(), format!("unix socket paths are limited to {MAX_SOCKET_PATH_LEN} bytes")));
        }
        let md = std::fs::metadata(&self.socket).map_err(|source| ConfigError::File { field: "fs.socket".into(), path: self.socket.clone(), source })?;
        {
            use std::os::unix::fs::FileTypeExt;
            if !md.file_type().is_socket() {
                return Err(ConfigError::invalid(
                    "fs.socket",
                    self.socket.display(),
                    "not a unix socket (start the vhost-user backend, e.g. virtiofsd --socket-path, first)",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_flag() {
        let d = DiskConfig::parse_flag("path=/x.img,id=root,ro").unwrap();
        assert_eq!(d, DiskConfig { path: "/x.img".into(), id: Some("root".into()), read_only: true, fd: None });
        assert!(DiskConfig::parse_flag("id=root").unwrap_err().to_string().contains("path=PATH"));
        assert!(DiskConfig::parse_flag("path=/x,size=3").unwrap_err().to_string().contains("size"));
        let long = DiskConfig { path: "/".into(), id: Some("x".repeat(21)), read_only: false, fd: None };
        assert!(long.validate().unwrap_err().to_string().contains("disk.id"));
        let missing = DiskConfig { path: "/nonexistent/disk".into(), id: None, read_only: false, fd: None };
        assert!(missing.validate().unwrap_err().to_string().contains("/nonexistent/disk"));
    }

    #[test]
    fn net_flag() {
        let n = NetConfig::parse_flag("tap=tap0,mac=02:00:00:00:00:0a,netns=/var/run/netns/x").unwrap();
        assert_eq!(n.mac, Some(MacAddr([2, 0, 0, 0, 0, 10])));
        assert_eq!(n.netns.as_deref(), Some(std::path::Path::new("/var/run/netns/x")));
        let e = NetConfig::parse_flag("tap=t,mac=zz:00:00:00:00:00").unwrap_err().to_string();
        assert!(e.contains("net.mac") && e.contains("zz:"), "{e}");
        assert!(NetConfig::parse_flag("tap=t,mac=01:00:00:00:00:00").is_err());
        assert!(NetConfig { tap: "a".repeat(16), mac: None, netns: None, fd: None }.validate().is_err());
        let f = NetConfig::parse_flag("tap=tap0_husk,fd=7").unwrap();
        assert_eq!(f.fd, Some(7));
        f.validate().unwrap();
        let e = NetConfig { fd: Some(2), ..f.clone() }.validate().unwrap_err().to_string();
        assert!(e.contains("net.fd") && e.contains("stdio"), "{e}");
        let e = NetConfig { netns: Some("/var/run/netns/x".into()), ..f }.validate().unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
        assert!(NetConfig::parse_flag("tap=t,fd=x").unwrap_err().to_string().contains("net.fd"));
    }

    #[test]
    fn vsock_flag() {
        let v = VsockConfig::parse_flag("cid=7,uds=/run/v.sock").unwrap();
        assert_eq!(v, VsockConfig { cid: 7, uds: "/run/v.sock".into() });
        assert_eq!(VsockConfig::parse_flag("uds=/a").unwrap().cid, 3);
        let e = VsockConfig::parse_flag("cid=2,uds=/a").unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("vsock.cid") && e.contains('2'), "{e}");
    }

    #[test]
    fn fs_flag() {
        let f = FsConfig::parse_flag("tag=share,socket=/run/vfs.sock").unwrap();
        assert_eq!(f, FsConfig { tag: "share".into(), socket: "/run/vfs.sock".into(), fd: None });
        assert_eq!(FsConfig::parse_flag("tag=s,socket=/x,fd=5").unwrap().fd, Some(5));
        assert!(FsConfig::parse_flag("tag=s,socket=/x,fd=five").unwrap_err().to_string().contains("fs.fd"));
        assert!(FsConfig::parse_flag("socket=/a").unwrap_err().to_string().contains("tag=TAG"));
        assert!(FsConfig::parse_flag("tag=a").unwrap_err().to_string().contains("socket=PATH"));
        assert!(FsConfig::parse_flag("tag=a,socket=/a,cache=auto").unwrap_err().to_string().contains("cache"));

        let dir = std::env::temp_dir().join(format!("husk-fs-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("vfs.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let ok = FsConfig { tag: "a".repeat(MAX_FS_TAG_LEN), socket: sock.clone(), fd: None };
        ok.validate().unwrap();
        let e = FsConfig { tag: "a".repeat(MAX_FS_TAG_LEN + 1), ..ok.clone() }.validate().unwrap_err().to_string();
        assert!(e.contains("fs.tag") && e.contains("1 to 36"), "{e}");
        for bad in ["", "a b", "a,b", "t\u{e9}"] {
            assert!(FsConfig { tag: bad.into(), ..ok.clone() }.validate().is_err(), "tag {bad:?}");
        }
        let e = FsConfig { socket: dir.join("missing.sock"), ..ok.clone() }.validate().unwrap_err().to_string();
        assert!(e.contains("fs.socket") && e.contains("missing.sock"), "{e}");
        let file = dir.join("plain");
        std::fs::write(&file, b"").unwrap();
        let e = FsConfig { socket: file, ..ok.clone() }.validate().unwrap_err().to_string();
        assert!(e.contains("not a unix socket"), "{e}");
        let e = FsConfig { socket: PathBuf::from(format!("/{}", "s".repeat(107))), ..ok.clone() }.validate().unwrap_err().to_string();
        assert!(e.contains("107 bytes"), "{e}");
        // An inherited connection: the socket is only a name (a jailed VMM cannot see it).
        FsConfig { socket: dir.join("missing.sock"), fd: Some(3), ..ok.clone() }.validate().unwrap();
        let e = FsConfig { fd: Some(1), ..ok }.validate().unwrap_err().to_string();
        assert!(e.contains("fs.fd") && e.contains("stdio"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
