//! TLS to a broker (`mqtts://`), for `[[upstream]]` and `[cluster]` alike: the broker's
//! certificate checked against a CA file or the system's roots, and a client certificate
//! when the broker asks for one. rustls on ring, as the lake's HTTPS client.

use std::sync::Arc;

use rumqttc::{TlsConfiguration, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use crate::config::TlsFiles;

/// How to reach a broker: TCP, or TLS as configured (certificates read once, at start).
#[derive(Clone)]
pub struct BrokerTransport(pub Transport);

impl std::fmt::Debug for BrokerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Transport::Tcp => "tcp",
            _ => "tls",
        })
    }
}

impl BrokerTransport {
    /// The transport to `address`: TLS with `files` for `mqtts://`, else TCP.
    pub fn of(
        address: &crate::config::BrokerAddress,
        files: TlsFiles<'_>,
    ) -> Result<BrokerTransport, String> {
        if address.tls {
            transport(files).map(BrokerTransport)
        } else {
            Ok(BrokerTransport(Transport::Tcp))
        }
    }
}

/// The transport of a TLS connection with `files`; every problem named with its file.
pub fn transport(files: TlsFiles<'_>) -> Result<Transport, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if files.ca.is_empty() {
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err("no system root certificates found; give a ca_file".into());
        }
    } else {
        let certs = CertificateDer::pem_file_iter(files.ca)
            .map_err(|e| format!("ca_file {}: {e}", files.ca))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("ca_file {}: {e}", files.ca))?;
        if certs.is_empty() {
            return Err(format!("ca_file {}: no certificate in it", files.ca));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("ca_file {}: {e}", files.ca))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = if files.cert.is_empty() {
        builder.with_no_client_auth()
    } else {
        let chain = CertificateDer::pem_file_iter(files.cert)
            .map_err(|e| format!("client_cert_file {}: {e}", files.cert))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("client_cert_file {}: {e}", files.cert))?;
        let key = PrivateKeyDer::from_pem_file(files.key)
            .map_err(|e| format!("client_key_file {}: {e}", files.key))?;
        builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("client_cert_file {}: {e}", files.cert))?
    };
    Ok(Transport::Tls(TlsConfiguration::Rustls(Arc::new(config))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let empty = empty.display().to_string();
        for (ca, says) in [
            ("/no/such/ca.pem", "/no/such/ca.pem"),
            (empty.as_str(), "no certificate"),
        ] {
            let files = TlsFiles {
                ca,
                cert: "",
                key: "",
            };
            let err = transport(files).err().expect("refused");
            assert!(err.contains(says), "{err}");
        }
    }
}
