#!/usr/bin/env python3
"""Renders deploy/helm/outpost offline with Helm's own library (helm-python-sdk) for the default values and every
values file in deploy/helm/examples/, lints the chart strictly, and validates every rendered manifest strictly
against Kubernetes schemas (kubernetes-validate) for 1.28 and the newest bundled version. Checks that a values file
as DataHub's terraform module writes it (examples/from-datahub-executor.yaml, nothing added) reaches every object it
configures, and that the chart refuses values it cannot serve. Exits non-zero on the first problem, saying which."""

import glob
import json
import os
import subprocess
import sys
import tempfile

import yaml
import helm_python

HERE = os.path.dirname(os.path.abspath(__file__))
CHART = os.path.join(HERE, "helm", "outpost")
VERSIONS = ["1.28.0", "1.37.0"]
# The certificates-from-Secrets layout (cert-manager): the controller's Secret, its CA's, and a join token's.
REQUIRED = {"controller": {"tlsSecretName": "outpost-controller-tls", "caSecretName": "outpost-ca"},
            "agents": {"joinToken": {"secretRef": "outpost-join-token"}}}


def merge(base, extra):
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def render(values, name="demo"):
    with helm_python.Chart.load(CHART) as chart:
        return chart.render(values, name=name, namespace="datahub")


def notes(values):
    return next(text for path, text in render(values).items() if path.endswith("NOTES.txt"))


def fail_unless(condition, what):
    if not condition:
        sys.exit(f"from-datahub-executor.yaml: {what}")


