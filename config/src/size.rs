//! Memory sizes written as `256M`, `1G`, `65536K` or a plain number of MiB.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{ConfigError, Result};

/// A size in bytes, parsed from `NNN[K|M|G]` (binary units; no suffix means MiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemSize(pub u64);

impl MemSize {
    /// Size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Size in MiB (rounded down).
    pub fn mib(self) -> u64 {
        self.0 >> 20
    }

    /// Parses `s`; `field` names the setting in the error.
    pub fn parse(field: &str, s: &str) -> Result<Self> {
        let t = s.trim();
        let (num, shift) = match t.char_indices().last() {
            Some((i, 'K' | 'k')) => (&t[..i], 10),
            Some((i, 'M' | 'm')) => (&t[..i], 20),
            Some((i, 'G' | 'g')) => (&t[..i], 30),
            _ => (t, 20),
        };
        let n: u64 = num.parse().map_err(|_| ConfigError::invalid(field, s, "expected a size such as 256M, 1G or 65536K"))?;
        n.checked_mul(1u64 << shift).map(MemSize).ok_or_else(|| ConfigError::invalid(field, s, "size overflows 64 bits"))
    }
}

impl std::fmt::Display for MemSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_multiple_of(1 << 30) && self.0 != 0 {
            write!(f, "{}G", self.0 >> 30)
        } else if self.0.is_multiple_of(1 << 20) {
            write!(f, "{}M", self.0 >> 20)
        } else {
            write!(f, "{}K", self.0 >> 10)
        }
    }
}

impl Serialize for MemSize {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MemSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Mib(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Mib(n) => n.checked_mul(1 << 20).map(MemSize).ok_or_else(|| serde::de::Error::custom(format!("memory {n} MiB overflows"))),
            Raw::Text(s) => MemSize::parse("memory", &s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(MemSize::parse("m", "256M").unwrap().bytes(), 256 << 20);
        assert_eq!(MemSize::parse("m", "1G").unwrap().bytes(), 1 << 30);
        assert_eq!(MemSize::parse("m", "64k").unwrap().bytes(), 64 << 10);
        assert_eq!(MemSize::parse("m", "128").unwrap().bytes(), 128 << 20);
        assert_eq!(MemSize(512 << 20).to_string(), "512M");
    }

    #[test]
    fn rejects_garbage() {
        let e = MemSize::parse("memory", "lots").unwrap_err().to_string();
        assert!(e.contains("memory") && e.contains("lots"), "{e}");
        assert!(MemSize::parse("memory", "99999999999999999G").is_err());
    }
}
