//! The Kubernetes manifests under deploy/kubernetes are checked without a cluster: every file
//! validates strictly (unknown fields fail) against the schemas of a pinned Kubernetes version
//! bundled with kubernetes-validate (installed by `cargo xtask setup`), and the DaemonSet keeps
//! what the agent needs to capture: the host's network, the eBPF capabilities instead of
//! privileged mode, bpffs, limits, probes on /healthz, arguments the agent accepts. Broken
//! copies must fail, so a validator that stopped validating cannot pass these tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use clap::Args as _;
use serde_json::Value;
use tests::{run_ok, workspace_root};

/// Kubernetes version the manifests must be valid for. Its schemas ship with the
/// kubernetes-validate version xtask/src/setup.rs pins; change both together.
const KUBERNETES_VERSION: &str = "1.37.0";

fn manifests_dir() -> PathBuf {
    workspace_root().join("deploy/kubernetes")
}

fn daemonset_file() -> PathBuf {
    manifests_dir().join("daemonset.yaml")
}

/// Every YAML file under `dir`, subfolders included, sorted.
fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// What the validator said about one file.
struct Verdict {
    ok: bool,
    output: String,
}

impl Verdict {
    /// Documents the validator checked and found valid.
    fn passed(&self) -> usize {
        self.output.matches(" passed for resource ").count()
    }
}

fn validate(path: &Path) -> Result<Verdict> {
    // `python3 -m` rather than the console script: pip's script directory need not be on
    // PATH (pyenv shims, --user installs), the module always is where pip put it.
    let out = Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "-k",
            KUBERNETES_VERSION,
        ])
        .arg(path)
        .output()
        .context("running python3 -m kubernetes_validate (install it with `cargo xtask setup`)")?;
    Ok(Verdict {
        ok: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

/// The file's YAML documents as JSON values (PyYAML comes with kubernetes-validate).
fn documents(path: &Path) -> Result<Vec<Value>> {
    let out = run_ok(Command::new("python3").args([
        "-c",
        "import json,sys,yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        &path.to_string_lossy(),
    ]))?;
    serde_json::from_slice(&out.stdout).context("PyYAML printed something that is not JSON")
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn every_manifest_validates_strictly_for_the_pinned_kubernetes() -> Result<()> {
    let files = yaml_files(&manifests_dir())?;
    // The DaemonSet file and the Secret examples at least: an empty walk must not pass.
    ensure!(files.len() >= 3, "found only {files:?}");
    for file in &files {
        let verdict = validate(file)?;
        ensure!(
            verdict.ok,
            "{} is not valid for Kubernetes {KUBERNETES_VERSION}:\n{}",
            file.display(),
            verdict.output
        );
        // A document the validator skipped (say, an unknown kind) must not pass silently.
        let docs = documents(file)?.len();
        ensure!(
            docs > 0 && verdict.passed() == docs,
            "{}: {docs} documents, {} validated:\n{}",
            file.display(),
            verdict.passed(),
            verdict.output
        );
    }
    Ok(())
}

#[test]
fn the_daemonset_keeps_what_capturing_needs() -> Result<()> {
    let docs = documents(&daemonset_file())?;
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in ["Namespace", "ServiceAccount", "DaemonSet"] {
        ensure!(kinds.contains(&kind), "no {kind} in {kinds:?}");
    }
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .context("no DaemonSet")?;
    ensure!(ds["metadata"]["namespace"] == "capture");
    let update = &ds["spec"]["updateStrategy"];
    assert_eq!(update["type"], "RollingUpdate");
    assert_eq!(update["rollingUpdate"]["maxUnavailable"], 1);

    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostNetwork"], true,
        "TC/XDP attach to the node's interfaces"
    );
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(pod["terminationGracePeriodSeconds"], 30);
    ensure!(
        pod["tolerations"].as_array().is_some_and(|t| t
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none())),
        "the agent must tolerate every taint: {}",
        pod["tolerations"]
    );

    let containers = pod["containers"].as_array().context("no containers")?;
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    let added = strings(&sc["capabilities"]["add"]);
    for cap in ["BPF", "NET_ADMIN", "PERFMON"] {
        ensure!(
            added.contains(&cap),
            "capabilities.add {added:?} lacks {cap}"
        );
    }
    ensure!(
        !added.contains(&"SYS_ADMIN") && !added.contains(&"ALL"),
        "capabilities.add {added:?}: CAP_BPF replaces SYS_ADMIN"
    );
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);

    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "http", "{probe}");
        assert_eq!(
            c[probe]["httpGet"]["scheme"], "HTTPS",
            "{probe}: the agent serves TLS"
        );
    }
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            ensure!(
                c["resources"][kind][resource].is_string(),
                "resources.{kind}.{resource} unset: {}",
                c["resources"]
            );
        }
    }

    let env = c["env"].as_array().context("no env")?;
    let node = env
        .iter()
        .find(|e| e["name"] == "CAPTURE_NODE")
        .context("CAPTURE_NODE unset: shared recordings would name nodes by pod hostname")?;
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");

    // Host paths by mount path.
    let volumes = pod["volumes"].as_array().context("no volumes")?;
    let mounts = c["volumeMounts"].as_array().context("no volumeMounts")?;
    let volume_of = |mount_path: &str| -> Result<&Value> {
        let mount = mounts
            .iter()
            .find(|m| m["mountPath"] == mount_path)
            .with_context(|| format!("nothing mounted at {mount_path}"))?;
        volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .with_context(|| format!("no volume {} for {mount_path}", mount["name"]))
    };
    assert_eq!(volume_of("/sys/fs/bpf")?["hostPath"]["path"], "/sys/fs/bpf");
    assert_eq!(
        volume_of("/var/lib/capture")?["hostPath"]["path"],
        "/var/lib/capture",
        "recordings must survive pod restarts"
    );
    assert_eq!(
        volume_of("/etc/capture")?["secret"]["secretName"],
        "capture-token"
    );
    assert_eq!(
        volume_of("/etc/capture-tls")?["secret"]["secretName"],
        "capture-tls"
    );
    // Whole-Secret mounts only: kubelet never updates a subPath mount, so a rotated token
    // or a renewed certificate would not reach the agent.
    ensure!(
        mounts.iter().all(|m| m.get("subPath").is_none()),
        "a subPath mount: {mounts:?}"
    );
    Ok(())
}

