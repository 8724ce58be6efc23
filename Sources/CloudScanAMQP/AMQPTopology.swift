import CloudScanCore
import Foundation
import Logging

/// The fleet's exchanges, queues and bindings, read from `topology/topology.json`.
///
/// Each *work queue* expands to: the quorum queue itself (explicit `x-delivery-limit`,
/// dead-lettering `at-least-once` into `deadLetterExchange` with the queue's name as routing key,
/// `reject-publish` overflow, `x-max-length`), its dead-letter queue `<queue>.dead`, and one retry
/// tier `<queue>.retry.<N>s` per delay: a quorum queue with a message TTL whose dead-letter target
/// is the work queue again (through the default exchange, so a retry reaches only the queue that
/// failed, never the other queues bound to the same routing key).
public struct AMQPTopology: Sendable, Codable, Hashable {
    public struct Exchange: Sendable, Codable, Hashable {
        public var name: String
        public var type: String
        public init(name: String, type: String) {
            self.name = name
            self.type = type
        }
    }

    public struct Binding: Sendable, Codable, Hashable {
        public var exchange: String
        public var routingKey: String
        public init(exchange: String, routingKey: String) {
            self.exchange = exchange
            self.routingKey = routingKey
        }
    }

    public struct WorkQueue: Sendable, Codable, Hashable {
        public var name: String
        public var bindings: [Binding]
        /// Deliveries before the message is dead-lettered (a poison message stops here).
        public var deliveryLimit: Int
        /// Ready messages before publishes are refused (nacked).
        public var maxLength: Int
        /// Retry tiers, in seconds.
        public var retryDelaysSeconds: [Int]
        public init(
            name: String, bindings: [Binding], deliveryLimit: Int = 5, maxLength: Int = 100_000,
            retryDelaysSeconds: [Int] = []
        ) {
            self.name = name
            self.bindings = bindings
            self.deliveryLimit = deliveryLimit
            self.maxLength = maxLength
            self.retryDelaysSeconds = retryDelaysSeconds
        }
    }

    public var exchanges: [Exchange]
    public var deadLetterExchange: String
    public var workQueues: [WorkQueue]

    public init(exchanges: [Exchange], deadLetterExchange: String, workQueues: [WorkQueue]) {
        self.exchanges = exchanges
        self.deadLetterExchange = deadLetterExchange
        self.workQueues = workQueues
    }

    /// Reads a topology file.
    public static func load(from url: URL) throws -> AMQPTopology {
        try JSONDecoder().decode(AMQPTopology.self, from: Data(contentsOf: url))
    }

    /// A declared queue: name, arguments, bindings.
    public struct QueueDeclaration: Sendable, Hashable {
        public var name: String
        public var arguments: [(String, AMQPFieldValue)]
        public var bindings: [Binding]

        public static func == (lhs: Self, rhs: Self) -> Bool {
            lhs.name == rhs.name && lhs.bindings == rhs.bindings
                && lhs.arguments.count == rhs.arguments.count
                && zip(lhs.arguments, rhs.arguments).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        }
        public func hash(into hasher: inout Hasher) { hasher.combine(name) }
    }

    /// Every queue this topology declares, expanded.
    public var queueDeclarations: [QueueDeclaration] {
        var out: [QueueDeclaration] = []
        for queue in workQueues {
            out.append(
                QueueDeclaration(
                    name: queue.name,
                    arguments: [
                        ("x-queue-type", .string("quorum")),
                        ("x-delivery-limit", .int(queue.deliveryLimit)),
                        ("x-dead-letter-exchange", .string(deadLetterExchange)),
                        ("x-dead-letter-routing-key", .string(queue.name)),
                        ("x-dead-letter-strategy", .string("at-least-once")),
                        ("x-overflow", .string("reject-publish")),
                        ("x-max-length", .int(queue.maxLength)),
                    ],
                    bindings: queue.bindings))
            out.append(
                QueueDeclaration(
                    name: "\(queue.name).dead",
                    arguments: [("x-queue-type", .string("quorum")), ("x-max-length", .int(1_000_000))],
                    bindings: [Binding(exchange: deadLetterExchange, routingKey: queue.name)]))
            for delay in queue.retryDelaysSeconds {
                out.append(
                    QueueDeclaration(
                        name: Self.retryQueueName(queue.name, delaySeconds: delay),
                        arguments: [
                            ("x-queue-type", .string("quorum")),
                            ("x-message-ttl", .int(delay * 1000)),
                            ("x-dead-letter-exchange", .string("")),
                            ("x-dead-letter-routing-key", .string(queue.name)),
                            ("x-dead-letter-strategy", .string("at-least-once")),
                            ("x-overflow", .string("reject-publish")),
                            ("x-max-length", .int(queue.maxLength)),
                        ],
                        bindings: []))
            }
        }
        return out
    }

