import CloudScanAMQP
import CloudScanCore
import CloudScanPostgres
import CloudScanTestSupport
import CloudScanWorkers
import Foundation
import Testing

/// SIGTERM to each consumer role's process while it has work in flight: the role stops consuming,
/// finishes and settles what it holds within DRAIN_TIMEOUT_SECONDS, exits 0, and the next process
/// takes the rest — nothing lost, nothing doubled. (The dispatcher's is in CloudScanDispatcherTests.)
@Suite("SIGTERM drains each consumer role under load (processes)")
struct DrainProcessTests {
    static let binary = PipelineProcessTests.binary

    /// A transaction holding one scan's row lock until ``release()``: a handler that updates the
    /// scan waits on it, so it is provably in flight when SIGTERM arrives.
    final class RowLock: Sendable {
        let task: Task<Void, Error>
        let gate: AsyncStream<Void>.Continuation

        init(_ client: PostgresClient, organization: UUID, scan: UUID) async throws {
            let (stream, gate) = AsyncStream<Void>.makeStream()
            let (locked, lockedGate) = AsyncStream<Void>.makeStream()
            self.gate = gate
            task = Task {
                try await client.withTransaction(organizationID: organization) { c in
                    _ = try await c.query("SELECT id FROM scans WHERE id = \(scan) FOR UPDATE")
                    lockedGate.yield()
                    for await _ in stream { break }
                }
            }
            for await _ in locked { break }
        }

        func release() async throws {
            gate.yield()
            try await task.value
        }
    }

