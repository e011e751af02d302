//! Bytes on the wire: content coding (gzip, zstd) by `Accept-Encoding`, HTTP/2 by prior
//! knowledge (h2c), TLS with ALPN (HTTP/1.1 and HTTP/2) and the certificate's reload.
//! Compressed answers are decoded with other implementations (flate2's miniz_oxide, zstd's
//! streaming decoder) and compared byte for byte with the identity answer.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Version};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::common::http::*;

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .expect("a gzip member");
    out
}

fn unzstd(b: &[u8]) -> Vec<u8> {
    zstd::stream::decode_all(b).expect("a zstd frame")
}

/// `answer`'s body decoded from its `Content-Encoding`, after checking it is `want`.
fn decoded(answer: &Answer, want: Option<&str>) -> Vec<u8> {
    let got = answer
        .headers
        .get("content-encoding")
        .map(|v| v.to_str().unwrap());
    assert_eq!(got, want, "Content-Encoding");
    assert_eq!(answer.header("vary"), "accept, accept-encoding");
    match got {
        None => answer.body.clone(),
        Some("gzip") => gunzip(&answer.body),
        Some("zstd") => unzstd(&answer.body),
        Some(other) => panic!("unexpected coding {other}"),
    }
}

async fn send(
    s: &Server,
    method: Method,
    path: &str,
    token: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> Answer {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("Authorization", auth.as_str())];
    if method == Method::POST {
        headers.push(("Content-Type", "application/json"));
    }
    headers.extend_from_slice(extra);
    call(s.addr, method, path, &headers, body.to_string()).await
}

#[tokio::test]
async fn gzip_and_zstd_answers_decode_to_the_identity_bytes() {
    let s = start(Options::default()).await;
    let machine = scoped(ALL_SCOPES);
    let ids: Vec<&str> = s.register.iter().take(300).map(id).collect();
    let batch = ids_body(&ids);
    let v2 = format!(
        r#"{{"personidentifikatorer":["{}","20914695016"],"inkluderIkkeRegistrerte":true}}"#,
        ids[..40].join("\",\"")
    );
    // A person with a mailbox certificate: the largest single answer.
    let with_cert = s
        .register
        .iter()
        .find(|p| {
            p.get("sertifikat").is_some() && p["status"] == "AKTIV" && p["reservasjon"] == "NEI"
        })
        .map(id)
        .expect("the fixture register has mailboxes");
    let citizen = user(
        "krr:user/kontaktinformasjon.read krr:user/digitalpost.read",
        with_cert,
    );
    // (name, method, path, token, extra headers, body)
    type Case<'a> = (
        &'a str,
        Method,
        &'a str,
        &'a String,
        Vec<(&'a str, &'a str)>,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "v1",
            Method::POST,
            "/rest/v1/personer",
            &machine,
            vec![],
            &batch,
        ),
        (
            "v2",
            Method::POST,
            "/rest/v2/personer",
            &machine,
            vec![],
            &v2,
        ),
        (
            "person",
            Method::GET,
            "/rest/v1/person",
            &citizen,
            vec![],
            "",
        ),
        (
            "jose",
            Method::POST,
            "/rest/v1/personer",
            &machine,
            vec![("Accept", "application/jose")],
            &batch,
        ),
        (
            "openapi",
            Method::GET,
            "/openapi.json",
            &machine,
            vec![],
            "",
        ),
    ];
    for (name, method, path, token, extra, body) in cases {
        let plain = send(&s, method.clone(), path, token, &extra, body).await;
        assert_eq!(plain.status, StatusCode::OK, "{name}");
        assert!(
            plain.body.len() >= 1024,
            "{name}: {} bytes",
            plain.body.len()
        );
        assert_eq!(decoded(&plain, None), plain.body, "{name}");
        for (accept, coding) in [("gzip", "gzip"), ("zstd", "zstd"), ("x-gzip", "gzip")] {
            let mut extra = extra.clone();
            extra.push(("Accept-Encoding", accept));
            let coded = send(&s, method.clone(), path, token, &extra, body).await;
            assert_eq!(coded.status, StatusCode::OK, "{name} {accept}");
            assert_eq!(
                coded.header("content-type"),
                plain.header("content-type"),
                "{name}"
            );
            assert_eq!(
                coded.header("content-length"),
                coded.body.len().to_string(),
                "{name} {accept}"
            );
            assert!(
                coded.body.len() < plain.body.len(),
                "{name} {accept}: {} of {} bytes",
                coded.body.len(),
                plain.body.len()
            );
            assert_eq!(decoded(&coded, Some(coding)), plain.body, "{name} {accept}");
        }
    }
}

