import CloudScanCore
import CloudScanMetrics
import Foundation
import Logging
import ServiceLifecycle

/// Runs a handler over a consumer's deliveries with bounded concurrency, as a `Service`.
///
/// A delivery is acknowledged only after its handler returns `.ack` — that is, after the handler
/// committed its effect. On graceful shutdown the service stops consuming (`basic.cancel`), lets
/// in-flight handlers finish within ``Configuration/drainTimeout`` and settles them, then closes;
/// whatever was not settled goes back to the queue for another consumer.
public struct AMQPConsumerService: Service {
    /// What to do with a handled delivery.
    public enum Outcome: Sendable, Equatable {
        /// The effect is committed.
        case ack
        /// A transient failure: back to the queue (quorum queues dead-letter it after the delivery limit).
        case retry
        /// Bad input: dead-letter it now, with this reason in the `x-cloudscan-reason` header.
        case deadLetter(reason: String)
        /// Not now: park a copy in the queue's retry tier of at least this many seconds (the
        /// longest when none is that long), then ack. It comes back to the work queue when its TTL
        /// expires, with `x-cloudscan-delays` counting how often it was parked. Unlike `.retry`
        /// it never reaches the delivery limit: for waits that are not the message's fault.
        case delay(seconds: Int, reason: String)
    }

    /// Where ``Outcome/delay(seconds:reason:)`` parks messages: the work queue's retry tiers.
    public struct DelayTarget: Sendable {
        public var publisher: AMQPPublisher
        public var queue: String
        public var delaysSeconds: [Int]
        public init(publisher: AMQPPublisher, queue: String, delaysSeconds: [Int]) {
            self.publisher = publisher
            self.queue = queue
            self.delaysSeconds = delaysSeconds.sorted()
        }

        /// The tier for a wanted delay: the shortest at least that long, else the longest.
        public func tier(for seconds: Int) -> Int? {
            delaysSeconds.first { $0 >= seconds } ?? delaysSeconds.last
        }
    }

    /// Where ``Outcome/deadLetter(reason:)`` publishes the message, with the reason header.
    public struct DeadLetterTarget: Sendable {
        public var publisher: AMQPPublisher
        public var exchange: String
        public var routingKey: String
        public init(publisher: AMQPPublisher, exchange: String, routingKey: String) {
            self.publisher = publisher
            self.exchange = exchange
            self.routingKey = routingKey
        }
    }

    public struct Configuration: Sendable {
        /// Handlers running at once.
        public var concurrency: Int
        /// How long in-flight handlers may run after shutdown begins (keep it below the
        /// orchestrator's grace period).
        public var drainTimeout: Duration
        /// Without a target, `.deadLetter` rejects without requeue (the queue's DLX takes it, with
        /// `x-death` but no reason header).
        public var deadLetter: DeadLetterTarget?
        /// Without a target, `.delay` falls back to `.retry`.
        public var delay: DelayTarget?
        /// Where messages handled, failures, handler durations and in-flight counts go.
        public var metrics: QueueMetrics?

        public init(
            concurrency: Int = 8, drainTimeout: Duration = .seconds(20), deadLetter: DeadLetterTarget? = nil,
            delay: DelayTarget? = nil, metrics: QueueMetrics? = nil
        ) {
            self.concurrency = concurrency
            self.drainTimeout = drainTimeout
            self.deadLetter = deadLetter
            self.delay = delay
            self.metrics = metrics
        }
    }

    public typealias Handler = @Sendable (AMQPDelivery) async throws -> Outcome

    let consumer: AMQPConsumer
    let configuration: Configuration
    let logger: Logger
    let handler: Handler

    public init(consumer: AMQPConsumer, configuration: Configuration, logger: Logger, handler: @escaping Handler) {
        self.consumer = consumer
        self.configuration = configuration
        self.logger = logger
        self.handler = handler
    }

