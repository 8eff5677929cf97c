//! The files a program needs in the jail to be executed there: nothing for a static binary;
//! for a dynamic one its ELF interpreter (at the exact path its `PT_INTERP` names) and every
//! shared library it needs, transitively, each at the path where the jailed loader will look
//! first. The jail has no `/etc/ld.so.cache`, so the loader searches the object's
//! `DT_RUNPATH` (or `DT_RPATH`) and then its default directories; the search here is the same,
//! so the library found here is the one the loader finds inside.
//!
//! Only the headers are read (ELF header, program headers, dynamic section, its strings),
//! by offset: a debug build of husk-vmm is hundreds of MiB. goblin parses the headers; the
//! dynamic entries are plain 16-byte pairs.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use goblin::container::{Container, Ctx};
use goblin::elf::dynamic::{DT_NEEDED, DT_NULL, DT_RPATH, DT_RUNPATH, DT_STRSZ, DT_STRTAB};
use goblin::elf::header::EM_X86_64;
use goblin::elf::program_header::{ProgramHeader, PT_DYNAMIC, PT_INTERP, PT_LOAD};

use super::JailError;

/// Where glibc's and musl's loaders look on x86-64 after the object's run path (Debian's
/// multiarch directories, then Fedora's lib64, then the plain ones).
const DEFAULT_DIRS: [&str; 6] = ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"];
/// Most libraries one program may pull in.
const MAX_LIBRARIES: usize = 64;
/// Most program headers read.
const MAX_PHDRS: usize = 256;
/// Largest dynamic section and string table read.
const MAX_DYNAMIC: u64 = 64 * 1024;
const MAX_STRTAB: u64 = 1 << 20;

/// A file of the host the jail must hold, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needed {
    /// The host file (symlinks resolved).
    pub source: PathBuf,
    /// Its path inside the jail.
    pub inside: PathBuf,
}

/// What one ELF object asks the loader for.
#[derive(Debug, Default)]
struct Dynamic {
    interp: Option<String>,
    needed: Vec<String>,
    run_path: Vec<String>,
}

fn bad(path: &Path, reason: impl Into<String>) -> JailError {
    JailError::Elf { path: path.to_path_buf(), reason: reason.into() }
}

fn read_at(f: &File, path: &Path, offset: u64, len: u64, max: u64, what: &str) -> Result<Vec<u8>, JailError> {
    if len > max {
        return Err(bad(path, format!("{what} of {len} bytes is larger than {max}")));
    }
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset).map_err(|e| bad(path, format!("cannot read the {what}: {e}")))?;
    Ok(buf)
}

/// Reads the interpreter, needed libraries and run path of the x86-64 ELF at `path`.
fn dynamic(path: &Path) -> Result<Dynamic, JailError> {
    let f = File::open(path).map_err(|e| bad(path, format!("cannot open: {e}")))?;
    let len = f.metadata().map_err(|e| bad(path, format!("cannot stat: {e}")))?.len();
    if len < 64 {
        return Err(bad(path, "not an ELF file (shorter than an ELF header)"));
    }
    let head = read_at(&f, path, 0, 64, 64, "ELF header")?;
    let h = goblin::elf::Elf::parse_header(&head).map_err(|e| bad(path, format!("not an ELF file: {e}")))?;
    if h.e_machine != EM_X86_64 || h.container().ok() != Some(Container::Big) || h.endianness().ok() != Some(scroll_le()) {
        return Err(bad(path, "not a 64-bit little-endian x86-64 ELF file"));
    }
    let ctx = Ctx::new(Container::Big, scroll_le());
    let count = usize::from(h.e_phnum).min(MAX_PHDRS);
    let size = ProgramHeader::size(ctx) as u64;
    let raw = read_at(&f, path, h.e_phoff, count as u64 * size, MAX_PHDRS as u64 * size, "program headers")?;
    let phdrs = ProgramHeader::parse(&raw, 0, count, ctx).map_err(|e| bad(path, format!("bad program headers: {e}")))?;
    let mut out = Dynamic::default();
    if let Some(p) = phdrs.iter().find(|p| p.p_type == PT_INTERP) {
        let bytes = read_at(&f, path, p.p_offset, p.p_filesz, 4096, "interpreter path")?;
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        out.interp = Some(String::from_utf8_lossy(&bytes[..end]).into_owned());
    }
    let Some(dynamic) = phdrs.iter().find(|p| p.p_type == PT_DYNAMIC) else {
        return Ok(out);
    };
    let entries = read_at(&f, path, dynamic.p_offset, dynamic.p_filesz, MAX_DYNAMIC, "dynamic section")?;
    let (mut strtab, mut strsz) = (None, 0u64);
    let mut needed_at = Vec::new();
    let (mut runpath_at, mut rpath_at) = (None, None);
    for e in entries.chunks_exact(16) {
        let tag = u64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]);
        let val = u64::from_le_bytes([e[8], e[9], e[10], e[11], e[12], e[13], e[14], e[15]]);
        match tag {
            DT_NULL => break,
            DT_NEEDED => needed_at.push(val),
            DT_STRTAB => strtab = Some(val),
            DT_STRSZ => strsz = val,
            DT_RUNPATH => runpath_at = Some(val),
            DT_RPATH => rpath_at = Some(val),
            _ => {}
        }
    }
    if needed_at.is_empty() {
        return Ok(out);
    }
    let strtab = strtab.ok_or_else(|| bad(path, "dynamic section without a string table"))?;
    // DT_STRTAB is an address: find the loaded segment that holds it.
    let seg = phdrs
        .iter()
        .find(|p| p.p_type == PT_LOAD && p.p_vaddr <= strtab && strtab.saturating_add(strsz) <= p.p_vaddr.saturating_add(p.p_filesz))
        .ok_or_else(|| bad(path, "the dynamic string table is in no loaded segment"))?;
    let strings = read_at(&f, path, seg.p_offset + (strtab - seg.p_vaddr), strsz, MAX_STRTAB, "dynamic string table")?;
    let string = |at: u64| -> Result<String, JailError> {
        let tail = strings.get(at as usize..).ok_or_else(|| bad(path, format!("string offset {at} is outside the string table")))?;
        let end = tail.iter().position(|b| *b == 0).ok_or_else(|| bad(path, "unterminated string"))?;
        Ok(String::from_utf8_lossy(&tail[..end]).into_owned())
    };
    out.needed = needed_at.into_iter().map(string).collect::<Result<_, _>>()?;
    // The loader ignores DT_RPATH when DT_RUNPATH is present.
    if let Some(at) = runpath_at.or(rpath_at) {
        out.run_path = string(at)?.split(':').filter(|d| !d.is_empty()).map(str::to_string).collect();
    }
    Ok(out)
}

