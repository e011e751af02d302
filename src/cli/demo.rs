//! `krr demo`: the quick start. A synthetic register, development keys and certificates
//! under `data/demo/` (git-ignored), the snapshot under `snapshots/`, and the service
//! trusting only the development key; prints `curl` commands that work. Reuses what exists.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use krr::app::{self, Config, prepare};
use krr::auth::JwksSource;
use krr::dev::keys::{jwks_of, new_rsa_key, self_signed, write_private};
use krr::dev::mint::{IDPORTEN, MASKINPORTEN, MintOptions, mint};

use super::LogFormat;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Public API address.
    #[arg(long, env = "KRR_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the demo keeps its files (git-ignored).
    #[arg(long, env = "KRR_DEMO_DIR", default_value = "data/demo")]
    demo_dir: PathBuf,
    /// Where the demo snapshot goes.
    #[arg(long, env = "KRR_SNAPSHOT_DIR", default_value = "snapshots")]
    snapshot_dir: PathBuf,
    /// Health, metrics and reload.
    #[arg(long, env = "KRR_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
}

pub fn run(a: DemoArgs, log_format: LogFormat) -> anyhow::Result<ExitCode> {
    let _logs = super::logging::init(log_format);
    let paths = DemoPaths {
        dir: a.demo_dir,
        snapshot_dir: a.snapshot_dir,
    };
    super::runtime()?.block_on(demo(paths, a.listen, a.admin_listen))?;
    Ok(ExitCode::SUCCESS)
}

/// The quick start's files, under `data/demo/` (git-ignored) and `snapshots/`.
#[derive(Clone, Debug)]
struct DemoPaths {
    /// `data/demo`.
    dir: PathBuf,
    /// Where the snapshot goes.
    snapshot_dir: PathBuf,
}

impl DemoPaths {
    fn register(&self) -> PathBuf {
        self.dir.join("register.jsonl")
    }
    fn snapshot(&self) -> PathBuf {
        self.snapshot_dir.join("demo.krr")
    }
    fn issuer_key(&self) -> PathBuf {
        self.dir.join("issuer-key.pem")
    }
    fn jwks(&self) -> PathBuf {
        self.dir.join("jwks.json")
    }
    fn signing_key(&self) -> PathBuf {
        self.dir.join("signing-key.pem")
    }
    fn signing_cert(&self) -> PathBuf {
        self.dir.join("signing-cert.pem")
    }
    fn print_cert(&self) -> PathBuf {
        self.dir.join("print-cert.pem")
    }
}

/// Persons in the demo register.
const DEMO_PERSONS: u64 = 200_000;