def check_datahub_values(path):
    """Every setting of DataHub's terraform values file reaches its object; the only Secret referenced and not made
    by the chart is DataHub's token; the names Outpost does not use are listed in the notes."""
    with open(path) as f:
        values = yaml.safe_load(f)
    documents = validate(render(values), os.path.relpath(path, HERE))
    by_kind = {}
    for doc in documents:
        by_kind.setdefault(doc["kind"], []).append(doc)
    agents = next(d for d in by_kind["StatefulSet"] if d["metadata"]["name"].endswith("-agent"))
    controller = next(d for d in by_kind["StatefulSet"] if d["metadata"]["name"].endswith("-controller"))
    pod = agents["spec"]["template"]["spec"]
    container = pod["containers"][0]
    fail_unless(agents["spec"]["replicas"] == 3, f"replicaCount 3 gave {agents['spec']['replicas']} agents")
    fail_unless("--slots=7" in container["args"], f"max_workers 7 is not --slots=7: {container['args']}")
    fail_unless(container["image"] == "registry.acme.internal/outpost-agent:0.1.0", container["image"])
    fail_unless(container["imagePullPolicy"] == "Always", container["imagePullPolicy"])
    fail_unless(pod["imagePullSecrets"] == [{"name": "acme-registry"}], pod.get("imagePullSecrets"))
    fail_unless(container["resources"] == values["resources"], container["resources"])
    fail_unless(pod["serviceAccountName"] == "datahub-executor", pod["serviceAccountName"])
    fail_unless(controller["spec"]["template"]["spec"]["serviceAccountName"] == "datahub-executor",
                "the controller (which calls SQS) does not use the service account with the IAM role")
    account = next(d for d in by_kind["ServiceAccount"] if d["metadata"]["name"] == "datahub-executor")
    fail_unless(account["metadata"]["annotations"] == values["serviceAccount"]["annotations"], account)
    fail_unless(agents["spec"]["template"]["metadata"]["annotations"] == values["podAnnotations"], "podAnnotations")
    fail_unless(pod["nodeSelector"] == values["nodeSelector"], pod.get("nodeSelector"))
    fail_unless(pod["tolerations"] == values["tolerations"], pod.get("tolerations"))
    fail_unless(pod["securityContext"]["fsGroup"] == 1000, pod["securityContext"])
    fail_unless(container["securityContext"]["runAsUser"] == 1000, container["securityContext"])
    for probe in ("livenessProbe", "readinessProbe"):
        timing = {k: v for k, v in container[probe].items() if k != "httpGet"}
        fail_unless(timing == values[probe], f"{probe} timing {timing}")
    fail_unless(agents["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "state",
                "a StatefulSet's agents keep their identity on a volume")
    fail_unless("--signal-poll-interval=5s" in controller["spec"]["template"]["spec"]["containers"][0]["args"],
                "signal_poll_interval 5 (seconds) is not --signal-poll-interval=5s")
    fail_unless("--queue-from-gms=remote" in controller["spec"]["template"]["spec"]["containers"][0]["args"],
                "with nothing else said, the intake is DataHub Cloud's queue for the pool")
    fail_unless(secrets_to_make(documents) == {"datahub-access-token"},
                f"Secrets to make by hand: {sorted(secrets_to_make(documents))} (only DataHub's token should be)")
    text = notes(values)
    fail_unless("NOT USED by Outpost" in text and "global.datahub.executor.monitors" in text, text)
    print(f"{os.path.relpath(path, HERE)}: every DataHub setting reached its object; the only Secret to make is "
          "DataHub's token; the unused names are in the notes")


def secrets_to_make(documents):
    """The Secrets the rendered objects reference and do not make."""
    made = {d["metadata"]["name"] for d in documents if d["kind"] == "Secret"}
    referenced = set()
    for doc in documents:
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                referenced.add(volume["secret"]["secretName"])
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add(ref["name"])
    return referenced - made


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def check_standalone(path):
    """DataHub's values file with `mode: standalone` (and its token as a file): one pod, the controller a sidecar
    and one agent on loopback with DataHub's settings; the controller's volume as in mode fleet, so a helm upgrade
    between the modes is allowed and keeps SQLite."""
    with open(path) as f:
        values = merge(yaml.safe_load(f), {"mode": "standalone", "global": {"datahub": {"auth": {"tokenFileEnabled": True}}}})
    label = f"{os.path.relpath(path, HERE)} with mode: standalone and tokenFileEnabled"
    documents = validate(render(values), label)
    what = lambda text: sys.exit(f"{label}: {text}")  # noqa: E731
    workloads = [d for d in documents if d["kind"] in ("Deployment", "StatefulSet")]
    if [d["metadata"]["name"] for d in workloads] != ["demo-outpost-controller"]:
        what(f"one workload expected, got {[d['metadata']['name'] for d in workloads]}")
    if any(d["kind"] == "PodDisruptionBudget" for d in documents):
        what("a PodDisruptionBudget for agents that do not exist")
    pod = workloads[0]["spec"]["template"]["spec"]
    controller = next(c for c in pod["initContainers"] if c["name"] == "controller")
    if controller.get("restartPolicy") != "Always":
        what("the controller is not a sidecar (restartPolicy: Always), so it would stop before the agent drains")
    if [c["name"] for c in pod["containers"]] != ["agent"]:
        what(f"containers {[c['name'] for c in pod['containers']]}")
    agent = pod["containers"][0]
    for arg in ("--controller=https://127.0.0.1:7443", "--join-url=https://127.0.0.1:7444", "--slots=7"):
        if arg not in agent["args"]:
            what(f"the agent lacks {arg}: {agent['args']}")
    if any(m["name"] == "data" for m in agent["volumeMounts"]):
        what("the agent mounts the controller's volume (which holds the CA key)")
    if agent["resources"] != values["resources"] or pod["nodeSelector"] != values["nodeSelector"] \
            or pod["tolerations"] != values["tolerations"] or pod["serviceAccountName"] != "datahub-executor":
        what("DataHub's resources, scheduling or service account did not reach the pod")
    if not any(d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "datahub-executor" for d in documents):
        what("the service account DataHub's values ask the chart to make (serviceAccount.create) is not made")
    if pod["terminationGracePeriodSeconds"] != 180:
        what(f"grace period {pod['terminationGracePeriodSeconds']} s, not the agent's drain (150 s) + 30 s")
    env = env_of(controller)
    if env.get("DATAHUB_GMS_TOKEN_FILE") != "/etc/datahub/auth/token" or "DATAHUB_GMS_TOKEN" in env:
        what(f"the token is not read from DataHub's token file: {env}")
    mount = next((m for m in controller["volumeMounts"] if m["mountPath"] == "/etc/datahub/auth"), None)
    volume = next((v for v in pod["volumes"] if mount and v["name"] == mount["name"]), {})
    if volume.get("secret", {}).get("secretName") != "datahub-access-token":
        what(f"DataHub's token Secret is not mounted at /etc/datahub/auth: {pod['volumes']}")
    if secrets_to_make(documents) != {"datahub-access-token"}:
        what(f"Secrets to make by hand: {sorted(secrets_to_make(documents))}")
    fleet = next(d for d in validate(render(merge(values, {"mode": "fleet"})), f"{label} (mode fleet)")
                 if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "demo-outpost-controller")
    for key in ("selector", "serviceName", "volumeClaimTemplates"):
        if fleet["spec"][key] != workloads[0]["spec"][key]:
            what(f"spec.{key} differs between the modes (a StatefulSet cannot change it): helm upgrade would fail")
    if "Mode standalone" not in notes(values):
        what("the notes do not say the mode")
    # A token file at another path (a CSI or Vault mount, DataHub's extraVolumes): mounted in the controller too.
    vault = merge(values, {"mode": "fleet", "global": {"datahub": {"auth": {"tokenFile": "/mnt/vault/token"}}},
                           "extraVolumes": [{"name": "vault", "csi": {"driver": "secrets-store.csi.k8s.io"}}],
                           "extraVolumeMounts": [{"name": "vault", "mountPath": "/mnt/vault", "readOnly": True}]})
    controller = next(d for d in validate(render(vault), f"{label}, token file in a CSI mount")
                      if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "demo-outpost-controller")
    spec = controller["spec"]["template"]["spec"]
    if env_of(spec["containers"][0]).get("DATAHUB_GMS_TOKEN_FILE") != "/mnt/vault/token" \
            or not any(v["name"] == "vault" for v in spec["volumes"]) \
            or not any(m["mountPath"] == "/mnt/vault" for m in spec["containers"][0]["volumeMounts"]):
        what("a token file in DataHub's extraVolumes does not reach the controller")
    print(f"{label}: one pod (the controller a sidecar, one agent on loopback) with DataHub's settings; the token "
          "read from its file; the controller's volume unchanged between the modes")


def check_rules():
    """serviceMonitor.rules.enabled renders deploy/monitoring/outpost-rules.yaml as a PrometheusRule, with the runbook
    links pointing where the team publishes docs/RUNBOOK.md, and every runbook link names a section that exists."""
    with open(os.path.join(HERE, "monitoring", "outpost-rules.yaml")) as f:
        groups = yaml.safe_load(f)["groups"]
    url = "https://wiki.acme.internal/outpost/RUNBOOK.md"
    values = {"serviceMonitor": {"enabled": True, "rules": {"enabled": True, "runbookUrl": url}}}
    rendered = documents_of(render(values))
    rule = next((d for d in rendered if d.get("kind") == "PrometheusRule"), None)
    if rule is None:
        sys.exit("serviceMonitor.rules.enabled rendered no PrometheusRule")
    expected = yaml.safe_load(yaml.safe_dump(groups).replace("docs/RUNBOOK.md", url))
    if rule["spec"]["groups"] != expected:
        sys.exit("the PrometheusRule's groups differ from deploy/monitoring/outpost-rules.yaml")
    if any(d.get("kind") == "PrometheusRule" for d in documents_of(render({"serviceMonitor": {"enabled": True}}))):
        sys.exit("a PrometheusRule rendered without serviceMonitor.rules.enabled")
    with open(os.path.join(HERE, "..", "docs", "RUNBOOK.md")) as f:
        anchors = {line[3:].strip().lower() for line in f if line.startswith("## ")}
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    for alert in alerts:
        anchor = alert["annotations"]["runbook_url"].split("#", 1)[1]
        if anchor not in anchors or anchor != alert["alert"].lower():
            sys.exit(f"{alert['alert']}: its runbook_url names #{anchor}, which docs/RUNBOOK.md has no section for")
    dashboard_values = {"serviceMonitor": {"dashboard": {"enabled": True}}}
    maps = [d for d in validate(render(dashboard_values), "dashboard enabled") if d["kind"] == "ConfigMap"]
    with open(os.path.join(HERE, "monitoring", "outpost-dashboard.json")) as f:
        dashboard = json.load(f)
    if len(maps) != 1 or maps[0]["metadata"]["labels"].get("grafana_dashboard") != "1" \
            or json.loads(maps[0]["data"]["outpost-dashboard.json"]) != dashboard:
        sys.exit("serviceMonitor.dashboard.enabled does not render the dashboard ConfigMap as deploy/monitoring has it")
    print(f"PrometheusRule: {len(alerts)} alerts as in deploy/monitoring/outpost-rules.yaml, runbook links at {url}, "
          "each with its section in docs/RUNBOOK.md")


def documents_of(rendered):
    return [d for path, text in rendered.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]


# Objects of add-ons' CRDs (Prometheus Operator, KEDA) have no schema in kubernetes-validate: checked by hand.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"): ["selector", "endpoints"],
        ("monitoring.coreos.com/v1", "PrometheusRule"): ["groups"],
        ("keda.sh/v1alpha1", "ScaledObject"): ["scaleTargetRef", "triggers"]}


