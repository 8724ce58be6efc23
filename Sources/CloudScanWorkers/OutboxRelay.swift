import CloudScanAMQP
import CloudScanCore
import CloudScanMetrics
import CloudScanPostgres
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// Publishes outbox rows to the broker with confirms and marks them sent.
///
/// Woken by `NOTIFY cloudscan_outbox` (a trigger on insert) and by a periodic sweep. Rows are
/// claimed with `FOR UPDATE SKIP LOCKED` inside a transaction that lasts until they are marked,
/// so relays can run side by side; a row is marked sent only after the broker confirmed it. When
/// the broker is away, rows are marked failed with a retry time and wait: nothing is lost, and a
/// crash between the confirm and the mark only means the row is published again (consumers
/// deduplicate by `message_id`).
public struct OutboxRelay: Service {
    public struct Configuration: Sendable {
        /// Rows claimed per transaction.
        public var batchSize: Int
        /// How often to look without a notification.
        public var sweepInterval: Duration
        /// Wait before retrying rows whose publish failed.
        public var retryDelay: Duration
        /// Where published rows, scan state changes (`cloudscan_scans_total` from the `scan.<status>`
        /// events, scan durations from the final ones) and the outbox's lag are counted.
        public var metrics: FleetMetrics?
        /// How often the lag is measured.
        public var lagInterval: Duration

        public init(
            batchSize: Int = 200, sweepInterval: Duration = .seconds(1), retryDelay: Duration = .seconds(1),
            metrics: FleetMetrics? = nil, lagInterval: Duration = .seconds(5)
        ) {
            self.batchSize = batchSize
            self.sweepInterval = sweepInterval
            self.retryDelay = retryDelay
            self.metrics = metrics
            self.lagInterval = lagInterval
        }
    }

    let client: PostgresClient
    let listener: PostgresListener
    let publisher: AMQPPublisher
    let configuration: Configuration
    let logger: Logger

    public init(
        client: PostgresClient, listener: PostgresListener, publisher: AMQPPublisher, configuration: Configuration,
        logger: Logger
    ) {
        self.client = client
        self.listener = listener
        self.publisher = publisher
        self.configuration = configuration
        self.logger = logger
    }

