import Foundation
import Logging
import Synchronization

/// Consumes one queue with manual acknowledgements, on a connection of its own owned by a
/// dedicated thread.
///
/// Deliveries arrive on ``deliveries``. Settle each one on this consumer once its effect is
/// committed. When the connection drops, the consumer reconnects with jittered exponential
/// backoff, re-applies its topology, and consumes again; deliveries of the old connection can no
/// longer be settled (``AMQPError/Code/staleDelivery``): the broker redelivers them.
public final class AMQPConsumer: Sendable {
    /// Consumer settings.
    public struct Configuration: Sendable {
        public var broker: AMQPConfiguration
        public var queue: String
        /// Unacknowledged deliveries the broker may send ahead (`basic.qos`, per consumer).
        public var prefetch: Int
        /// Declared (idempotently) on every connect, before consuming.
        public var topology: AMQPTopology?
        public var connectionName: String
        public var reconnectBackoff: Backoff

        public init(
            broker: AMQPConfiguration, queue: String, prefetch: Int = 100, topology: AMQPTopology? = nil,
            connectionName: String = "cloudscan-consumer"
        ) {
            self.broker = broker
            self.queue = queue
            self.prefetch = prefetch
            self.topology = topology
            self.connectionName = connectionName
            self.reconnectBackoff = Backoff()
        }
    }

    private enum Settle: Sendable {
        case ack(multiple: Bool)
        case nack(multiple: Bool, requeue: Bool)
        case reject(requeue: Bool)
    }

    private enum Command: Sendable {
        case settle(AMQPDelivery, Settle, CheckedContinuation<Void, Error>)
        case stopConsuming
        case close(CheckedContinuation<Void, Never>)
    }

    private let configuration: Configuration
    private let logger: Logger
    private let worker = AMQPWorkerThread<Command>()
    private let continuation: AsyncStream<AMQPDelivery>.Continuation
    private let connects = Atomic<Int>(0)
    private let connected = Atomic<Bool>(false)

    /// The deliveries, in order. Ends after ``stopConsuming()`` (once the broker confirms the
    /// cancel) or ``close()``. Iterate it from one task.
    public let deliveries: AsyncStream<AMQPDelivery>

    /// Starts the consumer's thread, which connects and begins consuming.
    public init(configuration: Configuration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        (deliveries, continuation) = AsyncStream<AMQPDelivery>.makeStream()
        worker.start(name: "cloudscan.amqp.consumer") { [self] in run() }
    }

    /// How many times the consumer has connected (1 after the first connect; more after reconnects).
    public var connectionCount: Int { connects.load(ordering: .relaxed) }

    /// Whether the consumer currently has a live connection.
    public var isConnected: Bool { connected.load(ordering: .relaxed) }

    /// Acknowledges a delivery (and, with `multiple`, every earlier one of its connection).
    public func ack(_ delivery: AMQPDelivery, multiple: Bool = false) async throws {
        try await settle(delivery, .ack(multiple: multiple))
    }

    /// Negatively acknowledges; without requeue a quorum queue dead-letters the message.
    public func nack(_ delivery: AMQPDelivery, requeue: Bool, multiple: Bool = false) async throws {
        try await settle(delivery, .nack(multiple: multiple, requeue: requeue))
    }

    /// Rejects one delivery; without requeue it is dead-lettered.
    public func reject(_ delivery: AMQPDelivery, requeue: Bool) async throws {
        try await settle(delivery, .reject(requeue: requeue))
    }

    /// Stops new deliveries (`basic.cancel`); ``deliveries`` ends once the broker confirms.
    /// Deliveries already received can still be settled.
    public func stopConsuming() {
        _ = worker.submit(.stopConsuming)
    }

    /// Closes the connection; unsettled deliveries go back to the queue.
    public func close() async {
        await withCheckedContinuation { continuation in
            if !worker.submit(.close(continuation)) { continuation.resume() }
        }
    }

    private func settle(_ delivery: AMQPDelivery, _ how: Settle) async throws {
        try await withCheckedThrowingContinuation { continuation in
            if !worker.submit(.settle(delivery, how, continuation)) {
                continuation.resume(
                    throwing: AMQPError(
                        code: .staleDelivery, message: "the consumer is closed; the broker will redeliver the message"))
            }
        }
    }

    // MARK: The thread

