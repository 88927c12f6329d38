//! `CONDUIT_HOME`: where keys, the tunnel registry, runtime files and logs live.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::Error;

/// The layout of a Conduit home directory.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `$CONDUIT_HOME`, or `~/.conduit`, made absolute: the registry records paths in
    /// it, which must mean the same from any working directory.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_vars(std::env::var_os("CONDUIT_HOME"), std::env::var_os("HOME"))
    }

    fn from_vars(conduit_home: Option<OsString>, home: Option<OsString>) -> Result<Self, Error> {
        let root = match (conduit_home, home.filter(|h| !h.is_empty())) {
            (Some(h), _) if h.is_empty() => {
                return Err(Error::Config(
                    "CONDUIT_HOME is set but empty: unset it (for ~/.conduit) or give a directory"
                        .into(),
                ));
            }
            // Quoted in a shell, or set by a service manager or a container's
            // environment: taken as it is, it would be a directory named `~` under
            // the working directory (which a later `rm -rf ~` would be a step from).
            (Some(h), _) if h.as_encoded_bytes().starts_with(b"~") => {
                let h = h.to_string_lossy();
                return Err(Error::Config(format!(
                    "CONDUIT_HOME ({h:?}) starts with ~, which no shell expanded (it was \
                     quoted, or set by a service manager or a container): write the home \
                     directory in full, such as /home/USER{}",
                    h.strip_prefix('~').unwrap_or_default()
                )));
            }
            (Some(h), _) => PathBuf::from(h),
            (None, Some(home)) => PathBuf::from(home).join(".conduit"),
            (None, None) => {
                return Err(Error::Config(
                    "neither CONDUIT_HOME nor HOME is set: set CONDUIT_HOME to the directory for Conduit's keys and state"
                        .into(),
                ));
            }
        };
        let root = std::path::absolute(&root).map_err(|source| Error::File {
            what: "cannot make CONDUIT_HOME absolute (give it as an absolute path)",
            path: root.clone(),
            source,
        })?;
        // A file there would read as a home with no tunnels and no keys.
        if root.exists() && !root.is_dir() {
            return Err(Error::Config(format!(
                "{} (CONDUIT_HOME) is not a directory: point CONDUIT_HOME at a directory \
                 (it is created where missing), or move the file away",
                root.display()
            )));
        }
        Ok(Self::at(root))
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
        // Every directory it creates (CONDUIT_HOME itself too) is its owner's alone
        // from the start, whatever the umask.
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(dir)
            .map_err(|source| match file_in_the_way(dir) {
                Some(file) => Error::Config(format!(
                    "cannot create directory {}: {} is a file, not a directory; move it out of \
                 the way (Conduit makes the directory), or point CONDUIT_HOME (or the setting \
                 that names this path) elsewhere",
                    dir.display(),
                    file.display()
                )),
                None => Error::File {
                    what: "cannot create directory",
                    path: dir.to_owned(),
                    source,
                },
            })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        Ok(())
    }
}

/// The file (not a directory) that stands where `dir` or one of its parents should
/// be, making `dir` impossible to create.
pub fn file_in_the_way(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .find(|p| p.exists() && !p.is_dir())
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_where_a_directory_should_be_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("logs");
        std::fs::write(&file, b"").unwrap();
        let dir = file.join("deeper");
        assert_eq!(file_in_the_way(&dir), Some(file.clone()));
        assert_eq!(file_in_the_way(tmp.path()), None);
        assert_eq!(
            Home::ensure_private_dir(&dir).unwrap_err().to_string(),
            format!(
                "cannot create directory {}: {} is a file, not a directory; move it out of \
                 the way (Conduit makes the directory), or point CONDUIT_HOME (or the setting \
                 that names this path) elsewhere",
                dir.display(),
                file.display()
            )
        );
    }

    fn root(conduit_home: Option<&str>, home: Option<&str>) -> Result<PathBuf, String> {
        Home::from_vars(conduit_home.map(Into::into), home.map(Into::into))
            .map(|h| h.root().to_owned())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_home_that_is_a_file_is_an_error() {
        assert_eq!(
            root(Some("/dev/null"), None),
            Err(
                "/dev/null (CONDUIT_HOME) is not a directory: point CONDUIT_HOME at a \
                 directory (it is created where missing), or move the file away"
                    .into()
            )
        );
    }

    #[test]
    fn the_home_is_absolute_and_an_empty_conduit_home_is_an_error() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(root(Some("/srv/c"), Some("/root")), Ok("/srv/c".into()));
        assert_eq!(root(Some("relh"), None), Ok(cwd.join("relh")));
        assert_eq!(root(None, Some("/home/u")), Ok("/home/u/.conduit".into()));
        assert_eq!(root(None, Some("u")), Ok(cwd.join("u/.conduit")));
        assert_eq!(
            root(Some("~/.conduit"), Some("/home/u")),
            Err(
                "CONDUIT_HOME (\"~/.conduit\") starts with ~, which no shell expanded (it was \
                 quoted, or set by a service manager or a container): write the home \
                 directory in full, such as /home/USER/.conduit"
                    .into()
            )
        );
        assert_eq!(root(Some("a/~"), None), Ok(cwd.join("a/~")));
        assert_eq!(
            root(Some(""), Some("/home/u")),
            Err(
                "CONDUIT_HOME is set but empty: unset it (for ~/.conduit) or give a directory"
                    .into()
            )
        );
        assert_eq!(
            root(None, Some("")),
            Err(
                "neither CONDUIT_HOME nor HOME is set: set CONDUIT_HOME to the directory for \
                 Conduit's keys and state"
                    .into()
            )
        );
    }

    #[cfg(unix)]
    #[test]
    fn private_directories_and_their_new_parents_are_the_owners_alone_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        // nextest runs each test in a process of its own: the umask is this test's.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let made = Home::ensure_private_dir(&home.join("keys"));
        nix::sys::stat::umask(old);
        made.unwrap();
        for d in [&home, &home.join("keys")] {
            let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
    }
}
