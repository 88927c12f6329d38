//! `conduit version`: the build, and what this host offers it (io engines, kernel TLS).

use anyhow::Result;

use super::say;

pub(crate) fn run() -> Result<()> {
    say(format_args!("conduit {}", env!("CARGO_PKG_VERSION")));
    say(format_args!("commit:     {}", env!("CONDUIT_GIT_COMMIT")));
    say(format_args!("built:      {}", env!("CONDUIT_BUILD_DATE")));
    say(format_args!("target:     {}", env!("CONDUIT_TARGET")));
    let engines: Vec<String> = conduit_dataplane::engine::available()
        .iter()
        .map(ToString::to_string)
        .collect();
    say(format_args!("io engines: {}", engines.join(", ")));
    // The same live probe as `conduit tune --check`, which also says why not.
    let ktls = match conduit_dataplane::ktls::probe() {
        Ok(()) => "yes",
        Err(_) => "no (TLS records are sealed in userspace; `conduit tune --check` says why)",
    };
    say(format_args!("kernel TLS: {ktls}"));
    say(format_args!(
        "protocol:   {}",
        conduit_proto::version::CURRENT
    ));
    Ok(())
}
