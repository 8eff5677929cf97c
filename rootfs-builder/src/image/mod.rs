//! Container block images (ext4 or erofs) from a directory, OCI layer tarballs, or the rootfs
//! mounts containerd hands a shim, with a content-keyed cache for read-only content.

mod cache;
mod layers;
mod mkfs;
mod mounts;
mod overlay;
mod scratch;

use std::io;
use std::path::{Path, PathBuf};

pub use cache::{prune_cache, ImageLease, PruneReport};
pub use layers::LayerSpec;
pub use mounts::MountSpec;
pub use scratch::sweep_dead_builders;

/// Filesystem of a built image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsType {
    /// ext4 (read-write capable; sized from the content plus headroom).
    Ext4,
    /// erofs (read-only, compact).
    Erofs,
}

impl FsType {
    /// The name the kernel and `mount -t` use.
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Erofs => "erofs",
        }
    }
}

impl std::str::FromStr for FsType {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, ImageError> {
        match s {
            "ext4" => Ok(FsType::Ext4),
            "erofs" => Ok(FsType::Erofs),
            _ => Err(ImageError::UnknownFsType { value: s.to_string() }),
        }
    }
}

impl std::fmt::Display for FsType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The external programs images are made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    /// `mkfs.ext4` (package e2fsprogs).
    pub mkfs_ext4: PathBuf,
    /// `mkfs.erofs` (package erofs-utils).
    pub mkfs_erofs: PathBuf,
    /// `debugfs` (package e2fsprogs): removes the `lost+found` mkfs.ext4 adds.
    pub debugfs: PathBuf,
}

impl Default for Tools {
    fn default() -> Self {
        Tools { mkfs_ext4: "mkfs.ext4".into(), mkfs_erofs: "mkfs.erofs".into(), debugfs: "debugfs".into() }
    }
}

/// How to build an image.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// Filesystem to create.
    pub fstype: FsType,
    /// Where an image that is not cached is written (replaced atomically).
    pub output: PathBuf,
    /// Cache of read-only images; `None` disables caching (everything goes to `output`).
    pub cache_dir: Option<PathBuf>,
    /// After building a cached image, prune the cache to this many bytes (least recently used
    /// first, never an image leased by a user: [`BuiltImage::lease`]); `None`: no limit.
    pub cache_max_bytes: Option<u64>,
    /// Free space added to an ext4 image that the guest may write (the file is sparse, so
    /// unused headroom costs no disk).
    pub ext4_headroom: u64,
    /// Compressor for erofs (`lz4`, `lz4hc`), `None` for uncompressed.
    pub erofs_compressor: Option<String>,
    /// Scratch space for staging layers and mount points; default: beside the image.
    pub work_dir: Option<PathBuf>,
    /// mkfs programs.
    pub tools: Tools,
}

impl ImageOptions {
    /// Options with defaults: no cache, 256 MiB ext4 headroom, uncompressed erofs.
    pub fn new(fstype: FsType, output: impl Into<PathBuf>) -> Self {
        ImageOptions {
            fstype,
            output: output.into(),
            cache_dir: None,
            cache_max_bytes: None,
            ext4_headroom: 256 << 20,
            erofs_compressor: None,
            work_dir: None,
            tools: Tools::default(),
        }
    }
}

/// A built (or found) image.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The image file: in the cache for cached content, else `ImageOptions::output`.
    pub path: PathBuf,
    /// Its filesystem.
    pub fstype: FsType,
    /// Whether the guest must mount it read-only (cached images are shared; erofs always).
    pub read_only: bool,
    /// Whether it was found in the cache (nothing built).
    pub from_cache: bool,
    /// Bytes written to disk by this call: staged layer content plus allocated image blocks.
    pub bytes_written: u64,
    /// Content key in the cache, if the content is cacheable.
    pub cache_key: Option<String>,
    /// For a cached image: keeps it from being pruned while held (and its clones are).
    pub lease: Option<ImageLease>,
}

impl BuiltImage {
    /// An image built at `opts.output` by this call, outside the cache.
    pub(crate) fn uncached(opts: &ImageOptions, read_only: bool, bytes_written: u64) -> Self {
        BuiltImage { path: opts.output.clone(), fstype: opts.fstype, read_only, from_cache: false, bytes_written, cache_key: None, lease: None }
    }

    /// A read-only image of the cache under `key`, leased to the caller.
    pub(crate) fn cached(opts: &ImageOptions, key: String, r: cache::CacheResult) -> Self {
        BuiltImage {
            path: r.path,
            fstype: opts.fstype,
            read_only: true,
            from_cache: r.from_cache,
            bytes_written: r.bytes_written,
            cache_key: Some(key),
            lease: Some(r.lease),
        }
    }
}

