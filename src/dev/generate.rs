//! `krr generate`: a deterministic synthetic register in the source (JSONL) shape.
//!
//! Ids are Tenor-style synthetic numbers (month + 80, valid control digits), so nothing
//! generated can be a real person's number. The candidates (birth dates 1930–2009 ×
//! individual numbers in the ranges those years use) are visited in the order of a
//! seed-dependent permutation, so ids spread over the whole space and never repeat.
//!
//! The mix follows the real register's shape (about 4.6 million registered people):
//! - status SLETTET 3 %; of AKTIV, reserved 7 %;
//! - contact: both e-mail and mobile 72 %, e-mail only 12 %, mobile only 11 %, neither 5 %;
//! - contact data of varied age: 60 % changed within 18 months, the rest up to 12 years
//!   old, and 70 % verified since, so the 18-month rule bites for a good share;
//! - a digital mailbox for 32 %: Digipost 65 %, e-Boks 35 %, each provider with one real,
//!   self-signed X.509 certificate (made once with openssl, committed under `assets/certs`);
//! - a preferred language for 90 %: nb 78 %, nn 14 %, en 6 %, se 2 %.
//!
//! Every person is drawn from a ChaCha8 stream seeded by (seed, chunk), so the file is the
//! same for the same seed and count whatever the number of threads.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::model::Groups;
use crate::model::fnr::{self, PersonId};
use crate::model::time::Timestamp;
use crate::model::{DigitalPost, Kontaktinformasjon, Person, Reservasjon, Spraak, Status};
use crate::render;

/// The default reference time ages are counted back from: 2026-11-01T00:00:00Z. Fixed, so
/// the same seed gives the same file on any day.
pub const DEFAULT_AS_OF: Timestamp = Timestamp(1_793_491_200);

/// Persons per chunk (one RNG stream each).
const CHUNK: u64 = 1 << 16;

/// A mailbox provider with its shared certificate.
#[derive(Clone, Copy, Debug)]
pub struct Provider {
    /// Display name.
    pub name: &'static str,
    /// Organisation number (`postkasseleverandoeradresse`).
    pub orgnr: &'static str,
    /// The certificate, PEM.
    pub pem: &'static str,
}

/// The two providers of the synthetic register.
pub const PROVIDERS: [Provider; 2] = [
    Provider {
        name: "Digipost",
        orgnr: "984661185",
        pem: include_str!("../../assets/certs/digipost.pem"),
    },
    Provider {
        name: "e-Boks",
        orgnr: "996460320",
        pem: include_str!("../../assets/certs/eboks.pem"),
    },
];

impl Provider {
    /// The certificate as base64 DER (the PEM body without its armour and line breaks).
    pub fn cert_base64(&self) -> String {
        self.pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>()
    }
}

