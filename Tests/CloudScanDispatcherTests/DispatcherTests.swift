import CloudScanAMQP
import CloudScanCore
import CloudScanDispatcher
import CloudScanKubernetes
import CloudScanPostgres
import CloudScanService
import CloudScanTestSupport
import Foundation
import KubernetesStandIn
import Testing

@Suite("Dispatcher (live PostgreSQL and RabbitMQ, Kubernetes stand-in)")
struct DispatcherTests {
    @Test(
        "scan.create → the Job (labels, spec, Secret), the scan dispatched with its event and scan.dispatched in the outbox"
    )
    func createDispatches() async throws {
        try await DispatcherHarness.run { h in
            let scan = try await h.createScan()
            let name = RunnerAssignment.jobName(scanID: scan.id, attempt: 1)
            try await h.eventually("dispatched") { try await h.dispatchedWithJob(scan.id) }
            #expect(await h.jobNames() == [name])
            #expect(await h.standIn.cluster.secretNames(namespace: DispatcherHarness.namespace) == [name])
            let posted = try #require(await h.standIn.cluster.postedJobs.first)
            let job = try JSONDecoder().decode(Job.self, from: posted)
            #expect(job.metadata.labels?["cloudscan.io/scan-id"] == scan.id.uuidString.lowercased())
            #expect(job.metadata.labels?["cloudscan.io/organization-id"] == h.organization.uuidString.lowercased())
            #expect(job.spec?.backoffLimit == 0)
            #expect(job.spec?.activeDeadlineSeconds == scan.timeoutSeconds + 60)
            let env = job.spec?.template.spec?.containers?.first?.env ?? []
            #expect(env.first { $0.name == "CLOUDSCAN_RUNNER_TOKEN" }?.valueFrom?.secretKeyRef?.name == name)
            // The manifest exactly as the dispatcher sent it, against the official schemas.
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("\(name).json")
            defer { try? FileManager.default.removeItem(at: file) }
            let pretty = try JSONSerialization.data(
                withJSONObject: try JSONSerialization.jsonObject(with: posted), options: [.prettyPrinted, .sortedKeys])
            try pretty.write(to: file)
            let validator = TestDatabase.repositoryRoot.appendingPathComponent(".venv/bin/kubernetes-validate").path
            let (status, output) = try await runCommandCapturingOutput([
                validator, "--strict", "-k", "1.37.0", file.path,
            ])
            print(
                "EMITTED MANIFEST\n\(String(decoding: pretty, as: UTF8.self))\nkubernetes-validate --strict -k 1.37.0: \(output)"
            )
            #expect(status == 0, "\(output)")
            #expect(output.contains("passed"))
            #expect(try await h.events(scan.id) == ["queued", "dispatched"])
            let outbox = try await h.app.withTransaction(organizationID: h.organization) { c in
                try await c.query(
                    "SELECT routing_key, payload->>'status', payload->>'attempt' FROM outbox WHERE exchange = 'cloudscan.events'"
                ).map {
                    [
                        try $0.decode(String.self, at: 0), try $0.decode(String.self, at: 1),
                        try $0.decode(String.self, at: 2),
                    ]
                }
            }
            #expect(outbox == [["scan.dispatched", "dispatched", "1"]])
        }
    }

    @Test("the same scan.create delivered twice → one Job, one row, one dispatched event")
    func duplicateDelivery() async throws {
        try await DispatcherHarness.run { h in
            let scan = try await h.createScan(publishTimes: 2)
            try await h.eventually("dispatched") { try await h.dispatchedWithJob(scan.id) }
            try await Task.sleep(for: .milliseconds(500))  // let the second delivery be handled too
            #expect(await h.jobNames().count == 1)
            #expect(try await h.events(scan.id) == ["queued", "dispatched"])
            let creates = await h.standIn.cluster.jobCreates.count
            #expect(creates <= 2, "at most one repeated POST (answered 409)")
        }
    }

