//! `conduit version`.

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
    say(format_args!(
        "protocol:   {}",
        conduit_proto::version::CURRENT
    ));
    Ok(())
}