/// Generator settings.
#[derive(Clone, Copy, Debug)]
pub struct GenerateOptions {
    /// Number of persons.
    pub count: u64,
    /// Seed; the same seed and count give the same file.
    pub seed: u64,
    /// Reference time for the ages of contact data.
    pub as_of: Timestamp,
    /// Draw a progress bar on a terminal.
    pub progress: bool,
}

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenerateError {
    /// More persons than synthetic numbers in the candidate space.
    #[error("at most {max} synthetic persons can be generated")]
    TooMany {
        /// The capacity.
        max: u64,
    },
    /// Writing failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The output file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Birth years 1930–1999 use individual numbers 000–499; 2000–2009 use 500–999.
const BLOCKS: [(i32, i32, u32); 2] = [(1930, 1999, 0), (2000, 2009, 500)];

fn dates() -> Vec<(u32, u32, i32, u32)> {
    let mut out = Vec::new();
    for (from, to, ind_base) in BLOCKS {
        for year in from..=to {
            let mut d = chrono::NaiveDate::from_ymd_opt(year, 1, 1).expect("valid date");
            while chrono::Datelike::year(&d) == year {
                out.push((
                    chrono::Datelike::day(&d),
                    chrono::Datelike::month(&d),
                    year,
                    ind_base,
                ));
                d = d.succ_opt().expect("next day");
            }
        }
    }
    out
}

/// The first `count` synthetic ids of the permutation chosen by `seed`.
pub fn synthetic_ids(count: u64, seed: u64) -> Result<Vec<PersonId>, GenerateError> {
    let dates = dates();
    let space = dates.len() as u64 * 500;
    let bits = 64 - (space - 1).leading_zeros();
    let mask = (1u64 << bits) - 1;
    // x -> (a*x + c) mod 2^bits is a bijection for odd a; values >= space are skipped.
    let a = 0x9E37_79B9_7F4A_7C15u64 & mask | 1;
    let c = seed.wrapping_mul(0xD1B5_4A32_D192_ED03) & mask;
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..=mask {
        if out.len() as u64 == count {
            return Ok(out);
        }
        let p = (a.wrapping_mul(i).wrapping_add(c)) & mask;
        if p >= space {
            continue;
        }
        let (day, month, year, ind_base) = dates[(p / 500) as usize];
        let ind = ind_base + (p % 500) as u32;
        let yy = (year % 100).cast_unsigned();
        let first9 = [
            day / 10,
            day % 10,
            (month + 80) / 10,
            (month + 80) % 10,
            yy / 10,
            yy % 10,
            ind / 100,
            ind / 10 % 10,
            ind % 10,
        ]
        .map(|d| d as u8);
        if let Some([k1, k2]) = fnr::control_digits(&first9) {
            let key = first9
                .iter()
                .chain(&[k1, k2])
                .fold(0u64, |v, &d| v * 10 + u64::from(d));
            out.push(PersonId::from_key(key).expect("11 digits"));
        }
    }
    if out.len() as u64 == count {
        return Ok(out);
    }
    Err(GenerateError::TooMany {
        max: out.len() as u64,
    })
}

const FIRST: [&str; 20] = [
    "ola", "kari", "nora", "emma", "jakob", "lars", "ingrid", "per", "anne", "ole", "sofie",
    "emil", "ida", "henrik", "maja", "aksel", "sigrid", "tore", "astrid", "magnus",
];
const LAST: [&str; 16] = [
    "nordmann",
    "hansen",
    "johansen",
    "olsen",
    "larsen",
    "andersen",
    "pedersen",
    "nilsen",
    "kristiansen",
    "jensen",
    "karlsen",
    "johnsen",
    "pettersen",
    "eriksen",
    "berg",
    "haugen",
];
const DOMAINS: [&str; 4] = [
    "example.no",
    "example.com",
    "epost.example.no",
    "post.example.org",
];

const DAY: i64 = 86_400;

/// `index` mapped one-to-one into `0..modulus` (`modulus` prime and above every index used),
/// so addresses and numbers built from it never repeat by chance.
fn unique(index: u64, modulus: u64) -> u64 {
    (index % modulus).wrapping_mul(7_777_777) % modulus
}

/// Draws one person (`index`: its place in the file).
fn person(
    id: PersonId,
    index: u64,
    rng: &mut ChaCha8Rng,
    as_of: Timestamp,
    certs: &[String],
) -> Person {
    let mut p = Person {
        id,
        status: Status::Aktiv,
        reservasjon: Some(Reservasjon::Nei),
        reservasjonstidspunkt: None,
        reservasjon_oppdatert: None,
        varslingsstatus: None,
        kontaktinformasjon: None,
        digital_post: None,
        sertifikat: None,
        spraak: None,
        spraak_oppdatert: None,
    };
    if rng.random_bool(0.03) {
        p.status = Status::Slettet;
        p.reservasjon = None;
        return p;
    }
    if rng.random_bool(0.07) {
        p.reservasjon = Some(Reservasjon::Ja);
    }
    let first = FIRST[rng.random_range(0..FIRST.len())];
    let last = LAST[rng.random_range(0..LAST.len())];
    let (email, mobile) = match rng.random_range(0..100) {
        0..72 => (true, true),
        72..84 => (true, false),
        84..95 => (false, true),
        _ => (false, false),
    };
    // When the contact data last changed: 60 % within 18 months, else up to 12 years ago.
    let age = |rng: &mut ChaCha8Rng| {
        if rng.random_bool(0.6) {
            rng.random_range(0..540 * DAY)
        } else {
            rng.random_range(540 * DAY..12 * 365 * DAY)
        }
    };
    let stamp = |rng: &mut ChaCha8Rng, changed: Timestamp| {
        // Verified at some point since the change, for 70 %.
        rng.random_bool(0.7)
            .then(|| Timestamp(rng.random_range(changed.0..=as_of.0)))
    };
    let mut k = Kontaktinformasjon::default();
    // Addresses and numbers are unique per person (a bijection of the person's index),
    // except in households: of each pair of neighbouring indexes, about 1 % share one
    // e-mail address (written in different case) and 0.5 % one mobile number (with and
    // without +47), as family members do in the real register.
    let household = index / 2;
    let shares = |salt: u64, per_mille: u64| {
        (household.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt).wrapping_mul(0xD6E8_FEB8_6659_FD93)
            >> 54
            < per_mille * 1024 / 1000
    };
    if email {
        let domain = DOMAINS[rng.random_range(0..DOMAINS.len())];
        k.epostadresse = Some(if shares(1, 10) {
            let name = format!(
                "familien.{}{}@example.no",
                LAST[(household % 16) as usize],
                household
            );
            if index.is_multiple_of(2) {
                name
            } else {
                name.to_uppercase()
            }
        } else {
            format!("{first}.{last}{}@{domain}", unique(index, 99_999_989))
        });
        let changed = Timestamp(as_of.0 - age(rng));
        k.epostadresse_oppdatert = Some(changed);
        k.epostadresse_sist_verifisert = stamp(rng, changed);
    }
    if mobile {
        // Households' shared numbers start with 4, everyone else's with 9 (unique up to
        // 9 999 991 persons).
        let (lead, rest, prefix) = if shares(2, 5) {
            let prefix = if index.is_multiple_of(2) { "+47" } else { "" };
            (4, unique(household, 9_999_991), prefix)
        } else {
            let prefix = if rng.random_bool(0.9) { "+47" } else { "" };
            (9, unique(index, 9_999_991), prefix)
        };
        k.mobiltelefonnummer = Some(format!("{prefix}{lead}{rest:07}"));
        let changed = Timestamp(as_of.0 - age(rng));
        k.mobiltelefonnummer_oppdatert = Some(changed);
        k.mobiltelefonnummer_sist_verifisert = stamp(rng, changed);
    }
    // A third of addresses and numbers were proven with a one-time code since the change.
    if let Some(changed) = k.epostadresse_oppdatert
        && rng.random_bool(0.3)
    {
        k.epostadresse_sist_validert = Some(Timestamp(rng.random_range(changed.0..=as_of.0)));
    }
    if let Some(changed) = k.mobiltelefonnummer_oppdatert
        && rng.random_bool(0.3)
    {
        k.mobiltelefonnummer_sist_validert = Some(Timestamp(rng.random_range(changed.0..=as_of.0)));
    }
    if !k.is_empty() {
        p.kontaktinformasjon = Some(k);
    }
    // Every reserved person has reserved at some time; a few who are not reserved have
    // lifted a reservation.
    if p.reservasjon == Some(Reservasjon::Ja) {
        let at = Timestamp(as_of.0 - rng.random_range(0..10 * 365 * DAY));
        p.reservasjonstidspunkt = Some(at);
        p.reservasjon_oppdatert = Some(at);
    } else if rng.random_bool(0.02) {
        p.reservasjon_oppdatert = Some(Timestamp(as_of.0 - rng.random_range(0..5 * 365 * DAY)));
    }
    if rng.random_bool(0.32) {
        let provider = usize::from(!rng.random_bool(0.65));
        let postkasseadresse = if provider == 0 {
            const B36: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
            let tag: String = (0..4)
                .map(|_| char::from(B36[rng.random_range(0..B36.len())]))
                .collect();
            format!("{first}.{last}#{tag}")
        } else {
            format!("{:010}", rng.random_range(0..10_000_000u64))
        };
        p.digital_post = Some(DigitalPost {
            postkasseadresse,
            postkasseleverandoeradresse: PROVIDERS[provider].orgnr.to_string(),
        });
        p.sertifikat = Some(certs[provider].clone());
    }
    if rng.random_bool(0.9) {
        p.spraak = Some(match rng.random_range(0..100) {
            0..78 => Spraak::Nb,
            78..92 => Spraak::Nn,
            92..98 => Spraak::En,
            _ => Spraak::Se,
        });
        p.spraak_oppdatert = Some(Timestamp(as_of.0 - rng.random_range(0..6 * 365 * DAY)));
    }
    p
}

/// The persons of chunk `chunk` (a deterministic function of seed, chunk and ids).
pub fn chunk_persons(ids: &[PersonId], seed: u64, chunk: u64, as_of: Timestamp) -> Vec<Person> {
    let certs: Vec<String> = PROVIDERS.iter().map(Provider::cert_base64).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ chunk.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    ids.iter()
        .enumerate()
        .map(|(j, &id)| person(id, chunk * CHUNK + j as u64, &mut rng, as_of, &certs))
        .collect()
}

/// The groups written to the source file: everything but the derived varslingsstatus.
const SOURCE_GROUPS: Groups = Groups::KONTAKT
    .union(Groups::DIGITALPOST)
    .union(Groups::SERTIFIKAT)
    .union(Groups::SPRAAK);

fn render_chunk(ids: &[PersonId], seed: u64, chunk: u64, as_of: Timestamp) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * 900);
    for p in chunk_persons(ids, seed, chunk, as_of) {
        // varslingsstatus is left out of the source (the builder derives it), so the value
        // passed here is never written.
        render::write_person(
            &p,
            crate::model::Varslingsstatus::KanIkkeVarsles,
            SOURCE_GROUPS,
            &mut out,
        );
        out.push(b'\n');
    }
    out
}

