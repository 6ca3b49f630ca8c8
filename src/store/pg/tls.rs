//! TLS to the database, as libpq users configure it: `sslmode` and `sslrootcert` in the URL.
//!
//! | `sslmode` | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | never | no |
//! | `prefer` (default) | when the server offers TLS | no |
//! | `require` | always | no, unless `sslrootcert` is given (then as `verify-ca`, as libpq does) |
//! | `verify-ca` | always | signed by a trusted CA |
//! | `verify-full` | always | signed by a trusted CA and made for the host connected to |
//!
//! The trusted CAs are the PEM bundle at `sslrootcert=PATH`, or else (`sslrootcert=system` or
//! none) the system's roots. tokio-postgres knows only `disable`, `prefer` and `require` and not
//! `sslrootcert`, so both are taken out of the URL before it parses the rest, and the connector
//! built here carries what they ask for. rustls with the ring provider does the TLS (why: see
//! `docs/design.md`).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode as ClientSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::PgError;
use crate::store::StoreError;

/// What the server is asked for in the TLS handshake (ALPN), as libpq 17 sends it: PostgreSQL
/// 17 requires it for `sslnegotiation=direct`, older servers ignore it.
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// libpq's `sslmode`s (`allow`, which tries plaintext first, is not offered: it protects
/// nothing that `prefer` does not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, without checking its certificate.
    Prefer,
    /// TLS always, without checking the certificate (but see `sslrootcert`).
    Require,
    /// TLS always, the certificate signed by a trusted CA.
    VerifyCa,
    /// TLS always, the certificate signed by a trusted CA and made for the host name.
    VerifyFull,
}

