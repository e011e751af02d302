//! `krr token`: a signed test token, printed alone.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use krr::dev::mint::{IDPORTEN, MASKINPORTEN, MintOptions, mint};

#[derive(clap::Args)]
pub struct TokenArgs {
    /// RSA (RS256) or EC P-256 (ES256) private key, PEM (PKCS#8 or PKCS#1).
    #[arg(long, env = "KRR_KEY")]
    key: PathBuf,
    /// Space-separated scopes.
    #[arg(long, env = "KRR_SCOPE")]
    scope: String,
    /// `pid` claim: the person of a user token, or the one person a machine token may look up.
    #[arg(long, env = "KRR_PID")]
    pid: Option<String>,
    /// `iss` claim [default: Maskinporten's https://maskinporten.no/, ID-porten's
    /// https://idporten.no with --user].
    #[arg(long, env = "KRR_ISS")]
    iss: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, env = "KRR_TTL", default_value_t = 3600)]
    ttl: u64,
    /// `kid` header (must match a key of the service's JWKS) [default: the key's RFC 7638
    /// thumbprint, the `kid` `krr keys new` writes into its JWKS].
    #[arg(long, env = "KRR_KID")]
    kid: Option<String>,
    /// `aud` claim.
    #[arg(long, env = "KRR_AUD")]
    aud: Option<String>,
    /// The consumer's organisation number (machine tokens).
    #[arg(long, env = "KRR_CONSUMER", default_value = "991825827")]
    consumer: String,
    /// Make a user (ID-porten) token: adds `acr`, drops `consumer`.
    #[arg(long, env = "KRR_USER")]
    user: bool,
}

pub fn run(a: TokenArgs) -> anyhow::Result<ExitCode> {
    let pem = std::fs::read(&a.key).with_context(|| format!("reading {}", a.key.display()))?;
    let opts = MintOptions {
        scope: a.scope,
        pid: a.pid,
        iss: a
            .iss
            .unwrap_or_else(|| if a.user { IDPORTEN } else { MASKINPORTEN }.to_string()),
        ttl: a.ttl,
        kid: a.kid,
        aud: a.aud,
        consumer: a.consumer,
        user: a.user,
    };
    println!("{}", mint(&pem, &opts)?);
    Ok(ExitCode::SUCCESS)
}
