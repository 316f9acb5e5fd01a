//! TLS for the testbed's control plane: a CA generated for one run (it lives as long as
//! the run's state directory, so no test or run trusts another's), a server certificate
//! for the control plane's address signed by it, a client certificate for gateways that
//! present one, and the rustls server configuration. The gateway is given the CA file,
//! exactly as an operator would give jitwgd a private CA (`--api-ca-file`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// What failed while making or loading the run's certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating a certificate")]
    Generate(#[source] rcgen::Error),
    #[error("building the TLS server configuration")]
    Rustls(#[source] rustls::Error),
    #[error("building the client-certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One issued certificate: PEM, DER and its key.
struct Issued {
    pem: String,
    der: CertificateDer<'static>,
    key: KeyPair,
}

/// A run's certificates: its CA, the control plane's server certificate, and a client
/// certificate (the gateway's, when the control plane asks for one).
pub struct RunPki {
    ca: Issued,
    server: Issued,
    client: Issued,
}

/// Where `RunPki::write` put the files the gateway reads.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    /// The run's CA certificate (PEM): jitwgd's `api_ca_file`.
    pub ca: PathBuf,
    /// The gateway's client certificate and key (PEM): `api_client_cert`/`api_client_key`.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl RunPki {
    /// A fresh CA, a server certificate valid for `server_ips`, and a client certificate.
    pub fn generate(server_ips: &[IpAddr]) -> Result<RunPki, TlsError> {
        let ca_key = KeyPair::generate().map_err(TlsError::Generate)?;
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "jitwg run CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(TlsError::Generate)?;

        let issue = |cn: &str, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().map_err(TlsError::Generate)?;
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.subject_alt_names = sans;
            params.extended_key_usages = vec![usage];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let cert = params
                .signed_by(&key, &ca_cert, &ca_key)
                .map_err(TlsError::Generate)?;
            Ok::<_, TlsError>(Issued {
                pem: cert.pem(),
                der: cert.der().clone(),
                key,
            })
        };
        let server = issue(
            "jitwg control plane",
            server_ips
                .iter()
                .map(|ip| SanType::IpAddress(*ip))
                .collect(),
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let client = issue(
            "jitwg gateway",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        Ok(RunPki {
            ca: Issued {
                pem: ca_cert.pem(),
                der: ca_cert.der().clone(),
                key: ca_key,
            },
            server,
            client,
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca.pem
    }

    /// Writes the files a gateway needs into `dir` (the key readable by its owner only).
    pub fn write(&self, dir: &Path) -> Result<PkiFiles, TlsError> {
        let files = PkiFiles {
            ca: dir.join("cp-ca.pem"),
            client_cert: dir.join("gateway-cert.pem"),
            client_key: dir.join("gateway-key.pem"),
        };
        write_private(&files.ca, self.ca.pem.as_bytes(), 0o644)?;
        write_private(&files.client_cert, self.client.pem.as_bytes(), 0o644)?;
        write_private(
            &files.client_key,
            self.client.key.serialize_pem().as_bytes(),
            0o600,
        )?;
        Ok(files)
    }

    /// The control plane's rustls configuration (ring provider, HTTP/1.1). With
    /// `require_client_cert`, only clients presenting a certificate from this run's CA
    /// complete the handshake.
    pub fn server_config(
        &self,
        require_client_cert: bool,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Rustls)?;
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca.der.clone()).map_err(TlsError::Rustls)?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(TlsError::Verifier)?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server.key.serialize_der()));
        let mut config = builder
            .with_single_cert(vec![self.server.der.clone()], key)
            .map_err(TlsError::Rustls)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    crate::private_file::write(path, bytes, mode).map_err(|source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_run_gets_its_own_ca() {
        let ip: IpAddr = "198.18.0.1".parse().unwrap();
        let a = RunPki::generate(&[ip]).unwrap();
        let b = RunPki::generate(&[ip]).unwrap();
        assert_ne!(a.ca_pem(), b.ca_pem());
        assert!(a.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(a.server_config(false).is_ok());
        assert!(a.server_config(true).is_ok());
    }

    #[test]
    fn files_are_written_with_a_private_key_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pki = RunPki::generate(&["127.0.0.1".parse().unwrap()]).unwrap();
        let files = pki.write(dir.path()).unwrap();
        let mode = std::fs::metadata(&files.client_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&files.ca).unwrap(), pki.ca_pem());
    }
}