/// Writes the register to `out` as JSONL.
pub fn generate_file(out: &Path, opts: &GenerateOptions) -> Result<(), GenerateError> {
    let io = |source| GenerateError::Io {
        path: out.to_owned(),
        source,
    };
    let ids = synthetic_ids(opts.count, opts.seed)?;
    let file = File::create(out).map_err(io)?;
    let mut w = BufWriter::with_capacity(4 << 20, file);
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(opts.count);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} generating [{bar:40}] {human_pos}/{human_len} persons ({per_sec}, {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let chunks: Vec<&[PersonId]> = ids.chunks(CHUNK as usize).collect();
    let window = rayon::current_num_threads() * 2;
    for (w_i, group) in chunks.chunks(window).enumerate() {
        let rendered: Vec<Vec<u8>> = group
            .par_iter()
            .enumerate()
            .map(|(j, ids)| render_chunk(ids, opts.seed, (w_i * window + j) as u64, opts.as_of))
            .collect();
        for (buf, ids) in rendered.iter().zip(group) {
            w.write_all(buf).map_err(io)?;
            bar.inc(ids.len() as u64);
        }
    }
    w.flush().map_err(io)?;
    bar.finish_and_clear();
    Ok(())
}

/// Settings of "tomorrow's export" ([`change_file`]).
#[derive(Clone, Copy, Debug)]
pub struct ChangeOptions {
    /// Share of persons changed (0.005 for 0.5 %); a tenth of it is added as new persons.
    pub rate: f64,
    /// Seed: the same seed, rate and input give the same file.
    pub seed: u64,
    /// When the changes were made (their `*_oppdatert` time stamps).
    pub at: Timestamp,
}

/// What [`change_file`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeReport {
    /// Persons read.
    pub persons: u64,
    /// Persons changed (new e-mail or mobile, reservation set or lifted, a validation, a
    /// language, deleted).
    pub changed: u64,
    /// Persons left out (gone from the register).
    pub removed: u64,
    /// New persons appended.
    pub added: u64,
}

