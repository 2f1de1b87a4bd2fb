//! TLS to PostgreSQL: the URL's `sslmode` as libpq means it, on rustls (the TLS stack the
//! rest of hooktap uses, with the same `ring` provider), through `tokio-postgres-rustls`.
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (the default) | if the server offers it | not checked |
//! | `require` | always | not checked; with `ca_file`, checked as `verify-ca` (as libpq does with a root certificate) |
//! | `verify-ca` | always | signed by a trusted CA |
//! | `verify-full` | always | signed by a trusted CA and issued for the URL's host |
//!
//! The trusted CAs are those of `[store] ca_file` (PEM), or else the system's store.
//! tokio-postgres itself knows only `disable`, `prefer` and `require`: the verifying modes are
//! read here and handed to it as `require` with a verifying rustls configuration.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::StoreError;

/// `sslmode`, as libpq means it (`allow` is not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        match value {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            "allow" => Err(
                "sslmode=allow is not supported: use disable, prefer, require, verify-ca or verify-full"
                    .to_owned(),
            ),
            other => Err(format!(
                "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// The connection string without its `sslmode` settings, and the last one's value (the one
/// libpq uses). A `postgres://` URL's query is split into its `&`-separated pairs (the others
/// are kept byte for byte); a `key=value` string is read with libpq's rules: a value is
/// either `'quoted'` or runs to the next whitespace, and a backslash takes the next character
/// as it is. A string that does not read so is handed on unchanged, for tokio-postgres to
/// name what is wrong with it.
fn take_sslmode(url: &str) -> (String, Option<String>) {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_owned(), None);
        };
        let mut mode = None;
        let mut kept = Vec::new();
        for pair in query.split('&') {
            match url::form_urlencoded::parse(pair.as_bytes()).next() {
                Some((key, value)) if key == "sslmode" => mode = Some(value.into_owned()),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return (rest, mode);
    }
    let mut mode = None;
    let mut kept = String::with_capacity(url.len());
    let mut chars = url.char_indices().peekable();
    let skip_spaces = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_spaces(&mut chars);
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        skip_spaces(&mut chars);
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            return (url.to_owned(), None);
        }
        skip_spaces(&mut chars);
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next() {
                    Some((_, '\'')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) => value.push(c),
                        None => return (url.to_owned(), None),
                    },
                    Some((_, c)) => value.push(c),
                    None => return (url.to_owned(), None),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    match chars.next() {
                        Some((_, c)) => value.push(c),
                        None => return (url.to_owned(), None),
                    }
                } else {
                    value.push(c);
                }
            }
        }
        let end = chars.peek().map_or(url.len(), |&(i, _)| i);
        if key == "sslmode" {
            mode = Some(value);
        } else {
            kept.push_str(&url[start..end]);
            kept.push(' ');
        }
    }
    (kept.trim_end().to_owned(), mode)
}

/// How to reach PostgreSQL: the connection settings and the TLS connector, made once per
/// store (reading the CAs is not free) and cloned for each connection.
#[derive(Clone)]
pub struct Connector {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    /// The mode in force and where the trusted CAs come from, for errors.
    described: String,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.described)
    }
}

impl Connector {
    /// Reads `url` (a secret: never in an error) and `ca_file`.
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<Self, StoreError> {
        let (config, mode) = parse(url, ca_file).map_err(StoreError::Postgres)?;
        let check = match mode {
            SslMode::VerifyFull => Check::Full(roots(ca_file)?),
            SslMode::VerifyCa => Check::Chain(roots(ca_file)?),
            SslMode::Disable | SslMode::Prefer | SslMode::Require => Check::Nothing,
        };
        let described = match (mode, ca_file) {
            (SslMode::VerifyCa | SslMode::VerifyFull, Some(f)) => {
                format!(
                    "sslmode={}, CA certificates from {}",
                    mode.as_str(),
                    f.display()
                )
            }
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => format!(
                "sslmode={}, CA certificates from the system's store (set [store] ca_file for a private CA)",
                mode.as_str()
            ),
            _ => format!("sslmode={}", mode.as_str()),
        };
        Ok(Self {
            config,
            tls: MakeRustlsConnect::new(client_config(check)?),
            described,
        })
    }

    /// `e`, a failure to connect, with the TLS settings when it is about the certificate
    /// (`invalid peer certificate: UnknownIssuer` says what, not which CAs were tried).
    pub fn explain(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Postgres(text) if text.contains("certificate") || text.contains("TLS") => {
                let meaning = if text.contains("UnknownIssuer") {
                    "the server's certificate is not signed by a trusted CA; "
                } else if text.contains("BadSignature") {
                    "the server's certificate does not carry a valid signature of a trusted CA; "
                } else {
                    ""
                };
                StoreError::Postgres(format!("{text} ({meaning}{})", self.described))
            }
            other => other,
        }
    }
}

/// Checks a URL and the `ca_file` that goes with it (the config's checks).
pub fn check(url: &str, ca_file: Option<&Path>) -> Result<(), String> {
    parse(url, ca_file).map(drop)
}

