//! The deployment examples under `deploy/` (issue 11) are valid: the Kubernetes manifest
//! parses, has what the README promises (two replicas, probes on /readyz and /healthz,
//! secrets from a Secret, Redis as the store) and passes a schema check against the
//! Kubernetes API (`kubernetes-validate` from PyPI, installed by
//! scripts/install-test-deps.sh); the systemd unit passes `systemd-analyze verify`; the
//! gateway configurations in both pass `portcullis check`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde::Deserialize;
use serde_yaml::Value;

fn deploy(path: &str) -> PathBuf {
    repo_root().join("deploy").join(path)
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// `portcullis check` on `config` with the secrets in the environment, as the examples pass
/// them (env or credentials that do not exist on this machine).
fn check_config(config: &Path) {
    let key = Command::new(gateway_binary())
        .args(["keys", "generate"])
        .output()
        .unwrap();
    let key = String::from_utf8(key.stdout).unwrap();
    let out = Command::new(gateway_binary())
        .arg("check")
        .arg("--config")
        .arg(config)
        .env(
            "PORTCULLIS_OIDC_CLIENT_SECRET",
            "a-client-secret-for-the-check",
        )
        .env("PORTCULLIS_SESSION_KEYS", key.trim())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kubernetes_manifest_has_two_replicas_probes_secrets_and_redis_and_passes_the_schema() {
    let path = deploy("kubernetes/portcullis.yaml");
    let docs = documents(&path);
    for d in &docs {
        for field in ["apiVersion", "kind", "metadata"] {
            assert!(!d[field].is_null(), "a document lacks {field}: {d:?}");
        }
    }
    let deployment = find(&docs, "Deployment", "portcullis");
    assert_eq!(deployment["apiVersion"], "apps/v1");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert!(
        !selector.is_null() && selector == labels,
        "selector must match the pod labels"
    );
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    let env = container["env"].as_sequence().unwrap();
    for (var, key) in [
        ("PORTCULLIS_OIDC_CLIENT_SECRET", "client-secret"),
        ("PORTCULLIS_SESSION_KEYS", "session-keys"),
    ] {
        let e = env
            .iter()
            .find(|e| e["name"] == var)
            .unwrap_or_else(|| panic!("{var} not set"));
        let secret_ref = &e["valueFrom"]["secretKeyRef"];
        assert_eq!(secret_ref["name"], "portcullis", "{var}");
        assert_eq!(secret_ref["key"], key, "{var}");
        let secret = find(&docs, "Secret", "portcullis");
        assert!(!secret["stringData"][key].is_null(), "Secret lacks {key}");
    }
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    // The gateway's configuration: Redis as the store, and it passes `portcullis check`.
    let config = find(&docs, "ConfigMap", "portcullis")["data"]["portcullis.toml"]
        .as_str()
        .unwrap();
    let table: toml::Table = config.parse().unwrap();
    let store = table["session"]["store"].as_str().unwrap();
    assert!(store.starts_with("redis://"), "{store}");
    let redis_host = store
        .trim_start_matches("redis://")
        .split(':')
        .next()
        .unwrap();
    find(&docs, "Service", redis_host);
    // The pod's grace period covers the gateway's shutdown delay and drain.
    let secs = |k: &str| {
        humantime::parse_duration(table["server"][k].as_str().unwrap())
            .unwrap()
            .as_secs()
    };
    assert!(
        grace > secs("shutdown_delay") + secs("shutdown_grace"),
        "terminationGracePeriodSeconds {grace} is shorter than shutdown_delay + shutdown_grace"
    );
    let dir = temp_dir("k8s-config");
    std::fs::write(dir.join("portcullis.toml"), config).unwrap();
    check_config(&dir.join("portcullis.toml"));

    // The schema check against the Kubernetes API, strict (unknown fields are errors).
    match Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .arg(&path)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "kubernetes-validate: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => println!(
            "SKIPPED the schema check: kubernetes-validate is not installed (pip install kubernetes-validate; scripts/install-test-deps.sh does)"
        ),
    }
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify_and_its_config_passes_check() {
    let unit = std::fs::read_to_string(deploy("systemd/portcullis.service")).unwrap();
    for line in [
        "DynamicUser=yes",
        "StateDirectory=portcullis",
        "LoadCredential=client-secret:",
        "LoadCredential=session-keys:",
        "KillSignal=SIGTERM",
    ] {
        assert!(unit.contains(line), "unit lacks {line}");
    }
    let config = deploy("systemd/portcullis.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("/run/credentials/portcullis.service/client-secret"));
    assert!(text.contains("/run/credentials/portcullis.service/session-keys"));
    assert!(text.contains("data_dir = \"/var/lib/portcullis\""));
    check_config(&config);

    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        println!("SKIPPED systemd-analyze verify: systemd-analyze is not installed");
        return;
    };
    assert!(version.status.success());
    // verify checks that ExecStart's binary exists: point it at the one under test.
    let dir = temp_dir("systemd-unit");
    let unit = unit.replace(
        "/usr/local/bin/portcullis",
        gateway_binary().to_str().unwrap(),
    );
    let path = dir.join("portcullis.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .current_dir(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys are only warnings (exit 0): any output is a failure.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}