    /// `<queue>.retry.<N>s`; publish there (default exchange, routing key = that name) to retry later.
    public static func retryQueueName(_ queue: String, delaySeconds: Int) -> String {
        "\(queue).retry.\(delaySeconds)s"
    }

    /// Declares everything on an open session. Throws at the first refusal.
    func declare(on session: AMQPSession) throws {
        let report = declare(on: session, stopAtFirstProblem: true)
        if let first = report.problems.first { throw first }
    }

    /// Declares everything, collecting refusals (drift) instead of stopping.
    func declare(on session: AMQPSession, stopAtFirstProblem: Bool) -> AMQPTopologyReport {
        var report = AMQPTopologyReport()
        func attempt(_ what: String, _ body: () throws -> Void) -> Bool {
            do {
                try body()
                report.declared.append(what)
                return true
            } catch let error as AMQPError {
                report.problems.append(error)
                return false
            } catch {
                report.problems.append(AMQPError(code: .protocolError, message: "\(what): \(error)"))
                return false
            }
        }
        for exchange in exchanges + [Exchange(name: deadLetterExchange, type: "direct")] {
            if !attempt(
                "exchange \(exchange.name)",
                { try session.declareExchange(name: exchange.name, type: exchange.type, durable: true, arguments: []) }),
                stopAtFirstProblem
            {
                return report
            }
        }
        for queue in queueDeclarations {
            guard
                attempt(
                    "queue \(queue.name)",
                    { try session.declareQueue(name: queue.name, durable: true, arguments: queue.arguments) })
            else {
                if stopAtFirstProblem { return report }
                continue
            }
            for binding in queue.bindings {
                if !attempt(
                    "binding \(binding.exchange) → \(queue.name) (\(binding.routingKey))",
                    {
                        try session.bindQueue(
                            queue: queue.name, exchange: binding.exchange, routingKey: binding.routingKey)
                    }),
                    stopAtFirstProblem
                {
                    return report
                }
            }
        }
        return report
    }