/// The connection settings with the verifying modes handed to tokio-postgres as `require`, and
/// the mode in force.
pub(super) fn parse(
    url: &str,
    ca_file: Option<&Path>,
) -> Result<(tokio_postgres::Config, SslMode), String> {
    let (rewritten, given) = take_sslmode(url);
    let given = given.as_deref().map(SslMode::parse).transpose()?;
    let config = rewritten.parse::<tokio_postgres::Config>().map_err(|e| {
        // "invalid connection string: unknown option `sslrootcert`"
        let e = super::pg_error(e).to_string();
        if e.contains("sslrootcert") {
            "sslrootcert in the url is not read: set `ca_file` in [store] instead".to_owned()
        } else {
            e
        }
    })?;
    // As libpq: sslmode means nothing for a Unix-domain socket (no TLS there).
    let hosts = config.get_hosts();
    if !hosts.is_empty()
        && hosts
            .iter()
            .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)))
    {
        let mut config = config;
        config.ssl_mode(PgSslMode::Disable);
        return Ok((config, SslMode::Disable));
    }
    let mode = match (given, ca_file) {
        (None, None) => SslMode::Prefer,
        (None, Some(_)) => SslMode::VerifyFull,
        (Some(SslMode::Require), Some(_)) => SslMode::VerifyCa,
        (Some(mode @ (SslMode::Disable | SslMode::Prefer)), Some(_)) => {
            return Err(format!(
                "`ca_file` is used with sslmode=require, verify-ca or verify-full; the url says sslmode={}",
                mode.as_str()
            ));
        }
        (Some(mode), _) => mode,
    };
    // As libpq: verify-full compares the certificate with the host *name*; an address alone
    // (`hostaddr`) gives nothing to compare it with.
    if mode == SslMode::VerifyFull && hosts.is_empty() && !config.get_hostaddrs().is_empty() {
        return Err(
            "sslmode=verify-full checks the certificate against the url's host name, but the url gives only `hostaddr`: add `host=<the name the certificate is issued for>` (the address is still used to connect), or use sslmode=verify-ca"
                .to_owned(),
        );
    }
    let mut config = config;
    config.ssl_mode(match mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
    });
    Ok((config, mode))
}

/// The CAs of `ca_file`, or else the system's.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, StoreError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let (added, ignored) = roots.add_parsable_certificates(ca_certificates(path)?);
            if added == 0 {
                return Err(StoreError::Postgres(format!(
                    "ca_file {}: none of its {ignored} certificates can be used as a CA",
                    path.display()
                )));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "cannot read part of the system's CA certificates");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(StoreError::Postgres(
                    "no CA certificates in the system's store to verify PostgreSQL's certificate with: set `ca_file` in [store]"
                        .to_owned(),
                ));
            }
        }
    }
    Ok(roots)
}

/// The PEM certificates of a CA file, with the file named in every error.
pub fn ca_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let named = |e: &dyn std::fmt::Display| {
        StoreError::Postgres(format!("ca_file {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| named(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| named(&e))?;
    if certs.is_empty() {
        return Err(named(
            &"no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
        ));
    }
    Ok(certs)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What is checked of the server's certificate.
enum Check {
    /// `verify-full`: the chain up to a trusted CA, and the host name.
    Full(RootCertStore),
    /// `verify-ca`: the chain up to a trusted CA, whatever name it was issued for.
    Chain(RootCertStore),
    /// `prefer` and `require`: nothing (as libpq does); the handshake's signatures still are.
    Nothing,
}

fn client_config(check: Check) -> Result<rustls::ClientConfig, StoreError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Postgres(format!("cannot set up TLS: {e}")))?;
    let algorithms = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::Full(roots) => {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| StoreError::Postgres(format!("cannot set up TLS: {e}")))?
        }
        Check::Chain(roots) => Arc::new(ChainOrNothing {
            roots: Some(Arc::new(roots)),
            algorithms,
        }),
        Check::Nothing => Arc::new(ChainOrNothing {
            roots: None,
            algorithms,
        }),
    };
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // As libpq 17: PostgreSQL 17 refuses a direct TLS connection (`sslnegotiation=direct`)
    // without this ALPN; older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// `verify-ca` (with `roots`): the chain up to a trusted CA, whatever name the certificate was
