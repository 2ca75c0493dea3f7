//! Parsing the kernel's `getdents64` buffer, which nothing else checks.

pub(super) struct RawDirent<'a> {
    pub ino: u64,
    pub off: i64,
    pub reclen: usize,
    pub d_type: u8,
    pub name: &'a [u8],
}

/// One `struct linux_dirent64` at `pos`, bounds-checked.
pub(super) fn parse_dirent(buf: &[u8], pos: usize) -> Option<RawDirent<'_>> {
    const NAME_AT: usize = 19;
    let head = buf.get(pos..pos.checked_add(NAME_AT)?)?;
    let ino = u64::from_ne_bytes(head.get(0..8)?.try_into().ok()?);
    let off = i64::from_ne_bytes(head.get(8..16)?.try_into().ok()?);
    let reclen = u16::from_ne_bytes(head.get(16..18)?.try_into().ok()?) as usize;
    let d_type = *head.get(18)?;
    if reclen < NAME_AT {
        return None;
    }
    let raw = buf.get(pos + NAME_AT..pos.checked_add(reclen)?)?;
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    Some(RawDirent {
        ino,
        off,
        reclen,
        d_type,
        name: &raw[..len],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ino: u64, off: i64, d_type: u8, name: &[u8], reclen: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&ino.to_ne_bytes());
        v.extend_from_slice(&off.to_ne_bytes());
        v.extend_from_slice(&reclen.to_ne_bytes());
        v.push(d_type);
        v.extend_from_slice(name);
        v.resize(reclen as usize, 0);
        v
    }

    #[test]
    fn parses_records_and_refuses_truncated_ones() {
        let mut buf = record(7, 1, libc::DT_REG, b"a", 24);
        buf.extend(record(8, 2, libc::DT_DIR, b"long-name", 32));
        let a = parse_dirent(&buf, 0).unwrap();
        assert_eq!(
            (a.ino, a.off, a.reclen, a.d_type, a.name),
            (7, 1, 24, libc::DT_REG, &b"a"[..])
        );
        let b = parse_dirent(&buf, 24).unwrap();
        assert_eq!((b.ino, b.name), (8, &b"long-name"[..]));
        // A record claiming more than the buffer holds, or less than its
        // header, is refused rather than read past.
        assert!(parse_dirent(&buf[..40], 24).is_none());
        assert!(parse_dirent(&record(1, 1, 0, b"", 19)[..18], 0).is_none());
        assert!(parse_dirent(&record(1, 1, 0, b"x", 24)[..], usize::MAX - 3).is_none());
        let mut short = record(1, 1, 0, b"x", 24);
        short[16..18].copy_from_slice(&10u16.to_ne_bytes());
        assert!(parse_dirent(&short, 0).is_none());
    }
}