    /// Declares the topology on a broker, idempotently; existing objects with other arguments are
    /// reported as drift (the broker refuses to redeclare them), not fatal.
    public func apply(broker: AMQPConfiguration) async throws -> AMQPTopologyReport {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(
                    with: Result {
                        let session = try AMQPSession(broker, connectionName: "cloudscan-topology")
                        defer { session.close() }
                        return self.declare(on: session, stopAtFirstProblem: false)
                    })
            }
        }
    }

    /// Messages ready in each work queue and its dead-letter queue (passive declares: a queue that
    /// does not exist is left out), for `cloudscan_queue_depth`.
    public func depths(broker: AMQPConfiguration) async throws -> [String: Int] {
        let names = workQueues.flatMap { [$0.name, "\($0.name).dead"] }
        return try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(
                    with: Result {
                        var depths: [String: Int] = [:]
                        for name in names {
                            // A failed passive declare closes the channel: one session per queue
                            // is the simple way to keep going (a handful of queues).
                            guard let session = try? AMQPSession(broker, connectionName: "cloudscan-queue-depth")
                            else { throw AMQPError(code: .connectionFailed, message: "cannot reach the broker") }
                            defer { session.close() }
                            if let counts = try? session.declareQueue(
                                name: name, durable: true, passive: true, arguments: [])
                            {
                                depths[name] = counts.messages
                            }
                        }
                        return depths
                    })
            }
        }
    }

    /// Deletes every queue and exchange of this topology (test teardown, decommissioning).
    public func delete(broker: AMQPConfiguration) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
            Thread.detachNewThread {
                continuation.resume(
                    with: Result {
                        let session = try AMQPSession(broker, connectionName: "cloudscan-topology")
                        defer { session.close() }
                        for queue in self.queueDeclarations { try session.deleteQueue(name: queue.name) }
                        for exchange in self.exchanges + [Exchange(name: self.deadLetterExchange, type: "direct")] {
                            try session.deleteExchange(name: exchange.name)
                        }
                    })
            }
        }
    }

    /// The runners' broker user: a runner publishes findings and status reports, and nothing
    /// else. It may declare nothing, read nothing, and write only to `cloudscan.findings` (routing
    /// keys `findings.*`) and `cloudscan.status` (`status.*`).
    public struct RunnerUser: Sendable {
        public var name: String
        /// `rabbit_password_hashing_sha256` form: base64(salt ‖ SHA-256(salt ‖ password)).
        public var passwordHash: String

        public init(name: String, passwordHash: String) {
            self.name = name
            self.passwordHash = passwordHash
        }

        public static let configure = "^$"
        public static let read = "^$"
        public static var write: String {
            "^("
                + [Exchanges.findings, Exchanges.status].map { $0.replacingOccurrences(of: ".", with: "\\.") }
                .joined(separator: "|") + ")$"
        }
        /// Routing keys per exchange (topic permissions).
        public static var topics: [(exchange: String, write: String)] {
            [(Exchanges.findings, "^findings\\.[a-z]+$"), (Exchanges.status, "^status\\.[a-z]+$")]
        }
    }

    /// A RabbitMQ definitions document (`rabbitmqctl import_definitions`) for one vhost, with the
    /// runners' user and its permissions when given.
    public func definitions(virtualHost: String, runnerUser: RunnerUser? = nil) -> [String: Any] {
        var document = definitionsWithoutUsers(virtualHost: virtualHost)
        if let runnerUser {
            document["users"] = [
                [
                    "name": runnerUser.name, "password_hash": runnerUser.passwordHash,
                    "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "",
                ] as [String: Any]
            ]
            document["permissions"] = [
                [
                    "user": runnerUser.name, "vhost": virtualHost, "configure": RunnerUser.configure,
                    "write": RunnerUser.write, "read": RunnerUser.read,
                ]
            ]
            document["topic_permissions"] = RunnerUser.topics.map {
                [
                    "user": runnerUser.name, "vhost": virtualHost, "exchange": $0.exchange, "write": $0.write,
                    "read": "^$",
                ]
            }
        }
        return document
    }

    func definitionsWithoutUsers(virtualHost: String) -> [String: Any] {
        func json(_ value: AMQPFieldValue) -> Any {
            switch value {
            case .string(let s): return s
            case .int(let i): return i
            case .bool(let b): return b
            case .table(let t): return Dictionary(uniqueKeysWithValues: t.map { ($0.0, json($0.1)) })
            }
        }
        let allExchanges = exchanges + [Exchange(name: deadLetterExchange, type: "direct")]
        return [
            "vhosts": [["name": virtualHost]],
            "exchanges": allExchanges.map {
                [
                    "name": $0.name, "vhost": virtualHost, "type": $0.type, "durable": true, "auto_delete": false,
                    "internal": false, "arguments": [String: Any](),
                ] as [String: Any]
            },
            "queues": queueDeclarations.map { queue in
                [
                    "name": queue.name, "vhost": virtualHost, "durable": true, "auto_delete": false,
                    "arguments": Dictionary(uniqueKeysWithValues: queue.arguments.map { ($0.0, json($0.1)) }),
                ] as [String: Any]
            },
            "bindings": queueDeclarations.flatMap { queue in
                queue.bindings.map {
                    [
                        "source": $0.exchange, "vhost": virtualHost, "destination": queue.name,
                        "destination_type": "queue", "routing_key": $0.routingKey, "arguments": [String: Any](),
                    ] as [String: Any]
                }
            },
        ]
    }
}

/// What ``AMQPTopology/apply(broker:)`` did.
public struct AMQPTopologyReport: Sendable {
    /// Objects declared (or found equal).
    public var declared: [String] = []
    /// Refusals, typically PRECONDITION_FAILED for a queue that exists with other arguments.
    public var problems: [AMQPError] = []
    /// Whether everything matched.
    public var isClean: Bool { problems.isEmpty }
}
