import CloudScanAMQP
import CloudScanAuth
import CloudScanCore
import CloudScanKubernetes
import CloudScanMetrics
import CloudScanPostgres
import CloudScanStore
import Foundation
import Logging
import Synchronization

/// `cloudscan dispatcher`: consumes scan.create / scan.retry (`cloudscan.dispatch`) and
/// scan.cancel (`cloudscan.cancel`).
///
/// A dispatch is two steps. First a short transaction under the organization's dispatch lock:
/// read the scan (or create it, for a gateway that published scan.create straight to the
/// exchange), check the organization's concurrency quota, and move the scan to dispatched with its
/// scan_events row and the scan.dispatched event in the outbox — committed, so the next dispatch
/// of the organization counts it and no lock is held across the Kubernetes calls. Then, outside
/// it: resolve the artifact and start the runner (Job create — a repeated create of the attempt's
/// deterministic name is success) — and only then ack. A crash anywhere before the ack
/// redelivers the message; the scan is found dispatched for this attempt and the runner is
/// ensured again. Over quota the scan stays queued and the message waits in a delay tier; other
/// organizations' messages keep flowing. Kubernetes or storage outages are retried a few times in
/// place, then the message waits in a delay tier: never dropped, never dead-lettered. A spec the
/// API server refuses (422) or a missing artifact fails the scan.
public struct Dispatcher: Sendable {
    public struct Configuration: Sendable {
        /// How long an over-quota scan waits before it is tried again.
        public var quotaDelaySeconds: Int
        /// Tries of the backend within one delivery, and the first pause between them (doubling).
        public var backendTries: Int
        public var backendBackoff: Duration
        /// Delays (seconds) for a delivery that still failed: the n-th parking uses the n-th.
        public var outageDelaysSeconds: [Int]
        /// Counts the scans a gateway's own scan.create made (`cloudscan_scans_total{status="queued"}`;
        /// the API counts its creates itself).
        public var metrics: FleetMetrics?

        public init(
            quotaDelaySeconds: Int = 5, backendTries: Int = 3, backendBackoff: Duration = .milliseconds(200),
            outageDelaysSeconds: [Int] = [5, 30, 300], metrics: FleetMetrics? = nil
        ) {
            self.metrics = metrics
            self.quotaDelaySeconds = quotaDelaySeconds
            self.backendTries = backendTries
            self.backendBackoff = backendBackoff
            self.outageDelaysSeconds = outageDelaysSeconds
        }
    }

    let client: PostgresClient
    let backend: any JobBackend
    let artifacts: ArtifactResolver
    let tokens: RunnerTokenMinter
    let configuration: Configuration
    let logger: Logger

    public init(
        client: PostgresClient, backend: any JobBackend, artifacts: ArtifactResolver, tokens: RunnerTokenMinter,
        configuration: Configuration = .init(), logger: Logger
    ) {
        self.client = client
        self.backend = backend
        self.artifacts = artifacts
        self.tokens = tokens
        self.configuration = configuration
        self.logger = logger
    }

    typealias Outcome = AMQPConsumerService.Outcome

    // MARK: scan.create / scan.retry

