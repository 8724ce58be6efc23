import CloudScanCore
import CloudScanPostgres
import Foundation

/// Scan state moves as every role makes them: a conditional `UPDATE … WHERE status = from`, its
/// scan_events row, and the `scan.<status>` event in the outbox — all in the caller's transaction
/// (which has the scan's organization set). A move whose `from` no longer holds changes nothing.
public enum ScanTransitions {
    /// The scan a move applies to.
    public struct Target: Sendable {
        public var scanID: UUID
        public var createdAt: Date
        public var organizationID: UUID
        public var projectID: UUID

        public init(scanID: UUID, createdAt: Date, organizationID: UUID, projectID: UUID) {
            self.scanID = scanID
            self.createdAt = createdAt
            self.organizationID = organizationID
            self.projectID = projectID
        }
    }

    /// Moves the scan `from` → `to`; returns whether it moved. With `expectedAttempt`, only a scan
    /// still on that attempt moves.
    @discardableResult
    public static func move(
        _ c: PostgresConnection, _ target: Target, from: ScanStatus, to: ScanStatus, attempt: Int, actor: String,
        reason: String?, messageID: String?, jobName: String? = nil, failureMessage: String? = nil,
        details: JSONValue? = nil, expectedAttempt: Int? = nil
    ) async throws -> Bool {
        let rows = try await c.query(
            """
            UPDATE scans
            SET status = \(to.rawValue), attempt = \(Int32(attempt)), version = version + 1, updated_at = now(),
                job_name = coalesce(\(jobName), job_name),
                dispatched_at = CASE WHEN \(to.rawValue) = 'dispatched' THEN now() ELSE dispatched_at END,
                started_at = CASE WHEN \(to.rawValue) = 'running' THEN coalesce(started_at, now()) ELSE started_at END,
                heartbeat_at = CASE WHEN \(to.rawValue) = 'running' THEN now() ELSE heartbeat_at END,
                finished_at = CASE WHEN \(to.isFinal) THEN now() ELSE finished_at END,
                failure_reason = CASE WHEN \(to.rawValue) = 'failed' THEN \(reason) ELSE failure_reason END,
                failure_message = CASE WHEN \(to.rawValue) = 'failed' THEN \(failureMessage) ELSE failure_message END
            WHERE id = \(target.scanID) AND created_at = \(target.createdAt) AND status = \(from.rawValue)
              AND attempt = coalesce(\(expectedAttempt.map(Int32.init))::integer, attempt)
            RETURNING findings_critical, findings_high, findings_medium, findings_low, findings_info
            """)
        guard let row = rows.first else { return false }
        var eventDetails: [String: JSONValue] = ["attempt": .int(attempt)]
        if case .object(let extra) = details { eventDetails.merge(extra) { _, new in new } }
        try await c.execute(
            """
            INSERT INTO scan_events (organization_id, scan_id, scan_created_at, from_status, to_status, actor, reason,
                                     message_id, details)
            VALUES (\(target.organizationID), \(target.scanID), \(target.createdAt), \(from.rawValue), \(to.rawValue),
                    \(actor), \(reason), \(messageID), \(PostgresJSONB(text: JSONValue.object(eventDetails).jsonText)))
            """)
        var counts: [String: Int]?
        if to.isFinal {
            counts = [
                "critical": try row.decode(Int.self, at: 0), "high": try row.decode(Int.self, at: 1),
                "medium": try row.decode(Int.self, at: 2), "low": try row.decode(Int.self, at: 3),
                "info": try row.decode(Int.self, at: 4),
            ]
        }
        try await enqueueEvent(c, target, status: to, attempt: attempt, reason: reason, counts: counts)
        return true
    }

    /// The `scan.<status>` event, in the outbox (the relay publishes it to `cloudscan.events`).
    public static func enqueueEvent(
        _ c: PostgresConnection, _ target: Target, status: ScanStatus, attempt: Int, reason: String?,
        counts: [String: Int]? = nil
    ) async throws {
        let eventID = UUID()
        let event = ScanEventMessage(
            eventID: eventID.uuidString.lowercased(), scanID: target.scanID, organizationID: target.organizationID,
            projectID: target.projectID, status: status, at: Date(), attempt: attempt,
            reason: reason.map { String($0.prefix(256)) }, counts: counts,
            queuedAt: status.isFinal ? target.createdAt : nil)
        let payload = PostgresJSONB(text: String(decoding: try MessageCoding.encoder().encode(event), as: UTF8.self))
        // The event continues the trace of the work that caused it (a consumer's message, a request).
        var headerValues = [MessageHeaders.organizationID: target.organizationID.uuidString.lowercased()]
        headerValues[MessageHeaders.traceparent] = TraceContext.current?.traceparent
        let headers = try PostgresJSONB(encoding: headerValues)
        try await c.execute(
            """
            INSERT INTO outbox (organization_id, message_id, exchange, routing_key, message_type, correlation_id,
                                headers, payload)
            VALUES (\(target.organizationID), \(eventID), \(Exchanges.events), \("scan.\(status.rawValue)"),
                    \(MessageType.scanEvent.rawValue), \(target.scanID.uuidString.lowercased()), \(headers), \(payload))
            """)
    }
}
