import CloudScanMetrics
import Foundation
import Logging
import Synchronization

/// Publishes with publisher confirms on a connection of its own, owned by a dedicated thread.
///
/// ``publish(_:exchange:routingKey:mandatory:)`` returns only when the broker has confirmed the
/// message (for quorum queues: written to a majority of replicas). A nack, a return (unroutable,
/// with `mandatory`), a lost connection before the confirm, or no confirm within
/// ``Configuration/confirmTimeout`` throws: the message may or may not be stored, and the caller
/// decides whether to publish it again (consumers deduplicate by `message_id`).
public final class AMQPPublisher: Sendable {
    /// Publisher settings.
    public struct Configuration: Sendable {
        public var broker: AMQPConfiguration
        /// Longest wait for a confirm.
        public var confirmTimeout: Duration
        /// Longest a single `basic.publish` write may block (rabbitmq-c 0.11 can block forever on a
        /// silent peer, and does while the broker blocks the connection) before the connection is
        /// recycled.
        public var writeDeadline: Duration
        /// A name shown in the broker's connection list.
        public var connectionName: String
        /// Where each publish's result and confirm latency are counted.
        public var metrics: FleetMetrics?

        public init(
            broker: AMQPConfiguration, confirmTimeout: Duration = .seconds(30), writeDeadline: Duration = .seconds(10),
            connectionName: String = "cloudscan-publisher", metrics: FleetMetrics? = nil
        ) {
            self.broker = broker
            self.confirmTimeout = confirmTimeout
            self.writeDeadline = writeDeadline
            self.connectionName = connectionName
            self.metrics = metrics
        }
    }

    private struct Publish: Sendable {
        var message: AMQPMessage
        var exchange: String
        var routingKey: String
        var mandatory: Bool
        var continuation: CheckedContinuation<Void, Error>
    }

    private enum Command: Sendable {
        case publish(Publish)
        case close(CheckedContinuation<Void, Never>)
    }

    private let configuration: Configuration
    private let logger: Logger
    private let worker = AMQPWorkerThread<Command>()
    /// Nanoseconds (monotonic) when the current write started, 0 when none is in progress.
    private let writeStarted = Atomic<UInt64>(0)
    private let socket = Atomic<Int32>(-1)

    /// Starts the publisher's thread; the connection opens on the first publish.
    public init(configuration: Configuration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        worker.start(name: "cloudscan.amqp.publisher") { [self] in run() }
        startWatchdog()
    }

    /// Publishes and waits for the broker's confirm.
    public func publish(_ message: AMQPMessage, exchange: String, routingKey: String, mandatory: Bool = true)
        async throws
    {
        let started = ContinuousClock.now
        do {
            try await withCheckedThrowingContinuation { continuation in
                let publish = Publish(
                    message: message, exchange: exchange, routingKey: routingKey, mandatory: mandatory,
                    continuation: continuation)
                if !worker.submit(.publish(publish)) {
                    continuation.resume(throwing: AMQPError(code: .closed, message: "the publisher is closed"))
                }
            }
            configuration.metrics?.publish(exchange: exchange, result: "confirmed", duration: .now - started)
        } catch {
            let code = (error as? AMQPError)?.code
            let result = code == .nacked ? "nacked" : code == .unroutable ? "unroutable" : "error"
            configuration.metrics?.publish(exchange: exchange, result: result, duration: .now - started)
            throw error
        }
    }

    /// Fails what is still unconfirmed, closes the connection and ends the thread.
    public func close() async {
        await withCheckedContinuation { continuation in
            if !worker.submit(.close(continuation)) { continuation.resume() }
        }
    }

    // MARK: The thread

    private struct InFlight {
        var continuation: CheckedContinuation<Void, Error>
        var messageID: String?
        var deadline: ContinuousClock.Instant
        var returned: AMQPError?
    }

