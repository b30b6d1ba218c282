//! The Helm chart `charts/keyward`: `helm lint` (values.schema.json rejects bad values), `helm template` in each mode
//! with the rendered objects checked field by field (Pod Security "restricted", probes, RBAC exactly as the operator
//! uses the API), the rendered manifests accepted by the real API server (`kubectl apply --dry-run=server`), and the
//! RBAC installed for real and probed with `kubectl auth can-i` to show it is minimal. helm is built from its Go
//! module (`tests/helm`) on first use and cached, like the control plane.

use std::collections::BTreeSet;

use crate::common::identity::{
    self, all_of, app_version, ci_values, kind, name, ns_of, only, parse_documents, run_helm, strings, template,
    to_stream,
};
use crate::common::rbac::{
    CRD_RULES, Grant, LEASE_RULES, NAMESPACED_RULES, SEAL_RULES, assert_grants, check_can_i, expand, grants,
};
use crate::common::{control_plane, control_plane_with_crds, kubectl, kubectl_ok, kubectl_stdin, namespace};
use serde_norway::Value;

// ---------------------------------------------------------------------------------------------------------------
// helm itself

/// helm builds from `tests/helm` (or is found in the cache) and is the pinned v3. `.ci/run` runs this one first with
/// `--nocapture`, so a one-time build shows its progress.
#[test]
fn helm_is_built_from_its_go_module() {
    let (ok, stdout, stderr) = run_helm(&["version", "--template", "{{.Version}}"]);
    assert!(ok, "{stderr}");
    let go_mod = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helm/go.mod"))
        .expect("tests/helm/go.mod");
    let pinned = go_mod
        .lines()
        .find_map(|l| l.trim().strip_prefix("helm.sh/helm/v3 "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("go.mod requires helm.sh/helm/v3");
    assert_eq!(stdout.trim(), pinned, "helm reports the version go.mod pins");
    eprintln!("helm {} at {}", stdout.trim(), identity::helm().display());
}

// ---------------------------------------------------------------------------------------------------------------
// helm lint

#[test]
fn lint_passes_for_default_and_ci_values() {
    let chart = identity::chart_dir();
    let chart = chart.to_str().expect("utf-8");
    for extra in [
        vec![],
        vec!["-f".to_string(), ci_values("namespaced-values.yaml")],
        vec!["-f".to_string(), ci_values("all-features-values.yaml")],
    ] {
        let mut args = vec!["lint", "--strict", chart];
        args.extend(extra.iter().map(String::as_str));
        let (ok, stdout, stderr) = run_helm(&args);
        assert!(ok, "helm {} failed:\n{stdout}{stderr}", args.join(" "));
        assert!(stdout.contains("0 chart(s) failed"), "{stdout}");
    }
}

#[test]
fn lint_rejects_invalid_values() {
    let chart = identity::chart_dir();
    let chart = chart.to_str().expect("utf-8");
    // (--set value, what the schema error must name)
    let cases = [
        ("replicaCount=two", "/replicaCount"),
        ("rbac.scope=galaxy", "/rbac/scope"),
        ("log.format=xml", "/log/format"),
        ("replicaCount=-1", "/replicaCount"),
        ("leaderElection.leaseDuration=soon", "/leaderElection/leaseDuration"),
        ("imagePullPolicy=Always", "imagePullPolicy"),
        ("rbac.scope=namespaced", "/watchNamespaces"),
        ("watchNamespaces={team-a}", "/watchNamespaces"),
        ("replicaCount=3,leaderElection.enabled=false", "/replicaCount"),
        ("watchNamespaces={Not_A_Namespace},rbac.scope=namespaced", "/watchNamespaces/0"),
        ("rbac.extraScaleTargets[0].apiGroups[0]=*,rbac.extraScaleTargets[0].resources[0]=rollouts", "apiGroups/0"),
        ("rbac.extraScaleTargets[0].apiGroups[0]=x,rbac.extraScaleTargets[0].resources[0]=*", "resources/0"),
    ];
    for (set, path) in cases {
        let (ok, stdout, stderr) = run_helm(&["lint", chart, "--set", set]);
        let text = format!("{stdout}{stderr}");
        assert!(!ok, "helm lint accepted --set {set}:\n{text}");
        assert!(text.contains("values don't meet the specifications of the schema"), "--set {set}: {text}");
        assert!(text.contains(path), "--set {set}: the error should name {path}:\n{text}");
    }
    // A string where a number belongs fails `helm template` (and so install/upgrade) too, not only lint.
    let (ok, _, stderr) = run_helm(&["template", "kw", chart, "--set-string", "replicaCount=2"]);
    assert!(!ok && stderr.contains("/replicaCount"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------------------------
// helm template

#[test]
fn default_render_is_restricted_with_probes_and_leader_election() {
    let objects = template("kw", "keyward-system", &[]);
    let kinds: BTreeSet<&str> = objects.iter().map(kind).collect();
    let want: BTreeSet<&str> = [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    .into();
    assert_eq!(kinds, want, "the default install's objects");
    for o in &objects {
        let labels = &o["metadata"]["labels"];
        for l in ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version", "helm.sh/chart"]
        {
            assert!(labels.get(l).is_some(), "{} {} lacks label {l}", kind(o), name(o));
        }
        assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm");
        let cluster_scoped = ["CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"]
            .into_iter()
            .chain(["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]);
        if !cluster_scoped.into_iter().any(|k| k == kind(o)) {
            assert_eq!(ns_of(o), "keyward-system", "{} {} namespace", kind(o), name(o));
        }
    }

    let deploy = only(&objects, "Deployment");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(psc["runAsUser"], 65532);
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["serviceAccountName"], "kw-keyward");
    let containers = pod["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["image"].as_str(), Some(format!("ghcr.io/keyward/keyward:{}", app_version()).as_str()));
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert!(sc["capabilities"].get("add").is_none());
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    let port = &c["ports"][0];
    assert_eq!((port["name"].as_str(), port["containerPort"].as_u64()), (Some("http"), Some(8080)));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
    for (kind, res) in [("requests", "cpu"), ("requests", "memory"), ("limits", "cpu"), ("limits", "memory")] {
        assert!(c["resources"][kind].get(res).is_some(), "resources.{kind}.{res} missing");
    }
    let args = strings(&c["args"]);
    assert_eq!(args[0], "run");
    for a in [
        "--http-addr=0.0.0.0:8080",
        "--leader-elect",
        "--lease-name=keyward-leader",
        "--lease-namespace=keyward-system",
        "--lease-duration=15s",
        "--lease-grace=5s",
        "--log-format=json",
        "--min-usage-interval=1s",
        "--min-rotation-interval=10s",
        "--min-grace-period=0s",
        "--metrics-auth",
    ] {
        assert!(args.iter().any(|x| x == a), "{a} missing from {args:?}");
    }
    assert!(!args.iter().any(|a| a.starts_with("--namespace")), "cluster scope watches all namespaces: {args:?}");
    let env = c["env"].as_sequence().expect("env");
    for (var, field) in [("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")] {
        let e = env.iter().find(|e| e["name"] == var).unwrap_or_else(|| panic!("{var} missing"));
        assert_eq!(e["valueFrom"]["fieldRef"]["fieldPath"], field);
    }
    // Soft anti-affinity: spread when possible, never unschedulable because of it.
    let anti = &pod["affinity"]["podAntiAffinity"];
    assert!(anti.get("preferredDuringSchedulingIgnoredDuringExecution").is_some());
    assert!(anti.get("requiredDuringSchedulingIgnoredDuringExecution").is_none());

    let pdb = only(&objects, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], deploy["spec"]["selector"]["matchLabels"]);
    let svc = only(&objects, "Service");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(svc["spec"]["ports"][0]["name"], "metrics");
    assert_eq!(svc["spec"]["selector"], deploy["spec"]["selector"]["matchLabels"]);
}

#[test]
fn cluster_rbac_is_exactly_what_the_operator_uses() {
    let objects = template("kw", "keyward-system", &[]);
    let cr = operator_cluster_role(&objects);
    let mut want = expand(&NAMESPACED_RULES);
    want.extend(expand(&CRD_RULES));
    assert_grants(&grants(cr), &want, "ClusterRole");
    let crb = only(&objects, "ClusterRoleBinding");
    assert_eq!(crb["roleRef"]["name"], name(cr));
    assert_eq!(crb["subjects"][0]["name"], "kw-keyward");
    assert_eq!(crb["subjects"][0]["namespace"], "keyward-system");
    let lease = role_named(&objects, "-leader-election");
    assert_eq!(ns_of(lease), "keyward-system");
    assert_grants(&grants(lease), &expand(&LEASE_RULES), "leader-election Role");
    let seal = role_named(&objects, "-seal");
    assert_eq!(ns_of(seal), "keyward-system");
    assert_grants(&grants(seal), &expand(&SEAL_RULES), "seal key Role");
    // The operator deletes only Secrets (to revoke) and the BackendTrafficPolicies it renders (enforce removed),
    // never anything else, and never a whole collection.
    // (The metrics-reader ClusterRole grants only `get` on /metrics, checked in metrics_auth_is_on_….)
    let bound = all_of(&objects, "ClusterRole").into_iter().filter(|r| !name(r).ends_with("-metrics-reader"));
    for role in bound.chain(all_of(&objects, "Role")) {
        let deletes = grants(role).into_iter().filter(|(_, _, v, _)| v.starts_with("delete")).collect::<Vec<_>>();
        let allowed = |g: &str, r: &str| {
            (g.is_empty() && r == "secrets") || (g == "gateway.envoyproxy.io" && r == "backendtrafficpolicies")
        };
        assert!(deletes.iter().all(|(g, r, v, _)| allowed(g, r) && v == "delete"), "{}", name(role));
    }
    // Without leader election there is no Lease Role; a different Lease name is what the Role names.
    let objects = template("kw", "keyward-system", &["--set", "replicaCount=1,leaderElection.enabled=false"]);
    assert!(all_of(&objects, "Role").iter().all(|r| name(r).ends_with("-seal")), "only the seal key Role");
    let args = strings(&only(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(!args.iter().any(|a| a.starts_with("--le")), "{args:?}");
    let objects = template(
        "kw",
        "keyward-system",
        &["--set", "leaderElection.leaseName=shard-1,leaderElection.leaseNamespace=ops"],
    );
    let lease = role_named(&objects, "-leader-election");
    assert_eq!(ns_of(lease), "ops");
    assert!(grants(lease).iter().any(|(_, _, v, n)| v == "patch" && n == "shard-1"));
}

/// The one rendered Role whose name ends with `suffix`.
fn role_named<'a>(objects: &'a [Value], suffix: &str) -> &'a Value {
    let mut found = all_of(objects, "Role").into_iter().filter(|r| name(r).ends_with(suffix));
    let role = found.next().unwrap_or_else(|| panic!("no Role named *{suffix}"));
    assert!(found.next().is_none(), "more than one Role named *{suffix}");
    role
}

#[test]
fn namespaced_render_has_a_role_per_watched_namespace() {
    let objects = template("kw", "keyward-system", &["-f", &ci_values("namespaced-values.yaml")]);
    let cr = operator_cluster_role(&objects);
    assert_grants(&grants(cr), &expand(&CRD_RULES), "namespaced scope: the ClusterRole only reads the two CRDs");
    assert_eq!(only(&objects, "ClusterRoleBinding")["roleRef"]["name"], name(cr));
    let roles = all_of(&objects, "Role");
    let by_ns: BTreeSet<&str> = roles.iter().map(|r| ns_of(r)).collect();
    assert_eq!(by_ns, ["keyward-system", "team-a", "team-b"].into(), "a Role per watched namespace + the Lease's");
    for role in &roles {
        let want = match name(role) {
            n if n.ends_with("-leader-election") => expand(&LEASE_RULES),
            n if n.ends_with("-seal") => expand(&SEAL_RULES),
            _ => expand(&NAMESPACED_RULES),
        };
        assert_grants(&grants(role), &want, &format!("Role {} in {}", name(role), ns_of(role)));
    }
    let bindings = all_of(&objects, "RoleBinding");
    assert_eq!(bindings.len(), 4);
    for b in bindings {
        let role = roles.iter().find(|r| ns_of(r) == ns_of(b) && b["roleRef"]["name"] == name(r));
        let role = role.expect("a Role beside each RoleBinding");
        assert_eq!(b["roleRef"]["name"], name(role));
        assert_eq!(b["roleRef"]["kind"], "Role");
        assert_eq!(b["subjects"][0]["namespace"], "keyward-system");
    }
    let args = strings(&only(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(args.iter().any(|a| a == "--namespace=team-a,team-b"), "{args:?}");

    // Extra scale targets get the scale subresource only.
    let objects = template("kw", "keyward-system", &["-f", &ci_values("all-features-values.yaml")]);
    let g = grants(operator_cluster_role(&objects));
    let extra: Vec<&Grant> = g.iter().filter(|(group, ..)| group == "argoproj.io").collect();
    let verbs: BTreeSet<&str> = extra.iter().map(|(_, _, v, _)| v.as_str()).collect();
    assert!(extra.iter().all(|(_, r, _, _)| r == "rollouts/scale"), "{extra:?}");
    assert_eq!(verbs, ["get", "patch"].into());
}

/// The ClusterRole the operator is bound to (the chart also renders the metrics-reader role for scrapers).
fn operator_cluster_role(objects: &[Value]) -> &Value {
    let roles: Vec<&Value> =
        all_of(objects, "ClusterRole").into_iter().filter(|r| !name(r).ends_with("-metrics-reader")).collect();
    assert_eq!(roles.len(), 1, "one operator ClusterRole");
    roles[0]
}

#[test]
fn metrics_auth_is_on_with_a_reader_role_and_can_be_turned_off() {
    let objects = template("kw", "keyward-system", &[]);
    let reader = all_of(&objects, "ClusterRole")
        .into_iter()
        .find(|r| name(r) == "kw-keyward-metrics-reader")
        .expect("the metrics-reader ClusterRole");
    assert_eq!(reader["rules"][0]["nonResourceURLs"][0], "/metrics");
    assert_eq!(strings(&reader["rules"][0]["verbs"]), ["get"]);
    let objects = template("kw", "keyward-system", &["--set", "metrics.auth=false,metrics.readerClusterRole=false"]);
    assert!(all_of(&objects, "ClusterRole").iter().all(|r| !name(r).ends_with("-metrics-reader")));
    let args = strings(&only(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(!args.iter().any(|a| a == "--metrics-auth"), "{args:?}");
    let reviews = grants(operator_cluster_role(&objects));
    assert!(!reviews.iter().any(|(_, r, _, _)| r == "tokenreviews"), "no reviews without metrics.auth");
    // The floors reach the command line.
    let objects =
        template("kw", "keyward-system", &["--set", "minimums.rotationInterval=1h,minimums.usageInterval=30s"]);
    let args = strings(&only(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(
        args.iter().any(|a| a == "--min-rotation-interval=1h") && args.iter().any(|a| a == "--min-usage-interval=30s")
    );
}

#[test]
fn crds_render_from_the_generated_files() {
    let generated: Vec<Value> = keyward::api::crds()
        .iter()
        .map(|(_, crd)| serde_norway::from_str(&keyward::api::crd_yaml(crd).expect("yaml")).expect("parse"))
        .collect();
    for (args, keep) in [(vec![], true), (vec!["--set", "crds.keep=false"], false)] {
        let objects = template("kw", "keyward-system", &args);
        let crds = all_of(&objects, "CustomResourceDefinition");
        assert_eq!(crds.len(), generated.len());
        for crd in crds {
            let policy = &crd["metadata"]["annotations"]["helm.sh/resource-policy"];
            assert_eq!(policy.as_str() == Some("keep"), keep, "{} keep annotation with {args:?}", name(crd));
            assert_eq!(crd["metadata"]["labels"]["app.kubernetes.io/name"], "keyward");
            // Apart from the labels and annotations the chart adds, each is the generated CRD, unchanged.
            let mut body = crd.clone();
            let meta = body["metadata"].as_mapping_mut().expect("metadata");
            meta.remove("labels");
            meta.remove("annotations");
            assert!(generated.contains(&body), "{} differs from `keyward crd`", name(crd));
        }
    }
    let objects = template("kw", "keyward-system", &["--set", "crds.enabled=false"]);
    assert!(all_of(&objects, "CustomResourceDefinition").is_empty());
    assert!(!objects.is_empty(), "the operator is still installed");
}

#[test]
fn optional_objects_render_when_enabled() {
    let objects = template("kw", "keyward-system", &[]);
    assert!(all_of(&objects, "ServiceMonitor").is_empty() && all_of(&objects, "NetworkPolicy").is_empty());

    let objects = template("kw", "keyward-system", &["-f", &ci_values("all-features-values.yaml")]);
    let sm = only(&objects, "ServiceMonitor");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics", "matches the Service's port name");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(sm["spec"]["selector"]["matchLabels"], only(&objects, "Service")["spec"]["selector"]);

    let np = only(&objects, "NetworkPolicy");
    assert_eq!(strings(&np["spec"]["policyTypes"]), ["Ingress", "Egress"]);
    let ingress = np["spec"]["ingress"].as_sequence().expect("ingress");
    assert_eq!(ingress.len(), 1, "one ingress rule: the metrics port");
    assert_eq!(ingress[0]["ports"].as_sequence().map(Vec::len), Some(1));
    assert_eq!(ingress[0]["ports"][0]["port"], "http");
    assert_eq!(ingress[0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "monitoring");
    let egress = np["spec"]["egress"].as_sequence().expect("egress");
    let ports: Vec<Vec<u64>> = egress
        .iter()
        .map(|r| r["ports"].as_sequence().unwrap().iter().filter_map(|p| p["port"].as_u64()).collect())
        .collect();
    assert_eq!(ports, [vec![443, 6443], vec![53, 53], vec![9090]], "API server, DNS, the usage source");
    assert_eq!(egress[0]["to"][0]["ipBlock"]["cidr"], "10.0.0.1/32");

    let pod = &only(&objects, "Deployment")["spec"]["template"]["spec"];
    let spread = &pod["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "topology.kubernetes.io/zone");
    assert_eq!(spread["labelSelector"]["matchLabels"]["app.kubernetes.io/name"], "keyward", "selector filled in");
}

/// The arguments and environment the chart gives the container are what `keyward run` accepts: a usage error
/// (clap's exit code 2) would crash-loop every pod. No cluster is reachable here, so an accepted command line ends
/// in a connection error (or is still trying when the wait ends).
#[test]
fn keyward_run_accepts_the_charts_arguments() {
    use std::time::{Duration, Instant};
    let namespaced = ci_values("namespaced-values.yaml");
    for args in [vec![], vec!["-f", namespaced.as_str()], vec!["--set", "replicaCount=1,leaderElection.enabled=false"]]
    {
        let objects = template("kw", "keyward-system", &args);
        let c = &only(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0];
        let argv = strings(&c["args"]);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
            .args(&argv)
            .env_clear()
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env("POD_NAME", "keyward-0")
            .env("POD_NAMESPACE", "keyward-system")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn keyward");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("read stderr");
        assert!(
            status.and_then(|s| s.code()) != Some(2) && !stderr.contains("Usage:"),
            "keyward {} is a usage error:\n{stderr}",
            argv.join(" ")
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Against the real API server

/// Creates a namespace that enforces (and warns about) Pod Security "restricted".
fn restricted_namespace(test: &str) -> String {
    let ns = namespace(test);
    kubectl_ok(&[
        "label",
        "namespace",
        &ns,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    ]);
    ns
}

/// `kubectl apply --dry-run=server` of rendered objects; returns stderr (warnings) on success.
fn server_dry_run(objects: &[Value], what: &str) -> String {
    // NB: the CRDs of the ServiceMonitor and PrometheusRule (prometheus-operator) are not installed in the test
    // control plane, so those objects cannot be checked here; the helm_template and monitoring tests check them.
    let checked: Vec<&Value> =
        objects.iter().filter(|o| !matches!(kind(o), "ServiceMonitor" | "PrometheusRule")).collect();
    let out = kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &to_stream(&checked));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the API server rejected the {what} rendering:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), checked.len(), "one line per object:\n{stdout}");
    stderr
}

#[test]
fn the_api_server_accepts_every_rendering() {
    let _cp = control_plane();
    let ns = restricted_namespace("helm_dry_run");
    let (a, b) = (namespace("helm_dry_run_a"), namespace("helm_dry_run_b"));
    let watched = format!("watchNamespaces={{{a},{b}}}");
    let all_features = ci_values("all-features-values.yaml");
    let renderings: [(&str, Vec<&str>); 4] = [
        ("default", vec![]),
        ("namespaced", vec!["--set", "rbac.scope=namespaced", "--set", &watched]),
        ("crds disabled", vec!["--set", "crds.enabled=false,replicaCount=1,leaderElection.enabled=false"]),
        ("all features", vec!["-f", &all_features]),
    ];
    for (what, args) in &renderings {
        let objects = template("kw-dry", &ns, args);
        let warnings = server_dry_run(&objects, what);
        assert!(!warnings.contains("PodSecurity"), "{what}: Pod Security \"restricted\" warnings:\n{warnings}");
    }
    // The Pod Security check above is live: a pod that may escalate privileges draws the warning.
    let objects = template("kw-dry", &ns, &["--set", "securityContext.allowPrivilegeEscalation=true"]);
    let warnings = server_dry_run(&objects, "privileged");
    assert!(warnings.contains("would violate PodSecurity \"restricted:latest\""), "no warning:\n{warnings}");
}

#[test]
fn namespaced_identity_is_minimal() {
    let _cp = control_plane();
    let release = namespace("helm_min_ns");
    let (a, b, other) = (namespace("helm_min_ns_a"), namespace("helm_min_ns_b"), namespace("helm_min_ns_other"));
    let watched = format!("watchNamespaces={{{a},{b}}}");
    let id = identity::install("kw-min-ns", &release, &["--set", "rbac.scope=namespaced", "--set", &watched]);
    let (a, b, other, rel) = (a.as_str(), b.as_str(), other.as_str(), release.as_str());
    check_can_i(
        &id,
        &[
            // What the controllers need, in each watched namespace.
            (true, vec!["get", "secrets", "-n", a]),
            (true, vec!["list", "secrets", "-n", b]),
            (true, vec!["watch", "secrets", "-n", a]),
            (true, vec!["create", "secrets", "-n", a]),
            (true, vec!["update", "secrets", "-n", b]),
            (true, vec!["list", "apikeys.keyward.dev", "-n", a]),
            (true, vec!["patch", "apikeys.keyward.dev", "--subresource=status", "-n", b]),
            (true, vec!["patch", "ratelimitpolicies.keyward.dev", "--subresource=status", "-n", a]),
            (true, vec!["patch", "deployments.apps", "-n", a]),
            (true, vec!["patch", "deployments.apps", "--subresource=scale", "-n", a]),
            (true, vec!["get", "statefulsets.apps", "--subresource=scale", "-n", b]),
            (true, vec!["list", "horizontalpodautoscalers.autoscaling", "-n", a]),
            (true, vec!["create", "events.events.k8s.io", "-n", a]),
            (true, vec!["get", "customresourcedefinitions/apikeys.keyward.dev"]),
            (true, vec!["create", "leases.coordination.k8s.io", "-n", rel]),
            (true, vec!["patch", "leases.coordination.k8s.io/keyward-leader", "-n", rel]),
            (true, vec!["watch", "leases.coordination.k8s.io/keyward-leader", "-n", rel]),
            // Nothing outside the watched namespaces.
            (false, vec!["get", "secrets", "-n", other]),
            (false, vec!["get", "secrets", "-n", rel]),
            (false, vec!["get", "secrets", "--all-namespaces"]),
            (false, vec!["list", "apikeys.keyward.dev", "--all-namespaces"]),
            (false, vec!["list", "apikeys.keyward.dev", "-n", other]),
            (false, vec!["patch", "deployments.apps", "--subresource=scale", "-n", other]),
            // Nothing the controllers do not do, even in a watched namespace.
            (true, vec!["delete", "secrets", "-n", a]),
            (false, vec!["deletecollection", "secrets", "-n", a]),
            (true, vec!["get", "secrets/keyward-seal", "-n", rel]),
            (false, vec!["get", "secrets/another", "-n", rel]),
            (false, vec!["patch", "secrets", "-n", a]),
            (false, vec!["create", "deployments.apps", "-n", a]),
            (false, vec!["update", "deployments.apps", "-n", a]),
            (false, vec!["delete", "deployments.apps", "-n", a]),
            (false, vec!["patch", "horizontalpodautoscalers.autoscaling", "-n", a]),
            // A Prometheus source's CA bundle: get by name, nothing else.
            (true, vec!["get", "configmaps", "-n", a]),
            (false, vec!["list", "configmaps", "-n", a]),
            (false, vec!["update", "configmaps", "-n", a]),
            (false, vec!["list", "pods", "-n", a]),
            (false, vec!["create", "events", "-n", a]),
            (false, vec!["update", "apikeys.keyward.dev", "-n", a]),
            (false, vec!["delete", "apikeys.keyward.dev", "-n", a]),
            // CRDs: the two by name, read-only.
            (false, vec!["get", "customresourcedefinitions/certificates.cert-manager.io"]),
            (false, vec!["list", "customresourcedefinitions"]),
            (false, vec!["update", "customresourcedefinitions/apikeys.keyward.dev"]),
            // The Lease: only its own, only in its namespace.
            (false, vec!["patch", "leases.coordination.k8s.io/kube-controller-manager", "-n", rel]),
            (false, vec!["list", "leases.coordination.k8s.io", "-n", rel]),
            (false, vec!["get", "leases.coordination.k8s.io/keyward-leader", "-n", a]),
            (false, vec!["delete", "leases.coordination.k8s.io/keyward-leader", "-n", rel]),
        ],
    );
}

#[test]
fn cluster_identity_is_minimal() {
    let _cp = control_plane();
    let release = namespace("helm_min_cluster");
    let other = namespace("helm_min_cluster_other");
    let id = identity::install("kw-min-cluster", &release, &[]);
    let (other, rel) = (other.as_str(), release.as_str());
    check_can_i(
        &id,
        &[
            (true, vec!["list", "secrets", "--all-namespaces"]),
            (true, vec!["watch", "apikeys.keyward.dev", "--all-namespaces"]),
            (true, vec!["get", "secrets", "-n", other]),
            (true, vec!["create", "secrets", "-n", other]),
            (true, vec!["patch", "deployments.apps", "--subresource=scale", "-n", other]),
            (true, vec!["patch", "daemonsets.apps", "-n", other]),
            (true, vec!["create", "events.events.k8s.io", "-n", other]),
            (true, vec!["get", "customresourcedefinitions/ratelimitpolicies.keyward.dev"]),
            (true, vec!["patch", "leases.coordination.k8s.io/keyward-leader", "-n", rel]),
            (true, vec!["delete", "secrets", "-n", other]),
            (false, vec!["deletecollection", "secrets", "-n", other]),
            (false, vec!["patch", "secrets", "-n", other]),
            (false, vec!["create", "deployments.apps", "-n", other]),
            (false, vec!["patch", "daemonsets.apps", "--subresource=scale", "-n", other]),
            (true, vec!["get", "configmaps", "-n", other]),
            (false, vec!["list", "configmaps", "-n", other]),
            (false, vec!["watch", "configmaps", "-n", other]),
            (false, vec!["list", "namespaces"]),
            (false, vec!["list", "customresourcedefinitions"]),
            (false, vec!["create", "customresourcedefinitions"]),
            (false, vec!["get", "leases.coordination.k8s.io/keyward-leader", "-n", other]),
            (false, vec!["create", "clusterroles.rbac.authorization.k8s.io"]),
            (false, vec!["impersonate", "serviceaccounts", "-n", rel]),
        ],
    );
}

#[tokio::test]
async fn chart_identity_kubeconfig_works() {
    let _cp = control_plane_with_crds().await;
    let release = namespace("helm_identity");
    let (watched, other) = (namespace("helm_identity_watched"), namespace("helm_identity_other"));
    let set = format!("watchNamespaces={{{watched}}}");
    let id = identity::install("kw-identity", &release, &["--set", "rbac.scope=namespaced", "--set", &set]);

    let whoami = id.kubectl(&["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
    assert!(whoami.status.success(), "{}", String::from_utf8_lossy(&whoami.stderr));
    assert_eq!(
        String::from_utf8_lossy(&whoami.stdout),
        id.user(),
        "the kubeconfig authenticates as the ServiceAccount"
    );
    for what in ["apikeys", "ratelimitpolicies", "secrets"] {
        let out = id.kubectl(&["get", what, "-n", &watched]);
        assert!(out.status.success(), "get {what} -n {watched}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = id.kubectl(&["get", "secrets", "-n", &other]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("Forbidden"), "get secrets -n {other}: {stderr}");
    let out = id.kubectl(&["get", "crd", "apikeys.keyward.dev"]);
    assert!(out.status.success(), "the start-up CRD check: {}", String::from_utf8_lossy(&out.stderr));

    // The parsed documents of the identity are what the chart renders: nothing else was applied.
    let all = parse_documents(&identity::template_text(
        "kw-identity",
        &release,
        &["--set", "rbac.scope=namespaced", "--set", &set],
    ));
    assert!(all.iter().any(|o| kind(o) == "Deployment"), "the chart also renders the Deployment");
    let deployed = kubectl(&["get", "deployments", "-n", &release, "-o", "name"]);
    assert!(String::from_utf8_lossy(&deployed.stdout).trim().is_empty(), "install() applies only the identity");
}