    static func directory(_ prefix: String) throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return directory
    }

    /// What a role's process test needs: a fleet virtual host with `queue`, a migrated schema with
    /// one organization, a scratch directory, and the process environment (services' role, the
    /// schema, the broker, DRAIN_TIMEOUT_SECONDS 20, no metrics port).
    struct ProcessFixture {
        var broker: AMQPConfiguration
        var app: PostgresClient
        var organization: UUID
        var directory: URL
        var environment: [String: String]
    }

    static func withProcessFixture(_ prefix: String, queue: String, _ body: (ProcessFixture) async throws -> Void)
        async throws
    {
        try await TestBroker.withFleetVirtualHost(prefix, queues: [queue]) { broker, url in
            try await TestDatabase.withSchema(prefix, migrated: true) { db in
                try await TestDatabase.withClient(db.appConfiguration()) { app in
                    let (organization, _) = try await TestDatabase.seedOrganization(app)
                    let directory = try Self.directory(prefix)
                    defer { try? FileManager.default.removeItem(at: directory) }
                    try await body(
                        ProcessFixture(
                            broker: broker, app: app, organization: organization, directory: directory,
                            environment: [
                                "DATABASE_URL": TestDatabase.appURL, "DB_SCHEMA": db.schema, "AMQP_URL": url,
                                "DRAIN_TIMEOUT_SECONDS": "20", "METRICS_PORT": "0",
                                "TOPOLOGY_FILE": TestDatabase.repositoryRoot.appendingPathComponent(
                                    "topology/topology.json"
                                ).path,
                            ]))
                }
            }
        }
    }

    static func log(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }

    @Test(
        "status-writer: SIGTERM with a report in flight; it finishes within the drain, exit 0; the next writer takes the rest; each scan moved to running once"
    )
    func statusWriter() async throws {
        try await WritersHarness.run("drainst", writers: false) { h in
            var scans: [UUID] = []
            for _ in 0..<60 { scans.append(try await h.dispatchedScan()) }
            let directory = try Self.directory("drainst")
            defer { try? FileManager.default.removeItem(at: directory) }
            var environment = PipelineProcessTests.environment(h)
            environment["DRAIN_TIMEOUT_SECONDS"] = "20"
            environment["METRICS_PORT"] = "0"
            let lock = try await RowLock(h.app, organization: h.organization, scan: scans[0])
            let log1 = directory.appendingPathComponent("1.log").path
            let first = try BackgroundCommand([Self.binary, "status-writer"], environment: environment, logFile: log1)
            for scan in scans.prefix(40) { try await h.publish(h.report(scan, .started)) }
            func running() async throws -> Int {
                try await h.app.withTransaction(organizationID: h.organization) { c in
                    try await c.query("SELECT count(*) FROM scans WHERE status = 'running'").single().decode(
                        Int.self, at: 0)
                }
            }
            #expect(try await h.eventually(30) { try await running() == 39 }, "all but the held scan")
            kill(first.pid, SIGTERM)
            try await Task.sleep(for: .seconds(1))
            // Draining: the held report is still in its handler; what is published now waits.
            #expect(try await h.scanState(scans[0]).status == "dispatched")
            for scan in scans.suffix(20) { try await h.publish(h.report(scan, .started)) }
            try await lock.release()
            #expect(await first.wait() == 0, "drained and exited 0: \(Self.log(log1).suffix(1500))")
            #expect(try await h.scanState(scans[0]).status == "running", "the in-flight report was committed")
            #expect(try await running() == 40)

            let log2 = directory.appendingPathComponent("2.log").path
            let second = try BackgroundCommand([Self.binary, "status-writer"], environment: environment, logFile: log2)
            #expect(try await h.eventually(30) { try await running() == 60 })
            try await Task.sleep(for: .milliseconds(300))
            #expect(await second.stop(SIGTERM) == 0)
            for scan in scans {
                let events = try await h.scanState(scan).events
                #expect(events == ["queued", "dispatched", "running"], "\(scan): \(events)")
            }
        }
    }

    @Test(
        "findings-writer: SIGTERM with a flush in flight; it commits within the drain, exit 0; the next writer takes the rest; every finding once"
    )
    func findingsWriter() async throws {
        try await WritersHarness.run("drainfw", writers: false) { h in
            let scans = [try await h.dispatchedScan(), try await h.dispatchedScan(), try await h.dispatchedScan()]
            let directory = try Self.directory("drainfw")
            defer { try? FileManager.default.removeItem(at: directory) }
            var environment = PipelineProcessTests.environment(h)
            environment["DRAIN_TIMEOUT_SECONDS"] = "20"
            environment["METRICS_PORT"] = "0"
            let lock = try await RowLock(h.app, organization: h.organization, scan: scans[0])
            let log1 = directory.appendingPathComponent("1.log").path
            let first = try BackgroundCommand(
                [Self.binary, "findings-writer"], environment: environment, logFile: log1)
            var next = [0, 0, 0]
            var n = 0
            func publish(_ count: Int) async throws {
                for _ in 0..<count {
                    let which = n % 3
                    try await h.publish(
                        h.batch(
                            scans[which], index: next[which],
                            findings: (0..<100).map { WritersHarness.finding(n * 100 + $0) }))
                    next[which] += 1
                    n += 1
                }
            }
            try await publish(30)
            // The flush holding the first scan's batches waits on its row.
            try await Task.sleep(for: .seconds(2))
            #expect(try await h.findingsCount(scans[0]) == 0)
            kill(first.pid, SIGTERM)
            try await Task.sleep(for: .seconds(1))
            try await publish(6)
            try await lock.release()
            #expect(await first.wait() == 0, "drained and exited 0: \(Self.log(log1).suffix(1500))")
            #expect(try await h.findingsCount(scans[0]) > 0, "the in-flight flush was committed")

            let log2 = directory.appendingPathComponent("2.log").path
            let second = try BackgroundCommand(
                [Self.binary, "findings-writer"], environment: environment, logFile: log2)
            func total() async throws -> Int {
                var sum = 0
                for scan in scans { sum += try await h.findingsCount(scan) }
                return sum
            }
            #expect(try await h.eventually(30) { try await total() == 3600 })
            try await Task.sleep(for: .milliseconds(500))
            #expect(await second.stop(SIGTERM) == 0)
            #expect(try await total() == 3600, "every finding exactly once")
            for (index, scan) in scans.enumerated() {
                #expect(try await h.scanState(scan).counted == next[index] * 100, "counted once: \(scan)")
            }
            let batches = try await h.app.withTransaction(organizationID: h.organization) { c in
                try await c.query("SELECT count(*) FROM scan_findings_batches").single().decode(Int.self, at: 0)
            }
            #expect(batches == 36)
        }
    }

    @Test(
        "notifier: SIGTERM with deliveries in flight (a slow receiver); they finish within the drain, exit 0; the next notifier delivers the rest; each delivery once"
    )
    func notifier() async throws {
        try await Self.withProcessFixture("drainnt", queue: "cloudscan.notify") { f in
            let (broker, app, org, directory) = (f.broker, f.app, f.organization, f.directory)
            let portFile = directory.appendingPathComponent("port").path
            let receiver = try BackgroundCommand(
                [
                    "python3",
                    TestDatabase.repositoryRoot.appendingPathComponent("Tests/clients/webhook_receiver.py")
                        .path, directory.path, "whsec_drain", portFile,
                ], environment: [:], logFile: directory.appendingPathComponent("receiver.log").path)
            defer { Task { _ = await receiver.stop(SIGKILL) } }
            var port: Int?
            for _ in 0..<200 where port == nil {
                port = (try? String(contentsOfFile: portFile, encoding: .utf8)).flatMap { Int($0) }
                if port == nil { try await Task.sleep(for: .milliseconds(25)) }
            }
            try "slow".write(
                to: directory.appendingPathComponent("drain.mode"), atomically: true, encoding: .utf8)
            try await app.withTransaction(organizationID: org) { c in
                try await c.execute(
                    """
                    INSERT INTO webhook_subscriptions (organization_id, url, secret, events)
                    VALUES (\(org), \("http://127.0.0.1:\(try #require(port))/hook/drain"), 'whsec_drain',
                            ARRAY['scan.completed'])
                    """)
            }
            let publisher = AMQPPublisher(
                configuration: .init(broker: broker), logger: TestDatabase.logger("p"))
            defer { Task { await publisher.close() } }
            for _ in 0..<24 {
                let event = ScanEventMessage(
                    eventID: UUID().uuidString.lowercased(), scanID: UUID(), organizationID: org,
                    projectID: UUID(), status: .completed, at: Date(), attempt: 1, counts: ["high": 1])
                try await publisher.publish(
                    AMQPMessage(
                        body: Array(try MessageCoding.encoder().encode(event)),
                        type: MessageType.scanEvent.rawValue, messageID: event.eventID,
                        correlationID: event.scanID.uuidString.lowercased(),
                        headers: [MessageHeaders.organizationID: org.uuidString.lowercased()]),
                    exchange: Exchanges.events, routingKey: "scan.completed")
            }
            var environment = f.environment
            environment["NOTIFY_CONCURRENCY"] = "2"
            environment["WEBHOOK_ALLOWED_NETWORKS"] = "127.0.0.1/32"  // the receiver is on this machine
            func received() -> [[String: Any]] {
                ((try? String(
                    contentsOf: directory.appendingPathComponent("drain.jsonl"), encoding: .utf8)) ?? "")
                    .split(separator: "\n").compactMap {
                        try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
                    }
            }
            let log1 = directory.appendingPathComponent("1.log").path
            let first = try BackgroundCommand(
                [Self.binary, "notifier"], environment: environment, logFile: log1)
            let deadline = ContinuousClock.now + .seconds(30)
            while received().count < 4, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            kill(first.pid, SIGTERM)
            #expect(await first.wait() == 0, "drained and exited 0: \(Self.log(log1).suffix(1500))")
            let afterFirst = received().count
            #expect(afterFirst >= 4 && afterFirst < 24, "SIGTERM landed mid-stream: \(afterFirst)")

            let log2 = directory.appendingPathComponent("2.log").path
            let second = try BackgroundCommand(
                [Self.binary, "notifier"], environment: environment, logFile: log2)
            let deadline2 = ContinuousClock.now + .seconds(60)
            while received().count < 24, ContinuousClock.now < deadline2 {
                try await Task.sleep(for: .milliseconds(50))
            }
            try await Task.sleep(for: .seconds(1))
            #expect(await second.stop(SIGTERM) == 0)
            let deliveries = received().compactMap { $0["delivery"] as? String }
            #expect(deliveries.count == 24, "each event delivered once: \(deliveries.count)")
            #expect(Set(deliveries).count == 24)
            let logged = try await app.withTransaction(organizationID: org) { c in
                try await c.query(
                    "SELECT count(*) FROM webhook_deliveries WHERE delivered_at IS NOT NULL"
                ).single().decode(Int.self, at: 0)
            }
            #expect(logged == 24)
        }
    }

    @Test(
        "relay: SIGTERM mid-stream ends between batches (the current one marked), exit 0; the next relay publishes the rest; each row published once"
    )
    func relay() async throws {
        try await Self.withProcessFixture("drainrl", queue: "cloudscan.dispatch") { f in
            let (broker, app, org, directory, environment) = (
                f.broker, f.app, f.organization, f.directory, f.environment
            )
            let rows = 8000
            try await app.withTransaction(organizationID: org) { c in
                try await c.execute(
                    """
                    INSERT INTO outbox (organization_id, message_id, exchange, routing_key, message_type, payload)
                    SELECT \(org), gen_random_uuid(), 'cloudscan.commands', 'scan.create', 'scan.create.v1',
                           jsonb_build_object('n', n)
                    FROM generate_series(1, \(Int32(rows))) AS n
                    """)
            }
            func sent() async throws -> Int {
                try await app.withTransaction(organizationID: org) { c in
                    try await c.query("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL").single()
                        .decode(Int.self, at: 0)
                }
            }
            let log1 = directory.appendingPathComponent("1.log").path
            let first = try BackgroundCommand([Self.binary, "relay"], environment: environment, logFile: log1)
            let deadline = ContinuousClock.now + .seconds(30)
            while try await sent() < 400, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(await first.stop(SIGTERM) == 0, "drained and exited 0: \(Self.log(log1).suffix(1500))")
            let afterFirst = try await sent()
            #expect(afterFirst >= 400 && afterFirst < rows, "SIGTERM landed mid-stream: \(afterFirst)")

            let log2 = directory.appendingPathComponent("2.log").path
            let second = try BackgroundCommand([Self.binary, "relay"], environment: environment, logFile: log2)
            let deadline2 = ContinuousClock.now + .seconds(60)
            while try await sent() < rows, ContinuousClock.now < deadline2 {
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(await second.stop(SIGTERM) == 0)
            #expect(try await sent() == rows)
            // The queue holds each row's message once: every row was sent (at least once), and
            // the queue has exactly as many messages as rows.
            var topology = try AMQPTopology.load(
                from: TestDatabase.repositoryRoot.appendingPathComponent("topology/topology.json"))
            topology.workQueues = topology.workQueues.filter { $0.name == "cloudscan.dispatch" }
            #expect(try await topology.depths(broker: broker)["cloudscan.dispatch"] == rows)
        }
    }
}
