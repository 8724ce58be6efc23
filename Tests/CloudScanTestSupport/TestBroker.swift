import CloudScanAMQP
import Foundation
import Logging

/// The live RabbitMQ nodes `scripts/services start` runs: the shared one (tests use unique queue
/// and exchange names, or a vhost of their own) and the chaos node that only serialized tests kill
/// or pause.
public enum TestBroker {
    static let environment = ProcessInfo.processInfo.environment
    public static let host = environment["TEST_AMQP_HOST"] ?? "127.0.0.1"
    public static let port = Int(environment["TEST_AMQP_PORT"] ?? "") ?? 5672
    public static let chaosPort = Int(environment["TEST_AMQP_CHAOS_PORT"] ?? "") ?? 5673
    /// The chaos node's TLS listener (certificates in /etc/rabbitmq/cloudscan-tls).
    public static let chaosTLSPort = Int(environment["TEST_AMQP_CHAOS_TLS_PORT"] ?? "") ?? 5674
    public static let user = environment["TEST_AMQP_USER"] ?? "cloudscan"
    public static let password = environment["TEST_AMQP_PASSWORD"] ?? "cloudscan"

    /// The shared node, vhost `cloudscan` unless given.
    public static func configuration(virtualHost: String = "cloudscan", heartbeatSeconds: Int = 10) -> AMQPConfiguration
    {
        AMQPConfiguration(
            host: host, port: port, virtualHost: virtualHost, user: user, password: password,
            heartbeatSeconds: heartbeatSeconds, connectTimeout: .seconds(5))
    }

    /// The chaos node (vhost `/`).
    public static func chaosConfiguration(heartbeatSeconds: Int = 10) -> AMQPConfiguration {
        AMQPConfiguration(
            host: host, port: chaosPort, virtualHost: "/", user: user, password: password,
            heartbeatSeconds: heartbeatSeconds, connectTimeout: .seconds(3))
    }

    /// A topology of one topic exchange and one work queue, all names unique to this call.
    public static func uniqueTopology(
        _ prefix: String, deliveryLimit: Int = 5, maxLength: Int = 100_000, retryDelaysSeconds: [Int] = []
    ) -> (topology: AMQPTopology, exchange: String, queue: String) {
        let id = "\(prefix).\(UUID().uuidString.prefix(8).lowercased())"
        let exchange = "test.\(id).x"
        let queue = "test.\(id).q"
        let topology = AMQPTopology(
            exchanges: [AMQPTopology.Exchange(name: exchange, type: "topic")], deadLetterExchange: "test.\(id).dlx",
            workQueues: [
                AMQPTopology.WorkQueue(
                    name: queue, bindings: [AMQPTopology.Binding(exchange: exchange, routingKey: "work.#")],
                    deliveryLimit: deliveryLimit, maxLength: maxLength, retryDelaysSeconds: retryDelaysSeconds)
            ])
        return (topology, exchange, queue)
    }

    /// `rabbitmqctl` against the shared node.
    public static func rabbitmqctl(_ arguments: [String]) async throws -> Int32 {
        try await runCommand(["rabbitmqctl", "-n", "rabbit@localhost", "-q"] + arguments)
    }

    /// `scripts/services <verb>` (rabbit-chaos-start, -kill, -pause, -resume).
    public static func services(_ verb: String) async throws -> Int32 {
        try await runCommand([TestDatabase.repositoryRoot.appendingPathComponent("scripts/services").path, verb])
    }

    public static func logger(_ label: String) -> Logger { TestDatabase.logger(label) }
}
