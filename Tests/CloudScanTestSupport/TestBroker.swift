import CloudScanAMQP
import Foundation
import Logging
import Testing

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

/// Serializes tests that kill, pause or restart the chaos RabbitMQ node, across suites and targets
/// (Swift Testing runs suites in parallel within one process).
public actor ChaosNodeLock {
    public static let shared = ChaosNodeLock()
    private var busy = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    /// Runs `body` while no other chaos test runs.
    public func exclusive<R: Sendable>(_ body: @Sendable () async throws -> R) async rethrows -> R {
        if busy {
            await withCheckedContinuation { waiters.append($0) }
        }
        busy = true
        defer {
            if waiters.isEmpty { busy = false } else { waiters.removeFirst().resume() }
        }
        return try await body()
    }
}

/// `.chaosNode`: the test (or every test of the suite) holds ``ChaosNodeLock`` while it runs.
public struct ChaosNodeTrait: TestTrait, SuiteTrait, TestScoping {
    public var isRecursive: Bool { true }
    public func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        guard testCase != nil else { return try await function() }  // lock per test, not per suite
        try await ChaosNodeLock.shared.exclusive { try await function() }
    }
}

extension Trait where Self == ChaosNodeTrait {
    /// Uses the chaos RabbitMQ node, which it may kill or pause.
    public static var chaosNode: Self { ChaosNodeTrait() }
}

extension TestBroker {
    /// Runs `body` in a virtual host of its own with the fleet's real topology declared (so code
    /// using the fleet's exchange and queue names is isolated from every other test); deletes the
    /// virtual host afterwards. Returns the broker configuration and its `amqp://` URL.
    public static func withFleetVirtualHost<R>(
        _ prefix: String, _ body: (_ broker: AMQPConfiguration, _ url: String) async throws -> R
    ) async throws -> R {
        let vhost = "test-\(prefix)-\(UUID().uuidString.prefix(8).lowercased())"
        guard try await rabbitmqctl(["add_vhost", vhost]) == 0,
            try await rabbitmqctl(["set_permissions", "-p", vhost, user, ".*", ".*", ".*"]) == 0
        else { throw AMQPError(code: .protocolError, message: "could not create the virtual host \(vhost)") }
        let broker = configuration(virtualHost: vhost)
        do {
            let topology = try AMQPTopology.load(
                from: TestDatabase.repositoryRoot.appendingPathComponent("topology/topology.json"))
            _ = try await topology.apply(broker: broker)
            let result = try await body(broker, "amqp://\(user):\(password)@\(host):\(port)/\(vhost)")
            _ = try? await rabbitmqctl(["delete_vhost", vhost])
            return result
        } catch {
            _ = try? await rabbitmqctl(["delete_vhost", vhost])
            throw error
        }
    }

    /// Messages in a queue of a virtual host, read with `rabbitmqctl` (quorum counts lag acks by
    /// seconds: poll).
    public static func queueDepth(_ queue: String, virtualHost: String) async throws -> Int? {
        let (status, output) = try await runCommandCapturingOutput([
            "rabbitmqctl", "-n", "rabbit@localhost", "-q", "list_queues", "-p", virtualHost, "name", "messages",
        ])
        guard status == 0 else { return nil }
        for line in output.split(separator: "\n") {
            let parts = line.split(whereSeparator: { $0 == "\t" || $0 == " " })
            if parts.count == 2, parts[0] == queue { return Int(parts[1]) }
        }
        return nil
    }
}