/// Creates (or reuses) the demo's register, snapshot, keys and certificates, then serves
/// with the demo key trusted, printing a `curl` that works.
async fn demo(paths: DemoPaths, listen: SocketAddr, admin: SocketAddr) -> anyhow::Result<()> {
    std::fs::create_dir_all(&paths.dir)?;
    std::fs::create_dir_all(&paths.snapshot_dir)?;
    if !paths.register().exists() {
        eprintln!("demo: generating {DEMO_PERSONS} synthetic persons…");
        let tmp = paths.dir.join("register.jsonl.tmp");
        krr::dev::generate::generate_file(
            &tmp,
            &krr::dev::generate::GenerateOptions {
                count: DEMO_PERSONS,
                seed: 1,
                as_of: krr::dev::generate::DEFAULT_AS_OF,
                progress: false,
            },
        )?;
        std::fs::rename(&tmp, paths.register())?;
    }
    if !paths.snapshot().exists() {
        eprintln!("demo: building the snapshot…");
        krr::snapshot::build_file(
            &paths.register(),
            &paths.snapshot(),
            &krr::snapshot::BuildOptions::now(),
        )?;
    }
    if !paths.issuer_key().exists() {
        eprintln!("demo: creating a development token-issuer key…");
        write_private(&paths.issuer_key(), &new_rsa_key()?)?;
    }
    // The JWKS is the key's public half under its thumbprint, the `kid` `krr token` puts
    // into its tokens (written each time, so a demo directory of an older build agrees).
    let issuer_pem = std::fs::read_to_string(paths.issuer_key())?;
    let jwks = jwks_of(&issuer_pem).ok_or_else(|| {
        anyhow::anyhow!(
            "{} is not an RSA or EC private key",
            paths.issuer_key().display()
        )
    })?;
    std::fs::write(paths.jwks(), jwks)?;
    if !paths.signing_key().exists() || !paths.signing_cert().exists() {
        eprintln!("demo: creating a development response-signing key and certificate…");
        let key_pem = new_rsa_key()?;
        let cert = self_signed(&key_pem, "krr demo response signing (development only)")?;
        write_private(&paths.signing_key(), &key_pem)?;
        std::fs::write(paths.signing_cert(), cert)?;
    }
    if !paths.print_cert().exists() {
        std::fs::write(paths.print_cert(), krr::dev::generate::PROVIDERS[0].pem)?;
    }

    let config = Config {
        listen,
        snapshot_dir: paths.snapshot_dir.clone(),
        jwks: Some(JwksSource::File(paths.jwks())),
        issuers: vec![MASKINPORTEN.to_string(), IDPORTEN.to_string()],
        signing: Some((paths.signing_key(), paths.signing_cert())),
        print: Some((
            krr::dev::generate::PROVIDERS[0].orgnr.to_string(),
            paths.print_cert(),
        )),
        journal_dir: paths.dir.join("journal"),
        admin_listen: Some(admin),
        ..Config::default()
    };
    let prepared = prepare(&config).await?;
    let addr = prepared.listener.local_addr()?;
    let state = prepared.state.clone();
    let token = mint(
        &std::fs::read(paths.issuer_key())?,
        &MintOptions {
            scope: "krr:global/kontaktinformasjon.read krr:global/digitalpost.read".into(),
            ttl: 3600,
            ..MintOptions::default()
        },
    )?;
    let ids: Vec<String> = state
        .store
        .current()
        .as_ref()
        .map(|s| {
            s.ids()
                .take(2)
                .map(|i| String::from_utf8(i.digits().to_vec()).expect("digits"))
                .collect()
        })
        .unwrap_or_default();
    tracing::warn!(
        "DEMO MODE: trusting only a development key made on this machine ({}); never use this in production",
        paths.jwks().display()
    );
    println!();
    println!("krr demo is serving {DEMO_PERSONS} synthetic persons on http://{addr}");
    println!("Try (the token is valid for an hour; rerun `krr demo` for a new one):");
    println!();
    println!("TOKEN={token}");
    println!(
        "curl -s http://{addr}/rest/v1/personer -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' -d '{{\"personidentifikatorer\":[\"{}\",\"{}\",\"20914695016\"]}}'",
        ids.first().map_or("", String::as_str),
        ids.get(1).map_or("", String::as_str),
    );
    if let Some(me) = ids.first() {
        let citizen = mint(
            &std::fs::read(paths.issuer_key())?,
            &MintOptions {
                scope: "krr:user/kontaktinformasjon.read krr:user/spraak.write".into(),
                ttl: 3600,
                pid: Some(me.clone()),
                user: true,
                iss: IDPORTEN.into(),
                ..MintOptions::default()
            },
        )?;
        println!();
        println!(
            "As that first person (a citizen's token): change the language, then read it back:"
        );
        println!();
        println!("CITIZEN={citizen}");
        println!(
            "curl -si -X PATCH http://{addr}/rest/v1/person -H \"Authorization: Bearer $CITIZEN\" -H 'Content-Type: application/json' -d '{{\"spraak\":\"en\"}}'"
        );
        println!("curl -s http://{addr}/rest/v1/person -H \"Authorization: Bearer $CITIZEN\"");
    }
    println!();
    println!(
        "Health, metrics and reload: http://{admin}/health/readiness, /metrics, POST /admin/reload"
    );
    println!();
    drop(state);
    Ok(app::run(&config, prepared).await?)
}
