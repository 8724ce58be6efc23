import CloudScanAMQP
import CloudScanAuth
import CloudScanCore
import CloudScanPostgres
import CloudScanService
import CloudScanTestSupport
import CloudScanWorkers
import Foundation
import Logging
import ServiceLifecycle
import Testing

/// A schema and a virtual host (with the fleet's topology) of one test's own, two organizations,
/// and optionally the findings and status writers running in-process.
struct WritersHarness {
    let db: TestDatabase
    let app: PostgresClient
    let broker: AMQPConfiguration
    let brokerURL: String
    let publisher: AMQPPublisher
    let minter: RunnerTokenMinter
    let organization: UUID
    let project: UUID
    let other: UUID
    let otherProject: UUID
    let findingsWriter: FindingsWriter?

    static let tokenSecret = "writers-test-runner-token-secret-0123456789abcdef"

    static func run(
        _ prefix: String, writers: Bool = true, maximumDelay: Duration = .milliseconds(20),
        postgresPort: Int = TestDatabase.port, _ body: (WritersHarness) async throws -> Void
    ) async throws {
        try await TestBroker.withFleetVirtualHost(
            prefix, queues: ["cloudscan.findings.ingest", "cloudscan.status.ingest"]
        ) { broker, url in
            try await TestDatabase.withSchema(prefix, migrated: true, port: postgresPort) { db in
                try await TestDatabase.withClient(db.appConfiguration(maximumConnections: 12)) { app in
                    let (org, project) = try await TestDatabase.seedOrganization(app)
                    let (other, otherProject) = try await TestDatabase.seedOrganization(app, projectKey: "proj-other")
                    let logger = TestDatabase.logger("writers")
                    let publisher = AMQPPublisher(configuration: .init(broker: broker), logger: logger)
                    let minter = try RunnerTokenMinter(secret: tokenSecret)
                    var services: [any Service] = []
                    var findingsWriter: FindingsWriter?
                    if writers {
                        let findings = FindingsWriter(
                            consumer: AMQPConsumer(
                                configuration: .init(broker: broker, queue: "cloudscan.findings.ingest", prefetch: 64),
                                logger: logger),
                            client: app,
                            deadLetter: .init(
                                publisher: publisher, exchange: Exchanges.deadLetter,
                                routingKey: "cloudscan.findings.ingest"),
                            tokens: minter, configuration: .init(maximumDelay: maximumDelay), logger: logger)
                        findingsWriter = findings
                        let status = StatusWriter(client: app, tokens: minter, logger: logger)
                        services = [
                            findings,
                            AMQPConsumerService(
                                consumer: AMQPConsumer(
                                    configuration: .init(
                                        broker: broker, queue: "cloudscan.status.ingest", prefetch: 16),
                                    logger: logger),
                                configuration: .init(
                                    concurrency: 4,
                                    deadLetter: .init(
                                        publisher: publisher, exchange: Exchanges.deadLetter,
                                        routingKey: "cloudscan.status.ingest"),
                                    delay: .init(
                                        publisher: publisher, queue: "cloudscan.status.ingest", delaysSeconds: [5, 30])),
                                logger: logger, handler: status.handle),
                        ]
                    }
                    let group = ServiceGroup(
                        configuration: .init(services: services, gracefulShutdownSignals: [], logger: logger))
                    let running = Task { try await group.run() }
                    let harness = WritersHarness(
                        db: db, app: app, broker: broker, brokerURL: url, publisher: publisher, minter: minter,
                        organization: org, project: project, other: other, otherProject: otherProject,
                        findingsWriter: findingsWriter)
                    do {
                        try await body(harness)
                    } catch {
                        await group.triggerGracefulShutdown()
                        _ = try? await running.value
                        await publisher.close()
                        throw error
                    }
                    await group.triggerGracefulShutdown()
                    _ = try? await running.value
                    await publisher.close()
                }
            }
        }
    }

    /// A scan of `organization`, already dispatched as attempt `attempt`.
    func dispatchedScan(organization: UUID? = nil, attempt: Int = 1, types: [String] = ["sast"]) async throws -> UUID {
        let org = organization ?? self.organization
        let service = ScanService(client: app, logger: TestDatabase.logger("svc"))
        let created = try await service.createScan(
            organizationID: org,
            request: CreateScanRequest(
                project: .init(externalKey: org == self.organization ? "proj-123" : "proj-other"), scanTypes: types,
                artifactURL: "https://storage.example/a.tgz"))
        try await app.withTransaction(organizationID: org) { c in
            try await c.execute(
                """
                UPDATE scans SET status = 'dispatched', attempt = \(Int32(attempt)), dispatched_at = now()
                WHERE id = \(created.scan.id)
                """)
            try await c.execute(
                """
                INSERT INTO scan_events (organization_id, scan_id, scan_created_at, from_status, to_status, actor)
                VALUES (\(org), \(created.scan.id), \(created.scan.createdAt), 'queued', 'dispatched', 'test')
                """)
        }
        return created.scan.id
    }

    func token(_ scan: UUID, organization: UUID? = nil, attempt: Int = 1) -> String {
        minter.token(scanID: scan, organizationID: organization ?? self.organization, attempt: attempt)
    }

