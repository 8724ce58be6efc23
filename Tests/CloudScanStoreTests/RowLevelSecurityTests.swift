import CloudScanPostgres
import CloudScanTestSupport
import Foundation
import Testing

/// Tenancy, from the outside: the services' role, with organization A's setting, sees and changes
/// none of organization B's rows in any tenant table, even with no WHERE clause.
@Suite("Row-level security (live server)")
struct RowLevelSecurityTests {
    static let tenantTables: Set<String> = [
        "organizations", "projects", "scans", "scan_idempotency_keys", "scan_events", "findings", "outbox",
        "processed_messages", "webhook_subscriptions", "webhook_deliveries", "organization_queue_counts",
        "scan_cancel_requests", "scan_findings_batches", "admin_audit",
    ]
    /// Tables with an organization column that no service reads: RLS forced with no policy and no
    /// grant to the services' role (the scan id registry, written by a trigger).
    static let registryTables: Set<String> = ["scan_ids"]
    /// Tables the services' role may only read (their triggers write them).
    static let readOnlyTables: Set<String> = ["organization_queue_counts"]
    /// Tables the services' role may read and append to, never change (the audit trail).
    static let appendOnlyTables: Set<String> = ["admin_audit"]

    /// Inserts one row in every tenant table for `org`, acting as that organization.
    private func seed(_ app: PostgresClient, org: UUID, slug: String) async throws {
        try await app.withTransaction(organizationID: org) { c in
            let project = UUID()
            let scan = UUID()
            let created = Date()
            let subscription = UUID()
            try await c.execute("INSERT INTO organizations (id, slug, name) VALUES (\(org), \(slug), \(slug))")
            try await c.execute(
                "INSERT INTO projects (id, organization_id, name, external_key) VALUES (\(project), \(org), 'p', 'proj-1')"
            )
            try await c.execute(
                """
                INSERT INTO scans (id, created_at, organization_id, project_id, scan_types, artifact_ref)
                VALUES (\(scan), \(created), \(org), \(project), \(["sast"]), 'file:///tmp/a.tar.gz')
                """)
            try await c.execute(
                """
                INSERT INTO scan_idempotency_keys (organization_id, idempotency_key, request_hash, scan_id, scan_created_at)
                VALUES (\(org), 'key-1', 'h', \(scan), \(created))
                """)
            try await c.execute(
                """
                INSERT INTO scan_events (organization_id, scan_id, scan_created_at, to_status, actor)
                VALUES (\(org), \(scan), \(created), 'queued', 'api')
                """)
            try await c.execute(
                """
                INSERT INTO findings (organization_id, scan_id, scan_created_at, scanner, rule_id, severity, title, fingerprint)
                VALUES (\(org), \(scan), \(created), 'bandit', 'B101', 'low', 'assert used', 'fp-1')
                """)
            try await c.execute(
                """
                INSERT INTO outbox (organization_id, message_id, exchange, routing_key, message_type, payload)
                VALUES (\(org), \(UUID()), 'cloudscan.commands', 'scan.create', 'scan.create.v1', '{}')
                """)
            try await c.execute(
                "INSERT INTO processed_messages (consumer, message_id, organization_id) VALUES ('dispatcher', \(UUID().uuidString), \(org))"
            )
            try await c.execute(
                """
                INSERT INTO admin_audit (organization_id, actor, via, action, entity_type, entity_id, after)
                VALUES (\(org), 'test', 'cli', 'organization.create', 'organization', \(org), '{}')
                """)
            try await c.execute(
                """
                INSERT INTO webhook_subscriptions (id, organization_id, url, secret)
                VALUES (\(subscription), \(org), 'https://hooks.example/x', 's3cret')
                """)
            try await c.execute(
                """
                INSERT INTO scan_findings_batches (organization_id, scan_id, scan_created_at, attempt, batch_index)
                VALUES (\(org), \(scan), \(created), 1, 0)
                """)
            try await c.execute(
                "INSERT INTO scan_cancel_requests (organization_id, scan_id, requested_by) VALUES (\(org), \(UUID()), 'gw')"
            )
            try await c.execute(
                """
                INSERT INTO webhook_deliveries (organization_id, subscription_id, event_id, event_type, status)
                VALUES (\(org), \(subscription), 'evt-1', 'scan.completed', 'pending')
                """)
        }
    }

    @Test("every tenant table has RLS enabled and forced; the services' role cannot bypass it")
    func catalogState() async throws {
        try await TestDatabase.withSchema("rlscat", migrated: true) { db in
            try await TestDatabase.withClient(db.ownerConfiguration(maximumConnections: 1)) { owner in
                // Every table (not partition) with an organization_id column, plus organizations itself.
                let rows = try await owner.query(
                    """
                    SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity
                    FROM pg_class c
                    WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition
                      AND (c.relname = 'organizations' OR EXISTS (
                          SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'organization_id'))
                    """)
                let found = Set(try rows.map { try $0.decode(String.self, at: 0) })
                #expect(found == Self.tenantTables.union(Self.registryTables))
                for row in rows {
                    let name = try row.decode(String.self, at: 0)
                    #expect(try row.decode(Bool.self, at: 1), "RLS not enabled on \(name)")
                    #expect(try row.decode(Bool.self, at: 2), "RLS not forced on \(name)")
                }
                let role = try await owner.query(
                    "SELECT rolbypassrls, rolsuper FROM pg_roles WHERE rolname = \(TestDatabase.appUser)"
                ).single()
                #expect(try role.decode(Bool.self, at: 0) == false)
                #expect(try role.decode(Bool.self, at: 1) == false)
                let owns = try await owner.query(
                    "SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = \(TestDatabase.appUser))"
                ).single().decode(Int.self, at: 0)
                #expect(owns == 0, "the services' role must own no table (owners can disable RLS)")
            }
        }
    }

