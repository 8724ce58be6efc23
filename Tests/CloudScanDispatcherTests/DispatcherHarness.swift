import CloudScanAMQP
import CloudScanAuth
import CloudScanCore
import CloudScanDispatcher
import CloudScanKubernetes
import CloudScanMetrics
import CloudScanPostgres
import CloudScanService
import CloudScanTestSupport
import Foundation
import KubernetesStandIn
import Logging
import ServiceLifecycle
import Testing

/// One dispatcher against the live servers: its own schema, its own exchange and queues (with
/// 1 s and 2 s delay tiers), a Kubernetes stand-in; consumers run until the body returns.
struct DispatcherHarness {
    let app: PostgresClient
    let standIn: KubernetesStandIn
    let publisher: AMQPPublisher
    let exchange: String
    let dispatchQueue: String
    let cancelQueue: String
    let organization: UUID
    let project: UUID
    let other: UUID
    let otherProject: UUID
    let service: ScanService
    let broker: AMQPConfiguration
    /// The dispatcher's own registry (what `cloudscan dispatcher` serves on /metrics).
    let metrics: FleetMetrics
    static let namespace = "cloudscan"
    static let tokenSecret = "dispatcher-test-runner-token-secret-0123456789"

    static func run(
        quota: Int = 10, kubeTimeout: Duration = .seconds(5), storage: (url: String, token: String)? = nil,
        deliveryLimit: Int = 5,
        _ body: (DispatcherHarness) async throws -> Void
    ) async throws {
        // Each harness declares quorum queues; bursts of declarations stall the broker, so these
        // share the bound of the fleet virtual hosts (at most TEST_FLEET_VHOSTS at once).
        await FleetVirtualHosts.shared.acquire()
        defer { Task { await FleetVirtualHosts.shared.release() } }
        try await TestDatabase.withSchema("disp", migrated: true) { db in
            try await TestDatabase.withClient(db.appConfiguration(maximumConnections: 8)) { app in
                let (org, project) = try await TestDatabase.seedOrganization(app)
                let (other, otherProject) = try await TestDatabase.seedOrganization(app, projectKey: "proj-other")
                try await app.withTransaction(organizationID: org) { c in
                    _ = try await c.execute("UPDATE organizations SET concurrency_quota = \(Int32(quota))")
                }
                let standIn = try await KubernetesStandIn.start()
                defer { Task { await standIn.stop() } }
                let broker = TestBroker.configuration()
                let id = UUID().uuidString.prefix(8).lowercased()
                let exchange = "test.disp.\(id).commands"
                let dispatchQueue = "test.disp.\(id).dispatch"
                let cancelQueue = "test.disp.\(id).cancel"
                let topology = AMQPTopology(
                    exchanges: [.init(name: exchange, type: "topic")], deadLetterExchange: "test.disp.\(id).dlx",
                    workQueues: [
                        .init(
                            name: dispatchQueue,
                            bindings: [
                                .init(exchange: exchange, routingKey: "scan.create"),
                                .init(exchange: exchange, routingKey: "scan.retry"),
                            ], deliveryLimit: deliveryLimit, maxLength: 100_000, retryDelaysSeconds: [1, 2]),
                        .init(
                            name: cancelQueue, bindings: [.init(exchange: exchange, routingKey: "scan.cancel")],
                            deliveryLimit: 5, maxLength: 100_000, retryDelaysSeconds: [1, 2]),
                    ])
                #expect(try await topology.apply(broker: broker).isClean)
                let logger = TestDatabase.logger("dispatcher")
                let publisher = AMQPPublisher(configuration: .init(broker: broker), logger: logger)
                let kube = KubernetesClient(
                    configuration: .init(
                        server: standIn.server, namespace: namespace, token: KubernetesStandIn.adminToken),
                    requestTimeout: kubeTimeout)
                let metrics = FleetMetrics()
                let dispatcher = Dispatcher(
                    client: app,
                    backend: KubernetesJobBackend(
                        client: kube, builder: JobSpecBuilder(configuration: .init(namespace: namespace)),
                        logger: logger),
                    artifacts: ArtifactResolver(storageURL: storage?.url, token: storage?.token),
                    tokens: try RunnerTokenMinter(secret: tokenSecret),
                    configuration: .init(
                        quotaDelaySeconds: 1, backendBackoff: .milliseconds(50), outageDelaysSeconds: [1, 2],
                        metrics: metrics),
                    logger: logger)
                func consumerService(
                    _ queue: String, _ handler: @escaping AMQPConsumerService.Handler
                ) -> AMQPConsumerService {
                    AMQPConsumerService(
                        consumer: AMQPConsumer(
                            configuration: .init(broker: broker, queue: queue, prefetch: 16), logger: logger),
                        configuration: .init(
                            concurrency: 8,
                            deadLetter: .init(publisher: publisher, exchange: "test.disp.\(id).dlx", routingKey: queue),
                            delay: .init(publisher: publisher, queue: queue, delaysSeconds: [1, 2]),
                            metrics: metrics.queue(queue)),
                        logger: logger, handler: handler)
                }
                let group = ServiceGroup(
                    configuration: .init(
                        services: [
                            consumerService(dispatchQueue, dispatcher.handleDispatch),
                            consumerService(cancelQueue, dispatcher.handleCancel),
                        ], gracefulShutdownSignals: [], logger: logger))
                let harness = DispatcherHarness(
                    app: app, standIn: standIn, publisher: publisher, exchange: exchange, dispatchQueue: dispatchQueue,
                    cancelQueue: cancelQueue, organization: org, project: project, other: other,
                    otherProject: otherProject, service: ScanService(client: app, logger: logger), broker: broker,
                    metrics: metrics)
                try await withThrowingTaskGroup(of: Void.self) { tasks in
                    tasks.addTask { try await group.run() }
                    do {
                        try await body(harness)
                    } catch {
                        await group.triggerGracefulShutdown()
                        throw error
                    }
                    await group.triggerGracefulShutdown()
                    try await tasks.waitForAll()
                }
                await publisher.close()
                try? await topology.delete(broker: broker)
            }
        }
    }

