//! `conduit init`, `keys`, `config` and `tune`: keys, configuration files and the
//! host's settings.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use conduit_controlplane::config::Override;

/// `conduit tune`.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 when no setting falls short, 1 when one does \
                        (UNKNOWN settings, whose value could not be read, do not count)."
)]
pub(crate) struct TuneArgs {
    /// Report each setting that matters for a 10 Gbps gateway (open-file limits,
    /// socket buffers and backlogs, ports, kTLS, io_uring, cores) as OK, SHORT or
    /// UNKNOWN, with the recommended value and the command that fixes it. Changes
    /// nothing; exits 1 when a setting falls short.
    #[arg(long, required = true)]
    pub(crate) check: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ShowFormat::Text)]
    pub(crate) format: ShowFormat,
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Key name: files keys/NAME.key and keys/NAME.pub.
    #[arg(long, default_value = "client")]
    pub(crate) name: String,
    /// Replace an existing key of that name.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Print a public key (the line to give the other side).
    Show {
        /// Key name.
        #[arg(long, default_value = "client")]
        name: String,
    },
    /// Rotate a running tunnel's key: the tunnel makes a new key, its router
    /// authorizes it (admitting the old one for its grace period, a day by default),
    /// the tunnel's key file is replaced and it reconnects with the new key.
    Rotate(RotateArgs),
}

/// Which tunnels rotate their keys.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["tunnel", "all"])))]
pub(crate) struct RotateArgs {
    /// The tunnel, by name or id.
    #[arg(long)]
    pub(crate) tunnel: Option<String>,
    /// Every running tunnel (tunnels sharing a key file rotate it once).
    #[arg(long)]
    pub(crate) all: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Write a starting configuration file: every key, documented, with example
    /// values to replace (`-f -` prints it). Never overwrites without --force.
    Init {
        /// Where [default: conduit.toml, or router.toml with --router]; `-` prints it.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: Option<PathBuf>,
        /// A router's file instead of a client's.
        #[arg(long)]
        router: bool,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Report every problem in a configuration file, each with its key path; exits 64
    /// if there is an error.
    Validate {
        #[command(flatten)]
        args: ConfigArgs,
        /// Output format: text (problems on stderr, one a line), or json (one
        /// document on stdout: valid, counts, and each problem's severity, key path,
        /// message and origin; the exit code and the summary on stderr as for text).
        #[arg(long, value_enum, default_value_t = ShowFormat::Text)]
        format: ShowFormat,
    },
    /// Print the configuration in effect (file, then `CONDUIT_<SECTION>_<KEY>`
    /// variables, then --set), each value with where it came from; secrets print as ***.
    Show {
        #[command(flatten)]
        args: ConfigArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ShowFormat::Text)]
        format: ShowFormat,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    /// The configuration file [default: conduit.toml, or router.toml with --router].
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub(crate) file: Option<PathBuf>,
    /// The file configures a router (`[router] bind`, `allow`…), not a client.
    #[arg(long)]
    pub(crate) router: bool,
    /// Override one value, over the file and the environment: SECTION.KEY=VALUE, such
    /// as performance.workers=2. Repeatable; `[[tunnels]]` cannot be set this way.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", value_parser = Override::parse_set)]
    pub(crate) set: Vec<Override>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ShowFormat {
    Text,
    Json,
}