    public func run() async throws {
        let consumer = self.consumer
        enum Finished { case handler, drainDeadline }
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Finished.self) { group in
                var running = 0
                for await delivery in consumer.deliveries {
                    if running >= configuration.concurrency, await group.next() != nil {
                        running -= 1
                    }
                    group.addTask {
                        await handle(delivery)
                        return .handler
                    }
                    running += 1
                }
                // The stream ended: consuming stopped. Let in-flight handlers finish, within the bound.
                let drainTimeout = configuration.drainTimeout
                group.addTask {
                    try? await Task.sleep(for: drainTimeout)
                    return .drainDeadline
                }
                while running > 0, let finished = await group.next() {
                    switch finished {
                    case .handler: running -= 1
                    case .drainDeadline:
                        logger.warning(
                            "handlers still running after the drain timeout; their messages will be redelivered",
                            metadata: ["running": "\(running)"])
                        group.cancelAll()
                    }
                }
                group.cancelAll()
            }
        } onGracefulShutdown: {
            consumer.stopConsuming()
        }
        await consumer.close()
    }

    private func handle(_ delivery: AMQPDelivery) async {
        let metrics = configuration.metrics
        let started = ContinuousClock.now
        metrics?.started()
        let outcome: Outcome
        do {
            outcome = try await LogContext.with(delivery.logFields(queue: consumer.queue), trace: delivery.trace) {
                try await handler(delivery)
            }
        } catch is CancellationError {
            metrics?.abandoned()
            return  // not settled: the broker redelivers it after close
        } catch {
            logger.warning(
                "handler failed; the message goes back to the queue",
                metadata: ["message_id": "\(delivery.message.messageID ?? "-")", "error": "\(error)"])
            metrics?.failed()
            outcome = .retry
        }
        var settledAs: QueueMetrics.Outcome?
        defer {
            metrics?.handlerDuration(.now - started)
            if let settledAs { metrics?.settled(settledAs) } else { metrics?.abandoned() }
        }
        do {
            switch outcome {
            case .ack:
                try await consumer.ack(delivery)
                settledAs = .ack
            case .retry:
                try await consumer.nack(delivery, requeue: true)
                settledAs = .retry
            case .delay(let seconds, let reason):
                guard let target = configuration.delay, let tier = target.tier(for: seconds) else {
                    try await consumer.nack(delivery, requeue: true)
                    settledAs = .retry
                    break
                }
                var copy = delivery.message
                copy.headers["x-cloudscan-delays"] = String(Self.delayCount(copy.headers) + 1)
                copy.headers["x-cloudscan-delay-reason"] = reason
                copy.headers["x-cloudscan-original-routing-key"] =
                    copy.headers["x-cloudscan-original-routing-key"] ?? delivery.routingKey
                try await target.publisher.publish(
                    copy, exchange: "", routingKey: AMQPTopology.retryQueueName(target.queue, delaySeconds: tier))
                try await consumer.ack(delivery)
                settledAs = .delay
                logger.debug(
                    "message parked",
                    metadata: [
                        "message_id": "\(delivery.message.messageID ?? "-")", "seconds": "\(tier)",
                        "reason": "\(reason)",
                    ])
            case .deadLetter(let reason):
                if let target = configuration.deadLetter {
                    var copy = delivery.message
                    copy.headers["x-cloudscan-reason"] = reason
                    copy.headers["x-cloudscan-original-routing-key"] = delivery.routingKey
                    try await target.publisher.publish(copy, exchange: target.exchange, routingKey: target.routingKey)
                    try await consumer.ack(delivery)
                } else {
                    try await consumer.reject(delivery, requeue: false)
                }
                settledAs = .deadLetter
                logger.notice(
                    "message dead-lettered",
                    metadata: ["message_id": "\(delivery.message.messageID ?? "-")", "reason": "\(reason)"])
            }
        } catch {
            logger.warning(
                "could not settle a delivery; the broker will redeliver it",
                metadata: ["message_id": "\(delivery.message.messageID ?? "-")", "error": "\(error)"])
        }
    }
}

extension AMQPDelivery {
    /// This consumer's span of the message's trace (a new trace when it came without one).
    public var trace: TraceContext {
        message.headers[MessageHeaders.traceparent].flatMap(TraceContext.init(traceparent:))?.child()
            ?? TraceContext.root()
    }

    /// What every log line about this message carries: the queue, the message id, the scan (the
    /// fleet's messages name it in `correlation_id`) and the organization header.
    public func logFields(queue: String) -> [String: String] {
        var fields = ["queue": queue, "message_id": message.messageID ?? "-"]
        if let scan = message.correlationID { fields["scan_id"] = scan }
        if let organization = message.headers[MessageHeaders.organizationID] {
            fields["organization_id"] = organization
        }
        return fields
    }
}

extension AMQPConsumerService {
    /// How many times a message was parked in a delay tier (`x-cloudscan-delays`), read from
    /// outside: anything not a small non-negative number counts as 0, so neither arithmetic nor
    /// an index built from it can go wrong.
    public static func delayCount(_ headers: [String: String]) -> Int {
        guard let text = headers["x-cloudscan-delays"], text.utf8.count <= 6, let value = Int(text), value >= 0 else {
            return 0
        }
        return value
    }
}
