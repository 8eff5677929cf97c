//! Where serial output goes, and the watcher that notices the guest kernel's power-off and
//! panic lines in it. Neither ends the VM by itself (a guest process can print them too, see
//! [`crate::exit`]): a power-off line makes the VMM check the vCPUs for the halt, a panic
//! line labels the reset that follows it.

use std::io::{self, Write};
use std::sync::Arc;

use crate::bounded_log::BoundedLog;
use crate::exit::VmExit;

/// Longest console line the watcher keeps; longer lines are cut (the markers are at the start).
const MAX_LINE: usize = 256;

/// Serial output sink: stdout, a file, or nothing. Bytes are written through at once (the
/// guest already pays one VM exit per byte, and prompts without a newline must show).
pub enum ConsoleOut {
    /// husk-vmm's standard output.
    Stdout(io::Stdout),
    /// A file, kept within its size bound (the guest writes as much as it likes).
    File(BoundedLog),
    /// Dropped.
    Sink,
}

/// Serial output writer: forwards bytes to [`ConsoleOut`] and scans lines.
pub struct ConsoleWriter {
    out: ConsoleOut,
    line: Vec<u8>,
    exit: Arc<VmExit>,
}

impl ConsoleWriter {
    /// A writer sending to `out` and reporting to `exit`.
    pub fn new(out: ConsoleOut, exit: Arc<VmExit>) -> Self {
        ConsoleWriter { out, line: Vec::with_capacity(MAX_LINE), exit }
    }

    fn end_line(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        if text.contains("Kernel panic - not syncing") {
            if !text.contains("---[ end Kernel panic") {
                let from = text.find("Kernel panic").unwrap_or(0);
                self.exit.note_panic(text[from..].trim_end());
            }
        } else if text.contains("reboot: System halted") || text.contains("reboot: Power down") {
            self.exit.claim_halt();
        }
        self.line.clear();
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                self.end_line();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        let r = match &mut self.out {
            ConsoleOut::Stdout(s) => s.write_all(buf).and_then(|_| s.flush()),
            ConsoleOut::File(f) => f.write_all(buf),
            ConsoleOut::Sink => Ok(()),
        };
        // A full disk or closed stdout must not stop the guest: drop the output.
        if let Err(e) = r {
            log::warn!("console output dropped: {e}");
            self.out = ConsoleOut::Sink;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(text: &str) -> Arc<VmExit> {
        let exit = Arc::new(VmExit::default());
        let mut w = ConsoleWriter::new(ConsoleOut::Sink, exit.clone());
        for b in text.bytes() {
            w.write_all(&[b]).unwrap();
        }
        exit
    }

    #[test]
    fn fifty_mib_of_console_output_leave_at_most_the_bound_in_the_file() {
        let path = std::env::temp_dir().join(format!("husk-console-flood-{}.log", std::process::id()));
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        let max = 64 << 10;
        let exit = Arc::new(VmExit::default());
        let mut w = ConsoleWriter::new(ConsoleOut::File(BoundedLog::new(f, max).unwrap()), exit.clone());
        let line = [b"x".repeat(1023), b"\n".to_vec()].concat();
        let chunk: Vec<u8> = line.iter().cycle().take(4096).copied().collect();
        for _ in 0..(50 << 20) / chunk.len() {
            w.write_all(&chunk).unwrap();
        }
        w.write_all(b"the last line\n").unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(size <= max, "{size} bytes on the host for a bound of {max}");
        assert!(text.ends_with("x\nthe last line\n") && text.starts_with("[husk: "), "{}", &text[..80]);
        assert!(!exit.is_stopping());
    }

    #[test]
    fn power_off_lines_are_claims_and_panic_lines_label_the_reset() {
        use crate::exit::ExitReason;
        let e = feed("[    1.2] reboot: System halted\n");
        assert!(!e.is_stopping(), "a power-off line alone does not end the VM");
        assert!(e.take_halt_claim());
        assert!(feed("[ 3.0] reboot: Power down\n").take_halt_claim());
        assert!(!feed("reboot: System halted").take_halt_claim(), "only complete lines count");
        let e = feed("[ 2.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000000\n");
        assert!(!e.is_stopping(), "panic alone waits for the reset");
        e.on_reset();
        assert!(matches!(e.wait(), ExitReason::Panicked(l) if l.starts_with("Kernel panic - not syncing: Attempted")));
        let e = feed("Kernel panic - not syncing: x\n---[ end Kernel panic - not syncing: x ]---\n");
        assert!(!e.is_stopping(), "the end-of-panic line is text a process can print: no exit");
        e.on_reset();
        assert_eq!(e.wait(), ExitReason::Panicked("Kernel panic - not syncing: x".into()));
        assert!(!feed(&"x".repeat(10_000)).is_stopping());
    }
}
