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
        case settle(AMQPDelivery, Settle)
        case stopConsuming
        case close(CheckedContinuation<Void, Never>)
    }

    private let configuration: Configuration
    /// The queue it consumes.
    public var queue: String { configuration.queue }
    private let logger: Logger
    private let worker = AMQPWorkerThread<Command>()
    private let continuation: AsyncStream<[AMQPDelivery]>.Continuation
    private let connects = Atomic<Int>(0)
    private let connected = Atomic<Bool>(false)
    /// The generation deliveries can be settled for: the live connection's, 0 while disconnected.
    private let liveGeneration = Atomic<UInt64>(0)

    /// The deliveries, in order. Ends after ``stopConsuming()`` (once the broker confirms the
    /// cancel) or ``close()``. Iterate it from one task.
    public let deliveries: AMQPDeliveries

    /// Starts the consumer's thread, which connects and begins consuming.
    public init(configuration: Configuration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        let (batches, continuation) = AsyncStream<[AMQPDelivery]>.makeStream()
        self.continuation = continuation
        self.deliveries = AMQPDeliveries(batches: batches)
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

    /// Settling does not wait for the consumer's thread: AMQP acks are not confirmed by the broker
    /// anyway, so once queued for a live connection the outcome is the same as written — and if
    /// that connection dies first, the broker redelivers, exactly as for an ack lost in flight.
    /// A delivery of an earlier connection (or of a closed consumer) is refused here.
    private func settle(_ delivery: AMQPDelivery, _ how: Settle) async throws {
        guard delivery.generation == liveGeneration.load(ordering: .acquiring) else {
            throw AMQPError(
                code: .staleDelivery, message: "the delivery's connection is gone; the broker will redeliver it")
        }
        guard worker.submit(.settle(delivery, how)) else {
            throw AMQPError(code: .staleDelivery, message: "the consumer is closed; the broker will redeliver it")
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
            liveGeneration.store(0, ordering: .releasing)
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
                liveGeneration.store(generation, ordering: .releasing)
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
                case .settle(let delivery, let how):
                    // A delivery of a connection that died since is void; the broker redelivers it.
                    guard let current = session, delivery.generation == generation else { continue }
                    do {
                        switch how {
                        case .ack(let multiple): try current.ack(delivery.deliveryTag, multiple: multiple)
                        case .nack(let multiple, let requeue):
                            try current.nack(delivery.deliveryTag, multiple: multiple, requeue: requeue)
                        case .reject(let requeue): try current.reject(delivery.deliveryTag, requeue: requeue)
                        }
                    } catch {
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
                    liveGeneration.store(0, ordering: .releasing)
                    session?.close()
                    session = nil
                    connected.store(false, ordering: .relaxed)
                    continuation.finish()
                    for left in worker.stop() {
                        switch left {
                        case .settle: break  // unsettled: the broker redelivers after the close
                        case .close(let closeReply): closeReply.resume()
                        case .stopConsuming: break
                        }
                    }
                    reply.resume()
                    return
                }
            }

            if let current = session {
                // Hand deliveries over in bursts: one wake-up of the consuming task per burst.
                var burst: [AMQPDelivery] = []
                defer { if !burst.isEmpty { continuation.yield(burst) } }
                do {
                    while let incoming = try current.nextIncoming(generation: generation) {
                        switch incoming {
                        case .deliver(let delivery):
                            burst.append(delivery)
                            if burst.count >= 256 {
                                continuation.yield(burst)
                                burst = []
                            }
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

/// A consumer's deliveries, one at a time, handed over from the consumer's thread in bursts.
public struct AMQPDeliveries: AsyncSequence, Sendable {
    public typealias Element = AMQPDelivery
    let batches: AsyncStream<[AMQPDelivery]>

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(batches: batches.makeAsyncIterator())
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        var batches: AsyncStream<[AMQPDelivery]>.AsyncIterator
        var buffer: [AMQPDelivery] = []
        var index = 0

        public mutating func next() async -> AMQPDelivery? {
            if index < buffer.count {
                index += 1
                return buffer[index - 1]
            }
            guard let batch = await batches.next(), !batch.isEmpty else { return nil }
            buffer = batch
            index = 1
            return batch[0]
        }
    }
}
