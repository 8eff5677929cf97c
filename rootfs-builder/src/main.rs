//! `husk-rootfs`: builds the guest initramfs and container block images.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use husk_rootfs::{FsType, ImageOptions, LayerSpec, MountSpec};

#[derive(Parser)]
#[command(name = "husk-rootfs", version, about = "Builds the husk guest initramfs and container block images")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a cpio initramfs with the agent as /init (gzip-compressed unless --uncompressed).
    Initramfs {
        /// Statically linked agent binary.
        #[arg(long)]
        agent: PathBuf,
        /// Extra file or tree, SRC:DEST (DEST absolute in the guest).
        #[arg(long = "add", value_name = "SRC:DEST")]
        add: Vec<String>,
        /// Write the plain cpio archive: larger, but the guest kernel copies it instead of
        /// inflating it at every boot.
        #[arg(long)]
        uncompressed: bool,
        /// Output file.
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// Build an ext4 or erofs image from a directory, OCI layers, or a containerd mount.
    Image {
        /// Source directory.
        #[arg(long, conflicts_with_all = ["layer", "mount"])]
        from_dir: Option<PathBuf>,
        /// OCI layer tarball (tar or tar+gzip), bottom first; repeatable.
        #[arg(long, conflicts_with = "mount")]
        layer: Vec<PathBuf>,
        /// Media type of each --layer, in order (default: detected from the content).
        #[arg(long)]
        layer_media_type: Vec<String>,
        /// A containerd rootfs mount, TYPE:SOURCE:OPTIONS (e.g. overlay:overlay:lowerdir=/a:/b,upperdir=/u,workdir=/w).
        #[arg(long)]
        mount: Option<String>,
        /// Filesystem: ext4 or erofs.
        #[arg(long, default_value = "ext4")]
        fstype: String,
        /// Cache directory for images of read-only content.
        #[arg(long)]
        cache: Option<PathBuf>,
        /// After building a cached image, prune the cache to this size (MiB).
        #[arg(long)]
        cache_max_mib: Option<u64>,
        /// Free space added to writable ext4 images, in MiB.
        #[arg(long, default_value_t = 256)]
        headroom_mib: u64,
        /// Output image. A cached image is not copied: OUT becomes a symlink to it.
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// Remove least recently used cached images until the cache fits in --max-mib.
    Prune {
        /// Cache directory.
        #[arg(long)]
        cache: PathBuf,
        /// Size limit in MiB.
        #[arg(long)]
        max_mib: u64,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Initramfs { agent, add, uncompressed, output } => {
            let mut extra = Vec::new();
            for a in add {
                let (src, dest) = a.rsplit_once(':').with_context(|| format!("--add {a:?}: expected SRC:DEST"))?;
                extra.push((PathBuf::from(src), dest.to_string()));
            }
            let r = husk_rootfs::build_initramfs(&husk_rootfs::InitramfsSpec { agent, extra, uncompressed }, &output)?;
            println!("{} entries, {} bytes cpio, {} bytes written to {}", r.entries, r.cpio_bytes, r.written_bytes, output.display());
        }
        Cmd::Image { from_dir, layer, layer_media_type, mount, fstype, cache, cache_max_mib, headroom_mib, output } => {
            let fstype: FsType = fstype.parse()?;
            let mut opts = ImageOptions::new(fstype, &output);
            opts.cache_dir = cache;
            opts.cache_max_bytes = cache_max_mib.map(|m| m << 20);
            opts.ext4_headroom = headroom_mib << 20;
            let built = if let Some(dir) = from_dir {
                husk_rootfs::image_from_dir(&dir, &opts)?
            } else if let Some(m) = mount {
                husk_rootfs::image_from_mounts(&[m.parse::<MountSpec>()?], &opts)?
            } else if !layer.is_empty() {
                if !layer_media_type.is_empty() && layer_media_type.len() != layer.len() {
                    anyhow::bail!("{} --layer-media-type values for {} --layer values", layer_media_type.len(), layer.len());
                }
                let specs: Vec<LayerSpec> =
                    layer.into_iter().enumerate().map(|(i, p)| LayerSpec { path: p, media_type: layer_media_type.get(i).cloned(), digest: None }).collect();
                husk_rootfs::image_from_layers(&specs, &opts)?
            } else {
                anyhow::bail!("give one of --from-dir, --layer or --mount");
            };
            if built.path != output {
                match std::fs::symlink_metadata(&output) {
                    Ok(m) if m.is_dir() => {
                        anyhow::bail!("output {} is a directory", output.display())
                    }
                    Ok(_) => std::fs::remove_file(&output).with_context(|| format!("cannot replace {}", output.display()))?,
                    Err(_) => {}
                }
                std::os::unix::fs::symlink(&built.path, &output).with_context(|| format!("cannot link {} to {}", output.display(), built.path.display()))?;
            }
            println!(
                "{} {} {} {} bytes_written={}",
                built.path.display(),
                built.fstype,
                if built.read_only { "ro" } else { "rw" },
                if built.from_cache { "cached" } else { "built" },
                built.bytes_written
            );
        }
        Cmd::Prune { cache, max_mib } => {
            let r = husk_rootfs::prune_cache(&cache, max_mib << 20)?;
            println!("removed {} images, freed {} bytes, {} bytes remain", r.removed.len(), r.freed, r.remaining);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("husk-rootfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}
