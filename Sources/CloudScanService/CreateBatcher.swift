import CloudScanCore
import CloudScanPostgres
import CloudScanStore
import Foundation
import Logging
import Synchronization

/// Group commit for CreateScan: creates of one organization that arrive while an earlier group is
/// being written are written together, in one transaction of a fixed number of statements
/// (organization + bounded queued count, projects, one INSERT of every scan + event + outbox
/// row). At low load a group is one request and nothing waits; under load the per-scan cost of
/// statements and commits falls with the group size.
///
/// Each request keeps its own outcome: a missing project, a disabled scan type or a full queue
/// fails that request only. If the group's transaction fails as a whole, every request in it is
/// retried alone, so one request can never fail the others.
final class CreateBatcher: Sendable {
    struct Job: Sendable {
        var request: CreateScanRequest
        var scanTypes: [ScanType]
        var traceparent: String?
        var continuation: CheckedContinuation<ScanService.Created, any Error>
    }

    private struct State: ~Copyable {
        var pending: [UUID: [Job]] = [:]
        var writers: [UUID: Int] = [:]
    }

    let maximumGroup: Int
    let writersPerOrganization: Int
    private let state = Mutex(State())

    /// Groups of one organization are written one at a time (they serialize on the organization's
    /// admission lock anyway).
    init(maximumGroup: Int = 64, writersPerOrganization: Int = 1) {
        self.maximumGroup = maximumGroup
        self.writersPerOrganization = writersPerOrganization
    }

    /// Queues the create; resolves when its group committed (or it failed).
    func submit(
        _ service: ScanService, organizationID: UUID, request: CreateScanRequest, scanTypes: [ScanType],
        traceparent: String?
    ) async throws -> ScanService.Created {
        try await withCheckedThrowingContinuation { continuation in
            let startWriter = state.withLock { state in
                state.pending[organizationID, default: []].append(
                    Job(request: request, scanTypes: scanTypes, traceparent: traceparent, continuation: continuation))
                guard state.writers[organizationID, default: 0] < writersPerOrganization else { return false }
                state.writers[organizationID, default: 0] += 1
                return true
            }
            if startWriter {
                Task { await self.drain(service, organizationID: organizationID) }
            }
        }
    }

    /// Writes groups for the organization until nothing is pending.
    private func drain(_ service: ScanService, organizationID: UUID) async {
        while true {
            let group: [Job] = state.withLock { state in
                var jobs = state.pending[organizationID] ?? []
                if jobs.isEmpty {
                    state.pending[organizationID] = nil
                    state.writers[organizationID, default: 1] -= 1
                    if state.writers[organizationID] == 0 { state.writers[organizationID] = nil }
                    return []
                }
                let taken = Array(jobs.prefix(maximumGroup))
                jobs.removeFirst(taken.count)
                state.pending[organizationID] = jobs.isEmpty ? nil : jobs
                return taken
            }
            if group.isEmpty { return }
            do {
                let outcomes = try await service.createGroup(organizationID: organizationID, jobs: group)
                for (job, outcome) in zip(group, outcomes) { job.continuation.resume(with: outcome) }
            } catch  where !Self.certainlyRolledBack(error) {
                // The session failed mid-transaction, maybe during COMMIT: the group may have been
                // written. Retrying alone could create every scan twice, so each caller gets the
                // error (a gateway retry is then the caller's choice, with an Idempotency-Key).
                for job in group { job.continuation.resume(throwing: error) }
            } catch {
                // The server refused the group, so nothing of it was written: each request alone,
                // so a bad one fails only itself.
                await withTaskGroup(of: Void.self) { tasks in
                    for job in group {
                        tasks.addTask {
                            do {
                                job.continuation.resume(
                                    returning: try await service.createOne(
                                        organizationID: organizationID, request: job.request, scanTypes: job.scanTypes,
                                        idempotencyKey: nil, requestText: nil, traceparent: job.traceparent))
                            } catch {
                                job.continuation.resume(throwing: error)
                            }
                        }
                    }
                }
            }
        }
    }
}