/// issued for. `prefer` and `require` (without): the certificate unchecked, as libpq does.
/// Either way the handshake's signatures are checked, so the server holds the certificate's
/// key.
#[derive(Debug)]
struct ChainOrNothing {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOrNothing {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_read_from_urls_and_connection_strings() {
        let cases = [
            ("postgres://u:p@h/db", SslMode::Prefer),
            ("postgres://u:p@h/db?sslmode=disable", SslMode::Disable),
            (
                "postgres://u:p@h/db?application_name=x&sslmode=verify-ca",
                SslMode::VerifyCa,
            ),
            (
                "postgres://u:p@h/db?sslmode=verify-full",
                SslMode::VerifyFull,
            ),
            ("host=h user=u sslmode='verify-full'", SslMode::VerifyFull),
            ("host=h user=u sslmode=require", SslMode::Require),
            // A quoted value is a value: its `sslmode=` is part of the password.
            (
                "host=h sslmode=verify-full password='x sslmode=disable'",
                SslMode::VerifyFull,
            ),
            (
                r"host=h password=a\ sslmode=disable sslmode=require",
                SslMode::Require,
            ),
            (
                "host=h sslmode = disable sslmode=verify-ca",
                SslMode::VerifyCa,
            ),
            (
                "postgres://u:p@h/db?application_name=sslmode%3Ddisable&sslmode=verify-full",
                SslMode::VerifyFull,
            ),
            (
                "postgres://u:p@h/db?sslmode=disable&sslmode=require",
                SslMode::Require,
            ),
        ];
        for (url, want) in cases {
            let (config, mode) = parse(url, None).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(mode, want, "{url}");
            let pg = match want {
                SslMode::Disable => PgSslMode::Disable,
                SslMode::Prefer => PgSslMode::Prefer,
                _ => PgSslMode::Require,
            };
            assert_eq!(config.get_ssl_mode(), pg, "{url}");
        }
    }

    #[test]
    fn what_is_not_sslmode_is_kept_as_written() {
        let (config, _) = parse(
            r"host=h user=u password='it\'s a' sslmode=require application_name=a\ b",
            None,
        )
        .expect("parse");
        assert_eq!(config.get_password(), Some(&b"it's a"[..]));
        assert_eq!(config.get_application_name(), Some("a b"));
        let (config, _) = parse(
            "postgres://u:p%40ss@h/db?sslmode=verify-full&application_name=a%20b",
            None,
        )
        .expect("parse");
        assert_eq!(config.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(config.get_application_name(), Some("a b"));
    }

    /// libpq ignores sslmode on a Unix-domain socket; so does hooktap, even with a CA file.
    #[test]
    fn a_unix_socket_is_reached_without_tls() {
        let ca = Path::new("ca.pem");
        for url in [
            "host=/run/postgresql user=u sslmode=verify-full",
            "postgres://u@%2Frun%2Fpostgresql/db",
        ] {
            let (config, mode) = parse(url, Some(ca)).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(mode, SslMode::Disable, "{url}");
            assert_eq!(config.get_ssl_mode(), PgSslMode::Disable, "{url}");
        }
    }

    /// verify-full needs a host name to check the certificate against; `hostaddr` alone is
    /// refused when the config is read, not at the first connection.
    #[test]
    fn verify_full_with_only_an_address_is_refused() {
        let e = parse("hostaddr=127.0.0.1 user=u sslmode=verify-full", None)
            .expect_err("no host name to verify");
        assert!(e.contains("hostaddr") && e.contains("host="), "{e}");
        let ca = Path::new("ca.pem");
        // A CA file alone makes the mode verify-full: the same error.
        assert!(parse("hostaddr=127.0.0.1 user=u", Some(ca)).is_err());
        // With a name beside the address, or with verify-ca, it is fine.
        for url in [
            "host=db.internal hostaddr=127.0.0.1 user=u sslmode=verify-full",
            "hostaddr=127.0.0.1 user=u sslmode=verify-ca",
        ] {
            parse(url, None).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }

    #[test]
    fn tls_offers_the_postgresql_alpn() {
        let config = client_config(Check::Nothing).expect("config");
        assert_eq!(config.alpn_protocols, vec![b"postgresql".to_vec()]);
    }

    #[test]
    fn a_ca_file_makes_the_certificate_checked() {
        let ca = Path::new("ca.pem");
        let mode = |url: &str| parse(url, Some(ca)).map(|(_, m)| m);
        assert_eq!(mode("postgres://h/db"), Ok(SslMode::VerifyFull));
        assert_eq!(
            mode("postgres://h/db?sslmode=require"),
            Ok(SslMode::VerifyCa)
        );
        assert_eq!(
            mode("postgres://h/db?sslmode=verify-ca"),
            Ok(SslMode::VerifyCa)
        );
        let e = mode("postgres://h/db?sslmode=prefer").expect_err("prefer ignores a CA");
        assert!(
            e.contains("`ca_file`") && e.contains("sslmode=prefer"),
            "{e}"
        );
    }

    #[test]
    fn unsupported_modes_and_sslrootcert_are_named() {
        let e = check("postgres://u:secret@h/db?sslmode=allow", None).expect_err("allow");
        assert!(e.contains("sslmode=allow is not supported"), "{e}");
        let e = check("postgres://u:secret@h/db?sslmode=verify", None).expect_err("typo");
        assert!(e.contains("sslmode=verify is not one of"), "{e}");
        let e = check(
            "postgres://u:secret@h/db?sslmode=verify-full&sslrootcert=/ca.pem",
            None,
        )
        .expect_err("sslrootcert");
        assert!(e.contains("ca_file") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let e = ca_certificates(&path)
            .expect_err("no certificate")
            .to_string();
        assert!(
            e.contains("ca.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = ca_certificates(&dir.path().join("missing.pem"))
            .expect_err("missing")
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }
}