def validate(rendered, label):
    everything = documents_of(rendered)
    documents = []
    for doc in everything:
        required = CRDS.get((doc.get("apiVersion"), doc.get("kind")))
        if required is None:
            documents.append(doc)
        elif any(key not in doc.get("spec", {}) for key in required):
            sys.exit(f"{label}: {doc['kind']} lacks one of {required}")
    if not documents:
        sys.exit(f"{label}: nothing rendered")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(documents, f)
        path = f.name
    for version in VERSIONS:
        result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "kubernetes-validate"), "--strict",
                                 "-k", version, path], capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"{label}: kubernetes-validate --strict -k {version} failed:\n{result.stdout}{result.stderr}")
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in everything)
    print(f"{label}: {len(documents)} objects valid for Kubernetes {', '.join(VERSIONS)}: {', '.join(kinds)}")
    return documents


def main():
    for values in (None, REQUIRED):
        report = helm_python.lint(CHART, values, strict=True, kube_version="v1.30.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        if problems:
            sys.exit(f"helm lint --strict: {problems}")
    print("helm lint --strict: no warnings or errors")
    validate(render(REQUIRED), "certificates from Secrets")
    documents = validate(render({}), "default values (nothing added)")
    if not any(d["kind"] == "Secret" and d["metadata"]["name"].endswith("bootstrap-token") for d in documents):
        sys.exit("default values: no bootstrap token Secret")
    agent = next(d for d in documents if d["kind"] == "Deployment")
    grace = agent["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    if grace <= 150:
        sys.exit(f"the agents' grace period ({grace} s) must exceed the drain timeout (150 s)")
    controller = next(d for d in documents if d["kind"] == "StatefulSet")
    if any(a.startswith("--ui-listen") for a in controller["spec"]["template"]["spec"]["containers"][0]["args"]):
        sys.exit("the status page must be off by default")
    check_datahub_values(os.path.join(HERE, "helm", "examples", "from-datahub-executor.yaml"))
    check_rules()
    check_standalone(os.path.join(HERE, "helm", "examples", "from-datahub-executor.yaml"))
    for path in sorted(glob.glob(os.path.join(HERE, "helm", "examples", "*.yaml"))):
        with open(path) as f:
            values = yaml.safe_load(f)
        rendered = validate(render(values), os.path.relpath(path, HERE))
        if values.get("controller", {}).get("ui", {}).get("enabled"):
            # The status page: HTTPS on its port, in the Service and let through the NetworkPolicy.
            args = next(d for d in rendered if d["kind"] == "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["args"]
            service = next(d for d in rendered if d["kind"] == "Service" and not d["metadata"]["name"].endswith("headless"))
            policy = next(d for d in rendered if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("controller"))
            if "--ui-listen=0.0.0.0:7480" not in args or "--ui-tls" not in args:
                sys.exit(f"{path}: the status page is enabled but the controller's args are {args}")
            if not any(p["name"] == "ui" for p in service["spec"]["ports"]):
                sys.exit(f"{path}: the Service lacks the status page's port")
            if not any(p["port"] == 7480 for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])):
                sys.exit(f"{path}: the NetworkPolicy does not let the status page's port in")
            print(f"{os.path.relpath(path, HERE)}: the status page is served over HTTPS on port 7480")
    for broken, expected in [({"ingestions": {"max_workers": 4}}, "moved to DataHub's path"),
                             ({"workloadKind": "DaemonSet"}, "workloadKind must be Deployment or StatefulSet"),
                             ({"mode": "single"}, "mode must be fleet or standalone"),
                             ({"controller": {"tlsSecretName": "t"}}, "needs controller.caSecretName"),
                             (merge(REQUIRED, {"replicaCount": 2,
                                             "agents": {"enrollment": "certificates", "certificatesSecretName": "c"}}),
                              "use replicas 1"),
                             (merge(REQUIRED, {"agents": {"joinToken": {"secretRef": ""}}}), "joinToken.secretRef is required")]:
        try:
            render(broken)
        except Exception as e:  # noqa: BLE001 - the refusal is what is checked
            if expected not in str(e):
                sys.exit(f"values {broken} refused, but not with {expected!r}: {e}")
            print(f"refused as it should be: {expected}")
            continue
        sys.exit(f"values {broken} rendered; they should be refused ({expected})")


if __name__ == "__main__":
    main()
