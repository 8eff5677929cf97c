//! The guest initramfs: the statically linked husk-agent as `/init`, the directories PID 1
//! needs, `/dev/console`, and any extra files, as a reproducible cpio archive, gzip-compressed
//! or plain.
//!
//! Same inputs give the same bytes: entries are sorted by path, inode numbers are assigned in
//! that order, every mtime is 0, owners are root, and a gzip header carries no mtime or name.

pub mod newc;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use flate2::{Compression, GzBuilder};
use newc::{NewcEntry, NewcWriter, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG};

/// Directories every initramfs has (mode), so PID 1 can mount on them.
const BASE_DIRS: &[(&str, u32)] =
    &[("dev", 0o755), ("etc", 0o755), ("mnt", 0o755), ("proc", 0o555), ("root", 0o700), ("run", 0o755), ("sys", 0o555), ("tmp", 0o1777), ("var", 0o755)];

/// Errors building an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// Reading an input failed.
    #[error("cannot read {path}")]
    Read {
        /// The input.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The agent is not an ELF executable.
    #[error("agent {path} is not an ELF executable")]
    NotElf {
        /// The agent.
        path: PathBuf,
        /// Parse failure.
        #[source]
        source: goblin::error::Error,
    },
    /// The agent is an ELF file but not an x86-64 executable (object file, other machine).
    #[error("agent {path} is not an x86-64 executable ({what})")]
    NotExecutable {
        /// The agent.
        path: PathBuf,
        /// What it is instead.
        what: String,
    },
    /// The agent needs a dynamic loader or shared libraries the initramfs does not carry.
    #[error("agent {path} is dynamically linked (interpreter {interpreter:?}, libraries {libraries:?}); build it statically, e.g. --target x86_64-unknown-linux-musl")]
    DynamicAgent {
        /// The agent.
        path: PathBuf,
        /// Its PT_INTERP, if any.
        interpreter: Option<String>,
        /// Its DT_NEEDED libraries.
        libraries: Vec<String>,
    },
    /// An `--add` destination is not a clean absolute path, or collides with another entry.
    #[error("bad destination {dest:?} for {src}: {reason}")]
    BadDestination {
        /// The source file.
        src: PathBuf,
        /// The requested destination.
        dest: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A source is of a type the initramfs cannot hold (socket, fifo, device).
    #[error("cannot add {path}: unsupported file type (only files, directories, symlinks)")]
    UnsupportedFileType {
        /// The source.
        path: PathBuf,
    },
    /// Writing the output failed.
    #[error("cannot write initramfs {path}")]
    Write {
        /// The output.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// What goes into an initramfs.
#[derive(Debug, Clone, Default)]
pub struct InitramfsSpec {
    /// The agent binary; becomes `/init` (mode 0755). Must be statically linked.
    pub agent: PathBuf,
    /// Extra files or directory trees: (source on the host, absolute destination in the guest).
    pub extra: Vec<(PathBuf, String)>,
    /// Write the plain cpio archive instead of gzip-compressing it: the guest kernel then
    /// copies it instead of inflating it at every boot (faster to boot, larger on disk).
    pub uncompressed: bool,
}

/// What [`build_initramfs`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitramfsReport {
    /// Number of archive entries (without the trailer).
    pub entries: usize,
    /// Uncompressed archive size.
    pub cpio_bytes: u64,
    /// Size of the written file (equal to `cpio_bytes` when uncompressed).
    pub written_bytes: u64,
}

enum Node {
    Dir(u32),
    File { mode: u32, src: PathBuf },
    Symlink(PathBuf),
    CharDev { mode: u32, major: u32, minor: u32 },
}

/// Checks that `path` is an x86-64 ELF executable needing no dynamic loader or shared library.
pub fn check_static(path: &Path, bytes: &[u8]) -> Result<(), InitramfsError> {
    let elf = goblin::elf::Elf::parse(bytes).map_err(|source| InitramfsError::NotElf { path: path.to_path_buf(), source })?;
    use goblin::elf::header::{EM_X86_64, ET_DYN, ET_EXEC};
    let h = &elf.header;
    if h.e_machine != EM_X86_64 || !(h.e_type == ET_EXEC || h.e_type == ET_DYN) || h.e_entry == 0 {
        return Err(InitramfsError::NotExecutable {
            path: path.to_path_buf(),
            what: format!(
                "machine {}, type {}, entry {:#x}",
                goblin::elf::header::machine_to_str(h.e_machine),
                goblin::elf::header::et_to_str(h.e_type),
                h.e_entry
            ),
        });
    }
    if elf.interpreter.is_some() || !elf.libraries.is_empty() {
        return Err(InitramfsError::DynamicAgent {
            path: path.to_path_buf(),
            interpreter: elf.interpreter.map(str::to_string),
            libraries: elf.libraries.iter().map(|s| s.to_string()).collect(),
        });
    }
    Ok(())
}

/// Turns `/a/b` into `a/b`, refusing relative paths, `..`, and the root itself.
fn clean_dest(src: &Path, dest: &str) -> Result<String, InitramfsError> {
    let bad = |reason| InitramfsError::BadDestination { src: src.to_path_buf(), dest: dest.to_string(), reason };
    if !dest.starts_with('/') {
        return Err(bad("must be an absolute path"));
    }
    let mut parts = Vec::new();
    for c in Path::new(dest).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => parts.push(p.to_str().ok_or_else(|| bad("not UTF-8"))?),
            _ => return Err(bad("must not contain `..`")),
        }
    }
    if parts.is_empty() {
        return Err(bad("must not be `/`"));
    }
    Ok(parts.join("/"))
}