    /// The handler for `cloudscan.dispatch`.
    public func handleDispatch(_ delivery: AMQPDelivery) async throws -> AMQPConsumerService.Outcome {
        let type = delivery.message.type ?? (delivery.routingKey == "scan.retry" ? MessageType.scanRetry.rawValue : "")
        let command: Command
        switch type {
        case MessageType.scanCreate.rawValue:
            if let problem = ScanCreateMessage.wireProblem(delivery.message.body) {
                return .deadLetter(reason: "invalid scan.create.v1: \(problem)")
            }
            guard
                let message = try? MessageCoding.decoder().decode(
                    ScanCreateMessage.self, from: Data(delivery.message.body))
            else {
                return .deadLetter(
                    reason: "invalid scan.create.v1: \(Self.decodeError(ScanCreateMessage.self, delivery))")
            }
            command = .create(message)
        case MessageType.scanRetry.rawValue:
            guard
                let message = try? MessageCoding.decoder().decode(
                    ScanRetryMessage.self, from: Data(delivery.message.body))
            else {
                return .deadLetter(
                    reason: "invalid scan.retry.v1: \(Self.decodeError(ScanRetryMessage.self, delivery))")
            }
            guard (1...1000).contains(message.attempt) else {
                return .deadLetter(reason: "invalid scan.retry.v1: attempt: between 1 and 1000")
            }
            command = .retry(message)
        default:
            return .deadLetter(
                reason: "unexpected message type \(type.isEmpty ? "(none)" : type) on cloudscan.dispatch")
        }
        if let header = delivery.message.headers[MessageHeaders.organizationID],
            header.lowercased() != command.organizationID.uuidString.lowercased()
        {
            return .deadLetter(reason: "x-organization-id does not match the message's organization_id")
        }
        return try await withRetries(
            "dispatch", scanID: command.scanID, organizationID: command.organizationID, delivery
        ) {
            switch try await dispatch(command, messageID: delivery.message.messageID) {
            case .done: return .ack
            case .invalid(let reason): return .deadLetter(reason: reason)
            case .overQuota:
                return .delay(seconds: configuration.quotaDelaySeconds, reason: "organization at its concurrency quota")
            }
        }
    }

    /// Runs `body` up to `backendTries` times while it fails transiently (Kubernetes, storage),
    /// pausing between tries (doubling), then parks the message in a delay tier; a PostgreSQL
    /// failure parks it at once.
    private func withRetries(
        _ what: String, scanID: UUID, organizationID: UUID? = nil, _ delivery: AMQPDelivery,
        _ body: () async throws -> Outcome
    ) async throws -> Outcome {
        var pause = configuration.backendBackoff
        for tryNumber in 1...max(1, configuration.backendTries) {
            do {
                return try await body()
            } catch let error as JobBackendError where !error.permanent {
                logger.warning(
                    "\(what) failed; trying again",
                    metadata: [
                        "scan_id": "\(scanID.uuidString.lowercased())", "try": "\(tryNumber)", "error": "\(error)",
                    ])
                guard tryNumber < configuration.backendTries else {
                    return parkAfterOutage(delivery, reason: error.reason)
                }
                try await Task.sleep(for: pause)
                pause *= 2
            } catch let error as PostgresError where error.isUniqueViolation && error.constraint == "scan_ids_pkey" {
                // The id is registered already. A twin delivery of this very message may have made
                // it in this organization (then the next delivery finds it); otherwise the id is
                // another scan's — perhaps another organization's — and the message is refused.
                if let organizationID,
                    try await client.withTransaction(
                        organizationID: organizationID,
                        { c in
                            try await c.query("SELECT 1 FROM scans WHERE id = \(scanID)").first != nil
                        })
                {
                    return .retry
                }
                return .deadLetter(reason: "scan_id \(scanID.uuidString.lowercased()) is already in use")
            } catch let error as PostgresError where error.isDataError {
                // The message's data, not an outage: the same message fails the same way again.
                logger.warning(
                    "\(what) refused by PostgreSQL",
                    metadata: ["scan_id": "\(scanID.uuidString.lowercased())", "error": "\(error)"])
                return .deadLetter(
                    reason: "refused by PostgreSQL: SQLSTATE \(error.sqlState ?? "-")"
                        + (error.constraint.map { " (constraint \($0))" } ?? ""))
            } catch let error as PostgresError {
                logger.warning(
                    "\(what) failed on PostgreSQL",
                    metadata: ["scan_id": "\(scanID.uuidString.lowercased())", "error": "\(error)"])
                return parkAfterOutage(delivery, reason: "postgres_unavailable")
            }
        }
        return parkAfterOutage(delivery, reason: "unavailable")
    }

    private func parkAfterOutage(_ delivery: AMQPDelivery, reason: String) -> Outcome {
        let parked = AMQPConsumerService.delayCount(delivery.message.headers)
        let delays = configuration.outageDelaysSeconds
        let seconds = delays.isEmpty ? 5 : delays[min(parked, delays.count - 1)]
        return .delay(seconds: seconds, reason: reason)
    }

