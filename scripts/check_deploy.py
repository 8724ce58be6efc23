"""Structural checks of the deployment files that schema validation alone cannot make.

    check_deploy.py ROOT [--self-test]

Kubernetes core kinds are validated against the official schemas by kubernetes-validate --strict
(scripts/check-deploy). Here:
  - KEDA ScaledObject / TriggerAuthentication against a structural schema of KEDA's CRDs
    (keda.sh/v1alpha1; the CRD itself is not available offline);
  - cross references: every consumer role's Deployment has a ScaledObject over exactly the queues it
    consumes, each queue exists in topology/topology.json, each authenticationRef and scaleTargetRef
    resolves; service accounts exist; the dispatcher's Role grants what it calls; the grace period
    outlasts the drain; kustomization.yaml lists every file; every role has a Deployment and a
    compose service;
  - the Grafana dashboard queries only metric names the code registers.
--self-test breaks copies of the files in known ways and requires each break to be reported.
"""
import copy
import glob
import json
import os
import re
import sys

import jsonschema
import yaml

ROLES = ["api", "relay", "dispatcher", "sweeper", "findings-writer", "status-writer", "cleaner", "notifier"]
# The queues each role consumes (Sources/CloudScanCLI: DispatcherParts, WriterParts, NotifierParts).
CONSUMES = {
    "dispatcher": {"cloudscan.dispatch", "cloudscan.cancel"},
    "findings-writer": {"cloudscan.findings.ingest"},
    "status-writer": {"cloudscan.status.ingest"},
    "notifier": {"cloudscan.notify"},
}
# What the dispatcher and sweeper call (CloudScanKubernetes.KubernetesClient through the backends).
REQUIRED_RULES = {
    ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
    ("", "pods"): {"get", "list"},
    ("", "pods/log"): {"get"},
    ("", "secrets"): {"create", "delete", "patch"},
}

INT32 = {"type": "integer", "minimum": 0, "maximum": 2147483647}
NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253}
METADATA = {"type": "object", "required": ["name"], "properties": {"name": NAME, "namespace": NAME}}
# keda.sh/v1alpha1, after KEDA's CRDs (config/crd/bases): the fields cloudscan uses, closed.
SCALED_OBJECT = {
    "type": "object", "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "ScaledObject"}, "metadata": METADATA,
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object", "additionalProperties": False, "required": ["name"],
                    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "name": NAME,
                                   "envSourceContainerName": {"type": "string"}}},
                "pollingInterval": INT32, "cooldownPeriod": INT32, "initialCooldownPeriod": INT32,
                "idleReplicaCount": INT32, "minReplicaCount": INT32, "maxReplicaCount": INT32,
                "advanced": {"type": "object", "properties": {
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "horizontalPodAutoscalerConfig": {"type": "object", "properties": {
                        "name": {"type": "string"}, "behavior": {"type": "object"}}}}},
                "fallback": {"type": "object", "required": ["failureThreshold", "replicas"],
                             "properties": {"failureThreshold": INT32, "replicas": INT32}},
                "triggers": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "additionalProperties": False, "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"}, "name": {"type": "string"},
                            "useCachedMetrics": {"type": "boolean"}, "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                            "authenticationRef": {"type": "object", "required": ["name"],
                                                  "properties": {"name": NAME, "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]}}},
                        }}},
            }},
    },
}
TRIGGER_AUTHENTICATION = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "TriggerAuthentication"}, "metadata": METADATA,
        "spec": {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": {
            "secretTargetRef": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["parameter", "name", "key"],
                "properties": {"parameter": {"type": "string"}, "name": NAME, "key": {"type": "string"}}}},
            "env": {"type": "array"}, "podIdentity": {"type": "object"}}}},
}
# The rabbitmq scaler's metadata (KEDA docs, scalers/rabbitmq-queue).
RABBITMQ_METADATA = {
    "type": "object", "additionalProperties": False, "required": ["queueName", "mode", "value"],
    "properties": {"queueName": {"type": "string"}, "mode": {"enum": ["QueueLength", "MessageRate"]},
                   "value": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
                   "activationValue": {"type": "string"}, "protocol": {"enum": ["auto", "amqp", "http"]},
                   "vhostName": {"type": "string"}, "hostFromEnv": {"type": "string"},
                   "unsafeSsl": {"type": "string"}}}


