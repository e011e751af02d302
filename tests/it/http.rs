//! The real server on 127.0.0.1:0, real HTTP, real signed tokens.
//!
//! Longer than 500 lines on purpose: every public endpoint's cases (statuses, headers,
//! bodies, scopes, limits) through the few request helpers of `common::http`; split by
//! endpoint, the shared token and body helpers would have to move out of sight.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::http::*;
use krr::auth::JwksSource;
use krr::dev::mint::MintOptions;
use krr::http::Limits;

#[tokio::test]
async fn each_scope_returns_exactly_its_groups() {
    let s = start(Options::default()).await;
    let full = s
        .register
        .iter()
        .find(|p| {
            p.get("digital_post").is_some()
                && p.get("spraak").is_some()
                && p.get("kontaktinformasjon").is_some()
                && p.get("reservasjon_oppdatert").is_none()
        })
        .unwrap();
    let body = ids_body(&[id(full)]);
    let cases: [(&str, &[&str]); 10] = [
        (
            "krr:global/kontaktinformasjon.read",
            &[
                "varslingsstatus",
                "kontaktinformasjon",
                "spraak",
                "spraak_oppdatert",
            ],
        ),
        (
            "krr:global/kontaktinfo.read",
            &[
                "varslingsstatus",
                "kontaktinformasjon",
                "spraak",
                "spraak_oppdatert",
            ],
        ),
        (
            "krr:global/digitalpost.read",
            &["digital_post", "sertifikat"],
        ),
        ("krr:global/postkasse.read", &["digital_post", "sertifikat"]),
        ("global/kontaktinformasjon.read", &["kontaktinformasjon"]),
        ("global/varslingsstatus.read", &["varslingsstatus"]),
        ("global/sikkerdigitalpost.read", &["digital_post"]),
        ("global/sertifikat.read", &["sertifikat"]),
        ("global/spraak.read", &["spraak", "spraak_oppdatert"]),
        (
            ALL_SCOPES,
            &[
                "varslingsstatus",
                "kontaktinformasjon",
                "digital_post",
                "sertifikat",
                "spraak",
                "spraak_oppdatert",
            ],
        ),
    ];
    for (scope, groups) in cases {
        let a = post(&s, "/rest/v1/personer", &scoped(scope), &body).await;
        assert_eq!(a.status, StatusCode::OK, "{scope}");
        assert_eq!(a.header("content-type"), "application/json");
        let person = &a.json()["personer"][0];
        let mut want = vec!["personidentifikator", "reservasjon", "status"];
        want.extend_from_slice(groups);
        let got: Vec<&str> = person
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        want.sort_by_key(|k| crate::common::ORDER.iter().position(|o| o == k));
        assert_eq!(got, want, "{scope}");
        for k in &want {
            if *k == "kontaktinformasjon" {
                // The source's fields, and the derived *_duplisert (tested in snapshot.rs).
                let mut got = person[k].clone();
                let o = got.as_object_mut().unwrap();
                assert!(
                    o.remove("epostadresse_duplisert").is_some()
                        || full[k].get("epostadresse").is_none()
                );
                o.remove("mobiltelefonnummer_duplisert");
                assert_eq!(&got, &full[k], "{scope} {k}");
            } else if *k != "varslingsstatus" {
                assert_eq!(&person[k], &full[k], "{scope} {k}");
            }
        }
    }
}

#[tokio::test]
async fn order_duplicates_and_not_registered_v1_v2() {
    let s = start(Options::default()).await;
    let t = scoped(ALL_SCOPES);
    let (a, b) = (id(&s.register[3]), id(&s.register[400]));
    let unknown = "20914695016";
    let body = ids_body(&[b, unknown, a, b]);
    let v1 = post(&s, "/rest/v1/personer", &t, &body).await.json();
    let got: Vec<&str> = v1["personer"].as_array().unwrap().iter().map(id).collect();
    assert_eq!(got, [b, unknown, a, b]);
    assert_eq!(
        v1["personer"][1],
        json!({"personidentifikator": unknown, "status": "IKKE_REGISTRERT", "varslingsstatus": "KAN_IKKE_VARSLES"})
    );
    let v2 = post(&s, "/rest/v2/personer", &t, &body).await.json();
    let got: Vec<&str> = v2["personer"].as_array().unwrap().iter().map(id).collect();
    assert_eq!(got, [b, a, b]);
    let body2 =
        json!({"personidentifikatorer": [b, unknown, a, b], "inkluderIkkeRegistrerte": true})
            .to_string();
    let v2_incl = post(&s, "/rest/v2/personer", &t, &body2).await.json();
    assert_eq!(v2_incl, v1);
    // Trailing slash and a lower-case scheme are accepted.
    let auth = format!("bearer {t}");
    let a = call(
        s.addr,
        Method::POST,
        "/rest/v1/personer/",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json; charset=utf-8"),
        ],
        body,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), v1);
}

