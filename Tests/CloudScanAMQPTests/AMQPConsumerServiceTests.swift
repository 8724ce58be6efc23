import CloudScanAMQP
import CloudScanTestSupport
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import Testing

@Suite("AMQPConsumerService (live broker)")
struct AMQPConsumerServiceTests {
    let broker = TestBroker.configuration()

    final class Seen: Sendable {
        let acked = Mutex<[String]>([])
    }

    @Test("graceful shutdown under load: in-flight handlers finish and are acked; nothing lost or doubled")
    func gracefulShutdownDrains() async throws {
        let (topology, exchange, queue) = TestBroker.uniqueTopology("drain")
        #expect(try await topology.apply(broker: broker).isClean)
        let publisher = AMQPPublisher(configuration: .init(broker: broker), logger: TestBroker.logger("pub"))
        let total = 60
        for n in 0..<total {
            try await publisher.publish(
                AMQPMessage(body: Array("\(n)".utf8), messageID: "m-\(n)"), exchange: exchange, routingKey: "work.d")
        }

        let seen = Seen()
        let consumer = AMQPConsumer(
            configuration: .init(broker: broker, queue: queue, prefetch: 8), logger: TestBroker.logger("con"))
        let service = AMQPConsumerService(
            consumer: consumer, configuration: .init(concurrency: 4, drainTimeout: .seconds(10)),
            logger: TestBroker.logger("svc")
        ) { delivery in
            try await Task.sleep(for: .milliseconds(150))  // a slow effect, committed at the end
            seen.acked.withLock { $0.append(delivery.message.messageID!) }
            return .ack
        }
        let group = ServiceGroup(
            configuration: .init(services: [service], gracefulShutdownSignals: [], logger: TestBroker.logger("group")))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            while seen.acked.withLock({ $0.count }) < 10 { try await Task.sleep(for: .milliseconds(20)) }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        let handled = seen.acked.withLock { $0 }
        #expect(handled.count >= 10 && handled.count < total, "shutdown happened mid-stream (\(handled.count))")

        // The rest is still in the queue, and nothing handled comes back.
        let rest = AMQPConsumer(
            configuration: .init(broker: broker, queue: queue, prefetch: 100), logger: TestBroker.logger("rest"))
        var remaining: [String] = []
        if handled.count < total {
            for await delivery in rest.deliveries {
                remaining.append(delivery.message.messageID!)
                try await rest.ack(delivery)
                if remaining.count + handled.count >= total { break }
            }
        }
        try await Task.sleep(for: .milliseconds(300))
        await rest.close()
        #expect(Set(handled).isDisjoint(with: remaining), "a handled-and-acked message was delivered again")
        #expect(Set(handled).union(remaining) == Set((0..<total).map { "m-\($0)" }))
        #expect(handled.count + remaining.count == total)
        await publisher.close()
        try await topology.delete(broker: broker)
    }

    @Test("bad input is dead-lettered with a reason header; a failing handler's message is retried")
    func deadLetterWithReason() async throws {
        let (topology, exchange, queue) = TestBroker.uniqueTopology("reason", deliveryLimit: 3)
        #expect(try await topology.apply(broker: broker).isClean)
        let publisher = AMQPPublisher(configuration: .init(broker: broker), logger: TestBroker.logger("pub"))
        try await publisher.publish(
            AMQPMessage(body: Array("not json".utf8), messageID: "bad-1"), exchange: exchange, routingKey: "work.bad")
        try await publisher.publish(
            AMQPMessage(body: Array("{}".utf8), messageID: "flaky-1"), exchange: exchange, routingKey: "work.flaky")

        struct Flaky: Error {}
        let attempts = Mutex<Int>(0)
        let consumer = AMQPConsumer(
            configuration: .init(broker: broker, queue: queue, prefetch: 4), logger: TestBroker.logger("con"))
        let service = AMQPConsumerService(
            consumer: consumer,
            configuration: .init(
                deadLetter: .init(publisher: publisher, exchange: topology.deadLetterExchange, routingKey: queue)),
            logger: TestBroker.logger("svc")
        ) { delivery in
            if delivery.message.messageID == "bad-1" { return .deadLetter(reason: "body is not JSON") }
            let attempt = attempts.withLock { value -> Int in
                value += 1
                return value
            }
            if attempt == 1 { throw Flaky() }
            return .ack
        }
        let group = ServiceGroup(
            configuration: .init(services: [service], gracefulShutdownSignals: [], logger: TestBroker.logger("group")))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            while attempts.withLock({ $0 }) < 2 { try await Task.sleep(for: .milliseconds(20)) }
            try await Task.sleep(for: .milliseconds(200))
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        #expect(attempts.withLock { $0 } == 2, "the flaky message was retried once and then acked")

        let dead = AMQPConsumer(
            configuration: .init(broker: broker, queue: "\(queue).dead", prefetch: 4), logger: TestBroker.logger("dead")
        )
        var iterator = dead.deliveries.makeAsyncIterator()
        let buried = try #require(await iterator.next())
        #expect(buried.message.messageID == "bad-1")
        #expect(buried.message.headers["x-cloudscan-reason"] == "body is not JSON")
        #expect(buried.message.headers["x-cloudscan-original-routing-key"] == "work.bad")
        try await dead.ack(buried)
        await dead.close()
        await publisher.close()
        try await topology.delete(broker: broker)
    }
}

@Suite("delay-tier bookkeeping from outside")
struct DelayCountTests {
    @Test(
        "x-cloudscan-delays is a count only when it is a small non-negative number; anything else counts 0 (no overflow, no negative index)",
        arguments: [
            ("3", 3), ("0", 0), ("-1", 0), ("9223372036854775807", 0), ("999999", 999_999), ("1000000", 0),
            ("x", 0), ("", 0), (" 2", 0),
        ])
    func counted(header: String, count: Int) {
        #expect(AMQPConsumerService.delayCount(["x-cloudscan-delays": header]) == count)
        #expect(AMQPConsumerService.delayCount([:]) == 0)
    }
}