    /// Relays until graceful shutdown (or cancellation).
    public func run() async throws {
        let wake = WakeSignal()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for await event in listener.events(channels: ["cloudscan_outbox"]) {
                    if Task.isCancelled { break }
                    if case .listening = event {} else { wake.signal() }
                }
            }
            group.addTask {
                // Graceful shutdown ends the loop between batches, never inside one: a batch whose
                // publishes were confirmed is marked sent before the process exits, so a drain does
                // not publish anything twice.
                await withGracefulShutdownHandler {
                    var lagMeasured = ContinuousClock.now - configuration.lagInterval
                    while !Task.isCancelled, !Task.isShuttingDownGracefully {
                        if let metrics = configuration.metrics,
                            ContinuousClock.now - lagMeasured >= configuration.lagInterval
                        {
                            lagMeasured = .now
                            await measureLag(metrics)
                        }
                        let relayed: Int
                        do {
                            relayed = try await relayBatch()
                        } catch is CancellationError {
                            return
                        } catch {
                            logger.warning("outbox relay pass failed", metadata: ["error": "\(error)"])
                            relayed = 0
                        }
                        if relayed < configuration.batchSize, !Task.isShuttingDownGracefully {
                            await wake.wait(upTo: configuration.sweepInterval)
                        }
                    }
                } onGracefulShutdown: {
                    wake.signal()
                }
            }
            try await group.next()
            group.cancelAll()
        }
    }

    private func measureLag(_ metrics: FleetMetrics) async {
        do {
            guard let row = try await client.query("SELECT pending, oldest_due_seconds FROM outbox_lag()").first
            else { return }
            metrics.outboxBacklog(
                pending: try row.decode(Int.self, at: 0), oldestAgeSeconds: try row.decode(Double.self, at: 1))
        } catch {
            logger.debug("outbox lag not measured", metadata: ["error": "\(error)"])
        }
    }

    /// Claims one batch, publishes it, marks what was confirmed. Returns how many rows it claimed.
    @discardableResult
    public func relayBatch() async throws -> Int {
        let (claimed, published) = try await relayClaimed()
        if let metrics = configuration.metrics {
            metrics.outbox(published: published.count, failed: claimed - published.count)
            for message in published where message.type == MessageType.scanEvent.rawValue {
                guard let event = try? MessageCoding.decoder().decode(ScanEventMessage.self, from: Data(message.body))
                else { continue }
                metrics.scans(event.status.rawValue).increment()
                if event.status.isFinal, let queuedAt = event.queuedAt {
                    metrics.scanFinished(after: event.at.timeIntervalSince(queuedAt))
                }
            }
        }
        return claimed
    }

    /// One claimed batch: how many rows, and the messages the broker confirmed (counted once the
    /// transaction that marks them committed).
    private func relayClaimed() async throws -> (Int, [AMQPMessage]) {
        let publisher = self.publisher
        let retryDelay = configuration.retryDelay
        return try await client.withTransaction { c in
            let rows = try await c.query("SELECT * FROM outbox_claim(\(Int32(configuration.batchSize)))")
            guard !rows.isEmpty else { return (0, []) }
            struct Row: Sendable {
                var id: Int64
                var message: AMQPMessage
                var exchange: String
                var routingKey: String
            }
            let claimed: [Row] = try rows.map { row in
                let headers = try row.decode(PostgresJSONB.self, "headers").decode([String: String].self)
                let payload = try row.decode(PostgresJSONB.self, "payload")
                return Row(
                    id: try row.decode(Int64.self, "id"),
                    message: AMQPMessage(
                        body: Array(payload.text.utf8), contentType: "application/json",
                        type: try row.decode(String.self, "message_type"),
                        messageID: try row.decode(UUID.self, "message_id").uuidString.lowercased(),
                        correlationID: try row.decode(String?.self, "correlation_id"),
                        timestamp: try row.decode(Date.self, "created_at"), appID: "cloudscan-relay", headers: headers),
                    exchange: try row.decode(String.self, "exchange"),
                    routingKey: try row.decode(String.self, "routing_key"))
            }
            // Publish the batch concurrently; each result comes back with its row id.
            let outcomes = await withTaskGroup(of: (Int64, String?).self) { group in
                for row in claimed {
                    group.addTask {
                        do {
                            // Commands must reach a queue (unroutable = not published, try again);
                            // events are notifications: no subscriber for one is not a failure.
                            try await publisher.publish(
                                row.message, exchange: row.exchange, routingKey: row.routingKey,
                                mandatory: row.exchange != Exchanges.events)
                            return (row.id, nil)
                        } catch {
                            return (row.id, "\(error)")
                        }
                    }
                }
                var results: [(Int64, String?)] = []
                for await result in group { results.append(result) }
                return results
            }
            let sent = outcomes.filter { $0.1 == nil }.map(\.0)
            let failed = outcomes.filter { $0.1 != nil }
            if !sent.isEmpty {
                try await c.query("SELECT outbox_mark_sent(\(sent.map(String.init))::bigint[])")
            }
            if let firstError = failed.first?.1 {
                let seconds = Double(retryDelay.components.seconds) + Double(retryDelay.components.attoseconds) / 1e18
                try await c.query(
                    """
                    SELECT outbox_mark_failed(\(failed.map { String($0.0) })::bigint[], \(firstError),
                                              make_interval(secs => \(seconds)))
                    """)
                logger.warning(
                    "outbox rows not confirmed; they wait for the next pass",
                    metadata: ["count": "\(failed.count)", "error": "\(firstError)"])
            }
            let sentIDs = Set(sent)
            return (claimed.count, claimed.filter { sentIDs.contains($0.id) }.map(\.message))
        }
    }
}

/// A wake-up that can be signalled before anyone waits (it is remembered once).
final class WakeSignal: Sendable {
    private struct State {
        var pending = false
        var waiter: CheckedContinuation<Void, Never>?
    }
    private let state = Mutex(State())

    func signal() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            state.pending = true
            return nil
        }
        waiter?.resume()
    }

    /// Returns on a signal (or one that came earlier), after `timeout`, or on cancellation.
    func wait(upTo timeout: Duration) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await withTaskCancellationHandler {
                    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                        let resumeNow = self.state.withLock { state -> Bool in
                            if state.pending {
                                state.pending = false
                                return true
                            }
                            // Cancelled before the waiter was stored: onCancel found nothing to resume.
                            if Task.isCancelled { return true }
                            state.waiter = continuation
                            return false
                        }
                        if resumeNow { continuation.resume() }
                    }
                } onCancel: {
                    let waiter = self.state.withLock { state -> CheckedContinuation<Void, Never>? in
                        defer { state.waiter = nil }
                        return state.waiter
                    }
                    waiter?.resume()
                }
            }
            group.addTask { try? await Task.sleep(for: timeout) }
            await group.next()
            group.cancelAll()
        }
    }
}
