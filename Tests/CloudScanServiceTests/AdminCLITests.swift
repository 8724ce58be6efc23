import CloudScanAuth
import CloudScanCore
import CloudScanTestSupport
import Foundation
import Testing

/// `cloudscan admin` as an operator runs it: the binary against PostgreSQL (as the services' role,
/// so row-level security applies), JSON and tables, the audit trail, a bootstrap token the API
/// accepts.
@Suite("cloudscan admin (the process)")
struct AdminCLITests {
    static let binary = TestDatabase.repositoryRoot.appendingPathComponent(".build/debug/cloudscan").path

    @Test(
        "round trip: organization and project created, changed, listed, archived; audited; errors exit 1; a token the API accepts"
    )
    func roundTrip() async throws {
        try await TestDatabase.withSchema("admincli", migrated: true) { db in
            let environment = [
                "DATABASE_URL": TestDatabase.appURL,
                "DB_SCHEMA": db.schema, "JWT_HS256_SECRET": "cli-test-secret-0123456789-abcdefghijk",
                "JWT_ISSUER": "https://issuer.cli", "JWT_AUDIENCE": "cloudscan",
            ]
            func admin(_ arguments: [String]) async throws -> (Int32, String) {
                try await runCommandCapturingOutput(
                    ["/usr/bin/env"] + environment.map { "\($0.key)=\($0.value)" } + [Self.binary, "admin"] + arguments)
            }
            func json(_ arguments: [String]) async throws -> [String: Any] {
                let (status, output) = try await admin(arguments + ["--json", "--actor", "test-operator"])
                #expect(status == 0, "\(arguments): \(output)")
                return (try? JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any]) ?? [:]
            }

            let created = try await json([
                "org", "create", "--name", "CLI Org", "--slug", "cli-org", "--retention-days", "30",
            ])
            let id = try #require(created["id"] as? String)
            #expect(created["retention_days"] as? Int == 30 && created["concurrency_quota"] as? Int == 10)
            let updated = try await json(["org", "update", "cli-org", "--concurrency-quota", "4", "--disable"])
            #expect(updated["concurrency_quota"] as? Int == 4 && updated["disabled"] as? Bool == true)
            #expect(updated["id"] as? String == id)
            let (getStatus, table) = try await admin(["org", "get", id])
            #expect(getStatus == 0)
            #expect(
                table.contains("retention_days        30") && table.contains("slug                  cli-org"),
                "\(table)")
            let listed = try await json(["org", "list"])
            #expect((listed["items"] as? [[String: Any]])?.compactMap { $0["slug"] as? String } == ["cli-org"])

            let project = try await json([
                "project", "create", "--org", "cli-org", "--name", "Web", "--key", "proj-web", "--scan-types",
                "sast,iac", "--scanner-options", #"{"semgrep":{"exclude_paths":["tests/*"]}}"#,
            ])
            #expect(project["default_scan_types"] as? [String] == ["sast", "iac"])
            #expect(project["organization_id"] as? String == id)
            let changed = try await json(["project", "update", "--org", "cli-org", "proj-web", "--timeout", "600"])
            #expect(changed["timeout_seconds"] as? Int == 600 && changed["id"] as? String == project["id"] as? String)
            let (listStatus, projects) = try await admin(["project", "list", "--org", "cli-org"])
            #expect(listStatus == 0)
            let lines = projects.split(separator: "\n")
            #expect(lines.first?.hasPrefix("EXTERNAL_KEY") == true && lines.count == 2, "\(projects)")
            #expect(lines.last?.hasPrefix("proj-web") == true && lines.last?.contains("sast,iac") == true)
            let archived = try await json(["project", "archive", "--org", id, "proj-web"])
            #expect(archived["archived"] as? Bool == true)
            let hidden = try await json(["project", "list", "--org", "cli-org"])
            #expect((hidden["items"] as? [Any])?.isEmpty == true)

            let audit = try await json(["audit", "--org", "cli-org"])
            let entries = audit["items"] as? [[String: Any]] ?? []
            #expect(
                entries.compactMap { $0["action"] as? String } == [
                    "project.archive", "project.update", "project.create", "organization.disable",
                    "organization.create",
                ])
            #expect(entries.allSatisfy { $0["actor"] as? String == "test-operator" && $0["via"] as? String == "cli" })

            // Refusals: exit 1, nothing made.
            #expect(try await admin(["org", "create", "--name", "X", "--slug", "Bad Slug"]).0 == 1)
            #expect(try await admin(["org", "create", "--name", "Again", "--slug", "cli-org"]).0 == 1)
            #expect(try await admin(["org", "get", "no-such-org"]).0 == 1)
            #expect(
                try await admin([
                    "project", "create", "--org", "cli-org", "--name", "P", "--key", "k", "--timeout", "5",
                ]).0 == 1)
            #expect((try await json(["org", "list"])["items"] as? [Any])?.count == 1)

            // A bootstrap token for the organization's admin, as the API verifies it.
            let (tokenStatus, tokenOutput) = try await admin([
                "token", "--org", "cli-org", "--subject", "first-admin", "--role", "org-admin", "--ttl", "600",
            ])
            #expect(tokenStatus == 0)
            let authenticator = try await JWTAuthenticator(
                configuration: .init(
                    issuer: "https://issuer.cli", audience: "cloudscan",
                    hmacSecret: "cli-test-secret-0123456789-abcdefghijk"))
            let caller = try await authenticator.authenticate(
                Credentials(authorization: "Bearer \(tokenOutput.trimmingCharacters(in: .whitespacesAndNewlines))"))
            #expect(caller.organizationID.uuidString.lowercased() == id)
            #expect(caller.subject == "first-admin" && caller.roles == ["org-admin"])
            #expect(AdminPolicy().isOrganizationAdmin(caller))
        }
    }
}
