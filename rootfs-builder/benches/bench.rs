//! `husk-rootfs-bench`: time and bytes to produce a container rootfs image from a ~5 MiB and a
//! ~200 MiB tree, cold and cached, each against peers measured in the same run:
//! `cp -a` of the tree (what a runtime that copies the rootfs pays) and a plain
//! `mkfs.ext4 -d` (what a naive image builder pays). Each figure is the median of three runs.
//!
//! Usage: `husk-rootfs-bench [--work DIR] [--sizes-mib 5,200]`. Run by `tests/rootfs/bench.sh`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use husk_rootfs::{image_from_mounts, FsType, ImageOptions, MountSpec};

/// Deterministic pseudo-random bytes (xorshift64*), so every run benches the same tree.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A tree of about `total` bytes: directories of 40 files, mostly 1-64 KiB, every 25th 1 MiB,
/// symlinks every 10th file.
fn make_tree(root: &Path, total: u64) -> Result<(u64, u64)> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ total);
    let (mut written, mut files) = (0u64, 0u64);
    let mut buf = vec![0u8; 1 << 20];
    while written < total {
        let dir = root.join(format!("usr/lib/pkg{:04}", files / 40));
        fs::create_dir_all(&dir)?;
        let size = if files % 25 == 24 { 1 << 20 } else { 1024 + rng.next() % (63 * 1024) } as usize;
        rng.fill(&mut buf[..size]);
        let name = dir.join(format!("file{files}.so"));
        fs::write(&name, &buf[..size])?;
        if files % 10 == 0 {
            std::os::unix::fs::symlink(format!("file{files}.so"), dir.join(format!("link{files}")))?;
        }
        written += size as u64;
        files += 1;
    }
    Ok((written, files))
}

fn allocated(path: &Path) -> Result<u64> {
    let mut total = 0;
    for e in walkdir::WalkDir::new(path) {
        let m = e?.metadata()?;
        total += m.blocks() * 512;
    }
    Ok(total)
}

struct Sample {
    secs: f64,
    bytes: u64,
}

fn timed(f: impl FnOnce() -> Result<u64>) -> Result<Sample> {
    let start = Instant::now();
    let bytes = f()?;
    Ok(Sample { secs: start.elapsed().as_secs_f64(), bytes })
}

/// Runs a measurement three times and keeps the median time (bytes are the same each run).
fn median(mut f: impl FnMut() -> Result<Sample>) -> Result<Sample> {
    let mut runs = vec![f()?, f()?, f()?];
    runs.sort_by(|a, b| a.secs.total_cmp(&b.secs));
    Ok(runs.swap_remove(1))
}

fn sync() {
    // Written data is flushed before and inside each timing, so page-cache writeback of one
    // step is not billed to the next.
    nix::unistd::sync();
}

fn cmd(c: &mut Command) -> Result<()> {
    let out = c.output().with_context(|| format!("cannot run {c:?}"))?;
    if !out.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn report(what: &str, s: &Sample, peer: &str, p: &Sample) {
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.4}x", a / b)
        } else {
            "n/a".into()
        }
    };
    println!(
        "  {what:<34} {:>8.4} s {:>9.1} MiB | vs {peer:<16} {:>8.4} s {:>9.1} MiB | time {:>8} bytes {:>8}",
        s.secs,
        s.bytes as f64 / 1048576.0,
        p.secs,
        p.bytes as f64 / 1048576.0,
        ratio(s.secs, p.secs),
        ratio(s.bytes as f64, p.bytes as f64)
    );
}