impl SslMode {
    const ALL: [SslMode; 5] = [
        SslMode::Disable,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Option<SslMode> {
        SslMode::ALL.into_iter().find(|mode| mode.name() == value)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a node connects with: the connector every connection of the store uses (the writer's,
/// the listener's and the read pool's), and the mode it was built for, for messages.
#[derive(Clone)]
pub(super) struct Tls {
    /// Handed to tokio-postgres, which uses it only when its `SslMode` is not `Disable`.
    pub connector: MakeRustlsConnect,
    /// The URL's `sslmode`.
    pub mode: SslMode,
    /// The URL's `sslrootcert`, if it names a file.
    pub root_cert: Option<PathBuf>,
}

/// The URL's own settings and the TLS it asks for. Fails with a message naming the parameter
/// when `sslmode` or `sslrootcert` is wrong or the URL does not parse.
pub(super) fn configure(url: &str) -> Result<(tokio_postgres::Config, Tls), StoreError> {
    let (rest, settings) = take_tls_params(url)?;
    let mut config: tokio_postgres::Config = rest.parse().map_err(|error| {
        StoreError::storage(
            "the database URL is not valid (expected postgres://user:password@host:port/database)",
            error,
        )
    })?;
    config.ssl_mode(match settings.mode {
        SslMode::Disable => ClientSslMode::Disable,
        SslMode::Prefer => ClientSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => ClientSslMode::Require,
    });
    let connector = MakeRustlsConnect::new(client_config(&settings)?);
    Ok((
        config,
        Tls {
            connector,
            mode: settings.mode,
            root_cert: settings.root_cert,
        },
    ))
}

/// `sslmode` and `sslrootcert` as the URL gives them.
#[derive(Debug, PartialEq, Eq)]
struct Settings {
    mode: SslMode,
    /// `None`: the system's roots (no `sslrootcert`, or `sslrootcert=system` as libpq 16 spells
    /// it).
    root_cert: Option<PathBuf>,
}

/// The URL without `sslmode` and `sslrootcert`, and their values (the last of each wins, as in
/// libpq). The query is found as tokio-postgres finds it: after the credentials (up to the first
/// `@`), at the first `?`. The other parameters are left as they are written.
fn take_tls_params(url: &str) -> Result<(String, Settings), StoreError> {
    let scheme = ["postgres://", "postgresql://"]
        .into_iter()
        .find(|scheme| url.starts_with(scheme))
        .map_or(0, str::len);
    let after_credentials = url[scheme..].find('@').map_or(scheme, |at| scheme + at + 1);
    let Some(question) = url[after_credentials..].find('?') else {
        return Ok((
            url.to_owned(),
            Settings {
                mode: SslMode::Prefer,
                root_cert: None,
            },
        ));
    };
    let query_start = after_credentials + question + 1;
    let mut mode = None;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for param in url[query_start..].split('&') {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        let decoded = || {
            percent_decode_str(value).decode_utf8().map_err(|_| {
                StoreError::storage_text(format!(
                    "the database URL's {key} is not UTF-8 once percent-decoded"
                ))
            })
        };
        match key {
            "sslmode" => {
                let value = decoded()?;
                mode = Some(SslMode::parse(&value).ok_or_else(|| {
                    StoreError::storage_text(format!(
                        "the database URL's sslmode={value} is not one of disable, prefer, require, verify-ca, verify-full"
                    ))
                })?);
            }
            "sslrootcert" => {
                let value = decoded()?;
                root_cert = match &*value {
                    "" => {
                        return Err(StoreError::storage_text(
                            "the database URL's sslrootcert is empty: give the path of a PEM file of CA certificates, or system",
                        ));
                    }
                    "system" => None,
                    path => Some(PathBuf::from(path)),
                };
            }
            _ => kept.push(param),
        }
    }
    let mut rest = url[..query_start - 1].to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok((
        rest,
        Settings {
            mode: mode.unwrap_or(SslMode::Prefer),
            root_cert,
        },
    ))
}

/// How a server's certificate is checked.
enum Check {
    /// Not at all (`prefer`, `require`): encryption against eavesdroppers only, as libpq.
    Nothing,
    /// Its chain up to a trusted root.
    Chain,
    /// Its chain and its names.
    ChainAndName,
}

fn client_config(settings: &Settings) -> Result<rustls::ClientConfig, StoreError> {
    // The provider is named rather than taken from the process default, so that nothing else in
    // the process (another crate enabling aws-lc-rs) changes what recap uses or makes it panic.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let check = match (settings.mode, &settings.root_cert) {
        (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => Check::Nothing,
        (SslMode::Require | SslMode::VerifyCa, _) => Check::Chain,
        (SslMode::VerifyFull, _) => Check::ChainAndName,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::Nothing => Arc::new(Unverified {
            algorithms: provider.signature_verification_algorithms,
        }),
        Check::Chain | Check::ChainAndName => {
            let roots = Arc::new(roots(settings.root_cert.as_ref())?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|error| {
                    StoreError::storage("cannot build the TLS certificate verifier", error)
                })?;
            if matches!(check, Check::Chain) {
                Arc::new(ChainOnly { webpki })
            } else {
                webpki
            }
        }
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| StoreError::storage("cannot set up TLS", error))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(config)
}

/// The CAs a certificate must chain to: the PEM bundle at `path`, else the system's.
fn roots(path: Option<&PathBuf>) -> Result<RootCertStore, StoreError> {
    let mut roots = RootCertStore::empty();
    match path {
        Some(path) => {
            let shown = path.display();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|error| {
                    StoreError::storage_text(format!(
                        "cannot read the CA certificates of sslrootcert={shown}: {error}"
                    ))
                })?;
            if certs.is_empty() {
                return Err(StoreError::storage_text(format!(
                    "sslrootcert={shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
                )));
            }
            for cert in certs {
                roots.add(cert).map_err(|error| {
                    StoreError::storage_text(format!(
                        "sslrootcert={shown} holds a certificate that is not a usable CA: {error}"
                    ))
                })?;
            }
        }
        None => {
            // SSL_CERT_FILE and SSL_CERT_DIR are honoured here, as by OpenSSL.
            let found = rustls_native_certs::load_native_certs();
            let (added, _unusable) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(StoreError::storage_text(format!(
                    "no system root certificates were found to verify the database's certificate ({}); install the ca-certificates package, set SSL_CERT_FILE, or give the database's CA with sslrootcert=PATH in the URL",
                    if why.is_empty() {
                        "none installed"
                    } else {
                        &why
                    }
                )));
            }
        }
    }
    Ok(roots)
}

/// `verify-ca`: the chain is checked as for `verify-full`, the names are not. webpki checks the
/// chain (and its validity dates) before the names, so a name mismatch is the only thing left
/// unchecked when it is the error.
#[derive(Debug)]
struct ChainOnly {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `prefer` and `require` without `sslrootcert`: any certificate is taken, as libpq does. The
/// handshake's signatures are still checked against the certificate presented, so the session
/// is encrypted to whoever holds its key (which is all these modes promise).
#[derive(Debug)]
struct Unverified {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What a failed connection says when TLS is why: the server does not offer it though the mode
/// requires it, or its certificate did not verify (with the reason and what to do), or the
/// handshake failed otherwise. `None` when TLS is not why.
pub(super) fn explain(error: &PgError, tls: &Tls, place: &str) -> Option<String> {
    let mode = tls.mode;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        // tokio-postgres reports a server that answered "no" to its TLS request with this
        // message only (its error kinds are private).
        if current.to_string() == "server does not support TLS" {
            return Some(format!(
                "the database server at {place} does not accept TLS connections, but sslmode={mode} requires TLS: turn TLS on in the server (ssl = on, with ssl_cert_file and ssl_key_file), or connect with sslmode=prefer or sslmode=disable on a network you trust"
            ));
        }
        // tokio-rustls wraps rustls's error in an io::Error, whose `source` skips it.
        let rustls_error = current.downcast_ref::<rustls::Error>().or_else(|| {
            current
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls_error) = rustls_error {
            return Some(match rustls_error {
                rustls::Error::InvalidCertificate(reason) => format!(
                    "the TLS certificate of the database server at {place} did not verify (sslmode={mode}): {}{}",
                    reason_text(reason),
                    hint(reason, tls.root_cert.as_ref())
                ),
                other => format!(
                    "the TLS handshake with the database server at {place} failed (sslmode={mode}): {other}"
                ),
            });
        }
        source = current.source();
    }
    None
}

/// rustls's words for a reason, which for some are only the variant's name.
fn reason_text(reason: &CertificateError) -> String {
    match reason {
        CertificateError::UnknownIssuer => "it is not signed by a trusted CA".to_owned(),
        CertificateError::BadSignature => "its signature is not valid".to_owned(),
        CertificateError::Expired => "it has expired".to_owned(),
        CertificateError::NotValidYet => "it is not valid yet".to_owned(),
        CertificateError::Revoked => "it has been revoked".to_owned(),
        CertificateError::NotValidForName => {
            "it is not made for the host name connected to".to_owned()
        }
        other => other.to_string(),
    }
}

/// What to do about a reason, where there is something to say.
fn hint(reason: &CertificateError, root_cert: Option<&PathBuf>) -> String {
    match reason {
        CertificateError::UnknownIssuer => match root_cert {
            Some(path) => format!(
                "; sslrootcert={} does not hold the CA that signed it: give your provider's CA bundle",
                path.display()
            ),
            None => "; the system's roots do not hold the CA that signed it: give that CA (your provider's CA bundle) with sslrootcert=PATH in the URL".to_owned(),
        },
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "; connect by a host name the certificate holds, or use sslmode=verify-ca to check only that a trusted CA signed it".to_owned()
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, Settings) {
        take_tls_params(url).unwrap()
    }

    #[test]
    fn tls_params_are_taken_out_and_the_rest_kept_as_written() {
        let (rest, settings) = split(
            "postgres://u:p%40ss@db.example:5432/app?application_name=a%20b&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20bundle.pem&connect_timeout=3",
        );
        assert_eq!(
            rest,
            "postgres://u:p%40ss@db.example:5432/app?application_name=a%20b&connect_timeout=3"
        );
        assert_eq!(
            settings,
            Settings {
                mode: SslMode::VerifyFull,
                root_cert: Some(PathBuf::from("/etc/ca bundle.pem")),
            }
        );
    }

    #[test]
    fn prefer_is_the_default_and_a_url_without_a_query_is_unchanged() {
        for url in [
            "postgres://u@h/db",
            "postgresql://h:1/db?application_name=x",
        ] {
            let (rest, settings) = split(url);
            assert_eq!(rest, url);
            assert_eq!(settings.mode, SslMode::Prefer);
            assert_eq!(settings.root_cert, None);
        }
    }

    #[test]
    fn a_question_mark_in_the_password_is_not_the_query() {
        let (rest, settings) = split("postgres://u:p?w@h/db?sslmode=require");
        assert_eq!(rest, "postgres://u:p?w@h/db");
        assert_eq!(settings.mode, SslMode::Require);
    }

    #[test]
    fn only_tls_params_leave_no_query_and_system_means_the_system_roots() {
        let (rest, settings) = split("postgres://h/db?sslrootcert=system&sslmode=verify-ca");
        assert_eq!(rest, "postgres://h/db");
        assert_eq!(settings.mode, SslMode::VerifyCa);
        assert_eq!(settings.root_cert, None);
    }

    #[test]
    fn every_libpq_mode_but_allow_parses_and_others_are_refused_by_name() {
        for mode in SslMode::ALL {
            let (_, settings) = split(&format!("postgres://h/db?sslmode={mode}"));
            assert_eq!(settings.mode, mode);
        }
        let error = take_tls_params("postgres://h/db?sslmode=allow")
            .unwrap_err()
            .to_string();
        assert!(error.contains("sslmode=allow is not one of"), "{error}");
        let error = take_tls_params("postgres://h/db?sslrootcert=")
            .unwrap_err()
            .to_string();
        assert!(error.contains("sslrootcert is empty"), "{error}");
    }

    #[test]
    fn a_missing_or_empty_root_file_is_named() {
        let error =
            configure("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
                .err()
                .unwrap()
                .to_string();
        assert!(error.contains("sslrootcert=/nonexistent/ca.pem"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = configure(&format!(
            "postgres://h/db?sslmode=verify-ca&sslrootcert={}",
            empty.display()
        ))
        .err()
        .unwrap()
        .to_string();
        assert!(error.contains("holds no PEM certificate"), "{error}");
    }

    #[test]
    fn the_client_mode_follows_the_libpq_mode() {
        for (mode, client) in [
            ("disable", ClientSslMode::Disable),
            ("prefer", ClientSslMode::Prefer),
            ("require", ClientSslMode::Require),
        ] {
            let (config, tls) = configure(&format!("postgres://h/db?sslmode={mode}")).unwrap();
            assert_eq!(config.get_ssl_mode(), client);
            assert_eq!(tls.mode.name(), mode);
        }
    }
}
