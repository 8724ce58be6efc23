import CloudScanCore
import CloudScanPostgres
import CloudScanService
import CloudScanTestSupport
import Foundation
import Testing

/// The service layer against the live PostgreSQL, as the services' role (RLS applies).
@Suite("ScanService (live server)")
struct ScanServiceTests {
    func request(_ key: String = "proj-123", types: [String] = ["sast", "secrets"]) -> CreateScanRequest {
        CreateScanRequest(
            project: .init(externalKey: key), scanTypes: types, artifactURL: "https://storage.local/a.tar.gz",
            labels: ["branch": "main"])
    }

    func withService<R>(
        cap: Int = 1000, _ body: (ScanService, PostgresClient, UUID, UUID) async throws -> R
    ) async throws -> R {
        try await TestDatabase.withSchema("svc", migrated: true) { db in
            try await TestDatabase.withClient(db.appConfiguration()) { app in
                let (org, project) = try await TestDatabase.seedOrganization(app, queuedScanCap: cap)
                return try await body(ScanService(client: app, logger: TestDatabase.logger("svc")), app, org, project)
            }
        }
    }

    @Test("create writes the scan, its first event and the scan.create outbox row in one transaction")
    func createWritesAllThree() async throws {
        try await withService { service, app, org, project in
            let created = try await service.createScan(
                organizationID: org, request: request(),
                traceparent: "00-\(String(repeating: "1", count: 32))-\(String(repeating: "2", count: 16))-01")
            #expect(!created.replayed)
            #expect(created.scan.status == .queued)
            #expect(created.scan.projectID == project)
            #expect(created.scan.scanTypes == [.sast, .secrets])
            #expect(created.scan.labels == ["branch": "main"])
            try await app.withTransaction(organizationID: org) { c in
                let events = try await c.query(
                    "SELECT to_status, actor FROM scan_events WHERE scan_id = \(created.scan.id)")
                #expect(events.count == 1)
                #expect(try events[0].decode(String.self, at: 0) == "queued")
                let outbox = try await c.query(
                    "SELECT exchange, routing_key, message_type, payload, headers, sent_at IS NULL FROM outbox")
                #expect(outbox.count == 1)
                let row = try #require(outbox.first)
                #expect(try row.decode(String.self, at: 0) == "cloudscan.commands")
                #expect(try row.decode(String.self, at: 1) == "scan.create")
                #expect(try row.decode(String.self, at: 2) == "scan.create.v1")
                let payload = try MessageCoding.decoder().decode(
                    ScanCreateMessage.self, from: Data(try row.decode(PostgresJSONB.self, at: 3).text.utf8))
                #expect(payload.scanID == created.scan.id)
                #expect(payload.organizationID == org)
                #expect(payload.project.id == project)
                let headers = try row.decode(PostgresJSONB.self, at: 4).decode([String: String].self)
                #expect(headers["x-organization-id"] == org.uuidString.lowercased())
                #expect(headers["traceparent"]?.hasPrefix("00-1111") == true)
                #expect(try row.decode(Bool.self, at: 5))
            }
        }
    }

