//! The crash test: the real `krr serve` binary takes many concurrent PATCHes, is killed with
//! SIGKILL in the middle of them, and is started again; every PATCH that was answered 204
//! must be there. Two rounds, so recovery after a crash is itself crashed into.
//!
//! This fails if a change is acknowledged before it is written, if recovery loses or
//! misreads records, or if a torn tail stops the service from starting. (A SIGKILL keeps
//! the kernel's page cache, so it does not test the disk's own durability; that rests on
//! the fdatasync before every acknowledgement, see `journal`.)

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::{Method, StatusCode};

use crate::common::http::*;

struct Running {
    child: Child,
    addr: SocketAddr,
}

fn serve(dir: &Path) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_krr"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--issuer",
            "https://maskinporten.no/",
            "--admin-listen",
            "127.0.0.1:0",
            "--no-watch",
        ])
        .arg("--snapshot-dir")
        .arg(dir.join("snapshots"))
        .arg("--journal-dir")
        .arg(dir.join("journal"))
        .arg("--jwks-file")
        .arg(fixture("keys/jwks.json"))
        .env("KRR_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut log = crate::common::log_file("serve");
    std::thread::spawn(move || {
        use std::io::Write;
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(log, "{line}");
            if !sent && line.contains("krr serving") {
                let addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("listen="))
                    .map(|a| a.parse::<SocketAddr>().unwrap());
                let _ = tx.send(addr);
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server started")
        .expect("the start-up line names the address");
    Running { child, addr }
}

/// Sends one PATCH per person from `clients` concurrent clients; SIGKILLs the server once
/// `kill_after` have been acknowledged. Returns the acknowledged (person, language) pairs.
async fn patch_until_killed(
    server: Running,
    people: &[(String, &'static str)],
    clients: usize,
    kill_after: usize,
) -> Vec<(String, &'static str)> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let child = Arc::new(Mutex::new(server.child));
    let work: Vec<(String, &'static str, String)> = people
        .iter()
        .map(|(pid, l)| (pid.clone(), *l, user("krr:user/spraak.write", pid)))
        .collect();
    let work = Arc::new(work);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (work, next, acked, count, killed, child) = (
            work.clone(),
            next.clone(),
            acked.clone(),
            count.clone(),
            killed.clone(),
            child.clone(),
        );
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((pid, lang, tok)) = work.get(i) else {
                    break;
                };
                if killed.load(Ordering::Relaxed) {
                    break;
                }
                let auth = format!("Bearer {tok}");
                let body = format!(r#"{{"spraak":"{lang}"}}"#);
                let headers = [
                    ("Authorization", auth.as_str()),
                    ("Content-Type", "application/json"),
                ];
                match try_call(addr, Method::PATCH, "/rest/v1/person", &headers, body)
                    .await
                    .map(|a| a.status)
                {
                    Some(StatusCode::NO_CONTENT) => {
                        acked.lock().unwrap().push((pid.clone(), *lang));
                        if count.fetch_add(1, Ordering::Relaxed) + 1 == kill_after {
                            killed.store(true, Ordering::Relaxed);
                            child.lock().unwrap().kill().unwrap();
                        }
                    }
                    Some(other) => panic!("PATCH answered {other}"),
                    None => assert!(
                        killed.load(Ordering::Relaxed),
                        "a request failed before the kill"
                    ),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        killed.load(Ordering::Relaxed),
        "the server was killed mid-run"
    );
    child.lock().unwrap().wait().unwrap();
    Arc::try_unwrap(acked).unwrap().into_inner().unwrap()
}

async fn spraak_of(addr: SocketAddr, pid: &str) -> String {
    let auth = format!("Bearer {}", user("krr:user/kontaktinformasjon.read", pid));
    let a = call(
        addr,
        Method::GET,
        "/rest/v1/person",
        &[("Authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    a.json()["spraak"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_patch_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("snapshots")).unwrap();
    let (jsonl, krr) = crate::common::register(dir.path(), "reg", 2000, 5);
    std::fs::rename(&krr, dir.path().join("snapshots/reg.krr")).unwrap();
    let register = crate::common::source_values(&jsonl);
    // Every AKTIV person, each to get a language other than the one it has.
    let people: Vec<(String, &'static str)> = register
        .iter()
        .filter(|p| p["status"] == "AKTIV")
        .map(|p| {
            let now = p.get("spraak").and_then(|l| l.as_str()).unwrap_or("");
            let lang = if now == "se" { "nn" } else { "se" };
            (id(p).to_string(), lang)
        })
        .take(1200)
        .collect();
    assert_eq!(people.len(), 1200);
    let (first, second) = people.split_at(600);

    let mut acked = patch_until_killed(serve(dir.path()), first, 32, 300).await;
    assert!(acked.len() >= 300);
    // Restart, check, and crash again in the middle of more PATCHes.
    let running = serve(dir.path());
    for (pid, lang) in &acked {
        assert_eq!(
            &spraak_of(running.addr, pid).await,
            lang,
            "acknowledged before the first kill"
        );
    }
    acked.extend(patch_until_killed(running, second, 32, 300).await);

    let running = serve(dir.path());
    for (pid, lang) in &acked {
        assert_eq!(
            &spraak_of(running.addr, pid).await,
            lang,
            "acknowledged, then killed"
        );
    }
    let mut child = running.child;
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "{} acknowledged PATCHes all survived two SIGKILLs",
        acked.len()
    );
}