    enum Command {
        case create(ScanCreateMessage)
        case retry(ScanRetryMessage)

        var scanID: UUID {
            switch self {
            case .create(let m): m.scanID
            case .retry(let m): m.scanID
            }
        }
        var organizationID: UUID {
            switch self {
            case .create(let m): m.organizationID
            case .retry(let m): m.organizationID
            }
        }
    }

    enum Decision {
        case done
        case overQuota
        case invalid(String)
    }

    struct ScanRow {
        var createdAt: Date
        var projectID: UUID
        var status: ScanStatus
        var attempt: Int
        var scanTypes: [ScanType]
        var artifactRef: String
        var artifactSHA256: String?
        var timeoutSeconds: Int
        var traceparent: String?
        /// The project's scanner options as they are at dispatch (JSON; nil when none).
        var scannerOptions: String?
    }

    static let scanColumns = """
        created_at, project_id, status, attempt, scan_types, artifact_ref, artifact_sha256, timeout_seconds, traceparent,
        (SELECT nullif(p.scanner_options, '{}'::jsonb)::text FROM projects p WHERE p.id = scans.project_id)
        """

    static func scanRow(_ row: PostgresRow) throws -> ScanRow {
        ScanRow(
            createdAt: try row.decode(Date.self, at: 0), projectID: try row.decode(UUID.self, at: 1),
            status: ScanStatus(rawValue: try row.decode(String.self, at: 2)) ?? .failed,
            attempt: try row.decode(Int.self, at: 3),
            scanTypes: try row.decode([String].self, at: 4).compactMap(ScanType.init(rawValue:)),
            artifactRef: try row.decode(String.self, at: 5), artifactSHA256: try row.decode(String?.self, at: 6),
            timeoutSeconds: try row.decode(Int.self, at: 7), traceparent: try row.decode(String?.self, at: 8),
            scannerOptions: try row.decode(String?.self, at: 9))
    }

    static func lockDispatch(_ c: PostgresConnection, organizationID: UUID) async throws {
        try await c.query(
            "SELECT pg_advisory_xact_lock(hashtextextended('cloudscan.dispatch:' || \(organizationID)::text, 0))")
    }

    /// What the short transaction decided: nothing to do, wait, refuse, or start this attempt's
    /// runner (the scan is dispatched already).
    enum Claim {
        case decided(Decision)
        case start(scan: ScanRow, attempt: Int)
    }

