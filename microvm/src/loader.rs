//! Loading the guest kernel (ELF vmlinux or bzImage, via linux-loader), the initrd and the
//! command line, and filling the zero page, per the Linux x86 boot protocol.

use std::fs::File;
use std::path::{Path, PathBuf};

use husk_config::KernelFormat;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, load_cmdline, KernelLoader};
use vm_memory::{GuestAddress, GuestMemoryBackend, ReadVolatile};

use crate::arch::boot_params::{self, BootInfo};
use crate::layout::*;
use crate::memory::GuestMemoryMmap;

/// Offset of the 64-bit entry point (startup_64) from the start of a bzImage's protected-mode
/// code (Linux boot protocol 2.12+, "64-bit boot protocol").
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// xloadflags bit: the kernel has a 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1;

/// Loading failed.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// A file could not be opened or read.
    #[error("cannot read {what} {path:?}")]
    Io {
        /// `kernel` or `initrd`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// linux-loader rejected the kernel.
    #[error("cannot load kernel {path:?}")]
    Kernel {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// A bzImage without the 64-bit boot protocol.
    #[error("bzImage {0:?} has no 64-bit entry point (boot protocol 2.12+ with XLF_KERNEL_64)")]
    No64BitEntry(PathBuf),
    /// The initrd does not fit between the kernel and the end of low memory.
    #[error("initrd {path:?} of {size} bytes does not fit in guest memory above the kernel (ends at {kernel_end:#x})")]
    InitrdTooBig {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// First byte after the kernel.
        kernel_end: u64,
    },
    /// Copying the initrd into guest memory failed.
    #[error("cannot copy initrd {path:?} into guest memory")]
    InitrdCopy {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The command line is not acceptable.
    #[error("invalid kernel command line {0:?}")]
    Cmdline(String, #[source] linux_loader::cmdline::Error),
    /// Writing the command line failed.
    #[error("cannot write the kernel command line")]
    CmdlineWrite(#[source] linux_loader::loader::Error),
    /// Writing the zero page failed.
    #[error("cannot write boot_params")]
    BootParams(#[from] boot_params::BootParamsError),
}

/// Where a kernel landed.
pub struct LoadedKernel {
    /// 64-bit entry point.
    pub entry: u64,
    /// First byte after the kernel image.
    pub kernel_end: u64,
    /// Setup header of a bzImage.
    pub setup_header: Option<linux_loader::loader::bootparam::setup_header>,
}

/// Loads the kernel at `path` into guest memory.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path, format: KernelFormat) -> Result<LoadedKernel, LoaderError> {
    let mut f = File::open(path).map_err(|source| LoaderError::Io { what: "kernel", path: path.into(), source })?;
    let himem = Some(GuestAddress(HIMEM_START));
    let kerr = |source| LoaderError::Kernel { path: path.into(), source };
    match format {
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, &mut f, himem).map_err(kerr)?;
            Ok(LoadedKernel { entry: r.kernel_load.0, kernel_end: r.kernel_end, setup_header: None })
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut f, himem).map_err(kerr)?;
            let hdr = r.setup_header.ok_or_else(|| LoaderError::No64BitEntry(path.into()))?;
            if hdr.version < 0x20c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(LoaderError::No64BitEntry(path.into()));
            }
            // The decompressor needs init_size bytes from the load address.
            let end = r.kernel_load.0 + u64::from(hdr.init_size).max(r.kernel_end - r.kernel_load.0);
            Ok(LoadedKernel { entry: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET, kernel_end: end, setup_header: Some(hdr) })
        }
    }
}

/// Copies the initrd to the top of low memory (page aligned, below the kernel's
/// `initrd_addr_max`) and returns its address and size.
pub fn load_initrd(mem: &GuestMemoryMmap, path: &Path, kernel: &LoadedKernel) -> Result<(u64, u32), LoaderError> {
    let mut f = File::open(path).map_err(|source| LoaderError::Io { what: "initrd", path: path.into(), source })?;
    let size = f.metadata().map_err(|source| LoaderError::Io { what: "initrd", path: path.into(), source })?.len();
    let low_end = mem.last_addr().0.saturating_add(1).min(MMIO_GAP_START);
    let addr_max = kernel.setup_header.map(|h| u64::from(h.initrd_addr_max)).filter(|m| *m != 0).unwrap_or(0x7fff_ffff);
    let top = low_end.min(addr_max + 1);
    let too_big = || LoaderError::InitrdTooBig { path: path.into(), size, kernel_end: kernel.kernel_end };
    let addr = top.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if addr < kernel.kernel_end || size > u64::from(u32::MAX) {
        return Err(too_big());
    }
    read_into(mem, GuestAddress(addr), &mut f, size as usize).map_err(|source| LoaderError::InitrdCopy { path: path.into(), source })?;
    Ok((addr, size as u32))
}

fn read_into<F: ReadVolatile>(mem: &GuestMemoryMmap, addr: GuestAddress, f: &mut F, len: usize) -> Result<(), vm_memory::GuestMemoryError> {
    use vm_memory::Bytes;
    mem.read_exact_volatile_from(addr, f, len)
}