fn add_parents(nodes: &mut BTreeMap<String, Node>, path: &str) {
    let mut end = 0;
    while let Some(i) = path[end..].find('/') {
        end += i;
        nodes.entry(path[..end].to_string()).or_insert(Node::Dir(0o755));
        end += 1;
    }
}

fn insert(nodes: &mut BTreeMap<String, Node>, src: &Path, dest: String, node: Node) -> Result<(), InitramfsError> {
    add_parents(nodes, &dest);
    let dir = matches!(node, Node::Dir(_));
    match nodes.get(&dest) {
        Some(Node::Dir(_)) if dir => {}
        Some(_) => return Err(InitramfsError::BadDestination { src: src.to_path_buf(), dest: format!("/{dest}"), reason: "already present in the initramfs" }),
        None => {}
    }
    nodes.insert(dest, node);
    Ok(())
}

fn add_tree(nodes: &mut BTreeMap<String, Node>, src: &Path, dest: String) -> Result<(), InitramfsError> {
    let read = |path: &Path, source| InitramfsError::Read { path: path.to_path_buf(), source };
    let meta = fs::symlink_metadata(src).map_err(|e| read(src, e))?;
    let perm = meta.mode() & 0o7777;
    let ft = meta.file_type();
    if ft.is_dir() {
        insert(nodes, src, dest.clone(), Node::Dir(perm))?;
        let mut children: Vec<_> = fs::read_dir(src).map_err(|e| read(src, e))?.collect::<Result<_, _>>().map_err(|e| read(src, e))?;
        children.sort_by_key(|c| c.file_name());
        for child in children {
            let name = child.file_name();
            let name = name.to_str().ok_or_else(|| InitramfsError::BadDestination {
                src: child.path(),
                dest: format!("/{dest}/{}", name.to_string_lossy()),
                reason: "not UTF-8",
            })?;
            add_tree(nodes, &child.path(), format!("{dest}/{name}"))?;
        }
        Ok(())
    } else if ft.is_file() {
        insert(nodes, src, dest, Node::File { mode: perm, src: src.to_path_buf() })
    } else if ft.is_symlink() {
        let target = fs::read_link(src).map_err(|e| read(src, e))?;
        insert(nodes, src, dest, Node::Symlink(target))
    } else {
        Err(InitramfsError::UnsupportedFileType { path: src.to_path_buf() })
    }
}

