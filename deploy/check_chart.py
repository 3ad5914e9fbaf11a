#!/usr/bin/env python3
"""Renders deploy/helm/outpost offline with Helm's own library (helm-python-sdk) for the default values and every
values file in deploy/helm/examples/, lints the chart strictly, and validates every rendered manifest strictly
against Kubernetes schemas (kubernetes-validate) for 1.28 and the newest bundled version. Also checks that the chart
refuses values it cannot serve. Exits non-zero on the first problem, saying which."""

import glob
import os
import subprocess
import sys
import tempfile

import yaml
import helm_python

HERE = os.path.dirname(os.path.abspath(__file__))
CHART = os.path.join(HERE, "helm", "outpost")
VERSIONS = ["1.28.0", "1.37.0"]
# What the default values cannot render without (a cluster always supplies these two Secrets' names).
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


# Objects of add-ons' CRDs (Prometheus Operator, KEDA) have no schema in kubernetes-validate: checked by hand.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"): ["selector", "endpoints"],
        ("keda.sh/v1alpha1", "ScaledObject"): ["scaleTargetRef", "triggers"]}


def validate(rendered, label):
    manifests = [text for path, text in rendered.items() if path.endswith(".yaml")]
    everything = [doc for text in manifests for doc in yaml.safe_load_all(text) if doc]
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
    documents = validate(render(REQUIRED), "default values")
    agent = next(d for d in documents if d["kind"] == "Deployment")
    grace = agent["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    if grace <= 150:
        sys.exit(f"the agents' grace period ({grace} s) must exceed the drain timeout (150 s)")
    controller = next(d for d in documents if d["kind"] == "StatefulSet")
    if any(a.startswith("--ui-listen") for a in controller["spec"]["template"]["spec"]["containers"][0]["args"]):
        sys.exit("the status page must be off by default")
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
    for broken, expected in [({}, "controller.tlsSecretName is required"),
                             (merge(REQUIRED, {"agents": {"enrollment": "certificates", "certificatesSecretName": "c"}}),
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