    // MARK: Messages

    func publish<M: Encodable>(
        _ payload: M, type: MessageType, routingKey: String, organization: UUID, messageID: String = UUID().uuidString
    )
        async throws
    {
        try await publishRaw(
            try MessageCoding.encoder().encode(payload), type: type.rawValue, routingKey: routingKey,
            organization: organization, messageID: messageID)
    }

    func publishRaw(
        _ body: Data, type: String, routingKey: String, organization: UUID, messageID: String = UUID().uuidString
    )
        async throws
    {
        try await publisher.publish(
            AMQPMessage(
                body: Array(body), contentType: "application/json", type: type, messageID: messageID,
                headers: [MessageHeaders.organizationID: organization.uuidString.lowercased()]),
            exchange: exchange, routingKey: routingKey)
    }

    /// A scan created through the service layer (as the API does), then its scan.create published
    /// (as the relay does).
    func createScan(organization: UUID? = nil, key: String = "proj-123", publishTimes: Int = 1) async throws -> Scan {
        let org = organization ?? self.organization
        let created = try await service.createScan(
            organizationID: org,
            request: CreateScanRequest(
                project: .init(externalKey: key), scanTypes: ["sast"], artifactURL: "https://storage.local/a.tar.gz"))
        let message = ScanCreateMessage(
            scanID: created.scan.id, organizationID: org, project: .init(id: created.scan.projectID),
            scanTypes: created.scan.scanTypes, artifact: .init(url: created.scan.artifactURL),
            requestedAt: created.scan.createdAt, timeoutSeconds: created.scan.timeoutSeconds)
        let messageID = UUID().uuidString
        for _ in 0..<publishTimes {
            try await publish(
                message, type: .scanCreate, routingKey: "scan.create", organization: org, messageID: messageID)
        }
        return created.scan
    }

    func status(_ scanID: UUID, organization: UUID? = nil) async throws -> (ScanStatus, Int) {
        try await app.withTransaction(organizationID: organization ?? self.organization) { c in
            let row = try await c.query("SELECT status, attempt FROM scans WHERE id = \(scanID)").single()
            return (ScanStatus(rawValue: try row.decode(String.self, at: 0))!, try row.decode(Int.self, at: 1))
        }
    }

    func events(_ scanID: UUID, organization: UUID? = nil) async throws -> [String] {
        try await app.withTransaction(organizationID: organization ?? self.organization) { c in
            try await c.query("SELECT to_status FROM scan_events WHERE scan_id = \(scanID) ORDER BY id").map {
                try $0.decode(String.self, at: 0)
            }
        }
    }

    func jobNames() async -> [String] { await standIn.cluster.jobNames(namespace: Self.namespace) }

    /// Dispatched, and its Job exists (the claim commits before the Job is created).
    func dispatchedWithJob(_ scanID: UUID, organization: UUID? = nil) async throws -> Bool {
        guard let (status, attempt) = try? await self.status(scanID, organization: organization),
            status == .dispatched
        else { return false }
        let name = RunnerAssignment.jobName(scanID: scanID, attempt: attempt)
        return await jobNames().contains(name)
    }

    /// Polls until `condition` holds (or fails the test after `seconds`).
    func eventually(_ what: String, seconds: Int = 15, _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while try await !condition() {
            guard ContinuousClock.now < deadline else {
                Issue.record("not within \(seconds) s: \(what)")
                return
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// Messages dead-lettered from a queue, with their reason header.
    func deadLettered(from queue: String, count: Int) async throws -> [(id: String?, reason: String?)] {
        let consumer = AMQPConsumer(
            configuration: .init(broker: broker, queue: "\(queue).dead", prefetch: 50),
            logger: TestDatabase.logger("dead"))
        var out: [(String?, String?)] = []
        let deadline = ContinuousClock.now + .seconds(10)
        for await delivery in consumer.deliveries {
            out.append((delivery.message.messageID, delivery.message.headers["x-cloudscan-reason"]))
            try await consumer.ack(delivery)
            if out.count >= count || ContinuousClock.now > deadline { break }
        }
        await consumer.close()
        return out
    }
}
