//! Records the git commit, build date and target for `conduit version`.

use std::process::Command;

fn main() {
    // Given by the builder where there is no .git (a container build's context
    // leaves it out): `--build-arg CONDUIT_GIT_COMMIT=$(git rev-parse --short=12 HEAD)`.
    println!("cargo:rerun-if-env-changed=CONDUIT_GIT_COMMIT");
    let given = std::env::var("CONDUIT_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let commit = given
        .map(|c| c.trim().to_owned())
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CONDUIT_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=CONDUIT_BUILD_DATE={date}");
    println!(
        "cargo:rustc-env=CONDUIT_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs");
}
