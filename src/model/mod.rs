//! The domain, at the bottom of the crate (it imports nothing of it): personal numbers
//! ([`fnr`]), instants in Oslo time ([`time`]), the person with every group of the API, the
//! groups a caller may see ([`Groups`]), and keeping personal numbers out of messages
//! ([`redact`]).
//!
//! These are the domain types the builder validates into and the renderer writes from.
//! They are not the snapshot's stored form (see [`crate::snapshot`]): the snapshot holds
//! each person pre-rendered, and conversions between the two are explicit.

pub mod fnr;
pub mod groups;
pub mod json;
pub mod redact;
pub mod time;

pub use groups::Groups;

use fnr::PersonId;
use time::Timestamp;

/// Register status of a person. `IKKE_REGISTRERT` is not stored: it is what a lookup answers
/// for an id the register does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// `AKTIV`: in the register.
    Aktiv,
    /// `SLETTET`: deleted from the register; only id, status and varslingsstatus are shown.
    Slettet,
}

impl Status {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Aktiv => "AKTIV",
            Status::Slettet => "SLETTET",
        }
    }
}

/// Whether the person has reserved themselves against digital contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reservasjon {
    /// `JA`: reserved.
    Ja,
    /// `NEI`: not reserved.
    Nei,
}

impl Reservasjon {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Reservasjon::Ja => "JA",
            Reservasjon::Nei => "NEI",
        }
    }
}

/// Whether an agency may notify the person digitally (eForvaltningsforskriften § 32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Varslingsstatus {
    /// `KAN_VARSLES`.
    KanVarsles,
    /// `KAN_IKKE_VARSLES`.
    KanIkkeVarsles,
}

impl Varslingsstatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Varslingsstatus::KanVarsles => "KAN_VARSLES",
            Varslingsstatus::KanIkkeVarsles => "KAN_IKKE_VARSLES",
        }
    }
}

/// Preferred language for communication with the public sector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spraak {
    /// Bokmål.
    Nb,
    /// Nynorsk.
    Nn,
    /// English.
    En,
    /// Northern Sami.
    Se,
}

impl Spraak {
    /// All languages, in wire order.
    pub const ALL: [Spraak; 4] = [Spraak::Nb, Spraak::Nn, Spraak::En, Spraak::Se];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Spraak::Nb => "nb",
            Spraak::Nn => "nn",
            Spraak::En => "en",
            Spraak::Se => "se",
        }
    }

    /// Parses the wire spelling (lower case, exactly).
    pub fn parse(s: &str) -> Option<Spraak> {
        Spraak::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

/// The `kontaktinformasjon` group. Every field is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kontaktinformasjon {
    /// E-mail address.
    pub epostadresse: Option<String>,
    /// When the e-mail address was last changed.
    pub epostadresse_oppdatert: Option<Timestamp>,
    /// When the person last confirmed the e-mail address.
    pub epostadresse_sist_verifisert: Option<Timestamp>,
    /// When the e-mail address was last proven with a one-time code.
    pub epostadresse_sist_validert: Option<Timestamp>,
    /// Whether another AKTIV person has the same address (case-insensitively). Derived by
    /// the build over the whole register ([`contact_key_email`]); `None` in a source.
    pub epostadresse_duplisert: Option<bool>,
    /// Mobile number, as registered (usually `+47` and eight digits).
    pub mobiltelefonnummer: Option<String>,
    /// When the mobile number was last changed.
    pub mobiltelefonnummer_oppdatert: Option<Timestamp>,
    /// When the person last confirmed the mobile number.
    pub mobiltelefonnummer_sist_verifisert: Option<Timestamp>,
    /// When the mobile number was last proven with a one-time code.
    pub mobiltelefonnummer_sist_validert: Option<Timestamp>,
    /// Whether another AKTIV person has the same number (a leading `+47`/`0047` aside).
    /// Derived by the build ([`contact_key_mobile`]); `None` in a source.
    pub mobiltelefonnummer_duplisert: Option<bool>,
}