/// The container's arguments and environment are ones `capture agent` accepts, and say
/// the same as the image's default command, so the manifest cannot drift from the CLI.
#[test]
fn the_daemonset_runs_the_agent_as_the_image_does() -> Result<()> {
    let docs = documents(&daemonset_file())?;
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .context("no DaemonSet")?;
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let args = strings(&c["args"]);
    assert_eq!(args.first(), Some(&"agent"), "{args:?}");

    let agent = capture_user::cmd::agent::AgentArgs::augment_args(clap::Command::new("agent"));
    let matches = agent
        .clone()
        .try_get_matches_from(&args)
        .with_context(|| format!("capture agent rejects the manifest's args {args:?}"))?;
    let listen = matches
        .get_one::<std::net::SocketAddr>("listen")
        .context("no --listen")?;
    ensure!(
        !listen.ip().is_loopback(),
        "{listen}: probes and clients reach the node's address"
    );
    assert_eq!(
        c["ports"][0]["containerPort"],
        listen.port(),
        "containerPort must be the --listen port"
    );
    assert_eq!(c["ports"][0]["name"], "http");
    let token_file = matches
        .get_one::<PathBuf>("token_file")
        .context("--token-file unset: the agent refuses to listen beyond loopback without it")?;
    let token_mount = c["volumeMounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "token"))
        .and_then(|m| m["mountPath"].as_str())
        .context("token volume not mounted")?;
    ensure!(
        token_file.starts_with(token_mount),
        "--token-file {} is outside the secret mounted at {token_mount}",
        token_file.display()
    );
    // TLS beyond loopback: the token must not cross the node's network in clear text.
    ensure!(
        !matches.get_flag("insecure_plain_http"),
        "the manifest serves plain HTTP"
    );
    let tls_mount = c["volumeMounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "tls"))
        .and_then(|m| m["mountPath"].as_str())
        .context("tls volume not mounted")?;
    for flag in ["tls_cert", "tls_key"] {
        let file = matches
            .get_one::<PathBuf>(flag)
            .with_context(|| format!("--{flag} unset: the agent would refuse plain HTTP"))?;
        ensure!(
            file.starts_with(tls_mount),
            "--{flag} {} is outside the secret mounted at {tls_mount}",
            file.display()
        );
    }

    // CAPTURE_NODE is read by the store (store::node_name); the rest must be the agent's.
    let mut known: Vec<String> = agent
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    known.push("CAPTURE_NODE".into());
    for e in c["env"].as_array().context("no env")? {
        let name = e["name"].as_str().context("env entry without a name")?;
        ensure!(
            known.iter().any(|k| k == name),
            "env {name} is read by nothing; capture agent reads {known:?}"
        );
    }

    let dockerfile = std::fs::read_to_string(workspace_root().join("deploy/Dockerfile"))?;
    let cmd = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .context("no CMD in deploy/Dockerfile")?;
    let cmd: Vec<String> = serde_json::from_str(cmd).context("CMD is not in exec (JSON) form")?;
    assert_eq!(cmd, args, "the image's CMD and the DaemonSet's args differ");
    Ok(())
}

#[test]
fn broken_manifests_fail_validation() -> Result<()> {
    let text = std::fs::read_to_string(daemonset_file())?;
    let dir = tempfile::tempdir()?;
    // (what to break, broken into, what the validator must name)
    let breakages = [
        // An unknown field: only strict validation rejects it.
        ("hostNetwork: true", "hostNetwrk: true", "hostNetwrk"),
        // A wrong type.
        ("containerPort: 9300", "containerPort: \"nine\"", "nine"),
        // An unknown field deep inside the pod template.
        ("path: /healthz", "paht: /healthz", "paht"),
        // A required field missing (the schemas check types and required fields; they do
        // not check enum values such as updateStrategy.type).
        (
            "  selector:\n    matchLabels:\n      app.kubernetes.io/name: capture-agent\n",
            "",
            "'selector' is a required property",
        ),
    ];
    for (from, to, named) in breakages {
        ensure!(text.contains(from), "daemonset.yaml no longer has {from:?}");
        let broken = dir.path().join("broken.yaml");
        std::fs::write(&broken, text.replacen(from, to, 1))?;
        let verdict = validate(&broken)?;
        ensure!(
            !verdict.ok,
            "{from:?} -> {to:?} passed:\n{}",
            verdict.output
        );
        ensure!(
            verdict.output.contains(named),
            "{to:?} failed without naming {named:?}:\n{}",
            verdict.output
        );
    }
    Ok(())
}
