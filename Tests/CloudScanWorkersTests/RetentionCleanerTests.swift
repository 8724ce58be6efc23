import CloudScanCore
import CloudScanPostgres
import CloudScanService
import CloudScanTestSupport
import CloudScanWorkers
import Foundation
import Synchronization
import Testing

/// Retention against live PostgreSQL: two organizations with different retention, scans across
/// months (a whole month past the longest retention, and rows past only one organization's).
@Suite("retention cleaner (live PostgreSQL)")
struct RetentionCleanerTests {
    struct Seeded {
        var organization: UUID
        var scans: [String: UUID] = [:]
    }

    /// A finished (or running) scan `daysAgo` days old with `findings` findings, in the
    /// organization's project; its artifact is `s3://bucket/<label>`.
    static func scan(
        _ app: PostgresClient, _ org: UUID, _ label: String, daysAgo: Int, findings: Int, status: String = "completed"
    ) async throws -> UUID {
        try await app.withTransaction(organizationID: org) { c in
            let row = try await c.query(
                """
                INSERT INTO scans (id, created_at, organization_id, project_id, status, attempt, scan_types, artifact_ref,
                                   findings_high, finished_at)
                SELECT gen_random_uuid(), now() - make_interval(days => \(Int32(daysAgo))), \(org), p.id, \(status), 1,
                       '{sast}', \("s3://bucket/\(label)"), \(Int32(findings)),
                       CASE WHEN \(status) = 'running' THEN NULL ELSE now() END
                FROM projects p
                RETURNING id, created_at
                """
            ).single()
            let id = try row.decode(UUID.self, at: 0)
            let createdAt = try row.decode(Date.self, at: 1)
            try await c.execute(
                """
                INSERT INTO findings (organization_id, scan_id, scan_created_at, scanner, rule_id, severity, title,
                                      fingerprint)
                SELECT \(org), \(id), \(createdAt), 's', 'r', 'high', 't', 'f' || g
                FROM generate_series(1, \(Int32(findings))) g
                """)
            try await c.execute(
                """
                INSERT INTO scan_events (organization_id, scan_id, scan_created_at, from_status, to_status, actor)
                VALUES (\(org), \(id), \(createdAt), 'queued', \(status), 'test')
                """)
            try await c.execute(
                """
                INSERT INTO scan_findings_batches (organization_id, scan_id, scan_created_at, attempt, batch_index, findings)
                VALUES (\(org), \(id), \(createdAt), 1, 0, \(Int32(findings)))
                """)
            try await c.execute(
                """
                INSERT INTO scan_idempotency_keys (organization_id, idempotency_key, request_hash, scan_id, scan_created_at)
                VALUES (\(org), \(label), 'h', \(id), \(createdAt))
                """)
            return id
        }
    }

    static func counts(_ app: PostgresClient, _ org: UUID) async throws -> (scans: Int, findings: Int) {
        try await app.withTransaction(organizationID: org) { c in
            let row = try await c.query("SELECT (SELECT count(*) FROM scans), (SELECT count(*) FROM findings)").single()
            return (try row.decode(Int.self, at: 0), try row.decode(Int.self, at: 1))
        }
    }

    static func exists(_ app: PostgresClient, _ org: UUID, _ scan: UUID) async throws -> Bool {
        try await app.withTransaction(organizationID: org) { c in
            try await c.query("SELECT 1 FROM scans WHERE id = \(scan)").first != nil
        }
    }

