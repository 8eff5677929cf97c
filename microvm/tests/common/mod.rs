//! Hand-built guests for the local /dev/kvm: tiny 64-bit code wrapped as an ELF vmlinux or a
//! bzImage, and a runner for the husk-vmm binary.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// 64-bit code builder.
#[derive(Default)]
pub struct Code(pub Vec<u8>);

impl Code {
    /// `mov dx, 0x3f8` then `mov al, c; out dx, al` per byte.
    pub fn serial(mut self, text: &str) -> Self {
        self.0.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]);
        for b in text.bytes() {
            self.0.extend_from_slice(&[0xb0, b, 0xee]);
        }
        self
    }
    /// `mov al, 0xfe; out 0x64, al`: i8042 reset.
    pub fn reset(mut self) -> Self {
        self.0.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64]);
        self
    }
    /// `cli; hlt; jmp hlt`.
    pub fn halt(mut self) -> Self {
        self.0.extend_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]);
        self
    }
    /// Forever: write `c` to the serial port, then spin `delay` iterations.
    pub fn serial_loop(mut self, c: u8, delay: u32) -> Self {
        self.0.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
        self.0.extend_from_slice(&[0xb0, c]); // mov al, c
                                              // loop: out dx, al; mov ecx, delay; d: dec ecx; jnz d; jmp loop
        self.0.push(0xee);
        self.0.push(0xb9);
        self.0.extend_from_slice(&delay.to_le_bytes());
        self.0.extend_from_slice(&[0xff, 0xc9, 0x75, 0xfc]);
        self.0.extend_from_slice(&[0xeb, 0xf4]);
        self
    }
}

impl Code {
    /// Waits until the UART has received a byte (LSR bit 0), reads it and writes it back.
    pub fn echo_one_input(mut self) -> Self {
        // l: mov dx, 0x3fd; in al, dx; test al, 1; jz l; mov dx, 0x3f8; in al, dx; out dx, al
        self.0.extend_from_slice(&[0x66, 0xba, 0xfd, 0x03, 0xec, 0xa8, 0x01, 0x74, 0xf7]);
        self.0.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03, 0xec, 0xee]);
        self
    }
    /// Waits until the i8042 has a byte for the CPU (status bit 0), then reads it.
    pub fn wait_key(mut self) -> Self {
        // l: in al, 0x64; test al, 1; jz l; in al, 0x60
        self.0.extend_from_slice(&[0xe4, 0x64, 0xa8, 0x01, 0x74, 0xfa, 0xe4, 0x60]);
        self
    }
}

/// Sends one HTTP request on the API socket; returns (status, body).
pub fn api(sock: &Path, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let status = r.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = r.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// Polls `f` every 20 ms for up to `secs` seconds.
pub fn wait_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

/// Guest-physical load address of the test ELF.
pub const LOAD: u64 = 0x20_0000;

/// A minimal ELF64 x86-64 executable with one PT_LOAD segment holding `code` at [`LOAD`].
pub fn elf(code: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 0x1000];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // 64-bit
    f[5] = 1; // little endian
    f[6] = 1; // version
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..32].copy_from_slice(&LOAD.to_le_bytes()); // e_entry
    f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    f[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let ph = &mut f[64..120];
    ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    ph[8..16].copy_from_slice(&0x1000u64.to_le_bytes()); // p_offset
    ph[16..24].copy_from_slice(&LOAD.to_le_bytes()); // p_vaddr
    ph[24..32].copy_from_slice(&LOAD.to_le_bytes()); // p_paddr
    ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    ph[40..48].copy_from_slice(&(code.len() as u64).to_le_bytes());
    ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
    f.extend_from_slice(code);
    f
}

/// A minimal bzImage (boot protocol 2.15, 64-bit entry) whose protected-mode part holds
/// 0x200 bytes of padding and then `code` (so the 64-bit entry at +0x200 runs it).
pub fn bzimage(code: &[u8]) -> Vec<u8> {
    let setup_sects = 1u8;
    let mut f = vec![0u8; 512 * (1 + usize::from(setup_sects))];
    f[0x1f1] = setup_sects;
    f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // version
    f[0x211] = 1; // loadflags: LOADED_HIGH
    f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    f[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    f[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    f[0x260..0x264].copy_from_slice(&0x10_0000u32.to_le_bytes()); // init_size
    let mut pm = vec![0x90u8; 0x200]; // nops up to the 64-bit entry
    pm.extend_from_slice(code);
    f.extend_from_slice(&pm);
    f
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A new empty directory.
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("husk-vmm-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    /// Writes a file and returns its path.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
    /// A path inside.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running husk-vmm killed when dropped (a failing test leaves no VM behind).
pub struct Vmm(pub Option<std::process::Child>);

impl Vmm {
    /// Waits for the exit and returns the output.
    pub fn wait(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The husk-vmm binary.
pub fn vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_husk-vmm"))
}

/// Runs husk-vmm on `kernel` with `args`, 64 MiB, and a timeout of 60 s.
pub fn run(kernel: &Path, args: &[&str]) -> Output {
    let mut c = vmm();
    c.arg("--kernel").arg(kernel).args(["--memory", "64M"]).args(args);
    let child = c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: killing our own child that did not finish.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("husk-vmm did not exit within 60 s");
        }
    }
}

/// stdout and stderr as text.
pub fn texts(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}
