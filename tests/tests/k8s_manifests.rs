//! deploy/k8s/ is read by Kubernetes, not by jitwg: this test is the only thing that catches a
//! manifest that would not deserialize, or a fleet Job that lost its sharding. Every manifest
//! is deserialized into its k8s-openapi type (unknown kinds fail), and the wiring the README
//! relies on is checked: the Indexed fleet Job feeds JOB_COMPLETION_INDEX to --shard, the
//! gateway has NET_ADMIN and its metrics port, the control plane has a Service, the shard
//! count agrees between gateway and fleet, fleets get the run's CA and token from the Secret
//! the README has the user create, and kustomization.yaml lists every manifest.

use std::path::{Path, PathBuf};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, PodSpec, Service};
use serde::Deserialize;

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s")
}

#[derive(Default)]
struct Manifests {
    jobs: Vec<Job>,
    services: Vec<Service>,
    namespaces: Vec<Namespace>,
    claims: Vec<PersistentVolumeClaim>,
    files: Vec<String>,
}

fn load() -> Manifests {
    let mut m = Manifests::default();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .expect("deploy/k8s exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name == "kustomization.yaml" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc).unwrap();
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            let what = format!("{name}: {kind}");
            match kind.as_str() {
                "Job" => m.jobs.push(serde_yaml::from_value(value).expect(&what)),
                "Service" => m.services.push(serde_yaml::from_value(value).expect(&what)),
                "Namespace" => m
                    .namespaces
                    .push(serde_yaml::from_value(value).expect(&what)),
                "PersistentVolumeClaim" => {
                    m.claims.push(serde_yaml::from_value(value).expect(&what))
                }
                other => panic!("{name}: kind {other:?} has no k8s-openapi type in this test"),
            }
        }
        m.files.push(name);
    }
    m
}

fn job<'a>(m: &'a Manifests, name: &str) -> &'a Job {
    m.jobs
        .iter()
        .find(|j| j.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no Job {name}"))
}

fn pod(job: &Job) -> &PodSpec {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod template")
}

fn command_line(spec: &PodSpec) -> String {
    let c = &spec.containers[0];
    let mut words = c.command.clone().unwrap_or_default();
    words.extend(c.args.clone().unwrap_or_default());
    words.join(" ")
}

#[test]
fn every_manifest_deserializes_and_kustomize_lists_it() {
    let m = load();
    assert_eq!(m.namespaces.len(), 1);
    assert_eq!(m.claims.len(), 1);
    let kustomization: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(k8s_dir().join("kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let listed: Vec<&str> = kustomization["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for file in &m.files {
        assert!(
            listed.contains(&file.as_str()),
            "{file} is not in kustomization.yaml"
        );
    }
    for file in &listed {
        assert!(
            k8s_dir().join(file).exists(),
            "{file} is listed but missing"
        );
    }
    assert!(k8s_dir().join("scenario.toml").exists());
    assert!(k8s_dir().join("Dockerfile").exists());
}

#[test]
fn the_fleet_is_an_indexed_job_whose_index_is_the_shard() {
    let m = load();
    let fleet = job(&m, "jitwg-fleet");
    let spec = fleet.spec.as_ref().unwrap();
    assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
    let shards = spec.completions.expect("completions");
    assert_eq!(
        spec.parallelism,
        Some(shards),
        "every shard must run at once"
    );
    let line = command_line(pod(fleet));
    assert!(line.contains("jitwg fleet"), "{line}");
    assert!(
        line.contains("--shard \"${JOB_COMPLETION_INDEX}/${SHARDS}\""),
        "{line}"
    );
    let env = pod(fleet).containers[0].env.clone().unwrap_or_default();
    let shards_env = env.iter().find(|e| e.name == "SHARDS").expect("SHARDS");
    assert_eq!(
        shards_env.value.as_deref(),
        Some(shards.to_string().as_str())
    );
    for flag in [
        "--gateway jitwg-gateway:51820",
        "--control-plane-ca /credentials/control-plane-ca.pem",
        "--token-file /credentials/token",
    ] {
        assert!(line.contains(flag), "{line}");
    }
    // Plain HTTP would send the token in the clear, and the run's certificate names the gateway
    // pod's address, not the Service's name: the fleet derives the URL from --gateway.
    assert!(!line.contains("--control-plane "), "{line}");
    let gateway = job(&m, "jitwg-gateway");
    let args = pod(gateway).containers[0].args.clone().unwrap();
    let at = args.iter().position(|a| a == "--shards").expect("--shards");
    assert_eq!(
        args[at + 1],
        shards.to_string(),
        "gateway and fleet disagree on the shard count"
    );
}

#[test]
fn fleets_get_the_runs_ca_and_token_from_a_secret() {
    let m = load();
    let spec = pod(job(&m, "jitwg-fleet"));
    let volume = spec
        .volumes
        .as_ref()
        .and_then(|v| v.iter().find(|v| v.name == "credentials"))
        .expect("a credentials volume");
    let secret = volume.secret.as_ref().expect("from a Secret");
    assert_eq!(secret.secret_name.as_deref(), Some("jitwg-credentials"));
    assert_ne!(
        secret.optional,
        Some(true),
        "fleets must wait for it, not start without it"
    );
    let mounts = spec.containers[0].volume_mounts.clone().unwrap_or_default();
    assert!(mounts
        .iter()
        .any(|m| m.name == "credentials" && m.mount_path == "/credentials"));
    // The scenario asks for what the Secret provides.
    let scenario = std::fs::read_to_string(k8s_dir().join("scenario.toml")).unwrap();
    let lines: Vec<&str> = scenario.lines().map(str::trim).collect();
    let section = lines
        .iter()
        .position(|l| *l == "[control_plane]")
        .expect("a [control_plane] table");
    let table: Vec<&str> = lines[section + 1..]
        .iter()
        .take_while(|l| !l.starts_with('['))
        .copied()
        .collect();
    assert!(table.contains(&"tls = true"), "{table:?}");
    assert!(table.contains(&"token = true"), "{table:?}");
    // The gateway writes what the README copies into the Secret.
    let gateway = command_line(pod(job(&m, "jitwg-gateway")));
    assert!(gateway.contains("--out /results"), "{gateway}");
}

#[test]
fn the_gateway_has_net_admin_metrics_and_services() {
    let m = load();
    let gateway = job(&m, "jitwg-gateway");
    let container = &pod(gateway).containers[0];
    let caps = container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default();
    assert!(caps.iter().any(|c| c == "NET_ADMIN"), "{caps:?}");
    let ports: Vec<i32> = container
        .ports
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|p| p.container_port)
        .collect();
    for port in [51820, 8080, 8081, 9187] {
        assert!(
            ports.contains(&port),
            "gateway port {port} missing: {ports:?}"
        );
    }
    assert!(
        pod(gateway).host_network.is_some(),
        "hostNetwork should be spelled out (optional)"
    );
    let service = |name: &str| {
        m.services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no Service {name}"))
    };
    let cp = service("jitwg-control-plane").spec.as_ref().unwrap();
    assert!(cp.ports.as_ref().unwrap().iter().any(|p| p.port == 8080));
    let gw = service("jitwg-gateway").spec.as_ref().unwrap();
    assert!(gw
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .any(|p| p.port == 51820 && p.protocol.as_deref() == Some("UDP")));
}