    func dispatch(_ command: Command, messageID: String?) async throws -> Decision {
        let organizationID = command.organizationID
        let scanID = command.scanID
        // 1. Under the organization's dispatch lock, briefly: the quota check and the move to
        //    dispatched (with its event), committed — so the next dispatch of the organization
        //    counts this one, and no lock is held across the Kubernetes calls.
        let createdHere = Mutex(false)
        let claim: Claim = try await client.withTransaction(organizationID: organizationID) { c in
            try await Self.lockDispatch(c, organizationID: organizationID)
            var rows = try await c.query(
                "SELECT \(unescaped: Self.scanColumns) FROM scans WHERE id = \(scanID) FOR UPDATE")
            if rows.isEmpty {
                guard case .create(let message) = command else {
                    return .decided(.invalid("scan.retry.v1 for a scan that does not exist"))
                }
                if let refusal = try await Self.createFromMessage(
                    c, message, messageID: messageID, policy: artifacts.policy)
                {
                    return .decided(.invalid(refusal))
                }
                createdHere.withLock { $0 = true }
                rows = try await c.query(
                    "SELECT \(unescaped: Self.scanColumns) FROM scans WHERE id = \(scanID) FOR UPDATE")
            }
            guard let first = rows.first else { return .decided(.invalid("scan vanished")) }
            let scan = try Self.scanRow(first)
            let attempt: Int
            let from: ScanStatus
            switch command {
            case .create:
                // Dispatched by an earlier delivery that did not get to its ack: make sure of the runner.
                if scan.status == .dispatched && scan.attempt == 1 { return .start(scan: scan, attempt: 1) }
                guard scan.status == .queued, scan.attempt == 0 else { return .decided(.done) }
                attempt = 1
                from = .queued
            case .retry(let message):
                if scan.status == .dispatched && scan.attempt == message.attempt {
                    return .start(scan: scan, attempt: message.attempt)
                }
                guard scan.status == .retrying, message.attempt == scan.attempt + 1 else { return .decided(.done) }
                attempt = message.attempt
                from = .retrying
            }
            // The concurrency quota: scans holding a runner, an O(1) counter kept by triggers and
            // exact as of the last commit (the lock orders this check after every earlier dispatch).
            let quota = try await c.query(
                """
                SELECT o.concurrency_quota,
                       (SELECT coalesce(sum(q.active), 0) FROM organization_queue_counts q WHERE q.organization_id = o.id)
                FROM organizations o
                """
            ).first
            if let quota, try quota.decode(Int.self, at: 1) >= (try quota.decode(Int.self, at: 0)) {
                return .decided(.overQuota)
            }
            let jobName = RunnerAssignment.jobName(scanID: scanID, attempt: attempt)
            try await Self.transition(
                c, scanID: scanID, organizationID: organizationID, scan: scan, from: from, to: .dispatched,
                attempt: attempt, reason: attempt == 1 ? "dispatched" : "retry dispatched", messageID: messageID,
                jobName: jobName)
            var dispatched = scan
            dispatched.status = .dispatched
            dispatched.attempt = attempt
            return .start(scan: dispatched, attempt: attempt)
        }
        // Committed: a scan made from a gateway's own scan.create is counted as queued once.
        if createdHere.withLock({ $0 }) { configuration.metrics?.scans("queued").increment() }
        guard case .start(let scan, let attempt) = claim else {
            if case .decided(let decision) = claim { return decision }
            return .done
        }
        // 2. The runner: artifact URL, then the backend (idempotent: a redelivery finds it there).
        do {
            let artifact = try await artifacts.resolve(scan.artifactRef, organizationID: organizationID)
            try await backend.start(
                RunnerAssignment(
                    scanID: scanID, organizationID: organizationID, attempt: attempt, scanTypes: scan.scanTypes,
                    artifactURL: artifact.url, artifactSHA256: scan.artifactSHA256 ?? artifact.sha256,
                    timeoutSeconds: scan.timeoutSeconds,
                    runnerToken: tokens.token(scanID: scanID, organizationID: organizationID, attempt: attempt),
                    traceparent: TraceContext.current?.traceparent ?? scan.traceparent,
                    scannerOptions: scan.scannerOptions))
            logger.info(
                "runner started",
                metadata: [
                    "scan_id": "\(scanID.uuidString.lowercased())", "attempt": "\(attempt)",
                    "job": "\(RunnerAssignment.jobName(scanID: scanID, attempt: attempt))",
                ])
        } catch let error as JobBackendError where error.permanent {
            try await client.withTransaction(organizationID: organizationID) { c in
                try await Self.transition(
                    c, scanID: scanID, organizationID: organizationID, scan: scan, from: .dispatched, to: .failed,
                    attempt: attempt, reason: error.reason, messageID: messageID, jobName: nil, message: error.message)
            }
            logger.warning(
                "scan failed at dispatch",
                metadata: ["scan_id": "\(scanID.uuidString.lowercased())", "reason": "\(error.reason)"])
            return .done
        }
        // 3. A cancel committed meanwhile may have stopped the runner before it existed: stop it now.
        let now = try await client.withTransaction(organizationID: organizationID) { c in
            try await c.query("SELECT status FROM scans WHERE id = \(scanID)").first?.decode(String.self, at: 0)
        }
        if let now, ScanStatus(rawValue: now)?.isFinal == true {
            try await backend.stop(scanID: scanID, attempt: attempt)
        }
        return .done
    }

