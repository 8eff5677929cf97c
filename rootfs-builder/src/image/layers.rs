//! OCI image layers: unpacking a stack of tar / tar+gzip / tar+zstd layers into a staging directory with
//! whiteouts applied (`.wh.NAME` hides NAME of lower layers, `.wh..wh..opq` hides all lower
//! content of its directory), then one image of the result.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use ruzstd::decoding::{FrameDecoder, StreamingDecoder};
use sha2::{Digest, Sha256};

use super::{cache, io_err, mkfs, BuiltImage, ImageError, ImageOptions};

/// Marker of an opaque directory.
const OPAQUE: &str = ".wh..wh..opq";
/// Prefix of a whiteout.
const WH_PREFIX: &str = ".wh.";

/// One layer blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSpec {
    /// The blob (tar or gzip-compressed tar).
    pub path: PathBuf,
    /// OCI media type; `None` detects tar / gzip from the content.
    pub media_type: Option<String>,
    /// `sha256:<hex>` of the blob, the cache key. `None`: taken from a content-store path
    /// (`.../sha256/<hex>`), else computed by reading the blob.
    pub digest: Option<String>,
}

impl LayerSpec {
    /// A layer with media type and digest to be detected.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LayerSpec { path: path.into(), media_type: None, digest: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn compression(layer: &LayerSpec) -> Result<Compression, ImageError> {
    if let Some(mt) = &layer.media_type {
        return match mt.as_str() {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd" | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Ok(Compression::Zstd),
            _ => Err(ImageError::UnsupportedMediaType { path: layer.path.clone(), media_type: mt.clone() }),
        };
    }
    let mut head = [0u8; 512];
    let mut f = File::open(&layer.path).map_err(io_err("open layer", &layer.path))?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]).map_err(io_err("read layer", &layer.path))? {
            0 => break,
            k => n += k,
        }
    }
    if n >= 2 && head[..2] == [0x1f, 0x8b] {
        Ok(Compression::Gzip)
    } else if n >= 262 && &head[257..262] == b"ustar" {
        Ok(Compression::None)
    } else if n >= 4 && head[..4] == [0x28, 0xb5, 0x2f, 0xfd] {
        Ok(Compression::Zstd)
    } else {
        Err(ImageError::UnknownLayerFormat { path: layer.path.clone(), magic: hex::encode(&head[..n.min(8)]) })
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The layer's digest: given, from a content-store path, or computed.
fn digest(layer: &LayerSpec) -> Result<String, ImageError> {
    if let Some(d) = &layer.digest {
        return match d.strip_prefix("sha256:") {
            Some(h) if is_sha256_hex(h) => Ok(d.clone()),
            _ => Err(ImageError::BadDigest { path: layer.path.clone(), digest: d.clone() }),
        };
    }
    let name = layer.path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let parent = layer.path.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str());
    if parent == Some("sha256") && is_sha256_hex(name) {
        return Ok(format!("sha256:{name}"));
    }
    let mut f = File::open(&layer.path).map_err(io_err("open layer", &layer.path))?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).map_err(io_err("read layer", &layer.path))?;
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// `path` relative and normalized, or `None` if it would leave the root.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Symlinks followed while resolving one path, as the kernel's limit.
const MAX_SYMLINK_HOPS: u32 = 40;

/// The real directory in `root` that `rel` names, resolving symlinks as if `root` were `/`
/// (an absolute target starts again at `root`, `..` stops at `root`), so nothing outside the
/// image is ever named. Missing directories are created if `create`, else `None` is returned.
fn resolve_dir(root: &Path, rel: &Path, create: bool) -> io::Result<Option<PathBuf>> {
    let mut todo: Vec<std::ffi::OsString> = rel.components().rev().map(|c| c.as_os_str().to_owned()).collect();
    let mut cur = root.to_path_buf();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        if c == "/" || c == "." {
            continue;
        }
        if c == ".." {
            if cur != root {
                cur.pop();
            }
            continue;
        }
        let next = cur.join(&c);
        match fs::symlink_metadata(&next) {
            Ok(m) if m.is_dir() => cur = next,
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(io::Error::other(format!("too many symlinks at {}", next.display())));
                }
                let target = fs::read_link(&next)?;
                if target.is_absolute() {
                    cur = root.to_path_buf();
                }
                todo.extend(target.components().rev().map(|c| c.as_os_str().to_owned()));
            }
            Ok(_) if !create => return Ok(None),
            Ok(_) => return Err(io::Error::other(format!("{} is not a directory", next.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&next)?;
                cur = next;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(cur))
}

