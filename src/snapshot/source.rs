//! The source format: one person per JSON line, in the full person shape of `api.md`.
//!
//! [`LineParser::parse`] turns one line into a validated [`Person`] or a [`RecordError`]
//! whose reason names the field and the rule, never the value (the value could be a
//! personal number). Parsing uses simd-json, reusing its buffers from line to line.
//!
//! Decisions where `api.md` is silent:
//! - unknown keys are refused (a misspelt field is an error, not silently dropped data);
//! - `null` counts as absent;
//! - `IKKE_REGISTRERT` is not a stored status and is refused;
//! - a SLETTET record must carry nothing but id, status and (optionally) `KAN_IKKE_VARSLES`;
//! - a `*_oppdatert`/`*_sist_verifisert`/`*_sist_validert` time needs the address or
//!   number it dates; `reservasjonstidspunkt` needs `reservasjon` JA, and both reservation
//!   times an AKTIV person;
//! - `varslingsstatus` and `*_duplisert` are derived by the build: a source may carry them
//!   (spelt right), and the derived values win.
//!
//! A little over 500 lines with its tests: the rules and the table of cases that prove each
//! one's reason read best side by side.

use std::borrow::Cow;

use serde::Deserialize;

use crate::model::fnr::{self, PersonId};
use crate::model::json::{MAX_DEPTH, check_depth};
use crate::model::redact::redact_digits;
use crate::model::time::Timestamp;
use crate::model::{DigitalPost, Kontaktinformasjon, Person, Reservasjon, Spraak, Status};

/// Why one record was refused. `Display` gives the reason; it never holds a personal number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct RecordError {
    /// What is wrong, naming the field (e.g. `kontaktinformasjon.epostadresse is too long`).
    pub reason: String,
}

impl RecordError {
    fn new(reason: impl Into<String>) -> RecordError {
        RecordError {
            reason: redact_digits(&reason.into()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Src<'a> {
    #[serde(borrow)]
    personidentifikator: Cow<'a, str>,
    #[serde(borrow, default)]
    reservasjon: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reservasjonstidspunkt: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reservasjon_oppdatert: Option<Cow<'a, str>>,
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(borrow, default)]
    varslingsstatus: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kontaktinformasjon: Option<SrcKontakt<'a>>,
    #[serde(borrow, default)]
    digital_post: Option<SrcDigitalPost<'a>>,
    #[serde(borrow, default)]
    sertifikat: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    spraak: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    spraak_oppdatert: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SrcKontakt<'a> {
    #[serde(borrow, default)]
    epostadresse: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    epostadresse_oppdatert: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    epostadresse_sist_verifisert: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    epostadresse_sist_validert: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    epostadresse_duplisert: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    mobiltelefonnummer: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    mobiltelefonnummer_oppdatert: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    mobiltelefonnummer_sist_verifisert: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    mobiltelefonnummer_sist_validert: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    mobiltelefonnummer_duplisert: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SrcDigitalPost<'a> {
    #[serde(borrow)]
    postkasseadresse: Cow<'a, str>,
    #[serde(borrow)]
    postkasseleverandoeradresse: Cow<'a, str>,
}

/// Longest e-mail address accepted (RFC 5321's path limit).
pub const MAX_EMAIL_LEN: usize = 254;
/// Longest mailbox address accepted.
pub const MAX_MAILBOX_LEN: usize = 255;
/// Longest certificate accepted, in base64 characters.
pub const MAX_CERT_LEN: usize = 16 * 1024;

/// Parses JSON lines into persons, reusing its buffers.
#[derive(Default)]
pub struct LineParser {
    scratch: Vec<u8>,
    buffers: Option<simd_json::Buffers>,
}

impl std::fmt::Debug for LineParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineParser").finish_non_exhaustive()
    }
}

impl LineParser {
    /// A parser with empty buffers.
    pub fn new() -> LineParser {
        LineParser::default()
    }

    /// Parses and validates one line (without its newline).
    pub fn parse(&mut self, line: &[u8]) -> Result<Person, RecordError> {
        check_depth(line, MAX_DEPTH).map_err(|e| RecordError::new(e.to_string()))?;
        self.scratch.clear();
        self.scratch.extend_from_slice(line);
        let buffers = self
            .buffers
            .get_or_insert_with(|| simd_json::Buffers::new(line.len().max(1024)));
        let src: Src<'_> = simd_json::serde::from_slice_with_buffers(&mut self.scratch, buffers)
            .map_err(|e| RecordError::new(plain_json_error(&e.to_string())))?;
        validate(src)
    }
}

