//! OAuth2 access tokens: trusted keys ([`jwks`]), verification ([`token`]) and what the
//! scopes allow ([`scopes`]).

pub mod jwks;
pub mod scopes;
pub mod token;

pub use jwks::{JwksSource, KeySet, KeyStore};
pub use scopes::Grants;
pub use token::{AuthError, Principal, Verifier};