    private func run() {
        var session: AMQPSession?
        var generation: UInt64 = 0
        var consumerTag: String?
        var consuming = true
        var reconnectAt = ContinuousClock.now
        var backoff = configuration.reconnectBackoff
        let heartbeatWait = Int32(min(500, max(1, configuration.broker.heartbeatSeconds) * 250))

        func drop(_ error: Error) {
            logger.warning(
                "consumer connection lost; reconnecting",
                metadata: ["queue": "\(configuration.queue)", "error": "\(error)"])
            session?.destroy()
            session = nil
            connected.store(false, ordering: .relaxed)
            consumerTag = nil
            reconnectAt = .now + backoff.next()
        }

        func connect() {
            do {
                let opened = try AMQPSession(configuration.broker, connectionName: configuration.connectionName)
                if let topology = configuration.topology {
                    try topology.declare(on: opened)
                }
                try opened.qos(prefetch: configuration.prefetch)
                generation += 1
                consumerTag = try opened.consume(
                    queue: configuration.queue, tag: "\(configuration.connectionName)-\(generation)")
                session = opened
                backoff.reset()
                connects.add(1, ordering: .relaxed)
                connected.store(true, ordering: .relaxed)
                logger.debug("consumer connected", metadata: ["queue": "\(configuration.queue)"])
            } catch {
                logger.warning(
                    "consumer cannot connect", metadata: ["queue": "\(configuration.queue)", "error": "\(error)"])
                reconnectAt = .now + backoff.next()
            }
        }

        while true {
            if session == nil, consuming, ContinuousClock.now >= reconnectAt { connect() }

            // Settle before closing, whatever order the commands came in.
            let drained = worker.drain()
            let ordered =
                drained.filter { if case .close = $0 { false } else { true } }
                + drained.filter { if case .close = $0 { true } else { false } }
            for command in ordered {
                switch command {
                case .settle(let delivery, let how, let reply):
                    guard let current = session, delivery.generation == generation else {
                        reply.resume(
                            throwing: AMQPError(
                                code: .staleDelivery,
                                message: "the delivery's connection is gone; the broker will redeliver it"))
                        continue
                    }
                    do {
                        switch how {
                        case .ack(let multiple): try current.ack(delivery.deliveryTag, multiple: multiple)
                        case .nack(let multiple, let requeue):
                            try current.nack(delivery.deliveryTag, multiple: multiple, requeue: requeue)
                        case .reject(let requeue): try current.reject(delivery.deliveryTag, requeue: requeue)
                        }
                        reply.resume()
                    } catch {
                        reply.resume(throwing: error)
                        drop(error)
                    }
                case .stopConsuming:
                    consuming = false
                    if let current = session, let tag = consumerTag {
                        do { try current.cancel(tag: tag) } catch { drop(error) }
                    } else {
                        continuation.finish()
                    }
                case .close(let reply):
                    session?.close()
                    session = nil
                    connected.store(false, ordering: .relaxed)
                    continuation.finish()
                    for left in worker.stop() {
                        switch left {
                        case .settle(_, _, let settleReply):
                            settleReply.resume(
                                throwing: AMQPError(code: .staleDelivery, message: "the consumer is closed"))
                        case .close(let closeReply): closeReply.resume()
                        case .stopConsuming: break
                        }
                    }
                    reply.resume()
                    return
                }
            }

            if let current = session {
                do {
                    while let incoming = try current.nextIncoming(generation: generation) {
                        switch incoming {
                        case .deliver(let delivery):
                            continuation.yield(delivery)
                        case .consumerCancelled:
                            // The broker cancelled us (queue deleted, failover): consume again.
                            logger.warning(
                                "broker cancelled the consumer", metadata: ["queue": "\(configuration.queue)"])
                            if consuming {
                                consumerTag = try current.consume(
                                    queue: configuration.queue, tag: "\(configuration.connectionName)-\(generation)-r")
                            }
                        case .cancelOK:
                            if !consuming { continuation.finish() }
                        case .channelClosed(let code, let text), .connectionClosed(let code, let text):
                            throw AMQPError(code: .connectionLost, message: "broker closed: \(text)", replyCode: code)
                        case .ack, .nack, .returned, .blocked, .unblocked, .other:
                            break
                        }
                    }
                    current.releaseBuffers()
                } catch {
                    drop(error)
                    if !consuming { continuation.finish() }
                }
            }

            if session?.hasBufferedInput ?? false { continue }
            let untilReconnect = max(0, Int32((reconnectAt - .now).milliseconds))
            let timeout = session == nil ? (consuming ? min(untilReconnect, 1000) : 1000) : heartbeatWait
            worker.wait(socket: session?.socketDescriptor ?? -1, milliseconds: timeout)
        }
    }
}
