//! The machine's memory, from /proc/meminfo (Linux); `None` elsewhere or when unreadable.

/// `MemTotal`, in bytes.
pub fn total_bytes() -> Option<u64> {
    meminfo("MemTotal")
}

/// `MemAvailable`, in bytes.
pub fn available_bytes() -> Option<u64> {
    meminfo("MemAvailable")
}

/// A `/proc/meminfo` field (given there in kB), in bytes.
fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse(&text, key)
}

fn parse(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.split(':').next() == Some(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_are_read_in_bytes() {
        let t = "MemTotal:       24576000 kB\nMemFree: 1 kB\nMemAvailable:   1000 kB\n";
        assert_eq!(super::parse(t, "MemTotal"), Some(24576000 * 1024));
        assert_eq!(super::parse(t, "MemAvailable"), Some(1024000));
        assert_eq!(super::parse(t, "Mem"), None);
    }
}
