import CloudScanAMQP
import CloudScanAPI
import CloudScanAuth
import CloudScanCore
import CloudScanHTTP
import CloudScanPostgres
import CloudScanService
import CloudScanTestSupport
import CloudScanWorkers
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle
import Synchronization
import Testing

/// The relay from a schema of its own to a vhost of its own (or to the chaos node).
@Suite("OutboxRelay (live servers)")
struct OutboxRelayTests {
    static let fleet = try! AMQPTopology.load(
        from: TestDatabase.repositoryRoot.appendingPathComponent("topology/topology.json"))

    /// A fresh vhost with the fleet's topology.
    func withVirtualHost<R>(_ body: (AMQPConfiguration) async throws -> R) async throws -> R {
        try await TestBroker.withFleetVirtualHost("relay", queues: ["cloudscan.dispatch"]) { broker, _ in
            try await body(broker)
        }
    }

    /// Runs the relay as a service while `body` runs.
    func withRelay<R: Sendable>(
        _ db: TestDatabase, _ broker: AMQPConfiguration, _ body: @Sendable () async throws -> R
    ) async throws -> R {
        let client = PostgresClient(configuration: db.appConfiguration(), logger: TestDatabase.logger("relay"))
        let publisher = AMQPPublisher(
            configuration: .init(broker: broker, confirmTimeout: .seconds(10)), logger: TestBroker.logger("relay"))
        let relay = OutboxRelay(
            client: client,
            listener: PostgresListener(configuration: db.appConfiguration(), logger: TestDatabase.logger("l")),
            publisher: publisher,
            configuration: .init(batchSize: 100, sweepInterval: .milliseconds(500), retryDelay: .milliseconds(300)),
            logger: TestDatabase.logger("relay"))
        let group = ServiceGroup(
            configuration: .init(services: [relay], gracefulShutdownSignals: [], logger: TestDatabase.logger("g")))
        let result = try await withThrowingTaskGroup(of: R?.self) { tasks in
            tasks.addTask {
                try await group.run()
                return nil
            }
            let result = try await body()
            await group.triggerGracefulShutdown()
            for try await _ in tasks {}
            return result
        }
        await publisher.close()
        await client.shutdown()
        return result
    }

