//! `conduit start`: a tunnel, in the background (a detached, registered process) or
//! in this terminal with `--foreground`.

use std::ffi::OsString;
use std::time::Duration;

use anyhow::Result;
use conduit_controlplane::process::{RegisteredTunnel, Registration, ensure_name_free};
use conduit_controlplane::spawn::{Launch, Standing, launch};
use conduit_controlplane::{ClientTunnel, Home, LinkStatus, TunnelSettings, keys};
use conduit_proto::Secret;

use super::{dataplane_options, listen_addr, remote_addr, runtime, say, secs, shutdown_signal};
use crate::args::StartArgs;

pub(crate) fn run(home: &Home, a: StartArgs) -> Result<()> {
    let bind = listen_addr("--bind", &a.bind)?;
    let router = remote_addr("--router", &a.router)?;
    let source = remote_addr("--source", &a.source)?;
    let router_key = keys::load_public(&a.router_key, "--router-key")?;
    let key_path = a.key.clone().unwrap_or_else(|| home.private_key("client"));
    let identity = keys::load_private(&key_path, "client")?;
    let name = a.name.clone().unwrap_or_else(|| match bind.port() {
        0 => "tunnel".to_owned(),
        p => format!("tunnel-{p}"),
    });
    ensure_name_free(home, &name)?;
    if !a.foreground {
        return background(home, &name, a.token.clone());
    }
    let settings = TunnelSettings {
        name: name.clone(),
        router: router.clone(),
        router_key,
        identity,
        source: source.clone(),
        bind,
        token: a.token,
        pool_size: a.pool_size,
        connect_timeout: secs(10),
        handshake_timeout: secs(a.handshake_timeout),
        max_connections: a.max_connections,
        dataplane: dataplane_options(&a.engine),
    };
    let registration = Registration {
        home: home.clone(),
        name: name.clone(),
        router: router.clone(),
        source,
        file: None,
        digest: String::new(),
        log_file: a.detached.then(|| home.logs().join(format!("{name}.log"))),
        drain: secs(a.drain_timeout),
    };
    runtime(1)?.block_on(async move {
        if a.detached {
            ignore_hangups();
        }
        let tunnel = ClientTunnel::start(settings)?;
        let addr = tunnel.local_addr();
        let (workers, engine) = (tunnel.workers(), tunnel.engine());
        let status = tunnel.status();
        let process = RegisteredTunnel::register(tunnel, registration).await?;
        let signals = shutdown_signal();
        say(format_args!(
            "tunnel {name:?} listening on {addr} (id {}, {workers} workers, {engine})",
            process.id()
        ));
        let announcer = tokio::spawn(announce(name, router, status));
        let res = process.run(signals).await;
        announcer.abort();
        res.map_err(anyhow::Error::from)
    })
}

/// Prints "connected", and the first "retrying", as the link changes.
async fn announce(
    name: String,
    router: String,
    mut status: tokio::sync::watch::Receiver<LinkStatus>,
) {
    let mut said_retrying = false;
    loop {
        let now = status.borrow_and_update().clone();
        match now {
            LinkStatus::Connected { .. } => {
                say(format_args!("tunnel {name:?} connected to router {router}"));
                said_retrying = false;
            }
            LinkStatus::Retrying { error, .. } if !said_retrying => {
                say(format_args!(
                    "tunnel {name:?}: {error}; retrying in the background (`conduit status` shows progress)"
                ));
                said_retrying = true;
            }
            _ => {}
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

/// A background tunnel ignores SIGHUP: closing the terminal must not stop it.
fn ignore_hangups() {
    #[cfg(unix)]
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        tokio::spawn(async move { while hup.recv().await.is_some() {} });
    }
}

/// Relaunches this command as a detached `--foreground --detached` process.
fn background(home: &Home, name: &str, token: Option<Secret>) -> Result<()> {
    // The child inherits this working directory, so relative paths keep their meaning.
    let exe = std::env::current_exe()?;
    // The token travels in the child's environment, not on its command line.
    let mut args = without_flag(std::env::args_os().skip(1), "--token");
    let pos = args.iter().position(|a| a == "start").map_or(0, |p| p + 1);
    args.insert(pos, "--foreground".into());
    args.insert(pos + 1, "--detached".into());
    let l = launch(Launch {
        exe,
        args,
        home: home.clone(),
        name: name.to_owned(),
        timeout: Duration::from_secs(30),
        token,
    })?;
    match l.standing {
        Standing::Connected => say(format_args!(
            "started tunnel {name:?} (id {}, pid {}) listening on {}",
            l.id, l.pid, l.addr
        )),
        Standing::Retrying(line) => {
            say(format_args!(
                "started tunnel {name:?} (id {}, pid {}) listening on {}",
                l.id, l.pid, l.addr
            ));
            say(line);
        }
    }
    say(format_args!("log: {}", l.log_file.display()));
    Ok(())
}

/// `args` without `flag VALUE` and `flag=VALUE`.
fn without_flag(args: impl IntoIterator<Item = OsString>, flag: &str) -> Vec<OsString> {
    let with_value = format!("{flag}=");
    let mut out = Vec::new();
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let s = a.to_string_lossy();
        if s == flag {
            args.next();
        } else if !s.starts_with(&with_value) {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_taken_off_the_command_line() {
        let args = [
            "start",
            "--token",
            "s3cret",
            "--bind",
            "b",
            "--token=x",
            "--name",
            "n",
        ];
        let got = without_flag(args.iter().map(OsString::from), "--token");
        assert_eq!(got, ["start", "--bind", "b", "--name", "n"]);
    }
}
