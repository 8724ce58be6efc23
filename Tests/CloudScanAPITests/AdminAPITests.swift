import CloudScanAPI
import CloudScanAuth
import CloudScanHTTP
import CloudScanPostgres
import CloudScanService
import CloudScanTestSupport
import Foundation
import Hummingbird
import Logging
import Synchronization
import Testing

/// The administration API over real sockets with JWT authentication (roles from the tokens, as a
/// deployment has them): platform admins, organization admins, gateways, two organizations.
@Suite("administration API (live server, JWT roles)")
struct AdminAPITests {
    static let issuer = "https://issuer.admin.test"
    static let audience = "cloudscan"
    static let secret = "admin-api-test-secret-0123456789-abcdef"

    struct Server {
        var base: String
        var a: UUID
        var aProject: UUID
        var b: UUID
        var bProject: UUID
        var database: PostgresClient
        let http = CurlHTTPClient()

        /// A bearer token for `organization` (nil: none, a platform admin's) with `roles`.
        func token(_ organization: UUID?, _ roles: [String], subject: String = "alice") async throws -> String {
            try await HS256TokenMinter.token(
                secret: AdminAPITests.secret, issuer: AdminAPITests.issuer, audience: AdminAPITests.audience,
                subject: subject, organizationID: organization, roles: roles, lifetime: 300)
        }

        func call(_ method: String, _ path: String, token: String, body: String? = nil) async throws -> (
            status: Int, json: [String: Any], type: String?
        ) {
            var headers = [("Authorization", "Bearer \(token)")]
            if body != nil { headers.append(("Content-Type", "application/json")) }
            let response = try await http.perform(
                CloudScanHTTP.HTTPRequest(
                    method: method, url: base + path, headers: headers, body: body.map { Array($0.utf8) }))
            let json = (try? JSONSerialization.jsonObject(with: Data(response.body))) as? [String: Any] ?? [:]
            return (response.status, json, response.header("content-type"))
        }
    }

