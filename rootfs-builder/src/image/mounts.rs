//! The rootfs mounts containerd hands a shim in CreateTask, turned into one image.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{cache, io_err, mkfs, overlay, require_dir, BuiltImage, FsType, ImageError, ImageOptions};

/// One mount as containerd describes it (`containerd.types.Mount` without the target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// Mount type: `overlay` or `bind` (`rbind`).
    pub fstype: String,
    /// Mount source (for bind: the directory).
    pub source: PathBuf,
    /// Options, e.g. `lowerdir=A:B`, `upperdir=U`, `workdir=W`, `ro`, `rbind`.
    pub options: Vec<String>,
}

impl std::str::FromStr for MountSpec {
    type Err = ImageError;

    /// Parses `TYPE:SOURCE:OPTIONS` (options comma-separated; they may contain `:`).
    fn from_str(s: &str) -> Result<Self, ImageError> {
        let bad = |reason| ImageError::BadMount { spec: s.to_string(), reason };
        let mut it = s.splitn(3, ':');
        let fstype = it.next().filter(|t| !t.is_empty()).ok_or_else(|| bad("expected TYPE:SOURCE:OPTIONS"))?;
        let source = it.next().ok_or_else(|| bad("expected TYPE:SOURCE:OPTIONS"))?;
        let options = it.next().unwrap_or("").split(',').filter(|o| !o.is_empty()).map(str::to_string).collect();
        Ok(MountSpec { fstype: fstype.to_string(), source: source.into(), options })
    }
}

impl MountSpec {
    fn option(&self, name: &str) -> Option<&str> {
        self.options.iter().find_map(|o| o.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
    }

    fn display(&self) -> String {
        format!("{}:{}:{}", self.fstype, self.source.display(), self.options.join(","))
    }
}

fn is_empty_dir(dir: &Path) -> Result<bool, ImageError> {
    Ok(fs::read_dir(dir).map_err(io_err("read", dir))?.next().is_none())
}

/// Cache identity of a committed snapshot directory: where it is and which inode it is, with
/// its change time, so a directory removed and recreated at the same path gets a new key.
fn identity(dir: &Path) -> Result<Vec<u8>, ImageError> {
    let canon = fs::canonicalize(dir).map_err(io_err("resolve", dir))?;
    let m = fs::metadata(&canon).map_err(io_err("stat", &canon))?;
    let mut id = canon.into_os_string().into_encoded_bytes();
    for n in [m.dev(), m.ino(), m.ctime() as u64, m.ctime_nsec() as u64] {
        id.extend_from_slice(&n.to_le_bytes());
    }
    Ok(id)
}

fn work_dir(opts: &ImageOptions) -> PathBuf {
    opts.work_dir.clone().unwrap_or_else(|| mkfs::parent_dir(&opts.output))
}

/// Makes the image of `layers` (topmost first) at `image`.
fn mkfs_layers(layers: &[PathBuf], image: &Path, opts: &ImageOptions, writable: bool) -> Result<(), ImageError> {
    match layers {
        [single] => mkfs::mkfs(single, image, opts, writable),
        _ => overlay::with_merged_view(layers, &work_dir(opts), |view| mkfs::mkfs(view, image, opts, writable)),
    }
}

/// Builds `layers` into `opts.output` through a temporary file.
fn build_uncached(layers: &[PathBuf], opts: &ImageOptions, writable: bool) -> Result<u64, ImageError> {
    mkfs::persist_via_temp(opts, |tmp| {
        mkfs_layers(layers, tmp, opts, writable)?;
        mkfs::allocated(tmp)
    })
}

fn overlay_image(m: &MountSpec, opts: &ImageOptions) -> Result<BuiltImage, ImageError> {
    let spec = m.display();
    let lower = m.option("lowerdir").ok_or(ImageError::BadMount { spec: spec.clone(), reason: "overlay without lowerdir" })?;
    if lower.contains('\\') {
        return Err(ImageError::BadMount { spec, reason: "escaped characters in lowerdir are not supported" });
    }
    let lowers: Vec<PathBuf> = lower.split(':').map(PathBuf::from).collect();
    for l in &lowers {
        if !l.is_absolute() {
            return Err(ImageError::BadMount { spec, reason: "lowerdir paths must be absolute" });
        }
        require_dir("overlay lowerdir", l)?;
    }
    let upper = m.option("upperdir").map(PathBuf::from);
    if let Some(u) = &upper {
        require_dir("overlay upperdir", u)?;
        if !is_empty_dir(u)? {
            // The container already wrote files: build the merged view, uncached.
            let mut layers = vec![u.clone()];
            layers.extend(lowers);
            let writable = opts.fstype == FsType::Ext4;
            let bytes = build_uncached(&layers, opts, writable)?;
            return Ok(BuiltImage::uncached(opts, !writable, bytes));
        }
    }
    // Only the read-only lowerdirs matter: one shared, cached image.
    let Some(cache_dir) = &opts.cache_dir else {
        let bytes = build_uncached(&lowers, opts, false)?;
        return Ok(BuiltImage::uncached(opts, true, bytes));
    };
    let compressor = opts.erofs_compressor.clone().unwrap_or_default();
    let ids = lowers.iter().map(|l| identity(l)).collect::<Result<Vec<_>, _>>()?;
    let mut parts: Vec<&[u8]> = vec![b"overlay-lowers", opts.fstype.as_str().as_bytes(), compressor.as_bytes()];
    parts.extend(ids.iter().map(Vec::as_slice));
    let key = cache::key(&parts);
    let r = cache::get_or_build(cache_dir, &key, opts.fstype, opts.cache_max_bytes, |tmp| mkfs_layers(&lowers, tmp, opts, false).map(|()| 0))?;
    Ok(BuiltImage::cached(opts, key, r))
}

pub(crate) fn image_from_mounts(mounts: &[MountSpec], opts: &ImageOptions) -> Result<BuiltImage, ImageError> {
    let [m] = mounts else {
        return Err(ImageError::MountCount { count: mounts.len() });
    };
    match m.fstype.as_str() {
        "overlay" => overlay_image(m, opts),
        "bind" | "rbind" => {
            require_dir("bind mount source", &m.source)?;
            let ro = m.options.iter().any(|o| o == "ro") || opts.fstype == FsType::Erofs;
            let bytes = mkfs::build_to_output(&m.source, opts, ro)?;
            Ok(BuiltImage::uncached(opts, ro, bytes))
        }
        other => Err(ImageError::UnsupportedMountType { fstype: other.to_string(), source_path: m.source.clone() }),
    }
}
