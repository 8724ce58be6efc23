import CloudScanAuth
import CloudScanCore
import CloudScanHTTP
import CloudScanPostgres
import CloudScanStore
import Foundation
import Logging

/// Scans as the API offers them. Every call runs in a transaction scoped to the caller's
/// organization, so row-level security — not this code — decides what is visible: another
/// organization's scan is simply not found.
public struct ScanService: Sendable {
    let client: PostgresClient
    let logger: Logger
    let batcher: CreateBatcher?
    /// Whether organizations created through the APIs make unknown projects on first use unless
    /// told otherwise (AUTO_CREATE_PROJECTS_DEFAULT; on in `cloudscan dev`).
    public var autoCreateProjectsDefault = false
    /// Which artifact URLs are accepted (ARTIFACT_FILE_ROOTS, ARTIFACT_HTTPS_HOSTS; `cloudscan dev`
    /// accepts every scheme).
    public var artifactPolicy = ArtifactPolicy.standard
    /// Where webhooks may point (WEBHOOK_ALLOWED_NETWORKS; loopback in `cloudscan dev`).
    public var webhookScreen = DestinationScreen()
    /// Seals webhook secrets at rest (WEBHOOK_SECRET_KEYS); without it subscriptions cannot be made.
    public var webhookSecrets: SecretBox?

    /// A service over a client connected as the services' role. With `groupCreates` (the
    /// default), concurrent creates of one organization without an idempotency key are written in
    /// groups (see ``CreateBatcher``).
    public init(client: PostgresClient, logger: Logger, groupCreates: Bool = true) {
        self.client = client
        self.logger = logger
        self.batcher = groupCreates ? CreateBatcher() : nil
    }

    /// The result of ``createScan(organizationID:request:idempotencyKey:traceparent:)``.
    public struct Created: Sendable, Hashable {
        public var scan: Scan
        /// True when an earlier request with the same idempotency key made this scan.
        public var replayed: Bool
    }

    // MARK: Create

    /// Validates, then in one transaction inserts the scan (queued), its first event and the
    /// `scan.create.v1` outbox row (and records the idempotency key).
    public func createScan(
        organizationID: UUID, request: CreateScanRequest, idempotencyKey: String? = nil, traceparent: String? = nil
    ) async throws -> Created {
        let scanTypes = try request.validated()
        try artifactPolicy.check(request.artifactURL, organizationID: organizationID)
        if let key = idempotencyKey, key.isEmpty || key.utf8.count > 255 {
            throw ScanServiceError.invalidArgument(field: "Idempotency-Key", "1–255 bytes")
        }
        if idempotencyKey == nil, let batcher {
            return try await batcher.submit(
                self, organizationID: organizationID, request: request, scanTypes: scanTypes, traceparent: traceparent)
        }
        return try await createOne(
            organizationID: organizationID, request: request, scanTypes: scanTypes, idempotencyKey: idempotencyKey,
            requestText: try Self.canonicalJSON(request), traceparent: traceparent)
    }

