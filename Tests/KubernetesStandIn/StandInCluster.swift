import CloudScanCore
import Foundation

/// The stand-in's state: objects as JSON dictionaries (what a real server stores and returns),
/// one resourceVersion counter, the Job event history (for Exact lists and watches), watchers.
public actor StandInCluster {
    typealias Object = [String: Any]

    private var resourceVersion = 1000
    /// History below this resourceVersion is compacted (lists/watches from it get 410).
    private var compactedBelow = 0
    private var jobs: [String: Object] = [:]  // "ns/name"
    /// The last list's matching names, sorted, for its resourceVersion, namespace and selector: the
    /// pages of one list reuse it (any change bumps the resourceVersion, which retires it), as
    /// the API server's watch cache serves pages without re-reading everything.
    private var listCache: (rv: Int, namespace: String, selector: String, names: [String])?
    /// Each Job as a list item (no kind/apiVersion), encoded once per change: a list of thousands
    /// would otherwise spend its time in JSONSerialization.
    private var listItemJSON: [String: Data] = [:]

    /// Every change of a Job goes through here (so its encoded list item is renewed).
    private func storeJob(_ key: String, _ job: Object?) {
        jobs[key] = job
        listItemJSON[key] = nil
    }

    private func listItem(_ key: String, _ job: Object) -> Data {
        if let cached = listItemJSON[key] { return cached }
        var item = job
        item.removeValue(forKey: "kind")
        item.removeValue(forKey: "apiVersion")
        let data = Self.encode(item)
        listItemJSON[key] = data
        return data
    }
    private var pods: [String: Object] = [:]
    /// Each pod's labels as Swift strings (what selectors match; reading them out of the pod's
    /// `[String: Any]` on every list would dominate a list of thousands).
    private var podLabels: [String: [String: String]] = [:]

    /// Pod keys by "namespace/job-name" label (the Job controller's index).
    private var podsByJob: [String: Set<String>] = [:]

    private func storePod(_ key: String, _ pod: Object?) {
        let namespace = key.split(separator: "/", maxSplits: 1).first.map(String.init) ?? ""
        if let job = podLabels[key]?["job-name"] { podsByJob["\(namespace)/\(job)"]?.remove(key) }
        pods[key] = pod
        podLabels[key] = pod.map { Self.meta($0)["labels"] as? [String: String] ?? [:] }
        if let job = podLabels[key]?["job-name"] { podsByJob["\(namespace)/\(job)", default: []].insert(key) }
    }
    private var secrets: [String: Object] = [:]
    private var history: [(rv: Int, type: String, namespace: String, name: String, object: Object)] = []
    private var watchers: [UUID: Watcher] = [:]
    private var faults: [(method: String?, pathContains: String?, fault: StandInFault)] = []
    private var logs: [String: String] = [:]
    /// Every Job POST that reached the server (even one answered 409), with when it arrived.
    public private(set) var jobCreates: [(name: String, at: ContinuousClock.Instant, date: Date)] = []
    /// The bodies of every Job POST, as sent.
    public private(set) var postedJobs: [Data] = []
    /// Requests that reached the server (counted on arrival, before any injected delay).
    public private(set) var arrivals = 0
    /// Requests seen, as "METHOD path".
    public private(set) var requests: [String] = []

    private struct Watcher {
        var namespace: String
        var selector: [SelectorTerm]
        var continuation: AsyncStream<Data>.Continuation
    }

    enum WatchStart: Sendable {
        case reply(StandInReply)
        case stream(initial: [Data], live: AsyncStream<Data>, id: UUID, closeAtOnce: Bool)
    }

    // MARK: Test hooks

    /// The next requests matching (method, path substring) fail or wait, in order.
    public func inject(_ fault: StandInFault, times: Int = 1, method: String? = nil, pathContains: String? = nil) {
        for _ in 0..<times { faults.append((method, pathContains, fault)) }
    }

    /// Injected faults not used yet.
    public var pendingFaults: Int { faults.count }

    /// Forgets history up to now: older resourceVersions and continue tokens expire (410).
    public func compact() { compactedBelow = resourceVersion + 1 }

    public var currentResourceVersion: Int { resourceVersion }

    public func jobNames(namespace: String) -> [String] {
        jobs.keys.filter { $0.hasPrefix("\(namespace)/") }.map { String($0.dropFirst(namespace.count + 1)) }.sorted()
    }

    public func jobJSON(namespace: String, name: String) -> Data? {
        jobs["\(namespace)/\(name)"].map { Self.encode($0) }
    }

    public func podNames(namespace: String) -> [String] {
        pods.keys.filter { $0.hasPrefix("\(namespace)/") }.map { String($0.dropFirst(namespace.count + 1)) }.sorted()
    }

    public func secretNames(namespace: String) -> [String] {
        secrets.keys.filter { $0.hasPrefix("\(namespace)/") }.map { String($0.dropFirst(namespace.count + 1)) }
            .sorted()
    }

    /// What the pod's log returns once it has run.
    public func setLog(pod: String, _ text: String) { logs[pod] = text }

    /// The Job's pod succeeded: the controller's Complete condition, `succeeded: 1`, completionTime.
    public func completeJob(namespace: String, name: String) {
        finishPods(namespace: namespace, job: name, phase: "Succeeded", exitCode: 0, reason: "Completed")
        updateJob(namespace: namespace, name: name) { job in
            var status = job["status"] as? Object ?? [:]
            status.removeValue(forKey: "active")
            status["succeeded"] = 1
            status["completionTime"] = Self.now()
            status["conditions"] = [
                [
                    "type": "Complete", "status": "True", "lastProbeTime": Self.now(),
                    "lastTransitionTime": Self.now(),
                ]
            ]
            job["status"] = status
        }
    }

    /// The Job failed as the 1.20 controller reports it: `BackoffLimitExceeded` (its pod failed
    /// with `exitCode`) or `DeadlineExceeded` (its pod is deleted).
    /// `terminationMessage` is what the runner wrote to /dev/termination-log (the container's
    /// `state.terminated.message`).
    public func failJob(
        namespace: String, name: String, reason: String = "BackoffLimitExceeded", exitCode: Int = 2,
        terminationMessage: String? = nil
    ) {
        let message: String
        if reason == "DeadlineExceeded" {
            message = "Job was active longer than specified deadline"
            for key in podKeys(namespace: namespace, job: name) { deletePod(key) }
        } else {
            message = "Job has reached the specified backoff limit"
            finishPods(
                namespace: namespace, job: name, phase: "Failed", exitCode: exitCode, reason: "Error",
                message: terminationMessage)
        }
        updateJob(namespace: namespace, name: name) { job in
            var status = job["status"] as? Object ?? [:]
            status.removeValue(forKey: "active")
            status["failed"] = 1
            status["conditions"] = [
                [
                    "type": "Failed", "status": "True", "reason": reason, "message": message,
                    "lastProbeTime": Self.now(), "lastTransitionTime": Self.now(),
                ]
            ]
            job["status"] = status
        }
    }

    // MARK: Requests

    func takeFault(_ request: StandInRequest) -> StandInFault? {
        arrivals += 1
        guard
            let index = faults.firstIndex(where: { fault in
                (fault.method == nil || fault.method == request.method)
                    && (fault.pathContains == nil || request.path.contains(fault.pathContains!))
            })
        else { return nil }
        return faults.remove(at: index).fault
    }

    func faultReply(_ code: Int) -> StandInReply {
        switch code {
        case 401: return Self.status(401, reason: "Unauthorized", message: "Unauthorized", details: nil)
        case 429:
            return Self.status(
                429, reason: "TooManyRequests", message: "Too many requests, please try again later.",
                details: ["retryAfterSeconds": 1])
        case 504:
            return Self.status(
                504, reason: "Timeout", message: "Timeout: request did not complete within the allowed duration",
                details: nil)
        default:
            return Self.status(
                code, reason: "InternalError", message: "Internal error occurred: injected", details: nil)
        }
    }

    func handle(_ request: StandInRequest) -> StandInReply {
        requests.append("\(request.method) \(request.path)")
        let parts = request.path.split(separator: "/").map(String.init)
        if request.path == "/version" {
            return StandInReply(
                status: 200,
                body: Data(
                    #"{"major":"1","minor":"20","gitVersion":"v1.20.2","gitCommit":"faecb196815e248d3ecfb03c680a4507229c2a56","gitTreeState":"archive","buildDate":"2021-01-01T00:00:00Z","goVersion":"go1.19.8","compiler":"gc","platform":"linux/amd64"}"#
                        .utf8))
        }
        // /apis/batch/v1/namespaces/NS/jobs[/NAME] · /api/v1/namespaces/NS/{pods,secrets}[/NAME[/log|/status]]
        let resource: String
        let namespace: String
        let rest: [String]
        if parts.count >= 5, parts[0] == "apis", parts[1] == "batch", parts[2] == "v1", parts[3] == "namespaces" {
            namespace = parts[4]
            resource = parts.count > 5 ? parts[5] : ""
            rest = Array(parts.dropFirst(6))
        } else if parts.count >= 4, parts[0] == "api", parts[1] == "v1", parts[2] == "namespaces" {
            namespace = parts[3]
            resource = parts.count > 4 ? parts[4] : ""
            rest = Array(parts.dropFirst(5))
        } else {
            return Self.status(
                404, reason: "NotFound", message: "the server could not find the requested resource", details: nil)
        }
        let verb = Self.verb(request.method, hasName: !rest.isEmpty)
        if let denied = authorize(request, verb: verb, resource: resource, namespace: namespace) { return denied }
        switch (resource, request.method, rest.count) {
        case ("jobs", "POST", 0): return createJob(namespace: namespace, body: request.body)
        case ("jobs", "GET", 0): return listJobs(namespace: namespace, query: request.query)
        case ("jobs", "GET", 1):
            return getObject(jobs, namespace: namespace, name: rest[0], group: "batch", kind: "jobs")
        case ("jobs", "DELETE", 1):
            return deleteJob(namespace: namespace, name: rest[0], body: request.body, query: request.query)
        case ("pods", "GET", 0): return listPods(namespace: namespace, query: request.query)
        case ("pods", "GET", 1): return getObject(pods, namespace: namespace, name: rest[0], group: nil, kind: "pods")
        case ("pods", "GET", 2) where rest[1] == "log":
            return podLog(namespace: namespace, name: rest[0], query: request.query)
        case ("secrets", "POST", 0): return createSecret(namespace: namespace, body: request.body)
        case ("secrets", "GET", 1):
            return getObject(secrets, namespace: namespace, name: rest[0], group: nil, kind: "secrets")
        case ("secrets", "PATCH", 1):
            return patchSecret(
                namespace: namespace, name: rest[0], contentType: request.contentType, body: request.body)
        case ("secrets", "DELETE", 1):
            let key = "\(namespace)/\(rest[0])"
            guard let secret = secrets.removeValue(forKey: key) else {
                return Self.notFound("secrets", group: nil, rest[0])
            }
            return Self.deletedStatus(
                name: rest[0], group: nil, kind: "secrets", uid: Self.meta(secret)["uid"] as? String)
        default:
            return Self.status(
                405, reason: "MethodNotAllowed",
                message: "the server does not allow this method on the requested resource", details: nil)
        }
    }

    private static func verb(_ method: String, hasName: Bool) -> String {
        switch method {
        case "POST": return "create"
        case "DELETE": return "delete"
        case "PATCH": return "patch"
        case "PUT": return "update"
        default: return hasName ? "get" : "list"
        }
    }

    private func authorize(_ request: StandInRequest, verb: String, resource: String, namespace: String)
        -> StandInReply?
    {
        let group = resource == "jobs" ? "batch" : ""
        let user: String
        switch request.authorization {
        case nil: user = "system:anonymous"
        case "Bearer \(KubernetesStandIn.adminToken)"?: return nil
        case "Bearer \(KubernetesStandIn.noAccessToken)"?: user = "cloudscan-noaccess"
        default: return Self.status(401, reason: "Unauthorized", message: "Unauthorized", details: nil)
        }
        let qualified = group.isEmpty ? resource : "\(resource).\(group)"
        var reply = Self.status(
            403, reason: "Forbidden",
            message:
                "\(qualified) is forbidden: User \"\(user)\" cannot \(verb) resource \"\(resource)\" in API group \"\(group)\" in the namespace \"\(namespace)\"",
            details: ["group": group, "kind": resource])
        reply.extraHeaders = [("X-Content-Type-Options", "nosniff")]
        return reply
    }

    // MARK: Jobs

    private static let jobSpecFields: Set<String> = [
        "parallelism", "completions", "activeDeadlineSeconds", "backoffLimit", "selector", "manualSelector",
        "template", "ttlSecondsAfterFinished",
    ]

    private func createJob(namespace: String, body: Data) -> StandInReply {
        jobCreates.append(("", ContinuousClock.now, Date()))
        postedJobs.append(body)
        guard var job = Self.decode(body) else {
            return Self.status(
                400, reason: "BadRequest", message: "the body of the request was in an unknown format", details: nil)
        }
        var metadata = Self.meta(job)
        guard let name = metadata["name"] as? String, !name.isEmpty else {
            return Self.invalid(
                "",
                causes: [("FieldValueRequired", "Required value: name or generateName is required", "metadata.name")])
        }
        jobCreates[jobCreates.count - 1].name = name
        // Validation, in the order the 1.20 server reports it (first cause wins here).
        if let labels = metadata["labels"] as? [String: String] {
            for (_, value) in labels.sorted(by: { $0.key < $1.key }) where !Self.validLabelValue(value) {
                return Self.invalid(
                    name,
                    causes: [
                        (
                            "FieldValueInvalid",
                            "Invalid value: \"\(value)\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
                            "metadata.labels"
                        )
                    ])
            }
        }
        if name.count > 63 {
            return Self.invalid(
                name,
                causes: [
                    (
                        "FieldValueInvalid", "Invalid value: \"\(name)\": must be no more than 63 characters",
                        "spec.template.labels"
                    )
                ])
        }
        guard var spec = job["spec"] as? Object, var template = spec["template"] as? Object,
            var podSpec = template["spec"] as? Object
        else {
            return Self.invalid(
                name, causes: [("FieldValueRequired", "Required value", "spec.template.spec.containers")])
        }
        // A missing policy defaults to Always, which a Job refuses — as 1.20 words it, "Required".
        let restart = podSpec["restartPolicy"] as? String
        if restart != "Never" && restart != "OnFailure" {
            return Self.invalid(
                name,
                causes: [
                    (
                        "FieldValueRequired", "Required value: valid values: \"OnFailure\", \"Never\"",
                        "spec.template.spec.restartPolicy"
                    )
                ])
        }
        guard let containers = podSpec["containers"] as? [Object], !containers.isEmpty else {
            return Self.invalid(
                name, causes: [("FieldValueRequired", "Required value", "spec.template.spec.containers")])
        }
        let key = "\(namespace)/\(name)"
        if jobs[key] != nil {
            return Self.status(
                409, reason: "AlreadyExists", message: "jobs.batch \"\(name)\" already exists",
                details: ["name": name, "group": "batch", "kind": "jobs"])
        }
        // Defaults, as the 1.20 server fills them.
        let uid = UUID().uuidString.lowercased()
        resourceVersion += 1
        metadata["namespace"] = namespace
        metadata["uid"] = uid
        metadata["resourceVersion"] = String(resourceVersion)
        metadata["creationTimestamp"] = Self.now()
        job["metadata"] = metadata
        job["kind"] = "Job"
        job["apiVersion"] = "batch/v1"
        spec = spec.filter { Self.jobSpecFields.contains($0.key) }
        spec["parallelism"] = spec["parallelism"] ?? 1
        spec["completions"] = spec["completions"] ?? 1
        spec["backoffLimit"] = spec["backoffLimit"] ?? 6
        spec["selector"] = ["matchLabels": ["controller-uid": uid]]
        var templateMeta = template["metadata"] as? Object ?? [:]
        var templateLabels = templateMeta["labels"] as? [String: String] ?? [:]
        templateLabels["controller-uid"] = uid
        templateLabels["job-name"] = name
        templateMeta["labels"] = templateLabels
        templateMeta["creationTimestamp"] = NSNull()
        template["metadata"] = templateMeta
        podSpec["containers"] = containers.map { container in
            var container = container
            container["terminationMessagePath"] = container["terminationMessagePath"] ?? "/dev/termination-log"
            container["terminationMessagePolicy"] = container["terminationMessagePolicy"] ?? "File"
            container["imagePullPolicy"] = container["imagePullPolicy"] ?? "IfNotPresent"
            if var resources = container["resources"] as? Object {
                for side in ["requests", "limits"] {
                    if let values = resources[side] as? [String: String] {
                        resources[side] = values.mapValues(Self.canonicalQuantity)
                    }
                }
                container["resources"] = resources
            }
            return container
        }
        if var volumes = podSpec["volumes"] as? [Object] {
            volumes = volumes.map { volume in
                var volume = volume
                if var emptyDir = volume["emptyDir"] as? Object, let limit = emptyDir["sizeLimit"] as? String {
                    emptyDir["sizeLimit"] = Self.canonicalQuantity(limit)
                    volume["emptyDir"] = emptyDir
                }
                return volume
            }
            podSpec["volumes"] = volumes
        }
        podSpec["terminationGracePeriodSeconds"] = podSpec["terminationGracePeriodSeconds"] ?? 30
        podSpec["dnsPolicy"] = podSpec["dnsPolicy"] ?? "ClusterFirst"
        podSpec["securityContext"] = podSpec["securityContext"] ?? Object()
        podSpec["schedulerName"] = podSpec["schedulerName"] ?? "default-scheduler"
        template["spec"] = podSpec
        spec["template"] = template
        job["spec"] = spec
        job["status"] = Object()
        storeJob(key, job)
        record("ADDED", namespace: namespace, name: name, object: job)
        // The job controller, a moment later: a Pending pod, then startTime/active.
        Task { [weak self] in
            try? await Task.sleep(for: .milliseconds(5))
            await self?.startJob(namespace: namespace, name: name, uid: uid)
        }
        return StandInReply(status: 201, body: Self.encode(job))
    }

    private func startJob(namespace: String, name: String, uid: String) {
        guard let job = jobs["\(namespace)/\(name)"], Self.meta(job)["uid"] as? String == uid else { return }
        let template = (job["spec"] as? Object)?["template"] as? Object ?? [:]
        var podMeta: Object = [
            "name": "\(name)-\(Self.randomSuffix())", "generateName": "\(name)-", "namespace": namespace,
            "uid": UUID().uuidString.lowercased(), "creationTimestamp": Self.now(),
            "labels": (template["metadata"] as? Object)?["labels"] ?? [:],
            "ownerReferences": [
                [
                    "apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid, "controller": true,
                    "blockOwnerDeletion": true,
                ]
            ],
        ]
        resourceVersion += 1
        podMeta["resourceVersion"] = String(resourceVersion)
        var podSpec = template["spec"] as? Object ?? [:]
        podSpec["priority"] = 0
        podSpec["tolerations"] =
            (podSpec["tolerations"] as? [Object] ?? []) + [
                [
                    "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                    "tolerationSeconds": 300,
                ],
                [
                    "key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                    "tolerationSeconds": 300,
                ],
            ]
        let pod: Object = [
            "kind": "Pod", "apiVersion": "v1", "metadata": podMeta, "spec": podSpec,
            "status": ["phase": "Pending", "qosClass": "Burstable"],
        ]
        storePod("\(namespace)/\(podMeta["name"] as! String)", pod)
        updateJob(namespace: namespace, name: name) { job in
            job["status"] = ["startTime": Self.now(), "active": 1]
        }
    }

    private func updateJob(namespace: String, name: String, _ change: (inout Object) -> Void) {
        let key = "\(namespace)/\(name)"
        guard var job = jobs[key] else { return }
        change(&job)
        resourceVersion += 1
        var metadata = Self.meta(job)
        metadata["resourceVersion"] = String(resourceVersion)
        job["metadata"] = metadata
        storeJob(key, job)
        record("MODIFIED", namespace: namespace, name: name, object: job)
    }

    private func podKeys(namespace: String, job: String) -> [String] {
        Array(podsByJob["\(namespace)/\(job)"] ?? [])
    }

    private func deletePod(_ key: String) {
        storePod(key, nil)
        resourceVersion += 1
    }

    private func finishPods(
        namespace: String, job: String, phase: String, exitCode: Int, reason: String, message: String? = nil
    ) {
        for key in podKeys(namespace: namespace, job: job) {
            guard var pod = pods[key] else { continue }
            resourceVersion += 1
            var metadata = Self.meta(pod)
            metadata["resourceVersion"] = String(resourceVersion)
            pod["metadata"] = metadata
            var terminated: Object = [
                "exitCode": exitCode, "reason": reason, "startedAt": Self.now(), "finishedAt": Self.now(),
            ]
            if let message { terminated["message"] = message }
            pod["status"] = [
                "phase": phase,
                "containerStatuses": [
                    [
                        "name": "runner", "ready": false, "restartCount": 0,
                        "state": [
                            "terminated": terminated
                        ],
                    ]
                ],
            ]
            storePod(key, pod)
        }
    }

    private func listJobs(namespace: String, query: [String: String]) -> StandInReply {
        let selector: [SelectorTerm]
        do { selector = try SelectorTerm.parse(query["labelSelector"] ?? "") } catch {
            return Self.status(
                400, reason: "BadRequest", message: "unable to parse requirement: \(error)", details: nil)
        }
        let limit = Int(query["limit"] ?? "") ?? 0
        let requestedRV = query["resourceVersion"].flatMap { $0.isEmpty ? nil : Int($0) }
        let match = query["resourceVersionMatch"]
        if match != nil && query["resourceVersion"] == nil {
            return StandInReply(
                status: 422,
                body: Self.encode([
                    "kind": "Status", "apiVersion": "v1", "metadata": Object(), "status": "Failure",
                    "message":
                        "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
                    "reason": "Invalid",
                    "details": [
                        "group": "meta.k8s.io", "kind": "ListOptions",
                        "causes": [
                            [
                                "reason": "FieldValueForbidden",
                                "message":
                                    "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
                                "field": "resourceVersionMatch",
                            ]
                        ],
                    ], "code": 422,
                ]))
        }
        var snapshotRV = resourceVersion
        var start = ""
        if let token = query["continue"], !token.isEmpty {
            guard let data = Data(base64Encoded: Self.padded(token)), let decoded = Self.decode(data),
                let rv = decoded["rv"] as? Int, let from = decoded["start"] as? String
            else {
                return Self.status(400, reason: "BadRequest", message: "continue key is not valid", details: nil)
            }
            if rv < compactedBelow {
                let inconsistent = Self.continueToken(rv: -1, start: from)
                return StandInReply(
                    status: 410,
                    body: Self.encode([
                        "kind": "Status", "apiVersion": "v1", "metadata": ["continue": inconsistent],
                        "status": "Failure",
                        "message":
                            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                        "reason": "Expired", "code": 410,
                    ]))
            }
            snapshotRV = rv
            start = from
        } else if let requestedRV, match == "Exact" || (match == nil && limit > 0) {
            if requestedRV < compactedBelow {
                return Self.status(
                    410, reason: "Expired", message: "The resourceVersion for the provided list is too old.",
                    details: nil)
            }
            snapshotRV = requestedRV
        }
        let source = snapshotRV == resourceVersion ? jobs : snapshot(at: snapshotRV)
        let selectorText = query["labelSelector"] ?? ""
        let names: [String]
        if let cache = listCache, cache.rv == snapshotRV, cache.namespace == namespace, cache.selector == selectorText {
            names = cache.names
        } else {
            names = source.filter { key, job in
                key.hasPrefix("\(namespace)/")
                    && SelectorTerm.matches(selector, Self.meta(job)["labels"] as? [String: String] ?? [:])
            }.map { String($0.key.dropFirst(namespace.count + 1)) }.sorted()
            listCache = (snapshotRV, namespace, selectorText, names)
        }
        var remaining = names[...]
        if !start.isEmpty {
            // The first name at or after `start` (the names are sorted).
            var low = 0
            var high = names.count
            while low < high {
                let middle = (low + high) / 2
                if names[middle] < start { low = middle + 1 } else { high = middle }
            }
            remaining = names[low...]
        }
        let page = limit > 0 ? remaining.prefix(limit) : remaining
        var metadata: Object = ["resourceVersion": String(snapshotRV)]
        if limit > 0, remaining.count > limit {
            let next = remaining[remaining.startIndex + limit]
            metadata["continue"] = Self.continueToken(rv: snapshotRV, start: next)
            if selector.isEmpty { metadata["remainingItemCount"] = remaining.count - limit }
        }
        // {"kind":"JobList","apiVersion":"batch/v1","metadata":{…},"items":[…]}, the items from
        // their cached encodings (the live ones; a snapshot's are encoded afresh).
        var body = Data(#"{"kind":"JobList","apiVersion":"batch/v1","metadata":"#.utf8)
        body.append(Self.encode(metadata))
        body.append(contentsOf: Array(#","items":["#.utf8))
        for (index, name) in page.enumerated() {
            if index > 0 { body.append(0x2C) }
            let key = "\(namespace)/\(name)"
            let item = source[key]!
            if snapshotRV == resourceVersion
                || (jobs[key].map { Self.meta($0)["resourceVersion"] as? String } ?? nil)
                    == (Self.meta(item)["resourceVersion"] as? String)
            {
                // Live, or unchanged since the snapshot: the cached encoding is the same bytes.
                body.append(listItem(key, jobs[key]!))
            } else {
                var item = source[key]!
                item.removeValue(forKey: "kind")
                item.removeValue(forKey: "apiVersion")
                body.append(Self.encode(item))
            }
        }
        body.append(contentsOf: Array("]}".utf8))
        return StandInReply(status: 200, body: body)
    }

    /// The last snapshot replayed (the pages of one list continue from the same resourceVersion).
    private var snapshotCache: (rv: Int, jobs: [String: Object])?

    /// The Jobs as they were at `rv`, replayed from the history.
    private func snapshot(at rv: Int) -> [String: Object] {
        if let cached = snapshotCache, cached.rv == rv { return cached.jobs }
        let state = replay(to: rv)
        snapshotCache = (rv, state)
        return state
    }

    private func replay(to rv: Int) -> [String: Object] {
        var state: [String: Object] = [:]
        for event in history where event.rv <= rv {
            let key = "\(event.namespace)/\(event.name)"
            if event.type == "DELETED" { state[key] = nil } else { state[key] = event.object }
        }
        return state
    }

    private func deleteJob(namespace: String, name: String, body: Data, query: [String: String]) -> StandInReply {
        let key = "\(namespace)/\(name)"
        guard var job = jobs[key] else { return Self.notFound("jobs", group: "batch", name) }
        // DeleteOptions come as a body or as query parameters.
        var options = body.isEmpty ? [:] : (Self.decode(body) ?? [:])
        if let policy = query["propagationPolicy"] { options["propagationPolicy"] = policy }
        var metadata = Self.meta(job)
        let uid = metadata["uid"] as? String ?? ""
        if let preconditions = options["preconditions"] as? Object, let wanted = preconditions["uid"] as? String,
            wanted != uid
        {
            return Self.status(
                409, reason: "Conflict",
                message:
                    "Operation cannot be fulfilled on Job.batch \"\(name)\": the UID in the precondition (\(wanted)) does not match the UID in record (\(uid)). The object might have been deleted and then recreated",
                details: ["name": name, "group": "batch", "kind": "Job"])
        }
        let policy = options["propagationPolicy"] as? String ?? "Orphan"  // batch/v1's default
        switch policy {
        case "Background":
            storeJob(key, nil)
            resourceVersion += 1
            record("DELETED", namespace: namespace, name: name, object: job)
            // The garbage collector deletes the pods and owned Secrets a moment later.
            Task { [weak self] in
                try? await Task.sleep(for: .milliseconds(20))
                await self?.collectGarbage(namespace: namespace, ownerUID: uid, job: name)
            }
            return Self.deletedStatus(name: name, group: "batch", kind: "jobs", uid: uid)
        default:
            let finalizer = policy == "Foreground" ? "foregroundDeletion" : "orphan"
            resourceVersion += 1
            metadata["deletionTimestamp"] = Self.now()
            metadata["deletionGracePeriodSeconds"] = 0
            metadata["finalizers"] = [finalizer]
            metadata["resourceVersion"] = String(resourceVersion)
            job["metadata"] = metadata
            storeJob(key, job)
            record("MODIFIED", namespace: namespace, name: name, object: job)
            if policy == "Orphan" {
                for podKey in podKeys(namespace: namespace, job: name) {
                    guard var pod = pods[podKey] else { continue }
                    var podMeta = Self.meta(pod)
                    podMeta.removeValue(forKey: "ownerReferences")
                    pod["metadata"] = podMeta
                    storePod(podKey, pod)
                }
            } else {
                for podKey in podKeys(namespace: namespace, job: name) { deletePod(podKey) }
            }
            storeJob(key, nil)
            resourceVersion += 1
            record("DELETED", namespace: namespace, name: name, object: job)
            return StandInReply(status: 200, body: Self.encode(job))
        }
    }

    private func collectGarbage(namespace: String, ownerUID: String, job: String) {
        for key in podKeys(namespace: namespace, job: job) { deletePod(key) }
        for (key, secret) in secrets where key.hasPrefix("\(namespace)/") {
            let owners = Self.meta(secret)["ownerReferences"] as? [Object] ?? []
            if owners.contains(where: { $0["uid"] as? String == ownerUID }) { secrets[key] = nil }
        }
    }

    // MARK: Pods, Secrets

    private func listPods(namespace: String, query: [String: String]) -> StandInReply {
        let selector = (try? SelectorTerm.parse(query["labelSelector"] ?? "")) ?? []
        // `job-name=<name>` (what a Job's own pods are found by) comes from the index.
        let candidates: [String: [String: String]]
        if let first = selector.first, selector.count == 1, first.key == "job-name",
            case .equals(let value) = first.operation
        {
            candidates = Dictionary(
                uniqueKeysWithValues: (podsByJob["\(namespace)/\(value)"] ?? []).map { ($0, podLabels[$0] ?? [:]) })
        } else {
            candidates = podLabels
        }
        let keys = candidates.filter { key, labels in
            key.hasPrefix("\(namespace)/") && SelectorTerm.matches(selector, labels)
        }.map(\.key).sorted()
        let items = keys.map { key -> Object in
            var pod = pods[key]!
            pod.removeValue(forKey: "kind")
            pod.removeValue(forKey: "apiVersion")
            return pod
        }
        return StandInReply(
            status: 200,
            body: Self.encode([
                "kind": "PodList", "apiVersion": "v1", "metadata": ["resourceVersion": String(resourceVersion)],
                "items": items,
            ]))
    }

    private func podLog(namespace: String, name: String, query: [String: String]) -> StandInReply {
        guard let pod = pods["\(namespace)/\(name)"] else { return Self.notFound("pods", group: nil, name) }
        let containers = ((pod["spec"] as? Object)?["containers"] as? [Object] ?? []).compactMap {
            $0["name"] as? String
        }
        if let container = query["container"], !containers.contains(container) {
            return Self.status(
                400, reason: "BadRequest", message: "container \(container) is not valid for pod \(name)", details: nil)
        }
        let phase = (pod["status"] as? Object)?["phase"] as? String
        if phase == "Pending" { return StandInReply(status: 204, body: Data(), contentType: nil) }
        var text = logs[name] ?? ""
        if let tail = Int(query["tailLines"] ?? "") {
            text = text.split(separator: "\n", omittingEmptySubsequences: false).suffix(
                tail + (text.hasSuffix("\n") ? 1 : 0)
            )
            .joined(separator: "\n")
        }
        if let limit = Int(query["limitBytes"] ?? ""), text.utf8.count > limit {
            text = String(decoding: Array(text.utf8.prefix(limit)), as: UTF8.self)
        }
        return StandInReply(status: 200, body: Data(text.utf8), contentType: "text/plain")
    }

    private func createSecret(namespace: String, body: Data) -> StandInReply {
        guard var secret = Self.decode(body), var metadata = secret["metadata"] as? Object,
            let name = metadata["name"] as? String, !name.isEmpty
        else {
            return Self.status(
                422, reason: "Invalid", message: "Secret \"\" is invalid: metadata.name: Required value", details: nil)
        }
        let key = "\(namespace)/\(name)"
        if secrets[key] != nil {
            return Self.status(
                409, reason: "AlreadyExists", message: "secrets \"\(name)\" already exists",
                details: ["name": name, "kind": "secrets"])
        }
        resourceVersion += 1
        metadata["namespace"] = namespace
        metadata["uid"] = UUID().uuidString.lowercased()
        metadata["resourceVersion"] = String(resourceVersion)
        metadata["creationTimestamp"] = Self.now()
        secret["metadata"] = metadata
        secret["kind"] = "Secret"
        secret["apiVersion"] = "v1"
        secret["type"] = secret["type"] ?? "Opaque"
        secrets[key] = secret
        return StandInReply(status: 201, body: Self.encode(secret))
    }

    private func patchSecret(namespace: String, name: String, contentType: String?, body: Data) -> StandInReply {
        guard
            contentType?.hasPrefix("application/merge-patch+json") == true
                || contentType?.hasPrefix("application/strategic-merge-patch+json") == true
        else {
            return StandInReply(
                status: 415,
                body: Self.encode([
                    "kind": "Status", "apiVersion": "v1", "metadata": Object(), "status": "Failure",
                    "message":
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                    "reason": "UnsupportedMediaType", "details": Object(), "code": 415,
                ]))
        }
        let key = "\(namespace)/\(name)"
        guard let secret = secrets[key] else { return Self.notFound("secrets", group: nil, name) }
        guard let patch = Self.decode(body) else {
            return Self.status(400, reason: "BadRequest", message: "invalid JSON patch", details: nil)
        }
        var merged = Self.mergePatch(secret, patch)
        resourceVersion += 1
        var metadata = Self.meta(merged)
        metadata["resourceVersion"] = String(resourceVersion)
        merged["metadata"] = metadata
        secrets[key] = merged
        return StandInReply(status: 200, body: Self.encode(merged))
    }

    private func getObject(_ store: [String: Object], namespace: String, name: String, group: String?, kind: String)
        -> StandInReply
    {
        guard let object = store["\(namespace)/\(name)"] else { return Self.notFound(kind, group: group, name) }
        return StandInReply(status: 200, body: Self.encode(object))
    }

    // MARK: Watch

    func startWatch(_ request: StandInRequest) -> WatchStart {
        requests.append("WATCH \(request.path)")
        let parts = request.path.split(separator: "/").map(String.init)
        guard parts.count == 6, parts[0] == "apis", parts[5] == "jobs" else {
            return .reply(
                Self.status(405, reason: "MethodNotAllowed", message: "watch is only served for jobs", details: nil))
        }
        let namespace = parts[4]
        if let denied = authorize(request, verb: "watch", resource: "jobs", namespace: namespace) {
            return .reply(denied)
        }
        let selector = (try? SelectorTerm.parse(request.query["labelSelector"] ?? "")) ?? []
        var initial: [Data] = []
        if let rvText = request.query["resourceVersion"], !rvText.isEmpty, rvText != "0", let rv = Int(rvText) {
            if rv < compactedBelow {
                let line = Self.eventLine(
                    "ERROR",
                    [
                        "kind": "Status", "apiVersion": "v1", "metadata": Object(), "status": "Failure",
                        "message": "The resourceVersion for the provided watch is too old.", "reason": "Expired",
                        "code": 410,
                    ])
                let (stream, continuation) = AsyncStream<Data>.makeStream()
                continuation.finish()
                return .stream(initial: [line], live: stream, id: UUID(), closeAtOnce: true)
            }
            for event in history where event.rv > rv && event.namespace == namespace {
                if SelectorTerm.matches(selector, Self.meta(event.object)["labels"] as? [String: String] ?? [:]) {
                    initial.append(Self.eventLine(event.type, event.object))
                }
            }
        } else {
            for (key, job) in jobs.sorted(by: { $0.key < $1.key }) where key.hasPrefix("\(namespace)/") {
                if SelectorTerm.matches(selector, Self.meta(job)["labels"] as? [String: String] ?? [:]) {
                    initial.append(Self.eventLine("ADDED", job))
                }
            }
        }
        let (stream, continuation) = AsyncStream<Data>.makeStream()
        let id = UUID()
        watchers[id] = Watcher(namespace: namespace, selector: selector, continuation: continuation)
        let timeout = Int(request.query["timeoutSeconds"] ?? "") ?? 1800
        Task { [weak self] in
            try? await Task.sleep(for: .seconds(timeout))
            await self?.endWatch(id)
        }
        return .stream(initial: initial, live: stream, id: id, closeAtOnce: false)
    }

    func endWatch(_ id: UUID) {
        watchers.removeValue(forKey: id)?.continuation.finish()
    }

    private func record(_ type: String, namespace: String, name: String, object: Object) {
        history.append((resourceVersion, type, namespace, name, object))
        guard !watchers.isEmpty else { return }  // (serializing is most of the stand-in's cost)
        let labels = Self.meta(object)["labels"] as? [String: String] ?? [:]
        var line: Data?
        for watcher in watchers.values where watcher.namespace == namespace {
            if SelectorTerm.matches(watcher.selector, labels) {
                line = line ?? Self.eventLine(type, object)
                watcher.continuation.yield(line!)
            }
        }
    }

    // MARK: Encoding

    static func encode(_ object: Object) -> Data {
        (try? JSONSerialization.data(withJSONObject: object, options: [.withoutEscapingSlashes])) ?? Data()
    }

    static func decode(_ data: Data) -> Object? {
        (try? JSONSerialization.jsonObject(with: data)) as? Object
    }

    static func eventLine(_ type: String, _ object: Object) -> Data {
        encode(["type": type, "object": object]) + Data("\n".utf8)
    }

    static func meta(_ object: Object) -> Object { object["metadata"] as? Object ?? [:] }

    static func now() -> String { RFC3339.string(from: Date(), fractionDigits: 0) }

    static func randomSuffix() -> String {
        let alphabet = Array("bcdfghjklmnpqrstvwxz2456789")
        return String((0..<5).map { _ in alphabet.randomElement()! })
    }

    static func continueToken(rv: Int, start: String) -> String {
        let json = encode(["v": "meta.k8s.io/v1", "rv": rv, "start": start])
        return json.base64EncodedString().replacingOccurrences(of: "=", with: "")
    }

    static func padded(_ base64: String) -> String {
        base64 + String(repeating: "=", count: (4 - base64.count % 4) % 4)
    }

    static func status(_ code: Int, reason: String, message: String, details: Object?) -> StandInReply {
        var body: Object = [
            "kind": "Status", "apiVersion": "v1", "metadata": Object(), "status": "Failure", "message": message,
            "reason": reason, "code": code,
        ]
        if let details { body["details"] = details }
        return StandInReply(status: code, body: encode(body))
    }

    static func notFound(_ kind: String, group: String?, _ name: String) -> StandInReply {
        var details: Object = ["name": name, "kind": kind]
        if let group { details["group"] = group }
        let qualified = group.map { "\(kind).\($0)" } ?? kind
        return status(404, reason: "NotFound", message: "\(qualified) \"\(name)\" not found", details: details)
    }

    static func deletedStatus(name: String, group: String?, kind: String, uid: String?) -> StandInReply {
        var details: Object = ["name": name, "kind": kind]
        if let group { details["group"] = group }
        if let uid { details["uid"] = uid }
        return StandInReply(
            status: 200,
            body: encode([
                "kind": "Status", "apiVersion": "v1", "metadata": Object(), "status": "Success", "details": details,
            ]))
    }

    static func invalid(_ name: String, causes: [(String, String, String)]) -> StandInReply {
        let message =
            "Job.batch \"\(name)\" is invalid: "
            + causes.map { "\($0.2): \($0.1)" }.joined(separator: ", ")
        return status(
            422, reason: "Invalid", message: message,
            details: [
                "name": name, "group": "batch", "kind": "Job",
                "causes": causes.map { ["reason": $0.0, "message": $0.1, "field": $0.2] },
            ])
    }

    static func validLabelValue(_ value: String) -> Bool {
        if value.isEmpty { return true }
        guard value.count <= 63 else { return false }
        return value.range(of: "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$", options: .regularExpression) != nil
    }

    /// `2048Mi` → `2Gi`, `2000m` → `2`, as the server canonicalises quantities.
    static func canonicalQuantity(_ value: String) -> String {
        if value.hasSuffix("m"), let milli = Int(value.dropLast()), milli % 1000 == 0 { return String(milli / 1000) }
        let units = ["Ki", "Mi", "Gi", "Ti"]
        for (index, unit) in units.enumerated() where value.hasSuffix(unit) {
            guard var number = Int(value.dropLast(2)) else { return value }
            var level = index
            while level < units.count - 1, number % 1024 == 0, number > 0 {
                number /= 1024
                level += 1
            }
            return "\(number)\(units[level])"
        }
        return value
    }

    static func mergePatch(_ target: Object, _ patch: Object) -> Object {
        var result = target
        for (key, value) in patch {
            if value is NSNull {
                result.removeValue(forKey: key)
            } else if let nested = value as? Object, let existing = result[key] as? Object {
                result[key] = mergePatch(existing, nested)
            } else {
                result[key] = value
            }
        }
        return result
    }
}

/// One term of an equality-based label selector: `k=v`, `k==v`, `k!=v`, `k`, `!k`.
struct SelectorTerm: Sendable {
    enum Operation: Sendable { case equals(String), notEquals(String), exists, notExists }
    var key: String
    var operation: Operation

    struct ParseError: Error, CustomStringConvertible {
        var description: String
    }

    static func parse(_ text: String) throws -> [SelectorTerm] {
        try text.split(separator: ",").map { raw in
            let term = raw.trimmingCharacters(in: .whitespaces)
            if let range = term.range(of: "!=") {
                return SelectorTerm(
                    key: String(term[..<range.lowerBound]), operation: .notEquals(String(term[range.upperBound...])))
            }
            if let range = term.range(of: "==") ?? term.range(of: "=") {
                return SelectorTerm(
                    key: String(term[..<range.lowerBound]), operation: .equals(String(term[range.upperBound...])))
            }
            if term.hasPrefix("!") { return SelectorTerm(key: String(term.dropFirst()), operation: .notExists) }
            guard !term.isEmpty, !term.contains(" ") else { throw ParseError(description: "invalid term \(term)") }
            return SelectorTerm(key: term, operation: .exists)
        }
    }

    static func matches(_ terms: [SelectorTerm], _ labels: [String: String]) -> Bool {
        terms.allSatisfy { term in
            switch term.operation {
            case .equals(let value): return labels[term.key] == value
            case .notEquals(let value): return labels[term.key] != value
            case .exists: return labels[term.key] != nil
            case .notExists: return labels[term.key] == nil
            }
        }
    }
}
