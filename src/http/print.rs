//! `GET /rest/v1|v2/printSertifikat` (the print provider's address and certificate, the
//! same answer every time) and `GET /openapi.json`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};

use crate::http::error::ApiError;
use crate::http::request::{Resp, negotiate, with_type};
use crate::http::{AppState, Format};
use crate::render::write_print_provider;

/// Why the print provider's certificate cannot be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrintCertError {
    /// The PEM does not parse.
    #[error("print certificate")]
    Pem(#[from] pem::PemError),
    /// The PEM holds no `CERTIFICATE`.
    #[error("print certificate: no PEM certificate found")]
    NoCertificate,
    /// The `CERTIFICATE` block does not parse as an X.509 v3 certificate (webpki's rules).
    #[error(
        "print certificate: the CERTIFICATE block is not an X.509 v3 certificate this service can serve ({0})"
    )]
    NotX509(String),
}

/// The `printSertifikat` answer for a provider and its certificate (PEM).
pub fn print_body(orgnr: &str, cert_pem: &str) -> Result<Bytes, PrintCertError> {
    let cert = pem::parse_many(cert_pem)?
        .into_iter()
        .find(|p| p.tag() == "CERTIFICATE")
        .ok_or(PrintCertError::NoCertificate)?;
    // Parsed, not only unwrapped: agencies encrypt letters to this certificate.
    let der = rustls_pki_types::CertificateDer::from(cert.contents());
    webpki::EndEntityCert::try_from(&der).map_err(|e| PrintCertError::NotX509(format!("{e:?}")))?;
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.contents());
    let mut out = Vec::new();
    write_print_provider(orgnr, &b64, &mut out);
    Ok(Bytes::from(out))
}

/// `printSertifikat`: the configured answer, as JSON or signed.
pub fn print_sertifikat<B>(state: &AppState, req: &Request<B>) -> Result<Resp, ApiError> {
    let body = state.print_body.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no print provider is configured for this service",
        )
    })?;
    // Signed once at start: the answer never changes, so neither does its signature.
    Ok(match negotiate(req.headers(), state.signer.is_some())? {
        Format::Jose => with_type(state.print_jose.clone().unwrap_or(body), "application/jose"),
        Format::Json => with_type(body, "application/json"),
    })
}

/// The OpenAPI 3.1 document of the public API.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// `GET /openapi.json`.
pub fn openapi() -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod cert_tests {
    use super::*;

    #[test]
    fn the_print_certificate_must_be_a_real_certificate() {
        for pem in [
            crate::dev::generate::PROVIDERS[0].pem,
            crate::dev::generate::PROVIDERS[1].pem,
        ] {
            assert!(print_body("984661185", pem).is_ok());
        }
        let junk = pem::encode(&pem::Pem::new("CERTIFICATE", b"not a certificate".to_vec()));
        let err = print_body("984661185", &junk).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "print certificate: the CERTIFICATE block is not an X.509 v3 certificate"
            ),
            "{err}"
        );
        assert!(matches!(
            print_body("984661185", "no pem here"),
            Err(PrintCertError::NoCertificate)
        ));
    }
}