    /// One create in its own transaction (the path for idempotency keys, and the fallback of a
    /// group that failed as a whole).
    func createOne(
        organizationID: UUID, request: CreateScanRequest, scanTypes: [ScanType], idempotencyKey: String?,
        requestText: String?, traceparent: String?
    ) async throws -> Created {
        try await client.withTransaction(organizationID: organizationID) { c in
            try await Self.lockAdmission(c, organizationID: organizationID)
            // One lookup: the organization (RLS shows only the caller's), the project (by id or by the
            // gateway's key, not archived) and the organization's queued scans (a counter kept by triggers).
            let lookup = try await c.query(
                """
                SELECT o.disabled_at IS NOT NULL, o.queued_scan_cap, o.enabled_scan_types, o.auto_create_projects,
                       (SELECT coalesce(sum(q.queued), 0)::bigint FROM organization_queue_counts q WHERE q.organization_id = o.id)
                FROM organizations o
                """)
            guard let org = lookup.first else {
                throw ScanServiceError(code: .permissionDenied, message: "unknown organization")
            }
            if try org.decode(Bool.self, at: 0) {
                throw ScanServiceError(code: .failedPrecondition, message: "the organization is disabled")
            }

            if let key = idempotencyKey {
                let existing = try await c.query(
                    """
                    SELECT scan_id, request_hash = encode(sha256(convert_to(\(requestText), 'UTF8')), 'hex')
                    FROM scan_idempotency_keys WHERE idempotency_key = \(key)
                    """)
                if let row = existing.first {
                    guard try row.decode(Bool.self, at: 1) else {
                        throw ScanServiceError(
                            code: .conflict, message: "this Idempotency-Key was used with a different request",
                            field: "Idempotency-Key")
                    }
                    let scan = try await Self.fetch(c, id: try row.decode(UUID.self, at: 0))
                    return Created(scan: try scan.orThrow(), replayed: true)
                }
            }

            let (byID, byKey) = try await ProjectResolver.resolve(
                c, organizationID: organizationID, ids: Set([request.project.id].compactMap { $0 }),
                keys: request.project.id == nil ? Set([request.project.externalKey].compactMap { $0 }) : [],
                autoCreate: try org.decode(Bool.self, at: 3), actor: "first use of the project key")
            guard
                let project = request.project.id.map({ byID[$0] }) ?? request.project.externalKey.flatMap({ byKey[$0] })
            else { throw Self.unknownProject }
            let projectID = project.id
            let scanTypes = scanTypes.isEmpty ? project.defaultScanTypes : scanTypes
            let enabled = Set(try org.decode([String].self, at: 2))
            if let refused = scanTypes.first(where: { !enabled.contains($0.rawValue) }) {
                throw ScanServiceError.invalidArgument(
                    field: "scan_types", "scan type '\(refused.rawValue)' is not enabled for this organization")
            }
            let timeout = request.timeoutSeconds ?? project.timeoutSeconds

            // Admission: a cap on queued scans per organization.
            let queued = try org.decode(Int.self, at: 4)
            let cap = (try org.decode(Int32.self, at: 1)).asInt
            if queued >= cap {
                throw ScanServiceError(
                    code: .resourceExhausted, message: "\(queued) scans are already queued (cap \(cap))",
                    retryAfterSeconds: 30)
            }

            let scanID = UUID()
            let createdAt = Date()
            let labels = try PostgresJSONB(encoding: request.labels)
            let message = ScanCreateMessage(
                scanID: scanID, organizationID: organizationID, project: .init(id: projectID), scanTypes: scanTypes,
                artifact: .init(url: request.artifactURL, sha256: request.artifactSHA256), requestedAt: createdAt,
                timeoutSeconds: timeout, labels: request.labels.isEmpty ? nil : request.labels)
            let outbox = try Self.outboxValues(
                organizationID: organizationID, payload: message, correlationID: scanID, traceparent: traceparent)
            // The scan, its first event and the outbox row in one statement, returning the scan.
            let inserted = try await c.query(
                """
                WITH s AS (
                    INSERT INTO scans (id, created_at, organization_id, project_id, status, scan_types, artifact_ref,
                                       artifact_sha256, timeout_seconds, labels, traceparent)
                    VALUES (\(scanID), \(createdAt), \(organizationID), \(projectID), 'queued',
                            \(scanTypes.map(\.rawValue)), \(request.artifactURL), \(request.artifactSHA256),
                            \(Int32(timeout)), \(labels), \(traceparent))
                    RETURNING \(unescaped: Self.columns)
                ), e AS (
                    INSERT INTO scan_events (organization_id, scan_id, scan_created_at, from_status, to_status, actor, reason)
                    SELECT organization_id, id, created_at, NULL, 'queued', 'api', 'created' FROM s
                ), o AS (
                    INSERT INTO outbox (organization_id, message_id, exchange, routing_key, message_type, correlation_id,
                                        headers, payload)
                    VALUES (\(organizationID), \(UUID()), \(Exchanges.commands), 'scan.create',
                            \(MessageType.scanCreate.rawValue), \(scanID.uuidString.lowercased()), \(outbox.headers),
                            \(outbox.payload))
                )
                SELECT * FROM s
                """)
            let scan = try Self.decodeScan(try inserted.single())
            if let key = idempotencyKey {
                let inserted = try await c.execute(
                    """
                    INSERT INTO scan_idempotency_keys (organization_id, idempotency_key, request_hash, scan_id, scan_created_at)
                    VALUES (\(organizationID), \(key), encode(sha256(convert_to(\(requestText), 'UTF8')), 'hex'),
                            \(scanID), \(createdAt))
                    ON CONFLICT DO NOTHING
                    """)
                if inserted == 0 {
                    // A concurrent request with the same key won; this transaction rolls back.
                    throw ScanServiceError(
                        code: .conflict, message: "a request with this Idempotency-Key is in progress; retry",
                        field: "Idempotency-Key")
                }
            }
            return Created(scan: scan, replayed: false)
        }
    }