    @Test("a retention changed through the administration service takes effect at the cleaner's next run")
    func retentionChangedByAdmin() async throws {
        try await TestDatabase.withSchema("retadm", migrated: true) { db in
            try await TestDatabase.withClient(db.appConfiguration(maximumConnections: 4)) { app in
                let (org, _) = try await TestDatabase.seedOrganization(app)
                let twenty = try await Self.scan(app, org, "twenty", daysAgo: 20, findings: 2)
                let five = try await Self.scan(app, org, "five", daysAgo: 5, findings: 1)
                let cleaner = RetentionCleaner(
                    client: app, deleteArtifact: { _, _ in true }, logger: TestDatabase.logger("cleaner"))
                let first = try await cleaner.run()
                #expect(first.deleted[org] == nil, "90 days: nothing expired")
                let admin = AdminService(client: app, logger: TestDatabase.logger("admin"))
                let changed = try await admin.updateOrganization(
                    id: org, UpdateOrganizationRequest(retentionDays: 10), actor: AdminActor(subject: "t", via: "cli"))
                #expect(changed.retentionDays == 10)
                let second = try await cleaner.run()
                #expect(second.deleted[org].map { [$0.scans, $0.findings] } == [1, 2], "\(second.lines)")
                #expect(try await Self.exists(app, org, twenty) == false)
                #expect(try await Self.exists(app, org, five))
            }
        }
    }