    @Test("validation names the offending field")
    func validation() async throws {
        try await withService { service, _, org, _ in
            let cases: [(CreateScanRequest, String)] = [
                (request(types: ["dast"]), "scan_types"),
                (request(types: ["sast", "sast"]), "scan_types"),
                (request("no-such-project"), "project"),
                (
                    CreateScanRequest(
                        project: .init(externalKey: "proj-123"), scanTypes: ["sast"], artifactURL: "ftp://x"),
                    "artifact.url"
                ),
                (
                    CreateScanRequest(
                        project: .init(externalKey: "proj-123"), scanTypes: ["sast"], artifactURL: "https://x",
                        artifactSHA256: "ABC"), "artifact.sha256"
                ),
                (
                    CreateScanRequest(
                        project: .init(externalKey: "proj-123"), scanTypes: ["sast"], artifactURL: "https://x",
                        timeoutSeconds: 5), "timeout_seconds"
                ),
                (
                    CreateScanRequest(
                        project: .init(externalKey: "proj-123"), scanTypes: ["sast"], artifactURL: "https://x",
                        labels: ["Bad Key": "v"]), "labels"
                ),
            ]
            for (bad, field) in cases {
                let error = await #expect(throws: ScanServiceError.self) {
                    try await service.createScan(organizationID: org, request: bad)
                }
                #expect(error?.code == .invalidArgument)
                #expect(error?.field == field, "\(String(describing: error))")
            }
            // No scan types: the project's defaults (sast, secrets unless the project says otherwise).
            let defaults = try await service.createScan(organizationID: org, request: request(types: []))
            #expect(defaults.scan.scanTypes == [.sast, .secrets])
        }
    }

    @Test("Idempotency-Key: same key and body → same scan; same key, other body → conflict")
    func idempotency() async throws {
        try await withService { service, app, org, _ in
            let first = try await service.createScan(organizationID: org, request: request(), idempotencyKey: "k-1")
            let again = try await service.createScan(organizationID: org, request: request(), idempotencyKey: "k-1")
            #expect(again.scan.id == first.scan.id)
            #expect(again.replayed)
            let error = await #expect(throws: ScanServiceError.self) {
                try await service.createScan(
                    organizationID: org, request: request(types: ["iac"]), idempotencyKey: "k-1")
            }
            #expect(error?.code == .conflict)
            let other = try await service.createScan(organizationID: org, request: request(), idempotencyKey: "k-2")
            #expect(other.scan.id != first.scan.id)
            let outbox = try await app.withTransaction(organizationID: org) { c in
                try await c.query("SELECT count(*) FROM outbox").single().decode(Int.self, at: 0)
            }
            #expect(outbox == 2, "a replay publishes nothing")
        }
    }

    @Test("another organization's scan is not found: get, list and cancel")
    func tenancy() async throws {
        try await withService { service, app, orgA, _ in
            let (orgB, _) = try await TestDatabase.seedOrganization(app, projectKey: "proj-b")
            let scanA = try await service.createScan(organizationID: orgA, request: request()).scan
            let get = await #expect(throws: ScanServiceError.self) {
                try await service.getScan(organizationID: orgB, id: scanA.id)
            }
            #expect(get?.code == .notFound)
            let cancel = await #expect(throws: ScanServiceError.self) {
                try await service.cancelScan(organizationID: orgB, id: scanA.id, requestedBy: "b")
            }
            #expect(cancel?.code == .notFound)
            #expect(try await service.listScans(organizationID: orgB).scans.isEmpty)
            #expect(try await service.listScans(organizationID: orgA).scans.map(\.id) == [scanA.id])
            // B cannot use A's project either.
            let project = await #expect(throws: ScanServiceError.self) {
                try await service.createScan(organizationID: orgB, request: request("proj-123"))
            }
            #expect(project?.field == "project")
            #expect(try await service.getScan(organizationID: orgA, id: scanA.id).status == .queued)
        }
    }

    @Test("cancel: a queued scan is canceled and scan.cancel is queued; a finished one is a failed precondition")
    func cancel() async throws {
        try await withService { service, app, org, _ in
            let scan = try await service.createScan(organizationID: org, request: request()).scan
            let canceled = try await service.cancelScan(organizationID: org, id: scan.id, requestedBy: "gateway")
            #expect(canceled.status == .canceled)
            #expect(canceled.finishedAt != nil)
            let again = await #expect(throws: ScanServiceError.self) {
                try await service.cancelScan(organizationID: org, id: scan.id, requestedBy: "gateway")
            }
            #expect(again?.code == .failedPrecondition)
            let rows = try await app.withTransaction(organizationID: org) { c in
                try await c.query("SELECT message_type FROM outbox ORDER BY id").map {
                    try $0.decode(String.self, at: 0)
                }
            }
            #expect(rows == ["scan.create.v1", "scan.cancel.v1"])
            let events = try await app.withTransaction(organizationID: org) { c in
                try await c.query("SELECT to_status FROM scan_events WHERE scan_id = \(scan.id) ORDER BY id").map {
                    try $0.decode(String.self, at: 0)
                }
            }
            #expect(events == ["queued", "canceled"])
        }
    }

    @Test("admission: past the queued-scan cap, create is refused with a retry hint")
    func queuedCap() async throws {
        try await withService(cap: 2) { service, _, org, _ in
            _ = try await service.createScan(organizationID: org, request: request())
            _ = try await service.createScan(organizationID: org, request: request())
            let error = await #expect(throws: ScanServiceError.self) {
                try await service.createScan(organizationID: org, request: request())
            }
            #expect(error?.code == .resourceExhausted)
            #expect(error?.retryAfterSeconds == 30)
        }
    }

    @Test(
        "grouped creates: 200 at once are written in shared transactions, each keeps its own outcome (cap, unknown project)"
    )
    func groupedCreates() async throws {
        try await withService(cap: 150) { service, app, org, _ in
            let outcomes = await withTaskGroup(of: Result<UUID, ScanServiceError>.self) { group in
                for n in 0..<200 {
                    group.addTask {
                        do {
                            let key = n % 20 == 0 ? "no-such-project" : "proj-123"
                            return .success(
                                try await service.createScan(organizationID: org, request: request(key)).scan.id)
                        } catch let error as ScanServiceError {
                            return .failure(error)
                        } catch {
                            return .failure(ScanServiceError(code: .conflict, message: "\(error)"))
                        }
                    }
                }
                var all: [Result<UUID, ScanServiceError>] = []
                for await outcome in group { all.append(outcome) }
                return all
            }
            let created = outcomes.compactMap { try? $0.get() }
            let errors = outcomes.compactMap { if case .failure(let e) = $0 { e } else { nil } }
            #expect(Set(created).count == 150, "exactly the cap is admitted")
            #expect(errors.filter { $0.field == "project" }.count == 10, "each unknown project fails alone")
            #expect(errors.filter { $0.code == .resourceExhausted }.count == 40)
            #expect(errors.count == 50)
            try await app.withTransaction(organizationID: org) { c in
                let counts = try await c.query(
                    """
                    SELECT (SELECT count(*) FROM scans), (SELECT count(*) FROM scan_events),
                           (SELECT count(DISTINCT correlation_id) FROM outbox WHERE message_type = 'scan.create.v1'),
                           (SELECT count(DISTINCT xmin::text) FROM scans),
                           (SELECT count(*) FROM scans s JOIN outbox o ON o.correlation_id = s.id::text)
                    """
                ).single()
                #expect(try counts.decode(Int.self, at: 0) == 150)
                #expect(try counts.decode(Int.self, at: 1) == 150)
                #expect(try counts.decode(Int.self, at: 2) == 150)
                #expect(try counts.decode(Int.self, at: 4) == 150, "every scan has its own outbox row")
                let transactions = try counts.decode(Int.self, at: 3)
                #expect(transactions < 150, "creates were grouped: \(transactions) transactions for 150 scans")
            }
        }
        // Text that needs escaping survives the group's JSON document.
        try await withService { service, _, org, _ in
            let labels = ["quote": #"say "hi" \ back/slash"#, "unicode": "é ✓ 𝄞"]
            var create = request()
            create.labels = labels
            create.artifactURL = #"https://storage.local/a"b"\c.tar.gz"#
            let created = try await service.createScan(organizationID: org, request: create)
            let read = try await service.getScan(organizationID: org, id: created.scan.id)
            #expect(read.labels == labels)
            #expect(read.artifactURL == create.artifactURL)
        }
    }

    @Test("list pages newest first with cursors, each scan once")
    func pagination() async throws {
        try await withService { service, _, org, project in
            var ids: [UUID] = []
            for _ in 0..<5 { ids.append(try await service.createScan(organizationID: org, request: request()).scan.id) }
            var seen: [UUID] = []
            var cursor: String?
            var pages = 0
            repeat {
                let page = try await service.listScans(
                    organizationID: org, filter: .init(projectID: project), pageSize: 2, cursor: cursor)
                seen += page.scans.map(\.id)
                cursor = page.nextCursor
                pages += 1
            } while cursor != nil && pages < 10
            #expect(pages == 3)
            #expect(seen == ids.reversed())
            let canceled = try await service.listScans(organizationID: org, filter: .init(status: .canceled))
            #expect(canceled.scans.isEmpty)
            await #expect(throws: ScanServiceError.self) {
                try await service.listScans(organizationID: org, cursor: "garbage")
            }
        }
    }

    /// The organization's queued counter and its actual queued scans.
    static func queued(_ app: PostgresClient, _ org: UUID) async throws -> [Int] {
        try await app.withTransaction(organizationID: org) { c in
            let row = try await c.query(
                """
                SELECT (SELECT coalesce(sum(queued), 0) FROM organization_queue_counts),
                       (SELECT count(*) FROM scans WHERE status = 'queued')
                """
            ).single()
            return [try row.decode(Int.self, at: 0), try row.decode(Int.self, at: 1)]
        }
    }

    @Test("admission's queued counter stays exact through grouped and keyed creates, cancels, status moves and deletes")
    func queuedCounter() async throws {
        try await withService(cap: 60) { service, app, org, _ in
            // 40 grouped creates and 5 keyed ones, concurrently.
            let ids = try await withThrowingTaskGroup(of: UUID.self) { group in
                for n in 0..<45 {
                    group.addTask {
                        try await service.createScan(
                            organizationID: org, request: request(), idempotencyKey: n < 5 ? "key-\(n)" : nil
                        ).scan.id
                    }
                }
                return try await group.reduce(into: [UUID]()) { $0.append($1) }
            }
            #expect(try await Self.queued(app, org) == [45, 45])
            for id in ids.prefix(7) {
                _ = try await service.cancelScan(organizationID: org, id: id, requestedBy: "test")
            }
            #expect(try await Self.queued(app, org) == [38, 38])
            // Status moves as the dispatcher makes them, from four sessions at once; one moves back.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for id in ids[7..<15] {
                    group.addTask {
                        try await app.withTransaction(organizationID: org) { c in
                            try await c.execute("UPDATE scans SET status = 'dispatched' WHERE id = \(id)")
                            _ = try await c.execute("UPDATE scans SET labels = '{}' WHERE id = \(id)")
                        }
                    }
                }
                try await group.waitForAll()
            }
            try await app.withTransaction(organizationID: org) { c in
                _ = try await c.execute("UPDATE scans SET status = 'queued' WHERE id = \(ids[7])")
            }
            #expect(try await Self.queued(app, org) == [31, 31])
            let active = try await app.withTransaction(organizationID: org) { c in
                try await c.query(
                    """
                    SELECT (SELECT coalesce(sum(active), 0) FROM organization_queue_counts),
                           (SELECT count(*) FROM scans WHERE status IN ('dispatched', 'running'))
                    """
                ).single()
            }
            #expect(try active.decode(Int.self, at: 0) == 7, "the active counter follows dispatched/running")
            #expect(try active.decode(Int.self, at: 1) == 7)
            // A rolled-back change leaves the counter alone.
            await #expect(throws: (any Error).self) {
                try await app.withTransaction(organizationID: org) { c in
                    _ = try await c.execute("UPDATE scans SET status = 'running' WHERE status = 'queued'")
                    throw CancellationError()
                }
            }
            try await app.withTransaction(organizationID: org) { c in
                let doomed = ids[15..<17].map { $0.uuidString.lowercased() }
                _ = try await c.execute("DELETE FROM scans WHERE id = ANY(\(doomed)::uuid[])")
            }
            #expect(try await Self.queued(app, org) == [29, 29])
            // Admission reads the counter: 29 queued under a cap of 60 leaves room for 31.
            let more = await withTaskGroup(of: Bool.self) { group in
                for _ in 0..<40 {
                    group.addTask { (try? await service.createScan(organizationID: org, request: request())) != nil }
                }
                return await group.reduce(into: 0) { $0 += $1 ? 1 : 0 }
            }
            #expect(more == 31)
            #expect(try await Self.queued(app, org) == [60, 60])
            // The services' role cannot write the counter itself.
            let denied = await #expect(throws: PostgresError.self) {
                try await app.withTransaction(organizationID: org) { c in
                    _ = try await c.execute("UPDATE organization_queue_counts SET queued = 0")
                }
            }
            #expect(denied?.sqlState == "42501")
            // Deleting the organization cascades through its queued scans and their counter.
            try await app.withTransaction(organizationID: org) { c in
                _ = try await c.execute("DELETE FROM organizations WHERE id = \(org)")
            }
            #expect(try await Self.queued(app, org) == [0, 0])
        }
    }
}
