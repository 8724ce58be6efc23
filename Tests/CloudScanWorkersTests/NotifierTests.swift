import CloudScanAMQP
import CloudScanAuth
import CloudScanCore
import CloudScanHTTP
import CloudScanPostgres
import CloudScanTestSupport
import CloudScanWorkers
import Foundation
import Logging
import ServiceLifecycle
import Testing

/// The notifier against live PostgreSQL and RabbitMQ (a queue of its own, 1 s and 2 s delay
/// tiers), delivering to a Python receiver that checks the signature with Python's hmac.
struct NotifierHarness {
    let app: PostgresClient
    let publisher: AMQPPublisher
    let broker: AMQPConfiguration
    let exchange: String
    let queue: String
    let organization: UUID
    let other: UUID
    let directory: URL
    let port: Int
    static let secret = "whsec_notifier-test-secret"

    static func run(timeout: Duration = .seconds(3), _ body: (NotifierHarness) async throws -> Void) async throws {
        await FleetVirtualHosts.shared.acquire()
        defer { Task { await FleetVirtualHosts.shared.release() } }
        try await TestDatabase.withSchema("notify", migrated: true) { db in
            try await TestDatabase.withClient(db.appConfiguration(maximumConnections: 12)) { app in
                let (org, _) = try await TestDatabase.seedOrganization(app)
                let (other, _) = try await TestDatabase.seedOrganization(app, projectKey: "proj-other")
                let directory = FileManager.default.temporaryDirectory.appendingPathComponent("hooks-\(UUID())")
                try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
                defer { try? FileManager.default.removeItem(at: directory) }
                let portFile = directory.appendingPathComponent("port").path
                let receiver = try BackgroundCommand(
                    [
                        "python3",
                        TestDatabase.repositoryRoot.appendingPathComponent("Tests/clients/webhook_receiver.py").path,
                        directory.path, secret, portFile,
                    ], environment: [:], logFile: directory.appendingPathComponent("receiver.log").path)
                var port: Int?
                for _ in 0..<200 where port == nil {
                    port = (try? String(contentsOfFile: portFile, encoding: .utf8)).flatMap { Int($0) }
                    if port == nil { try await Task.sleep(for: .milliseconds(25)) }
                }
                let id = UUID().uuidString.prefix(8).lowercased()
                let exchange = "test.notify.\(id).events"
                let queue = "test.notify.\(id)"
                let dlx = "test.notify.\(id).dlx"
                let topology = AMQPTopology(
                    exchanges: [.init(name: exchange, type: "topic")], deadLetterExchange: dlx,
                    workQueues: [
                        .init(
                            name: queue,
                            bindings: [
                                .init(exchange: exchange, routingKey: "scan.completed"),
                                .init(exchange: exchange, routingKey: "scan.failed"),
                            ], deliveryLimit: 10, maxLength: 100_000, retryDelaysSeconds: [1, 2])
                    ])
                let broker = TestBroker.configuration()
                #expect(try await topology.apply(broker: broker).isClean)
                let logger = TestDatabase.logger("notifier")
                let publisher = AMQPPublisher(configuration: .init(broker: broker), logger: logger)
                let notifier = Notifier(
                    client: app, publisher: publisher,
                    configuration: .init(
                        queue: queue, retryDelaysSeconds: [1, 2], timeout: timeout, deadLetterExchange: dlx,
                        screen: DestinationScreen(allowedNetworks: [try #require(IPNetwork("127.0.0.1/32"))]),
                        secrets: .development),
                    logger: logger)
                let service = AMQPConsumerService(
                    consumer: AMQPConsumer(
                        configuration: .init(broker: broker, queue: queue, prefetch: 16), logger: logger),
                    configuration: .init(
                        concurrency: 8, deadLetter: .init(publisher: publisher, exchange: dlx, routingKey: queue),
                        delay: .init(publisher: publisher, queue: queue, delaysSeconds: [1, 2])),
                    logger: logger, handler: notifier.handle)
                let group = ServiceGroup(
                    configuration: .init(services: [service], gracefulShutdownSignals: [], logger: logger))
                let running = Task { try await group.run() }
                let harness = NotifierHarness(
                    app: app, publisher: publisher, broker: broker, exchange: exchange, queue: queue, organization: org,
                    other: other, directory: directory, port: try #require(port))
                do {
                    try await body(harness)
                } catch {
                    await group.triggerGracefulShutdown()
                    _ = try? await running.value
                    await publisher.close()
                    _ = await receiver.stop(SIGKILL)
                    try? await topology.delete(broker: broker)
                    throw error
                }
                await group.triggerGracefulShutdown()
                _ = try? await running.value
                await publisher.close()
                _ = await receiver.stop(SIGKILL)
                try? await topology.delete(broker: broker)
            }
        }
    }

    /// A subscription of `organization` posting to the receiver's /hook/NAME on `host` (the
    /// notifier may reach 127.0.0.1 only), its secret sealed as the API seals it (or stored in
    /// the clear, as rows from before sealing are).
    @discardableResult
    func subscribe(
        _ name: String, organization: UUID? = nil, events: [String] = ["scan.completed", "scan.failed"],
        minimum: Severity? = nil, slack: Bool = false, host: String = "127.0.0.1", sealed: Bool = true
    ) async throws -> UUID {
        let org = organization ?? self.organization
        let id = UUID()
        let secret =
            sealed
            ? try SecretBox.development.seal(
                Self.secret, context: SecretBox.webhookContext(organizationID: org, subscriptionID: id)) : Self.secret
        return try await app.withTransaction(organizationID: org) { c in
            try await c.query(
                """
                INSERT INTO webhook_subscriptions (id, organization_id, url, secret, events, minimum_severity, payload_format)
                VALUES (\(id), \(org), \("http://\(host):\(port)/hook/\(name)"), \(secret),
                        \(events), \(minimum?.rawValue), \(slack ? "slack" : "json"))
                RETURNING id
                """
            ).single().decode(UUID.self, at: 0)
        }
    }

    func mode(_ name: String, _ mode: String) throws {
        try mode.write(to: directory.appendingPathComponent("\(name).mode"), atomically: true, encoding: .utf8)
    }

    struct Received {
        var verified: Bool
        var fresh: Bool
        var delivery: String?
        var event: String?
        var status: Int?
        var body: [String: Any]
    }

    func received(_ name: String) -> [Received] {
        guard let text = try? String(contentsOf: directory.appendingPathComponent("\(name).jsonl"), encoding: .utf8)
        else { return [] }
        return text.split(separator: "\n").compactMap { line in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                return nil
            }
            return Received(
                verified: object["verified"] as? Bool ?? false, fresh: object["fresh"] as? Bool ?? false,
                delivery: object["delivery"] as? String, event: object["event"] as? String,
                status: object["status"] as? Int, body: object["body"] as? [String: Any] ?? [:])
        }
    }

    /// Publishes a scan event as the relay does.
    @discardableResult
    func publish(
        _ status: ScanStatus, organization: UUID? = nil, counts: [String: Int]? = nil, reason: String? = nil,
        eventID: String = UUID().uuidString.lowercased()
    ) async throws -> ScanEventMessage {
        let org = organization ?? self.organization
        let event = ScanEventMessage(
            eventID: eventID, scanID: UUID(), organizationID: org, projectID: UUID(), status: status, at: Date(),
            attempt: 1, reason: reason, counts: counts)
        try await publish(event)
        return event
    }

    func publish(_ event: ScanEventMessage) async throws {
        try await publisher.publish(
            AMQPMessage(
                body: Array(try MessageCoding.encoder().encode(event)), type: MessageType.scanEvent.rawValue,
                messageID: event.eventID, correlationID: event.scanID.uuidString.lowercased(),
                headers: [MessageHeaders.organizationID: event.organizationID.uuidString.lowercased()]),
            exchange: exchange, routingKey: "scan.\(event.status.rawValue)")
    }

    func eventually(_ seconds: Double = 15, _ condition: () async throws -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            if try await condition() { return true }
            try await Task.sleep(for: .milliseconds(50))
        }
        return try await condition()
    }

    /// The delivery log of a subscription: (attempt, status) in attempt order.
    func log(_ subscription: UUID, organization: UUID? = nil) async throws -> [(Int, String)] {
        try await app.withTransaction(organizationID: organization ?? self.organization) { c in
            try await c.query(
                "SELECT attempt, status FROM webhook_deliveries WHERE subscription_id = \(subscription) ORDER BY attempt"
            ).map { (try $0.decode(Int.self, at: 0), try $0.decode(String.self, at: 1)) }
        }
    }

    /// Dead letters of the notify queue: their reasons.
    func deadLetters(count: Int, within seconds: Double = 10) async throws -> [String] {
        let consumer = AMQPConsumer(
            configuration: .init(broker: broker, queue: "\(queue).dead", prefetch: 10), logger: TestDatabase.logger("d")
        )
        let timer = Task {
            try? await Task.sleep(for: .seconds(seconds))
            consumer.stopConsuming()
        }
        var reasons: [String] = []
        for await delivery in consumer.deliveries {
            reasons.append(delivery.message.headers["x-cloudscan-reason"] ?? "-")
            try await consumer.ack(delivery)
            if reasons.count >= count { break }
        }
        timer.cancel()
        consumer.stopConsuming()
        await consumer.close()
        return reasons
    }
}

@Suite("notifier (live PostgreSQL and RabbitMQ, Python receiver)")
struct NotifierTests {
    @Test(
        "signed deliveries verified by Python's hmac; event types, minimum severity and Slack payloads; a redelivered event is not posted twice"
    )
    func signedAndFiltered() async throws {
        try await NotifierHarness.run { h in
            let plain = try await h.subscribe("plain")
            try await h.subscribe("slack", minimum: .critical, slack: true)
            try await h.subscribe("high", minimum: .high)
            try await h.subscribe("failedonly", events: ["scan.failed"])
            try await h.subscribe("theirs", organization: h.other)
            let highOnly = try await h.publish(.completed, counts: ["high": 2, "low": 5])
            let failed = try await h.publish(.failed, reason: "timed_out")
            let critical = try await h.publish(.completed, counts: ["critical": 1])
            #expect(try await h.eventually { h.received("plain").count == 3 })
            #expect(try await h.eventually { h.received("high").count == 2 && h.received("slack").count == 1 })
            #expect(try await h.eventually { h.received("failedonly").count == 1 })
            try await Task.sleep(for: .seconds(1))
            let all = ["plain", "slack", "high", "failedonly"].flatMap { h.received($0) }
            #expect(all.count == 7, "no more than the subscriptions want")
            #expect(all.allSatisfy { $0.verified && $0.fresh }, "every signature checks out in Python")
            #expect(h.received("theirs").isEmpty, "another organization's subscription gets nothing")
            let plainEvents = h.received("plain").map { $0.body["event_id"] as? String }
            #expect(Set(plainEvents.compactMap { $0 }) == Set([highOnly.eventID, failed.eventID, critical.eventID]))
            #expect(
                Set(h.received("high").compactMap { $0.body["event_id"] as? String }) == [
                    highOnly.eventID, critical.eventID,
                ])
            #expect(h.received("failedonly").first?.event == "scan.failed")
            #expect(h.received("failedonly").first?.body["reason"] as? String == "timed_out")
            let slackText = h.received("slack").first?.body["text"] as? String ?? ""
            #expect(slackText.contains(critical.scanID.uuidString.lowercased()) && slackText.contains("1 critical"))
            let first = h.received("plain").first { $0.body["event_id"] as? String == highOnly.eventID }
            #expect((first?.body["counts"] as? [String: Any])?["high"] as? Int == 2)
            #expect(first?.delivery == "\(highOnly.eventID):\(plain.uuidString.lowercased())")
            // The same event again (a redelivery): nothing is posted again.
            try await h.publish(highOnly)
            try await Task.sleep(for: .seconds(1.5))
            #expect(h.received("plain").count == 3)
            #expect(try await h.log(plain).map(\.1) == ["delivered", "delivered", "delivered"], "one row per event")
        }
    }