/// simd-json's error text, said plainly where it is about the person's shape: serde's
/// `missing field \`x\`` inside `Serde("…")` becomes "field x is missing". Field names come
/// from the format, never from the line, so nothing personal is echoed.
fn plain_json_error(e: &str) -> String {
    if let Some(rest) = e.split("missing field `").nth(1)
        && let Some(field) = rest.split('`').next()
    {
        return format!("field {field} is missing");
    }
    format!("invalid JSON: {e}")
}

fn timestamp(field: &str, v: Option<Cow<'_, str>>) -> Result<Option<Timestamp>, RecordError> {
    v.map(|s| Timestamp::parse(&s).map_err(|e| RecordError::new(format!("{field} {e}"))))
        .transpose()
}

fn validate(src: Src<'_>) -> Result<Person, RecordError> {
    let id_bytes = src.personidentifikator.as_bytes();
    fnr::validate(id_bytes).map_err(|e| RecordError::new(format!("personidentifikator {e}")))?;
    let id = PersonId::parse(id_bytes).expect("validated above");

    let status = match &*src.status {
        "AKTIV" => Status::Aktiv,
        "SLETTET" => Status::Slettet,
        "IKKE_REGISTRERT" => {
            return Err(RecordError::new(
                "status IKKE_REGISTRERT is an answer, not a register entry",
            ));
        }
        _ => return Err(RecordError::new("status must be AKTIV or SLETTET")),
    };
    let reservasjon = match src.reservasjon.as_deref() {
        None => None,
        Some("JA") => Some(Reservasjon::Ja),
        Some("NEI") => Some(Reservasjon::Nei),
        Some(_) => return Err(RecordError::new("reservasjon must be JA or NEI")),
    };
    // Derived by the build (the derived value wins); only its spelling is checked.
    if !matches!(
        src.varslingsstatus.as_deref(),
        None | Some("KAN_VARSLES" | "KAN_IKKE_VARSLES")
    ) {
        return Err(RecordError::new(
            "varslingsstatus must be KAN_VARSLES or KAN_IKKE_VARSLES",
        ));
    }
    let reservasjonstidspunkt = timestamp("reservasjonstidspunkt", src.reservasjonstidspunkt)?;
    let reservasjon_oppdatert = timestamp("reservasjon_oppdatert", src.reservasjon_oppdatert)?;
    if reservasjonstidspunkt.is_some() && reservasjon != Some(Reservasjon::Ja) {
        return Err(RecordError::new(
            "reservasjonstidspunkt is only for reservasjon JA",
        ));
    }
    let spraak = match src.spraak.as_deref() {
        None => None,
        Some(s) => Some(
            Spraak::parse(s).ok_or_else(|| RecordError::new("spraak must be nb, nn, en or se"))?,
        ),
    };
    let spraak_oppdatert = timestamp("spraak_oppdatert", src.spraak_oppdatert)?;

    let kontaktinformasjon = match src.kontaktinformasjon {
        None => None,
        Some(k) => Some(validate_kontakt(k)?),
    }
    .filter(|k| !k.is_empty());

    let digital_post = match src.digital_post {
        None => None,
        Some(d) => {
            let adr = d.postkasseadresse;
            if adr.is_empty() || adr.len() > MAX_MAILBOX_LEN {
                return Err(RecordError::new(format!(
                    "digital_post.postkasseadresse must be 1..={MAX_MAILBOX_LEN} bytes"
                )));
            }
            if adr.chars().any(char::is_control) {
                return Err(RecordError::new(
                    "digital_post.postkasseadresse has a control character",
                ));
            }
            let org = d.postkasseleverandoeradresse;
            if org.len() != 9 || !org.bytes().all(|c| c.is_ascii_digit()) {
                return Err(RecordError::new(
                    "digital_post.postkasseleverandoeradresse must be a 9-digit organisation number",
                ));
            }
            Some(DigitalPost {
                postkasseadresse: adr.into_owned(),
                postkasseleverandoeradresse: org.into_owned(),
            })
        }
    };

    let sertifikat = match src.sertifikat {
        None => None,
        Some(c) => {
            if c.is_empty() || c.len() > MAX_CERT_LEN {
                return Err(RecordError::new(format!(
                    "sertifikat must be 1..={MAX_CERT_LEN} base64 characters"
                )));
            }
            Some(c.into_owned())
        }
    };

    match status {
        Status::Aktiv => {
            if reservasjon.is_none() {
                return Err(RecordError::new(
                    "reservasjon is required for an AKTIV person",
                ));
            }
        }
        Status::Slettet => {
            let carried = [
                ("reservasjon", reservasjon.is_some()),
                ("reservasjon_oppdatert", reservasjon_oppdatert.is_some()),
                ("kontaktinformasjon", kontaktinformasjon.is_some()),
                ("digital_post", digital_post.is_some()),
                ("sertifikat", sertifikat.is_some()),
                ("spraak", spraak.is_some() || spraak_oppdatert.is_some()),
            ];
            if let Some((field, _)) = carried.iter().find(|(_, present)| *present) {
                return Err(RecordError::new(format!(
                    "a SLETTET person must not carry {field}"
                )));
            }
        }
    }

    Ok(Person {
        id,
        status,
        reservasjon,
        reservasjonstidspunkt,
        reservasjon_oppdatert,
        varslingsstatus: None,
        kontaktinformasjon,
        digital_post,
        sertifikat,
        spraak,
        spraak_oppdatert,
    })
}

