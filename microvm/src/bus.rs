//! An address-range bus (one for port I/O, one for MMIO) that routes vCPU exits to devices.
//!
//! Ranges may not overlap; insertion fails instead. The bus is built before the vCPUs start and
//! then shared read-only, so lookups take no lock; devices keep their own interior mutability.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::devices::BusDevice;

/// Inserting a device failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps a device already on the bus.
    #[error("range {base:#x}+{len:#x} overlaps the device at {other_base:#x}+{other_len:#x}")]
    Overlap {
        /// Base of the new range.
        base: u64,
        /// Length of the new range.
        len: u64,
        /// Base of the existing range.
        other_base: u64,
        /// Length of the existing range.
        other_len: u64,
    },
    /// Zero-length or wrapping range.
    #[error("invalid range {base:#x}+{len:#x}")]
    BadRange {
        /// Base.
        base: u64,
        /// Length.
        len: u64,
    },
}

/// A set of non-overlapping `[base, base+len)` ranges, each with a device.
#[derive(Default, Clone)]
pub struct Bus {
    devices: BTreeMap<u64, (u64, Arc<dyn BusDevice>)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base+len)`.
    pub fn insert(&mut self, device: Arc<dyn BusDevice>, base: u64, len: u64) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0).ok_or(BusError::BadRange { base, len })?;
        // The nearest range starting at or before the new end must end before our base.
        if let Some((&b, &(l, _))) = self.devices.range(..end).next_back() {
            if b + l > base {
                return Err(BusError::Overlap { base, len, other_base: b, other_len: l });
            }
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    /// The device covering `addr` and the offset of `addr` in its range, if the whole access
    /// of `size` bytes stays inside that range.
    pub fn resolve(&self, addr: u64, size: usize) -> Option<(&Arc<dyn BusDevice>, u64)> {
        let (&base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        let off = addr - base;
        (off.checked_add(size as u64)? <= *len).then_some((dev, off))
    }

    /// Routes a read; returns false (leaving `data` untouched) if no device is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, off)) => {
                dev.read(off, data);
                true
            }
            None => false,
        }
    }

    /// Routes a write; returns false if no device is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, off)) => {
                dev.write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, Vec<u8>)>>);
    impl BusDevice for Recorder {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data.to_vec()));
        }
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        let d: Arc<dyn BusDevice> = Arc::new(Recorder::default());
        bus.insert(d.clone(), 0x100, 0x10).unwrap();
        for (base, len) in [(0x100, 0x10), (0xf8, 0x10), (0x10f, 1), (0x0, 0x1000), (0x104, 2)] {
            assert!(matches!(bus.insert(d.clone(), base, len), Err(BusError::Overlap { other_base: 0x100, .. })), "{base:#x}+{len:#x}");
        }
        bus.insert(d.clone(), 0x110, 0x10).unwrap();
        bus.insert(d.clone(), 0xf0, 0x10).unwrap();
        assert_eq!(bus.insert(d.clone(), 0x500, 0), Err(BusError::BadRange { base: 0x500, len: 0 }));
        assert!(bus.insert(d, u64::MAX, 2).is_err());
    }

    #[test]
    fn routes_with_offsets_and_bounds() {
        let mut bus = Bus::new();
        let r = Arc::new(Recorder::default());
        bus.insert(r.clone(), 0x3f8, 8).unwrap();
        assert!(bus.write(0x3fb, &[1]));
        let mut b = [0u8; 2];
        assert!(bus.read(0x3fc, &mut b));
        assert_eq!(b, [4, 4]);
        assert!(!bus.write(0x3ff, &[1, 2]), "access crossing the end");
        assert!(!bus.write(0x3f7, &[1]));
        assert!(!bus.read(0x400, &mut b));
        assert_eq!(*r.0.lock().unwrap(), vec![(3, vec![1])]);
    }
}