    @Test(
        "a gateway's own scan.create (no API) is validated, creates the row and is dispatched; bad ones are dead-lettered with a reason"
    )
    func directPublish() async throws {
        try await DispatcherHarness.run { h in
            let scanID = UUID()
            let message = ScanCreateMessage(
                scanID: scanID, organizationID: h.organization, project: .init(externalKey: "proj-123"),
                scanTypes: [.sast, .secrets], artifact: .init(url: "https://storage.local/direct.tar.gz"),
                requestedAt: Date(), labels: ["source": "gateway"])
            try await h.publish(message, type: .scanCreate, routingKey: "scan.create", organization: h.organization)
            try await h.eventually("dispatched") { try await h.dispatchedWithJob(scanID) }
            #expect(try await h.events(scanID) == ["queued", "dispatched"])

            // Unknown project, unknown scan type (not JSON-decodable), wrong organization header, not JSON.
            var unknownProject = message
            unknownProject.scanID = UUID()
            unknownProject.project = .init(externalKey: "no-such-project")
            try await h.publish(
                unknownProject, type: .scanCreate, routingKey: "scan.create", organization: h.organization,
                messageID: "bad-project")
            let badType =
                #"{"scan_id":"\#(UUID())","organization_id":"\#(h.organization)","project":{"external_key":"proj-123"},"scan_types":["dast"],"artifact":{"url":"https://x/a.tgz"},"requested_at":"2026-11-28T00:00:00.000Z"}"#
            try await h.publishRaw(
                Data(badType.lowercased().utf8), type: "scan.create.v1", routingKey: "scan.create",
                organization: h.organization, messageID: "bad-type")
            var otherOrg = message
            otherOrg.scanID = UUID()
            try await h.publish(
                otherOrg, type: .scanCreate, routingKey: "scan.create", organization: h.other, messageID: "bad-org")
            try await h.publishRaw(
                Data("not json".utf8), type: "scan.create.v1", routingKey: "scan.create", organization: h.organization,
                messageID: "bad-json")
            let dead = try await h.deadLettered(from: h.dispatchQueue, count: 4)
            let reasons = Dictionary(uniqueKeysWithValues: dead.map { ($0.id ?? "-", $0.reason ?? "") })
            #expect(reasons["bad-project"]?.contains("no project with this id or external_key") == true, "\(reasons)")
            #expect(reasons["bad-type"]?.contains("scan_types") == true, "\(reasons)")
            #expect(reasons["bad-org"]?.contains("x-organization-id") == true, "\(reasons)")
            #expect(reasons["bad-json"]?.contains("not JSON") == true, "\(reasons)")
            #expect(await h.jobNames().count == 1, "only the good scan got a Job")
        }
    }

