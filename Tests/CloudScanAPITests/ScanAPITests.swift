import CloudScanAPI
import CloudScanAuth
import CloudScanHTTP
import CloudScanPostgres
import CloudScanService
import CloudScanTestSupport
import Foundation
import Hummingbird
import Logging
import NIOCore
import Synchronization
import Testing

/// The HTTP API over real sockets: a live server on a free port, the live PostgreSQL, and the
/// libcurl client as the outside caller.
@Suite("HTTP API (live server)")
struct ScanAPITests {
    final class Port: Sendable {
        let value = Mutex<Int?>(nil)
    }

    struct Server {
        var base: String
        var organization: UUID
        var other: UUID
        var database: PostgresClient
        let http = CurlHTTPClient()

        func call(
            _ method: String, _ path: String, as org: UUID?, body: String? = nil, headers: [(String, String)] = []
        ) async throws -> (status: Int, json: [String: Any], headers: CloudScanHTTP.HTTPResponse) {
            var all = headers
            if let org { all.append(("X-Cloudscan-Organization", org.uuidString)) }
            if body != nil { all.append(("Content-Type", "application/json")) }
            let response = try await http.perform(
                CloudScanHTTP.HTTPRequest(
                    method: method, url: base + path, headers: all, body: body.map { Array($0.utf8) }))
            let json = (try? JSONSerialization.jsonObject(with: Data(response.body))) as? [String: Any] ?? [:]
            return (response.status, json, response)
        }
    }