    @Test(
        "a receiver that is down: retried through the delay tiers, delivered once when it returns; one that never returns is dead-lettered with the reason"
    )
    func retriesAndDeadLetter() async throws {
        try await NotifierHarness.run { h in
            let flaky = try await h.subscribe("flaky")
            let gone = try await h.subscribe("gone")
            try h.mode("flaky", "fail")
            try h.mode("gone", "fail")
            try await h.publish(.completed, counts: ["medium": 1])
            #expect(try await h.eventually { h.received("flaky").contains { $0.status == 503 } })
            try h.mode("flaky", "ok")
            #expect(try await h.eventually { h.received("flaky").contains { $0.status == 204 } })
            let reasons = try await h.deadLetters(count: 1)
            #expect(reasons.count == 1 && reasons[0].contains("failed after 3 attempts"), "\(reasons)")
            #expect(reasons.first?.contains("HTTP 503") == true)
            try await Task.sleep(for: .seconds(2.5))
            let attempts = h.received("flaky")
            #expect(attempts.filter { $0.status == 204 }.count == 1, "delivered once")
            #expect(attempts.allSatisfy { $0.verified })
            #expect(Set(attempts.compactMap(\.delivery)).count == 1, "one delivery id across attempts")
            let log = try await h.log(flaky)
            #expect(log.first?.1 == "retrying" && log.last?.1 == "delivered", "\(log)")
            #expect(h.received("gone").count == 3, "1 attempt + 2 delay tiers")
            #expect(try await h.log(gone).map(\.1) == ["retrying", "retrying", "failed"])
        }
    }

