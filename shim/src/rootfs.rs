//! The container's root filesystem: containerd's rootfs mounts (or the bundle's `rootfs/`)
//! turned into a block image the guest mounts, via husk-rootfs.

use std::path::{Path, PathBuf};

use containerd_shim_protos::api::Mount;
use husk_config::ShimConfig;
use husk_rootfs::{image_from_mounts, BuiltImage, FsType, ImageError, ImageOptions, MountSpec};

/// Errors preparing the rootfs.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// No mounts and the bundle's rootfs directory is empty or missing.
    #[error("no rootfs: containerd passed no rootfs mounts and {path:?} is missing or empty")]
    Missing {
        /// The bundle's rootfs directory.
        path: PathBuf,
    },
    /// A relative `root.path` that leads out of the bundle (`..`, or a symlink).
    #[error("root.path {root_path:?} resolves to {resolved:?}, outside the bundle {bundle:?}")]
    OutsideBundle {
        /// The spec's root.path.
        root_path: PathBuf,
        /// Where it leads.
        resolved: PathBuf,
        /// The bundle.
        bundle: PathBuf,
    },
    /// An absolute `root.path` that is the host's root directory.
    #[error("root.path {root_path:?} is the host's root directory, which cannot be a container's rootfs")]
    HostRoot {
        /// The spec's root.path.
        root_path: PathBuf,
    },
    /// husk-rootfs failed.
    #[error("cannot build the container rootfs image {output:?}")]
    Image {
        /// The image being built.
        output: PathBuf,
        /// Cause.
        #[source]
        source: ImageError,
    },
}

impl RootfsError {
    /// Whether the error is caused by the request (bad or missing mounts) rather than the host.
    pub fn is_bad_input(&self) -> bool {
        match self {
            RootfsError::Missing { .. } | RootfsError::OutsideBundle { .. } | RootfsError::HostRoot { .. } => true,
            RootfsError::Image { source, .. } => matches!(
                source,
                ImageError::MissingDir { .. } | ImageError::UnsupportedMountType { .. } | ImageError::BadMount { .. } | ImageError::MountCount { .. }
            ),
        }
    }
}

/// The rootfs mounts of a CreateTask request as husk-rootfs wants them; when containerd sent
/// none, the directory the spec's `root.path` names ([`rootfs_dir`]) as a bind mount.
pub fn mount_specs(mounts: &[Mount], bundle: &Path, root_path: &Path) -> Result<Vec<MountSpec>, RootfsError> {
    if mounts.is_empty() {
        let dir = rootfs_dir(bundle, root_path)?;
        let empty = std::fs::read_dir(&dir).map(|mut d| d.next().is_none()).unwrap_or(true);
        if empty {
            return Err(RootfsError::Missing { path: dir });
        }
        return Ok(vec![MountSpec { fstype: "bind".into(), source: dir, options: vec!["rbind".into()] }]);
    }
    Ok(mounts.iter().map(|m| MountSpec { fstype: m.type_.clone(), source: m.source.clone().into(), options: m.options.clone() }).collect())
}

/// The directory a bundle without rootfs mounts names in `root.path`, resolved once (the image
/// is built from the resolved path, so a symlink swapped later changes nothing):
/// - relative (what containerd writes: `rootfs`): must stay inside the bundle, `..` and
///   symlinks included;
/// - absolute: what `ctr run --rootfs DIR` writes (containerd 1.6 puts the absolute, cleaned
///   DIR into config.json and passes no mounts), so taken wherever it is, but never the
///   host's root directory.
pub fn rootfs_dir(bundle: &Path, root_path: &Path) -> Result<PathBuf, RootfsError> {
    let joined = bundle.join(root_path);
    // Missing: reported by the caller as "no rootfs", naming the path.
    let Ok(resolved) = joined.canonicalize() else { return Ok(joined) };
    if root_path.is_relative() {
        let bundle_dir = bundle.canonicalize().unwrap_or_else(|_| bundle.to_path_buf());
        if !resolved.starts_with(&bundle_dir) {
            return Err(RootfsError::OutsideBundle { root_path: root_path.into(), resolved, bundle: bundle_dir });
        }
    } else if resolved == Path::new("/") {
        return Err(RootfsError::HostRoot { root_path: root_path.into() });
    }
    Ok(resolved)
}

