import CloudScanAMQP
import CloudScanAuth
import CloudScanCore
import CloudScanInbound
import CloudScanMetrics
import CloudScanPostgres
import CloudScanStore
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// `cloudscan findings-writer`: `cloudscan.findings.ingest` → PostgreSQL, exactly once per finding.
///
/// Each delivery is checked as it arrives — its JSON Schema, then its runner token (an HMAC over
/// scan, organization and attempt) — and queued. One flush at a time takes the queue up to
/// ``Configuration/maximumRows`` rows, or whatever is there once the oldest waited
/// ``Configuration/maximumDelay``, and in one transaction: per organization (row-level security
/// on), checks each message's scan exists there, is of that attempt and takes findings; COPYs the
/// rows into a temporary staging table; `INSERT … SELECT … ON CONFLICT (scan, fingerprint) DO
/// NOTHING` into findings, adding what was really inserted to the scans' counters; records each
/// batch; completes scans whose runner reported completion once their last batch is in; COMMIT.
/// Only then are refused messages dead-lettered (with `x-cloudscan-reason`) and the whole flush
/// acknowledged with one `multiple` ack per channel generation.
///
/// PostgreSQL unreachable: the flush is kept and retried with backoff; nothing is acked or
/// dead-lettered meanwhile (the prefetch bounds what waits in memory). A row the database refuses
/// (a data error no check caught) is found by bisecting the flush and only its message is
/// dead-lettered.
public struct FindingsWriter: Service {
    public struct Configuration: Sendable {
        public var maximumRows: Int
        public var maximumDelay: Duration
        public var retryBackoff: (first: Duration, maximum: Duration)
        public var drainTimeout: Duration
        /// Fault injection for the crash tests (`CLOUDSCAN_FAULT=findings-writer:before-commit` or
        /// `:after-commit`): the flush logs "paused at <point>" and sleeps there, to be SIGKILLed.
        public var pauseAt: PausePoint?
        /// Findings stored by severity (`cloudscan_findings_total`).
        public var metrics: FleetMetrics?
        /// Messages settled, flush durations, in flight and batch sizes of the queue.
        public var queueMetrics: QueueMetrics?

        public enum PausePoint: String, Sendable {
            case beforeCommit = "before-commit"
            case afterCommit = "after-commit"
        }

        public init(
            maximumRows: Int = 5000, maximumDelay: Duration = .milliseconds(50),
            retryBackoff: (first: Duration, maximum: Duration) = (.milliseconds(100), .seconds(5)),
            drainTimeout: Duration = .seconds(20)
        ) {
            self.maximumRows = maximumRows
            self.maximumDelay = maximumDelay
            self.retryBackoff = retryBackoff
            self.drainTimeout = drainTimeout
        }
    }

    private func pause(at point: Configuration.PausePoint) async {
        guard configuration.pauseAt == point else { return }
        logger.critical("paused at \(point.rawValue) (fault injection)")
        try? await Task.sleep(for: .seconds(3600))
    }

    let consumer: AMQPConsumer
    let client: PostgresClient
    let deadLetter: AMQPConsumerService.DeadLetterTarget
    let tokens: RunnerTokenMinter
    let configuration: Configuration
    let logger: Logger
    public let statistics = Statistics()

    public init(
        consumer: AMQPConsumer, client: PostgresClient, deadLetter: AMQPConsumerService.DeadLetterTarget,
        tokens: RunnerTokenMinter, configuration: Configuration = .init(), logger: Logger
    ) {
        self.consumer = consumer
        self.client = client
        self.deadLetter = deadLetter
        self.tokens = tokens
        self.configuration = configuration
        self.logger = logger
    }

    /// Counters (for metrics and tests).
    public final class Statistics: Sendable {
        let values = Mutex<(flushes: Int, inserted: Int, duplicates: Int, deadLettered: Int, retries: Int)>(
            (0, 0, 0, 0, 0))
        public var flushes: Int { values.withLock { $0.flushes } }
        public var inserted: Int { values.withLock { $0.inserted } }
        public var duplicates: Int { values.withLock { $0.duplicates } }
        public var deadLettered: Int { values.withLock { $0.deadLettered } }
        public var retries: Int { values.withLock { $0.retries } }
    }