/// Errors building an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A source directory does not exist or is not a directory.
    #[error("{what} {path} is missing or not a directory")]
    MissingDir {
        /// Role of the directory (e.g. "source directory", "overlay lowerdir").
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// An I/O operation on a path failed.
    #[error("cannot {op} {path}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A system call on a path failed.
    #[error("cannot {op} {path}")]
    Sys {
        /// What was attempted.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: nix::Error,
    },
    /// An mkfs program is not installed.
    #[error("{tool} not found: install {package}")]
    ToolMissing {
        /// The program.
        tool: PathBuf,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// mkfs failed.
    #[error("{tool} failed building {image} from {source_dir} ({status}): {stderr}")]
    MkfsFailed {
        /// The program.
        tool: PathBuf,
        /// The image being written.
        image: PathBuf,
        /// The tree it was built from.
        source_dir: PathBuf,
        /// Exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// `--fstype` value not known.
    #[error("unknown filesystem type {value:?} (expected ext4 or erofs)")]
    UnknownFsType {
        /// The value.
        value: String,
    },
    /// A layer's media type is not one this builder can unpack.
    #[error("layer {path}: unsupported media type {media_type:?} (supported: tar, tar+gzip, tar+zstd)")]
    UnsupportedMediaType {
        /// The layer.
        path: PathBuf,
        /// Its media type.
        media_type: String,
    },
    /// A layer given without media type is neither tar, gzip nor zstd.
    #[error("layer {path}: not a tar, gzip or zstd file (first bytes {magic})")]
    UnknownLayerFormat {
        /// The layer.
        path: PathBuf,
        /// Hex of its first bytes.
        magic: String,
    },
    /// A layer digest is malformed.
    #[error("layer {path}: malformed digest {digest:?} (expected sha256:<64 hex>)")]
    BadDigest {
        /// The layer.
        path: PathBuf,
        /// The digest.
        digest: String,
    },
    /// Unpacking a layer failed.
    #[error("layer {path}: cannot unpack entry {entry:?}")]
    Layer {
        /// The layer.
        path: PathBuf,
        /// The tar entry (or "" before the first entry).
        entry: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// No layers were given.
    #[error("no layers given")]
    NoLayers,
    /// Not exactly one rootfs mount.
    #[error("expected exactly one rootfs mount, got {count}")]
    MountCount {
        /// How many were given.
        count: usize,
    },
    /// Mount type other than overlay or bind.
    #[error("unsupported rootfs mount type {fstype:?} (source {source_path}); expected overlay or bind")]
    UnsupportedMountType {
        /// The type.
        fstype: String,
        /// The mount source.
        source_path: PathBuf,
    },
    /// A mount is malformed.
    #[error("bad rootfs mount {spec:?}: {reason}")]
    BadMount {
        /// The mount as given.
        spec: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Mounting the merged overlay view failed.
    #[error("cannot mount overlay ({options}) on {target}")]
    OverlayMount {
        /// Mount options.
        options: String,
        /// Mount point.
        target: PathBuf,
        /// Cause.
        #[source]
        source: nix::Error,
    },
}

pub(crate) fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |source| ImageError::Io { op, path: path.to_path_buf(), source }
}

pub(crate) fn require_dir(what: &'static str, path: &Path) -> Result<(), ImageError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        _ => Err(ImageError::MissingDir { what, path: path.to_path_buf() }),
    }
}

/// Builds an image of the directory `dir` at `opts.output` (never cached: a directory's
/// content may change). ext4 images are read-write, erofs read-only.
pub fn image_from_dir(dir: &Path, opts: &ImageOptions) -> Result<BuiltImage, ImageError> {
    require_dir("source directory", dir)?;
    let bytes = mkfs::build_to_output(dir, opts, false)?;
    Ok(BuiltImage::uncached(opts, opts.fstype == FsType::Erofs, bytes))
}

/// Builds a read-only image of a stack of OCI layers (bottom first), applying whiteouts.
/// Cached by the layers' digests when `opts.cache_dir` is set, else written to `opts.output`.
pub fn image_from_layers(layers: &[LayerSpec], opts: &ImageOptions) -> Result<BuiltImage, ImageError> {
    layers::image_from_layers(layers, opts)
}

/// Builds the image of the rootfs containerd handed a shim in CreateTask: one mount, either
/// `overlay` (lowerdir/upperdir/workdir) or `bind` (a directory). Overlay lowerdirs are
/// read-only and cached; a non-empty upperdir is included by building from the merged view
/// (then nothing is cached). A bind source is built uncached.
pub fn image_from_mounts(mounts: &[MountSpec], opts: &ImageOptions) -> Result<BuiltImage, ImageError> {
    mounts::image_from_mounts(mounts, opts)
}
