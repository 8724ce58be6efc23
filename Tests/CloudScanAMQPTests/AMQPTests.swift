import CloudScanAMQP
import CloudScanTestSupport
import Foundation
import Testing

/// Against the shared live broker; every test declares exchanges and queues of its own.
@Suite("AMQP publisher and consumer (live broker)")
struct AMQPTests {
    let broker = TestBroker.configuration()

    func publisher() -> AMQPPublisher {
        AMQPPublisher(
            configuration: .init(broker: broker, confirmTimeout: .seconds(10)), logger: TestBroker.logger("pub"))
    }

    func consumer(_ queue: String, prefetch: Int = 50, heartbeat: Int = 10) -> AMQPConsumer {
        var configuration = broker
        configuration.heartbeatSeconds = heartbeat
        return AMQPConsumer(
            configuration: .init(broker: configuration, queue: queue, prefetch: prefetch),
            logger: TestBroker.logger("con"))
    }

    /// Takes `count` deliveries (acking each unless told not to), failing after `timeout`.
    func take(
        _ count: Int, from consumer: AMQPConsumer, ack: Bool = true, timeout: Duration = .seconds(20)
    ) async throws -> [AMQPDelivery] {
        try await withThrowingTaskGroup(of: [AMQPDelivery].self) { group in
            group.addTask {
                var out: [AMQPDelivery] = []
                for await delivery in consumer.deliveries {
                    if ack { try await consumer.ack(delivery) }
                    out.append(delivery)
                    if out.count == count { break }
                }
                return out
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return []
            }
            let first = try await group.next()!
            group.cancelAll()
            return first
        }
    }

    func message(_ n: Int, id: String = UUID().uuidString) -> AMQPMessage {
        AMQPMessage(
            body: Array("{\"n\":\(n)}".utf8), type: "test.message.v1", messageID: id, correlationID: "scan-\(n)",
            timestamp: Date(timeIntervalSince1970: 1_764_000_000), appID: "tests",
            headers: [
                "x-organization-id": "org-\(n % 3)",
                "traceparent": "00-\(String(repeating: "a", count: 32))-\(String(repeating: "b", count: 16))-01",
            ])
    }

    @Test("confirmed publishes arrive with every property and header intact")
    func publishConfirmedRoundTrip() async throws {
        let (topology, exchange, queue) = TestBroker.uniqueTopology("roundtrip")
        #expect(try await topology.apply(broker: broker).isClean)
        let publisher = publisher()
        let sent = (0..<100).map { message($0) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for m in sent {
                group.addTask { try await publisher.publish(m, exchange: exchange, routingKey: "work.item") }
            }
            try await group.waitForAll()
        }
        let consumer = consumer(queue)
        let received = try await take(100, from: consumer)
        #expect(received.count == 100)
        let byID = Dictionary(uniqueKeysWithValues: received.map { ($0.message.messageID!, $0) })
        for m in sent {
            let got = try #require(byID[m.messageID!])
            #expect(got.message.body == m.body)
            #expect(got.message.contentType == "application/json")
            #expect(got.message.type == "test.message.v1")
            #expect(got.message.correlationID == m.correlationID)
            #expect(got.message.timestamp == m.timestamp)
            #expect(got.message.appID == "tests")
            #expect(got.message.persistent)
            #expect(got.message.headers["x-organization-id"] == m.headers["x-organization-id"])
            #expect(got.message.headers["traceparent"] == m.headers["traceparent"])
            #expect(got.routingKey == "work.item")
            #expect(!got.redelivered)
        }
        await consumer.close()
        await publisher.close()
        try await topology.delete(broker: broker)
    }