/// Where a hard link entry's target is in `root`.
fn link_source(root: &Path, link: &Path) -> io::Result<PathBuf> {
    let missing = || io::Error::other(format!("hard link target {} not in the image", link.display()));
    let rel = normalize(link).ok_or_else(missing)?;
    let name = rel.file_name().ok_or_else(missing)?;
    let dir = resolve_dir(root, rel.parent().unwrap_or(Path::new("")), false)?.ok_or_else(missing)?;
    let src = dir.join(name);
    match fs::symlink_metadata(&src) {
        Ok(m) if !m.is_dir() => Ok(src),
        _ => Err(missing()),
    }
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes what lower layers put in `dir` (at `rel` in the image), keeping this layer's own
/// entries (`ours`) and, inside its own directories, clearing lower content too.
fn clear_lower(dir: &Path, rel: &Path, ours: &HashSet<PathBuf>) -> io::Result<()> {
    for child in fs::read_dir(dir)? {
        let child = child?;
        let child_rel = rel.join(child.file_name());
        if !ours.contains(&child_rel) {
            remove_any(&child.path())?;
        } else if child.file_type()?.is_dir() {
            clear_lower(&child.path(), &child_rel, ours)?;
        }
    }
    Ok(())
}

/// Unpacks one layer over `root` (canonical), applying its whiteouts to the layers below.
/// Returns the bytes of file content written.
pub(crate) fn apply_layer(layer: &LayerSpec, root: &Path) -> Result<u64, ImageError> {
    let comp = compression(layer)?;
    let file = File::open(&layer.path).map_err(io_err("open layer", &layer.path))?;
    let reader: Box<dyn Read> = match comp {
        Compression::None => Box::new(BufReader::new(file)),
        Compression::Gzip => Box::new(GzDecoder::new(BufReader::new(file))),
        Compression::Zstd => Box::new(Zstd { dec: None, src: Some(BufReader::new(file)) }),
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let lerr = |entry: &Path, source| ImageError::Layer { path: layer.path.clone(), entry: entry.display().to_string(), source };
    // Paths this layer created: its own whiteouts must not hide them.
    let mut ours: HashSet<PathBuf> = HashSet::new();
    let mut bytes = 0u64;
    for entry in archive.entries().map_err(|e| lerr(Path::new(""), e))? {
        let mut entry = entry.map_err(|e| lerr(Path::new(""), e))?;
        let raw = entry.path().map_err(|e| lerr(Path::new(""), e))?.into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() || kind.is_gnu_longname() || kind.is_gnu_longlink() {
            continue;
        }
        let Some(rel) = normalize(&raw) else {
            return Err(lerr(&raw, io::Error::other("path leaves the image root")));
        };
        if rel.as_os_str().is_empty() {
            continue;
        }
        let Some(name) = rel.file_name() else {
            continue;
        };
        let name_bytes = name.as_encoded_bytes();
        let parent = rel.parent().unwrap_or(Path::new(""));
        if name_bytes == OPAQUE.as_bytes() {
            if let Some(dir) = resolve_dir(root, parent, false).map_err(|e| lerr(&raw, e))? {
                clear_lower(&dir, parent, &ours).map_err(|e| lerr(&raw, e))?;
            }
            continue;
        }
        if let Some(hidden) = name_bytes.strip_prefix(WH_PREFIX.as_bytes()) {
            let hidden = OsStr::from_bytes(hidden);
            // `.wh..wh.*` other than the opaque marker are aufs metadata: skip.
            if !hidden.as_encoded_bytes().starts_with(WH_PREFIX.as_bytes())
                && !hidden.is_empty()
                && hidden != "."
                && hidden != ".."
                && !ours.contains(&parent.join(hidden))
            {
                if let Some(dir) = resolve_dir(root, parent, false).map_err(|e| lerr(&raw, e))? {
                    remove_any(&dir.join(hidden)).map_err(|e| lerr(&raw, e))?;
                }
            }
            continue;
        }
        let dir = resolve_dir(root, parent, true).map_err(|e| lerr(&raw, e))?.unwrap_or_else(|| root.to_path_buf());
        let dst = dir.join(name);
        // A directory replaces a non-directory and vice versa; directories merge.
        match fs::symlink_metadata(&dst) {
            Ok(m) if m.is_dir() && kind.is_dir() => {}
            Ok(_) => remove_any(&dst).map_err(|e| lerr(&raw, e))?,
            Err(_) => {}
        }
        // `dst` is a resolved path inside `root` with nothing at it (or a directory): unpack
        // exactly there rather than through the tar crate's own path handling.
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            make_node(&entry, &dst, kind).map_err(|e| lerr(&raw, e))?;
        } else if kind.is_hard_link() {
            let link = entry.link_name().map_err(|e| lerr(&raw, e))?;
            let link = link.ok_or_else(|| lerr(&raw, io::Error::other("hard link without target")))?;
            let src = link_source(root, &link).map_err(|e| lerr(&raw, e))?;
            fs::hard_link(&src, &dst).map_err(|e| lerr(&raw, e))?;
        } else {
            entry.unpack(&dst).map_err(|e| lerr(&raw, e))?;
            if kind.is_symlink() {
                let h = entry.header();
                let (uid, gid) = (h.uid().map_err(|e| lerr(&raw, e))?, h.gid().map_err(|e| lerr(&raw, e))?);
                std::os::unix::fs::lchown(&dst, u32::try_from(uid).ok(), u32::try_from(gid).ok()).map_err(|e| lerr(&raw, e))?;
            }
            if kind.is_file() {
                bytes += entry.size();
            }
        }
        // The entry and the directories leading to it are this layer's.
        let mut p = rel.as_path();
        while !p.as_os_str().is_empty() && ours.insert(p.to_path_buf()) {
            p = p.parent().unwrap_or(Path::new(""));
        }
    }
    Ok(bytes)
}

/// A zstd stream of one or more frames (the decoder reads one frame; layers written by
/// concatenating compressors have several).
struct Zstd<R: BufRead> {
    dec: Option<StreamingDecoder<R, FrameDecoder>>,
    /// The source between frames.
    src: Option<R>,
}

impl<R: BufRead> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(dec) = self.dec.as_mut() {
                let n = dec.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                self.src = self.dec.take().map(StreamingDecoder::into_inner);
            }
            let Some(mut src) = self.src.take() else {
                return Ok(0);
            };
            if src.fill_buf()?.is_empty() {
                return Ok(0);
            }
            self.dec = Some(StreamingDecoder::new(src).map_err(io::Error::other)?);
        }
    }
}