fn validate_kontakt(k: SrcKontakt<'_>) -> Result<Kontaktinformasjon, RecordError> {
    // Derived by the build (the derived value wins); only the spelling is checked.
    for (field, v) in [
        ("epostadresse_duplisert", &k.epostadresse_duplisert),
        (
            "mobiltelefonnummer_duplisert",
            &k.mobiltelefonnummer_duplisert,
        ),
    ] {
        if !matches!(v.as_deref(), None | Some("JA" | "NEI")) {
            return Err(RecordError::new(format!(
                "kontaktinformasjon.{field} must be JA or NEI"
            )));
        }
    }
    let epost = match k.epostadresse {
        None => None,
        Some(e) => {
            if e.len() > MAX_EMAIL_LEN {
                return Err(RecordError::new(format!(
                    "kontaktinformasjon.epostadresse is longer than {MAX_EMAIL_LEN} bytes"
                )));
            }
            let ok = match e.rsplit_once('@') {
                Some((local, domain)) => !local.is_empty() && !domain.is_empty(),
                None => false,
            };
            if !ok || e.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(RecordError::new(
                    "kontaktinformasjon.epostadresse is not an e-mail address",
                ));
            }
            Some(e.into_owned())
        }
    };
    let mobil = match k.mobiltelefonnummer {
        None => None,
        Some(m) => {
            let digits = m.strip_prefix('+').unwrap_or(&m);
            if !(5..=15).contains(&digits.len()) || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return Err(RecordError::new(
                    "kontaktinformasjon.mobiltelefonnummer must be 5 to 15 digits with an optional +",
                ));
            }
            Some(m.into_owned())
        }
    };
    let out = Kontaktinformasjon {
        epostadresse_oppdatert: timestamp(
            "kontaktinformasjon.epostadresse_oppdatert",
            k.epostadresse_oppdatert,
        )?,
        epostadresse_sist_verifisert: timestamp(
            "kontaktinformasjon.epostadresse_sist_verifisert",
            k.epostadresse_sist_verifisert,
        )?,
        mobiltelefonnummer_oppdatert: timestamp(
            "kontaktinformasjon.mobiltelefonnummer_oppdatert",
            k.mobiltelefonnummer_oppdatert,
        )?,
        mobiltelefonnummer_sist_verifisert: timestamp(
            "kontaktinformasjon.mobiltelefonnummer_sist_verifisert",
            k.mobiltelefonnummer_sist_verifisert,
        )?,
        epostadresse_sist_validert: timestamp(
            "kontaktinformasjon.epostadresse_sist_validert",
            k.epostadresse_sist_validert,
        )?,
        mobiltelefonnummer_sist_validert: timestamp(
            "kontaktinformasjon.mobiltelefonnummer_sist_validert",
            k.mobiltelefonnummer_sist_validert,
        )?,
        // Derived by the build over the whole register.
        epostadresse_duplisert: None,
        mobiltelefonnummer_duplisert: None,
        epostadresse: epost,
        mobiltelefonnummer: mobil,
    };
    if out.epostadresse.is_none()
        && (out.epostadresse_oppdatert.is_some()
            || out.epostadresse_sist_verifisert.is_some()
            || out.epostadresse_sist_validert.is_some())
    {
        return Err(RecordError::new(
            "kontaktinformasjon has e-mail timestamps but no epostadresse",
        ));
    }
    if out.mobiltelefonnummer.is_none()
        && (out.mobiltelefonnummer_oppdatert.is_some()
            || out.mobiltelefonnummer_sist_verifisert.is_some()
            || out.mobiltelefonnummer_sist_validert.is_some())
    {
        return Err(RecordError::new(
            "kontaktinformasjon has mobile timestamps but no mobiltelefonnummer",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"personidentifikator":"11822648950","reservasjon":"NEI","status":"AKTIV","kontaktinformasjon":{"epostadresse":"ola@example.no","epostadresse_oppdatert":"2026-06-29T10:14:52+02","mobiltelefonnummer":"+4799999999","mobiltelefonnummer_sist_verifisert":"2026-06-29T08:14:52Z"},"digital_post":{"postkasseadresse":"ola.nordmann#6XXB","postkasseleverandoeradresse":"984661185"},"sertifikat":"MIIB","spraak":"nb","spraak_oppdatert":"2025-11-12T11:00:58+01"}"#;

    fn check(line: &str, expected: Result<(), &str>) {
        let got = LineParser::new().parse(line.as_bytes());
        match (got, expected) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(want)) => assert!(
                e.reason.contains(want),
                "line {line}\n  reason {:?}\n  wanted {want:?}",
                e.reason
            ),
            (got, want) => panic!("line {line}\n  got {got:?}\n  wanted {want:?}"),
        }
    }

    /// `OK` with `from` replaced by `to`.
    fn edit(from: &str, to: &str) -> String {
        assert!(OK.contains(from), "{from}");
        OK.replacen(from, to, 1)
    }

    #[test]
    fn a_full_record_parses_into_every_field() {
        let p = LineParser::new().parse(OK.as_bytes()).unwrap();
        assert_eq!(p.status, Status::Aktiv);
        assert_eq!(p.reservasjon, Some(Reservasjon::Nei));
        let k = p.kontaktinformasjon.unwrap();
        assert_eq!(k.epostadresse.as_deref(), Some("ola@example.no"));
        assert_eq!(
            k.epostadresse_oppdatert.unwrap().to_oslo_string(),
            "2026-06-29T10:14:52+02"
        );
        assert_eq!(
            k.mobiltelefonnummer_sist_verifisert
                .unwrap()
                .to_oslo_string(),
            "2026-06-29T10:14:52+02"
        );
        assert_eq!(k.mobiltelefonnummer_oppdatert, None);
        assert_eq!(
            p.digital_post.unwrap().postkasseleverandoeradresse,
            "984661185"
        );
        assert_eq!(p.sertifikat.as_deref(), Some("MIIB"));
        assert_eq!(p.spraak, Some(Spraak::Nb));
    }

    #[test]
    fn every_rule_has_its_reason() {
        check(OK, Ok(()));
        check("", Err("invalid JSON"));
        check("{", Err("invalid JSON"));
        check("[]", Err("invalid JSON"));
        check(
            &edit("\"status\":\"AKTIV\",", ""),
            Err("field status is missing"),
        );
        check(
            &edit("11822648950", "1182264895"),
            Err("personidentifikator must be 11 digits"),
        );
        check(
            &edit("11822648950", "11822648951"),
            Err("personidentifikator has a wrong second control digit"),
        );
        check(
            &edit("11822648950", "11822648960"),
            Err("personidentifikator has a wrong first control digit"),
        );
        check(
            &edit("\"AKTIV\"", "\"aktiv\""),
            Err("status must be AKTIV or SLETTET"),
        );
        check(
            &edit("\"AKTIV\"", "\"IKKE_REGISTRERT\""),
            Err("status IKKE_REGISTRERT is an answer"),
        );
        check(
            &edit("\"NEI\"", "\"nei\""),
            Err("reservasjon must be JA or NEI"),
        );
        check(
            &edit("\"reservasjon\":\"NEI\",", ""),
            Err("reservasjon is required"),
        );
        check(
            &edit("\"status\"", "\"varslingsstatus\":\"JA\",\"status\""),
            Err("varslingsstatus must be"),
        );
        check(
            &edit(
                "\"status\"",
                "\"reservasjonstidspunkt\":\"2025-01-01T10:00:00+01\",\"status\"",
            ),
            Err("reservasjonstidspunkt is only for reservasjon JA"),
        );
        check(
            &edit(
                "\"NEI\",",
                "\"JA\",\"reservasjonstidspunkt\":\"2025-01-01T10:00:00+01\",\"reservasjon_oppdatert\":\"2025-01-01\",",
            ),
            Err("reservasjon_oppdatert is not a timestamp"),
        );
        check(
            &edit(
                "\"mobiltelefonnummer\":",
                "\"epostadresse_duplisert\":\"ja\",\"mobiltelefonnummer\":",
            ),
            Err("kontaktinformasjon.epostadresse_duplisert must be JA or NEI"),
        );
        check(
            &edit(
                "\"mobiltelefonnummer\":",
                "\"epostadresse_duplisert\":\"JA\",\"epostadresse_sist_validert\":\"2026-01-01T10:00:00Z\",\"mobiltelefonnummer\":",
            ),
            Ok(()),
        );
        check(
            &edit("\"spraak\":\"nb\"", "\"spraak\":\"NB\""),
            Err("spraak must be nb, nn, en or se"),
        );
        check(
            &edit("2025-11-12T11:00:58+01", "2025-11-12"),
            Err("spraak_oppdatert is not a timestamp"),
        );
        check(
            &edit("2026-06-29T10:14:52+02", "1960-06-29T10:14:52+02"),
            Err("kontaktinformasjon.epostadresse_oppdatert is outside"),
        );
        check(
            &edit("ola@example.no", "ola.example.no"),
            Err("epostadresse is not an e-mail address"),
        );
        check(
            &edit("ola@example.no", "ola @example.no"),
            Err("epostadresse is not an e-mail address"),
        );
        check(
            &edit("ola@example.no", &format!("{}@example.no", "x".repeat(250))),
            Err("epostadresse is longer than 254"),
        );
        check(
            &edit("+4799999999", "+47 9999 9999"),
            Err("mobiltelefonnummer must be 5 to 15 digits"),
        );
        check(
            &edit("+4799999999", "+4799999999999999"),
            Err("mobiltelefonnummer must be 5 to 15 digits"),
        );
        check(
            &edit("\"mobiltelefonnummer\":\"+4799999999\",", ""),
            Err("mobile timestamps but no mobiltelefonnummer"),
        );
        check(
            &edit("984661185", "98466118"),
            Err("9-digit organisation number"),
        );
        check(
            &edit("ola.nordmann#6XXB", ""),
            Err("postkasseadresse must be 1..=255 bytes"),
        );
        check(
            &edit("\"sertifikat\":\"MIIB\"", "\"sertifikat\":\"\""),
            Err("sertifikat must be 1..=16384"),
        );
        check(&edit("\"spraak\"", "\"spraket\""), Err("unknown field"));
        check(&edit("\"epostadresse\"", "\"epost\""), Err("unknown field"));
    }

    #[test]
    fn slettet_records() {
        let slettet = r#"{"personidentifikator":"11822648950","status":"SLETTET"}"#;
        check(slettet, Ok(()));
        check(
            r#"{"personidentifikator":"11822648950","status":"SLETTET","varslingsstatus":"KAN_IKKE_VARSLES"}"#,
            Ok(()),
        );
        check(
            // The build derives varslingsstatus; a stale one in the source is overruled.
            r#"{"personidentifikator":"11822648950","status":"SLETTET","varslingsstatus":"KAN_VARSLES"}"#,
            Ok(()),
        );
        check(
            r#"{"personidentifikator":"11822648950","status":"SLETTET","reservasjon":"NEI"}"#,
            Err("must not carry reservasjon"),
        );
        check(
            r#"{"personidentifikator":"11822648950","status":"SLETTET","spraak":"nb"}"#,
            Err("must not carry spraak"),
        );
    }

    #[test]
    fn null_is_absent_and_escapes_are_decoded() {
        let line = r#"{"personidentifikator":"11822648950","reservasjon":"JA","status":"AKTIV","spraak":null,"kontaktinformasjon":{"epostadresse":"o\"la\u00e5@example.no"}}"#;
        let p = LineParser::new().parse(line.as_bytes()).unwrap();
        assert_eq!(p.spraak, None);
        assert_eq!(
            p.kontaktinformasjon.unwrap().epostadresse.as_deref(),
            Some("o\"laå@example.no")
        );
    }

    #[test]
    fn reasons_never_hold_a_personal_number() {
        for line in [
            r#"{"personidentifikator":11822648950,"status":"AKTIV"}"#,
            r#"{"personidentifikator":"11822648950","status":11822648950}"#,
            r#"{"personidentifikator":"11822648950","status":"AKTIV","11822648950":1}"#,
            r#"{"personidentifikator":"11822648950","reservasjon":"11822648950","status":"AKTIV"}"#,
        ] {
            let e = LineParser::new().parse(line.as_bytes()).unwrap_err();
            assert!(!e.reason.contains("1182264895"), "{}", e.reason);
        }
    }
}