    @Test("with A's setting, no tenant table returns B's rows and B's rows cannot be written")
    func isolation() async throws {
        try await TestDatabase.withSchema("rls", migrated: true) { db in
            try await TestDatabase.withClient(db.appConfiguration(maximumConnections: 2)) { app in
                let orgA = UUID()
                let orgB = UUID()
                try await seed(app, org: orgA, slug: "org-a-\(orgA.uuidString.prefix(6).lowercased())")
                try await seed(app, org: orgB, slug: "org-b-\(orgB.uuidString.prefix(6).lowercased())")

                for table in Self.tenantTables.sorted() {
                    let column = table == "organizations" ? "id" : "organization_id"
                    let seen = try await app.withTransaction(organizationID: orgA) { c in
                        try await c.query("SELECT \(unescaped: column) FROM \(identifier: table)").map {
                            try $0.decode(UUID.self, at: 0)
                        }
                    }
                    #expect(!seen.isEmpty, "A sees its own rows in \(table)")
                    #expect(seen.allSatisfy { $0 == orgA }, "A sees another organization's rows in \(table)")

                    // Updates and deletes aimed at B touch nothing (or are refused outright).
                    if Self.readOnlyTables.contains(table) || Self.appendOnlyTables.contains(table) {
                        let refused = await #expect(throws: PostgresError.self) {
                            try await app.withTransaction(organizationID: orgA) { c in
                                try await c.execute(
                                    "DELETE FROM \(identifier: table) WHERE \(unescaped: column) = \(orgB)")
                            }
                        }
                        #expect(refused?.sqlState == "42501", "the services' role may not write \(table)")
                    } else {
                        let touched = try await app.withTransaction(organizationID: orgA) { c in
                            try await c.execute("DELETE FROM \(identifier: table) WHERE \(unescaped: column) = \(orgB)")
                        }
                        #expect(touched == 0, "A deleted B's rows in \(table)")
                    }

                    // With no organization set, nothing at all is visible.
                    let anonymous = try await app.withTransaction { c in
                        try await c.query("SELECT count(*) FROM \(identifier: table)").single().decode(Int.self, at: 0)
                    }
                    #expect(anonymous == 0, "\(table) is visible without an organization")
                }

                // B still has all its rows (the deletes above did nothing).
                let bFindings = try await app.withTransaction(organizationID: orgB) { c in
                    try await c.query("SELECT count(*) FROM findings").single().decode(Int.self, at: 0)
                }
                #expect(bFindings == 1)

                // Writing rows for B while acting as A is refused.
                let projectB = try await app.withTransaction(organizationID: orgB) { c in
                    try await c.query("SELECT id FROM projects").single().decode(UUID.self, at: 0)
                }
                let insert = await #expect(throws: PostgresError.self) {
                    try await app.withTransaction(organizationID: orgA) { c in
                        try await c.execute(
                            "INSERT INTO projects (organization_id, name, external_key) VALUES (\(orgB), 'x', 'sneaky')"
                        )
                    }
                }
                #expect(insert?.sqlState == "42501")
                let outbox = await #expect(throws: PostgresError.self) {
                    try await app.withTransaction(organizationID: orgA) { c in
                        try await c.execute(
                            """
                            INSERT INTO outbox (organization_id, message_id, exchange, routing_key, message_type, payload)
                            VALUES (\(orgB), \(UUID()), 'cloudscan.commands', 'scan.cancel', 'scan.cancel.v1', '{}')
                            """)
                    }
                }
                #expect(outbox?.sqlState == "42501")
                // Moving A's row into B is refused by the WITH CHECK clause.
                let move = await #expect(throws: PostgresError.self) {
                    try await app.withTransaction(organizationID: orgA) { c in
                        try await c.execute("UPDATE webhook_subscriptions SET organization_id = \(orgB)")
                    }
                }
                #expect(move?.sqlState == "42501")
                _ = projectB
            }
        }
    }

    @Test("partitions cannot be read directly by the services' role")
    func partitionsClosed() async throws {
        try await TestDatabase.withSchema("rlspart", migrated: true) { db in
            let partition = try await TestDatabase.withClient(db.ownerConfiguration(maximumConnections: 1)) { owner in
                try await owner.query(
                    "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace AND relname LIKE 'findings_p%' LIMIT 1"
                ).single().decode(String.self, at: 0)
            }
            try await TestDatabase.withClient(db.appConfiguration(maximumConnections: 1)) { app in
                let error = await #expect(throws: PostgresError.self) {
                    try await app.query("SELECT count(*) FROM \(identifier: partition)")
                }
                #expect(error?.sqlState == "42501")
            }
        }
    }
}