    /// Serializes admission per organization (in every API process) until the transaction ends,
    /// so concurrent creates cannot all see room under the queued-scan cap. Its own statement:
    /// the count that follows must take its snapshot after the lock is granted.
    static func lockAdmission(_ c: PostgresConnection, organizationID: UUID) async throws {
        try await c.query(
            "SELECT pg_advisory_xact_lock(hashtextextended('cloudscan.admission:' || \(organizationID)::text, 0))")
    }

    // MARK: Read

    /// One scan of the caller's organization.
    public func getScan(organizationID: UUID, id: UUID) async throws -> Scan {
        try await client.withTransaction(organizationID: organizationID) { c in
            guard let scan = try await Self.fetch(c, id: id) else {
                throw ScanServiceError(code: .notFound, message: "no scan \(id)")
            }
            return scan
        }
    }

    /// Filters for ``listScans(organizationID:filter:pageSize:cursor:)``.
    public struct ListFilter: Sendable, Hashable {
        public var projectID: UUID?
        public var status: ScanStatus?
        public var createdAfter: Date?
        public var createdBefore: Date?
        public init(
            projectID: UUID? = nil, status: ScanStatus? = nil, createdAfter: Date? = nil, createdBefore: Date? = nil
        ) {
            self.projectID = projectID
            self.status = status
            self.createdAfter = createdAfter
            self.createdBefore = createdBefore
        }
    }

    /// A page of scans, newest first, and the cursor of the next page (nil at the end).
    public func listScans(organizationID: UUID, filter: ListFilter = .init(), pageSize: Int = 50, cursor: String? = nil)
        async throws -> (scans: [Scan], nextCursor: String?)
    {
        guard (1...500).contains(pageSize) else {
            throw ScanServiceError.invalidArgument(field: "page_size", "between 1 and 500")
        }
        // The same range on every transport (HTTP checks it while parsing, gRPC's Timestamp may hold
        // anything): calendars disagree before 1582 and the store covers the service's lifetime.
        for (field, date) in [("created_after", filter.createdAfter), ("created_before", filter.createdBefore)] {
            if let date, !(0..<253_402_300_800).contains(date.timeIntervalSince1970) {
                throw ScanServiceError.invalidArgument(field: field, "between 1970-01-01 and 9999-12-31")
            }
        }
        let position = try cursor.flatMap { $0.isEmpty ? nil : $0 }.map(ScanCursor.init(text:))
        return try await client.withTransaction(organizationID: organizationID) { c in
            let rows = try await c.query(
                """
                SELECT \(unescaped: Self.columns) FROM scans
                WHERE (\(filter.projectID)::uuid IS NULL OR project_id = \(filter.projectID))
                  AND (\(filter.status?.rawValue)::text IS NULL OR status = \(filter.status?.rawValue))
                  AND (\(filter.createdAfter)::timestamptz IS NULL OR created_at >= \(filter.createdAfter))
                  AND (\(filter.createdBefore)::timestamptz IS NULL OR created_at < \(filter.createdBefore))
                  AND (\(position?.createdAt)::timestamptz IS NULL
                       OR (created_at, id) < (\(position?.createdAt), \(position?.id)))
                ORDER BY created_at DESC, id DESC
                LIMIT \(pageSize + 1)
                """)
            var scans = try rows.map(Self.decodeScan)
            var next: String?
            if scans.count > pageSize {
                scans.removeLast()
                next = scans.last.map { ScanCursor(createdAt: $0.createdAt, id: $0.id).text }
            }
            return (scans, next)
        }
    }

