//! `CONDUIT_HOME`: where keys, the tunnel registry, runtime files and logs live.

use std::path::{Path, PathBuf};

use crate::Error;

/// The layout of a Conduit home directory.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `$CONDUIT_HOME`, or `~/.conduit`.
    pub fn from_env() -> Result<Self, Error> {
        if let Some(h) = std::env::var_os("CONDUIT_HOME").filter(|h| !h.is_empty()) {
            return Ok(Self::at(PathBuf::from(h)));
        }
        match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(home) => Ok(Self::at(PathBuf::from(home).join(".conduit"))),
            None => Err(Error::Config(
                "neither CONDUIT_HOME nor HOME is set: set CONDUIT_HOME to the directory for Conduit's keys and state"
                    .into(),
            )),
        }
    }

    /// A home rooted at `root`.
    pub fn at(root: PathBuf) -> Self {
        Self { root }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `keys/`.
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }

    /// `keys/NAME.key`.
    pub fn private_key(&self, name: &str) -> PathBuf {
        self.keys().join(format!("{name}.key"))
    }

    /// `keys/NAME.pub`.
    pub fn public_key(&self, name: &str) -> PathBuf {
        self.keys().join(format!("{name}.pub"))
    }

    /// `known_routers`: the keys tunnels learned from their routers.
    pub fn known_routers(&self) -> PathBuf {
        self.root.join("known_routers")
    }

    /// `authorized_clients`.
    pub fn authorized_clients(&self) -> PathBuf {
        self.root.join("authorized_clients")
    }

    /// `tunnels/`: the process registry.
    pub fn tunnels(&self) -> PathBuf {
        self.root.join("tunnels")
    }

    /// `run/`: control sockets.
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }

    /// `logs/`.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Creates `dir` (and parents) readable by the owner only.
    pub fn ensure_private_dir(dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(dir).map_err(|source| Error::File {
            what: "cannot create directory",
            path: dir.to_owned(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        Ok(())
    }
}