    /// Consumes `cloudscan.dispatch` until `expected` distinct scan ids arrived (or time runs out).
    func consumeDispatch(_ broker: AMQPConfiguration, expected: Set<UUID>, timeout: Duration = .seconds(60))
        async throws
        -> (ids: Set<UUID>, deliveries: Int, sample: AMQPDelivery?)
    {
        let consumer = AMQPConsumer(
            configuration: .init(broker: broker, queue: "cloudscan.dispatch", prefetch: 500),
            logger: TestBroker.logger("c"))
        var ids = Set<UUID>()
        var count = 0
        var sample: AMQPDelivery?
        let deadline = ContinuousClock.now + timeout
        let decoder = MessageCoding.decoder()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await Task.sleep(until: deadline)
                consumer.stopConsuming()
            }
            for await delivery in consumer.deliveries {
                count += 1
                sample = sample ?? delivery
                let message = try decoder.decode(ScanCreateMessage.self, from: Data(delivery.message.body))
                ids.insert(message.scanID)
                try await consumer.ack(delivery)
                if ids.isSuperset(of: expected) { break }
            }
            group.cancelAll()
        }
        await consumer.close()
        return (ids, count, sample)
    }

    @Test("outbox_lag(): pending counts every unsent row; the lag is the oldest due row's wait, not a retry's backoff")
    func lag() async throws {
        try await TestDatabase.withSchema("olag", migrated: true) { db in
            try await TestDatabase.withClient(db.appConfiguration()) { app in
                let (org, _) = try await TestDatabase.seedOrganization(app)
                func lag() async throws -> (Int, Int, Double) {
                    let row = try await app.query("SELECT pending, due, oldest_due_seconds FROM outbox_lag()").single()
                    return (
                        try row.decode(Int.self, at: 0), try row.decode(Int.self, at: 1),
                        try row.decode(Double.self, at: 2)
                    )
                }
                let empty = try await lag()
                #expect(empty.0 == 0 && empty.1 == 0 && empty.2 == 0)
                try await app.withTransaction(organizationID: org) { c in
                    for (available, sent) in [
                        ("-60 seconds", false), ("-5 seconds", false), ("+600 seconds", false), ("-900 seconds", true),
                    ] {
                        try await c.execute(
                            """
                            INSERT INTO outbox (organization_id, message_id, exchange, routing_key, message_type, payload,
                                                available_at, sent_at)
                            VALUES (\(org), gen_random_uuid(), 'cloudscan.commands', 'scan.create', 'scan.create.v1', '{}',
                                    now() + \(available)::interval, CASE WHEN \(sent) THEN now() END)
                            """)
                    }
                }
                let (pending, due, oldest) = try await lag()
                #expect(pending == 3, "unsent rows, the one held back included")
                #expect(due == 2, "the held-back retry is not due")
                #expect(oldest >= 59 && oldest < 120, "the oldest due row waited ~60 s, not 900 (sent): \(oldest)")
            }
        }
    }

    @Test("an event nobody subscribes to is sent (not mandatory); an unroutable command is not, and waits")
    func unroutable() async throws {
        try await TestDatabase.withSchema("relayroute", migrated: true) { db in
            try await withVirtualHost { broker in
                try await TestDatabase.withClient(db.appConfiguration()) { app in
                    let (org, _) = try await TestDatabase.seedOrganization(app)
                    let event = UUID()
                    let command = UUID()
                    try await app.withTransaction(organizationID: org) { c in
                        // scan.dispatched has no binding on cloudscan.events; scan.nowhere none on commands.
                        _ = try await c.execute(
                            """
                            INSERT INTO outbox (organization_id, message_id, exchange, routing_key, message_type, payload)
                            VALUES (\(org), \(event), \(Exchanges.events), 'scan.dispatched', 'scan.event.v1', '{}'),
                                   (\(org), \(command), \(Exchanges.commands), 'scan.nowhere', 'scan.create.v1', '{}')
                            """)
                    }
                    @Sendable func sent(_ id: UUID) async throws -> (Bool, Int) {
                        try await app.withTransaction(organizationID: org) { c in
                            let row = try await c.query(
                                "SELECT sent_at IS NOT NULL, attempts FROM outbox WHERE message_id = \(id)"
                            ).single()
                            return (try row.decode(Bool.self, at: 0), try row.decode(Int.self, at: 1))
                        }
                    }
                    try await withRelay(db, broker) {
                        let deadline = ContinuousClock.now + .seconds(20)
                        while ContinuousClock.now < deadline {
                            let eventSent = try await sent(event).0
                            let commandTried = try await sent(command).1 >= 1
                            if eventSent && commandTried { break }
                            try await Task.sleep(for: .milliseconds(100))
                        }
                    }
                    #expect(try await sent(event).0, "the event went out")
                    let (commandSent, attempts) = try await sent(command)
                    #expect(!commandSent && attempts >= 1, "the unroutable command waits for another pass")
                }
            }
        }
    }

    @Test("created scans reach cloudscan.commands → cloudscan.dispatch, with properties, and rows are marked sent")
    func relaysCreatedScans() async throws {
        try await TestDatabase.withSchema("relay", migrated: true) { db in
            try await withVirtualHost { broker in
                try await TestDatabase.withClient(db.appConfiguration()) { app in
                    let (org, _) = try await TestDatabase.seedOrganization(app)
                    let service = ScanService(client: app, logger: TestDatabase.logger("svc"))
                    let created = try await withRelay(db, broker) {
                        var ids = Set<UUID>()
                        for _ in 0..<30 {
                            let request = CreateScanRequest(
                                project: .init(externalKey: "proj-123"), scanTypes: ["sast"],
                                artifactURL: "https://storage.local/a.tar.gz")
                            ids.insert(
                                try await service.createScan(
                                    organizationID: org, request: request,
                                    traceparent:
                                        "00-\(String(repeating: "a", count: 32))-\(String(repeating: "b", count: 16))-01"
                                ).scan.id)
                        }
                        // Until the relay has marked everything sent.
                        let deadline = ContinuousClock.now + .seconds(30)
                        while ContinuousClock.now < deadline {
                            let pending = try await app.withTransaction(organizationID: org) { c in
                                try await c.query("SELECT count(*) FROM outbox WHERE sent_at IS NULL").single()
                                    .decode(Int.self, at: 0)
                            }
                            if pending == 0 { break }
                            try await Task.sleep(for: .milliseconds(100))
                        }
                        return ids
                    }
                    let pending = try await app.withTransaction(organizationID: org) { c in
                        try await c.query("SELECT count(*) FROM outbox WHERE sent_at IS NULL").single().decode(
                            Int.self, at: 0)
                    }
                    #expect(pending == 0)
                    let (ids, deliveries, sample) = try await consumeDispatch(broker, expected: created)
                    #expect(ids == created)
                    #expect(deliveries == created.count, "each row published once")
                    let message = try #require(sample?.message)
                    #expect(message.type == "scan.create.v1")
                    #expect(message.contentType == "application/json")
                    #expect(message.headers["x-organization-id"] == org.uuidString.lowercased())
                    #expect(message.headers["traceparent"]?.hasPrefix("00-aaaa") == true)
                    #expect(message.correlationID.flatMap(UUID.init(uuidString:)).map(created.contains) == true)
                    #expect(message.persistent)
                }
            }
        }
    }

    @Test(
        "broker stopped during 500 HTTP creates: every 201's scan reaches the exchange after the restart (0 lost)",
        .chaosNode)
    func brokerOutageLosesNothing() async throws {
        #expect(try await TestBroker.services("rabbit-chaos-start") == 0)
        let broker = TestBroker.chaosConfiguration(heartbeatSeconds: 5)
        #expect(try await Self.fleet.apply(broker: broker).isClean)
        try await TestDatabase.withSchema("relayout", migrated: true) { db in
            try await TestDatabase.withClient(db.appConfiguration(maximumConnections: 8)) { app in
                let (org, _) = try await TestDatabase.seedOrganization(app)
                let api = ScanAPI(
                    service: ScanService(client: app, logger: TestDatabase.logger("svc")),
                    authenticator: DevelopmentAuthenticator(), readiness: { [:] })
                let port = Mutex<Int?>(nil)
                let application = Application(
                    router: api.router(), configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                    onServerRunning: { channel in port.withLock { $0 = channel.localAddress?.port } },
                    logger: TestDatabase.logger("http"))
                let created = try await withRelay(db, broker) {
                    try await withThrowingTaskGroup(of: Void.self) { server in
                        server.addTask { try await application.runService(gracefulShutdownSignals: []) }
                        while port.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(20)) }
                        let url = "http://127.0.0.1:\(port.withLock { $0 }!)/api/v1/scans"
                        let http = CurlHTTPClient()
                        let ok = Counter()
                        // 500 POSTs from 16 workers; the broker is killed after the 100th 201.
                        let next = Counter()
                        let ids = try await withThrowingTaskGroup(of: [UUID].self) { group in
                            for _ in 0..<16 {
                                group.addTask {
                                    var mine: [UUID] = []
                                    while true {
                                        let n = next.value.withLock { value in
                                            defer { value += 1 }
                                            return value
                                        }
                                        if n >= 500 { return mine }
                                        let body =
                                            #"{"project":{"external_key":"proj-123"},"scan_types":["sast"],"artifact":{"url":"https://storage.local/\#(n).tar.gz"}}"#
                                        let response = try await http.perform(
                                            .init(
                                                method: "POST", url: url,
                                                headers: [
                                                    ("Content-Type", "application/json"),
                                                    ("X-Cloudscan-Organization", org.uuidString),
                                                ], body: Array(body.utf8)))
                                        guard response.status == 201,
                                            let json = try JSONSerialization.jsonObject(with: Data(response.body))
                                                as? [String: Any],
                                            let id = (json["id"] as? String).flatMap({ UUID(uuidString: $0) })
                                        else { throw POSIXError(.EPROTO) }
                                        mine.append(id)
                                        if ok.value.withLock({ value in
                                            value += 1
                                            return value == 100
                                        }) {
                                            #expect(try await TestBroker.services("rabbit-chaos-kill") == 0)
                                        }
                                    }
                                }
                            }
                            var ids = Set<UUID>()
                            for try await batch in group { ids.formUnion(batch) }
                            return ids
                        }
                        #expect(ok.value.withLock { $0 } == 500, "every create answered 201 while the broker was down")
                        #expect(ids.count == 500)
                        #expect(try await TestBroker.services("rabbit-chaos-start") == 0)
                        let deadline = ContinuousClock.now + .seconds(60)
                        while ContinuousClock.now < deadline {
                            let pending = try await app.withTransaction(organizationID: org) { c in
                                try await c.query("SELECT count(*) FROM outbox WHERE sent_at IS NULL").single()
                                    .decode(Int.self, at: 0)
                            }
                            if pending == 0 { break }
                            try await Task.sleep(for: .milliseconds(250))
                        }
                        server.cancelAll()
                        return ids
                    }
                }
                let (ids, deliveries, _) = try await consumeDispatch(broker, expected: created)
                print(
                    "LEDGER relay-outage: 201s \(created.count), delivered \(deliveries) / \(ids.count) distinct, lost \(created.subtracting(ids).count)"
                )
                #expect(created.subtracting(ids).isEmpty)
            }
        }
        // Leave the chaos node's shared queues empty for the next run.
        try await Self.fleet.delete(broker: broker)
    }
}

final class Counter: Sendable {
    let value = Mutex(0)
}