    @Test(
        "each organization's retention: a month past the longest is dropped whole, the rest deleted in batches, nothing else; artifacts first; dry run changes nothing"
    )
    func retention() async throws {
        try await TestDatabase.withSchema("retain", migrated: true) { db in
            let owner = PostgresClient(
                configuration: db.ownerConfiguration(maximumConnections: 2), logger: TestDatabase.logger("o"))
            defer { Task { await owner.shutdown() } }
            // Months back to eight months ago exist (as if the schema had been running that long).
            _ = try await owner.query("SELECT ensure_month_partitions(now() - interval '8 months', 8)")
            try await TestDatabase.withClient(db.appConfiguration(maximumConnections: 6)) { app in
                let (short, _) = try await TestDatabase.seedOrganization(app)
                let (long, _) = try await TestDatabase.seedOrganization(app, projectKey: "proj-long")
                try await app.withTransaction(organizationID: short) { c in
                    try await c.execute("UPDATE organizations SET retention_days = 30")
                }
                let oldMonth = try await owner.query(
                    "SELECT to_char(now() - interval '200 days', 'YYYYMM')"
                ).single().decode(String.self, at: 0)
                var s = Seeded(organization: short)
                var l = Seeded(organization: long)
                s.scans["ancient"] = try await Self.scan(app, short, "s-ancient", daysAgo: 200, findings: 4)
                s.scans["expired1"] = try await Self.scan(app, short, "s-expired1", daysAgo: 60, findings: 3)
                s.scans["expired2"] = try await Self.scan(app, short, "s-expired2", daysAgo: 50, findings: 3)
                s.scans["expired3"] = try await Self.scan(app, short, "s-expired3", daysAgo: 45, findings: 3)
                s.scans["stubborn"] = try await Self.scan(app, short, "s-stubborn", daysAgo: 40, findings: 2)
                s.scans["stuck"] = try await Self.scan(
                    app, short, "s-stuck", daysAgo: 55, findings: 1, status: "running")
                s.scans["fresh"] = try await Self.scan(app, short, "s-fresh", daysAgo: 10, findings: 5)
                l.scans["ancient"] = try await Self.scan(app, long, "l-ancient", daysAgo: 200, findings: 6)
                l.scans["sixty"] = try await Self.scan(app, long, "l-sixty", daysAgo: 60, findings: 3)
                l.scans["fresh"] = try await Self.scan(app, long, "l-fresh", daysAgo: 10, findings: 2)
                let deletedArtifacts = Mutex<[String]>([])
                let cleaner = RetentionCleaner(
                    client: app,
                    deleteArtifact: { reference, organization in
                        // The storage service refuses one artifact: its scan must stay.
                        if reference == "s3://bucket/s-stubborn" { return false }
                        deletedArtifacts.withLock { $0.append("\(organization.uuidString.lowercased()) \(reference)") }
                        return true
                    },
                    configuration: .init(batchScans: 2, batchFindings: 4), logger: TestDatabase.logger("cleaner"))

                let before = (try await Self.counts(app, short), try await Self.counts(app, long))
                let dry = try await cleaner.run(dryRun: true)
                #expect(dry.ran && dry.dryRun)
                let oldLabel = "\(oldMonth.prefix(4))-\(oldMonth.suffix(2))"
                #expect(dry.months.map(\.month).contains(oldLabel), "\(dry.lines)")
                let dropped = dry.months.first { $0.month == oldLabel }
                #expect(dropped?.scans == 2 && dropped?.findings == 10, "\(dry.lines)")
                #expect(dry.deleted[short].map { [$0.scans, $0.findings] } == [4, 11], "\(dry.lines)")
                #expect(dry.deleted[long] == nil)
                #expect(dry.lines.contains { $0.hasPrefix("would drop month \(oldLabel)") }, "\(dry.lines)")
                let afterDry = (try await Self.counts(app, short), try await Self.counts(app, long))
                #expect(afterDry.0 == before.0 && afterDry.1 == before.1, "a dry run changes nothing")
                #expect(deletedArtifacts.withLock { $0.isEmpty })

                let report = try await cleaner.run()
                #expect(report.months.map(\.month).contains(oldLabel), "\(report.lines)")
                // Short retention: the 60/50/45-day scans go in batches; the one whose artifact the
                // storage service kept, the running one and the fresh one stay.
                #expect(report.deleted[short].map { [$0.scans, $0.findings] } == [3, 9], "\(report.lines)")
                #expect(report.batches >= 2, "bounded batches: \(report.batches)")
                #expect(report.deleted[long] == nil, "the long retention's 60-day scan stays")
                for key in ["ancient", "expired1", "expired2", "expired3"] {
                    #expect(try await !Self.exists(app, short, s.scans[key]!), "\(key) is deleted")
                }
                for key in ["stubborn", "stuck", "fresh"] {
                    #expect(try await Self.exists(app, short, s.scans[key]!), "\(key) stays")
                }
                #expect(try await !Self.exists(app, long, l.scans["ancient"]!))
                #expect(try await Self.exists(app, long, l.scans["sixty"]!))
                #expect(try await Self.exists(app, long, l.scans["fresh"]!))
                #expect(try await Self.counts(app, short) == (3, 8))
                #expect(try await Self.counts(app, long) == (2, 5))
                // The month's partitions are gone; the coming months' exist.
                let partitions = try await owner.query(
                    """
                    SELECT to_regclass('scans_p\(unescaped: oldMonth)') IS NULL, to_regclass('findings_p\(unescaped: oldMonth)') IS NULL,
                           to_regclass('scan_events_p\(unescaped: oldMonth)') IS NULL,
                           to_regclass('scans_p' || to_char(now() + interval '3 months', 'YYYYMM')) IS NOT NULL
                    """
                ).single()
                for column in 0..<4 { #expect(try partitions.decode(Bool.self, at: column), "column \(column)") }
                // Nothing is left pointing at deleted scans (batch records, idempotency keys).
                let leftovers = try await owner.query(
                    """
                    SELECT (SELECT count(*) FROM scan_findings_batches b WHERE NOT EXISTS
                                (SELECT 1 FROM scans s WHERE s.id = b.scan_id)),
                           (SELECT count(*) FROM scan_idempotency_keys k WHERE NOT EXISTS
                                (SELECT 1 FROM scans s WHERE s.id = k.scan_id))
                    """
                ).single()
                #expect(try leftovers.decode(Int.self, at: 0) == 0 && leftovers.decode(Int.self, at: 1) == 0)
                let artifacts = deletedArtifacts.withLock { $0 }
                let shortID = short.uuidString.lowercased()
                #expect(
                    Set(artifacts)
                        == Set(
                            ["s-ancient", "s-expired1", "s-expired2", "s-expired3"].map {
                                "\(shortID) s3://bucket/\($0)"
                            }
                                + ["\(long.uuidString.lowercased()) s3://bucket/l-ancient"]), "\(artifacts)")
                // Again: nothing more is expired.
                let again = try await cleaner.run()
                #expect(again.months.isEmpty && again.deleted.isEmpty, "\(again.lines)")
            }
        }
    }
}
