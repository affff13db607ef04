//! The Kubernetes manifests validate against the Kubernetes schemas (kubernetes-validate,
//! strict: unknown fields fail), and keep the properties the agent needs: host network, the
//! eBPF capabilities instead of privileged mode, bpffs, limits, readiness on /healthz. A broken
//! copy must fail, so the validator is known to validate.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;
use tests::workspace_root;

/// Kubernetes version the manifests are checked against (schemas bundled with the validator).
const KUBERNETES_VERSION: &str = "1.37.0";

fn manifest() -> PathBuf {
    workspace_root().join("deploy/kubernetes/daemonset.yaml")
}

fn validate(path: &Path) -> Result<(bool, String)> {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .arg(path)
        .output()
        .context("running kubernetes-validate (installed by `cargo xtask setup`)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// The YAML documents as JSON (PyYAML comes with the validator).
fn documents(path: &Path) -> Result<Vec<Value>> {
    let out = tests::run_ok(Command::new("python3").args([
        "-c",
        "import json,sys,yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        &path.to_string_lossy(),
    ]))?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[test]
fn the_daemonset_validates_strictly_and_keeps_what_the_agent_needs() -> Result<()> {
    let (ok, text) = validate(&manifest())?;
    assert!(ok, "{text}");
    assert_eq!(text.matches("passed for resource").count(), 3, "{text}");

    let docs = documents(&manifest())?;
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .context("no DaemonSet")?;
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    let added: Vec<&str> = sc["capabilities"]["add"]
        .as_array()
        .context("capabilities")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for cap in ["BPF", "NET_ADMIN", "PERFMON"] {
        assert!(added.contains(&cap), "{added:?} lacks {cap}");
    }
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz");
    assert!(c["resources"]["limits"]["cpu"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    let mounts = c["volumeMounts"].as_array().context("mounts")?;
    assert!(mounts.iter().any(|m| m["mountPath"] == "/sys/fs/bpf"));
    let args: Vec<&str> = c["args"]
        .as_array()
        .context("args")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--token-file"), "{args:?}");
    Ok(())
}

#[test]
fn a_broken_manifest_fails_validation() -> Result<()> {
    let text = std::fs::read_to_string(manifest())?;
    let dir = tempfile::tempdir()?;
    for (from, to, says) in [
        ("hostNetwork: true", "hostNetwrk: true", "hostNetwrk"),
        ("containerPort: 9300", "containerPort: \"nine\"", "nine"),
    ] {
        assert!(text.contains(from));
        let broken = dir.path().join("broken.yaml");
        std::fs::write(&broken, text.replace(from, to))?;
        let (ok, out) = validate(&broken)?;
        assert!(!ok, "{to} passed:\n{out}");
        assert!(out.contains(says), "{out}");
    }
    Ok(())
}
