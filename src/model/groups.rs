//! The groups of a person's answer a caller may see, decided by the token's scopes.
//!
//! `personidentifikator`, `reservasjon` and `status` need no scope; every other group does
//! (`auth::scopes` maps scopes to groups, `render` writes each group as one segment).

/// The set of optional groups a caller may see (reservation and status need no scope).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Groups(u8);

impl Groups {
    /// No optional group.
    pub const NONE: Groups = Groups(0);
    /// `varslingsstatus`.
    pub const VARSLING: Groups = Groups(1);
    /// `kontaktinformasjon`.
    pub const KONTAKT: Groups = Groups(1 << 1);
    /// `digital_post`.
    pub const DIGITALPOST: Groups = Groups(1 << 2);
    /// `sertifikat`.
    pub const SERTIFIKAT: Groups = Groups(1 << 3);
    /// `spraak` and `spraak_oppdatert`.
    pub const SPRAAK: Groups = Groups(1 << 4);
    /// Every group.
    pub const ALL: Groups = Groups(0b1_1111);

    /// True when every group of `other` is in `self`.
    #[inline]
    pub const fn contains(self, other: Groups) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union of two sets.
    #[inline]
    pub const fn union(self, other: Groups) -> Groups {
        Groups(self.0 | other.0)
    }

    /// True when no group is in the set.
    #[inline]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Every one of the 32 possible sets (for exhaustive tests).
    pub fn every_combination() -> impl Iterator<Item = Groups> {
        (0..=Groups::ALL.0).map(Groups)
    }
}

impl std::ops::BitOr for Groups {
    type Output = Groups;
    fn bitor(self, rhs: Groups) -> Groups {
        self.union(rhs)
    }
}
