import CloudScanAMQP
import CloudScanTestSupport
import Foundation
import Testing

/// Outside clients and tools against the Swift layer: Python's pika, rabbitmqctl.
@Suite("AMQP interoperability (live broker)")
struct AMQPInteropTests {
    let broker = TestBroker.configuration()

    struct PikaResult: Decodable {
        struct Consumed: Decodable {
            var message_id: String
            var type: String?
            var content_type: String?
            var correlation_id: String?
            var persistent: Bool
            var headers: [String: String]
            var body: String
        }
        var published: [String]
        var consumed: [Consumed]
    }

    @Test("pika publishes to the Swift consumer and consumes from the Swift publisher")
    func pikaRoundTrip() async throws {
        let inbound = TestBroker.uniqueTopology("pika-in")
        let outbound = TestBroker.uniqueTopology("pika-out")
        #expect(try await inbound.topology.apply(broker: broker).isClean)
        #expect(try await outbound.topology.apply(broker: broker).isClean)
        let count = 20

        let publisher = AMQPPublisher(configuration: .init(broker: broker), logger: TestBroker.logger("pub"))
        for n in 0..<count {
            try await publisher.publish(
                AMQPMessage(
                    body: Array("{\"from\":\"swift\",\"n\":\(n)}".utf8), type: "test.swift.v1", messageID: "swift-\(n)",
                    correlationID: "scan-\(n)", headers: ["x-organization-id": "org-swift"]),
                exchange: outbound.exchange, routingKey: "work.out")
        }

        let python = TestDatabase.repositoryRoot.appendingPathComponent(".venv/bin/python").path
        let script = TestDatabase.repositoryRoot.appendingPathComponent("Tests/clients/pika_roundtrip.py").path
        let (status, output) = try await runCommandCapturingOutput([
            python, script, broker.host, String(broker.port), broker.virtualHost, broker.user, broker.password,
            inbound.exchange, "work.in", String(count), outbound.queue, String(count),
        ])
        #expect(status == 0, "pika client failed: \(output)")
        let result = try JSONDecoder().decode(PikaResult.self, from: Data(output.utf8))

        // What pika consumed from the Swift publisher.
        #expect(Set(result.consumed.map(\.message_id)) == Set((0..<count).map { "swift-\($0)" }))
        for item in result.consumed {
            #expect(item.type == "test.swift.v1")
            #expect(item.content_type == "application/json")
            #expect(item.persistent)
            #expect(item.headers["x-organization-id"] == "org-swift")
            #expect(item.body.hasPrefix("{\"from\":\"swift\""))
        }

        // What the Swift consumer gets from pika.
        let consumer = AMQPConsumer(
            configuration: .init(broker: broker, queue: inbound.queue, prefetch: 10), logger: TestBroker.logger("con"))
        var received: [AMQPDelivery] = []
        for await delivery in consumer.deliveries {
            try await consumer.ack(delivery)
            received.append(delivery)
            if received.count == count { break }
        }
        await consumer.close()
        #expect(Set(received.compactMap(\.message.messageID)) == Set(result.published))
        for delivery in received {
            #expect(delivery.message.type == "test.pika.v1")
            #expect(delivery.message.contentType == "application/json")
            #expect(delivery.message.persistent)
            #expect(delivery.message.headers["x-organization-id"] == "org-pika")
            #expect(delivery.message.headers["traceparent"]?.hasPrefix("00-cccc") == true)
        }
        await publisher.close()
        try await inbound.topology.delete(broker: broker)
        try await outbound.topology.delete(broker: broker)
    }

    @Test("the fleet topology round-trips through export and rabbitmqctl import_definitions; drift is reported")
    func topologyExportImport() async throws {
        let topology = try AMQPTopology.load(
            from: TestDatabase.repositoryRoot.appendingPathComponent("topology/topology.json"))
        let vhost = "test-topology-\(UUID().uuidString.prefix(8).lowercased())"
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("\(vhost).json")
        let data = try JSONSerialization.data(withJSONObject: topology.definitions(virtualHost: vhost))
        try data.write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }

        #expect(try await TestBroker.rabbitmqctl(["import_definitions", file.path]) == 0)
        #expect(
            try await TestBroker.rabbitmqctl(["set_permissions", "-p", vhost, TestBroker.user, ".*", ".*", ".*"]) == 0)
        let imported = TestBroker.configuration(virtualHost: vhost)
        // Declaring over the imported objects is a no-op: same names, same arguments.
        let report = try await topology.apply(broker: imported)
        #expect(report.problems.map(\.message) == [])
        let expectedObjects =
            topology.exchanges.count + 1 + topology.queueDeclarations.count
            + topology.queueDeclarations.reduce(0) { $0 + $1.bindings.count }
        #expect(report.declared.count == expectedObjects)

        let (_, listing) = try await runCommandCapturingOutput([
            "rabbitmqctl", "-n", "rabbit@localhost", "-q", "list_queues", "-p", vhost, "name", "type",
        ])
        for queue in topology.queueDeclarations {
            #expect(listing.contains("\(queue.name)\tquorum"), "\(queue.name) missing or not quorum")
        }

        // Drift: the same queue name with another delivery limit is reported, not fatal.
        var drifted = topology
        drifted.workQueues[0].deliveryLimit += 1
        let driftReport = try await drifted.apply(broker: imported)
        #expect(driftReport.problems.count == 1)
        #expect(driftReport.problems.first?.replyCode == 406)
        #expect(driftReport.problems.first?.message.contains("x-delivery-limit") == true)
        #expect(driftReport.problems.first?.message.contains(topology.workQueues[0].name) == true)
        // Everything else was still declared.
        #expect(driftReport.declared.count == expectedObjects - 1 - topology.workQueues[0].bindings.count)
        #expect(try await TestBroker.rabbitmqctl(["delete_vhost", vhost]) == 0)
    }
}