    static func finding(_ n: Int, severity: Severity = .high, scanner: String = "semgrep") -> FindingRecord {
        FindingRecord(
            scanner: scanner, ruleID: "rule-\(n % 7)", severity: severity, title: "Finding \(n)",
            message: "something at \(n)", path: "src/file\(n % 5).py", line: n, column: 1, cwe: ["CWE-78"],
            fingerprint: String(format: "%064x", n), raw: .object(["ruleId": .string("rule-\(n % 7)"), "n": .int(n)]))
    }

    func batch(
        _ scan: UUID, index: Int, findings: [FindingRecord], organization: UUID? = nil, attempt: Int = 1,
        token: String? = nil
    ) -> FindingsBatchMessage {
        let org = organization ?? self.organization
        return FindingsBatchMessage(
            scanID: scan, organizationID: org, attempt: attempt, batchIndex: index,
            runnerToken: token ?? self.token(scan, organization: org, attempt: attempt), findings: findings)
    }

    func publish(_ batch: FindingsBatchMessage, body: [UInt8]? = nil, headerOrganization: UUID? = nil) async throws {
        try await publisher.publish(
            AMQPMessage(
                body: body ?? Array(try MessageCoding.encoder().encode(batch)),
                type: MessageType.findingsBatch.rawValue,
                messageID: batch.messageID, correlationID: batch.scanID.uuidString.lowercased(),
                headers: [
                    MessageHeaders.organizationID: (headerOrganization ?? batch.organizationID).uuidString.lowercased()
                ]),
            exchange: Exchanges.findings, routingKey: "findings.sast")
    }

    func report(
        _ scan: UUID, _ kind: StatusReportMessage.Kind, organization: UUID? = nil, attempt: Int = 1,
        batches: Int? = nil, reason: String? = nil, token: String? = nil
    ) -> StatusReportMessage {
        let org = organization ?? self.organization
        return StatusReportMessage(
            scanID: scan, organizationID: org, attempt: attempt, kind: kind,
            runnerToken: token ?? self.token(scan, organization: org, attempt: attempt),
            findingsBatches: kind == .completed ? (batches ?? 0) : nil,
            counts: kind == .completed ? SeverityCounts() : nil,
            scanners: kind == .completed ? [.init(name: "semgrep", outcome: .ok, durationMS: 10, findings: 0)] : nil,
            partial: kind == .completed ? false : nil, reason: reason)
    }

    func publish(_ report: StatusReportMessage) async throws {
        try await publisher.publish(
            AMQPMessage(
                body: Array(try MessageCoding.encoder().encode(report)), type: MessageType.statusReport.rawValue,
                messageID: "\(report.scanID.uuidString.lowercased()):\(report.attempt):\(report.kind.rawValue)",
                headers: [MessageHeaders.organizationID: report.organizationID.uuidString.lowercased()]),
            exchange: Exchanges.status, routingKey: "status.\(report.kind.rawValue)")
    }

    // MARK: Reading back

    func findingsCount(_ scan: UUID, organization: UUID? = nil) async throws -> Int {
        try await app.withTransaction(organizationID: organization ?? self.organization) { c in
            try await c.query("SELECT count(*) FROM findings WHERE scan_id = \(scan)").single().decode(Int.self, at: 0)
        }
    }

    /// Findings counted on the scan row (critical+high+medium+low+info), its status, and its events.
    func scanState(_ scan: UUID, organization: UUID? = nil) async throws -> (
        status: String, counted: Int, events: [String]
    ) {
        try await app.withTransaction(organizationID: organization ?? self.organization) { c in
            let row = try await c.query(
                """
                SELECT status, findings_critical + findings_high + findings_medium + findings_low + findings_info
                FROM scans WHERE id = \(scan)
                """
            ).single()
            let events = try await c.query(
                "SELECT to_status FROM scan_events WHERE scan_id = \(scan) ORDER BY id"
            ).map { try $0.decode(String.self, at: 0) }
            return (try row.decode(String.self, at: 0), try row.decode(Int.self, at: 1), events)
        }
    }

    /// Waits until `condition` holds (or the time runs out); returns whether it held.
    @discardableResult
    func eventually(
        _ seconds: Double = 20, _ condition: () async throws -> Bool
    ) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            if try await condition() { return true }
            try await Task.sleep(for: .milliseconds(50))
        }
        return try await condition()
    }

    /// Reads up to `count` dead letters of a work queue (`<queue>.dead`): (message id, reason, body).
    func deadLetters(_ queue: String, count: Int, within seconds: Double = 15) async throws -> [(
        String, String, [UInt8]
    )] {
        let consumer = AMQPConsumer(
            configuration: .init(broker: broker, queue: "\(queue).dead", prefetch: 50),
            logger: TestDatabase.logger("dead"))
        var out: [(String, String, [UInt8])] = []
        let deadline = ContinuousClock.now + .seconds(seconds)
        let reader = Task { () -> [(String, String, [UInt8])] in
            var collected: [(String, String, [UInt8])] = []
            for await delivery in consumer.deliveries {
                collected.append(
                    (
                        delivery.message.messageID ?? "-", delivery.message.headers["x-cloudscan-reason"] ?? "-",
                        delivery.message.body
                    ))
                try await consumer.ack(delivery)
                if collected.count >= count { break }
            }
            return collected
        }
        let timer = Task {
            try? await Task.sleep(until: deadline, clock: .continuous)
            consumer.stopConsuming()
        }
        out = (try? await reader.value) ?? []
        timer.cancel()
        consumer.stopConsuming()
        await consumer.close()
        return out
    }
}