/// Builds the kernel command line from the user's string plus `extra` parameters.
pub fn build_cmdline(base: &str, extra: &[String]) -> Result<Cmdline, LoaderError> {
    let mut c = Cmdline::try_from(base, CMDLINE_MAX_SIZE).map_err(|e| LoaderError::Cmdline(base.into(), e))?;
    for e in extra {
        c.insert_str(e).map_err(|err| LoaderError::Cmdline(e.clone(), err))?;
    }
    Ok(c)
}

/// Writes the command line and the zero page.
pub fn write_boot_info(mem: &GuestMemoryMmap, kernel: &LoadedKernel, cmdline: &Cmdline, initrd: Option<(u64, u32)>, mem_size: u64) -> Result<(), LoaderError> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(LoaderError::CmdlineWrite)?;
    let len = cmdline.as_cstring().map_err(|e| LoaderError::Cmdline(String::new(), e))?.as_bytes().len() as u32;
    boot_params::write(mem, &BootInfo { setup_header: kernel.setup_header, cmdline_len: len, initrd, mem_size })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    /// A file in its own temporary directory, removed with the guard.
    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            if let Some(d) = self.0.parent() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    impl std::ops::Deref for Tmp {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    fn tmp(name: &str, bytes: &[u8]) -> Tmp {
        let d = std::env::temp_dir().join(format!("husk-loader-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        Tmp(p)
    }

    fn elf(paddr: u64, code: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 0x1000];
        f[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        f[16] = 2;
        f[18] = 62;
        f[20] = 1;
        f[24..32].copy_from_slice(&(paddr + 4).to_le_bytes());
        f[32] = 64;
        f[52] = 64;
        f[54] = 56;
        f[56] = 1;
        let ph: [u64; 7] = [0x1000, paddr, paddr, code.len() as u64, code.len() as u64, 0x1000, 0];
        f[64..68].copy_from_slice(&1u32.to_le_bytes());
        f[68..72].copy_from_slice(&5u32.to_le_bytes());
        for (i, v) in ph.iter().take(6).enumerate() {
            f[72 + 8 * i..80 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        f.extend_from_slice(code);
        f
    }

    fn bzimage(xloadflags: u16) -> Vec<u8> {
        let mut f = vec![0u8; 1024];
        f[0x1f1] = 1;
        f[0x202..0x206].copy_from_slice(b"HdrS");
        f[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        f[0x211] = 1;
        f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        f[0x22c..0x230].copy_from_slice(&0x3fff_ffffu32.to_le_bytes());
        f[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        f[0x260..0x264].copy_from_slice(&0x40_0000u32.to_le_bytes());
        f.extend_from_slice(&[0xab; 0x300]);
        f
    }

    #[test]
    fn elf_segments_land_at_their_physical_address() {
        let mem = crate::memory::create_guest_memory(32 << 20).unwrap();
        let k = load_kernel(&mem, &tmp("k.elf", &elf(0x20_0000, &[1, 2, 3, 4, 5, 6])), KernelFormat::Elf).unwrap();
        assert_eq!(k.entry, 0x20_0004);
        assert!(k.setup_header.is_none());
        let mut b = [0u8; 6];
        mem.read_slice(&mut b, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(b, [1, 2, 3, 4, 5, 6]);
        // A segment below 1 MiB would overwrite the boot structures: refused.
        assert!(load_kernel(&mem, &tmp("low.elf", &elf(0x1000, &[1])), KernelFormat::Elf).is_err());
    }

    #[test]
    fn bzimage_payload_at_1mib_entry_at_0x200() {
        let mem = crate::memory::create_guest_memory(32 << 20).unwrap();
        let k = load_kernel(&mem, &tmp("bz", &bzimage(1)), KernelFormat::BzImage).unwrap();
        assert_eq!(k.entry, 0x10_0200);
        assert_eq!(k.kernel_end, 0x10_0000 + 0x40_0000, "init_size reserved for the decompressor");
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10_0000)).unwrap(), 0xab);
        let e = load_kernel(&mem, &tmp("bz32", &bzimage(0)), KernelFormat::BzImage).err().unwrap();
        assert!(e.to_string().contains("64-bit entry"), "{e}");
    }

    #[test]
    fn initrd_goes_high_and_must_fit() {
        let mem = crate::memory::create_guest_memory(32 << 20).unwrap();
        let k = LoadedKernel { entry: 0, kernel_end: 0x80_0000, setup_header: None };
        let (addr, size) = load_initrd(&mem, &tmp("i", &[7u8; 5000]), &k).unwrap();
        assert_eq!(size, 5000);
        assert_eq!(addr % 4096, 0);
        assert!(addr + 5000 <= 32 << 20 && addr >= (32 << 20) - 0x3000);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(addr + 4999)).unwrap(), 7);
        let big = tmp("big", &vec![0u8; 25 << 20]);
        assert!(matches!(load_initrd(&mem, &big, &k), Err(LoaderError::InitrdTooBig { .. })));
    }

    #[test]
    fn cmdline_gets_device_announcements() {
        let c = build_cmdline("console=ttyS0", &["virtio_mmio.device=4K@0xd0000000:5".into()]).unwrap();
        assert_eq!(c.as_cstring().unwrap().to_str().unwrap(), "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5");
        assert!(build_cmdline(&"x".repeat(5000), &[]).is_err());
    }
}