    func withServer(
        cap: Int = 1000, authenticator: (any Authenticator)? = nil, _ body: @Sendable (Server) async throws -> Void
    ) async throws {
        try await TestDatabase.withSchema("api", migrated: true) { db in
            try await TestDatabase.withClient(db.appConfiguration()) { app in
                let (org, _) = try await TestDatabase.seedOrganization(app, queuedScanCap: cap)
                let (other, _) = try await TestDatabase.seedOrganization(app, projectKey: "proj-other")
                var service = ScanService(client: app, logger: TestDatabase.logger("svc"))
                service.webhookSecrets = .development
                let api = ScanAPI(
                    service: service,
                    authenticator: authenticator ?? DevelopmentAuthenticator(),
                    readiness: { ["postgres": (try? await app.query("SELECT 1")) != nil] })
                let port = Port()
                let application = Application(
                    router: api.router(), configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                    onServerRunning: { channel in port.value.withLock { $0 = channel.localAddress?.port } },
                    logger: {
                        var logger = TestDatabase.logger("http"); logger.logLevel = .critical; return logger
                    }())
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await application.runService(gracefulShutdownSignals: []) }
                    while port.value.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(20)) }
                    let base = "http://127.0.0.1:\(port.value.withLock { $0 }!)"
                    do {
                        try await body(Server(base: base, organization: org, other: other, database: app))
                    } catch {
                        group.cancelAll()
                        throw error
                    }
                    group.cancelAll()
                }
            }
        }
    }

    static let createBody =
        #"{"project":{"external_key":"proj-123"},"scan_types":["sast","secrets"],"artifact":{"url":"https://storage.local/a.tar.gz"},"labels":{"branch":"main"}}"#

    @Test("create → 201 with Location; get, list and cancel; cancelling again → 409 problem")
    func lifecycle() async throws {
        try await withServer { server in
            let created = try await server.call("POST", "/api/v1/scans", as: server.organization, body: Self.createBody)
            #expect(created.status == 201)
            let id = try #require(created.json["id"] as? String)
            #expect(created.json["status"] as? String == "queued")
            #expect(created.json["scan_types"] as? [String] == ["sast", "secrets"])
            #expect(created.headers.header("location") == "/api/v1/scans/\(id)")

            let got = try await server.call("GET", "/api/v1/scans/\(id)", as: server.organization)
            #expect(got.status == 200)
            #expect(got.json["id"] as? String == id)

            let list = try await server.call("GET", "/api/v1/scans?page_size=10", as: server.organization)
            #expect(list.status == 200)
            #expect((list.json["items"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == [id])

            let canceled = try await server.call("DELETE", "/api/v1/scans/\(id)", as: server.organization)
            #expect(canceled.status == 200)
            #expect(canceled.json["status"] as? String == "canceled")
            let again = try await server.call("DELETE", "/api/v1/scans/\(id)", as: server.organization)
            #expect(again.status == 409)
            #expect(again.headers.header("content-type") == "application/problem+json")
            #expect(again.json["status"] as? Int == 409)
        }
    }

    @Test("organization B gets 404 for A's scan: get, cancel; and lists nothing")
    func tenancy() async throws {
        try await withServer { server in
            let created = try await server.call("POST", "/api/v1/scans", as: server.organization, body: Self.createBody)
            let id = try #require(created.json["id"] as? String)
            #expect(try await server.call("GET", "/api/v1/scans/\(id)", as: server.other).status == 404)
            #expect(try await server.call("DELETE", "/api/v1/scans/\(id)", as: server.other).status == 404)
            let list = try await server.call("GET", "/api/v1/scans", as: server.other)
            #expect((list.json["items"] as? [Any])?.isEmpty == true)
            #expect(try await server.call("GET", "/api/v1/scans/\(id)", as: server.organization).status == 200)
        }
    }

    @Test("bad input → 400 problem+json naming the field; no caller → 401; big body → 413")
    func badInput() async throws {
        try await withServer { server in
            let cases: [(String, String)] = [
                ("{not json", "body"),
                (
                    #"{"project":{"external_key":"proj-123"},"scan_types":"sast","artifact":{"url":"https://x"}}"#,
                    "scan_types"
                ),
                (
                    #"{"project":{"external_key":"proj-123"},"scan_types":["dast"],"artifact":{"url":"https://x"}}"#,
                    "scan_types"
                ),
                (#"{"project":{"external_key":"proj-123"},"scan_types":["sast"]}"#, "artifact"),
                (
                    #"{"project":{"external_key":"proj-123"},"scan_types":["sast"],"artifact":{"url":"gopher://x"}}"#,
                    "artifact.url"
                ),
                (#"{"project":{"id":"nope"},"scan_types":["sast"],"artifact":{"url":"https://x"}}"#, "project.id"),
                (
                    #"{"project":{"external_key":"unknown"},"scan_types":["sast"],"artifact":{"url":"https://x"}}"#,
                    "project"
                ),
                // Hostile: fullwidth digits (a Unicode-wide hex check took them; the CHECK did not: 500),
                // host files and plain http (the metadata service) outside development, a NUL in a key
                // (libpq would have cut it short), a URL with a space.
                (
                    #"{"project":{"external_key":"proj-123"},"scan_types":["sast"],"artifact":{"url":"https://x/a","sha256":"\#(String(repeating: "\u{FF10}", count: 64))"}}"#,
                    "artifact.sha256"
                ),
                (
                    #"{"project":{"external_key":"proj-123"},"scan_types":["sast"],"artifact":{"url":"file:///etc/shadow"}}"#,
                    "artifact.url"
                ),
                (
                    #"{"project":{"external_key":"proj-123"},"scan_types":["sast"],"artifact":{"url":"http://169.254.169.254/latest"}}"#,
                    "artifact.url"
                ),
                (
                    #"{"project":{"external_key":"proj\u0000123"},"scan_types":["sast"],"artifact":{"url":"https://x/a"}}"#,
                    "project.external_key"
                ),
                (
                    #"{"project":{"external_key":"proj-123"},"scan_types":["sast"],"artifact":{"url":"https://x/a b"}}"#,
                    "artifact.url"
                ),
            ]
            for (body, field) in cases {
                let response = try await server.call("POST", "/api/v1/scans", as: server.organization, body: body)
                #expect(response.status == 400, "\(body)")
                #expect(response.headers.header("content-type") == "application/problem+json")
                #expect(response.json["field"] as? String == field, "\(body) → \(response.json)")
            }
            let anonymous = try await server.call("POST", "/api/v1/scans", as: nil, body: Self.createBody)
            #expect(anonymous.status == 401)
            let huge =
                #"{"project":{"external_key":"proj-123"},"scan_types":["sast"],"artifact":{"url":"https://x"},"labels":{"a":""#
                + String(repeating: "x", count: 70_000) + #""}}"#
            #expect(try await server.call("POST", "/api/v1/scans", as: server.organization, body: huge).status == 413)
            let badStatus = try await server.call("GET", "/api/v1/scans?status=nope", as: server.organization)
            #expect(badStatus.status == 400)
            #expect(badStatus.json["field"] as? String == "status")
        }
    }

    @Test("Idempotency-Key: replay → same scan; other body → 409; queued cap → 429 with Retry-After")
    func idempotencyAndAdmission() async throws {
        try await withServer(cap: 2) { server in
            let first = try await server.call(
                "POST", "/api/v1/scans", as: server.organization, body: Self.createBody,
                headers: [("Idempotency-Key", "abc")])
            let replay = try await server.call(
                "POST", "/api/v1/scans", as: server.organization, body: Self.createBody,
                headers: [("Idempotency-Key", "abc")])
            #expect(first.status == 201)
            #expect(replay.status == 201)
            #expect(replay.json["id"] as? String == first.json["id"] as? String)
            #expect(replay.headers.header("idempotency-replayed") == "true")
            let other = try await server.call(
                "POST", "/api/v1/scans", as: server.organization,
                body: Self.createBody.replacingOccurrences(of: "secrets", with: "iac"),
                headers: [("Idempotency-Key", "abc")])
            #expect(other.status == 409)
            #expect(other.json["field"] as? String == "Idempotency-Key")

            #expect(
                try await server.call("POST", "/api/v1/scans", as: server.organization, body: Self.createBody).status
                    == 201)
            let refused = try await server.call("POST", "/api/v1/scans", as: server.organization, body: Self.createBody)
            #expect(refused.status == 429)
            #expect(refused.headers.header("retry-after") == "30")
        }
    }

    @Test("healthz and readyz")
    func health() async throws {
        try await withServer { server in
            let health = try await server.call("GET", "/healthz", as: nil)
            #expect(health.status == 200)
            let ready = try await server.call("GET", "/readyz", as: nil)
            #expect(ready.status == 200)
            #expect((ready.json["checks"] as? [String: String])?["postgres"] == "up")
        }
    }

    @Test("/metrics exposes the contract names and counts requests and created scans")
    func metrics() async throws {
        try await withServer { server in
            for _ in 0..<3 {
                #expect(
                    try await server.call("POST", "/api/v1/scans", as: server.organization, body: Self.createBody)
                        .status
                        == 201)
            }
            #expect(try await server.call("GET", "/api/v1/scans/\(UUID())", as: server.organization).status == 404)
            let response = try await server.http.perform(.init(url: server.base + "/metrics"))
            #expect(response.status == 200)
            #expect(response.header("Content-Type")?.hasPrefix("text/plain; version=0.0.4") == true)
            let text = String(decoding: response.body, as: UTF8.self)
            let lines = Set(text.split(separator: "\n").map(String.init))
            #expect(lines.contains(#"cloudscan_scans_total{status="queued"} 3"#), "\(text)")
            #expect(
                lines.contains(
                    #"cloudscan_api_requests_total{transport="http",route="POST /api/v1/scans",code="201"} 3"#))
            #expect(
                lines.contains(
                    #"cloudscan_api_requests_total{transport="http",route="GET /api/v1/scans/{id}",code="404"} 1"#))
            for name in [
                "cloudscan_scan_duration_seconds", "cloudscan_k8s_jobs_active",
                "cloudscan_api_request_duration_seconds",
            ] {
                #expect(text.contains("# TYPE \(name) "), "\(name) is not exposed")
            }
        }
    }

    @Test("findings: filtered by severity, scanner and path prefix, paged by cursor; another organization gets 404")
    func findings() async throws {
        try await withServer { server in
            let created = try await server.call("POST", "/api/v1/scans", as: server.organization, body: Self.createBody)
            let id = try #require(created.json["id"] as? String).lowercased()
            let scanID = try #require(UUID(uuidString: id))
            try await server.database.withTransaction(organizationID: server.organization) { c in
                let createdAt = try await c.query("SELECT created_at FROM scans WHERE id = \(scanID)").single()
                    .decode(Date.self, at: 0)
                let severities = ["critical", "high", "medium", "low", "info"]
                for n in 0..<25 {
                    try await c.execute(
                        """
                        INSERT INTO findings (organization_id, scan_id, scan_created_at, scanner, rule_id, severity, title,
                                              path, line, fingerprint)
                        VALUES (\(server.organization), \(scanID), \(createdAt), \(n % 2 == 0 ? "semgrep" : "bandit"),
                                \("R\(n)"), \(severities[n % 5]), \("finding \(n)"),
                                \(n < 10 ? "src/app_\(n).py" : "tests/t_\(n).py"), \(Int32(n)), \("fp-\(n)"))
                        """)
                }
            }
            var seen: [String] = []
            var cursor: String?
            var pages = 0
            repeat {
                let path =
                    "/api/v1/scans/\(id)/findings?page_size=10"
                    + (cursor.map { "&cursor=\($0.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)" }
                        ?? "")
                let page = try await server.call("GET", path, as: server.organization)
                #expect(page.status == 200)
                seen += (page.json["items"] as? [[String: Any]] ?? []).compactMap { $0["fingerprint"] as? String }
                cursor = page.json["next_cursor"] as? String
                pages += 1
            } while cursor != nil && pages < 10
            #expect(pages == 3)
            #expect(Set(seen) == Set((0..<25).map { "fp-\($0)" }))
            #expect(seen.count == 25)

            let high = try await server.call(
                "GET", "/api/v1/scans/\(id)/findings?severity=critical,high&scanner=semgrep", as: server.organization)
            let highItems = high.json["items"] as? [[String: Any]] ?? []
            #expect(!highItems.isEmpty)
            #expect(
                highItems.allSatisfy {
                    ["critical", "high"].contains($0["severity"] as? String) && $0["scanner"] as? String == "semgrep"
                })
            let src = try await server.call(
                "GET", "/api/v1/scans/\(id)/findings?path_prefix=src/", as: server.organization)
            #expect((src.json["items"] as? [[String: Any]])?.count == 10)
            let bad = try await server.call(
                "GET", "/api/v1/scans/\(id)/findings?severity=urgent", as: server.organization)
            #expect(bad.status == 400)
            #expect(bad.json["field"] as? String == "severity")
            #expect(try await server.call("GET", "/api/v1/scans/\(id)/findings", as: server.other).status == 404)
        }
    }

    @Test("PATCH replaces labels only; bad labels → 400; another organization → 404")
    func updateLabels() async throws {
        try await withServer { server in
            let created = try await server.call("POST", "/api/v1/scans", as: server.organization, body: Self.createBody)
            let id = try #require(created.json["id"] as? String)
            let patched = try await server.call(
                "PATCH", "/api/v1/scans/\(id)", as: server.organization, body: #"{"labels":{"team":"payments"}}"#)
            #expect(patched.status == 200)
            #expect(patched.json["labels"] as? [String: String] == ["team": "payments"])
            #expect(patched.json["status"] as? String == "queued")
            let bad = try await server.call(
                "PATCH", "/api/v1/scans/\(id)", as: server.organization, body: #"{"labels":{"Bad Key":"x"}}"#)
            #expect(bad.status == 400)
            #expect(bad.json["field"] as? String == "labels")
            let status = try await server.call(
                "PATCH", "/api/v1/scans/\(id)", as: server.organization, body: #"{"status":"completed"}"#)
            #expect(status.status == 400, "status belongs to the fleet")
            let other = try await server.call(
                "PATCH", "/api/v1/scans/\(id)", as: server.other, body: #"{"labels":{"x":"y"}}"#)
            #expect(other.status == 404)
            let got = try await server.call("GET", "/api/v1/scans/\(id)", as: server.organization)
            #expect(got.json["labels"] as? [String: String] == ["team": "payments"])
        }
    }
}

@Suite("HTTP API: webhook subscriptions (live server)")
struct WebhookAPITests {
    @Test(
        "create → 201 with the secret once; list without secrets; bad input → 400 naming the field; another organization sees and deletes nothing"
    )
    func subscriptions() async throws {
        try await ScanAPITests().withServer { server in
            let admin = [("X-Cloudscan-Roles", "org-admin"), ("X-Cloudscan-Subject", "alice")]
            // A member (no roles) may neither create, list nor delete.
            let member = try await server.call(
                "POST", "/api/v1/webhooks", as: server.organization, body: #"{"url":"https://93.184.216.34/a"}"#)
            #expect(member.status == 403, "\(member.json)")
            #expect(try await server.call("GET", "/api/v1/webhooks", as: server.organization).status == 403)
            let created = try await server.call(
                "POST", "/api/v1/webhooks", as: server.organization,
                body: #"{"url":"https://93.184.216.34/a","events":["scan.failed"],"minimum_severity":"high"}"#,
                headers: admin)
            #expect(created.status == 201, "\(created.json)")
            let id = try #require(created.json["id"] as? String)
            let secret = created.json["secret"] as? String ?? ""
            #expect(secret.hasPrefix("whsec_") && secret.count == 70, "a generated 32-byte secret")
            #expect(created.headers.header("location") == "/api/v1/webhooks/\(id)")
            #expect(created.json["events"] as? [String] == ["scan.failed"])
            #expect(created.json["minimum_severity"] as? String == "high")
            let chosen = try await server.call(
                "POST", "/api/v1/webhooks", as: server.organization,
                body: #"{"url":"http://93.184.216.34:8080/hook","secret":"0123456789abcdef","payload_format":"slack"}"#,
                headers: admin)
            #expect(chosen.status == 201 && chosen.json["secret"] as? String == "0123456789abcdef")
            #expect(chosen.json["events"] as? [String] == ["scan.completed", "scan.failed"], "both by default")
            #expect(
                try await server.call(
                    "DELETE", "/api/v1/webhooks/\(chosen.json["id"] as? String ?? "")", as: server.organization
                ).status == 403, "a member cannot delete an admin's subscription")
            let list = try await server.call("GET", "/api/v1/webhooks", as: server.organization, headers: admin)
            let items = list.json["items"] as? [[String: Any]] ?? []
            #expect(items.count == 2 && items.allSatisfy { $0["secret"] == nil }, "\(items)")
            // Secrets are sealed at rest: neither in the clear nor readable without the key.
            let stored = try await server.database.withTransaction(organizationID: server.organization) { c in
                try await c.query("SELECT secret FROM webhook_subscriptions").map { try $0.decode(String.self, at: 0) }
            }
            #expect(
                stored.count == 2 && stored.allSatisfy { $0.hasPrefix("v1:dev:") && !$0.contains("0123456789abcdef") })
            for (body, field) in [
                (#"{"url":"ftp://x/y"}"#, "url"), (#"{"url":"https://"}"#, "url"),
                (#"{"url":"https://h.invalid/x"}"#, "url"),
                (#"{"url":"https://93.184.216.34/x","events":["scan.started"]}"#, "events"),
                (#"{"url":"https://93.184.216.34/x","events":[]}"#, "events"),
                (#"{"url":"https://93.184.216.34/x","minimum_severity":"urgent"}"#, "minimum_severity"),
                (#"{"url":"https://93.184.216.34/x","payload_format":"xml"}"#, "payload_format"),
                (#"{"url":"https://93.184.216.34/x","secret":"short"}"#, "secret"),
                (#"{"events":["scan.failed"]}"#, "url"),
                // Internal destinations, however spelled: metadata, loopback, private, mapped, numeric.
                (#"{"url":"http://169.254.169.254/latest/meta-data/"}"#, "url"),
                (#"{"url":"http://127.0.0.1:9/h"}"#, "url"),
                (#"{"url":"http://localhost/h"}"#, "url"), (#"{"url":"http://[::1]/h"}"#, "url"),
                (#"{"url":"http://[::ffff:127.0.0.1]/h"}"#, "url"), (#"{"url":"http://10.0.0.8/h"}"#, "url"),
                (#"{"url":"http://0x7f000001/h"}"#, "url"), (#"{"url":"http://2130706433/h"}"#, "url"),
                (#"{"url":"http://[fd00:ec2::254]/h"}"#, "url"),
            ] {
                let refused = try await server.call(
                    "POST", "/api/v1/webhooks", as: server.organization, body: body, headers: admin)
                #expect(refused.status == 400 && refused.json["field"] as? String == field, "\(body): \(refused.json)")
            }
            // Another organization's admin: an empty list, and 404 deleting A's subscription.
            let theirs = try await server.call("GET", "/api/v1/webhooks", as: server.other, headers: admin)
            #expect((theirs.json["items"] as? [Any])?.isEmpty == true)
            #expect(
                try await server.call("DELETE", "/api/v1/webhooks/\(id)", as: server.other, headers: admin).status
                    == 404)
            #expect(
                try await server.call("DELETE", "/api/v1/webhooks/\(id)", as: server.organization, headers: admin)
                    .status
                    == 204)
            #expect(
                try await server.call("DELETE", "/api/v1/webhooks/\(id)", as: server.organization, headers: admin)
                    .status
                    == 404)
            let after = try await server.call("GET", "/api/v1/webhooks", as: server.organization, headers: admin)
            #expect((after.json["items"] as? [Any])?.count == 1)
            // Every change audited like projects: who, what, without the secret or the URL's path.
            let audit = try await server.database.withTransaction(organizationID: server.organization) { c in
                try await c.query(
                    "SELECT action, actor, coalesce(after, before)::text FROM admin_audit WHERE entity_type = 'webhook_subscription' ORDER BY id"
                ).map {
                    (
                        try $0.decode(String.self, at: 0), try $0.decode(String.self, at: 1),
                        try $0.decode(String.self, at: 2)
                    )
                }
            }
            #expect(audit.map(\.0) == ["webhook.create", "webhook.create", "webhook.delete"], "\(audit)")
            #expect(
                audit.allSatisfy { $0.1 == "alice" && !$0.2.contains("0123456789abcdef") && !$0.2.contains("/hook") })
            #expect(
                try await server.call("DELETE", "/api/v1/webhooks/not-a-uuid", as: server.organization, headers: admin)
                    .status == 404)
            #expect(try await server.call("PUT", "/api/v1/webhooks", as: server.organization).status == 405)
        }
    }
}
