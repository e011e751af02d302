//! `krr keys new`: the keys a service of your own needs, made here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use krr::dev::keys::{jwks_of, kid_of, new_rsa_key, self_signed, write_private};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Make a token-issuer key and its JWKS (the key named by its RFC 7638 thumbprint, the
    /// `kid` `krr token` puts into its tokens), and a response-signing key with a
    /// self-signed certificate (for `application/jose`). Private keys are written 0600.
    New {
        /// The directory to write into (created if missing).
        #[arg(long, default_value = "keys")]
        out: PathBuf,
        /// Replace keys that exist there.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::New { out, force } => new(&out, force),
    }
}

fn new(out: &Path, force: bool) -> anyhow::Result<ExitCode> {
    let files = [
        "issuer-key.pem",
        "jwks.json",
        "signing-key.pem",
        "signing-cert.pem",
    ]
    .map(|f| out.join(f));
    if !force && let Some(there) = files.iter().find(|f| f.exists()) {
        anyhow::bail!(
            "{} exists; keys are not replaced without --force (tokens signed with the old key would stop working)",
            there.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // Replaced files are made anew, so the private keys get 0600 whatever the old ones had.
    for f in &files {
        if f.exists() {
            std::fs::remove_file(f).with_context(|| format!("replacing {}", f.display()))?;
        }
    }
    let [issuer_key, jwks, signing_key, signing_cert] = &files;
    let issuer = new_rsa_key()?;
    write_private(issuer_key, &issuer)
        .with_context(|| format!("writing {}", issuer_key.display()))?;
    std::fs::write(jwks, jwks_of(&issuer).expect("an RSA key made here"))
        .with_context(|| format!("writing {}", jwks.display()))?;
    let signing = new_rsa_key()?;
    let cert = self_signed(&signing, "krr response signing")?;
    write_private(signing_key, &signing)
        .with_context(|| format!("writing {}", signing_key.display()))?;
    std::fs::write(signing_cert, cert)
        .with_context(|| format!("writing {}", signing_cert.display()))?;
    let kid = kid_of(&issuer).expect("an RSA key made here");
    let d = out.display();
    eprintln!("wrote {d}/issuer-key.pem (0600), {d}/jwks.json (kid {kid}),");
    eprintln!("      {d}/signing-key.pem (0600), {d}/signing-cert.pem (self-signed)");
    eprintln!();
    eprintln!("serve trusting them:");
    eprintln!(
        "  krr serve --jwks-file {d}/jwks.json --issuer https://maskinporten.no/ --signing-key {d}/signing-key.pem --signing-cert {d}/signing-cert.pem"
    );
    eprintln!("a token for it:");
    eprintln!(
        "  krr token --key {d}/issuer-key.pem --scope 'krr:global/kontaktinformasjon.read krr:global/digitalpost.read'"
    );
    Ok(ExitCode::SUCCESS)
}