#[tokio::test]
async fn token_failures_answer_401_with_the_reason() {
    let s = start(Options::default()).await;
    let body = ids_body(&[id(&s.register[0])]);
    let invalid = |a: &Answer, why: &str| {
        check_error(a, 401, why);
        assert_eq!(
            a.header("www-authenticate"),
            format!(r#"Bearer error="invalid_token", error_description="{why}""#)
        );
    };

    let a = call(
        s.addr,
        Method::POST,
        "/rest/v1/personer",
        &[("Content-Type", "application/json")],
        body.clone(),
    )
    .await;
    check_error(&a, 401, "missing bearer token");
    assert_eq!(a.header("www-authenticate"), r#"Bearer realm="krr""#);

    // alg none: a forged, unsigned token.
    use base64::Engine;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let claims =
        json!({"iss":"https://maskinporten.no/","exp": 4_000_000_000u64,"scope": ALL_SCOPES});
    let none = format!(
        "{}.{}.",
        b64(json!({"alg":"none","kid":"test-rsa"})),
        b64(claims.clone())
    );
    invalid(
        &post(&s, "/rest/v1/personer", &none, &body).await,
        "unsigned tokens (alg none) are not accepted",
    );

    // HMAC signed with the issuer's public key as the secret (the classic key-confusion attack).
    let public = std::fs::read(fixture("keys/issuer-rsa-public.pem")).unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some("test-rsa".into());
    let hmac = jsonwebtoken::encode(
        &h,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&public),
    )
    .unwrap();
    invalid(
        &post(&s, "/rest/v1/personer", &hmac, &body).await,
        "HMAC-signed tokens are not accepted",
    );

    // Expired and not-yet-valid tokens, built by hand (the skew is 60 s).
    let key = std::fs::read(fixture("keys/issuer-rsa.pem")).unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some("test-rsa".into());
    let now = chrono::Utc::now().timestamp();
    let old = json!({"iss":"https://maskinporten.no/","exp": now - 3600, "iat": now - 7200, "scope": ALL_SCOPES});
    let expired = jsonwebtoken::encode(
        &h,
        &old,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&key).unwrap(),
    )
    .unwrap();
    invalid(
        &post(&s, "/rest/v1/personer", &expired, &body).await,
        "token expired",
    );

    let future = json!({"iss":"https://maskinporten.no/","exp": now + 7200, "nbf": now + 3600, "scope": ALL_SCOPES});
    let early = jsonwebtoken::encode(
        &h,
        &future,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&key).unwrap(),
    )
    .unwrap();
    invalid(
        &post(&s, "/rest/v1/personer", &early, &body).await,
        "token not yet valid",
    );

    let other_iss = token(MintOptions {
        scope: ALL_SCOPES.into(),
        iss: "https://maskinporten.no".into(),
        ..Default::default()
    });
    invalid(
        &post(&s, "/rest/v1/personer", &other_iss, &body).await,
        "wrong issuer",
    );

    let forged = signed_by("keys/stranger-rsa.pem", "test-rsa");
    invalid(
        &post(&s, "/rest/v1/personer", &forged, &body).await,
        "bad signature",
    );
    let unknown_kid = signed_by("keys/stranger-rsa.pem", "stranger");
    invalid(
        &post(&s, "/rest/v1/personer", &unknown_kid, &body).await,
        "token signed by an unknown key",
    );

    // An RSA alg on the EC key's kid.
    let wrong_alg = signed_by("keys/issuer-rsa.pem", "test-ec");
    invalid(
        &post(&s, "/rest/v1/personer", &wrong_alg, &body).await,
        "alg does not match the signing key",
    );

    invalid(
        &post(&s, "/rest/v1/personer", "not.a.jwt", &body).await,
        "malformed token",
    );

    // ES256 from the EC key is accepted.
    let es = signed_by("keys/issuer-ec.pem", "test-ec");
    assert_eq!(
        post(&s, "/rest/v1/personer", &es, &body).await.status,
        StatusCode::OK
    );
    // The PKCS#1 form of the issuer key signs tokens the service accepts.
    let t1 = signed_by("keys/issuer-rsa-pkcs1.pem", "test-rsa");
    assert_eq!(
        post(&s, "/rest/v1/personer", &t1, &body).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn audience_is_checked_when_required() {
    let s = start(Options {
        audience: Some("https://krr.example.no/".into()),
        ..Default::default()
    })
    .await;
    let body = ids_body(&[id(&s.register[0])]);
    let without = scoped(ALL_SCOPES);
    check_error(
        &post(&s, "/rest/v1/personer", &without, &body).await,
        401,
        "token has no aud",
    );
    let wrong = token(MintOptions {
        scope: ALL_SCOPES.into(),
        aud: Some("https://other.example.no/".into()),
        ..Default::default()
    });
    check_error(
        &post(&s, "/rest/v1/personer", &wrong, &body).await,
        401,
        "wrong audience",
    );
    let right = token(MintOptions {
        scope: ALL_SCOPES.into(),
        aud: Some("https://krr.example.no/".into()),
        ..Default::default()
    });
    assert_eq!(
        post(&s, "/rest/v1/personer", &right, &body).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn scope_and_pid_restrictions_answer_403() {
    let s = start(Options::default()).await;
    let me = id(&s.register[5]);
    let other = id(&s.register[6]);
    let none = scoped("openid krr:user/kontaktinformasjon.read");
    let a = post(&s, "/rest/v1/personer", &none, &ids_body(&[me])).await;
    check_error(&a, 403, "the token has no scope for looking up persons");
    assert_eq!(
        a.header("www-authenticate"),
        r#"Bearer error="insufficient_scope", scope="krr:global/kontaktinformasjon.read krr:global/digitalpost.read""#
    );
    let restricted = token(MintOptions {
        scope: ALL_SCOPES.into(),
        pid: Some(me.into()),
        ..Default::default()
    });
    assert_eq!(
        post(&s, "/rest/v1/personer", &restricted, &ids_body(&[me, me]))
            .await
            .status,
        StatusCode::OK
    );
    let a = post(
        &s,
        "/rest/v1/personer",
        &restricted,
        &ids_body(&[me, other]),
    )
    .await;
    check_error(
        &a,
        403,
        "this token may only look up the person it was issued for",
    );
    assert!(!String::from_utf8_lossy(&a.body).contains(other));
    // A user token with a global scope is not pid-restricted.
    let user = token(MintOptions {
        scope: ALL_SCOPES.into(),
        pid: Some(me.into()),
        user: true,
        ..Default::default()
    });
    assert_eq!(
        post(&s, "/rest/v1/personer", &user, &ids_body(&[other]))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn request_errors_have_precise_messages() {
    let s = start(Options::default()).await;
    let t = scoped(ALL_SCOPES);
    let one = id(&s.register[0]);
    let check = async |body: String, status: u16, msg: &str| {
        check_error(&post(&s, "/rest/v1/personer", &t, &body).await, status, msg);
    };
    check(
        ids_body(&vec![one; 1001]),
        400,
        "personidentifikatorer has 1001 ids; at most 1000 are allowed",
    )
    .await;
    check(
        ids_body(&[one, "1234567890"]),
        400,
        "personidentifikatorer[1] must be 11 digits",
    )
    .await;
    check(
        "{\"personidentifikatorer\":[".into(),
        400,
        "request body is not valid JSON",
    )
    .await;
    check("{}".into(), 400, "personidentifikatorer is required").await;
    check(
        ids_body(&[]),
        400,
        "personidentifikatorer must not be empty",
    )
    .await;
    check(
        format!(
            "{{\"personidentifikatorer\":[\"{one}\"],\"pad\":\"{}\"}}",
            "x".repeat(70_000)
        ),
        413,
        "request body is larger than 65536 bytes",
    )
    .await;
    let v2 = post(
        &s,
        "/rest/v2/personer",
        &t,
        &format!("{{\"personidentifikatorer\":[\"{one}\"],\"inkluderIkkeRegistrerte\":1}}"),
    )
    .await;
    check_error(&v2, 400, "inkluderIkkeRegistrerte must be true or false");

    let auth = format!("Bearer {t}");
    let a = call(
        s.addr,
        Method::POST,
        "/rest/v1/personer",
        &[("Authorization", &auth), ("Content-Type", "text/plain")],
        ids_body(&[one]),
    )
    .await;
    check_error(&a, 415, "Content-Type must be application/json");
    let a = call(
        s.addr,
        Method::POST,
        "/rest/v1/personer",
        &[("Authorization", &auth)],
        ids_body(&[one]),
    )
    .await;
    check_error(&a, 415, "Content-Type must be application/json");
    let a = call(
        s.addr,
        Method::POST,
        "/rest/v1/personer",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Accept", "text/html"),
        ],
        ids_body(&[one]),
    )
    .await;
    check_error(
        &a,
        406,
        "only application/json and application/jose can be produced",
    );
    let a = call(
        s.addr,
        Method::GET,
        "/rest/v1/personer",
        &[("Authorization", &auth)],
        "",
    )
    .await;
    check_error(&a, 405, "method not allowed here; use POST");
    assert_eq!(a.header("allow"), "POST");
    let a = call(
        s.addr,
        Method::GET,
        &format!("/rest/v1/personer/{one}"),
        &[],
        "",
    )
    .await;
    check_error(&a, 404, "no such endpoint");
    assert_eq!(
        a.json()["path"],
        "/rest/v1/personer/…",
        "no personal number echoed"
    );
}

#[tokio::test]
async fn no_snapshot_answers_503_with_retry_after() {
    let s = start(Options {
        with_snapshot: false,
        ..Default::default()
    })
    .await;
    let a = post(
        &s,
        "/rest/v1/personer",
        &scoped(ALL_SCOPES),
        &ids_body(&["20914695016"]),
    )
    .await;
    check_error(&a, 503, "no register snapshot is loaded yet");
    assert_eq!(a.header("retry-after"), "5");
}

#[tokio::test]
async fn jose_answers_verify_with_another_implementation_and_carry_the_json() {
    let s = start(Options::default()).await;
    let t = scoped(ALL_SCOPES);
    let body = ids_body(&[id(&s.register[1]), id(&s.register[2]), "20914695016"]);
    let json = post(&s, "/rest/v1/personer", &t, &body).await;
    let auth = format!("Bearer {t}");
    let jose = call(
        s.addr,
        Method::POST,
        "/rest/v1/personer",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Accept", "application/jose"),
        ],
        body,
    )
    .await;
    assert_eq!(jose.status, StatusCode::OK);
    assert_eq!(jose.header("content-type"), "application/jose");
    let compact = String::from_utf8(jose.body.clone()).unwrap();
    let header = jsonwebtoken::decode_header(&compact).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    assert!(header.kid.is_some());
    let pem = std::fs::read_to_string(fixture("keys/signing-cert.pem")).unwrap();
    let der = pem::parse(&pem).unwrap().into_contents();
    use base64::Engine;
    assert_eq!(
        header.x5c.unwrap(),
        vec![base64::engine::general_purpose::STANDARD.encode(der)]
    );
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(
        &std::fs::read(fixture("keys/signing-public.pem")).unwrap(),
    )
    .unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_aud = false;
    let payload = jsonwebtoken::decode::<Value>(&compact, &key, &v)
        .unwrap()
        .claims;
    assert_eq!(payload, json.json());
    // The payload is the JSON answer byte for byte.
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(compact.split('.').nth(1).unwrap())
        .unwrap();
    assert_eq!(raw, json.body);
    // Tampering breaks the signature.
    let mut parts: Vec<&str> = compact.split('.').collect();
    let other = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"personer":[]}"#);
    parts[1] = &other;
    assert!(jsonwebtoken::decode::<Value>(&parts.join("."), &key, &v).is_err());
}

#[tokio::test]
async fn user_endpoint_and_print_certificate() {
    let s = start(Options::default()).await;
    let me = s
        .register
        .iter()
        .find(|p| p.get("digital_post").is_some())
        .unwrap();
    let user = |scope: &str, pid: &str| {
        token(MintOptions {
            scope: scope.into(),
            pid: Some(pid.into()),
            user: true,
            ..Default::default()
        })
    };
    let get = async |t: &str| {
        let auth = format!("Bearer {t}");
        call(
            s.addr,
            Method::GET,
            "/rest/v1/person",
            &[("Authorization", &auth)],
            "",
        )
        .await
    };
    let a = get(&user("openid krr:user/kontaktinformasjon.read", id(me))).await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.json();
    assert_eq!(v["personidentifikator"], me["personidentifikator"]);
    assert!(v.get("kontaktinformasjon").is_some() || me.get("kontaktinformasjon").is_none());
    assert!(v.get("digital_post").is_none());
    let v = get(&user("user/digitalpost.read", id(me))).await.json();
    assert_eq!(v["digital_post"], me["digital_post"]);
    assert!(v.get("kontaktinformasjon").is_none());
    check_error(
        &get(&user("krr:user/kontaktinformasjon.read", "20914695016")).await,
        404,
        "the person is not registered",
    );
    check_error(
        &get(&user("openid", id(me))).await,
        403,
        "the token has no scope for reading the person",
    );

    let a = call(s.addr, Method::GET, "/rest/v2/printSertifikat", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.json();
    assert_eq!(v["postkasseleverandoerAdresse"], "984661185");
    assert_eq!(
        v["x509Sertifikat"],
        krr::dev::generate::PROVIDERS[0].cert_base64()
    );
    check_error(
        &call(s.addr, Method::POST, "/rest/v1/printSertifikat", &[], "").await,
        405,
        "method not allowed here; use GET, HEAD",
    );
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = Limits {
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let s = start(Options {
        limits,
        ..Default::default()
    })
    .await;
    // Headers never finished: the connection is closed.
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"POST /rest/v1/personer HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;
    assert!(n.is_ok(), "the server kept a slow client's connection open");
    // Nothing sent at all, or the start of an HTTP/2 preface and no more: closed too.
    for first in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        c.write_all(first).await.unwrap();
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;
        assert!(n.is_ok(), "a silent client kept its connection ({first:?})");
    }
    // Body promised but not sent: 408.
    let t = scoped(ALL_SCOPES);
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /rest/v1/personer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("request body was not received in time"),
        "{text}"
    );
}

/// A chunked body (no `Content-Length`) is read to its end in pieces, held to the size
/// limit as it comes, and a broken one is refused: each answered on the raw connection.
#[tokio::test]
async fn chunked_bodies_are_read_whole_and_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start(Options::default()).await;
    let t = scoped(ALL_SCOPES);
    let one = id(&s.register[0]);
    let head = format!(
        "POST /rest/v1/personer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let exchange = async |parts: Vec<Vec<u8>>| {
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        c.write_all(head.as_bytes()).await.unwrap();
        for p in parts {
            // Each piece a read of its own: the body is not all there at the first look.
            tokio::time::sleep(Duration::from_millis(20)).await;
            if c.write_all(&p).await.is_err() {
                break;
            }
        }
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut buf))
            .await
            .expect("answered")
            .ok();
        String::from_utf8_lossy(&buf).into_owned()
    };
    let chunk = |b: &[u8]| [format!("{:x}\r\n", b.len()).as_bytes(), b, b"\r\n"].concat();
    // Two chunks, then the end: the person.
    let body = format!("{{\"personidentifikatorer\":[\"{one}\"]}}");
    let (a, b) = body.as_bytes().split_at(10);
    let got = exchange(vec![chunk(a), chunk(b), b"0\r\n\r\n".to_vec()]).await;
    // Only the status line in a failure's message: the body holds personal numbers.
    let status = got.lines().next().unwrap_or("").to_string();
    assert!(got.starts_with("HTTP/1.1 200"), "{status}");
    assert!(got.contains(one), "the person is missing");
    // 70 000 bytes in 10 000-byte chunks, past the 65 536-byte limit: 413.
    let pad = vec![b' '; 10_000];
    let got = exchange((0..7).map(|_| chunk(&pad)).collect()).await;
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    assert!(
        got.contains("request body is larger than 65536 bytes"),
        "{got}"
    );
    // A chunk size that is not hex: 400.
    let got = exchange(vec![chunk(a), b"zz\r\n".to_vec()]).await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert!(got.contains("request body could not be read"), "{got}");
}

