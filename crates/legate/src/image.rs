//! The executable's own pages: what loading the configuration leaves resident.
//!
//! Legate's code is ~14 MB, about half of it generated protobuf types and the parsing,
//! reflection and validation built on them, and its read-only data holds the 3.4 MB descriptor
//! set. Loading a configuration runs through much of that once; the kernel then keeps every
//! page it touched mapped (64 KiB around each one), so after start an idle proxy showed ~14 MB
//! of its image resident, more than all its heap. [`release_startup_pages`] unmaps the image's
//! clean pages once the configuration is in force: serving faults back in only the code it
//! runs (minor faults from the page cache, no I/O), and a reload faults in the parser again.
//!
//! Only mappings of the executable that are read-only and hold no private (copy-on-write)
//! page are touched: for those, `MADV_DONTNEED` drops resident pages that read back unchanged
//! from the file. The relocated read-only data (RELRO) has private pages and is left alone.

/// Unmaps the executable's clean read-only pages (see the module docs) and returns how many
/// bytes were resident in them; `Ok(0)` where there is no `/proc` to read (not Linux).
pub fn release_startup_pages() -> std::io::Result<u64> {
    #[cfg(target_os = "linux")]
    {
        let exe = std::fs::read_link("/proc/self/exe")?;
        let smaps = std::fs::read_to_string("/proc/self/smaps")?;
        let mut released = 0;
        for mapping in clean_image_mappings(&smaps, exe.to_string_lossy().as_ref()) {
            // SAFETY: the range is a whole mapping of the executable that is not writable and
            // has no private page (checked from smaps just now; a read-only mapping cannot gain
            // one without mprotect, which Legate never calls). MADV_DONTNEED there only drops
            // page-table entries; the next access maps the same file page again.
            let rc = unsafe {
                libc::madvise(
                    mapping.start as *mut libc::c_void,
                    mapping.end - mapping.start,
                    libc::MADV_DONTNEED,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            released += mapping.resident_bytes;
        }
        Ok(released)
    }
    #[cfg(not(target_os = "linux"))]
    Ok(0)
}

/// One mapping that [`clean_image_mappings`] picked.
#[derive(Debug, PartialEq)]
struct Mapping {
    start: usize,
    end: usize,
    resident_bytes: u64,
}

/// The mappings of `exe` in `smaps` (the format of `/proc/<pid>/smaps`) that are not
/// writable and show an `Anonymous` (private copy-on-write) size of 0.
fn clean_image_mappings(smaps: &str, exe: &str) -> Vec<Mapping> {
    let mut picked = Vec::new();
    let mut current: Option<Candidate> = None;
    for line in smaps.lines() {
        if let Some(next) = mapping_header(line, exe) {
            picked.extend(current.replace(next).and_then(Candidate::picked));
            continue;
        }
        let (Some(candidate), Some((field, value))) = (current.as_mut(), line.split_once(':'))
        else {
            continue;
        };
        let kib = value
            .trim()
            .strip_suffix(" kB")
            .and_then(|v| v.parse::<u64>().ok());
        match (field, kib) {
            ("Rss", Some(kib)) => candidate.mapping.resident_bytes = kib * 1024,
            ("Anonymous", kib) => candidate.clean = kib == Some(0),
            _ => {}
        }
    }
    picked.extend(current.and_then(Candidate::picked));
    picked
}

/// A mapping being read from smaps.
struct Candidate {
    mapping: Mapping,
    /// A read-only mapping of the executable.
    image: bool,
    /// Its `Anonymous` line says 0 (a mapping without that line is not picked).
    clean: bool,
}

impl Candidate {
    fn picked(self) -> Option<Mapping> {
        (self.image && self.clean).then_some(self.mapping)
    }
}

/// A mapping's header line, `start-end perms offset dev inode [path]`.
fn mapping_header(line: &str, exe: &str) -> Option<Candidate> {
    let mut parts = line.split_whitespace();
    let (start, end) = parts.next()?.split_once('-')?;
    let (start, end) = (
        usize::from_str_radix(start, 16).ok()?,
        usize::from_str_radix(end, 16).ok()?,
    );
    let perms = parts.next()?.as_bytes();
    let read_only = perms.first() == Some(&b'r') && perms.get(1) == Some(&b'-');
    let path = line.find('/').map_or("", |i| &line[i..]);
    Some(Candidate {
        mapping: Mapping {
            start,
            end,
            resident_bytes: 0,
        },
        image: read_only && path == exe,
        clean: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55e5d7529000-55e5d7c4c000 r--p 00000000 fe:00 5351401                    /opt/legate
Size:               7308 kB
Rss:                1416 kB
Anonymous:             0 kB
VmFlags: rd mr mw me dw sd
55e5d7c4c000-55e5d8a49000 r-xp 00722000 fe:00 5351401                    /opt/legate
Size:              14324 kB
Rss:               10808 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me dw sd
55e5d8a49000-55e5d8ac0000 r--p 0151e000 fe:00 5351401                    /opt/legate
Size:                476 kB
Rss:                 476 kB
Anonymous:           476 kB
VmFlags: rd mr mw me dw ac sd
55e5d8ac0000-55e5d8ac8000 rw-p 01595000 fe:00 5351401                    /opt/legate
Size:                 32 kB
Rss:                  32 kB
Anonymous:             0 kB
55e5d8ac8000-55e5d8ad0000 r--p 01596000 fe:00 5351401                    /opt/legate
Size:                 32 kB
Rss:                  32 kB
7fa69c014000-7fa69c16a000 r-xp 00026000 fe:00 326279                     /usr/lib/libc.so.6
Size:               1368 kB
Rss:                 944 kB
Anonymous:             0 kB
7ffc22e03000-7ffc22e24000 rw-p 00000000 00:00 0                          [stack]
Rss:                 128 kB
";

    #[test]
    fn picks_the_executables_clean_read_only_mappings() {
        let picked = clean_image_mappings(SMAPS, "/opt/legate");
        assert_eq!(
            picked,
            vec![
                Mapping {
                    start: 0x55e5d7529000,
                    end: 0x55e5d7c4c000,
                    resident_bytes: 1416 * 1024,
                },
                Mapping {
                    start: 0x55e5d7c4c000,
                    end: 0x55e5d8a49000,
                    resident_bytes: 10808 * 1024,
                },
            ],
            "not the relocated data (private pages), the writable data, a mapping whose private \
             size is not shown, or other files"
        );
        assert!(clean_image_mappings(SMAPS, "/opt/legate (deleted)").is_empty());
    }

    #[test]
    fn releasing_keeps_the_process_running() {
        let released = release_startup_pages().unwrap();
        assert!(released > 0, "a test binary has resident code");
        // Code and read-only data still work after their pages are dropped.
        assert_eq!(format!("{}", 6 * 7), "42");
    }
}