    /// A scan.create published straight to the exchange: validated as the API validates, then
    /// inserted (queued) — or, if its cancel came first, inserted canceled. Returns why it was
    /// refused, if it was.
    static func createFromMessage(
        _ c: PostgresConnection, _ message: ScanCreateMessage, messageID: String?, policy: ArtifactPolicy
    ) async throws -> String? {
        let request = CreateScanRequest(
            project: message.project, scanTypes: message.scanTypes.map(\.rawValue), artifactURL: message.artifact.url,
            artifactSHA256: message.artifact.sha256, timeoutSeconds: message.timeoutSeconds,
            labels: message.labels ?? [:])
        let scanTypes: [ScanType]
        do {
            scanTypes = try request.validated()
            try policy.check(request.artifactURL, organizationID: message.organizationID)
        } catch {
            return "invalid scan.create.v1: \(error.field.map { "\($0): " } ?? "")\(error.message)"
        }
        let lookup = try await c.query(
            "SELECT o.disabled_at IS NOT NULL, o.enabled_scan_types, o.auto_create_projects FROM organizations o")
        guard let org = lookup.first else { return "unknown organization" }
        if try org.decode(Bool.self, at: 0) { return "the organization is disabled" }
        let (byID, byKey) = try await ProjectResolver.resolve(
            c, organizationID: message.organizationID, ids: Set([message.project.id].compactMap { $0 }),
            keys: message.project.id == nil ? Set([message.project.externalKey].compactMap { $0 }) : [],
            autoCreate: try org.decode(Bool.self, at: 2), actor: "first use of the project key")
        guard let project = message.project.id.map({ byID[$0] }) ?? message.project.externalKey.flatMap({ byKey[$0] })
        else {
            return "no project with this id or external_key in this organization (and auto_create_projects is off)"
        }
        let types = scanTypes.isEmpty ? project.defaultScanTypes : scanTypes
        let enabled = Set(try org.decode([String].self, at: 1))
        if let refused = types.first(where: { !enabled.contains($0.rawValue) }) {
            return "scan type '\(refused.rawValue)' is not enabled for this organization"
        }
        let projectID = project.id
        let timeout = message.timeoutSeconds ?? project.timeoutSeconds
        let canceled = try await c.query(
            "SELECT reason FROM scan_cancel_requests WHERE scan_id = \(message.scanID)"
        ).first
        let status: ScanStatus = canceled == nil ? .queued : .canceled
        let labels = try PostgresJSONB(encoding: message.labels ?? [:])
        let inserted = try await c.query(
            """
            INSERT INTO scans (id, created_at, organization_id, project_id, status, scan_types, artifact_ref,
                               artifact_sha256, timeout_seconds, labels, finished_at, traceparent)
            VALUES (\(message.scanID), now(), \(message.organizationID), \(projectID), \(status.rawValue),
                    \(types.map(\.rawValue)), \(message.artifact.url), \(message.artifact.sha256), \(Int32(timeout)),
                    \(labels), \(status == .canceled ? Date() : nil), \(TraceContext.current?.traceparent))
            RETURNING created_at
            """)
        let createdAt = try inserted.single().decode(Date.self, at: 0)
        try await c.execute(
            """
            INSERT INTO scan_events (organization_id, scan_id, scan_created_at, from_status, to_status, actor, reason, message_id)
            VALUES (\(message.organizationID), \(message.scanID), \(createdAt), NULL, 'queued', 'dispatcher',
                    'created from a published scan.create', \(messageID))
            """)
        if status == .canceled {
            try await c.execute(
                """
                INSERT INTO scan_events (organization_id, scan_id, scan_created_at, from_status, to_status, actor, reason, message_id)
                VALUES (\(message.organizationID), \(message.scanID), \(createdAt), 'queued', 'canceled', 'dispatcher',
                        'canceled before it was created', \(messageID))
                """)
        }
        return nil
    }

    /// A conditional move with its scan_events row and scan.<status> event (``ScanTransitions``).
    static func transition(
        _ c: PostgresConnection, scanID: UUID, organizationID: UUID, scan: ScanRow, from: ScanStatus, to: ScanStatus,
        attempt: Int, reason: String, messageID: String?, jobName: String?, message: String? = nil
    ) async throws {
        try await ScanTransitions.move(
            c,
            .init(scanID: scanID, createdAt: scan.createdAt, organizationID: organizationID, projectID: scan.projectID),
            from: from, to: to, attempt: attempt, actor: "dispatcher", reason: reason, messageID: messageID,
            jobName: jobName, failureMessage: message)
    }