    func withServer(_ body: @Sendable (Server) async throws -> Void) async throws {
        try await TestDatabase.withSchema("admin", migrated: true) { db in
            try await TestDatabase.withClient(db.appConfiguration()) { app in
                let (a, aProject) = try await TestDatabase.seedOrganization(app)
                let (b, bProject) = try await TestDatabase.seedOrganization(app, projectKey: "proj-b")
                let jwt = try await JWTAuthenticator(
                    configuration: .init(issuer: Self.issuer, audience: Self.audience, hmacSecret: Self.secret))
                let api = ScanAPI(
                    service: ScanService(client: app, logger: TestDatabase.logger("svc")), authenticator: jwt,
                    readiness: { [:] })
                let port = ScanAPITests.Port()
                let application = Application(
                    router: api.router(), configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                    onServerRunning: { channel in port.value.withLock { $0 = channel.localAddress?.port } },
                    logger: {
                        var logger = TestDatabase.logger("http")
                        logger.logLevel = .critical
                        return logger
                    }())
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await application.runService(gracefulShutdownSignals: []) }
                    while port.value.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(20)) }
                    let server = Server(
                        base: "http://127.0.0.1:\(port.value.withLock { $0 }!)", a: a, aProject: aProject, b: b,
                        bProject: bProject, database: app)
                    do {
                        try await body(server)
                    } catch {
                        group.cancelAll()
                        throw error
                    }
                    group.cancelAll()
                }
            }
        }
    }

    @Test(
        "a platform admin (a token naming no organization) creates, changes, reads and lists organizations; each change audited with before and after"
    )
    func organizationsLifecycle() async throws {
        try await withServer { server in
            let admin = try await server.token(nil, ["platform-admin"], subject: "ops@platform")
            let created = try await server.call(
                "POST", "/api/v1/admin/organizations", token: admin,
                body: #"{"name":"Acme","slug":"acme","retention_days":30,"enabled_scan_types":["sast","sca"]}"#)
            #expect(created.status == 201, "\(created.json)")
            let id = try #require(created.json["id"] as? String)
            #expect(created.json["retention_days"] as? Int == 30)
            #expect(created.json["concurrency_quota"] as? Int == 10, "default")
            #expect(created.json["enabled_scan_types"] as? [String] == ["sast", "sca"])
            #expect(created.json["auto_create_projects"] as? Bool == false, "off outside development")

            let updated = try await server.call(
                "PATCH", "/api/v1/admin/organizations/\(id)", token: admin,
                body: #"{"concurrency_quota":3,"queued_scan_cap":50,"name":"Acme Inc"}"#)
            #expect(updated.status == 200)
            #expect(updated.json["concurrency_quota"] as? Int == 3 && updated.json["queued_scan_cap"] as? Int == 50)
            #expect(updated.json["name"] as? String == "Acme Inc" && updated.json["retention_days"] as? Int == 30)
            let got = try await server.call("GET", "/api/v1/admin/organizations/\(id)", token: admin)
            #expect(got.status == 200 && got.json["name"] as? String == "Acme Inc")
            let list = try await server.call("GET", "/api/v1/admin/organizations?page_size=2", token: admin)
            #expect(list.status == 200)
            #expect((list.json["items"] as? [[String: Any]])?.count == 2 && list.json["next_cursor"] is String)
            var slugs: [String] = []
            var cursor: String? = nil
            repeat {
                let page = try await server.call(
                    "GET", "/api/v1/admin/organizations?page_size=2" + (cursor.map { "&cursor=\($0)" } ?? ""),
                    token: admin)
                slugs += (page.json["items"] as? [[String: Any]] ?? []).compactMap { $0["slug"] as? String }
                cursor = page.json["next_cursor"] as? String
            } while cursor != nil
            #expect(slugs.count == 3 && slugs.contains("acme") && slugs == slugs.sorted(), "\(slugs)")

            let audit = try await server.call("GET", "/api/v1/admin/organizations/\(id)/audit", token: admin)
            let entries = try #require(audit.json["items"] as? [[String: Any]])
            #expect(entries.map { $0["action"] as? String } == ["organization.update", "organization.create"])
            #expect(entries.allSatisfy { $0["actor"] as? String == "ops@platform" && $0["via"] as? String == "http" })
            let before = entries[0]["before"] as? [String: Any]
            let after = entries[0]["after"] as? [String: Any]
            #expect(before?["concurrency_quota"] as? Int == 10 && after?["concurrency_quota"] as? Int == 3)
            #expect(
                entries[1]["before"] is NSNull && (entries[1]["after"] as? [String: Any])?["slug"] as? String == "acme")
        }
    }

    @Test("validation errors are 400 problems naming the field; duplicates 409")
    func validation() async throws {
        try await withServer { server in
            let admin = try await server.token(nil, ["platform-admin"])
            let orgAdmin = try await server.token(server.a, ["org-admin"])
            let cases: [(String, String, String, String, Int, String)] = [
                ("POST", "/api/v1/admin/organizations", admin, #"{"name":"X","slug":"Bad Slug"}"#, 400, "slug"),
                ("POST", "/api/v1/admin/organizations", admin, #"{"name":"X"}"#, 400, "slug"),
                ("POST", "/api/v1/admin/organizations", admin, #"{"name":"","slug":"x"}"#, 400, "name"),
                (
                    "POST", "/api/v1/admin/organizations", admin, #"{"name":"X","slug":"x","retention_days":0}"#, 400,
                    "retention_days"
                ),
                (
                    "POST", "/api/v1/admin/organizations", admin, #"{"name":"X","slug":"x","retention_days":"30"}"#,
                    400,
                    "retention_days"
                ),
                (
                    "POST", "/api/v1/admin/organizations", admin,
                    #"{"name":"X","slug":"x","enabled_scan_types":["dast"]}"#, 400, "enabled_scan_types"
                ),
                (
                    "POST", "/api/v1/admin/organizations", admin, #"{"name":"X","slug":"x","retention":5}"#, 400,
                    "retention"
                ),
                ("POST", "/api/v1/admin/organizations", admin, "not json", 400, "body"),
                (
                    "PATCH", "/api/v1/admin/organizations/\(server.a)", admin, #"{"concurrency_quota":-1}"#, 400,
                    "concurrency_quota"
                ),
                ("PATCH", "/api/v1/admin/organizations/\(server.a)", admin, #"{"disabled":null}"#, 400, "disabled"),
                (
                    "POST", "/api/v1/projects", orgAdmin, #"{"name":"p","external_key":"k","timeout_seconds":5}"#, 400,
                    "timeout_seconds"
                ),
                ("POST", "/api/v1/projects", orgAdmin, #"{"name":"p","external_key":" k"}"#, 400, "external_key"),
                (
                    "POST", "/api/v1/projects", orgAdmin, #"{"name":"p","external_key":"k","scanner_options":[1]}"#,
                    400,
                    "scanner_options"
                ),
                (
                    "POST", "/api/v1/projects", orgAdmin, #"{"name":"p","external_key":"proj-123"}"#, 409,
                    "external_key"
                ),
            ]
            for (method, path, token, body, status, field) in cases {
                let answer = try await server.call(method, path, token: token, body: body)
                #expect(answer.status == status, "\(method) \(path) \(body): \(answer.status) \(answer.json)")
                #expect(answer.type == "application/problem+json")
                #expect(answer.json["field"] as? String == field, "\(body): \(answer.json)")
            }
            let first = try await server.call(
                "POST", "/api/v1/admin/organizations", token: admin, body: #"{"name":"Dup","slug":"dup"}"#)
            #expect(first.status == 201)
            let again = try await server.call(
                "POST", "/api/v1/admin/organizations", token: admin, body: #"{"name":"Dup","slug":"dup"}"#)
            #expect(again.status == 409 && again.json["field"] as? String == "slug")
        }
    }

    @Test(
        "roles: gateways and organization admins may not administer organizations; A's admin cannot see or change B's projects or settings"
    )
    func tenancy() async throws {
        try await withServer { server in
            let gateway = try await server.token(server.a, [])
            let aAdmin = try await server.token(server.a, ["org-admin"])
            let bAdmin = try await server.token(server.b, ["org-admin"])
            for token in [gateway, aAdmin] {
                #expect(try await server.call("GET", "/api/v1/admin/organizations", token: token).status == 403)
                #expect(
                    try await server.call("GET", "/api/v1/admin/organizations/\(server.b)", token: token).status == 403)
                let patch = try await server.call(
                    "PATCH", "/api/v1/admin/organizations/\(server.b)", token: token, body: #"{"retention_days":1}"#)
                #expect(patch.status == 403 && patch.type == "application/problem+json")
                #expect(
                    try await server.call(
                        "POST", "/api/v1/admin/organizations", token: token, body: #"{"name":"X","slug":"x"}"#
                    ).status == 403)
            }
            // A gateway (no admin role) reads its projects but changes none.
            #expect(try await server.call("GET", "/api/v1/projects", token: gateway).status == 200)
            #expect(
                try await server.call(
                    "POST", "/api/v1/projects", token: gateway, body: #"{"name":"p","external_key":"new"}"#
                ).status == 403)
            // A's admin: B's project does not exist for it, whatever it tries.
            #expect(try await server.call("GET", "/api/v1/projects/\(server.bProject)", token: aAdmin).status == 404)
            #expect(
                try await server.call(
                    "PATCH", "/api/v1/projects/\(server.bProject)", token: aAdmin, body: #"{"name":"mine"}"#
                ).status == 404)
            #expect(
                try await server.call(
                    "POST", "/api/v1/projects/\(server.bProject)/archive", token: aAdmin
                ).status == 404)
            let listed = try await server.call("GET", "/api/v1/projects", token: aAdmin)
            let keys = (listed.json["items"] as? [[String: Any]] ?? []).compactMap { $0["external_key"] as? String }
            #expect(keys == ["proj-123"], "\(keys)")
            // Its own organization's settings only; B's audit trail is not its to read.
            let own = try await server.call("GET", "/api/v1/organization", token: aAdmin)
            #expect(own.status == 200 && own.json["id"] as? String == server.a.uuidString.lowercased())
            #expect(
                try await server.call("GET", "/api/v1/admin/organizations/\(server.b)/audit", token: aAdmin).status
                    == 403)
            // B's project and settings are as they were.
            let bProject = try await server.call("GET", "/api/v1/projects/\(server.bProject)", token: bAdmin)
            #expect(bProject.json["name"] as? String == "Test project" && bProject.json["archived"] as? Bool == false)
            #expect(
                try await server.call("GET", "/api/v1/organization", token: bAdmin).json["retention_days"] as? Int == 90
            )
            // A token naming an organization that is not its own cannot reach B either: no
            // organization claim without the platform admin role is refused outright.
            #expect(
                try await server.call("GET", "/api/v1/projects", token: try await server.token(nil, ["org-admin"]))
                    .status == 401)
        }
    }

    @Test(
        "projects: created, changed, archived; scans use the project's default scan types and timeout; an archived or unknown key is refused, unless first use creates it"
    )
    func projectsAndScans() async throws {
        try await withServer { server in
            let admin = try await server.token(server.a, ["org-admin"], subject: "admin@a")
            let gateway = try await server.token(server.a, [], subject: "gateway")
            let platform = try await server.token(nil, ["platform-admin"])
            let created = try await server.call(
                "POST", "/api/v1/projects", token: admin,
                body:
                    #"{"name":"Payments","external_key":"proj-pay","default_scan_types":["iac","sca"],"timeout_seconds":900,"scanner_options":{"semgrep":{"exclude_paths":["tests/*"]}}}"#
            )
            #expect(created.status == 201, "\(created.json)")
            let id = try #require(created.json["id"] as? String)
            let scan = try await server.call(
                "POST", "/api/v1/scans", token: gateway,
                body: #"{"project":{"external_key":"proj-pay"},"artifact":{"url":"https://storage.local/p.tgz"}}"#)
            #expect(scan.status == 201, "\(scan.json)")
            #expect(scan.json["scan_types"] as? [String] == ["iac", "sca"], "the project's defaults")
            #expect(scan.json["timeout_seconds"] as? Int == 900)
            let changed = try await server.call(
                "PATCH", "/api/v1/projects/\(id)", token: admin, body: #"{"default_scan_types":["secrets"]}"#)
            #expect(changed.status == 200 && changed.json["default_scan_types"] as? [String] == ["secrets"])
            #expect((changed.json["scanner_options"] as? [String: Any])?["semgrep"] != nil, "untouched")
            let archived = try await server.call("POST", "/api/v1/projects/\(id)/archive", token: admin)
            #expect(archived.status == 200 && archived.json["archived"] as? Bool == true)
            let refused = try await server.call(
                "POST", "/api/v1/scans", token: gateway,
                body: #"{"project":{"external_key":"proj-pay"},"artifact":{"url":"https://storage.local/p.tgz"}}"#)
            #expect(refused.status == 400 && refused.json["field"] as? String == "project", "\(refused.json)")
            // The earlier scan stays.
            let earlier = try #require(scan.json["id"] as? String)
            #expect(try await server.call("GET", "/api/v1/scans/\(earlier)", token: gateway).status == 200)
            #expect(
                try await server.call("GET", "/api/v1/projects", token: admin).json["items"].map {
                    ($0 as? [[String: Any]])?.count
                } == 1, "archived ones hidden by default")
            #expect(
                try await server.call("GET", "/api/v1/projects?include_archived=true", token: admin).json["items"].map {
                    ($0 as? [[String: Any]])?.count
                } == 2)

            // An unknown key: refused while auto_create_projects is off, created on first use once on.
            let firstUse =
                #"{"project":{"external_key":"proj-new-7"},"scan_types":["sast"],"artifact":{"url":"https://storage.local/n.tgz"}}"#
            let unknown = try await server.call("POST", "/api/v1/scans", token: gateway, body: firstUse)
            #expect(unknown.status == 400 && (unknown.json["detail"] as? String ?? "").contains("auto_create_projects"))
            #expect(
                try await server.call(
                    "PATCH", "/api/v1/admin/organizations/\(server.a)", token: platform,
                    body: #"{"auto_create_projects":true}"#
                ).status == 200)
            let made = try await server.call("POST", "/api/v1/scans", token: gateway, body: firstUse)
            #expect(made.status == 201, "\(made.json)")
            let again = try await server.call("POST", "/api/v1/scans", token: gateway, body: firstUse)
            #expect(again.status == 201 && again.json["project_id"] as? String == made.json["project_id"] as? String)
            let audit = try await server.call("GET", "/api/v1/organization/audit", token: admin)
            let actions = (audit.json["items"] as? [[String: Any]] ?? []).map {
                "\($0["action"] as? String ?? "") \($0["via"] as? String ?? "")"
            }
            #expect(
                actions == [
                    "project.create scan-create", "organization.update http", "project.archive http",
                    "project.update http", "project.create http",
                ], "\(actions)")
            #expect(try await server.call("GET", "/api/v1/organization/audit", token: gateway).status == 403)
        }
    }

    @Test(
        "disabling an organization refuses its new scans with a clear error and keeps its data; enabling accepts them again"
    )
    func disable() async throws {
        try await withServer { server in
            let platform = try await server.token(nil, ["platform-admin"])
            let gateway = try await server.token(server.a, [])
            let body =
                #"{"project":{"external_key":"proj-123"},"scan_types":["sast"],"artifact":{"url":"https://storage.local/d.tgz"}}"#
            let before = try await server.call("POST", "/api/v1/scans", token: gateway, body: body)
            let id = try #require(before.json["id"] as? String)
            let disabled = try await server.call(
                "PATCH", "/api/v1/admin/organizations/\(server.a)", token: platform, body: #"{"disabled":true}"#)
            #expect(disabled.status == 200 && disabled.json["disabled"] as? Bool == true)
            let refused = try await server.call("POST", "/api/v1/scans", token: gateway, body: body)
            #expect(refused.status == 409 && refused.type == "application/problem+json")
            #expect(refused.json["detail"] as? String == "the organization is disabled")
            #expect(try await server.call("GET", "/api/v1/scans/\(id)", token: gateway).status == 200)
            #expect(try await server.call("GET", "/api/v1/projects", token: gateway).status == 200)
            // Another organization is unaffected.
            let other = try await server.call(
                "POST", "/api/v1/scans", token: try await server.token(server.b, []),
                body: body.replacingOccurrences(of: "proj-123", with: "proj-b"))
            #expect(other.status == 201)
            #expect(
                try await server.call(
                    "PATCH", "/api/v1/admin/organizations/\(server.a)", token: platform, body: #"{"disabled":false}"#
                ).status == 200)
            #expect(try await server.call("POST", "/api/v1/scans", token: gateway, body: body).status == 201)
            let audit = try await server.call("GET", "/api/v1/admin/organizations/\(server.a)/audit", token: platform)
            #expect(
                (audit.json["items"] as? [[String: Any]])?.map { $0["action"] as? String } == [
                    "organization.enable", "organization.disable",
                ])
        }
    }
}
