//! The container's root filesystem: containerd's rootfs mounts (or the bundle's `rootfs/`)
//! turned into a block image the guest mounts, via husk-rootfs.

use std::path::{Path, PathBuf};

use containerd_shim_protos::api::Mount;
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
            RootfsError::Missing { .. } => true,
            RootfsError::Image { source, .. } => matches!(
                source,
                ImageError::MissingDir { .. }
                    | ImageError::UnsupportedMountType { .. }
                    | ImageError::BadMount { .. }
                    | ImageError::MountCount { .. }
            ),
        }
    }
}

/// The rootfs mounts of a CreateTask request as husk-rootfs wants them; when containerd sent
/// none, the spec's `root.path` (relative to the bundle; `ctr run --rootfs DIR`) as a bind mount.
pub fn mount_specs(mounts: &[Mount], bundle: &Path, root_path: &Path) -> Result<Vec<MountSpec>, RootfsError> {
    if mounts.is_empty() {
        let dir = bundle.join(root_path);
        let empty = std::fs::read_dir(&dir).map(|mut d| d.next().is_none()).unwrap_or(true);
        if empty {
            return Err(RootfsError::Missing { path: dir });
        }
        return Ok(vec![MountSpec { fstype: "bind".into(), source: dir, options: vec!["rbind".into()] }]);
    }
    Ok(mounts
        .iter()
        .map(|m| MountSpec { fstype: m.type_.clone(), source: m.source.clone().into(), options: m.options.clone() })
        .collect())
}

/// Builds (or finds in `cache_dir`) the image; an uncached image is written to `output`.
pub fn build(specs: &[MountSpec], output: &Path, cache_dir: &Path) -> Result<BuiltImage, RootfsError> {
    let mut opts = ImageOptions::new(FsType::Ext4, output);
    opts.cache_dir = Some(cache_dir.to_path_buf());
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
    fn mounts_are_passed_through() {
        let m = Mount { type_: "overlay".into(), source: "overlay".into(), options: vec!["lowerdir=/a".into()], ..Default::default() };
        let s = mount_specs(&[m], Path::new("/b"), Path::new("rootfs")).unwrap();
        assert_eq!(s[0].fstype, "overlay");
        assert_eq!(s[0].options, vec!["lowerdir=/a".to_string()]);
    }
}
