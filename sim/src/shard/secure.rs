//! The secured channel of a sharded run. A scenario with `[control_plane] tls` or `token` makes
//! the gateway generate the run's CA and token, as `jitwg run` does; the gateway then publishes
//! the CA certificate and the token as files in `OUT/credentials/` for the user to hand to the
//! fleets (`jitwg run --shards` and the Kubernetes base do it for them), and each fleet trusts
//! that CA alone and sends that token to the control plane and the shard API.

use std::path::{Path, PathBuf};

use crate::run::channel::DaemonChannel;
use crate::scenario::Scenario;

/// The CA certificate file the gateway publishes, under `OUT/credentials/`.
pub const CA_FILE: &str = "control-plane-ca.pem";
/// The bearer-token file the gateway publishes, under `OUT/credentials/`.
pub const TOKEN_FILE: &str = "token";

/// What went wrong with the credentials of a sharded run.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a PEM certificate", path.display())]
    Certificate {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("{} is empty", path.display())]
    EmptyToken { path: PathBuf },
    #[error(
        "the scenario's control plane {needs}, so the fleet needs {flag} FILE (the gateway \
         prints where it wrote it: OUT/credentials/{file})"
    )]
    Missing {
        needs: &'static str,
        flag: &'static str,
        file: &'static str,
    },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a fleet presents: the run's CA (its only trusted root) and the bearer token.
#[derive(Clone, Default)]
pub struct FleetCredentials {
    pub ca: Option<reqwest::Certificate>,
    pub token: Option<String>,
}

impl std::fmt::Debug for FleetCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("FleetCredentials")
            .field("ca", &self.ca.is_some())
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CredentialsError> {
    std::fs::read(path).map_err(|source| CredentialsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl FleetCredentials {
    /// Loads the files given to `jitwg fleet` and checks them against what the scenario's
    /// control plane requires (a missing one is a usage error; an extra one is ignored).
    pub fn load(
        scenario: &Scenario,
        ca: Option<&Path>,
        token: Option<&Path>,
    ) -> Result<FleetCredentials, CredentialsError> {
        let cp = &scenario.control_plane;
        let mut credentials = FleetCredentials::default();
        if cp.tls {
            let path = ca.ok_or(CredentialsError::Missing {
                needs: "serves HTTPS from the run's own CA",
                flag: "--control-plane-ca",
                file: CA_FILE,
            })?;
            let pem = read(path)?;
            credentials.ca = Some(reqwest::Certificate::from_pem(&pem).map_err(|source| {
                CredentialsError::Certificate {
                    path: path.to_path_buf(),
                    source,
                }
            })?);
        }
        if cp.token {
            let path = token.ok_or(CredentialsError::Missing {
                needs: "requires a bearer token",
                flag: "--token-file",
                file: TOKEN_FILE,
            })?;
            let text = String::from_utf8_lossy(&read(path)?).trim().to_string();
            if text.is_empty() {
                return Err(CredentialsError::EmptyToken {
                    path: path.to_path_buf(),
                });
            }
            credentials.token = Some(text);
        }
        Ok(credentials)
    }

    /// `https` when the run's CA is in use, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.ca.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// The files the gateway published for the fleets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    pub ca: Option<PathBuf>,
    pub token: Option<PathBuf>,
}

impl Published {
    /// The `jitwg fleet` flags that hand these files over.
    pub fn fleet_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        if let Some(ca) = &self.ca {
            flags.extend(["--control-plane-ca".to_string(), ca.display().to_string()]);
        }
        if let Some(token) = &self.token {
            flags.extend(["--token-file".to_string(), token.display().to_string()]);
        }
        flags
    }
}

/// Copies the run's CA certificate and token (the daemon's channel files, in the lab's state
/// directory) to `dir` (`OUT/credentials/`). Each file appears whole (written aside, then
/// renamed), so a fleet waiting for it never reads half of one.
pub fn publish(channel: &DaemonChannel, dir: &Path) -> Result<Published, CredentialsError> {
    if channel.ca_file.is_none() && channel.token_file.is_none() {
        return Ok(Published::default());
    }
    std::fs::create_dir_all(dir).map_err(|source| CredentialsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let copy = |from: &Path, name: &str, mode: u32| -> Result<PathBuf, CredentialsError> {
        let bytes = read(from)?;
        let to = dir.join(name);
        let aside = dir.join(format!(".{name}.partial"));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::remove_file(&aside);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&aside)?
                .write_all(&bytes)?;
            std::fs::rename(&aside, &to)
        };
        write().map_err(|source| CredentialsError::Write {
            path: to.clone(),
            source,
        })?;
        Ok(to)
    };
    Ok(Published {
        // The token first: a waiting fleet starts once the CA (the last file) is there.
        token: channel
            .token_file
            .as_deref()
            .map(|p| copy(p, TOKEN_FILE, 0o600))
            .transpose()?,
        ca: channel
            .ca_file
            .as_deref()
            .map(|p| copy(p, CA_FILE, 0o644))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(tls: bool, token: bool) -> Scenario {
        let text = format!(
            "name = \"t\"\nduration = \"1s\"\n[control_plane]\ntls = {tls}\ntoken = {token}\n\
             [[population]]\nname = \"p\"\ncount = 1\n\
             arrival = {{ kind = \"constant\", rate = 1.0 }}\nbehaviour = {{ kind = \"connect_once\" }}\n"
        );
        crate::scenario::parse(
            Path::new("t.toml"),
            &text,
            &crate::scenario::Adjustments::default(),
        )
        .unwrap()
    }

    #[test]
    fn published_files_load_back_and_missing_ones_name_their_flag() {
        let dir = tempfile::tempdir().unwrap();
        let (_, channel) = crate::run::channel::secure_channel(
            &crate::run::channel::ControlPlaneSecurity {
                tls: true,
                token: Some("abc123".into()),
                client_cert: false,
            },
            "198.18.0.1".parse().unwrap(),
            dir.path(),
        )
        .unwrap();
        let out = dir.path().join("credentials");
        let published = publish(&channel, &out).unwrap();
        assert_eq!(published.ca, Some(out.join(CA_FILE)));
        assert_eq!(
            published.fleet_flags()[0..1],
            ["--control-plane-ca".to_string()]
        );
        let creds = FleetCredentials::load(
            &scenario(true, true),
            published.ca.as_deref(),
            published.token.as_deref(),
        )
        .unwrap();
        assert_eq!(creds.token.as_deref(), Some("abc123"));
        assert_eq!(creds.scheme(), "https");
        assert!(!format!("{creds:?}").contains("abc123"));

        let e = FleetCredentials::load(&scenario(true, true), None, published.token.as_deref())
            .unwrap_err();
        assert!(e.to_string().contains("--control-plane-ca"), "{e}");
        let e = FleetCredentials::load(&scenario(false, true), None, None).unwrap_err();
        assert!(e.to_string().contains("--token-file"), "{e}");
        let plain = FleetCredentials::load(&scenario(false, false), None, None).unwrap();
        assert_eq!(plain.scheme(), "http");
        assert!(publish(&DaemonChannel::default(), &out.join("none"))
            .unwrap()
            .fleet_flags()
            .is_empty());
        // The token file is the operator's secret.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(published.token.unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
    }
}