def load(root):
    files = {}
    for path in sorted(glob.glob(os.path.join(root, "deploy/kubernetes/*.yaml"))):
        files[os.path.basename(path)] = [d for d in yaml.safe_load_all(open(path)) if d]
    return {
        "kubernetes": files,
        "topology": json.load(open(os.path.join(root, "topology/topology.json"))),
        "compose": yaml.safe_load(open(os.path.join(root, "compose.yaml"))),
        "dashboard": json.load(open(os.path.join(root, "deploy/grafana/cloudscan-fleet.json"))),
        "metric_names": registered_metrics(root),
    }


def registered_metrics(root):
    names = set()
    for path in glob.glob(os.path.join(root, "Sources/CloudScanMetrics/*.swift")):
        names |= set(re.findall(r'name: "(cloudscan_[a-z0-9_]+)"', open(path).read()))
    return names


def check(data):
    errors = []
    docs = [(name, d) for name, ds in data["kubernetes"].items() if name != "kustomization.yaml" for d in ds]
    by_kind = {}
    for name, d in docs:
        by_kind.setdefault(d.get("kind"), []).append((name, d))
    deployments = {d["metadata"]["name"]: d for _, d in by_kind.get("Deployment", [])}
    auths = {d["metadata"]["name"] for _, d in by_kind.get("TriggerAuthentication", [])}
    queues = {q["name"] for q in data["topology"]["workQueues"]}

    for name, d in by_kind.get("TriggerAuthentication", []):
        for e in jsonschema.Draft202012Validator(TRIGGER_AUTHENTICATION).iter_errors(d):
            errors.append(f"{name}: TriggerAuthentication {list(e.absolute_path)}: {e.message}")
    scaled = {}
    for name, d in by_kind.get("ScaledObject", []):
        for e in jsonschema.Draft202012Validator(SCALED_OBJECT).iter_errors(d):
            errors.append(f"{name}: ScaledObject {list(e.absolute_path)}: {e.message}")
        spec = d.get("spec", {})
        target = spec.get("scaleTargetRef", {}).get("name")
        if target not in deployments:
            errors.append(f"{name}: scaleTargetRef {target} is not a Deployment here")
        if target in scaled:
            errors.append(f"{name}: a second ScaledObject for {target} (KEDA allows one per target)")
        lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
            errors.append(f"{name}: minReplicaCount {lo} > maxReplicaCount {hi}")
        seen = set()
        for trigger in spec.get("triggers", []) or []:
            if trigger.get("type") != "rabbitmq":
                errors.append(f"{name}: trigger type {trigger.get('type')} (cloudscan scales by RabbitMQ queues)")
                continue
            for e in jsonschema.Draft202012Validator(RABBITMQ_METADATA).iter_errors(trigger.get("metadata", {})):
                errors.append(f"{name}: rabbitmq metadata {list(e.absolute_path)}: {e.message}")
            queue = trigger.get("metadata", {}).get("queueName")
            if queue not in queues:
                errors.append(f"{name}: queue {queue} is not a work queue of topology/topology.json")
            seen.add(queue)
            ref = (trigger.get("authenticationRef") or {}).get("name")
            if ref not in auths:
                errors.append(f"{name}: authenticationRef {ref} is not a TriggerAuthentication here")
        scaled[target] = seen

    for role in ROLES:
        deployment = deployments.get(f"cloudscan-{role}")
        if deployment is None:
            errors.append(f"no Deployment cloudscan-{role}")
            continue
        pod = deployment["spec"]["template"]["spec"]
        args = pod["containers"][0].get("args", [])
        if not args or args[0] != role:
            errors.append(f"cloudscan-{role}: runs {args[:1]}, not the {role} role")
        if role in CONSUMES and scaled.get(f"cloudscan-{role}") != CONSUMES[role]:
            errors.append(f"cloudscan-{role}: ScaledObject queues {sorted(scaled.get(f'cloudscan-{role}', []))}"
                          f" are not the queues it consumes {sorted(CONSUMES[role])}")
        if role not in CONSUMES and f"cloudscan-{role}" in scaled:
            errors.append(f"cloudscan-{role}: scaled by queue length but consumes no queue")
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if any(labels.get(k) != v for k, v in selector.items()):
            errors.append(f"cloudscan-{role}: selector does not match the pod labels")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        drain = int(config_value(docs, "DRAIN_TIMEOUT_SECONDS") or 20)
        if grace <= drain:
            errors.append(f"cloudscan-{role}: grace period {grace}s does not outlast the drain ({drain}s)")
        accounts = {d["metadata"]["name"] for _, d in by_kind.get("ServiceAccount", [])}
        if pod.get("serviceAccountName") not in accounts:
            errors.append(f"cloudscan-{role}: service account {pod.get('serviceAccountName')} not defined")
        if not any(pdb["spec"]["selector"]["matchLabels"] == selector for _, pdb in by_kind.get("PodDisruptionBudget", [])):
            errors.append(f"cloudscan-{role}: no PodDisruptionBudget")
        if role not in (data["compose"].get("services") or {}):
            errors.append(f"compose.yaml: no service {role}")

    roles = {d["metadata"]["name"]: d for _, d in by_kind.get("Role", [])}
    rules = roles.get("cloudscan-dispatcher", {}).get("rules", [])
    for (group, resource), verbs in REQUIRED_RULES.items():
        granted = set()
        for rule in rules:
            if group in rule.get("apiGroups", []) and resource in rule.get("resources", []):
                granted |= set(rule.get("verbs", []))
        if not verbs <= granted:
            errors.append(f"Role cloudscan-dispatcher: {resource} lacks {sorted(verbs - granted)}")

    kustomization = (data["kubernetes"].get("kustomization.yaml") or [{}])[0]
    listed = set(kustomization.get("resources", []))
    for name in data["kubernetes"]:
        if name != "kustomization.yaml" and name not in listed:
            errors.append(f"kustomization.yaml does not list {name}")

    for panel in data["dashboard"].get("panels", []):
        for target in panel.get("targets", []):
            for metric in re.findall(r"\b(cloudscan_[a-z0-9_]+)", target.get("expr", "")):
                base = re.sub(r"_(bucket|sum|count)$", "", metric)
                if base not in data["metric_names"] and metric not in data["metric_names"]:
                    errors.append(f"dashboard panel '{panel.get('title')}': {metric} is not a metric the code registers")
    return errors