    // MARK: Cancel

    /// Cancels an unfinished scan: marks it canceled and publishes `scan.cancel.v1` (through the
    /// outbox) so its Job is stopped. A finished scan is a failed precondition.
    public func cancelScan(organizationID: UUID, id: UUID, requestedBy: String, traceparent: String? = nil)
        async throws -> Scan
    {
        try await client.withTransaction(organizationID: organizationID) { c in
            let rows = try await c.query("SELECT status, created_at FROM scans WHERE id = \(id) FOR UPDATE")
            guard let row = rows.first else { throw ScanServiceError(code: .notFound, message: "no scan \(id)") }
            let status = ScanStatus(rawValue: try row.decode(String.self, at: 0)) ?? .failed
            let createdAt = try row.decode(Date.self, at: 1)
            guard let next = ScanStateMachine.transition(from: status, event: .canceled) else {
                throw ScanServiceError(code: .failedPrecondition, message: "the scan is already \(status.rawValue)")
            }
            let changed = try await c.execute(
                """
                UPDATE scans SET status = \(next.rawValue), version = version + 1, finished_at = now(), updated_at = now(),
                                 failure_reason = 'canceled'
                WHERE id = \(id) AND created_at = \(createdAt) AND status = \(status.rawValue)
                """)
            guard changed == 1 else { throw ScanServiceError(code: .conflict, message: "the scan changed; retry") }
            try await c.execute(
                """
                INSERT INTO scan_events (organization_id, scan_id, scan_created_at, from_status, to_status, actor, reason)
                VALUES (\(organizationID), \(id), \(createdAt), \(status.rawValue), \(next.rawValue), 'api',
                        \("canceled by \(requestedBy)"))
                """)
            try await Self.enqueue(
                c, organizationID: organizationID, type: .scanCancel, routingKey: "scan.cancel", correlationID: id,
                payload: ScanCancelMessage(
                    scanID: id, organizationID: organizationID, requestedAt: Date(), requestedBy: requestedBy),
                traceparent: traceparent)
            return try await Self.fetch(c, id: id).orThrow()
        }
    }

    // MARK: Helpers

    static let columns = """
        id, organization_id, project_id, status, scan_types, artifact_ref, artifact_sha256, attempt, timeout_seconds,
        labels, failure_reason, findings_critical, findings_high, findings_medium, findings_low, findings_info,
        created_at, updated_at, finished_at
        """

    static func fetch(_ c: PostgresConnection, id: UUID) async throws -> Scan? {
        try await c.query("SELECT \(unescaped: columns) FROM scans WHERE id = \(id)").first.map(decodeScan)
    }

