//! Scopes → groups, per the table of `api.md`.

use crate::model::Groups;

/// Machine (`global`) read scopes and the groups each grants on `/personer`.
const GLOBAL: [(&str, Groups); 9] = [
    (
        "krr:global/kontaktinformasjon.read",
        Groups::KONTAKT
            .union(Groups::VARSLING)
            .union(Groups::SPRAAK),
    ),
    (
        "krr:global/kontaktinfo.read",
        Groups::KONTAKT
            .union(Groups::VARSLING)
            .union(Groups::SPRAAK),
    ),
    (
        "krr:global/digitalpost.read",
        Groups::DIGITALPOST.union(Groups::SERTIFIKAT),
    ),
    (
        "krr:global/postkasse.read",
        Groups::DIGITALPOST.union(Groups::SERTIFIKAT),
    ),
    ("global/kontaktinformasjon.read", Groups::KONTAKT),
    ("global/varslingsstatus.read", Groups::VARSLING),
    ("global/sikkerdigitalpost.read", Groups::DIGITALPOST),
    ("global/sertifikat.read", Groups::SERTIFIKAT),
    ("global/spraak.read", Groups::SPRAAK),
];

/// User read scopes and the groups each grants on `/person`.
const USER: [(&str, Groups); 4] = [
    (
        "krr:user/kontaktinformasjon.read",
        Groups::KONTAKT
            .union(Groups::VARSLING)
            .union(Groups::SPRAAK),
    ),
    (
        "user/kontaktinformasjon.read",
        Groups::KONTAKT
            .union(Groups::VARSLING)
            .union(Groups::SPRAAK),
    ),
    (
        "krr:user/digitalpost.read",
        Groups::DIGITALPOST.union(Groups::SERTIFIKAT),
    ),
    (
        "user/digitalpost.read",
        Groups::DIGITALPOST.union(Groups::SERTIFIKAT),
    ),
];

/// The scope of the change feed (`POST /rest/v2/krr/hentEndringer`).
pub const FEED_READ: &str = "krr:global/hentendring.read";

/// Scopes that allow `PATCH /rest/v1/person`.
pub const SPRAAK_WRITE: [&str; 2] = ["krr:user/spraak.write", "user/spraak.write"];

/// The scope named in a 403 for `/personer` (the main one of each family).
pub const GLOBAL_HINT: &str = "krr:global/kontaktinformasjon.read krr:global/digitalpost.read";
/// The scope named in a 403 for `GET /person`.
pub const USER_HINT: &str = "krr:user/kontaktinformasjon.read krr:user/digitalpost.read";

/// What a token's `scope` claim grants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// Groups on `/personer`; `None` when no global read scope is present (403).
    pub global: Option<Groups>,
    /// Groups on `/person`; `None` when no user read scope is present (403).
    pub user: Option<Groups>,
    /// May change the language.
    pub spraak_write: bool,
    /// May read the change feed (its entries show the `global` groups).
    pub feed: bool,
}

impl Grants {
    /// Reads a space-separated `scope` claim. Unknown scopes are ignored.
    pub fn from_scope(scope: &str) -> Grants {
        let mut g = Grants::default();
        for s in scope.split_ascii_whitespace() {
            if let Some((_, groups)) = GLOBAL.iter().find(|(name, _)| *name == s) {
                g.global = Some(g.global.unwrap_or(Groups::NONE) | *groups);
            }
            if let Some((_, groups)) = USER.iter().find(|(name, _)| *name == s) {
                g.user = Some(g.user.unwrap_or(Groups::NONE) | *groups);
            }
            if SPRAAK_WRITE.contains(&s) {
                g.spraak_write = true;
            }
            if s == FEED_READ {
                g.feed = true;
            }
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(scope: &str, global: Option<Groups>, user: Option<Groups>, write: bool) {
        assert_eq!(
            Grants::from_scope(scope),
            Grants {
                global,
                user,
                spraak_write: write,
                feed: false,
            },
            "scope {scope:?}"
        );
    }

    #[test]
    fn the_feed_scope() {
        let g = Grants::from_scope("krr:global/hentendring.read");
        assert!(g.feed);
        assert_eq!(g.global, None, "the feed scope alone grants no group");
        let g = Grants::from_scope("krr:global/hentendring.read global/spraak.read");
        assert_eq!((g.feed, g.global), (true, Some(Groups::SPRAAK)));
    }

    #[test]
    fn the_scope_table() {
        let kvs = Groups::KONTAKT | Groups::VARSLING | Groups::SPRAAK;
        let ds = Groups::DIGITALPOST | Groups::SERTIFIKAT;
        check("", None, None, false);
        check("openid profile", None, None, false);
        check("krr:global/kontaktinformasjon.read", Some(kvs), None, false);
        check("krr:global/kontaktinfo.read", Some(kvs), None, false);
        check("krr:global/digitalpost.read", Some(ds), None, false);
        check("krr:global/postkasse.read", Some(ds), None, false);
        check(
            "krr:global/kontaktinformasjon.read krr:global/digitalpost.read",
            Some(Groups::ALL),
            None,
            false,
        );
        check(
            "global/kontaktinformasjon.read",
            Some(Groups::KONTAKT),
            None,
            false,
        );
        check(
            "global/varslingsstatus.read",
            Some(Groups::VARSLING),
            None,
            false,
        );
        check(
            "global/sikkerdigitalpost.read",
            Some(Groups::DIGITALPOST),
            None,
            false,
        );
        check(
            "global/sertifikat.read",
            Some(Groups::SERTIFIKAT),
            None,
            false,
        );
        check("global/spraak.read", Some(Groups::SPRAAK), None, false);
        check(
            "global/spraak.read  global/sertifikat.read",
            Some(Groups::SPRAAK | Groups::SERTIFIKAT),
            None,
            false,
        );
        check("krr:user/kontaktinformasjon.read", None, Some(kvs), false);
        check("user/kontaktinformasjon.read", None, Some(kvs), false);
        check("krr:user/digitalpost.read", None, Some(ds), false);
        check("user/digitalpost.read", None, Some(ds), false);
        check("krr:user/spraak.write", None, None, true);
        check("user/spraak.write", None, None, true);
        // Near misses grant nothing.
        check("KRR:GLOBAL/KONTAKTINFORMASJON.READ", None, None, false);
        check("krr:global/kontaktinformasjon.write", None, None, false);
    }
}
