"""The official Python Kubernetes client against the stand-in API server.

usage: kube_client.py SERVER TOKEN NAMESPACE
Prints one line per check ("ok ..." or "FAIL ...") and exits non-zero if any failed.
"""
import sys
import threading
import time

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

server, token, namespace = sys.argv[1:4]
configuration = client.Configuration()
configuration.host = server
configuration.api_key = {"authorization": "Bearer " + token}
api_client = client.ApiClient(configuration)
batch = client.BatchV1Api(api_client)
core = client.CoreV1Api(api_client)
failures = 0


def check(condition, what):
    global failures
    print(("ok   " if condition else "FAIL ") + what, flush=True)
    if not condition:
        failures += 1


def job(name, scan):
    labels = {"app.kubernetes.io/managed-by": "cloudscan", "cloudscan.io/scan-id": scan}
    return client.V1Job(
        api_version="batch/v1", kind="Job",
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1JobSpec(
            backoff_limit=0, ttl_seconds_after_finished=60,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    restart_policy="Never",
                    containers=[client.V1Container(
                        name="runner", image="ghcr.io/cloudscan/runner:0.1.0",
                        resources=client.V1ResourceRequirements(limits={"memory": "2048Mi", "cpu": "2000m"}))]))))


# create → the defaulted object, deserialized into the client's models
created = batch.create_namespaced_job(namespace, job("py-job-1", "s1"))
check(created.metadata.uid and created.metadata.resource_version, "create returns uid and resourceVersion")
check(created.spec.template.metadata.labels.get("job-name") == "py-job-1", "template gets the job-name label")
check(created.spec.template.spec.containers[0].resources.limits == {"memory": "2Gi", "cpu": "2"},
      "quantities come back canonical")
check(created.spec.template.spec.containers[0].image_pull_policy == "IfNotPresent", "pull policy defaulted")

try:
    batch.create_namespaced_job(namespace, job("py-job-1", "s1"))
    check(False, "a second create is refused")
except ApiException as error:
    check(error.status == 409 and '"reason":"AlreadyExists"' in error.body.replace(" ", ""), "second create: 409 AlreadyExists")

try:
    batch.read_namespaced_job("py-missing", namespace)
    check(False, "missing job is 404")
except ApiException as error:
    check(error.status == 404 and "not found" in error.body, "get of a missing Job: 404 NotFound")

for n in range(2, 6):
    batch.create_namespaced_job(namespace, job(f"py-job-{n}", f"s{n}"))
names, token_, pages = [], None, 0
while True:
    page = batch.list_namespaced_job(namespace, label_selector="app.kubernetes.io/managed-by=cloudscan",
                                     limit=2, _continue=token_)
    pages += 1
    names += [item.metadata.name for item in page.items]
    token_ = page.metadata._continue
    if not token_:
        break
check(pages == 3 and names == sorted(names) and len(set(names)) == 5, f"list pages by 2: {pages} pages, {names}")

# watch from the list's resourceVersion: the completion and the delete arrive as events
listed = batch.list_namespaced_job(namespace, label_selector="cloudscan.io/scan-id=s1")
events = []


def watcher():
    w = watch.Watch()
    for event in w.stream(batch.list_namespaced_job, namespace, label_selector="cloudscan.io/scan-id=s1",
                          resource_version=listed.metadata.resource_version, timeout_seconds=5):
        events.append((event["type"], event["object"].metadata.name))
        if event["type"] == "DELETED":
            w.stop()


thread = threading.Thread(target=watcher)
thread.start()
time.sleep(0.3)
status = batch.delete_namespaced_job("py-job-1", namespace, propagation_policy="Background")
check(status.status == "Success" and status.details.kind == "jobs", f"Background delete answers a Status: {status}")
thread.join(10)
check(("DELETED", "py-job-1") in events, f"watch saw the delete: {events}")

pods = core.list_namespaced_pod(namespace, label_selector="job-name=py-job-2")
check(len(pods.items) == 1 and pods.items[0].status.phase == "Pending", "the Job's pod is Pending")
log = core.read_namespaced_pod_log(pods.items[0].metadata.name, namespace, container="runner")
check(log == "", "a pending pod's log is empty (204)")

unauthorized = client.Configuration()
unauthorized.host = server
unauthorized.api_key = {"authorization": "Bearer not-a-valid-token"}
try:
    client.BatchV1Api(client.ApiClient(unauthorized)).list_namespaced_job(namespace)
    check(False, "a bad token is refused")
except ApiException as error:
    check(error.status == 401, "a bad token: 401")

print(f"{failures} failed", flush=True)
sys.exit(1 if failures else 0)
