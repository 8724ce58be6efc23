import CloudScanAMQP
import CloudScanAuth
import CloudScanCore
import CloudScanInbound
import CloudScanPostgres
import CloudScanStore
import Foundation
import Logging

/// `cloudscan status-writer`: runner reports (`cloudscan.status.ingest`) → scan state.
///
/// Every move is conditional on the scan's current status and attempt, so late, duplicate or
/// reordered reports never move a scan backwards, and a report of an earlier attempt changes
/// nothing of a later one:
/// - started: dispatched → running.
/// - heartbeat: refreshes `heartbeat_at` (a heartbeat before its started also means running).
/// - completed: the report is kept on the scan with the number of findings batches the runner
///   published; the scan becomes completed when every batch is written — now, or by the findings
///   writer when the last one lands (``RunnerCompletion``).
/// - failed: dispatched/running → failed with the runner's reason.
/// A report for a scan the organization does not have, or with a token that does not match its
/// scan, organization and attempt, is dead-lettered.
public struct StatusWriter: Sendable {
    let client: PostgresClient
    let tokens: RunnerTokenMinter
    let logger: Logger

    public init(client: PostgresClient, tokens: RunnerTokenMinter, logger: Logger) {
        self.client = client
        self.tokens = tokens
        self.logger = logger
    }

    /// Decodes and checks a report against status.report.v1 (``StatusReportParser``).
    public static func parse(_ body: [UInt8]) -> Result<StatusReportMessage, FindingsBatchParser.Invalid> {
        StatusReportParser.parse(body)
    }

    /// The handler for `cloudscan.status.ingest`.
    public func handle(_ delivery: AMQPDelivery) async throws -> AMQPConsumerService.Outcome {
        let report: StatusReportMessage
        switch Self.parse(delivery.message.body) {
        case .failure(let invalid): return .deadLetter(reason: "invalid status.report.v1: \(invalid.reason)")
        case .success(let parsed): report = parsed
        }
        if !delivery.organizationHeaderAgrees(with: report.organizationID) {
            return .deadLetter(reason: "x-organization-id does not match the body's organization_id")
        }
        guard
            tokens.verify(
                report.runnerToken, scanID: report.scanID, organizationID: report.organizationID,
                attempt: report.attempt)
        else { return .deadLetter(reason: "runner token does not match the scan, organization and attempt") }
        let messageID = delivery.message.messageID
        do {
            return try await client.withTransaction(organizationID: report.organizationID) { c in
                try await apply(c, report, messageID: messageID)
            }
        } catch let error as PostgresError where error.isDataError {
            logger.warning("status report refused by PostgreSQL", metadata: ["error": "\(error)"])
            return .deadLetter(reason: "refused by PostgreSQL: SQLSTATE \(error.sqlState ?? "-")")
        } catch let error as PostgresError where error.code != .server || error.isSerializationFailure {
            // The database is away or the move lost a race: not the message's fault.
            logger.warning("status report not applied yet", metadata: ["error": "\(error)"])
            return .delay(seconds: 5, reason: "database unavailable")
        }
    }

    func apply(_ c: PostgresConnection, _ report: StatusReportMessage, messageID: String?) async throws
        -> AMQPConsumerService.Outcome
    {
        guard
            let row = try await c.query(
                "SELECT created_at, project_id, status, attempt FROM scans WHERE id = \(report.scanID) FOR UPDATE"
            ).first
        else {
            return .deadLetter(reason: "scan \(report.scanID) does not exist in organization \(report.organizationID)")
        }
        let target = ScanTransitions.Target(
            scanID: report.scanID, createdAt: try row.decode(Date.self, at: 0),
            organizationID: report.organizationID, projectID: try row.decode(UUID.self, at: 1))
        var status = ScanStatus(rawValue: try row.decode(String.self, at: 2)) ?? .failed
        let attempt = try row.decode(Int.self, at: 3)
        let log: Logger.Metadata = [
            "scan_id": "\(report.scanID.uuidString.lowercased())", "kind": "\(report.kind.rawValue)",
            "attempt": "\(report.attempt)",
            "status": "\(status.rawValue)",
        ]
        if status.isFinal {
            // A redelivery of the report that finished it is a duplicate; anything else is a
            // runner credential used after its scan ended.
            let seen = try await c.query(
                """
                SELECT 1 FROM scan_events WHERE scan_id = \(report.scanID) AND message_id = \(messageID)
                UNION ALL
                SELECT 1 FROM scans WHERE id = \(report.scanID) AND completion_report->>'message_id' = \(messageID)
                """)
            if messageID != nil && !seen.isEmpty {
                logger.debug("report for a finished scan seen before", metadata: log)
                return .ack
            }
            return .deadLetter(
                reason: "scan \(report.scanID) is \(status.rawValue): a finished scan takes no more reports")
        }
        guard report.attempt == attempt else {
            logger.info(
                "report of another attempt ignored",
                metadata: log.merging(["current_attempt": "\(attempt)"]) { a, _ in a })
            return .ack
        }
        guard status == .dispatched || status == .running else {
            logger.debug("report for a scan no longer active ignored", metadata: log)
            return .ack
        }
        let actor = "runner"
        if status == .dispatched {
            let why = report.kind == .started ? "runner started" : "\(report.kind.rawValue) report before started"
            try await ScanTransitions.move(
                c, target, from: .dispatched, to: .running, attempt: attempt, actor: actor, reason: why,
                messageID: messageID)
            status = .running
        }
        switch report.kind {
        case .started:
            break
        case .heartbeat:
            try await c.execute(
                """
                UPDATE scans SET heartbeat_at = greatest(heartbeat_at, \(report.at)), updated_at = now()
                WHERE id = \(report.scanID) AND created_at = \(target.createdAt) AND status = 'running'
                """)
        case .failed:
            try await ScanTransitions.move(
                c, target, from: .running, to: .failed, attempt: attempt, actor: actor,
                reason: report.reason ?? "runner_failed", messageID: messageID, failureMessage: report.message)
        case .completed:
            let details = try JSONDecoder().decode(JSONValue.self, from: MessageCoding.encoder().encode(report))
            var kept = details.objectValue ?? [:]
            kept.removeValue(forKey: "runner_token")
            kept["message_id"] = messageID.map { .string($0) } ?? .null
            try await c.execute(
                """
                UPDATE scans SET expected_batches = \(Int32(report.findingsBatches ?? 0)),
                                 completion_report = \(PostgresJSONB(text: JSONValue.object(kept).jsonText)),
                                 heartbeat_at = greatest(heartbeat_at, \(report.at)), updated_at = now()
                WHERE id = \(report.scanID) AND created_at = \(target.createdAt) AND status = 'running'
                """)
            try await RunnerCompletion.completeIfAllBatchesIn(
                c, scanIDs: [report.scanID], organizationID: report.organizationID, actor: "status-writer")
        }
        logger.info("status report applied", metadata: log)
        return .ack
    }
}