impl Kontaktinformasjon {
    /// True when no field has a value (the group is then left out).
    pub fn is_empty(&self) -> bool {
        *self == Kontaktinformasjon::default()
    }

    /// The newest of the six contact timestamps (`*_oppdatert`, `*_sist_verifisert`,
    /// `*_sist_validert` of e-mail and mobile), if any.
    pub fn newest_timestamp(&self) -> Option<Timestamp> {
        [
            self.epostadresse_oppdatert,
            self.epostadresse_sist_verifisert,
            self.epostadresse_sist_validert,
            self.mobiltelefonnummer_oppdatert,
            self.mobiltelefonnummer_sist_verifisert,
            self.mobiltelefonnummer_sist_validert,
        ]
        .into_iter()
        .flatten()
        .max()
    }
}

/// The `digital_post` group: the person's digital mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigitalPost {
    /// The mailbox address at the provider.
    pub postkasseadresse: String,
    /// The provider's organisation number (nine digits).
    pub postkasseleverandoeradresse: String,
}

/// One person of the register, every group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Person {
    /// The personal number.
    pub id: PersonId,
    /// AKTIV or SLETTET.
    pub status: Status,
    /// Present for AKTIV persons, absent for SLETTET.
    pub reservasjon: Option<Reservasjon>,
    /// When the person reserved (only with `reservasjon` JA).
    pub reservasjonstidspunkt: Option<Timestamp>,
    /// When the reservation was last set or lifted.
    pub reservasjon_oppdatert: Option<Timestamp>,
    /// A fixed notification status; `None` (what the source parser always gives: the
    /// derived value wins) means the builder derives it ([`Person::derive_varslingsstatus`]).
    pub varslingsstatus: Option<Varslingsstatus>,
    /// Contact details.
    pub kontaktinformasjon: Option<Kontaktinformasjon>,
    /// Digital mailbox.
    pub digital_post: Option<DigitalPost>,
    /// The mailbox provider's X.509 certificate, base64 DER (shared by many persons).
    pub sertifikat: Option<String>,
    /// Preferred language.
    pub spraak: Option<Spraak>,
    /// When the language was last set.
    pub spraak_oppdatert: Option<Timestamp>,
}

/// The key two e-mail addresses are the same person's address by: lower case (the
/// comparison of `*_duplisert` is case-insensitive).
pub fn contact_key_email(e: &str) -> String {
    e.to_lowercase()
}

/// The key two mobile numbers are the same number by: a leading `+47` or `0047` removed.
pub fn contact_key_mobile(m: &str) -> &str {
    m.strip_prefix("+47")
        .or_else(|| m.strip_prefix("0047"))
        .unwrap_or(m)
}

/// Contact details older than this (18 months) no longer allow notification.
pub const VARSLING_MAX_AGE_SECS: i64 = 548 * 86_400;

impl Person {
    /// The notification status by the rule of `api.md`, evaluated at `now`:
    /// `KAN_IKKE_VARSLES` when the person is reserved, deleted, has neither e-mail nor mobile,
    /// or when the newest contact timestamp is more than 548 days before `now` (a person
    /// with contact details but no timestamp at all cannot show fresh details, so also
    /// `KAN_IKKE_VARSLES`); otherwise `KAN_VARSLES`.
    pub fn derive_varslingsstatus(&self, now: Timestamp) -> Varslingsstatus {
        if self.status != Status::Aktiv || self.reservasjon != Some(Reservasjon::Nei) {
            return Varslingsstatus::KanIkkeVarsles;
        }
        let Some(k) = &self.kontaktinformasjon else {
            return Varslingsstatus::KanIkkeVarsles;
        };
        if k.epostadresse.is_none() && k.mobiltelefonnummer.is_none() {
            return Varslingsstatus::KanIkkeVarsles;
        }
        match k.newest_timestamp() {
            Some(t) if now.0 - t.0 <= VARSLING_MAX_AGE_SECS => Varslingsstatus::KanVarsles,
            _ => Varslingsstatus::KanIkkeVarsles,
        }
    }