    /// One delivery, checked.
    struct Item: Sendable {
        var delivery: AMQPDelivery
        var batch: FindingsBatchParser.Batch?
        /// Why it is refused (dead-lettered) without touching the database.
        var refusal: String?
        /// A refused batch whose envelope and token check out: recorded as a refused batch of its
        /// scan, so the scan's completion does not wait for it.
        var refusedEnvelope: FindingsBatchParser.Envelope? = nil
        var rows: Int { batch?.findings.count ?? 0 }
    }

    public func run() async throws {
        let queue = ItemQueue()
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await delivery in consumer.deliveries {
                        configuration.queueMetrics?.started()
                        queue.add(check(delivery))
                    }
                    queue.finish()
                }
                group.addTask { await flushLoop(queue) }
                await group.waitForAll()
            }
        } onGracefulShutdown: {
            consumer.stopConsuming()
        }
        await consumer.close()
    }

    func check(_ delivery: AMQPDelivery) -> Item {
        let batch: FindingsBatchParser.Batch
        do {
            batch = try FindingsBatchParser.parse(delivery.message.body)
        } catch {
            var item = Item(delivery: delivery, batch: nil, refusal: "invalid findings.batch.v1: \(error.reason)")
            if let envelope = error.envelope, delivery.organizationHeaderAgrees(with: envelope.organizationID),
                tokens.verify(
                    envelope.runnerToken, scanID: envelope.scanID, organizationID: envelope.organizationID,
                    attempt: envelope.attempt)
            {
                item.refusedEnvelope = envelope
            }
            return item
        }
        if !delivery.organizationHeaderAgrees(with: batch.organizationID) {
            return Item(
                delivery: delivery, batch: nil,
                refusal: "x-organization-id does not match the body's organization_id")
        }
        guard
            tokens.verify(
                batch.runnerToken, scanID: batch.scanID, organizationID: batch.organizationID, attempt: batch.attempt)
        else {
            return Item(
                delivery: delivery, batch: nil,
                refusal: "runner token does not match the scan, organization and attempt")
        }
        // The batch holds the body (its findings point into it): the delivery's reference goes, so
        // the bytes are held once.
        var kept = delivery
        kept.message.body = []
        return Item(delivery: kept, batch: batch, refusal: nil)
    }

    private func flushLoop(_ queue: ItemQueue) async {
        var drainDeadline: ContinuousClock.Instant?
        while true {
            guard await queue.waitForItems() else { return }
            // Wait for a full flush or the oldest item's delay.
            while queue.rows < configuration.maximumRows, !queue.isFinished,
                let oldest = queue.oldestArrival, ContinuousClock.now - oldest < configuration.maximumDelay
            {
                try? await Task.sleep(for: .milliseconds(2))
            }
            let items = queue.take(rows: configuration.maximumRows)
            if items.isEmpty { continue }
            await flushUntilDone(items, queue: queue, drainDeadline: &drainDeadline)
            if let drainDeadline, ContinuousClock.now >= drainDeadline { return }  // the rest is redelivered
        }
    }

    /// Flushes, retrying transient failures with backoff; then settles the deliveries.
    /// Once consuming stopped (shutdown), what is queued gets the drain timeout, no longer.
    private func flushUntilDone(_ items: [Item], queue: ItemQueue, drainDeadline: inout ContinuousClock.Instant?) async
    {
        var backoff = configuration.retryBackoff.first
        let started = ContinuousClock.now
        while true {
            if queue.isFinished, drainDeadline == nil { drainDeadline = .now + configuration.drainTimeout }
            do {
                let refused = try await flushBisecting(items)
                try await settle(items, refused: refused)
                if let metrics = configuration.queueMetrics {
                    metrics.handlerDuration(.now - started)
                    metrics.batch(messages: items.count, rows: items.reduce(0) { $0 + $1.rows })
                    metrics.settled(.deadLetter, count: refused.count)
                    metrics.settled(.ack, count: items.count - refused.count)
                }
                return
            } catch {
                statistics.values.withLock { $0.retries += 1 }
                if let drainDeadline, ContinuousClock.now >= drainDeadline {
                    configuration.queueMetrics?.abandoned(items.count)
                    logger.warning(
                        "shutting down with an unwritten flush; its messages will be redelivered",
                        metadata: ["messages": "\(items.count)", "error": "\(error)"])
                    return
                }
                logger.warning(
                    "findings flush failed; keeping it and retrying",
                    metadata: ["messages": "\(items.count)", "error": "\(error)", "retry_in": "\(backoff)"])
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, configuration.retryBackoff.maximum)
            }
        }
    }

    /// Writes the items; returns the refused ones (by delivery tag and generation) with reasons. A
    /// data error splits the flush in halves until the message at fault is alone.
    private func flushBisecting(_ items: [Item]) async throws -> [ItemKey: String] {
        do {
            return try await flush(items)
        } catch let error as PostgresError where error.isDataError {
            if items.count == 1 {
                return [ItemKey(items[0].delivery): "refused by the database: \(error.sqlState ?? "-")"]
            }
            let middle = items.count / 2
            var refused = try await flushBisecting(Array(items[..<middle]))
            refused.merge(try await flushBisecting(Array(items[middle...]))) { a, _ in a }
            return refused
        }
    }

    struct ItemKey: Hashable {
        var generation: UInt64
        var tag: UInt64
        init(_ delivery: AMQPDelivery) {
            generation = delivery.generation
            tag = delivery.deliveryTag
        }
    }

    /// One transaction for the items; returns the ones refused by the scan checks.
    func flush(_ items: [Item]) async throws -> [ItemKey: String] {
        var refused: [ItemKey: String] = [:]
        for item in items { if let refusal = item.refusal { refused[ItemKey(item.delivery)] = refusal } }
        let valid = items.filter { $0.batch != nil && $0.refusal == nil }
        var byOrganization: [UUID: [Item]] = [:]
        for item in valid { byOrganization[item.batch!.organizationID, default: []].append(item) }
        for item in items {
            if let envelope = item.refusedEnvelope { byOrganization[envelope.organizationID, default: []].append(item) }
        }
        if byOrganization.isEmpty { return refused }
        let rows = valid.reduce(0) { $0 + $1.rows }
        let (inserted, duplicates, insertedBySeverity) = try await client.withTransaction { c in
            try await c.executeScript(
                """
                CREATE TEMP TABLE IF NOT EXISTS findings_staging (
                    organization_id uuid, scan_id uuid, scan_created_at timestamptz, scanner text, rule_id text,
                    severity text, title text, message text, path text, line integer, "column" integer, cwe text[],
                    fingerprint text, raw jsonb
                ) ON COMMIT DELETE ROWS
                """)
            // 1. Per organization, with its row-level security: which scans take these findings.
            var accepted: [(item: Item, createdAt: Date, micros: Int64)] = []
            var refusedBatches: [UUID: [JSONValue]] = [:]
            for (organizationID, group) in byOrganization {
                try await setOrganization(c, organizationID)
                let ids = Array(Set(group.map { $0.batch?.scanID ?? $0.refusedEnvelope!.scanID }))
                let scans = try await c.query(
                    """
                    SELECT id, created_at, status, attempt, (extract(epoch FROM created_at) * 1000000)::int8
                    FROM scans WHERE id = ANY(\(ids.map(\.uuidString))::uuid[])
                    """)
                var found: [UUID: (createdAt: Date, status: ScanStatus, attempt: Int, micros: Int64)] = [:]
                for row in scans {
                    let id = try row.decode(UUID.self, at: 0)
                    found[id] = (
                        try row.decode(Date.self, at: 1),
                        ScanStatus(rawValue: try row.decode(String.self, at: 2)) ?? .failed,
                        try row.decode(Int.self, at: 3),
                        Int64(try row.decode(Int.self, at: 4))
                    )
                }
                // Batches already recorded for finished scans: a redelivery of one is a duplicate
                // (acked, written as nothing new); any other batch for a finished scan is refused.
                let finishedIDs = found.filter { $0.value.status.isFinal }.map(\.key)
                var recorded: Set<String> = []
                if !finishedIDs.isEmpty {
                    for row in try await c.query(
                        """
                        SELECT scan_id, attempt, batch_index FROM scan_findings_batches
                        WHERE scan_id = ANY(\(finishedIDs.map(\.uuidString))::uuid[])
                        """)
                    {
                        recorded.insert(
                            "\(try row.decode(UUID.self, at: 0)):\(try row.decode(Int.self, at: 1)):\(try row.decode(Int.self, at: 2))"
                        )
                    }
                }
                for item in group {
                    if let envelope = item.refusedEnvelope {
                        if let scan = found[envelope.scanID], scan.attempt == envelope.attempt {
                            refusedBatches[organizationID, default: []].append(
                                Self.batchRecord(
                                    scanID: envelope.scanID, createdAt: scan.createdAt, attempt: envelope.attempt,
                                    batchIndex: envelope.batchIndex, findings: 0,
                                    refusedReason: refused[ItemKey(item.delivery)]))
                        }
                        continue
                    }
                    let batch = item.batch!
                    guard let scan = found[batch.scanID] else {
                        refused[ItemKey(item.delivery)] =
                            "scan \(batch.scanID) does not exist in organization \(organizationID)"
                        continue
                    }
                    guard batch.attempt == scan.attempt else {
                        refused[ItemKey(item.delivery)] =
                            "attempt \(batch.attempt) is not the scan's current attempt \(scan.attempt)"
                        continue
                    }
                    guard
                        [.dispatched, .running].contains(scan.status)
                            || recorded.contains("\(batch.scanID):\(batch.attempt):\(batch.batchIndex)")
                    else {
                        refused[ItemKey(item.delivery)] =
                            "scan is \(scan.status.rawValue): a \(scan.status.isFinal ? "finished" : "waiting") scan takes no findings"
                        continue
                    }
                    accepted.append((item, scan.createdAt, scan.micros))
                }
            }
            // 2. COPY every accepted row into the staging table.
            if accepted.contains(where: { $0.item.rows > 0 }) {
                let payload = accepted.map { ($0.item.batch!, $0.micros) }
                try await c.copyFrom(
                    """
                    COPY findings_staging (organization_id, scan_id, scan_created_at, scanner, rule_id, severity, title,
                                           message, path, line, "column", cwe, fingerprint, raw) FROM STDIN (FORMAT binary)
                    """
                ) { writer in
                    try writer.writeBinary(rows: 0) { $0.append(contentsOf: FindingsCopyRows.header) }
                    for (batch, micros) in payload {
                        try writer.writeBinary(rows: batch.findings.count) {
                            FindingsCopyRows.append(batch, createdAt: micros, to: &$0)
                        }
                    }
                    try writer.writeBinary(rows: 0) { $0.append(contentsOf: FindingsCopyRows.trailer) }
                }
            }
            // 3. Per organization: insert what is new, count it on the scans, record the batches.
            var inserted = 0
            var bySeverity: [String: Int] = [:]
            var acceptedByOrganization: [UUID: [(item: Item, createdAt: Date, micros: Int64)]] = [:]
            for entry in accepted {
                acceptedByOrganization[entry.item.batch!.organizationID, default: []].append(entry)
            }
            for organizationID in refusedBatches.keys where acceptedByOrganization[organizationID] == nil {
                acceptedByOrganization[organizationID] = []
            }
            for (organizationID, group) in acceptedByOrganization {
                try await setOrganization(c, organizationID)
                if group.contains(where: { $0.item.rows > 0 }) {
                    let counted = try await c.query(
                        """
                        WITH new AS (
                            INSERT INTO findings (organization_id, scan_id, scan_created_at, scanner, rule_id, severity,
                                                  title, message, path, line, "column", cwe, fingerprint, raw)
                            SELECT organization_id, scan_id, scan_created_at, scanner, rule_id, severity, title,
                                   coalesce(message, ''), coalesce(path, ''), line, "column", coalesce(cwe, '{}'),
                                   fingerprint, raw
                            FROM findings_staging WHERE organization_id = \(organizationID)
                            ON CONFLICT (scan_id, scan_created_at, fingerprint) DO NOTHING
                            RETURNING scan_id, scan_created_at, severity
                        ), per_scan AS (
                            SELECT scan_id, scan_created_at,
                                   count(*) FILTER (WHERE severity = 'critical') AS critical,
                                   count(*) FILTER (WHERE severity = 'high') AS high,
                                   count(*) FILTER (WHERE severity = 'medium') AS medium,
                                   count(*) FILTER (WHERE severity = 'low') AS low,
                                   count(*) FILTER (WHERE severity = 'info') AS info
                            FROM new GROUP BY scan_id, scan_created_at
                        )
                        UPDATE scans s
                        SET findings_critical = s.findings_critical + p.critical, findings_high = s.findings_high + p.high,
                            findings_medium = s.findings_medium + p.medium, findings_low = s.findings_low + p.low,
                            findings_info = s.findings_info + p.info, updated_at = now()
                        FROM per_scan p
                        WHERE s.id = p.scan_id AND s.created_at = p.scan_created_at
                        RETURNING p.critical, p.high, p.medium, p.low, p.info
                        """)
                    for row in counted {
                        for (index, severity) in Self.severities.enumerated() {
                            let count = try row.decode(Int.self, at: index)
                            inserted += count
                            bySeverity[severity, default: 0] += count
                        }
                    }
                }
                let batches =
                    group.map { entry -> JSONValue in
                        let batch = entry.item.batch!
                        return Self.batchRecord(
                            scanID: batch.scanID, createdAt: entry.createdAt, attempt: batch.attempt,
                            batchIndex: batch.batchIndex, findings: batch.findings.count, refusedReason: nil)
                    } + (refusedBatches[organizationID] ?? [])
                try await c.execute(
                    """
                    INSERT INTO scan_findings_batches (organization_id, scan_id, scan_created_at, attempt, batch_index,
                                                       findings, refused_reason)
                    SELECT \(organizationID), b.scan_id, b.scan_created_at, b.attempt, b.batch_index, b.findings,
                           b.refused_reason
                    FROM jsonb_to_recordset(\(PostgresJSONB(text: JSONValue.array(batches).jsonText)))
                         AS b(scan_id uuid, scan_created_at timestamptz, attempt integer, batch_index integer,
                              findings integer, refused_reason text)
                    ON CONFLICT (scan_id, attempt, batch_index) DO NOTHING
                    """)
                // 4. A scan whose runner reported completion may now have every batch. Always asked
                // (it locks the rows), so a completion committed while this ran is seen.
                var scanIDs = Set(group.map { $0.item.batch!.scanID })
                for record in refusedBatches[organizationID] ?? [] {
                    if let id = record["scan_id"]?.stringValue.flatMap(UUID.init(uuidString:)) { scanIDs.insert(id) }
                }
                // A completion event continues the trace of its scan's last batch.
                var traces: [UUID: TraceContext] = [:]
                for entry in group {
                    if let trace = entry.item.delivery.message.headers[MessageHeaders.traceparent].flatMap(
                        TraceContext.init(traceparent:))
                    {
                        traces[entry.item.batch!.scanID] = trace.child()
                    }
                }
                try await RunnerCompletion.completeIfAllBatchesIn(
                    c, scanIDs: Array(scanIDs), organizationID: organizationID, actor: "findings-writer",
                    traces: traces)
            }
            await pause(at: .beforeCommit)
            return (inserted, rows - inserted, bySeverity)
        }
        await pause(at: .afterCommit)
        if let metrics = configuration.metrics {
            for (severity, count) in insertedBySeverity where count > 0 {
                metrics.findings(severity).increment(by: Int64(count))
            }
        }
        statistics.values.withLock {
            $0.flushes += 1
            $0.inserted += inserted
            $0.duplicates += max(duplicates, 0)
        }
        return refused
    }

    static let severities = ["critical", "high", "medium", "low", "info"]

    static func batchRecord(
        scanID: UUID, createdAt: Date, attempt: Int, batchIndex: Int, findings: Int, refusedReason: String?
    ) -> JSONValue {
        .object([
            "scan_id": .string(scanID.uuidString.lowercased()),
            "scan_created_at": .string(RFC3339.string(from: createdAt, fractionDigits: 6)),
            "attempt": .int(attempt), "batch_index": .int(batchIndex), "findings": .int(findings),
            "refused_reason": refusedReason.map { .string(String($0.prefix(1024))) } ?? .null,
        ])
    }

    private func setOrganization(_ c: PostgresConnection, _ organizationID: UUID) async throws {
        try await c.query(
            "SELECT set_config('cloudscan.organization_id', \(organizationID.uuidString.lowercased()), true)")
    }

    /// Dead-letters the refused, then acks everything with one `multiple` ack per generation.
    private func settle(_ items: [Item], refused: [ItemKey: String]) async throws {
        for item in items {
            guard let reason = refused[ItemKey(item.delivery)] else { continue }
            var copy = item.delivery.message
            if copy.body.isEmpty, let batch = item.batch { copy.body = batch.jsonBody() }
            copy.headers["x-cloudscan-reason"] = String(reason.prefix(1024))
            copy.headers["x-cloudscan-original-routing-key"] = item.delivery.routingKey
            try await deadLetter.publisher.publish(
                copy, exchange: deadLetter.exchange, routingKey: deadLetter.routingKey)
            statistics.values.withLock { $0.deadLettered += 1 }
            logger.notice(
                "findings message dead-lettered",
                metadata: ["message_id": "\(item.delivery.message.messageID ?? "-")", "reason": "\(reason)"])
        }
        var last: [UInt64: AMQPDelivery] = [:]
        for item in items where (last[item.delivery.generation]?.deliveryTag ?? 0) < item.delivery.deliveryTag {
            last[item.delivery.generation] = item.delivery
        }
        for delivery in last.values {
            do {
                try await consumer.ack(delivery, multiple: true)
            } catch {
                // An earlier connection's deliveries: the broker redelivers them, and the rows are
                // already in (ON CONFLICT DO NOTHING makes the second write a no-op).
                logger.info("could not ack a flush of an earlier connection", metadata: ["error": "\(error)"])
            }
        }
    }
}

