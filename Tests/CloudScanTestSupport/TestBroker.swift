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

/// Serializes tests that kill, pause or restart a chaos server — the RabbitMQ node or the
/// PostgreSQL cluster — across suites and targets (Swift Testing runs suites in parallel within one
/// process).
public actor ChaosNodeLock {
    /// The chaos RabbitMQ node's.
    public static let shared = ChaosNodeLock()
    /// The chaos PostgreSQL cluster's.
    public static let postgres = ChaosNodeLock()
    private var busy = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    /// Runs `body` while no other chaos test of this server runs.
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

/// `.chaosNode` / `.chaosCluster`: the test (or every test of the suite) holds that server's
/// ``ChaosNodeLock`` while it runs.
public struct ChaosNodeTrait: TestTrait, SuiteTrait, TestScoping {
    let lock: ChaosNodeLock
    public var isRecursive: Bool { true }
    public func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        guard testCase != nil else { return try await function() }  // lock per test, not per suite
        try await lock.exclusive { try await function() }
    }
}

extension Trait where Self == ChaosNodeTrait {
    /// Uses the chaos RabbitMQ node, which it may kill or pause.
    public static var chaosNode: Self { ChaosNodeTrait(lock: .shared) }
    /// Uses the chaos PostgreSQL cluster (``TestDatabase/chaosPort``), which it may stop or restart.
    public static var chaosCluster: Self { ChaosNodeTrait(lock: .postgres) }
}

extension TestBroker {
    /// Runs `body` in a virtual host of its own with the fleet's real topology declared (so code
    /// using the fleet's exchange and queue names is isolated from every other test); deletes the
    /// virtual host afterwards. Returns the broker configuration and its `amqp://` URL.
    ///
    /// Only the work queues named in `queues` are declared (each expands to several quorum
    /// queues, and a burst of hundreds of quorum queues stalls a broker on this disk), and at most
    /// ``FleetVirtualHosts/limit`` such virtual hosts exist at once.
    public static func withFleetVirtualHost<R>(
        _ prefix: String, queues: Set<String>? = nil,
        _ body: (_ broker: AMQPConfiguration, _ url: String) async throws -> R
    ) async throws -> R {
        await FleetVirtualHosts.shared.acquire()
        defer { Task { await FleetVirtualHosts.shared.release() } }
        let vhost = "test-\(prefix)-\(UUID().uuidString.prefix(8).lowercased())"
        try await addVirtualHost(vhost)
        let broker = configuration(virtualHost: vhost)
        do {
            var topology = try AMQPTopology.load(
                from: TestDatabase.repositoryRoot.appendingPathComponent("topology/topology.json"))
            if let queues { topology.workQueues = topology.workQueues.filter { queues.contains($0.name) } }
            guard try await topology.apply(broker: broker).isClean else {
                throw AMQPError(code: .protocolError, message: "the fleet topology did not apply cleanly in \(vhost)")
            }
            let result = try await body(broker, "amqp://\(user):\(password)@\(host):\(port)/\(vhost)")
            await deleteVirtualHost(vhost)
            return result
        } catch {
            await deleteVirtualHost(vhost)
            throw error
        }
    }

    /// The management API of the shared node (scripts/services enables it).
    static let managementURL = environment["TEST_AMQP_MANAGEMENT_URL"] ?? "http://127.0.0.1:15672"

    static func management(_ method: String, _ path: String, body: String? = nil) async throws -> (Int32, String) {
        var arguments = [
            "curl", "-s", "-u", "\(user):\(password)", "-X", method, "-w", "\n%{http_code}",
            "\(managementURL)/api/\(path)",
        ]
        if let body { arguments += ["-H", "content-type: application/json", "-d", body] }
        return try await runCommandCapturingOutput(arguments)
    }

    /// A virtual host with full permissions for the test user (through the management API: one
    /// HTTP call, where rabbitmqctl boots an Erlang VM each time).
    public static func addVirtualHost(_ vhost: String) async throws {
        let (status, output) = try await management("PUT", "vhosts/\(vhost)")
        let (status2, output2) = try await management(
            "PUT", "permissions/\(vhost)/\(user)", body: #"{"configure":".*","write":".*","read":".*"}"#)
        guard status == 0, status2 == 0, output.hasSuffix("201") || output.hasSuffix("204"),
            output2.hasSuffix("201") || output2.hasSuffix("204")
        else {
            throw AMQPError(
                code: .protocolError, message: "could not create the virtual host \(vhost): \(output) \(output2)")
        }
    }

    public static func deleteVirtualHost(_ vhost: String) async {
        _ = try? await management("DELETE", "vhosts/\(vhost)")
    }
}

/// Bounds how many tests hold a fleet virtual host at once.
public actor FleetVirtualHosts {
    public static let shared = FleetVirtualHosts()
    public static let limit = Int(ProcessInfo.processInfo.environment["TEST_FLEET_VHOSTS"] ?? "") ?? 3
    private var held = 0
    private var waiting: [CheckedContinuation<Void, Never>] = []

    public func acquire() async {
        if held < Self.limit {
            held += 1
            return
        }
        await withCheckedContinuation { waiting.append($0) }
    }

    public func release() {
        if waiting.isEmpty {
            held -= 1
        } else {
            waiting.removeFirst().resume()
        }
    }
}