    // MARK: scan.cancel

    /// The handler for `cloudscan.cancel`: stops the runner (Background delete of the Job), moves
    /// the scan to canceled; a cancel for a scan not created yet is remembered, so the create
    /// that follows is born canceled.
    public func handleCancel(_ delivery: AMQPDelivery) async throws -> AMQPConsumerService.Outcome {
        guard
            let message = try? MessageCoding.decoder().decode(ScanCancelMessage.self, from: Data(delivery.message.body))
        else {
            return .deadLetter(reason: "invalid scan.cancel.v1: \(Self.decodeError(ScanCancelMessage.self, delivery))")
        }
        if let header = delivery.message.headers[MessageHeaders.organizationID],
            header.lowercased() != message.organizationID.uuidString.lowercased()
        {
            return .deadLetter(reason: "x-organization-id does not match the message's organization_id")
        }
        return try await withRetries("cancel", scanID: message.scanID, delivery) {
            try await cancel(message, messageID: delivery.message.messageID)
            return .ack
        }
    }

    func cancel(_ message: ScanCancelMessage, messageID: String?) async throws {
        let organizationID = message.organizationID
        // Commit the canceled state first, then stop the runner: a dispatch racing this one checks
        // the state after its Job create and stops what it made.
        let attempt: Int? = try await client.withTransaction(organizationID: organizationID) { c in
            try await Self.lockDispatch(c, organizationID: organizationID)
            guard
                let row = try await c.query(
                    "SELECT \(unescaped: Self.scanColumns) FROM scans WHERE id = \(message.scanID) FOR UPDATE"
                ).first
            else {
                try await c.execute(
                    """
                    INSERT INTO scan_cancel_requests (organization_id, scan_id, requested_by, reason)
                    VALUES (\(organizationID), \(message.scanID), \(message.requestedBy), \(message.reason))
                    ON CONFLICT DO NOTHING
                    """)
                return nil
            }
            let scan = try Self.scanRow(row)
            if !scan.status.isFinal {
                try await Self.transition(
                    c, scanID: message.scanID, organizationID: organizationID, scan: scan, from: scan.status,
                    to: .canceled,
                    attempt: scan.attempt, reason: message.reason ?? "canceled", messageID: messageID, jobName: nil)
            }
            return scan.attempt > 0 ? scan.attempt : nil
        }
        if let attempt {
            do {
                try await backend.stop(scanID: message.scanID, attempt: attempt)
            } catch let error as JobBackendError where error.permanent {
                logger.warning(
                    "could not stop the runner",
                    metadata: ["scan_id": "\(message.scanID.uuidString.lowercased())", "error": "\(error)"])
            }
        }
    }

    static func decodeError<T: Decodable>(_ type: T.Type, _ delivery: AMQPDelivery) -> String {
        do {
            _ = try MessageCoding.decoder().decode(T.self, from: Data(delivery.message.body))
            return "unknown"
        } catch let DecodingError.keyNotFound(key, _) {
            return "missing \(MessageCodingKeyName.snake(key.stringValue))"
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context) {
            return
                "wrong type at \(context.codingPath.map { MessageCodingKeyName.snake($0.stringValue) }.joined(separator: "."))"
        } catch let DecodingError.dataCorrupted(context) {
            let path = context.codingPath.map { MessageCodingKeyName.snake($0.stringValue) }.joined(separator: ".")
            return path.isEmpty ? "not JSON" : "bad value at \(path)"
        } catch {
            return "unreadable"
        }
    }
}

/// Field names as the wire spells them, for error reasons.
enum MessageCodingKeyName {
    static func snake(_ key: String) -> String {
        var out = ""
        for character in key {
            if character.isUppercase {
                if !out.isEmpty && !out.hasSuffix("_") { out.append("_") }
                out.append(Character(character.lowercased()))
            } else {
                out.append(character)
            }
        }
        return out.replacingOccurrences(of: "i_d", with: "id")
    }
}