extension CreateBatcher {
    /// Whether a failed group certainly left nothing behind: the server rejected a statement
    /// (the transaction then rolls back), reported a COMMIT that did not commit, or our own check
    /// failed before COMMIT. A lost or closed session is not certain: it may have died after the
    /// server committed.
    static func certainlyRolledBack(_ error: any Error) -> Bool {
        switch error {
        case let error as PostgresError: return error.code == .server || error.code == .commitFailed
        case is ScanServiceError: return true
        default: return false
        }
    }
}

extension ScanService {
    /// One transaction for a group of creates (no idempotency keys) of one organization; the
    /// outcome of each, in order.
    func createGroup(organizationID: UUID, jobs: [CreateBatcher.Job]) async throws -> [Result<Created, any Error>] {
        try await client.withTransaction(organizationID: organizationID) { c in
            try await Self.lockAdmission(c, organizationID: organizationID)
            let orgRows = try await c.query(
                """
                SELECT o.disabled_at IS NOT NULL, o.queued_scan_cap, o.enabled_scan_types,
                       (SELECT coalesce(sum(q.queued), 0)::bigint FROM organization_queue_counts q WHERE q.organization_id = o.id),
                       o.auto_create_projects
                FROM organizations o
                """)
            guard let org = orgRows.first else {
                return jobs.map { _ in
                    .failure(ScanServiceError(code: .permissionDenied, message: "unknown organization"))
                }
            }
            if try org.decode(Bool.self, at: 0) {
                return jobs.map { _ in
                    .failure(ScanServiceError(code: .failedPrecondition, message: "the organization is disabled"))
                }
            }
            let cap = (try org.decode(Int32.self, at: 1)).asInt
            let enabled = Set(try org.decode([String].self, at: 2))
            var queued = try org.decode(Int.self, at: 3)

            // The group's projects, by id and by the gateway's key (made on first use when the
            // organization says so).
            let (byID, byKey) = try await ProjectResolver.resolve(
                c, organizationID: organizationID, ids: Set(jobs.compactMap { $0.request.project.id }),
                keys: Set(jobs.compactMap { $0.request.project.id == nil ? $0.request.project.externalKey : nil }),
                autoCreate: try org.decode(Bool.self, at: 4), actor: "first use of the project key")

            // Each request's fate; the admitted ones become rows of one INSERT.
            var outcomes: [Result<Created, any Error>?] = Array(repeating: nil, count: jobs.count)
            var rows = JSONText()
            rows.raw("[")
            var admitted = 0
            var rowIndex: [UUID: Int] = [:]
            let now = Date()
            for (index, job) in jobs.enumerated() {
                let project: ProjectResolver.Resolved?
                if let id = job.request.project.id {
                    project = byID[id]
                } else {
                    project = job.request.project.externalKey.flatMap { byKey[$0] }
                }
                guard let project else {
                    outcomes[index] = .failure(Self.unknownProject)
                    continue
                }
                let (projectID, projectTimeout) = (project.id, project.timeoutSeconds)
                let scanTypes = job.scanTypes.isEmpty ? project.defaultScanTypes : job.scanTypes
                if let refused = scanTypes.first(where: { !enabled.contains($0.rawValue) }) {
                    outcomes[index] = .failure(
                        ScanServiceError.invalidArgument(
                            field: "scan_types", "scan type '\(refused.rawValue)' is not enabled for this organization")
                    )
                    continue
                }
                if queued >= cap {
                    outcomes[index] = .failure(
                        ScanServiceError(
                            code: .resourceExhausted, message: "\(queued) scans are already queued (cap \(cap))",
                            retryAfterSeconds: 30))
                    continue
                }
                queued += 1
                let scanID = UUID()
                // Distinct timestamps keep the keyset order of listing exact within a group.
                let createdAt = now.addingTimeInterval(Double(index) * 1e-6)
                let timeout = job.request.timeoutSeconds ?? projectTimeout
                let message = ScanCreateMessage(
                    scanID: scanID, organizationID: organizationID, project: .init(id: projectID),
                    scanTypes: scanTypes,
                    artifact: .init(url: job.request.artifactURL, sha256: job.request.artifactSHA256),
                    requestedAt: createdAt, timeoutSeconds: timeout,
                    labels: job.request.labels.isEmpty ? nil : job.request.labels)
                let outbox = try Self.outboxValues(
                    organizationID: organizationID, payload: message, correlationID: scanID,
                    traceparent: job.traceparent)
                // One element of the group's JSON document (read by jsonb_to_recordset).
                if admitted > 0 { rows.raw(",") }
                admitted += 1
                rows.raw("{\"id\":")
                rows.string(scanID.uuidString.lowercased())
                rows.raw(",\"created_at\":")
                rows.string(RFC3339.string(from: createdAt, fractionDigits: 6))
                rows.raw(",\"project_id\":")
                rows.string(projectID.uuidString.lowercased())
                rows.raw(",\"scan_types\":")
                rows.string("{" + scanTypes.map(\.rawValue).joined(separator: ",") + "}")
                rows.raw(",\"artifact_ref\":")
                rows.string(job.request.artifactURL)
                if let sha = job.request.artifactSHA256 {
                    rows.raw(",\"artifact_sha256\":")
                    rows.string(sha)
                }
                rows.raw(",\"timeout_seconds\":")
                rows.int(timeout)
                rows.raw(",\"labels\":{")
                for (n, (key, value)) in job.request.labels.enumerated() {
                    if n > 0 { rows.raw(",") }
                    rows.string(key)
                    rows.raw(":")
                    rows.string(value)
                }
                rows.raw("}")
                if let traceparent = job.traceparent {
                    rows.raw(",\"traceparent\":")
                    rows.string(traceparent)
                }
                rows.raw(",\"message_id\":")
                rows.string(UUID().uuidString.lowercased())
                rows.raw(",\"headers\":")
                rows.string(outbox.headers.text)
                rows.raw(",\"payload\":")
                rows.string(outbox.payload.text)
                rows.raw("}")
                rowIndex[scanID] = index
            }
            if admitted == 0 { return outcomes.map { $0! } }
            rows.raw("]")
            let document = PostgresJSONB(text: rows.text)
            let inserted = try await c.query(
                """
                WITH r AS (
                    SELECT * FROM jsonb_to_recordset(\(document)) AS r(
                        id uuid, created_at timestamptz, project_id uuid, scan_types text, artifact_ref text,
                        artifact_sha256 text, timeout_seconds integer, labels jsonb, traceparent text, message_id uuid,
                        headers text, payload text)
                ), s AS (
                    INSERT INTO scans (id, created_at, organization_id, project_id, status, scan_types, artifact_ref,
                                       artifact_sha256, timeout_seconds, labels, traceparent)
                    SELECT id, created_at, \(organizationID), project_id, 'queued', scan_types::text[], artifact_ref,
                           artifact_sha256, timeout_seconds, labels, traceparent
                    FROM r
                    RETURNING \(unescaped: Self.columns)
                ), e AS (
                    INSERT INTO scan_events (organization_id, scan_id, scan_created_at, from_status, to_status, actor, reason)
                    SELECT organization_id, id, created_at, NULL, 'queued', 'api', 'created' FROM s
                ), o AS (
                    INSERT INTO outbox (organization_id, message_id, exchange, routing_key, message_type, correlation_id,
                                        headers, payload)
                    SELECT \(organizationID), message_id, \(Exchanges.commands), 'scan.create',
                           \(MessageType.scanCreate.rawValue), id::text, headers::jsonb, payload::jsonb
                    FROM r
                )
                SELECT * FROM s
                """)
            for row in inserted {
                let scan = try Self.decodeScan(row)
                if let index = rowIndex[scan.id] { outcomes[index] = .success(Created(scan: scan, replayed: false)) }
            }
            guard outcomes.allSatisfy({ $0 != nil }) else {
                throw ScanServiceError(code: .conflict, message: "a grouped create did not return its scan")
            }
            return outcomes.map { $0! }
        }
    }
}