    @Test(
        "destinations are screened at every delivery: a loopback address the notifier may not reach is never posted to; a secret sealed for another row does not open; a secret stored before sealing still signs"
    )
    func screenedAndSealed() async throws {
        try await NotifierHarness.run { h in
            let blocked = try await h.subscribe("internal", host: "127.0.0.2")
            let swapped = try await h.subscribe("swapped")
            let legacy = try await h.subscribe("legacy", sealed: false)
            // Someone with write access to the table copies another row's sealed secret.
            try await h.app.withTransaction(organizationID: h.organization) { c in
                try await c.execute(
                    """
                    UPDATE webhook_subscriptions SET secret = (SELECT secret FROM webhook_subscriptions WHERE id = \(blocked))
                    WHERE id = \(swapped)
                    """)
                let sealed = try await c.query("SELECT secret FROM webhook_subscriptions WHERE id = \(blocked)")
                    .single()
                    .decode(String.self, at: 0)
                #expect(sealed.hasPrefix("v1:dev:") && !sealed.contains(NotifierHarness.secret), "sealed at rest")
            }
            try await h.publish(.completed, counts: ["high": 1])
            #expect(try await h.eventually { h.received("legacy").count == 1 })
            #expect(h.received("legacy").allSatisfy { $0.verified }, "the clear-text secret of an old row still signs")
            let reasons = try await h.deadLetters(count: 2)
            #expect(reasons.contains { $0.contains("destination refused") }, "\(reasons)")
            #expect(reasons.contains { $0.contains("signing secret") }, "\(reasons)")
            #expect(h.received("internal").isEmpty && h.received("swapped").isEmpty, "nothing was posted to them")
            #expect(try await h.log(blocked).map(\.1) == ["retrying", "retrying", "failed"])
        }
    }

    @Test("a receiver that hangs does not hold up another organization's deliveries")
    func hangingReceiver() async throws {
        try await NotifierHarness.run(timeout: .seconds(15)) { h in
            try await h.subscribe("slowpoke")
            try await h.subscribe("brisk", organization: h.other)
            try h.mode("slowpoke", "hang")
            for _ in 0..<6 { try await h.publish(.completed, counts: ["low": 1]) }
            #expect(try await h.eventually(5) { !h.received("slowpoke").isEmpty })
            let start = ContinuousClock.now
            try await h.publish(.failed, organization: h.other, reason: "runner_vanished")
            #expect(try await h.eventually(12) { h.received("brisk").count == 1 })
            let waited = ContinuousClock.now - start
            // The hung attempts only end at their 15 s time limit: a delivery before that was not
            // held up by them (a bound on behaviour, not a latency target).
            #expect(waited < .seconds(10), "delivered while the other receiver hangs: \(waited)")
            #expect(h.received("slowpoke").count <= 2, "at most 2 attempts wait on one receiver at once")
        }
    }
}
