import CloudScanAMQP
import CloudScanTestSupport
import Foundation
import Synchronization
import Testing

/// Kills and pauses the chaos RabbitMQ node (port 5673), which no other test uses.
@Suite("AMQP when the broker dies or goes silent (chaos node)", .serialized, .chaosNode)
struct AMQPChaosTests {
    final class Ledger: Sendable {
        let confirmed = Mutex<Set<String>>([])
        let failures = Atomic<Int>(0)
    }

    @Test("10k publishes across a broker SIGKILL and restart: every confirmed message is consumed")
    func brokerKilledMidStream() async throws {
        let broker = TestBroker.chaosConfiguration(heartbeatSeconds: 5)
        #expect(try await TestBroker.services("rabbit-chaos-start") == 0)
        let (topology, exchange, queue) = TestBroker.uniqueTopology("kill", maxLength: 1_000_000)
        #expect(try await topology.apply(broker: broker).isClean)

        let publisher = AMQPPublisher(
            configuration: .init(broker: broker, confirmTimeout: .seconds(15)), logger: TestBroker.logger("pub"))
        let total = 10_000
        let workers = 64
        let ledger = Ledger()
        let killAfter = 2_000

        try await withThrowingTaskGroup(of: Void.self) { group in
            // The killer: once enough are confirmed, SIGKILL the broker, then start it again.
            group.addTask {
                while ledger.confirmed.withLock({ $0.count }) < killAfter {
                    try await Task.sleep(for: .milliseconds(5))
                }
                #expect(try await TestBroker.services("rabbit-chaos-kill") == 0)
                try await Task.sleep(for: .seconds(1))
                #expect(try await TestBroker.services("rabbit-chaos-start") == 0)
            }
            for worker in 0..<workers {
                group.addTask {
                    var n = worker
                    let deadline = ContinuousClock.now + .seconds(120)
                    while n < total {
                        let id = "msg-\(n)"
                        let message = AMQPMessage(body: Array("{\"n\":\(n)}".utf8), type: "test.v1", messageID: id)
                        do {
                            try await publisher.publish(message, exchange: exchange, routingKey: "work.kill")
                            _ = ledger.confirmed.withLock { $0.insert(id) }
                            n += workers
                        } catch {
                            // Not confirmed: it may or may not be stored. Publish it again.
                            ledger.failures.add(1, ordering: .relaxed)
                            guard ContinuousClock.now < deadline else { throw error }
                            try await Task.sleep(for: .milliseconds(100))
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        await publisher.close()
        let confirmed = ledger.confirmed.withLock { $0 }

        // Drain the queue.
        let consumer = AMQPConsumer(
            configuration: .init(broker: broker, queue: queue, prefetch: 500), logger: TestBroker.logger("con"))
        var consumedIDs = Set<String>()
        var consumedCount = 0
        let drainDeadline = ContinuousClock.now + .seconds(60)
        for await delivery in consumer.deliveries {
            consumedCount += 1
            if let id = delivery.message.messageID { consumedIDs.insert(id) }
            try await consumer.ack(delivery)
            if consumedIDs.isSuperset(of: confirmed) || ContinuousClock.now > drainDeadline { break }
        }
        await consumer.close()
        let lost = confirmed.subtracting(consumedIDs)
        print(
            """
            LEDGER broker-kill: published-and-confirmed \(confirmed.count) of \(total), \
            failed attempts (retried) \(ledger.failures.load(ordering: .relaxed)), \
            consumed \(consumedCount) deliveries / \(consumedIDs.count) distinct, \
            duplicates \(consumedCount - consumedIDs.count), lost \(lost.count)
            """)
        #expect(confirmed.count == total)
        #expect(lost.isEmpty, "confirmed but never consumed: \(lost.prefix(10))")
        #expect(ledger.failures.load(ordering: .relaxed) > 0, "the kill happened while publishing")
        try await topology.delete(broker: broker)
    }

    @Test("a consumer notices a silent broker within 2× heartbeat, reconnects, and old tags are void")
    func silentBrokerDetected() async throws {
        let heartbeat = 2
        let broker = TestBroker.chaosConfiguration(heartbeatSeconds: heartbeat)
        #expect(try await TestBroker.services("rabbit-chaos-start") == 0)
        let (topology, exchange, queue) = TestBroker.uniqueTopology("silent")
        #expect(try await topology.apply(broker: broker).isClean)
        let publisher = AMQPPublisher(configuration: .init(broker: broker), logger: TestBroker.logger("pub"))
        try await publisher.publish(
            AMQPMessage(body: Array("held".utf8), messageID: "held-1"), exchange: exchange, routingKey: "work.held")

        var consumerConfiguration = AMQPConsumer.Configuration(broker: broker, queue: queue, prefetch: 10)
        consumerConfiguration.reconnectBackoff = Backoff(initial: .milliseconds(200), maximum: .seconds(1))
        let consumer = AMQPConsumer(configuration: consumerConfiguration, logger: TestBroker.logger("con"))
        var iterator = consumer.deliveries.makeAsyncIterator()
        let held = try #require(await iterator.next())
        #expect(held.message.messageID == "held-1")
        #expect(consumer.isConnected)

        #expect(try await TestBroker.services("rabbit-chaos-pause") == 0)
        let paused = ContinuousClock.now
        var detectedAfter: Duration?
        while ContinuousClock.now - paused < .seconds(heartbeat * 4) {
            if !consumer.isConnected {
                detectedAfter = ContinuousClock.now - paused
                break
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(try await TestBroker.services("rabbit-chaos-resume") == 0)
        let detected = try #require(detectedAfter, "the consumer never noticed the silent broker")
        print("silent broker detected after \(detected) (heartbeat \(heartbeat) s)")
        // rabbitmq-c declares the peer dead after two heartbeat intervals without traffic.
        #expect(detected <= .seconds(heartbeat * 2) + .milliseconds(1500))

        // It reconnects by itself and the held message comes again, redelivered.
        let again = try #require(await iterator.next())
        #expect(again.message.messageID == "held-1")
        #expect(again.redelivered)
        #expect(consumer.connectionCount >= 2)
        // The delivery from the dead connection can no longer be settled.
        let stale = await #expect(throws: AMQPError.self) { try await consumer.ack(held) }
        #expect(stale?.code == .staleDelivery)
        try await consumer.ack(again)
        await consumer.close()
        await publisher.close()
        try await topology.delete(broker: broker)
    }

    static let tlsDirectory = "/etc/rabbitmq/cloudscan-tls"

    func tlsBroker(
        host: String = "localhost", ca: String = "ca.pem", clientCertificate: Bool = true, verifyHostname: Bool = true
    )
        -> AMQPConfiguration
    {
        var broker = TestBroker.chaosConfiguration()
        broker.host = host
        broker.port = TestBroker.chaosTLSPort
        broker.tls = AMQPConfiguration.TLS(
            caFile: "\(Self.tlsDirectory)/\(ca)",
            certificateFile: clientCertificate ? "\(Self.tlsDirectory)/client.pem" : nil,
            keyFile: clientCertificate ? "\(Self.tlsDirectory)/client.key" : nil, verifyHostname: verifyHostname)
        return broker
    }

    @Test("TLS: verified peer and hostname, client certificate; wrong CA, wrong name or no certificate fail")
    func tls() async throws {
        #expect(try await TestBroker.services("rabbit-chaos-start") == 0)
        let broker = tlsBroker()
        let (topology, exchange, queue) = TestBroker.uniqueTopology("tls")
        #expect(try await topology.apply(broker: broker).isClean)
        let publisher = AMQPPublisher(configuration: .init(broker: broker), logger: TestBroker.logger("pub"))
        try await publisher.publish(
            AMQPMessage(body: Array("secret".utf8), messageID: "tls-1"), exchange: exchange, routingKey: "work.tls")
        let consumer = AMQPConsumer(
            configuration: .init(broker: broker, queue: queue), logger: TestBroker.logger("con"))
        var iterator = consumer.deliveries.makeAsyncIterator()
        let delivery = try #require(await iterator.next())
        #expect(delivery.message.messageID == "tls-1")
        #expect(delivery.message.body == Array("secret".utf8))
        try await consumer.ack(delivery)
        await consumer.close()
        await publisher.close()

        for (name, bad) in [
            ("a CA that did not sign the server", tlsBroker(ca: "other-ca.pem")),
            ("a name the certificate does not carry", tlsBroker(host: "127.0.0.1")),
            ("no client certificate", tlsBroker(clientCertificate: false)),
        ] {
            let error = await #expect(throws: AMQPError.self, "\(name)") {
                _ = try await AMQPProbe.serverProperties(bad)
            }
            #expect(
                error?.code == .connectionFailed || error?.code == .loginFailed, "\(name): \(String(describing: error))"
            )
        }
        // Hostname verification is what refused 127.0.0.1: without it the same address works.
        _ = try await AMQPProbe.serverProperties(tlsBroker(host: "127.0.0.1", verifyHostname: false))
        try await topology.delete(broker: broker)
    }

    @Test("a publish stuck writing to a silent broker fails within the write deadline, not never")
    func publishWatchdog() async throws {
        #expect(try await TestBroker.services("rabbit-chaos-start") == 0)
        let broker = TestBroker.chaosConfiguration(heartbeatSeconds: 0)
        let (topology, exchange, _) = TestBroker.uniqueTopology("watchdog", maxLength: 1_000_000)
        #expect(try await topology.apply(broker: broker).isClean)
        let publisher = AMQPPublisher(
            configuration: .init(broker: broker, confirmTimeout: .seconds(120), writeDeadline: .seconds(2)),
            logger: TestBroker.logger("pub"))
        try await publisher.publish(
            AMQPMessage(body: [1], messageID: "warm-up"), exchange: exchange, routingKey: "work.w")

        #expect(try await TestBroker.services("rabbit-chaos-pause") == 0)
        let started = ContinuousClock.now
        let big = [UInt8](repeating: 7, count: 1 << 20)
        let outcomes = await withTaskGroup(of: AMQPError.Code?.self) { group in
            for n in 0..<40 {
                group.addTask {
                    do {
                        try await publisher.publish(
                            AMQPMessage(body: big, messageID: "big-\(n)"), exchange: exchange, routingKey: "work.w")
                        return nil
                    } catch let error as AMQPError {
                        return error.code
                    } catch {
                        return .protocolError
                    }
                }
            }
            var codes: [AMQPError.Code?] = []
            for await code in group { codes.append(code) }
            return codes
        }
        let elapsed = ContinuousClock.now - started
        #expect(try await TestBroker.services("rabbit-chaos-resume") == 0)
        print("watchdog: 40 publishes to a paused broker settled after \(elapsed)")
        #expect(outcomes.allSatisfy { $0 != nil }, "nothing can be confirmed by a paused broker")
        #expect(outcomes.contains(.connectionLost), "the stuck write was cut by the watchdog")
        #expect(elapsed < .seconds(30), "without the watchdog these would wait for the 120 s confirm timeout")
        // The publisher recovers once the broker is back.
        let recoverBy = ContinuousClock.now + .seconds(30)
        var recovered = false
        while !recovered, ContinuousClock.now < recoverBy {
            do {
                try await publisher.publish(
                    AMQPMessage(body: [2], messageID: "after"), exchange: exchange, routingKey: "work.w")
                recovered = true
            } catch {
                try await Task.sleep(for: .milliseconds(300))
            }
        }
        #expect(recovered)
        await publisher.close()
        try await topology.delete(broker: broker)
    }

    @Test("a resource alarm blocks publishing: held publishes fail with .blocked, the in-flight one lands after")
    func connectionBlocked() async throws {
        #expect(try await TestBroker.services("rabbit-chaos-start") == 0)
        let broker = TestBroker.chaosConfiguration()
        let (topology, exchange, queue) = TestBroker.uniqueTopology("blocked")
        #expect(try await topology.apply(broker: broker).isClean)
        let publisher = AMQPPublisher(
            configuration: .init(broker: broker, confirmTimeout: .seconds(60), writeDeadline: .seconds(2)),
            logger: TestBroker.logger("pub"))
        try await publisher.publish(
            AMQPMessage(body: [0], messageID: "before"), exchange: exchange, routingKey: "work.b")

        let chaosCtl = ["rabbitmqctl", "-n", "rabbit-chaos@localhost", "-q"]
        #expect(try await runCommand(chaosCtl + ["set_vm_memory_high_watermark", "0.000001"]) == 0)
        do {
            // The first publish after the alarm is written; the broker stops reading and says blocked.
            let first = Task {
                try await publisher.publish(
                    AMQPMessage(body: [1], messageID: "during"), exchange: exchange, routingKey: "work.b")
            }
            try await Task.sleep(for: .seconds(1))
            let started = ContinuousClock.now
            let error = await #expect(throws: AMQPError.self) {
                try await publisher.publish(
                    AMQPMessage(body: [2], messageID: "held"), exchange: exchange, routingKey: "work.b")
            }
            #expect(error?.code == .blocked)
            #expect(ContinuousClock.now - started < .seconds(10))
            #expect(try await runCommand(chaosCtl + ["set_vm_memory_high_watermark", "0.4"]) == 0)
            try await first.value  // confirmed once the alarm clears
        } catch {
            _ = try? await runCommand(chaosCtl + ["set_vm_memory_high_watermark", "0.4"])
            throw error
        }
        try await publisher.publish(
            AMQPMessage(body: [3], messageID: "after"), exchange: exchange, routingKey: "work.b")
        let consumer = AMQPConsumer(
            configuration: .init(broker: broker, queue: queue), logger: TestBroker.logger("con"))
        var ids: [String] = []
        for await delivery in consumer.deliveries {
            ids.append(delivery.message.messageID ?? "")
            try await consumer.ack(delivery)
            if ids.count == 3 { break }
        }
        #expect(ids == ["before", "during", "after"])
        await consumer.close()
        await publisher.close()
        try await topology.delete(broker: broker)
    }

    @Test("a consumer whose queue is deleted under it re-declares it and goes on consuming")
    func queueDeletedUnderConsumer() async throws {
        #expect(try await TestBroker.services("rabbit-chaos-start") == 0)
        let broker = TestBroker.chaosConfiguration()
        let (topology, exchange, queue) = TestBroker.uniqueTopology("cancelled")
        var configuration = AMQPConsumer.Configuration(broker: broker, queue: queue, topology: topology)
        configuration.reconnectBackoff = Backoff(initial: .milliseconds(100), maximum: .milliseconds(500))
        let consumer = AMQPConsumer(configuration: configuration, logger: TestBroker.logger("con"))
        while !consumer.isConnected { try await Task.sleep(for: .milliseconds(50)) }
        try await topology.delete(broker: broker)  // the broker cancels the consumer (basic.cancel)
        let publisher = AMQPPublisher(configuration: .init(broker: broker), logger: TestBroker.logger("pub"))
        var published = false
        let deadline = ContinuousClock.now + .seconds(20)
        while !published, ContinuousClock.now < deadline {
            do {
                try await publisher.publish(
                    AMQPMessage(body: [9], messageID: "again"), exchange: exchange, routingKey: "work.c")
                published = true
            } catch {
                try await Task.sleep(for: .milliseconds(200))  // until the consumer has re-declared the queue
            }
        }
        #expect(published)
        var iterator = consumer.deliveries.makeAsyncIterator()
        let delivery = try #require(await iterator.next())
        #expect(delivery.message.messageID == "again")
        #expect(consumer.connectionCount >= 2)
        try await consumer.ack(delivery)
        await consumer.close()
        await publisher.close()
        try await topology.delete(broker: broker)
    }
}