def config_value(docs, key):
    for _, d in docs:
        if d.get("kind") == "ConfigMap" and key in (d.get("data") or {}):
            return d["data"][key]
    return None


def self_test(data):
    def first(d, kind, name=None):
        for ds in d["kubernetes"].values():
            for doc in ds:
                if doc.get("kind") == kind and (name is None or doc["metadata"]["name"] == name):
                    return doc
        raise SystemExit(f"self-test: no {kind} {name}")

    breaks = {
        "a queue that does not exist": lambda d: first(d, "ScaledObject", "cloudscan-notifier")["spec"]["triggers"][0]["metadata"].__setitem__("queueName", "cloudscan.nope"),
        "an unknown ScaledObject field": lambda d: first(d, "ScaledObject")["spec"].__setitem__("minReplicas", 1),
        "a non-string trigger value": lambda d: first(d, "ScaledObject")["spec"]["triggers"][0]["metadata"].__setitem__("value", 50),
        "a consumer without its ScaledObject": lambda d: d["kubernetes"].__setitem__("notifier.yaml", [x for x in d["kubernetes"]["notifier.yaml"] if x["kind"] != "ScaledObject"]),
        "a missing Role verb": lambda d: first(d, "Role")["rules"][3].__setitem__("verbs", ["create"]),
        "a grace period shorter than the drain": lambda d: first(d, "Deployment", "cloudscan-relay")["spec"]["template"]["spec"].__setitem__("terminationGracePeriodSeconds", 10),
        "an unknown metric in the dashboard": lambda d: d["dashboard"]["panels"][0]["targets"][0].__setitem__("expr", "rate(cloudscan_nope_total[5m])"),
        "a role missing from compose": lambda d: d["compose"]["services"].pop("status-writer"),
        "a file missing from kustomization": lambda d: d["kubernetes"]["kustomization.yaml"][0]["resources"].remove("relay.yaml"),
    }
    failed = []
    for what, mutate in breaks.items():
        broken = copy.deepcopy(data)
        mutate(broken)
        if not check(broken):
            failed.append(what)
        else:
            print(f"self-test: {what}: reported")
    if failed:
        raise SystemExit(f"self-test: not reported: {failed}")


def main():
    root = sys.argv[1]
    data = load(root)
    errors = check(data)
    for e in errors:
        print(f"ERROR {e}")
    if errors:
        sys.exit(1)
    kinds = sorted({d["kind"] for ds in data["kubernetes"].values() for d in ds})
    print(f"deploy structure ok: {sum(len(ds) for ds in data['kubernetes'].values())} objects ({', '.join(kinds)}), "
          f"{len(data['dashboard']['panels'])} dashboard panels over {len(data['metric_names'])} registered metrics")
    if "--self-test" in sys.argv:
        self_test(data)


main()