    @Test("an unroutable mandatory publish fails; a non-mandatory one is confirmed")
    func unroutable() async throws {
        let (topology, exchange, _) = TestBroker.uniqueTopology("unroutable")
        #expect(try await topology.apply(broker: broker).isClean)
        let publisher = publisher()
        let error = await #expect(throws: AMQPError.self) {
            try await publisher.publish(message(1), exchange: exchange, routingKey: "nobody.listens")
        }
        #expect(error?.code == .unroutable)
        #expect(error?.replyCode == 312)
        try await publisher.publish(message(2), exchange: exchange, routingKey: "nobody.listens", mandatory: false)
        // The publisher is still healthy.
        try await publisher.publish(message(3), exchange: exchange, routingKey: "work.ok")
        await publisher.close()
        try await topology.delete(broker: broker)
    }

    @Test("a full queue with reject-publish nacks, and the caller sees it")
    func nackWhenFull() async throws {
        let (topology, exchange, queue) = TestBroker.uniqueTopology("full", maxLength: 2)
        #expect(try await topology.apply(broker: broker).isClean)
        let publisher = publisher()
        // Quorum queues apply the limit once the queue is over it: publish until refused.
        var accepted = 0
        var refusal: AMQPError?
        for n in 0..<10 {
            do {
                try await publisher.publish(message(n), exchange: exchange, routingKey: "work.a")
                accepted += 1
            } catch let error as AMQPError {
                refusal = error
                break
            }
        }
        #expect(refusal?.code == .nacked)
        #expect((2...3).contains(accepted), "accepted \(accepted) messages into a queue of max-length 2")
        let consumer = consumer(queue)
        #expect(try await take(accepted, from: consumer).count == accepted)
        await consumer.close()
        await publisher.close()
        try await topology.delete(broker: broker)
    }

    @Test("a consumer that dies holding a delivery: another consumer gets it, marked redelivered")
    func redeliveryAfterConsumerDies() async throws {
        let (topology, exchange, queue) = TestBroker.uniqueTopology("redeliver")
        #expect(try await topology.apply(broker: broker).isClean)
        let publisher = publisher()
        let sent = message(7)
        try await publisher.publish(sent, exchange: exchange, routingKey: "work.x")
        let first = consumer(queue)
        let held = try await take(1, from: first, ack: false)
        #expect(held.first?.message.messageID == sent.messageID)
        await first.close()  // dies without acking
        // Settling on a closed consumer is refused, not silently lost.
        await #expect(throws: AMQPError.self) { try await first.ack(held[0]) }

        let second = consumer(queue)
        let again = try await take(1, from: second)
        #expect(again.first?.message.messageID == sent.messageID)
        #expect(again.first?.redelivered == true)
        await second.close()
        await publisher.close()
        try await topology.delete(broker: broker)
    }

    @Test("a poison message is dead-lettered after the delivery limit, with x-death")
    func poisonMessageDeadLettered() async throws {
        let (topology, exchange, queue) = TestBroker.uniqueTopology("poison", deliveryLimit: 2)
        #expect(try await topology.apply(broker: broker).isClean)
        let publisher = publisher()
        let poison = message(13)
        try await publisher.publish(poison, exchange: exchange, routingKey: "work.poison")
        let worker = consumer(queue)
        // The handler keeps failing: every delivery goes back to the queue, until the limit.
        let attempts = try await withThrowingTaskGroup(of: Int?.self) { group in
            group.addTask {
                var seen = 0
                for await delivery in worker.deliveries {
                    seen += 1
                    try await worker.nack(delivery, requeue: true)
                    if seen == 3 { break }
                }
                // Wait to see whether a fourth delivery would come.
                try await Task.sleep(for: .seconds(2))
                return seen
            }
            group.addTask {
                try await Task.sleep(for: .seconds(15))
                return nil
            }
            let first = try await group.next()!
            group.cancelAll()
            return first ?? -1
        }
        await worker.close()
        #expect(attempts == 3, "delivered once plus two redeliveries before the limit")

        let dead = consumer("\(queue).dead")
        let buried = try await take(1, from: dead)
        let delivery = try #require(buried.first)
        #expect(delivery.message.messageID == poison.messageID)
        #expect(delivery.deaths.first?.reason == "delivery_limit")
        #expect(delivery.deaths.first?.queue == queue)
        await dead.close()
        await publisher.close()
        try await topology.delete(broker: broker)
    }

    @Test("an idle consumer with 5 s heartbeats stays connected for 60 s")
    func idleConsumerStaysConnected() async throws {
        let (topology, exchange, queue) = TestBroker.uniqueTopology("idle")
        #expect(try await topology.apply(broker: broker).isClean)
        let idle = consumer(queue, heartbeat: 5)
        try await Task.sleep(for: .seconds(62))
        #expect(idle.isConnected)
        #expect(idle.connectionCount == 1, "the connection never dropped")
        let publisher = publisher()
        try await publisher.publish(message(1), exchange: exchange, routingKey: "work.late")
        #expect(try await take(1, from: idle).count == 1)
        await idle.close()
        await publisher.close()
        try await topology.delete(broker: broker)
    }
}