#[tokio::test]
async fn q_values_choose_the_coding_and_errors_and_small_answers_stay_identity() {
    let s = start(Options::default()).await;
    let t = scoped(ALL_SCOPES);
    let ids: Vec<&str> = s.register.iter().take(50).map(id).collect();
    let batch = ids_body(&ids);
    let plain = post(&s, "/rest/v1/personer", &t, &batch).await.body;
    for (accept, want) in [
        ("gzip;q=0.5, zstd;q=0.9", Some("zstd")),
        ("zstd;q=0.4, gzip;q=0.5", Some("gzip")),
        ("gzip, zstd", Some("zstd")),
        ("zstd;q=0, gzip", Some("gzip")),
        ("br, deflate", None),
        ("*;q=0", None),
        ("*", Some("zstd")),
        ("identity", None),
        ("identity;q=1, gzip;q=0.5", None),
        ("gzip;q=2", None),
        ("", None),
    ] {
        let a = send(
            &s,
            Method::POST,
            "/rest/v1/personer",
            &t,
            &[("Accept-Encoding", accept)],
            &batch,
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{accept}");
        assert_eq!(decoded(&a, want), plain, "{accept:?}");
    }
    // Two fields are one list (RFC 9110 §5.3).
    let a = call(
        s.addr,
        Method::POST,
        "/rest/v1/personer",
        &[
            ("Authorization", &format!("Bearer {t}")),
            ("Content-Type", "application/json"),
            ("Accept-Encoding", "gzip;q=0.1"),
            ("Accept-Encoding", "zstd;q=0.2"),
        ],
        batch.clone(),
    )
    .await;
    assert_eq!(decoded(&a, Some("zstd")), plain);

    // Errors stay readable JSON whatever was asked.
    let a = call(
        s.addr,
        Method::POST,
        "/rest/v1/personer",
        &[
            ("Content-Type", "application/json"),
            ("Accept-Encoding", "gzip, zstd"),
        ],
        batch.clone(),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(decoded(&a, None), a.body);
    assert!(a.json()["message"].is_string(), "{}", a.json());
    let a = send(
        &s,
        Method::POST,
        "/rest/v1/personer",
        &t,
        &[("Accept-Encoding", "gzip")],
        "{\"personidentifikatorer\":[\"x\"]}",
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(decoded(&a, None), a.body);
    assert!(a.json()["message"].is_string());

    // An answer under 1 KiB is sent as it is.
    let one = ids_body(&["20914695016"]);
    let a = send(
        &s,
        Method::POST,
        "/rest/v1/personer",
        &t,
        &[("Accept-Encoding", "zstd")],
        &one,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.len() < 1024);
    assert_eq!(decoded(&a, None), a.body);
}

/// A plain HTTP/2 (prior knowledge) client.
fn h2c() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

async fn request<C>(
    client: &Client<C, Full<Bytes>>,
    url: &str,
    token: &str,
    accept_encoding: Option<&str>,
    body: &str,
) -> (StatusCode, Version, Option<String>, Vec<u8>)
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let mut req = Request::post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json");
    if let Some(ae) = accept_encoding {
        req = req.header("accept-encoding", ae);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let version = resp.version();
    let coding = resp
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, version, coding, body)
}

#[tokio::test]
async fn h2c_by_prior_knowledge_answers_as_http1_does() {
    let s = start(Options::default()).await;
    let t = scoped(ALL_SCOPES);
    let ids: Vec<&str> = s.register.iter().take(500).map(id).collect();
    let batch = ids_body(&ids);
    let http1 = post(&s, "/rest/v1/personer", &t, &batch).await.body;
    let client = h2c();
    let url = format!("http://{}/rest/v1/personer", s.addr);
    // Several requests on one connection, some at once (streams).
    let mut calls = Vec::new();
    for i in 0..6 {
        let accept = [None, Some("gzip"), Some("zstd")][i % 3];
        calls.push(request(&client, &url, &t, accept, &batch));
    }
    for (status, version, coding, body) in futures::future::join_all(calls).await {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(version, Version::HTTP_2);
        let plain = match coding.as_deref() {
            None => body,
            Some("gzip") => gunzip(&body),
            Some("zstd") => unzstd(&body),
            Some(c) => panic!("{c}"),
        };
        assert_eq!(plain, http1);
    }
    // The body limit holds on HTTP/2 too.
    let big = format!(r#"{{"personidentifikatorer":["{}"]}}"#, "x".repeat(70_000));
    let (status, _, _, body) = request(&client, &url, &t, None, &big).await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_header_timeout() {
    let s = start(Options {
        limits: krr::http::Limits {
            header_timeout: std::time::Duration::from_millis(300),
            ..krr::http::Limits::default()
        },
        ..Options::default()
    })
    .await;
    let t = scoped(ALL_SCOPES);
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let ended = tokio::spawn(conn);
    let req = Request::post(format!("http://{}/rest/v1/personer", s.addr))
        .header("authorization", format!("Bearer {t}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(ids_body(&["20914695016"]))))
        .unwrap();
    assert_eq!(
        sender.send_request(req).await.unwrap().status(),
        StatusCode::OK
    );
    // Used, then silent: closed by the server within a few header timeouts.
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), ended).await;
    assert!(closed.is_ok(), "the idle HTTP/2 connection stayed open");
    assert!(sender.is_closed());
}

/// A self-signed certificate for `localhost` and 127.0.0.1 with a fresh P-256 key, written
/// as `cert.pem` and `key.pem` under `dir`; returns its DER.
fn self_signed(dir: &Path, name: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    cert.der().to_vec()
}

fn client_config(trusted: &[&[u8]], alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for der in trusted {
        roots
            .add(rustls_pki_types::CertificateDer::from(der.to_vec()))
            .unwrap();
    }
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    c
}

/// Connects over TLS; returns the stream, the certificate the server showed and the
/// protocol ALPN chose.
async fn tls_connect(
    addr: SocketAddr,
    trusted: &[&[u8]],
    alpn: &[&[u8]],
) -> std::io::Result<(
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Vec<u8>,
    Option<Vec<u8>>,
)> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(trusted, alpn)));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await?;
    let (_, conn) = tls.get_ref();
    let cert = conn.peer_certificates().unwrap()[0].to_vec();
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    Ok((tls, cert, alpn))
}

/// One request on an open HTTP/2 connection (hyper's connection-level client).
async fn h2_request(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    token: &str,
    body: &str,
) -> (StatusCode, Vec<u8>) {
    let req = Request::post(format!("https://{addr}/rest/v1/personer"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    (
        status,
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}

async fn h2_over(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let (sender, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

fn tls_files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("cert.pem"), dir.join("key.pem"))
}

#[tokio::test]
async fn tls_serves_http1_and_h2_by_alpn_and_reloads_the_certificate_keeping_connections() {
    let certs = tempfile::tempdir().unwrap();
    let first = self_signed(certs.path(), "krr test one");
    let s = start(Options {
        tls: Some(tls_files(certs.path())),
        ..Options::default()
    })
    .await;
    let t = scoped(ALL_SCOPES);
    let ids: Vec<&str> = s.register.iter().take(200).map(id).collect();
    let batch = ids_body(&ids);

    // HTTP/1.1 and HTTP/2 clients through hyper-rustls, each offering its one protocol.
    let url = format!("https://localhost:{}/rest/v1/personer", s.addr.port());
    let mut answers = Vec::new();
    for (alpn, version) in [
        (b"http/1.1".as_slice(), Version::HTTP_11),
        (b"h2".as_slice(), Version::HTTP_2),
    ] {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client_config(&[&first], &[]))
            .https_only();
        let https = if version == Version::HTTP_2 {
            https.enable_http2().build()
        } else {
            https.enable_http1().build()
        };
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(version == Version::HTTP_2)
            .build(https);
        let (status, got, coding, body) = request(&client, &url, &t, Some("gzip"), &batch).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(alpn));
        assert_eq!(got, version);
        assert_eq!(coding.as_deref(), Some("gzip"));
        answers.push(gunzip(&body));
        let (_, _, chosen) = tls_connect(s.addr, &[&first], &[alpn]).await.unwrap();
        assert_eq!(chosen.as_deref(), Some(alpn));
    }
    assert_eq!(answers[0], answers[1]);
    let v: serde_json::Value = serde_json::from_slice(&answers[0]).unwrap();
    assert_eq!(v["personer"].as_array().unwrap().len(), 200);

    // A client offering both gets h2; plain HTTP on the TLS port gets no answer.
    let (tls, cert, alpn) = tls_connect(s.addr, &[&first], &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(cert, first);
    assert_eq!(alpn.as_deref(), Some(b"h2".as_slice()));
    let mut open = h2_over(tls).await;
    assert_eq!(
        h2_request(&mut open, s.addr, &t, &batch).await.0,
        StatusCode::OK
    );
    assert!(
        try_call(s.addr, Method::GET, "/openapi.json", &[], Bytes::new())
            .await
            .is_none()
    );

    // A new pair in place, then reload: new connections get it, the open one goes on.
    let second = self_signed(certs.path(), "krr test two");
    let r = admin(&s, Method::POST, "/admin/reload").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
    assert_eq!(r.json()["tls"]["result"], "reloaded");
    let (_, cert, _) = tls_connect(s.addr, &[&second], &[b"h2"]).await.unwrap();
    assert_eq!(cert, second);
    assert!(
        tls_connect(s.addr, &[&first], &[b"h2"]).await.is_err(),
        "the old certificate is gone"
    );
    let (status, body) = h2_request(&mut open, s.addr, &t, &batch).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, answers[0]);

    // A broken key is refused with the reason; the second pair keeps serving.
    std::fs::write(
        certs.path().join("key.pem"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let r = admin(&s, Method::POST, "/admin/reload").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.json()["tls"]["result"], "failed");
    let reason = r.json()["tls"]["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("key.pem"), "{reason}");
    let (_, cert, _) = tls_connect(s.addr, &[&second], &[b"h2"]).await.unwrap();
    assert_eq!(cert, second);
    let (status, _) = h2_request(&mut open, s.addr, &t, &batch).await;
    assert_eq!(status, StatusCode::OK);
}

#[test]
fn sighup_rereads_the_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("snapshots")).unwrap();
    let (_, krr) = crate::common::register(dir.path(), "reg", 50, 3);
    std::fs::rename(&krr, dir.path().join("snapshots/reg.krr")).unwrap();
    let first = self_signed(dir.path(), "krr sighup one");
    let (cert, key) = tls_files(dir.path());
    let serve = spawn_serve(
        dir.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        "info",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let t = scoped(ALL_SCOPES);
        let body = ids_body(&["20914695016"]);
        let (tls, shown, _) = tls_connect(serve.api, &[&first], &[b"h2"]).await.unwrap();
        assert_eq!(shown, first);
        let mut open = h2_over(tls).await;
        assert_eq!(
            h2_request(&mut open, serve.api, &t, &body).await.0,
            StatusCode::OK
        );
        let second = self_signed(dir.path(), "krr sighup two");
        serve.sighup();
        let mut shown = Vec::new();
        for _ in 0..100 {
            if let Ok((_, c, _)) = tls_connect(serve.api, &[&second], &[b"h2"]).await {
                shown = c;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(shown, second, "SIGHUP did not bring the new certificate");
        assert_eq!(
            h2_request(&mut open, serve.api, &t, &body).await.0,
            StatusCode::OK
        );
    });
}