/// The findings writer's queue: items in delivery order, with their row count and age.
final class ItemQueue: Sendable {
    private struct State {
        var items: [(item: FindingsWriter.Item, arrived: ContinuousClock.Instant)] = []
        var rows = 0
        var finished = false
        var waiter: CheckedContinuation<Bool, Never>?
    }
    private let state = Mutex(State())

    func add(_ item: FindingsWriter.Item) {
        let waiter = state.withLock { state -> CheckedContinuation<Bool, Never>? in
            state.items.append((item, .now))
            state.rows += max(item.rows, 1)
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: true)
    }

    func finish() {
        let waiter = state.withLock { state -> CheckedContinuation<Bool, Never>? in
            state.finished = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: false)
    }

    /// True once something is queued; false when the queue is finished and empty.
    func waitForItems() async -> Bool {
        await withCheckedContinuation { continuation in
            let answer: Bool? = state.withLock { state in
                if !state.items.isEmpty { return true }
                if state.finished { return false }
                state.waiter = continuation
                return nil
            }
            if let answer { continuation.resume(returning: answer) }
        }
    }

    var rows: Int { state.withLock { $0.rows } }
    var isFinished: Bool { state.withLock { $0.finished } }
    var oldestArrival: ContinuousClock.Instant? { state.withLock { $0.items.first?.arrived } }

    /// Items from the front, up to `rows` rows (at least one item).
    func take(rows limit: Int) -> [FindingsWriter.Item] {
        state.withLock { state in
            var taken = 0
            var count = 0
            for entry in state.items {
                let rows = max(entry.item.rows, 1)
                if count > 0 && taken + rows > limit { break }
                taken += rows
                count += 1
            }
            let out = state.items.prefix(count).map(\.item)
            state.items.removeFirst(count)
            state.rows -= taken
            return out
        }
    }
}

extension AMQPDelivery {
    /// The `x-organization-id` header, when present, names the body's organization.
    func organizationHeaderAgrees(with organizationID: UUID) -> Bool {
        guard let header = message.headers[MessageHeaders.organizationID] else { return true }
        return UUID(uuidString: header) == organizationID
    }
}
