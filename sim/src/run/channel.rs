//! The run's control-plane channel, secured as the scenario asks (`[control_plane] tls`,
//! `token`, `client_cert`): a CA generated for this run, the control plane's server
//! configuration, and the files the daemon is pointed at (CA, token, client certificate),
//! written into the run's state directory, which the lab removes last.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::controlplane::tls::RunPki;
use crate::controlplane::Access;

use super::RunError;

/// How the run's control plane secures its channel; the daemon is given what it needs
/// (the run's CA file, the token file, the client certificate) through its config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlPlaneSecurity {
    /// Serve HTTPS with a certificate from a CA generated for this run.
    pub tls: bool,
    /// Require this bearer token on every request.
    pub token: Option<String>,
    /// Require a client certificate from the run's CA (needs `tls`).
    pub client_cert: bool,
}

/// Where the daemon finds its credentials for the control plane (jitwgd's `api_ca_file`,
/// `api_token_file`, `api_client_cert`/`api_client_key`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaemonChannel {
    pub ca_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

fn failed(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> RunError {
    RunError::ControlPlaneStart(format!("{what}: {:#}", anyhow::Error::new(e)))
}

/// The control plane's access settings and the daemon's side of them, for a control plane
/// listening on `server_ip`; files go to `dir`.
pub fn secure_channel(
    security: &ControlPlaneSecurity,
    server_ip: IpAddr,
    dir: &Path,
) -> Result<(Access, DaemonChannel), RunError> {
    let mut access = Access::default();
    let mut channel = DaemonChannel::default();
    if security.tls {
        let pki = RunPki::generate(&[server_ip])
            .map_err(|e| failed("generating the run's certificates", e))?;
        let files = pki
            .write(dir)
            .map_err(|e| failed("writing the run's certificates", e))?;
        access.tls = Some(
            pki.server_config(security.client_cert)
                .map_err(|e| failed("configuring TLS", e))?,
        );
        channel.ca_file = Some(files.ca);
        if security.client_cert {
            channel.client_cert = Some((files.client_cert, files.client_key));
        }
    } else if security.client_cert {
        return Err(RunError::ControlPlaneStart(
            "a client certificate needs tls = true".into(),
        ));
    }
    if let Some(token) = &security.token {
        let path = dir.join("cp-token");
        crate::private_file::write(&path, token.as_bytes(), 0o600)
            .map_err(|e| failed("writing the token file", e))?;
        access.token = Some(token.clone());
        channel.token_file = Some(path);
    }
    Ok((access, channel))
}

/// A random bearer token for one run (64 hex characters).
pub fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_by_default_and_files_for_each_credential() {
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "198.18.0.1".parse().unwrap();
        let (access, channel) = secure_channel(&Default::default(), ip, dir.path()).unwrap();
        assert!(access.tls.is_none() && access.token.is_none());
        assert_eq!(channel, DaemonChannel::default());

        let all = ControlPlaneSecurity {
            tls: true,
            token: Some(random_token()),
            client_cert: true,
        };
        let (access, channel) = secure_channel(&all, ip, dir.path()).unwrap();
        assert!(access.tls.is_some());
        let token_file = channel.token_file.unwrap();
        assert_eq!(
            std::fs::read_to_string(token_file).unwrap(),
            all.token.unwrap()
        );
        assert!(channel.ca_file.unwrap().exists());
        assert!(channel.client_cert.is_some());

        let bad = ControlPlaneSecurity {
            client_cert: true,
            ..Default::default()
        };
        assert!(secure_channel(&bad, ip, dir.path()).is_err());
    }
}
