import CloudScanAMQP
import CloudScanCore
import CloudScanPostgres
import CloudScanService
import CloudScanTestSupport
import Foundation
import KubernetesStandIn
import Testing

/// The `cloudscan dispatcher` binary, killed with SIGKILL between the Job create and the ack.
@Suite("cloudscan dispatcher (the process)")
struct DispatcherProcessTests {
    static let binary = TestDatabase.repositoryRoot.appendingPathComponent(".build/debug/cloudscan").path

    /// A kubeconfig pointing at the stand-in, namespace cloudscan.
    static func kubeconfig(_ standIn: KubernetesStandIn, in directory: URL) throws -> URL {
        let file = directory.appendingPathComponent("kubeconfig")
        try """
        current-context: test
        clusters: [{name: s, cluster: {server: "\(standIn.server)"}}]
        users: [{name: u, user: {token: \(KubernetesStandIn.adminToken)}}]
        contexts: [{name: test, context: {cluster: s, user: u, namespace: cloudscan}}]
        """.write(to: file, atomically: true, encoding: .utf8)
        return file
    }

    @Test(
        "SIGKILLed after the Job create, before the ack: redelivered, the Job ensured (409), still one Job, dispatched once"
    )
    func killedBetweenJobCreateAndAck() async throws {
        let vhost = "test-disp-\(UUID().uuidString.prefix(8).lowercased())"
        try await TestBroker.addVirtualHost(vhost)
        defer { Task { await TestBroker.deleteVirtualHost(vhost) } }
        let broker = TestBroker.configuration(virtualHost: vhost)
        let topology = try AMQPTopology.load(
            from: TestDatabase.repositoryRoot.appendingPathComponent("topology/topology.json"))
        #expect(try await topology.apply(broker: broker).isClean)

        let standIn = try await KubernetesStandIn.start()
        defer { Task { await standIn.stop() } }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("disp-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let kubeconfig = try Self.kubeconfig(standIn, in: directory)
        let log = directory.appendingPathComponent("dispatcher.log").path

        try await TestDatabase.withSchema("dispkill", migrated: true) { db in
            try await TestDatabase.withClient(db.appConfiguration()) { app in
                let (org, _) = try await TestDatabase.seedOrganization(app)
                let environment = [
                    "DATABASE_URL": TestDatabase.appURL,
                    "DB_SCHEMA": db.schema,
                    "AMQP_URL":
                        "amqp://\(TestBroker.user):\(TestBroker.password)@\(TestBroker.host):\(TestBroker.port)/\(vhost)",
                    "KUBECONFIG": kubeconfig.path,
                    "RUNNER_TOKEN_SECRET": "a-test-runner-token-secret-of-32-bytes-or-more",
                    "TOPOLOGY_FILE": TestDatabase.repositoryRoot.appendingPathComponent("topology/topology.json").path,
                    "LOG_LEVEL": "info",
                ]
                // The owner reference PATCH comes right after the Job create: hold it, so the
                // dispatcher is caught between the create and its commit.
                await standIn.cluster.inject(.delay(.seconds(120)), method: "PATCH", pathContains: "/secrets/")
                let first = try BackgroundCommand(
                    [Self.binary, "dispatcher", "--backend", "kubernetes"], environment: environment, logFile: log)

                let service = ScanService(client: app, logger: TestDatabase.logger("svc"))
                let created = try await service.createScan(
                    organizationID: org,
                    request: CreateScanRequest(
                        project: .init(externalKey: "proj-123"), scanTypes: ["sast"], artifactURL: "https://s/a.tgz"))
                let publisher = AMQPPublisher(configuration: .init(broker: broker), logger: TestDatabase.logger("pub"))
                let message = ScanCreateMessage(
                    scanID: created.scan.id, organizationID: org, project: .init(id: created.scan.projectID),
                    scanTypes: [.sast], artifact: .init(url: "https://s/a.tgz"), requestedAt: created.scan.createdAt)
                try await publisher.publish(
                    AMQPMessage(
                        body: Array(try MessageCoding.encoder().encode(message)), contentType: "application/json",
                        type: MessageType.scanCreate.rawValue, messageID: UUID().uuidString,
                        headers: [MessageHeaders.organizationID: org.uuidString.lowercased()]),
                    exchange: Exchanges.commands, routingKey: "scan.create")
                await publisher.close()

                func status() async throws -> String {
                    try await app.withTransaction(organizationID: org) { c in
                        try await c.query("SELECT status FROM scans WHERE id = \(created.scan.id)").single().decode(
                            String.self, at: 0)
                    }
                }
                let deadline = ContinuousClock.now + .seconds(60)
                while await standIn.cluster.jobNames(namespace: "cloudscan").isEmpty, ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(50))
                }
                #expect(await standIn.cluster.jobNames(namespace: "cloudscan").count == 1, "the Job was created")
                #expect(await first.stop(SIGKILL) == 128 + SIGKILL)
                // The claim (dispatched, with its event) was committed before the Job create; the ack
                // was not: the message comes back to the next dispatcher.
                #expect(try await status() == "dispatched")

                let second = try BackgroundCommand(
                    [Self.binary, "dispatcher", "--backend", "kubernetes"], environment: environment, logFile: log)
                // The redelivery's create is answered 409 (the Job is there), then the Secret is owned.
                let again = ContinuousClock.now + .seconds(60)
                while await standIn.cluster.jobCreates.count < 2, ContinuousClock.now < again {
                    try await Task.sleep(for: .milliseconds(100))
                }
                try await Task.sleep(for: .milliseconds(500))
                #expect(try await status() == "dispatched")
                #expect(await standIn.cluster.jobNames(namespace: "cloudscan").count == 1, "still one Job")
                #expect(await standIn.cluster.jobCreates.count == 2, "the redelivery's create was answered 409")
                let events = try await app.withTransaction(organizationID: org) { c in
                    try await c.query(
                        "SELECT to_status FROM scan_events WHERE scan_id = \(created.scan.id) ORDER BY id"
                    ).map {
                        try $0.decode(String.self, at: 0)
                    }
                }
                #expect(events == ["queued", "dispatched"])
                #expect(await second.stop(SIGTERM) == 0, "SIGTERM drains and exits cleanly")
                if (try? String(contentsOfFile: log, encoding: .utf8)).map({ $0.contains("error") }) == true {
                    print(try String(contentsOfFile: log, encoding: .utf8))
                }
            }
        }
    }

    @Test(
        "SIGTERM with Job creates in flight (a slow API server): they finish and are acked within the drain, exit 0; the next dispatcher takes the rest; one Job per scan"
    )
    func drainsUnderLoad() async throws {
        try await TestBroker.withFleetVirtualHost("dispdrain", queues: ["cloudscan.dispatch", "cloudscan.cancel"]) {
            broker, url in
            let standIn = try await KubernetesStandIn.start()
            defer { Task { await standIn.stop() } }
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("dispdrain-\(UUID())")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            let kubeconfig = try Self.kubeconfig(standIn, in: directory)
            try await TestDatabase.withSchema("dispdrain", migrated: true) { db in
                try await TestDatabase.withClient(db.appConfiguration()) { app in
                    let (org, _) = try await TestDatabase.seedOrganization(app)
                    // Room for every scan at once (the default concurrency quota is 10).
                    try await app.withTransaction(organizationID: org) { c in
                        try await c.execute("UPDATE organizations SET concurrency_quota = 100 WHERE id = \(org)")
                    }
                    let environment = [
                        "DATABASE_URL": TestDatabase.appURL,
                        "DB_SCHEMA": db.schema, "AMQP_URL": url, "KUBECONFIG": kubeconfig.path,
                        "RUNNER_TOKEN_SECRET": "a-test-runner-token-secret-of-32-bytes-or-more",
                        "TOPOLOGY_FILE": TestDatabase.repositoryRoot.appendingPathComponent("topology/topology.json")
                            .path,
                        "DISPATCH_CONCURRENCY": "4", "DRAIN_TIMEOUT_SECONDS": "20", "METRICS_PORT": "0",
                    ]
                    // Every Job create takes 1.5 s: four are in flight at any moment.
                    await standIn.cluster.inject(
                        .delay(.milliseconds(1500)), times: 100, method: "POST", pathContains: "/jobs")
                    let service = ScanService(client: app, logger: TestDatabase.logger("svc"))
                    let publisher = AMQPPublisher(
                        configuration: .init(broker: broker), logger: TestDatabase.logger("pub"))
                    var scans: [UUID] = []
                    for _ in 0..<16 {
                        let created = try await service.createScan(
                            organizationID: org,
                            request: CreateScanRequest(
                                project: .init(externalKey: "proj-123"), scanTypes: ["sast"],
                                artifactURL: "https://s/a.tgz"))
                        scans.append(created.scan.id)
                        let message = ScanCreateMessage(
                            scanID: created.scan.id, organizationID: org, project: .init(id: created.scan.projectID),
                            scanTypes: [.sast], artifact: .init(url: "https://s/a.tgz"),
                            requestedAt: created.scan.createdAt)
                        try await publisher.publish(
                            AMQPMessage(
                                body: Array(try MessageCoding.encoder().encode(message)),
                                contentType: "application/json", type: MessageType.scanCreate.rawValue,
                                messageID: UUID().uuidString,
                                headers: [MessageHeaders.organizationID: org.uuidString.lowercased()]),
                            exchange: Exchanges.commands, routingKey: "scan.create")
                    }
                    await publisher.close()
                    let log1 = directory.appendingPathComponent("1.log").path
                    let first = try BackgroundCommand(
                        [Self.binary, "dispatcher", "--backend", "kubernetes"], environment: environment, logFile: log1)
                    let deadline = ContinuousClock.now + .seconds(60)
                    while await standIn.cluster.jobCreates.count < 4, ContinuousClock.now < deadline {
                        try await Task.sleep(for: .milliseconds(20))
                    }
                    kill(first.pid, SIGTERM)
                    #expect(await first.wait() == 0, "drained and exited 0")
                    let afterFirst = await standIn.cluster.jobNames(namespace: "cloudscan").count
                    #expect(afterFirst >= 4 && afterFirst < 16, "SIGTERM landed mid-stream: \(afterFirst) Jobs")
                    #expect(await standIn.cluster.jobCreates.count == afterFirst, "every create it began, it finished")

                    let log2 = directory.appendingPathComponent("2.log").path
                    let second = try BackgroundCommand(
                        [Self.binary, "dispatcher", "--backend", "kubernetes"], environment: environment, logFile: log2)
                    let deadline2 = ContinuousClock.now + .seconds(90)
                    while await standIn.cluster.jobNames(namespace: "cloudscan").count < 16,
                        ContinuousClock.now < deadline2
                    {
                        try await Task.sleep(for: .milliseconds(50))
                    }
                    try await Task.sleep(for: .milliseconds(500))
                    #expect(await second.stop(SIGTERM) == 0)
                    #expect(await standIn.cluster.jobNames(namespace: "cloudscan").count == 16, "one Job per scan")
                    #expect(
                        await standIn.cluster.jobCreates.count == 16,
                        "no create repeated: the first process acked what it finished")
                    for scan in scans {
                        let events = try await app.withTransaction(organizationID: org) { c in
                            try await c.query("SELECT to_status FROM scan_events WHERE scan_id = \(scan) ORDER BY id")
                                .map { try $0.decode(String.self, at: 0) }
                        }
                        #expect(events == ["queued", "dispatched"], "\(scan): \(events)")
                    }
                }
            }
        }
    }
}