    @Test(
        "hostile scan.create straight to the broker: held to the API's limits; each is dead-lettered at once with a reason naming the field — no scan, no loop through the delay tiers"
    )
    func hostileDirectPublish() async throws {
        try await DispatcherHarness.run { h in
            let org = h.organization.uuidString.lowercased()
            func body(_ artifact: String, extra: String = "", project: String = #"{"external_key":"proj-123"}"#) -> Data
            {
                Data(
                    #"{"scan_id":"\#(UUID().uuidString.lowercased())","organization_id":"\#(org)","project":\#(project),"scan_types":["sast"],"artifact":\#(artifact),"requested_at":"2026-12-07T00:00:00.000Z"\#(extra)}"#
                        .utf8)
            }
            let fullwidth = String(repeating: "\u{FF10}", count: 64)
            var cases: [(String, Data, String)] = [
                // Fullwidth digits once passed a Unicode-wide hex check and failed PostgreSQL's CHECK,
                // which parked the message in the delay tiers again and again.
                ("fullwidth-sha", body(#"{"url":"https://x/a.tgz","sha256":"\#(fullwidth)"}"#), "artifact.sha256"),
                // 2 MB of metadata: the API refuses 64 KiB; so does the broker path now.
                (
                    "huge-metadata",
                    body(
                        #"{"url":"https://x/a.tgz"}"#,
                        extra: #","metadata":{"blob":"\#(String(repeating: "x", count: 2_000_000))"}"#), "body: over"
                ),
                ("file-artifact", body(#"{"url":"file:///etc/passwd"}"#), "artifact.url"),
                ("metadata-service", body(#"{"url":"http://169.254.169.254/latest/meta-data"}"#), "artifact.url"),
                ("unknown-field", body(#"{"url":"https://x/a.tgz"}"#, extra: #","priority":9"#), "priority"),
                ("unknown-artifact-field", body(#"{"url":"https://x/a.tgz","token":"t"}"#), "artifact.token"),
                (
                    "nul-key", body(#"{"url":"https://x/a.tgz"}"#, project: #"{"external_key":"p\u0000q"}"#),
                    "project.external_key"
                ),
                (
                    "too-many-metadata",
                    body(
                        #"{"url":"https://x/a.tgz"}"#,
                        extra: #","metadata":{\#((0..<65).map { "\"k\($0)\":1" }.joined(separator: ","))}"#), "metadata"
                ),
            ]
            // Another organization's scan id, published by this organization's gateway.
            let theirs = try await h.service.createScan(
                organizationID: h.other,
                request: CreateScanRequest(
                    project: .init(externalKey: "proj-other"), scanTypes: ["sast"],
                    artifactURL: "https://storage.local/theirs.tgz")
            ).scan.id
            let stolen = Data(
                #"{"scan_id":"\#(theirs.uuidString.lowercased())","organization_id":"\#(org)","project":{"external_key":"proj-123"},"scan_types":["sast"],"artifact":{"url":"https://x/a.tgz"},"requested_at":"2026-12-07T00:00:00.000Z"}"#
                    .utf8)
            cases.append(("foreign-scan-id", stolen, "is already in use"))
            for (id, data, _) in cases {
                try await h.publishRaw(
                    data, type: "scan.create.v1", routingKey: "scan.create", organization: h.organization, messageID: id
                )
            }
            let dead = try await h.deadLettered(from: h.dispatchQueue, count: cases.count)
            let reasons = Dictionary(dead.map { ($0.id ?? "-", $0.reason ?? "") }, uniquingKeysWith: { a, _ in a })
            for (id, _, field) in cases {
                #expect(reasons[id]?.contains(field) == true, "\(id): \(reasons[id] ?? "not dead-lettered")")
            }
            #expect(dead.count == cases.count, "each once: \(dead.map(\.id))")
            let scans = try await h.app.withTransaction(organizationID: h.organization) { c in
                try await c.query("SELECT count(*) FROM scans").single().decode(Int.self, at: 0)
            }
            #expect(scans == 0, "none of them made a scan")
            let theirCount = try await h.app.withTransaction(organizationID: h.other) { c in
                try await c.query("SELECT count(*) FROM scans WHERE id = \(theirs)").single().decode(Int.self, at: 0)
            }
            #expect(theirCount == 1, "the other organization's scan is untouched and still one")
            #expect(await h.jobNames().isEmpty)
        }
    }

    @Test("a quota changed through the administration service takes effect: at 0 scans wait, raised to 2 two start")
    func quotaChangedByAdmin() async throws {
        try await DispatcherHarness.run(quota: 0) { h in
            var scans: [UUID] = []
            for _ in 0..<3 { scans.append(try await h.createScan().id) }
            func dispatchedCount() async throws -> Int {
                try await h.app.withTransaction(organizationID: h.organization) { c in
                    try await c.query("SELECT count(*) FROM scans WHERE status = 'dispatched'").single().decode(
                        Int.self, at: 0)
                }
            }
            try await Task.sleep(for: .seconds(2))  // a delay round or two: nothing starts at quota 0
            #expect(try await dispatchedCount() == 0)
            let admin = AdminService(client: h.app, logger: TestDatabase.logger("admin"))
            let changed = try await admin.updateOrganization(
                id: h.organization, UpdateOrganizationRequest(concurrencyQuota: 2),
                actor: AdminActor(subject: "test", via: "cli"))
            #expect(changed.concurrencyQuota == 2)
            try await h.eventually("two dispatched once the quota is 2") { try await dispatchedCount() == 2 }
            try await Task.sleep(for: .seconds(2))
            #expect(try await dispatchedCount() == 2, "and no more")
        }
    }

    @Test(
        "the project's scanner options reach the runner's Job (CLOUDSCAN_SCANNER_OPTIONS); a project without any sends none"
    )
    func scannerOptionsInJob() async throws {
        try await DispatcherHarness.run { h in
            let admin = AdminService(client: h.app, logger: TestDatabase.logger("admin"))
            _ = try await admin.updateProject(
                organizationID: h.organization, id: h.project,
                UpdateProjectRequest(
                    scannerOptions: .object([
                        "bandit": .object(["enabled": .bool(false)]),
                        "semgrep": .object(["exclude_paths": .array([.string("tests/*")])]),
                    ])), actor: AdminActor(subject: "t", via: "cli"))
            let withOptions = try await h.createScan()
            let without = try await h.createScan(organization: h.other, key: "proj-other")
            try await h.eventually("both dispatched") {
                let first = try await h.dispatchedWithJob(withOptions.id)
                let second = try await h.dispatchedWithJob(without.id, organization: h.other)
                return first && second
            }
            func env(_ scanID: UUID) async throws -> [String: String] {
                let name = RunnerAssignment.jobName(scanID: scanID, attempt: 1)
                let data = try #require(
                    await h.standIn.cluster.jobJSON(namespace: DispatcherHarness.namespace, name: name))
                let job = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
                let spec = (job["spec"] as? [String: Any])?["template"] as? [String: Any]
                let containers = ((spec?["spec"] as? [String: Any])?["containers"] as? [[String: Any]]) ?? []
                var out: [String: String] = [:]
                for variable in containers.first?["env"] as? [[String: Any]] ?? [] {
                    if let name = variable["name"] as? String, let value = variable["value"] as? String {
                        out[name] = value
                    }
                }
                return out
            }
            let options = try #require(try await env(withOptions.id)["CLOUDSCAN_SCANNER_OPTIONS"])
            let parsed = try ScannerOptions(try JSONDecoder().decode(JSONValue.self, from: Data(options.utf8)))
            #expect(parsed.isEnabled("bandit") == false && parsed.excludes("semgrep", path: "tests/t.py"))
            #expect(try await env(without.id)["CLOUDSCAN_SCANNER_OPTIONS"] == nil)
        }
    }

    @Test("quota: 100 scans of one organization over its quota of 3 wait queued; another organization's flow at once")
    func quota() async throws {
        try await DispatcherHarness.run(quota: 3) { h in
            var busy: [UUID] = []
            for _ in 0..<100 { busy.append(try await h.createScan().id) }
            var others: [UUID] = []
            for _ in 0..<5 { others.append(try await h.createScan(organization: h.other, key: "proj-other").id) }
            try await h.eventually("the other organization's 5 are dispatched", seconds: 10) {
                var all = true
                for id in others where try await h.status(id, organization: h.other).0 != .dispatched { all = false }
                return all
            }
            func dispatchedCount() async throws -> Int {
                try await h.app.withTransaction(organizationID: h.organization) { c in
                    try await c.query("SELECT count(*) FROM scans WHERE status = 'dispatched'").single().decode(
                        Int.self, at: 0)
                }
            }
            try await h.eventually("3 of the busy organization's are dispatched") { try await dispatchedCount() == 3 }
            try await Task.sleep(for: .seconds(3))  // several delay rounds: still no more than the quota
            #expect(try await dispatchedCount() == 3)
            try await h.eventually("their Jobs made") { await h.jobNames().count == 3 + 5 }
            #expect(await h.jobNames().count == 3 + 5)
            // Two finish (as the status writer would record): two more get a runner.
            try await h.app.withTransaction(organizationID: h.organization) { c in
                _ = try await c.execute(
                    """
                    UPDATE scans SET status = 'completed', finished_at = now()
                    WHERE id IN (SELECT id FROM scans WHERE status = 'dispatched' LIMIT 2)
                    """)
            }
            try await h.eventually("two more dispatched after two finished") { try await dispatchedCount() == 3 }
            // The move to dispatched commits before the Job is made: wait for the Jobs too.
            try await h.eventually("their Jobs made") { await h.jobNames().count == 5 + 5 }
            #expect(await h.jobNames().count == 5 + 5)
            let queued = try await h.app.withTransaction(organizationID: h.organization) { c in
                try await c.query("SELECT count(*) FROM scans WHERE status = 'queued'").single().decode(Int.self, at: 0)
            }
            #expect(queued == 95, "the rest wait, none lost")
        }
    }

    @Test(
        "cancel: before dispatch no Job is made; after dispatch the Job and its Secret are deleted; a cancel before a direct create wins"
    )
    func cancel() async throws {
        try await DispatcherHarness.run { h in
            // Canceled through the service before the dispatcher saw it.
            let early = try await h.service.createScan(
                organizationID: h.organization,
                request: CreateScanRequest(
                    project: .init(externalKey: "proj-123"), scanTypes: ["sast"], artifactURL: "https://s/a.tgz"))
            _ = try await h.service.cancelScan(organizationID: h.organization, id: early.scan.id, requestedBy: "test")
            try await h.publish(
                ScanCreateMessage(
                    scanID: early.scan.id, organizationID: h.organization, project: .init(id: early.scan.projectID),
                    scanTypes: [.sast], artifact: .init(url: "https://s/a.tgz"), requestedAt: early.scan.createdAt),
                type: .scanCreate, routingKey: "scan.create", organization: h.organization)
            // Dispatched, then canceled.
            let late = try await h.createScan()
            try await h.eventually("dispatched") { try await h.dispatchedWithJob(late.id) }
            #expect(await h.jobNames().count == 1)
            _ = try await h.service.cancelScan(organizationID: h.organization, id: late.id, requestedBy: "test")
            try await h.publish(
                ScanCancelMessage(
                    scanID: late.id, organizationID: h.organization, requestedAt: Date(), requestedBy: "test"),
                type: .scanCancel, routingKey: "scan.cancel", organization: h.organization)
            try await h.eventually("the Job and its Secret are deleted") {
                let secrets = await h.standIn.cluster.secretNames(namespace: DispatcherHarness.namespace)
                return await h.jobNames().isEmpty && secrets.isEmpty
            }
            #expect(try await h.status(early.scan.id).0 == .canceled)
            #expect(try await h.status(late.id).0 == .canceled)
            // A gateway's cancel that arrives before its create.
            let direct = UUID()
            try await h.publish(
                ScanCancelMessage(
                    scanID: direct, organizationID: h.organization, requestedAt: Date(), requestedBy: "gw"),
                type: .scanCancel, routingKey: "scan.cancel", organization: h.organization)
            try await h.eventually("the cancel request is recorded") {
                try await h.app.withTransaction(organizationID: h.organization) { c in
                    try await c.query("SELECT 1 FROM scan_cancel_requests WHERE scan_id = \(direct)").count == 1
                }
            }
            try await h.publish(
                ScanCreateMessage(
                    scanID: direct, organizationID: h.organization, project: .init(externalKey: "proj-123"),
                    scanTypes: [.sast], artifact: .init(url: "https://s/d.tgz"), requestedAt: Date()),
                type: .scanCreate, routingKey: "scan.create", organization: h.organization)
            try await h.eventually("born canceled") { (try? await h.status(direct))?.0 == .canceled }
            try await Task.sleep(for: .milliseconds(300))
            #expect(await h.jobNames().isEmpty, "no Job for any canceled scan")
            #expect(try await h.events(direct) == ["queued", "canceled"])
        }
    }

    @Test(
        "an API server that stops answering outlasts the delivery limit: the message waits in the delay tier, never dead-lettered"
    )
    func longOutage() async throws {
        // Delivery limit 1: a message requeued as a crash would be dead-lettered at its second failure.
        try await DispatcherHarness.run(kubeTimeout: .seconds(1), deliveryLimit: 1) { h in
            await h.standIn.cluster.inject(.delay(.seconds(2)), times: 6, method: "POST", pathContains: "/secrets")
            let scan = try await h.createScan()
            try await h.eventually("dispatched after the outage", seconds: 40) {
                try await h.dispatchedWithJob(scan.id)
            }
            #expect(await h.standIn.cluster.pendingFaults == 0, "six time-outs in a row were met")
            #expect(await h.jobNames().count == 1)
        }
    }

    @Test(
        "API server 500s, time-outs and 401s: retried with backoff (in place, then via a delay tier); one Job, nothing lost"
    )
    func apiServerFaults() async throws {
        try await DispatcherHarness.run(kubeTimeout: .seconds(1)) { h in
            await h.standIn.cluster.inject(.status(500), times: 4, method: "POST", pathContains: "/jobs")
            await h.standIn.cluster.inject(.delay(.seconds(2)), times: 2, method: "POST", pathContains: "/jobs")
            await h.standIn.cluster.inject(.status(401), times: 2, method: "POST", pathContains: "/jobs")
            let scan = try await h.createScan()
            try await h.eventually("dispatched despite the faults", seconds: 30) {
                try await h.dispatchedWithJob(scan.id)
            }
            // The delayed POSTs reach the server later and are answered 409; let them land.
            try await h.eventually("every injected fault met") { await h.standIn.cluster.pendingFaults == 0 }
            #expect(await h.jobNames().count == 1)
            #expect(try await h.events(scan.id) == ["queued", "dispatched"])
            #expect(await h.standIn.cluster.pendingFaults == 0, "every injected fault was met")
        }
    }
}

@Suite("Dispatcher with an outside gateway (Python pika)")
struct GatewayPublishTests {
    @Test("a gateway publishing scan.create.v1 with pika, per the documented contract → dispatched")
    func pikaGateway() async throws {
        try await DispatcherHarness.run { h in
            let scanID = UUID()
            let root = TestDatabase.repositoryRoot
            let url = "amqp://\(TestBroker.user):\(TestBroker.password)@\(TestBroker.host):\(TestBroker.port)/cloudscan"
            let (status, output) = try await runCommandCapturingOutput([
                root.appendingPathComponent(".venv/bin/python").path,
                root.appendingPathComponent("Tests/clients/gateway_publish.py").path, url, h.exchange,
                h.organization.uuidString.lowercased(), scanID.uuidString.lowercased(), "proj-123",
                root.appendingPathComponent("topology/schemas/scan.create.v1.json").path,
            ])
            #expect(status == 0, "\(output)")
            #expect(output.contains("published and confirmed"))
            try await h.eventually("dispatched") { try await h.dispatchedWithJob(scanID) }
            #expect(try await h.events(scanID) == ["queued", "dispatched"])
            #expect(await h.jobNames().count == 1)
        }
    }

    @Test(
        "a gateway's scan.create for an unknown project key: dead-lettered with the reason while auto_create_projects is off; once on, the project is made on first use (audited) and the scan dispatched"
    )
    func unknownKeyFirstUse() async throws {
        try await DispatcherHarness.run { h in
            let root = TestDatabase.repositoryRoot
            let url = "amqp://\(TestBroker.user):\(TestBroker.password)@\(TestBroker.host):\(TestBroker.port)/cloudscan"
            func publish(_ scanID: UUID) async throws {
                let (status, output) = try await runCommandCapturingOutput([
                    root.appendingPathComponent(".venv/bin/python").path,
                    root.appendingPathComponent("Tests/clients/gateway_publish.py").path, url, h.exchange,
                    h.organization.uuidString.lowercased(), scanID.uuidString.lowercased(), "proj-gw-new",
                    root.appendingPathComponent("topology/schemas/scan.create.v1.json").path,
                ])
                #expect(status == 0, "\(output)")
            }
            let refused = UUID()
            try await publish(refused)
            let dead = try await h.deadLettered(from: h.dispatchQueue, count: 1)
            #expect(dead.count == 1 && (dead.first?.reason ?? "").contains("auto_create_projects"), "\(dead)")
            let admin = AdminService(client: h.app, logger: TestDatabase.logger("admin"))
            _ = try await admin.updateOrganization(
                id: h.organization, UpdateOrganizationRequest(autoCreateProjects: true),
                actor: AdminActor(subject: "test", via: "cli"))
            let accepted = UUID()
            try await publish(accepted)
            try await h.eventually("dispatched") { try await h.dispatchedWithJob(accepted) }
            let (projects, audited) = try await h.app.withTransaction(organizationID: h.organization) { c in
                (
                    try await c.query("SELECT count(*) FROM projects WHERE external_key = 'proj-gw-new'").single()
                        .decode(Int.self, at: 0),
                    try await c.query(
                        "SELECT count(*) FROM admin_audit WHERE action = 'project.create' AND via = 'scan-create'"
                    ).single().decode(Int.self, at: 0)
                )
            }
            #expect(projects == 1 && audited == 1)
            // The scan the gateway's message made is counted as queued, once (the refused one is not).
            let text = String(decoding: h.metrics.render(), as: UTF8.self)
            #expect(text.contains(#"cloudscan_scans_total{status="queued"} 1"#), "\(text.prefix(2000))")
            // The consumer's own figures: one dead letter (a failure), one ack, nothing left in flight.
            // (The Job exists a moment before its message is acked.)
            let queue = h.dispatchQueue
            let acked = #"cloudscan_messages_handled_total{queue="\#(queue)",outcome="ack"} 1"#
            try await h.eventually("the ack counted") {
                String(decoding: h.metrics.render(), as: UTF8.self).contains(acked)
            }
            let settled = String(decoding: h.metrics.render(), as: UTF8.self)
            for line in [
                #"cloudscan_messages_handled_total{queue="\#(queue)",outcome="dead_letter"} 1"#,
                #"cloudscan_messages_handled_total{queue="\#(queue)",outcome="ack"} 1"#,
                #"cloudscan_messages_failed_total{queue="\#(queue)"} 1"#,
                #"cloudscan_messages_in_flight{queue="\#(queue)"} 0.0"#,
                #"cloudscan_handler_duration_seconds_count{queue="\#(queue)"} 2"#,
            ] {
                #expect(settled.contains(line), "\(line)\n\(settled.prefix(3000))")
            }
        }
    }
}

@Suite("Kubernetes backend: names that someone else holds")
struct JobNameConflictTests {
    @Test(
        "a Job or Secret of the attempt's name carrying another organization's label is not taken for this scan's",
        arguments: ["Job", "Secret"])
    func conflict(kind: String) async throws {
        let standIn = try await KubernetesStandIn.start()
        defer { Task { await standIn.stop() } }
        let namespace = "cloudscan"
        let client = KubernetesClient(
            configuration: .init(server: standIn.server, namespace: namespace, token: KubernetesStandIn.adminToken))
        let builder = JobSpecBuilder(configuration: .init(namespace: namespace))
        let scan = UUID()
        func assignment(_ organization: UUID) -> RunnerAssignment {
            RunnerAssignment(
                scanID: scan, organizationID: organization, attempt: 1, scanTypes: [.sast],
                artifactURL: "https://storage.local/a.tgz", timeoutSeconds: 600, runnerToken: "v1.t")
        }
        let stranger = assignment(UUID())
        // Someone made the name first, for the same scan id under another organization.
        if kind == "Job" {
            _ = try await client.createJob(builder.job(stranger))
        } else {
            _ = try await client.createSecret(builder.secret(stranger))
        }
        let backend = KubernetesJobBackend(client: client, builder: builder, logger: TestDatabase.logger("k8s"))
        let error = await #expect(throws: JobBackendError.self) { try await backend.start(assignment(UUID())) }
        #expect(error?.permanent == true && error?.reason == "job_name_conflict", "\(String(describing: error))")
        // The stranger's own start is a redelivery: accepted.
        try await backend.start(stranger)
    }
}
