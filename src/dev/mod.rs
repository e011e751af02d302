//! What only development, tests and load tools use: the synthetic register ([`generate`]),
//! test tokens ([`mint`]), development keys and certificates ([`keys`]). The quick start that
//! uses them all is `krr demo` (`src/cli/demo.rs`). Nothing on the request path depends on it.

pub mod generate;
pub mod keys;
pub mod mint;