    /// The stored notification status, or the derived one when the source had none.
    pub fn varslingsstatus_at(&self, now: Timestamp) -> Varslingsstatus {
        self.varslingsstatus
            .unwrap_or_else(|| self.derive_varslingsstatus(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp(1_790_000_000);

    fn person() -> Person {
        Person {
            id: PersonId::parse(b"11822648950").unwrap(),
            status: Status::Aktiv,
            reservasjon: Some(Reservasjon::Nei),
            reservasjonstidspunkt: None,
            reservasjon_oppdatert: None,
            varslingsstatus: None,
            kontaktinformasjon: Some(Kontaktinformasjon {
                epostadresse: Some("a@example.no".into()),
                epostadresse_oppdatert: Some(Timestamp(NOW.0 - 1000)),
                ..Default::default()
            }),
            digital_post: None,
            sertifikat: None,
            spraak: None,
            spraak_oppdatert: None,
        }
    }

    fn check(edit: impl FnOnce(&mut Person), expected: Varslingsstatus) {
        let mut p = person();
        edit(&mut p);
        assert_eq!(p.derive_varslingsstatus(NOW), expected);
    }

    #[test]
    fn contact_keys() {
        assert_eq!(
            contact_key_email("Ola.Nordmann@Example.NO"),
            "ola.nordmann@example.no"
        );
        assert_eq!(contact_key_mobile("+4799999999"), "99999999");
        assert_eq!(contact_key_mobile("004799999999"), "99999999");
        assert_eq!(contact_key_mobile("99999999"), "99999999");
        assert_eq!(contact_key_mobile("+4699999999"), "+4699999999");
    }

    #[test]
    fn varslingsstatus_rule() {
        use Varslingsstatus::*;
        check(|_| {}, KanVarsles);
        check(|p| p.reservasjon = Some(Reservasjon::Ja), KanIkkeVarsles);
        check(
            |p| {
                p.status = Status::Slettet;
                p.reservasjon = None;
            },
            KanIkkeVarsles,
        );
        check(|p| p.kontaktinformasjon = None, KanIkkeVarsles);
        check(
            |p| {
                let k = p.kontaktinformasjon.as_mut().unwrap();
                k.epostadresse = None;
            },
            KanIkkeVarsles,
        );
        // Exactly 548 days old is still fresh; one second more is not.
        check(
            |p| {
                let k = p.kontaktinformasjon.as_mut().unwrap();
                k.epostadresse_oppdatert = Some(Timestamp(NOW.0 - VARSLING_MAX_AGE_SECS));
            },
            KanVarsles,
        );
        check(
            |p| {
                let k = p.kontaktinformasjon.as_mut().unwrap();
                k.epostadresse_oppdatert = Some(Timestamp(NOW.0 - VARSLING_MAX_AGE_SECS - 1));
            },
            KanIkkeVarsles,
        );
        // An old update but a fresh verification counts as fresh.
        check(
            |p| {
                let k = p.kontaktinformasjon.as_mut().unwrap();
                k.epostadresse_oppdatert = Some(Timestamp(0));
                k.mobiltelefonnummer = Some("+4799999999".into());
                k.mobiltelefonnummer_sist_verifisert = Some(Timestamp(NOW.0 - 5));
            },
            KanVarsles,
        );
        check(
            |p| {
                let k = p.kontaktinformasjon.as_mut().unwrap();
                k.epostadresse_oppdatert = None;
            },
            KanIkkeVarsles,
        );
        // A fresh validation with a one-time code counts too.
        check(
            |p| {
                let k = p.kontaktinformasjon.as_mut().unwrap();
                k.epostadresse_oppdatert = Some(Timestamp(0));
                k.epostadresse_sist_validert = Some(Timestamp(NOW.0 - 5));
            },
            KanVarsles,
        );
    }
}