/// Builds (or finds in the image cache of `shim`, pruned to its bound after a build) the
/// image; an uncached image is written to `output`. A cached image comes with a lease, which
/// keeps it in the cache while held.
pub fn build(specs: &[MountSpec], output: &Path, shim: &ShimConfig) -> Result<BuiltImage, RootfsError> {
    let mut opts = ImageOptions::new(FsType::Ext4, output);
    opts.cache_dir = Some(shim.image_cache_dir.clone());
    opts.cache_max_bytes = Some(shim.image_cache_max_bytes.bytes());
    image_from_mounts(specs, &opts).map_err(|source| RootfsError::Image { output: output.to_path_buf(), source })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn no_mounts_and_empty_bundle_rootfs_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("rootfs")).unwrap();
        let e = mount_specs(&[], d.path(), Path::new("rootfs")).unwrap_err();
        assert!(e.is_bad_input());
        assert!(e.to_string().contains(&format!("{}/rootfs", d.path().display())), "{e}");
    }

    #[test]
    fn a_relative_root_path_stays_in_the_bundle() {
        let d = tempfile::tempdir().unwrap();
        let bundle = d.path().join("bundle");
        std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
        std::fs::create_dir_all(d.path().join("outside/etc")).unwrap();
        std::os::unix::fs::symlink("/", bundle.join("hostroot")).unwrap();
        std::os::unix::fs::symlink("../outside", bundle.join("link")).unwrap();
        let ok = mount_specs(&[], &bundle, Path::new("rootfs")).unwrap();
        assert_eq!(ok[0].source, bundle.canonicalize().unwrap().join("rootfs"));
        for bad in ["../outside", "rootfs/../../outside", "hostroot", "link"] {
            let e = mount_specs(&[], &bundle, Path::new(bad)).unwrap_err();
            assert!(e.is_bad_input(), "{bad}");
            let msg = e.to_string();
            assert!(msg.contains(&format!("{bad:?}")) && msg.contains("outside the bundle"), "{msg}");
        }
    }

    #[test]
    fn an_absolute_root_path_is_ctr_run_rootfs_but_never_the_host_root() {
        let d = tempfile::tempdir().unwrap();
        let bundle = d.path().join("bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::create_dir_all(d.path().join("rfs/bin")).unwrap();
        // As `ctr run --rootfs DIR` writes it: absolute, outside the bundle.
        let rfs = d.path().join("rfs");
        assert_eq!(mount_specs(&[], &bundle, &rfs).unwrap()[0].source, rfs.canonicalize().unwrap());
        for root in ["/", "/tmp/.."] {
            let e = mount_specs(&[], &bundle, Path::new(root)).unwrap_err();
            assert!(e.is_bad_input() && e.to_string().contains("host's root directory"), "{root}: {e}");
        }
        let e = mount_specs(&[], &bundle, Path::new("/nonexistent-rootfs")).unwrap_err();
        assert!(matches!(e, RootfsError::Missing { .. }) && e.to_string().contains("/nonexistent-rootfs"), "{e}");
    }

    #[test]
    fn mounts_are_passed_through() {
        let m = Mount { type_: "overlay".into(), source: "overlay".into(), options: vec!["lowerdir=/a".into()], ..Default::default() };
        let s = mount_specs(&[m], Path::new("/b"), Path::new("rootfs")).unwrap();
        assert_eq!(s[0].fstype, "overlay");
        assert_eq!(s[0].options, vec!["lowerdir=/a".to_string()]);
    }
}