/// The join of a runner's completed report and its findings batches: whichever writer comes
/// last (both lock the scan's row, so one of them sees the other's commit) completes the scan.
public enum RunnerCompletion {
    /// For each scan (in the caller's transaction, organization set): if it is running with a
    /// completed report and every batch of its attempt is recorded, move it to completed.
    /// `traces`: the trace each scan's completion event continues (else the task's).
    public static func completeIfAllBatchesIn(
        _ c: PostgresConnection, scanIDs: [UUID], organizationID: UUID, actor: String,
        traces: [UUID: TraceContext] = [:]
    ) async throws {
        // Lock first (in id order, against deadlocks), then count in a statement of its own, so
        // the count sees whatever committed while this waited for the lock.
        let rows = try await c.query(
            """
            SELECT id, created_at, project_id, attempt, expected_batches, completion_report
            FROM scans
            WHERE id = ANY(\(scanIDs.map(\.uuidString))::uuid[]) AND status = 'running' AND completion_report IS NOT NULL
            ORDER BY id FOR UPDATE
            """)
        guard !rows.isEmpty else { return }
        var pending: [UUID: (target: ScanTransitions.Target, attempt: Int, expected: Int, report: String)] = [:]
        for row in rows {
            let id = try row.decode(UUID.self, at: 0)
            pending[id] = (
                ScanTransitions.Target(
                    scanID: id, createdAt: try row.decode(Date.self, at: 1), organizationID: organizationID,
                    projectID: try row.decode(UUID.self, at: 2)),
                try row.decode(Int.self, at: 3), try row.decode(Int?.self, at: 4) ?? 0,
                try row.decode(String.self, at: 5)
            )
        }
        let counts = try await c.query(
            """
            SELECT b.scan_id, count(*), count(*) FILTER (WHERE b.refused_reason IS NOT NULL)
            FROM scan_findings_batches b JOIN scans s
                ON s.id = b.scan_id AND s.created_at = b.scan_created_at AND s.attempt = b.attempt
            WHERE b.scan_id = ANY(\(pending.keys.map(\.uuidString))::uuid[])
            GROUP BY b.scan_id
            """)
        var recorded: [UUID: Int] = [:]
        var refused: [UUID: Int] = [:]
        for row in counts {
            let id = try row.decode(UUID.self, at: 0)
            recorded[id] = try row.decode(Int.self, at: 1)
            refused[id] = try row.decode(Int.self, at: 2)
        }
        for (id, scan) in pending where recorded[id, default: 0] >= scan.expected {
            let report = (try? JSONDecoder().decode(JSONValue.self, from: Data(scan.report.utf8))) ?? .object([:])
            let partial = report["partial"] == .bool(true) || refused[id, default: 0] > 0
            var details: [String: JSONValue] = [
                "batches": .int(scan.expected), "refused_batches": .int(refused[id, default: 0]),
            ]
            for key in ["counts", "scanners", "partial", "message"] {
                if let value = report[key] { details[key] = value }
            }
            try await TraceContext.$current.withValue(traces[id] ?? TraceContext.current) {
                try await ScanTransitions.move(
                    c, scan.target, from: .running, to: .completed, attempt: scan.attempt, actor: actor,
                    reason: partial ? "partial" : "completed", messageID: report["message_id"]?.stringValue,
                    details: .object(details))
            }
        }
    }
}