    static func decodeScan(_ row: PostgresRow) throws -> Scan {
        var counts = SeverityCounts()
        counts.critical = (try row.decode(Int32.self, at: 11)).asInt
        counts.high = (try row.decode(Int32.self, at: 12)).asInt
        counts.medium = (try row.decode(Int32.self, at: 13)).asInt
        counts.low = (try row.decode(Int32.self, at: 14)).asInt
        counts.info = (try row.decode(Int32.self, at: 15)).asInt
        return Scan(
            id: try row.decode(UUID.self, at: 0), organizationID: try row.decode(UUID.self, at: 1),
            projectID: try row.decode(UUID.self, at: 2),
            status: ScanStatus(rawValue: try row.decode(String.self, at: 3)) ?? .failed,
            scanTypes: try row.decode([String].self, at: 4).compactMap(ScanType.init(rawValue:)),
            artifactURL: try row.decode(String.self, at: 5), artifactSHA256: try row.decode(String?.self, at: 6),
            attempt: (try row.decode(Int32.self, at: 7)).asInt,
            timeoutSeconds: (try row.decode(Int32.self, at: 8)).asInt,
            labels: try row.decode(PostgresJSONB.self, at: 9).decode([String: String].self),
            failureReason: try row.decode(String?.self, at: 10), counts: counts,
            createdAt: try row.decode(Date.self, at: 16), updatedAt: try row.decode(Date.self, at: 17),
            finishedAt: try row.decode(Date?.self, at: 18))
    }

    /// The headers and payload of an outbox row.
    static func outboxValues<M: Encodable>(
        organizationID: UUID, payload: M, correlationID: UUID, traceparent: String?
    ) throws -> (headers: PostgresJSONB, payload: PostgresJSONB) {
        var headers = [MessageHeaders.organizationID: organizationID.uuidString.lowercased()]
        if let traceparent { headers[MessageHeaders.traceparent] = traceparent }
        let body = String(decoding: try MessageCoding.encoder().encode(payload), as: UTF8.self)
        return (try PostgresJSONB(encoding: headers), PostgresJSONB(text: body))
    }

    /// Writes an outbox row in the caller's transaction; the relay publishes it.
    static func enqueue<M: Encodable>(
        _ c: PostgresConnection, organizationID: UUID, type: MessageType, routingKey: String, correlationID: UUID,
        payload: M, traceparent: String?
    ) async throws {
        let values = try outboxValues(
            organizationID: organizationID, payload: payload, correlationID: correlationID, traceparent: traceparent)
        try await c.execute(
            """
            INSERT INTO outbox (organization_id, message_id, exchange, routing_key, message_type, correlation_id,
                                headers, payload)
            VALUES (\(organizationID), \(UUID()), \(Exchanges.commands), \(routingKey), \(type.rawValue),
                    \(correlationID.uuidString.lowercased()), \(values.headers), \(values.payload))
            """)
    }

    /// Sorted-key JSON of the request: equal requests hash equally.
    static func canonicalJSON(_ request: CreateScanRequest) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(request), as: UTF8.self)
    }
}

/// Keyset position for scan listing: opaque to callers.
struct ScanCursor {
    var createdAt: Date
    var id: UUID

    init(createdAt: Date, id: UUID) {
        self.createdAt = createdAt
        self.id = id
    }

    init(text: String) throws {
        guard let data = Data(base64Encoded: text), let decoded = String(data: data, encoding: .utf8),
            let bar = decoded.firstIndex(of: "|"), let micros = Int64(decoded[..<bar]),
            let id = UUID(uuidString: String(decoded[decoded.index(after: bar)...]))
        else { throw ScanServiceError.invalidArgument(field: "cursor", "not a cursor this service issued") }
        self.createdAt = Date(timeIntervalSince1970: Double(micros) / 1_000_000)
        self.id = id
    }

    var text: String {
        let micros = Int64((createdAt.timeIntervalSince1970 * 1_000_000).rounded())
        return Data("\(micros)|\(id.uuidString)".utf8).base64EncodedString()
    }
}

extension ScanService {
    /// An unknown (or archived) project, and how to have one.
    static let unknownProject = ScanServiceError.invalidArgument(
        field: "project",
        "no project with this id or external_key in this organization (create it with POST /api/v1/projects, or turn on the organization's auto_create_projects)"
    )
}

extension Int32 {
    var asInt: Int { Int(self) }
}

extension Optional {
    func orThrow() throws -> Wrapped {
        guard let self else { throw ScanServiceError(code: .notFound, message: "not found") }
        return self
    }
}