fn bench_size(work: &Path, mib: u64) -> Result<()> {
    let dir = work.join(format!("{mib}mib"));
    let _ = fs::remove_dir_all(&dir);
    let tree = dir.join("snapshots/1/fs");
    let upper = dir.join("snapshots/2/fs");
    fs::create_dir_all(&tree)?;
    fs::create_dir_all(&upper)?;
    let (bytes, files) = make_tree(&tree, mib << 20)?;
    sync();
    println!("tree of {:.1} MiB in {files} files ({})", bytes as f64 / 1048576.0, tree.display());

    // Peer 1: cp -a (a runtime that copies the rootfs for each container).
    let copy = dir.join("copy");
    let cp = median(|| {
        let _ = fs::remove_dir_all(&copy);
        let s = timed(|| {
            cmd(Command::new("cp").arg("-a").arg(&tree).arg(&copy))?;
            sync();
            allocated(&copy)
        });
        fs::remove_dir_all(&copy)?;
        s
    })?;
    // Peer 2: plain mkfs.ext4 -d into a file twice the tree's size.
    let plain = dir.join("plain.ext4");
    let mk = median(|| {
        let s = timed(|| {
            fs::File::create(&plain)?.set_len(2 * bytes + (64 << 20))?;
            cmd(Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(&tree).arg(&plain))?;
            sync();
            Ok(fs::metadata(&plain)?.blocks() * 512)
        });
        fs::remove_file(&plain)?;
        s
    })?;

    let mount: MountSpec = format!("overlay:overlay:lowerdir={},upperdir={},workdir={}", tree.display(), upper.display(), upper.display()).parse()?;
    // The same content under two more (small) lowerdirs: built through the merged overlay view.
    let (l2, l3) = (dir.join("snapshots/3/fs"), dir.join("snapshots/4/fs"));
    fs::create_dir_all(l2.join("etc"))?;
    fs::create_dir_all(l3.join("etc"))?;
    fs::write(l2.join("etc/os-release"), "ID=bench\n")?;
    fs::write(l3.join("etc/hostname"), "bench\n")?;
    let stacked: MountSpec =
        format!("overlay:overlay:lowerdir={}:{}:{},upperdir={},workdir={}", l3.display(), l2.display(), tree.display(), upper.display(), upper.display())
            .parse()?;
    let cache = dir.join("cache");
    for fstype in [FsType::Ext4, FsType::Erofs] {
        let mut opts = ImageOptions::new(fstype, dir.join(format!("out.{fstype}")));
        opts.cache_dir = Some(cache.clone());
        // A cold build starts from an empty cache.
        let cold_build = |m: &MountSpec| {
            let _ = fs::remove_dir_all(&cache);
            timed(|| {
                let b = image_from_mounts(std::slice::from_ref(m), &opts)?;
                if b.from_cache {
                    bail!("cold build found a cached image");
                }
                sync();
                Ok(b.bytes_written)
            })
        };
        let merged = median(|| cold_build(&stacked))?;
        let cold = median(|| cold_build(&mount))?;
        // The cache now holds the image of `mount`: a second container finds it.
        let warm = median(|| {
            timed(|| {
                let b = image_from_mounts(std::slice::from_ref(&mount), &opts)?;
                if !b.from_cache {
                    bail!("second build was not a cache hit");
                }
                Ok(b.bytes_written)
            })
        })?;
        report(&format!("husk {fstype} cold (1 lowerdir)"), &cold, "cp -a", &cp);
        report(&format!("husk {fstype} cold (1 lowerdir)"), &cold, "mkfs.ext4 -d", &mk);
        report(&format!("husk {fstype} cold (3 lowerdirs)"), &merged, "cp -a", &cp);
        report(&format!("husk {fstype} cached (2nd container)"), &warm, "cp -a", &cp);
    }
    fs::remove_dir_all(&dir)?;
    Ok(())
}

fn main() -> Result<()> {
    let mut work = std::env::temp_dir().join("husk-rootfs-bench");
    let mut sizes = vec![5u64, 200];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--work" => work = PathBuf::from(args.next().context("--work needs a directory")?),
            "--sizes-mib" => {
                let v = args.next().context("--sizes-mib needs a list")?;
                sizes = v.split(',').map(|s| s.parse().with_context(|| format!("bad size {s:?}"))).collect::<Result<_>>()?;
            }
            other => bail!("unknown argument {other:?} (usage: husk-rootfs-bench [--work DIR] [--sizes-mib 5,200])"),
        }
    }
    fs::create_dir_all(&work)?;
    println!("husk-rootfs bench (ratios: husk / peer; lower is better)");
    let result = sizes.iter().try_for_each(|&mib| bench_size(&work, mib));
    let _ = fs::remove_dir_all(&work);
    result
}