/// Creates a device node or fifo (the tar crate writes those as regular files).
fn make_node<R: Read>(entry: &tar::Entry<R>, dst: &Path, kind: tar::EntryType) -> io::Result<()> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let h = entry.header();
    let sflag = if kind.is_character_special() {
        SFlag::S_IFCHR
    } else if kind.is_block_special() {
        SFlag::S_IFBLK
    } else {
        SFlag::S_IFIFO
    };
    let major = h.device_major()?.unwrap_or(0);
    let minor = h.device_minor()?.unwrap_or(0);
    let mode = h.mode()? & 0o7777;
    mknod(dst, sflag, Mode::from_bits_truncate(mode), makedev(u64::from(major), u64::from(minor))).map_err(io::Error::from)?;
    std::os::unix::fs::lchown(dst, u32::try_from(h.uid()?).ok(), u32::try_from(h.gid()?).ok())?;
    // mknod applies the umask; set the exact mode (after chown, which clears set-id bits).
    let c = std::ffi::CString::new(dst.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    nix::sys::stat::fchmodat(nix::fcntl::AT_FDCWD, c.as_c_str(), Mode::from_bits_truncate(mode), nix::sys::stat::FchmodatFlags::FollowSymlink)
        .map_err(io::Error::from)?;
    Ok(())
}

/// Unpacks `layers` (bottom first) into a staging directory under `work` and makes the image
/// at `image`. Returns the bytes staged.
fn build(layers: &[LayerSpec], work: &Path, image: &Path, opts: &ImageOptions) -> Result<u64, ImageError> {
    fs::create_dir_all(work).map_err(io_err("create work directory", work))?;
    super::scratch::sweep_dead_builders(work)?;
    let stage = super::scratch::LockedTempDir::new(work, super::scratch::STAGE_DIR, "create staging directory in")?;
    let root = fs::canonicalize(stage.path()).map_err(io_err("resolve", stage.path()))?;
    // The image root is the layers' root, owned by root with mode 0755 unless a layer says so.
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).map_err(io_err("chmod", &root))?;
    let mut staged = 0;
    for layer in layers {
        staged += apply_layer(layer, &root)?;
    }
    mkfs::mkfs(&root, image, opts, false)?;
    let staged_blocks = mkfs::tree_usage(&root).map(|u| u.bytes).unwrap_or(staged);
    stage.close()?;
    Ok(staged_blocks)
}

pub(crate) fn image_from_layers(layers: &[LayerSpec], opts: &ImageOptions) -> Result<BuiltImage, ImageError> {
    if layers.is_empty() {
        return Err(ImageError::NoLayers);
    }
    // Check every layer before any work: missing files, media types, digests.
    let mut digests = Vec::with_capacity(layers.len());
    for l in layers {
        let meta = fs::metadata(&l.path).map_err(io_err("open layer", &l.path))?;
        if !meta.is_file() {
            return Err(ImageError::Io { op: "read layer", path: l.path.clone(), source: io::Error::other("not a regular file") });
        }
        compression(l)?;
        digests.push(digest(l)?);
    }
    let Some(cache_dir) = &opts.cache_dir else {
        let work = opts.work_dir.clone().unwrap_or_else(|| mkfs::parent_dir(&opts.output));
        let bytes = mkfs::persist_via_temp(opts, |tmp| {
            let staged = build(layers, &work, tmp, opts)?;
            Ok(mkfs::allocated(tmp)? + staged)
        })?;
        return Ok(BuiltImage::uncached(opts, true, bytes));
    };
    let compressor = opts.erofs_compressor.clone().unwrap_or_default();
    let mut parts: Vec<&[u8]> = vec![b"layers", opts.fstype.as_str().as_bytes(), compressor.as_bytes()];
    parts.extend(digests.iter().map(|d| d.as_bytes()));
    let key = cache::key(&parts);
    let work = opts.work_dir.clone().unwrap_or_else(|| cache_dir.clone());
    let r = cache::get_or_build(cache_dir, &key, opts.fstype, opts.cache_max_bytes, |tmp| build(layers, &work, tmp, opts))?;
    Ok(BuiltImage::cached(opts, key, r))
}
