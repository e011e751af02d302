//! The second half of a build: the pieces lined up into one body (certificates interned,
//! the hash table filled), then written to a temporary file, hashed on the way, synced and
//! renamed into place.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3Builder;

use crate::render;
use crate::snapshot::error::{BuildError, LineError, MAX_REPORTED_ERRORS};
use crate::snapshot::format::*;
use crate::snapshot::format::{Counts, Header};

/// A person's place: its key, its record's offset in its piece, its line.
pub(super) struct Entry {
    pub(super) key: u64,
    pub(super) offset: u64,
    pub(super) line: u64,
}

/// What one piece of the input became.
#[derive(Default)]
pub(super) struct Piece {
    pub(super) records: Vec<u8>,
    pub(super) entries: Vec<Entry>,
    pub(super) certs: Vec<String>,
    pub(super) errors: Vec<LineError>,
    pub(super) error_count: u64,
    pub(super) counts: Counts,
    pub(super) newlines: u64,
    pub(super) folded: u64,
    pub(super) superseded: u64,
    /// AKTIV persons' contact keys for `*_duplisert`: (entry index, hash of the e-mail
    /// address's key, hash of the mobile number's key; 0 for none).
    pub(super) contacts: Vec<(u32, u128, u128)>,
}

/// Interns certificates across pieces, lines up the record pieces and fills the hash table.
pub(super) fn assemble(
    pieces: Vec<Piece>,
    feed_keys: Vec<u64>,
    feed_ids: Vec<u64>,
) -> Result<(Body, Counts, u32), BuildError> {
    let mut certs: Vec<String> = Vec::new();
    let mut cert_ids: HashMap<String, u16, Xxh3Builder> = HashMap::with_hasher(Xxh3Builder::new());
    let mut counts = Counts::default();
    let mut records = RecordPieces::default();
    let mut base = 0u64;
    let mut entries: Vec<Entry> = Vec::with_capacity(pieces.iter().map(|p| p.entries.len()).sum());
    for mut piece in pieces {
        let mut remap = Vec::with_capacity(piece.certs.len());
        for c in piece.certs.drain(..) {
            let next = certs.len();
            let id = *cert_ids.entry(c).or_insert_with_key(|c| {
                certs.push(c.clone());
                next as u16
            });
            if certs.len() >= usize::from(NO_CERT) {
                return Err(BuildError::Limit(format!(
                    "more than {} distinct certificates",
                    NO_CERT - 1
                )));
            }
            remap.push(id);
        }
        for e in &piece.entries {
            let at = e.offset as usize + rec::CERT;
            let local = u16::from_le_bytes([piece.records[at], piece.records[at + 1]]);
            if local != NO_CERT {
                let global = remap[usize::from(local)];
                piece.records[at..at + 2].copy_from_slice(&global.to_le_bytes());
            }
        }
        entries.extend(piece.entries.into_iter().map(|e| Entry {
            offset: e.offset + base,
            ..e
        }));
        base += piece.records.len() as u64;
        records.pieces.push(piece.records);
        counts.records += piece.counts.records;
        counts.aktiv += piece.counts.aktiv;
        counts.slettet += piece.counts.slettet;
        counts.reservert += piece.counts.reservert;
        counts.kan_varsles += piece.counts.kan_varsles;
        counts.digital_post += piece.counts.digital_post;
    }
    counts.certs = certs.len() as u32;

    let n = slot_count(entries.len() as u64);
    debug_assert!(entries.len() as u64 * 100 <= n as u64 * MAX_LOAD_PERCENT);
    let mask = n - 1;
    let mut slots = vec![Slot::EMPTY; n];
    let mut slot_line = vec![0u64; n];
    let mut max_probe = 0u32;
    let mut dup_errors = Vec::new();
    let mut dup_count = 0u64;
    for e in &entries {
        let mut i = home_slot(e.key, mask);
        let mut probe = 0u32;
        loop {
            if slots[i].key == crate::snapshot::format::EMPTY {
                slots[i] = Slot {
                    key: e.key,
                    offset: e.offset,
                };
                slot_line[i] = e.line;
                max_probe = max_probe.max(probe);
                break;
            }
            if slots[i].key == e.key {
                dup_count += 1;
                dup_errors.push(LineError {
                    line: e.line,
                    reason: format!("personidentifikator already given on line {}", slot_line[i]),
                });
                break;
            }
            i = (i + 1) & mask;
            probe += 1;
        }
    }
    if dup_count > 0 {
        dup_errors.sort_by_key(|e| e.line);
        dup_errors.truncate(MAX_REPORTED_ERRORS);
        return Err(BuildError::Invalid {
            errors: dup_errors,
            total: dup_count,
        });
    }
    let certs = certs
        .iter()
        .map(|c| {
            let mut seg = Vec::with_capacity(c.len() + 16);
            render::write_sertifikat(c, &mut seg);
            seg
        })
        .collect();
    Ok((
        Body {
            slots,
            records,
            certs,
            feed_keys,
            feed_ids,
        },
        counts,
        max_probe,
    ))
}

/// An `io::Write` that hashes and counts what passes through.
struct HashingWriter<W> {
    inner: W,
    hasher: BodyHasher,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `body` to a temporary file beside `out`, then header, fsync, rename, dir fsync.
pub(super) fn write_atomically(
    body: &Body,
    mut header: Header,
    out: &Path,
) -> Result<Header, BuildError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BuildError::Io { path, source }
    };
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .ok_or_else(|| BuildError::Limit("output path has no file name".into()))?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let mut w = BufWriter::with_capacity(1 << 20, &file);
        w.write_all(&[0u8; HEADER_LEN]).map_err(io(&tmp))?;
        let hw = HashingWriter {
            inner: w,
            hasher: BodyHasher::default(),
            len: 0,
        };
        let hw = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(
            body,
            rkyv::ser::writer::IoWriter::new(hw),
        )
        .map_err(|e| BuildError::Io {
            path: tmp.clone(),
            source: std::io::Error::other(e.to_string()),
        })?
        .into_inner();
        let HashingWriter { inner, hasher, len } = hw;
        inner.into_inner().map_err(|e| BuildError::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        header.body_len = len;
        header.body_checksum = hasher.finish();
        file.write_all_at(&header.encode(), 0).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, out).map_err(io(out))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&dir))?;
        Ok(header)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