/// Requests with bodies pipelined on one HTTP/1.1 connection (a body taken as soon as its
/// declared length came): each answered in turn, the connection kept for the next.
#[tokio::test]
async fn pipelined_requests_with_bodies_are_each_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start(Options::default()).await;
    let t = scoped(ALL_SCOPES);
    let ids: Vec<&str> = s.register.iter().take(3).map(id).collect();
    let req = |id: &str, last: bool| {
        let body = format!("{{\"personidentifikatorer\":[\"{id}\"]}}");
        format!(
            "POST /rest/v1/personer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if last { "Connection: close\r\n" } else { "" }
        )
    };
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    // All three in one write, then read to the close.
    let all = [req(ids[0], false), req(ids[1], false), req(ids[2], true)].concat();
    c.write_all(all.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let got = String::from_utf8_lossy(&got);
    let statuses: Vec<&str> = got.lines().filter(|l| l.starts_with("HTTP/")).collect();
    assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 3, "{statuses:?}");
    // In order, each with its own person.
    let at: Vec<Option<usize>> = ids.iter().map(|id| got.find(id)).collect();
    assert!(at.iter().all(Option::is_some), "a person is missing");
    assert!(
        at[0] < at[1] && at[1] < at[2],
        "the answers are out of order"
    );
}

