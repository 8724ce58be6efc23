import ArgumentParser
import CloudScanAMQP
import Foundation
import Logging

/// `cloudscan-bench amqp declare|publish|consume|delete`: the Swift side of scripts/bench-amqp.
struct AMQPBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "amqp", abstract: "AMQP throughput through the Swift layer.",
        subcommands: [Declare.self, Publish.self, Consume.self, Delete.self])

    struct Common: ParsableArguments {
        @Option(name: .customLong("amqp-url")) var amqpURL: String =
            "amqp://cloudscan:cloudscan@127.0.0.1:5672/cloudscan"
        @Option var queue: String = "bench.amqp.q"

        var broker: AMQPConfiguration { get throws { try AMQPConfiguration(url: amqpURL) } }
        var topology: AMQPTopology {
            AMQPTopology(
                exchanges: [], deadLetterExchange: "bench.amqp.dlx",
                workQueues: [.init(name: queue, bindings: [], deliveryLimit: 5, maxLength: 10_000_000)])
        }
        var logger: Logger {
            var logger = Logger(label: "bench")
            logger.logLevel = .warning
            return logger
        }
    }

    static func report(_ count: Int, _ started: ContinuousClock.Instant) {
        let elapsed = ContinuousClock.now - started
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        print(String(format: "%d %.3f %.0f", count, seconds, Double(count) / seconds))
    }

    struct Declare: AsyncParsableCommand {
        @OptionGroup var common: Common
        func run() async throws {
            let report = try await common.topology.apply(broker: try common.broker)
            guard report.isClean else { throw ValidationError("\(report.problems)") }
        }
    }

    struct Delete: AsyncParsableCommand {
        @OptionGroup var common: Common
        func run() async throws { try await common.topology.delete(broker: try common.broker) }
    }

    struct Publish: AsyncParsableCommand {
        @OptionGroup var common: Common
        @Option var count: Int = 50_000
        @Option var size: Int = 600
        @Option(help: "Publishes awaiting their confirm at once.") var window: Int = 1000

        func run() async throws {
            let publisher = AMQPPublisher(configuration: .init(broker: try common.broker), logger: common.logger)
            let body = [UInt8](repeating: UInt8(ascii: "x"), count: size)
            let queue = common.queue
            let count = self.count
            let window = self.window
            let started = ContinuousClock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                for lane in 0..<window {
                    group.addTask {
                        var n = lane
                        while n < count {
                            try await publisher.publish(
                                AMQPMessage(body: body, contentType: "application/json"), exchange: "",
                                routingKey: queue, mandatory: false)
                            n += window
                        }
                    }
                }
                try await group.waitForAll()
            }
            AMQPBench.report(count, started)
            await publisher.close()
        }
    }

    struct Consume: AsyncParsableCommand {
        @OptionGroup var common: Common
        @Option var count: Int = 50_000
        @Option var prefetch: Int = 1000

        func run() async throws {
            let consumer = AMQPConsumer(
                configuration: .init(broker: try common.broker, queue: common.queue, prefetch: prefetch),
                logger: common.logger)
            var received = 0
            var started: ContinuousClock.Instant?
            for await delivery in consumer.deliveries {
                if started == nil { started = .now }
                received += 1
                if received % 100 == 0 || received == count { try await consumer.ack(delivery, multiple: true) }
                if received == count { break }
            }
            AMQPBench.report(received, started ?? .now)
            await consumer.close()
        }
    }
}
