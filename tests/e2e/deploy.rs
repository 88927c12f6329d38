//! The deployment files in `deploy/` and the GitHub workflows, which nothing here can
//! run (no Docker engine, no cluster, no GitHub): each passes its schema, and the way
//! the Compose file and the Kubernetes manifests wire keys, router, client, source
//! and health checks together is rehearsed on loopback: the same arguments, scripts,
//! configuration and checks, with the cluster's names, ports and mount points
//! swapped for local ones.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

use crate::harness::{Proc, addr_in, assert_code, clean_conduit, conduit_bin, have};
use crate::http::wait_for;
use crate::ops::echo_through;
use crate::sources;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every document of a YAML file (aliases resolved).
fn yaml(rel: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The document of `kind` named `name` in a manifest file.
fn manifest(rel: &str, kind: &str, name: &str) -> Yaml {
    yaml(rel)
        .into_iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("{rel} has no {kind} {name}"))
}

fn strs(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .unwrap_or_else(|| panic!("not a list: {y:?}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// `s` with each `from` replaced by its `to`, in order.
fn swap(s: &str, pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .fold(s.to_owned(), |s, (from, to)| s.replace(from, to))
}

/// A `conduit` command with only `env` of the CONDUIT_ variables.
fn conduit(env: &[(String, String)]) -> Command {
    let mut c = clean_conduit();
    c.envs(env.iter().map(|(k, v)| (k, v)));
    c
}

/// The port of a container's named port.
fn container_port(container: &Yaml, name: &str) -> i64 {
    container["ports"]
        .as_vec()
        .expect("ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("no port named {name}"))
}

/// A Service's only port: (port, targetPort).
fn service_port(service: &Yaml) -> (i64, String) {
    let p = &service["spec"]["ports"][0];
    (
        p["port"].as_i64().expect("port"),
        p["targetPort"]
            .as_str()
            .expect("a named targetPort")
            .to_owned(),
    )
}

/// A tool `tests/setup.sh` installs from PyPI into `target/pytools`, or one on PATH.
fn py_tool(name: &str) -> String {
    let p = root().join("target/pytools/bin").join(name);
    if p.exists() {
        p.display().to_string()
    } else {
        name.to_owned()
    }
}

#[test]
fn the_manifests_compose_file_and_workflows_pass_their_schemas() {
    let k8s = root().join("deploy/kubernetes");
    let kv = py_tool("kubernetes-validate");
    if have(&kv, "--version") {
        // kustomization.yaml is kubectl's, not an API object: no schema.
        let files: Vec<PathBuf> = [
            "namespace",
            "configmap",
            "router",
            "client",
            "secrets.example",
        ]
        .iter()
        .map(|f| k8s.join(format!("{f}.yaml")))
        .collect();
        let documents: usize = files
            .iter()
            .map(|f| {
                YamlLoader::load_from_str(&std::fs::read_to_string(f).unwrap())
                    .unwrap()
                    .len()
            })
            .sum();
        let out = Command::new(&kv)
            .arg("--strict")
            .args(&files)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert_eq!(
            text.matches(" passed for resource ").count(),
            documents,
            "{text}"
        );
    }
    let cj = py_tool("check-jsonschema");
    if have(&cj, "--version") {
        for (schema, files) in [
            (
                "vendor.github-workflows",
                &[".github/workflows/ci.yml", ".github/workflows/release.yml"][..],
            ),
            ("vendor.dependabot", &[".github/dependabot.yml"]),
            ("vendor.compose-spec", &["deploy/docker-compose.yml"]),
        ] {
            let out = Command::new(&cj)
                .args(["--builtin-schema", schema])
                .args(files.iter().map(|f| root().join(f)))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{files:?} against {schema}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// `docker compose up`: the `keys` job's script makes and exchanges the key pairs,
/// the router and the client run their commands with the shared environment, and the
/// client's healthcheck passes once it carries traffic.
#[test]
fn the_compose_files_wiring_carries_traffic_on_loopback() {
    let doc = &yaml("deploy/docker-compose.yml")[0];
    let services = &doc["services"];
    let dir = tempfile::tempdir().unwrap();
    let (rhome, chome) = (dir.path().join("router"), dir.path().join("client"));
    for d in [&rhome, &chome] {
        std::fs::create_dir(d).unwrap();
    }
    let (rhome, chome) = (rhome.display().to_string(), chome.display().to_string());

    // The keys job's script, run as this user: without the lines and options that
    // hand the files to the image's uid 10001, and with its volumes mounted here.
    let script = services["keys"]["command"][0].as_str().expect("the script");
    assert_eq!(
        strs(&services["keys"]["volumes"]),
        ["router-home:/router", "client-home:/client"]
    );
    let script: Vec<String> = script
        .lines()
        .filter(|l| !l.starts_with("chown "))
        .map(|l| {
            swap(
                l,
                &[
                    ("setpriv --reuid=10001 --regid=10001 --clear-groups ", ""),
                    ("-o 10001 -g 10001 ", ""),
                    (" /router", &format!(" {rhome}")),
                    ("=/router", &format!("={rhome}")),
                    (" /client", &format!(" {chome}")),
                    ("=/client", &format!("={chome}")),
                ],
            )
        })
        .collect();
    let bin_dir = Path::new(conduit_bin()).parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Twice, as on every `docker compose up`: the second run keeps the keys.
    let mut pubs = Vec::new();
    for _ in 0..2 {
        let out = Command::new("sh")
            .args(["-ec", &script.join("\n")])
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the keys job: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pubs.push(std::fs::read_to_string(format!("{rhome}/authorized_clients")).unwrap());
    }
    assert_eq!(pubs[0], pubs[1], "the second run made new keys");

    // Both services take the shared environment, with the volume at CONDUIT_HOME.
    let shared: Vec<(String, String)> = doc["x-conduit"]["environment"]
        .as_hash()
        .expect("environment")
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_owned(),
                v.as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let env_in = |home: &str| -> Vec<(String, String)> {
        shared
            .iter()
            .map(|(k, v)| (k.clone(), v.replace("/var/lib/conduit", home)))
            .collect()
    };
    assert_eq!(
        strs(&services["router"]["volumes"]),
        ["router-home:/var/lib/conduit"]
    );
    assert_eq!(
        strs(&services["client"]["volumes"]),
        ["client-home:/var/lib/conduit"]
    );

    let source = sources::echo().to_string();
    let router_args: Vec<String> = strs(&services["router"]["command"])
        .iter()
        .map(|a| swap(a, &[("0.0.0.0:9999", "127.0.0.1:0"), ("web:80", &source)]))
        .collect();
    // The client dials the router's service name and the port it listens on.
    assert!(strs(&services["router"]["command"]).contains(&"--bind=0.0.0.0:9999".to_owned()));
    assert!(strs(&services["client"]["command"]).contains(&"--router=router:9999".to_owned()));
    let router = Proc::spawn(conduit(&env_in(&rhome)).args(&router_args));
    let raddr = addr_in(&router.wait_stdout("router listening on"));
    let client_args: Vec<String> = strs(&services["client"]["command"])
        .iter()
        .map(|a| {
            swap(
                a,
                &[
                    ("router:9999", &raddr.to_string()),
                    ("web:80", &source),
                    ("0.0.0.0:8080", "127.0.0.1:0"),
                    ("/var/lib/conduit", &chome),
                ],
            )
        })
        .collect();
    // The port the host publishes is the one the client binds.
    assert_eq!(strs(&services["client"]["ports"]), ["127.0.0.1:8080:8080"]);
    assert!(strs(&services["client"]["command"]).contains(&"--bind=0.0.0.0:8080".to_owned()));
    let client = Proc::spawn(conduit(&env_in(&chome)).args(&client_args));
    let taddr: SocketAddr = addr_in(&client.wait_stdout("listening on"));
    client.wait_stdout("connected to router");
    echo_through(taddr, 256 * 1024, 41);

    let check = strs(&services["client"]["healthcheck"]["test"]);
    assert_eq!(check[..2], ["CMD", "conduit"]);
    let out = conduit(&env_in(&chome)).args(&check[2..]).output().unwrap();
    assert_code(out.status, 0, &String::from_utf8_lossy(&out.stderr));
}

/// `kubectl apply -k deploy/kubernetes`: the Services, ports and names agree, the
/// router runs with its arguments and the Secret's files, the client runs `up` with
/// the ConfigMap's conduit.toml, and its readiness probe passes once it carries
/// traffic.
#[test]
fn the_kubernetes_wiring_carries_traffic_on_loopback() {
    let k = "deploy/kubernetes";
    let router_dep = manifest(&format!("{k}/router.yaml"), "Deployment", "conduit-router");
    let router_svc = manifest(&format!("{k}/router.yaml"), "Service", "conduit-router");
    let client_dep = manifest(&format!("{k}/client.yaml"), "Deployment", "conduit-client");
    let client_svc = manifest(&format!("{k}/client.yaml"), "Service", "conduit-client");
    let config = manifest(
        &format!("{k}/configmap.yaml"),
        "ConfigMap",
        "conduit-client-config",
    );
    let router_keys = manifest(
        &format!("{k}/secrets.example.yaml"),
        "Secret",
        "conduit-router-keys",
    );
    let client_keys = manifest(
        &format!("{k}/secrets.example.yaml"),
        "Secret",
        "conduit-client-keys",
    );
    let rc = &router_dep["spec"]["template"]["spec"]["containers"][0];
    let cc = &client_dep["spec"]["template"]["spec"]["containers"][0];
    let toml_text = config["data"]["conduit.toml"]
        .as_str()
        .expect("conduit.toml");
    let file: toml::Value = toml::from_str(toml_text).expect("conduit.toml parses");

    // The names and ports agree from end to end.
    let router_args = strs(&rc["args"]);
    let (svc_port, target) = service_port(&router_svc);
    assert_eq!(target, "tunnel");
    assert_eq!(container_port(rc, "tunnel"), svc_port);
    assert!(router_args.contains(&format!("--bind=0.0.0.0:{svc_port}")));
    assert_eq!(file["router"]["port"].as_integer(), Some(svc_port));
    assert_eq!(
        file["router"]["host"].as_str(),
        Some("conduit-router.conduit.svc.cluster.local")
    );
    assert_eq!(
        router_svc["metadata"]["namespace"].as_str(),
        Some("conduit")
    );
    let tunnel = &file["tunnels"][0];
    let (name, source_name, bind) = (
        tunnel["name"].as_str().unwrap(),
        tunnel["source"].as_str().unwrap(),
        tunnel["bind"].as_str().unwrap(),
    );
    assert!(router_args.contains(&format!("--allow={source_name}")));
    let (client_port, target) = service_port(&client_svc);
    assert_eq!(target, "service");
    assert_eq!(container_port(cc, "service"), client_port);
    assert_eq!(bind, format!("0.0.0.0:{client_port}"));
    assert_eq!(
        strs(&cc["readinessProbe"]["exec"]["command"]),
        ["conduit", "health", "--tunnel", name]
    );
    // The init containers install the files the Secrets hold.
    for (dep, secret, key) in [
        (&router_dep, &router_keys, "router.key"),
        (&client_dep, &client_keys, "client.key"),
    ] {
        let init = &dep["spec"]["template"]["spec"]["initContainers"][0]["args"][0];
        assert!(
            init.as_str().unwrap().contains(&format!(
                "install -m 0600 /secrets/{key} /var/lib/conduit/keys/{key}"
            )),
            "{init:?}"
        );
        assert!(!secret["stringData"][key].is_badvalue(), "{key}");
    }
    assert!(!router_keys["stringData"]["authorized_clients"].is_badvalue());

    // The homes as the init containers leave them: the key pairs made here (the
    // Secrets hold placeholders), the client's public key in the router's Secret.
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p).display().to_string();
    let (rhome, chome, secrets, etc) =
        (path("router"), path("client"), path("secrets"), path("etc"));
    std::fs::create_dir(&secrets).unwrap();
    std::fs::create_dir(&etc).unwrap();
    for (home, key) in [(&rhome, "router"), (&chome, "client")] {
        let out = conduit(&[("CONDUIT_HOME".into(), home.clone())])
            .args(["init", "--name", key])
            .output()
            .unwrap();
        assert_code(out.status, 0, &String::from_utf8_lossy(&out.stderr));
    }
    let client_pub = std::fs::read_to_string(format!("{chome}/keys/client.pub")).unwrap();
    std::fs::write(format!("{secrets}/authorized_clients"), client_pub).unwrap();
    let router_pub = std::fs::read_to_string(format!("{rhome}/keys/router.pub")).unwrap();
    let router_pub = router_pub.split_whitespace().next().unwrap();

    let env_of = |c: &Yaml, home: &str| -> Vec<(String, String)> {
        c["env"]
            .as_vec()
            .unwrap()
            .iter()
            .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
            .map(|(k, v)| (k.to_owned(), v.replace("/var/lib/conduit", home)))
            .collect()
    };
    let source = sources::echo().to_string();
    let router_args: Vec<String> = router_args
        .iter()
        .map(|a| {
            swap(
                a,
                &[
                    (&format!("0.0.0.0:{svc_port}"), "127.0.0.1:0"),
                    ("/secrets", &secrets),
                    (source_name, &source),
                ],
            )
        })
        .collect();
    let router = Proc::spawn(conduit(&env_of(rc, &rhome)).args(&router_args));
    let raddr = addr_in(&router.wait_stdout("router listening on"));

    // The ConfigMap's file, pointed at this router, source and home.
    let placeholder = file["router"]["public_key"].as_str().unwrap();
    let text = swap(
        toml_text,
        &[
            ("conduit-router.conduit.svc.cluster.local", "127.0.0.1"),
            (
                &format!("port = {svc_port}"),
                &format!("port = {}", raddr.port()),
            ),
            (placeholder, router_pub),
            ("/var/lib/conduit", &chome),
            (source_name, &source),
            (bind, "127.0.0.1:0"),
        ],
    );
    std::fs::write(format!("{etc}/conduit.toml"), text).unwrap();
    let client_args: Vec<String> = strs(&cc["args"])
        .iter()
        .map(|a| a.replace("/etc/conduit", &etc))
        .collect();
    let client_env = env_of(cc, &chome);
    let mut client = Proc::spawn(conduit(&client_env).args(&client_args));
    let list = || -> Vec<serde_json::Value> {
        let out = conduit(&client_env)
            .args(["list", "--format", "json"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    let taddr: SocketAddr = wait_for("the tunnel to run", || {
        assert!(client.running(), "`up` exited: {}", client.stderr());
        let l = list();
        let t = l.iter().find(|t| t["name"] == name)?;
        (t["status"] == "running").then(|| t["bind"].as_str()?.parse().ok())?
    });
    echo_through(taddr, 256 * 1024, 43);
    let probe = strs(&cc["readinessProbe"]["exec"]["command"]);
    let out = conduit(&client_env).args(&probe[1..]).output().unwrap();
    assert_code(out.status, 0, &String::from_utf8_lossy(&out.stderr));
    let status = client.stop();
    assert_code(status, 0, &client.stderr());
    assert!(list().is_empty(), "{:?}", list());
}