fn scroll_le() -> goblin::container::Endian {
    goblin::container::Endian::Little
}

/// Whether `path` is an x86-64 ELF object (the loader skips libraries of another kind).
fn usable_library(path: &Path) -> bool {
    path.is_file() && dynamic(path).is_ok()
}

/// The files `program` needs in a jail to be executed there (empty for a static binary).
pub fn needed_files(program: &Path) -> Result<Vec<Needed>, JailError> {
    let top = dynamic(program)?;
    let Some(interp) = top.interp.clone() else {
        return Ok(Vec::new());
    };
    let resolve = |p: &Path| p.canonicalize().map_err(|e| bad(p, format!("cannot resolve: {e}")));
    let interp_path = PathBuf::from(&interp);
    if !interp_path.is_absolute() {
        return Err(bad(program, format!("interpreter {interp:?} is not an absolute path")));
    }
    let mut out = vec![Needed { source: resolve(&interp_path)?, inside: interp_path.clone() }];
    // The interpreter is loaded already: libc's DT_NEEDED of it is satisfied by its soname.
    let mut seen: BTreeSet<String> = interp_path.file_name().map(|n| n.to_string_lossy().into_owned()).into_iter().collect();
    let mut queue: Vec<(String, Vec<String>, PathBuf)> = Vec::new();
    let origin = |p: &Path| p.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    for n in &top.needed {
        queue.push((n.clone(), top.run_path.clone(), origin(program)));
    }
    while let Some((name, run_path, from_dir)) = queue.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if out.len() > MAX_LIBRARIES {
            return Err(bad(program, format!("needs more than {MAX_LIBRARIES} libraries")));
        }
        let found = if name.contains('/') {
            Some(PathBuf::from(&name)).filter(|p| p.is_absolute() && usable_library(p))
        } else {
            let expanded = run_path.iter().filter_map(|d| {
                let d = d.replace("${ORIGIN}", "$ORIGIN").replace("$ORIGIN", &from_dir.to_string_lossy());
                // Other loader tokens ($LIB, $PLATFORM) are not expanded here: skipped.
                (!d.contains('$') && d.starts_with('/')).then(|| PathBuf::from(d))
            });
            expanded.chain(DEFAULT_DIRS.iter().map(PathBuf::from)).map(|d| d.join(&name)).find(|p| usable_library(p))
        };
        let Some(inside) = found else {
            return Err(bad(program, format!("needs {name:?}, found in neither its run path nor {}", DEFAULT_DIRS.join(", "))));
        };
        let lib = dynamic(&inside)?;
        for n in lib.needed {
            queue.push((n, lib.run_path.clone(), origin(&inside)));
        }
        out.push(Needed { source: resolve(&inside)?, inside });
    }
    Ok(out)
}