fn mix(mut z: u64) -> u64 {
    // splitmix64's finaliser.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Writes "tomorrow's export": the persons of `from` (an export, one JSON line each), a
/// share `rate` of them changed the way a night changes the register (new e-mail
/// addresses and mobile numbers, reservations set and lifted, validations, languages,
/// deletions, persons gone), and a tenth of that share of new persons. Unchanged lines are
/// copied byte for byte. Deterministic for the same input, seed and rate.
// The float → integer casts are of the rate clamped to 0..=1 times a non-negative count.
#[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
pub fn change_file(
    from: &Path,
    out: &Path,
    opts: &ChangeOptions,
) -> Result<ChangeReport, GenerateError> {
    use std::io::BufRead;
    let read_err = |source| GenerateError::Io {
        path: from.to_owned(),
        source,
    };
    let write_err = |source| GenerateError::Io {
        path: out.to_owned(),
        source,
    };
    let input = std::io::BufReader::with_capacity(4 << 20, File::open(from).map_err(read_err)?);
    let mut w = BufWriter::with_capacity(4 << 20, File::create(out).map_err(write_err)?);
    let threshold = (opts.rate.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
    let mut report = ChangeReport::default();
    let mut present: std::collections::HashSet<u64> = std::collections::HashSet::new();
    const KEY: &str = "\"personidentifikator\":\"";
    for (i, line) in input.lines().enumerate() {
        let line = line.map_err(read_err)?;
        if line.trim().is_empty() {
            continue;
        }
        report.persons += 1;
        if let Some(at) = line.find(KEY)
            && let Some(id) = line.get(at + KEY.len()..at + KEY.len() + 11)
            && let Some(id) = PersonId::parse(id.as_bytes())
        {
            present.insert(id.key());
        }
        let h = mix(opts.seed ^ mix(i as u64));
        let changed = h < threshold
            && match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(mut v) => {
                    let kind = mix(h) % 10;
                    if kind == 9 {
                        report.removed += 1;
                        continue;
                    }
                    if change_person(&mut v, kind, i as u64, opts.at) {
                        serde_json::to_writer(&mut w, &v).map_err(|e| write_err(e.into()))?;
                        w.write_all(b"\n").map_err(write_err)?;
                        true
                    } else {
                        false
                    }
                }
                Err(_) => false,
            };
        if changed {
            report.changed += 1;
        } else {
            w.write_all(line.as_bytes()).map_err(write_err)?;
            w.write_all(b"\n").map_err(write_err)?;
        }
    }
    let wanted = (report.persons as f64 * opts.rate / 10.0).round() as u64;
    if wanted > 0 {
        let candidates = synthetic_ids(report.persons + wanted * 2, opts.seed ^ 0x5eed)?;
        let fresh: Vec<PersonId> = candidates
            .into_iter()
            .filter(|id| !present.contains(&id.key()))
            .take(wanted as usize)
            .collect();
        let certs: Vec<String> = PROVIDERS.iter().map(Provider::cert_base64).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0xadd);
        let mut buf = Vec::new();
        for (j, &id) in fresh.iter().enumerate() {
            let p = person(id, report.persons + j as u64, &mut rng, opts.at, &certs);
            buf.clear();
            render::write_person(
                &p,
                crate::model::Varslingsstatus::KanIkkeVarsles,
                SOURCE_GROUPS,
                &mut buf,
            );
            buf.push(b'\n');
            w.write_all(&buf).map_err(write_err)?;
            report.added += 1;
        }
    }
    w.flush().map_err(write_err)?;
    Ok(report)
}