/// Writes the uncompressed cpio archive of `spec` to `out`; returns (entries, bytes).
pub fn write_cpio<W: Write>(spec: &InitramfsSpec, out: W) -> Result<(usize, W), InitramfsError> {
    let agent = fs::read(&spec.agent).map_err(|source| InitramfsError::Read { path: spec.agent.clone(), source })?;
    check_static(&spec.agent, &agent)?;

    let mut nodes = BTreeMap::new();
    for (dir, mode) in BASE_DIRS {
        nodes.insert(dir.to_string(), Node::Dir(*mode));
    }
    nodes.insert("dev/console".into(), Node::CharDev { mode: 0o600, major: 5, minor: 1 });
    nodes.insert("init".into(), Node::File { mode: 0o755, src: spec.agent.clone() });
    for (src, dest) in &spec.extra {
        let dest = clean_dest(src, dest)?;
        add_tree(&mut nodes, src, dest)?;
    }

    let werr = |source| InitramfsError::Write { path: PathBuf::from("<cpio stream>"), source };
    let mut w = NewcWriter::new(out);
    let count = nodes.len();
    for (ino, (name, node)) in (1u32..).zip(nodes) {
        let (mode, nlink, rdev, data) = match node {
            Node::Dir(m) => (S_IFDIR | m, 2, (0, 0), Vec::new()),
            Node::File { mode, src } if src == spec.agent => (S_IFREG | mode, 1, (0, 0), agent.clone()),
            Node::File { mode, src } => {
                let data = fs::read(&src).map_err(|source| InitramfsError::Read { path: src.clone(), source })?;
                (S_IFREG | mode, 1, (0, 0), data)
            }
            Node::Symlink(t) => (S_IFLNK | 0o777, 1, (0, 0), t.into_os_string().into_encoded_bytes()),
            Node::CharDev { mode, major, minor } => (S_IFCHR | mode, 1, (major, minor), Vec::new()),
        };
        w.entry(&NewcEntry { name, ino, mode, uid: 0, gid: 0, nlink, mtime: 0, rdev, data }).map_err(werr)?;
    }
    Ok((count, w.finish().map_err(werr)?))
}

struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Builds the initramfs of `spec` at `out`, gzip-compressed unless `spec.uncompressed` (written
/// to a temporary file beside it and renamed, so `out` is never left half-written).
pub fn build_initramfs(spec: &InitramfsSpec, out: &Path) -> Result<InitramfsReport, InitramfsError> {
    let werr = |source| InitramfsError::Write { path: out.to_path_buf(), source };
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new().prefix(".initramfs-").tempfile_in(dir).map_err(werr)?;
    let file = io::BufWriter::new(tmp.as_file().try_clone().map_err(werr)?);
    let (entries, cpio_bytes, mut buf) = if spec.uncompressed {
        let (entries, counting) = write_cpio(spec, Counting { inner: file, n: 0 })?;
        (entries, counting.n, counting.inner)
    } else {
        let gz = GzBuilder::new().mtime(0).write(file, Compression::default());
        let (entries, counting) = write_cpio(spec, Counting { inner: gz, n: 0 })?;
        (entries, counting.n, counting.inner.finish().map_err(werr)?)
    };
    buf.flush().map_err(werr)?;
    drop(buf);
    let file = tmp.as_file();
    file.set_permissions(fs::Permissions::from_mode(0o644)).map_err(werr)?;
    file.sync_all().map_err(werr)?;
    let written_bytes = file.metadata().map_err(werr)?.len();
    tmp.persist(out).map_err(|e| werr(e.error))?;
    Ok(InitramfsReport { entries, cpio_bytes, written_bytes })
}