    private func run() {
        var session: AMQPSession?
        var inFlight: [UInt64: InFlight] = [:]
        var nextTag: UInt64 = 1
        var blockedSince: ContinuousClock.Instant?
        var waitingWhileBlocked: [Publish] = []
        var reconnectNotBefore = ContinuousClock.now
        var backoff = Backoff()

        func failAll(_ error: AMQPError) {
            for (_, entry) in inFlight { entry.continuation.resume(throwing: error) }
            inFlight.removeAll()
            for publish in waitingWhileBlocked { publish.continuation.resume(throwing: error) }
            waitingWhileBlocked.removeAll()
        }

        func drop(_ error: AMQPError) {
            logger.warning("publisher connection lost", metadata: ["error": "\(error)"])
            session?.destroy()
            session = nil
            socket.store(-1, ordering: .releasing)
            failAll(error)
            blockedSince = nil
            reconnectNotBefore = .now + backoff.next()
        }

        func connect() throws -> AMQPSession {
            let opened = try AMQPSession(configuration.broker, connectionName: configuration.connectionName)
            try opened.confirmSelect()
            socket.store(opened.socketDescriptor, ordering: .releasing)
            nextTag = 1
            backoff.reset()
            logger.debug("publisher connected")
            return opened
        }

        func send(_ publish: Publish) {
            if session == nil {
                guard ContinuousClock.now >= reconnectNotBefore else {
                    publish.continuation.resume(
                        throwing: AMQPError(code: .connectionFailed, message: "broker unreachable; reconnecting"))
                    return
                }
                do {
                    session = try connect()
                } catch {
                    reconnectNotBefore = .now + backoff.next()
                    publish.continuation.resume(throwing: error)
                    return
                }
            }
            guard let current = session else { return }
            if blockedSince != nil {
                waitingWhileBlocked.append(publish)
                return
            }
            let tag = nextTag
            nextTag += 1
            inFlight[tag] = InFlight(
                continuation: publish.continuation, messageID: publish.message.messageID,
                deadline: .now + configuration.confirmTimeout)
            writeStarted.store(Self.monotonicNanos(), ordering: .releasing)
            defer { writeStarted.store(0, ordering: .releasing) }
            do {
                try current.publish(
                    publish.message, exchange: publish.exchange, routingKey: publish.routingKey,
                    mandatory: publish.mandatory)
            } catch let error as AMQPError {
                drop(error)
            } catch {
                drop(AMQPError(code: .connectionLost, message: "\(error)"))
            }
        }

        func settle(_ tag: UInt64, multiple: Bool, _ outcome: (InFlight) -> AMQPError?) {
            let tags = multiple ? inFlight.keys.filter { $0 <= tag } : [tag]
            for tag in tags {
                guard let entry = inFlight.removeValue(forKey: tag) else { continue }
                if let error = outcome(entry) {
                    entry.continuation.resume(throwing: error)
                } else {
                    entry.continuation.resume()
                }
            }
        }

        while true {
            var closing: [CheckedContinuation<Void, Never>] = []
            for command in worker.drain() {
                switch command {
                case .publish(let publish): send(publish)
                case .close(let continuation): closing.append(continuation)
                }
            }
            if !closing.isEmpty {
                failAll(AMQPError(code: .closed, message: "publisher closed before the confirm"))
                session?.close()
                session = nil
                socket.store(-1, ordering: .releasing)
                for command in worker.stop() {
                    switch command {
                    case .publish(let publish):
                        publish.continuation.resume(
                            throwing: AMQPError(code: .closed, message: "the publisher is closed"))
                    case .close(let continuation): closing.append(continuation)
                    }
                }
                for continuation in closing { continuation.resume() }
                return
            }

            if let current = session {
                do {
                    while let incoming = try current.nextIncoming(generation: 0) {
                        switch incoming {
                        case .ack(let tag, let multiple):
                            settle(tag, multiple: multiple) { $0.returned }
                        case .nack(let tag, let multiple):
                            settle(tag, multiple: multiple) { _ in
                                AMQPError(code: .nacked, message: "the broker refused the message (basic.nack)")
                            }
                        case .returned(let messageID, let code, let text):
                            // The return comes before the ack of the same message.
                            let error = AMQPError(
                                code: .unroutable, message: "message returned: \(text)", replyCode: code)
                            if let key = inFlight.first(where: {
                                $0.value.messageID == messageID && $0.value.returned == nil
                            })?.key {
                                inFlight[key]?.returned = error
                            }
                        case .blocked(let reason):
                            logger.warning("broker blocked the publisher", metadata: ["reason": "\(reason)"])
                            blockedSince = .now
                        case .unblocked:
                            blockedSince = nil
                            let waiting = waitingWhileBlocked
                            waitingWhileBlocked.removeAll()
                            for publish in waiting { send(publish) }
                        case .channelClosed(let code, let text), .connectionClosed(let code, let text):
                            drop(AMQPError(code: .connectionLost, message: "broker closed: \(text)", replyCode: code))
                        case .deliver, .consumerCancelled, .cancelOK, .other:
                            break
                        }
                        if session == nil { break }
                    }
                    session?.releaseBuffers()
                } catch let error as AMQPError {
                    drop(error)
                } catch {
                    drop(AMQPError(code: .connectionLost, message: "\(error)"))
                }
            }

            // Deadlines: unconfirmed messages, and publishes held while blocked.
            let now = ContinuousClock.now
            for (tag, entry) in inFlight where entry.deadline < now {
                inFlight.removeValue(forKey: tag)
                entry.continuation.resume(
                    throwing: AMQPError(
                        code: .confirmTimeout, message: "no confirm within \(configuration.confirmTimeout)"))
            }
            if let since = blockedSince, now - since > configuration.writeDeadline {
                let held = waitingWhileBlocked
                waitingWhileBlocked.removeAll()
                for publish in held {
                    publish.continuation.resume(
                        throwing: AMQPError(
                            code: .blocked, message: "the broker has blocked publishing (resource alarm)"))
                }
            }

            let busy = session?.hasBufferedInput ?? false
            if !busy {
                let heartbeat = Int32(max(1, configuration.broker.heartbeatSeconds) * 500)
                worker.wait(
                    socket: session?.socketDescriptor ?? -1,
                    milliseconds: inFlight.isEmpty ? heartbeat : min(heartbeat, 100))
            }
        }
    }

    // MARK: Watchdog

    /// Every second: if a write has been stuck past the deadline, shut the socket down so the
    /// blocked call returns with an error and the connection is recycled.
    private func startWatchdog() {
        let deadline = UInt64(configuration.writeDeadline.milliseconds) * 1_000_000
        Thread.detachNewThread { [weak self] in
            while true {
                guard let publisher = self, !publisher.worker.isStopped else { return }
                let started = publisher.writeStarted.load(ordering: .acquiring)
                if started != 0, Self.monotonicNanos() - started > deadline {
                    let descriptor = publisher.socket.load(ordering: .acquiring)
                    if descriptor >= 0 {
                        publisher.logger.error("a publish has been blocked past its deadline; recycling the connection")
                        shutdown(descriptor, Int32(SHUT_RDWR))
                    }
                }
                usleep(250_000)
            }
        }
    }

    static func monotonicNanos() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }
}