/// Changes one person (a JSON object of the export) by `kind`; false when the kind does
/// not apply (a deleted person has nothing to change but its return).
fn change_person(v: &mut serde_json::Value, kind: u64, n: u64, at: Timestamp) -> bool {
    use serde_json::json;
    let stamp = json!(at.to_oslo_string());
    if v["status"] != "AKTIV" {
        return false;
    }
    const K: &str = "kontaktinformasjon";
    match kind {
        0..=2 => {
            v[K]["epostadresse"] = json!(format!("ny.adresse{n}@example.no"));
            v[K]["epostadresse_oppdatert"] = stamp;
        }
        3 | 4 => {
            v[K]["mobiltelefonnummer"] = json!(format!("+478{:07}", unique(n, 9_999_991)));
            v[K]["mobiltelefonnummer_oppdatert"] = stamp;
        }
        5 => {
            if v["reservasjon"] == "JA" {
                v["reservasjon"] = json!("NEI");
                if let Some(o) = v.as_object_mut() {
                    o.remove("reservasjonstidspunkt");
                }
            } else {
                v["reservasjon"] = json!("JA");
                v["reservasjonstidspunkt"] = stamp.clone();
            }
            v["reservasjon_oppdatert"] = stamp;
        }
        6 => {
            if v[K].get("epostadresse").is_some() {
                v[K]["epostadresse_sist_validert"] = stamp;
            } else if v[K].get("mobiltelefonnummer").is_some() {
                v[K]["mobiltelefonnummer_sist_validert"] = stamp;
            } else {
                v[K]["epostadresse"] = json!(format!("ny.adresse{n}@example.no"));
                v[K]["epostadresse_oppdatert"] = stamp;
            }
        }
        7 => {
            let next = match v["spraak"].as_str() {
                Some("nb") => "nn",
                _ => "nb",
            };
            v["spraak"] = json!(next);
            v["spraak_oppdatert"] = stamp;
        }
        _ => {
            let id = v["personidentifikator"].clone();
            *v = json!({ "personidentifikator": id, "status": "SLETTET" });
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_as_of_is_the_first_of_november_2026() {
        assert_eq!(DEFAULT_AS_OF.to_oslo_string(), "2026-11-01T01:00:00+01");
    }

    #[test]
    fn ids_are_unique_valid_synthetic_and_depend_on_the_seed() {
        let ids = synthetic_ids(200_000, 7).unwrap();
        let mut keys: Vec<u64> = ids.iter().map(|i| i.key()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), ids.len());
        for id in ids.iter().take(5000) {
            let kind = fnr::validate(&id.digits()).unwrap();
            assert!(kind.is_synthetic());
        }
        assert_eq!(synthetic_ids(1000, 7).unwrap(), ids[..1000]);
        assert_ne!(synthetic_ids(1000, 8).unwrap(), ids[..1000]);
    }

    #[test]
    fn too_many_is_refused() {
        assert!(matches!(
            synthetic_ids(20_000_000, 1),
            Err(GenerateError::TooMany { .. })
        ));
    }

    #[test]
    fn certificates_are_der() {
        use base64::Engine;
        for p in PROVIDERS {
            let der = base64::engine::general_purpose::STANDARD
                .decode(p.cert_base64())
                .unwrap();
            assert_eq!(der[0], 0x30, "{}", p.name);
        }
    }
}