/// A local JWKS endpoint whose document can be swapped and whose fetches are counted.
struct JwksServer {
    url: String,
    doc: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn jwks_server(initial: String) -> JwksServer {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let doc = std::sync::Arc::new(std::sync::Mutex::new(Some(initial)));
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (d, f) = (doc.clone(), fetches.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (d, f) = (d.clone(), f.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    f.fetch_add(1, Ordering::SeqCst);
                    let body = d.lock().unwrap().clone();
                    async move {
                        let resp = match body {
                            Some(b) => hyper::Response::new(Full::new(Bytes::from(b))),
                            None => {
                                let mut r = hyper::Response::new(Full::new(Bytes::new()));
                                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                                r
                            }
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    JwksServer { url, doc, fetches }
}

#[tokio::test]
async fn jwks_from_a_url_with_unknown_kid_refetch_at_most_once_a_minute() {
    use std::sync::atomic::Ordering;
    let trusted = std::fs::read_to_string(fixture("keys/jwks.json")).unwrap();
    let j = jwks_server(trusted.clone()).await;
    let s = start(Options {
        jwks: Some(JwksSource::Url(j.url.clone())),
        ..Default::default()
    })
    .await;
    assert_eq!(j.fetches.load(Ordering::SeqCst), 1, "loaded once at start");
    let body = ids_body(&[id(&s.register[0])]);
    assert_eq!(
        post(&s, "/rest/v1/personer", &scoped(ALL_SCOPES), &body)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        j.fetches.load(Ordering::SeqCst),
        1,
        "a known kid needs no fetch"
    );

    // The issuer rotates in a new key: the first token with its kid causes one refetch and
    // is accepted.
    let mut doc: Value = serde_json::from_str(&trusted).unwrap();
    let mut rotated = doc["keys"][0].clone();
    rotated["kid"] = json!("rotated");
    doc["keys"].as_array_mut().unwrap().push(rotated);
    *j.doc.lock().unwrap() = Some(doc.to_string());
    let t = token(MintOptions {
        scope: ALL_SCOPES.into(),
        kid: Some("rotated".into()),
        ..Default::default()
    });
    assert_eq!(
        post(&s, "/rest/v1/personer", &t, &body).await.status,
        StatusCode::OK
    );
    assert_eq!(j.fetches.load(Ordering::SeqCst), 2);

    // More unknown kids within the minute: refused without fetching again.
    for k in 0..5 {
        let t = token(MintOptions {
            scope: ALL_SCOPES.into(),
            kid: Some(format!("forged-{k}")),
            ..Default::default()
        });
        check_error(
            &post(&s, "/rest/v1/personer", &t, &body).await,
            401,
            "token signed by an unknown key",
        );
    }
    assert_eq!(j.fetches.load(Ordering::SeqCst), 2);

    // A failing JWKS endpoint does not take the keys away.
    *j.doc.lock().unwrap() = None;
    let keys =
        krr::auth::KeyStore::load(JwksSource::Url(j.url.clone()), Duration::from_secs(2)).await;
    assert!(keys.unwrap_err().to_string().contains("status 500"));
    let fresh = scoped(ALL_SCOPES);
    assert_eq!(
        post(&s, "/rest/v1/personer", &fresh, &body).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_last_good_keys() {
    let trusted = std::fs::read_to_string(fixture("keys/jwks.json")).unwrap();
    let j = jwks_server(trusted).await;
    let store = krr::auth::KeyStore::load(JwksSource::Url(j.url.clone()), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(store.current().len(), 2);
    *j.doc.lock().unwrap() = Some("{\"keys\":[]}".into());
    assert!(store.refresh().await.is_err());
    *j.doc.lock().unwrap() = None;
    assert!(store.refresh().await.is_err());
    assert_eq!(store.current().len(), 2, "still the last good keys");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let s = start(Options {
        limits,
        ..Default::default()
    })
    .await;
    let request = b"GET /rest/v1/printSertifikat HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut first = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    first.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = first.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // The first connection stays open (keep-alive); a second one is not served meanwhile.
    let mut second = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    second.write_all(request).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(400), second.read(&mut buf)).await;
    assert!(waited.is_err(), "served beyond the connection cap");
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .expect("served once a slot was free")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}
