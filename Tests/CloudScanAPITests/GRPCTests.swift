import CloudScanAuth
import CloudScanCore
import CloudScanGRPC
import CloudScanPostgres
import CloudScanService
import CloudScanTestSupport
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import JWTKit
import Logging
import ServiceLifecycle
import Synchronization
import Testing

/// The gRPC server over real sockets, the live PostgreSQL, and outside clients: Python's grpcio
/// with stubs generated from proto/, and grpc-swift's client.
@Suite("gRPC API (live server)")
struct GRPCTests {
    static let issuer = "https://issuer.test"
    static let audience = "cloudscan"
    static let secret = "grpc-test-secret-0123456789-abcdefghij"

    struct Server {
        var port: Int
        var organization: UUID
        var other: UUID
        var otherProject: UUID
        var database: PostgresClient
        var db: TestDatabase
    }

    /// `tls` makes the server's TLS settings once the organizations exist (client certificates name them).
    func withServer(
        tls: (@Sendable (_ organization: UUID) async throws -> GRPCServerService.TLS)? = nil,
        authenticator: (any Authenticator)? = nil, _ body: @Sendable (Server) async throws -> Void
    ) async throws {
        try await TestDatabase.withSchema("grpc", migrated: true) { db in
            try await TestDatabase.withClient(db.appConfiguration()) { app in
                let (org, _) = try await TestDatabase.seedOrganization(app)
                let (other, otherProject) = try await TestDatabase.seedOrganization(app, projectKey: "proj-other")
                let logger = TestDatabase.logger("grpc")
                let jwt = try await JWTAuthenticator(
                    configuration: .init(issuer: Self.issuer, audience: Self.audience, hmacSecret: Self.secret))
                let hub = ScanWatchHub(
                    listener: PostgresListener(configuration: db.appConfiguration(), logger: logger),
                    sweepInterval: .seconds(30), logger: logger)
                let scanRPCs = ScanGRPCService(
                    service: {
                        var service = ScanService(client: app, logger: logger)
                        service.webhookSecrets = .development
                        return service
                    }(), authenticator: authenticator ?? jwt, hub: hub)
                let server = GRPCServerService(
                    host: "127.0.0.1", port: 0, tls: try await tls?(org),
                    services: [
                        scanRPCs, WebhookGRPCService(scans: scanRPCs), AdminGRPCService(scans: scanRPCs),
                        HealthService(readiness: { ["postgres": true] }), ReflectionServiceV1(),
                        ReflectionServiceV1Alpha(),
                    ], logger: logger)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await hub.run() }
                    group.addTask { try await server.run() }
                    var port: Int?
                    while port == nil {
                        try await Task.sleep(for: .milliseconds(20))
                        port = await server.listeningPort
                    }
                    do {
                        try await body(
                            Server(
                                port: port!, organization: org, other: other, otherProject: otherProject,
                                database: app, db: db))
                    } catch {
                        group.cancelAll()
                        throw error
                    }
                    group.cancelAll()
                }
            }
        }
    }

    static func token(_ organization: UUID) async throws -> String {
        let keys = await JWTKeyCollection().add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        return try await keys.sign(
            JWTAuthenticator.Claims(
                exp: Date().addingTimeInterval(300), iss: issuer, aud: audience, sub: "gateway-swift",
                extra: ["org_id": .string(organization.uuidString)]))
    }

    /// Creates a scan for `organization` with 25 findings; returns its id.
    static func seedScanWithFindings(_ server: Server) async throws -> UUID {
        let created = try await ScanService(client: server.database, logger: TestDatabase.logger("seed")).createScan(
            organizationID: server.organization,
            request: CreateScanRequest(
                project: .init(externalKey: "proj-123"), scanTypes: ["sast"],
                artifactURL: "https://storage.local/f.tar.gz"))
        let severities = ["critical", "high", "medium", "low", "info"]
        try await server.database.withTransaction(organizationID: server.organization) { c in
            for n in 0..<25 {
                try await c.execute(
                    """
                    INSERT INTO findings (organization_id, scan_id, scan_created_at, scanner, rule_id, severity, title,
                                          path, line, fingerprint)
                    VALUES (\(server.organization), \(created.scan.id), \(created.scan.createdAt),
                            \(n % 2 == 0 ? "semgrep" : "bandit"), \("R\(n)"), \(severities[n % 5]), \("finding \(n)"),
                            \(n < 10 ? "src/app_\(n).py" : "tests/t_\(n).py"), \(Int32(n)), \("fp-\(n)"))
                    """)
            }
        }
        return created.scan.id
    }

    @Test("Python grpcio client: every RPC, reflection v1 and v1alpha, health, bad tokens, organization isolation")
    func pythonClient() async throws {
        try await withServer { server in
            let findingsScan = try await Self.seedScanWithFindings(server)
            let (status, output) = try await runCommandCapturingOutput([
                TestDatabase.repositoryRoot.appendingPathComponent(".venv/bin/python").path,
                TestDatabase.repositoryRoot.appendingPathComponent("Tests/clients/grpc_client.py").path,
                "--port", String(server.port), "--secret", Self.secret, "--issuer", Self.issuer, "--audience",
                Self.audience, "--org", server.organization.uuidString.lowercased(), "--other",
                server.other.uuidString.lowercased(), "--findings-scan", findingsScan.uuidString.lowercased(),
            ])
            print(output)
            #expect(status == 0, "the Python client reported failures:\n\(output)")
            #expect(output.contains("  cloudscan.v1.ScanService"))
            #expect(output.contains("  grpc.reflection.v1.ServerReflection"))
            #expect(output.contains("0 failures"))
        }
    }

    @Test(
        "Python grpcio client, AdminService: platform admins manage organizations, organization admins their projects, nobody another organization's"
    )
    func pythonAdminClient() async throws {
        try await withServer { server in
            let (status, output) = try await runCommandCapturingOutput([
                TestDatabase.repositoryRoot.appendingPathComponent(".venv/bin/python").path,
                TestDatabase.repositoryRoot.appendingPathComponent("Tests/clients/grpc_admin_client.py").path,
                "--port", String(server.port), "--secret", Self.secret, "--issuer", Self.issuer, "--audience",
                Self.audience, "--org", server.organization.uuidString.lowercased(), "--other",
                server.other.uuidString.lowercased(), "--other-project", server.otherProject.uuidString.lowercased(),
            ])
            print(output)
            #expect(status == 0, "the Python admin client reported failures:\n\(output)")
            #expect(output.contains("0 failures") && output.contains("ok   ArchiveProject"))
        }
    }

    @Test("WatchScan streams each transition once, in order, and ends at the final state")
    func watchTransitions() async throws {
        try await withServer { server in
            let service = ScanService(client: server.database, logger: TestDatabase.logger("svc"))
            let created = try await service.createScan(
                organizationID: server.organization,
                request: CreateScanRequest(
                    project: .init(externalKey: "proj-123"), scanTypes: ["sast"],
                    artifactURL: "https://storage.local/w.tar.gz"))
            let scan = created.scan
            let token = try await Self.token(server.organization)
            try await withGRPCClient(
                transport: .http2NIOPosix(
                    target: .ipv4(address: "127.0.0.1", port: server.port), transportSecurity: .plaintext)
            ) { client in
                let scans = Cloudscan_V1_ScanService.Client(wrapping: client)
                var request = Cloudscan_V1_WatchScanRequest()
                request.id = scan.id.uuidString
                let events = try await scans.watchScan(
                    request: ClientRequest(message: request, metadata: ["authorization": "Bearer \(token)"])
                ) { response in
                    var seen: [Cloudscan_V1_ScanEvent] = []
                    for try await event in response.messages {
                        seen.append(event)
                        if seen.count == 1 {
                            // The fleet's moves, each a conditional UPDATE plus a scan_events row; a
                            // duplicate (late) move changes nothing and must not be streamed.
                            try await Self.move(server, scan, from: .queued, to: .dispatched)
                            try await Self.move(server, scan, from: .queued, to: .dispatched)
                            try await Self.move(server, scan, from: .dispatched, to: .running)
                            try await Task.sleep(for: .milliseconds(300))
                            try await Self.move(server, scan, from: .running, to: .completed)
                        }
                    }
                    return seen
                }
                let moves = events.map { ($0.fromStatus, $0.toStatus) }
                #expect(moves.count == 4, "\(moves)")
                #expect(
                    moves.map { "\($0.0)→\($0.1)" } == [
                        "unspecified→queued", "queued→dispatched", "dispatched→running", "running→completed",
                    ])
                let sequences = events.dropFirst().map(\.sequence)
                #expect(sequences == sequences.sorted() && Set(sequences).count == 3)
                #expect(events.last?.scan.status == .completed)
                // Watching a finished scan: its state, then the end.
                let again = try await scans.watchScan(
                    request: ClientRequest(message: request, metadata: ["authorization": "Bearer \(token)"])
                ) { response in
                    var count = 0
                    for try await _ in response.messages { count += 1 }
                    return count
                }
                #expect(again == 1)
            }
        }
    }

    /// A state change as the fleet makes it: conditional on the current status, with its event.
    static func move(_ server: Server, _ scan: Scan, from: ScanStatus, to: ScanStatus) async throws {
        try await server.database.withTransaction(organizationID: server.organization) { c in
            let changed = try await c.execute(
                """
                UPDATE scans SET status = \(to.rawValue), version = version + 1, updated_at = now(),
                       finished_at = CASE WHEN \(to.isFinal) THEN now() END
                WHERE id = \(scan.id) AND created_at = \(scan.createdAt) AND status = \(from.rawValue)
                """)
            if changed == 1 {
                try await c.execute(
                    """
                    INSERT INTO scan_events (organization_id, scan_id, scan_created_at, from_status, to_status, actor)
                    VALUES (\(server.organization), \(scan.id), \(scan.createdAt), \(from.rawValue), \(to.rawValue),
                            'test-fleet')
                    """)
            }
        }
    }
}

/// mTLS on the gRPC server: service callers identified by their client certificate.
@Suite("gRPC mTLS (live server)")
struct GRPCMutualTLSTests {
    /// A throwaway PKI made with openssl: a CA, the server's certificate, client certificates.
    struct PKI {
        let directory: URL
        func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

        static func make(organization: UUID) async throws -> PKI {
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("pki-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let pki = PKI(directory: directory)
            func run(_ arguments: [String]) async throws {
                let status = try await runCommand(["openssl"] + arguments)
                guard status == 0 else { throw POSIXError(.EINVAL) }
            }
            func ca(_ name: String) async throws {
                try await run([
                    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                    "-subj", "/CN=\(name)", "-keyout", pki.path("\(name).key"), "-out", pki.path("\(name).pem"),
                ])
            }
            func leaf(_ name: String, ca: String, san: String?) async throws {
                var arguments = [
                    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                    "-subj", "/CN=\(name)", "-keyout", pki.path("\(name).key"), "-out", pki.path("\(name).pem"),
                    "-CA", pki.path("\(ca).pem"), "-CAkey", pki.path("\(ca).key"),
                ]
                if let san { arguments += ["-addext", "subjectAltName=\(san)"] }
                try await run(arguments)
            }
            try await ca("ca")
            try await ca("rogue-ca")
            try await leaf("server", ca: "ca", san: "IP:127.0.0.1,DNS:localhost")
            try await leaf(
                "client-a", ca: "ca",
                san: "URI:spiffe://cloudscan/org/\(organization.uuidString.lowercased())/svc/gateway")
            try await leaf("client-noorg", ca: "ca", san: "URI:spiffe://cloudscan/svc/gateway")
            try await leaf(
                "client-rogue", ca: "rogue-ca",
                san: "URI:spiffe://cloudscan/org/\(organization.uuidString.lowercased())/svc/gateway")
            return pki
        }
    }

    @Test(
        "a client certificate names the organization; one without an organization is refused; no or rogue certificates cannot connect"
    )
    func mutualTLS() async throws {
        let made = Mutex<PKI?>(nil)
        let chained = ChainedAuthenticator(
            bearer: try await JWTAuthenticator(
                configuration: .init(
                    issuer: GRPCTests.issuer, audience: GRPCTests.audience, hmacSecret: GRPCTests.secret)),
            certificate: ClientCertificateAuthenticator(trustDomain: "cloudscan"))
        try await GRPCTests().withServer(
            tls: { organization in
                let pki = try await PKI.make(organization: organization)
                made.withLock { $0 = pki }
                return .init(
                    certificateChainFile: pki.path("server.pem"), privateKeyFile: pki.path("server.key"),
                    clientCAFile: pki.path("ca.pem"))
            }, authenticator: chained
        ) { server in
            let pki = try #require(made.withLock { $0 })
            defer { try? FileManager.default.removeItem(at: pki.directory) }
            func call(_ client: String?) async -> Result<Cloudscan_V1_CreateScanResponse, any Error> {
                var security: HTTP2ClientTransport.Posix.TransportSecurity
                if let client {
                    security = .mTLS(
                        certificateChain: [.file(path: pki.path("\(client).pem"), format: .pem)],
                        privateKey: .file(path: pki.path("\(client).key"), format: .pem)
                    ) { config in
                        config.trustRoots = .certificates([.file(path: pki.path("ca.pem"), format: .pem)])
                    }
                } else {
                    security = .tls { config in
                        config.trustRoots = .certificates([.file(path: pki.path("ca.pem"), format: .pem)])
                    }
                }
                return await Result(catching: {
                    try await withGRPCClient(
                        transport: .http2NIOPosix(
                            target: .ipv4(address: "127.0.0.1", port: server.port), transportSecurity: security)
                    ) { grpc in
                        var request = Cloudscan_V1_CreateScanRequest()
                        request.project.externalKey = "proj-123"
                        request.scanTypes = ["sast"]
                        request.artifact.url = "https://storage.local/m.tar.gz"
                        return try await Cloudscan_V1_ScanService.Client(wrapping: grpc).createScan(
                            request,
                            options: {
                                var o = CallOptions.defaults; o.timeout = .seconds(60); return o
                            }())
                    }
                })
            }
            let created = try await call("client-a").get()
            #expect(created.scan.organizationID == server.organization.uuidString.lowercased())
            #expect(created.scan.status == .queued)
            switch await call("client-noorg") {
            case .success: Issue.record("a certificate without an organization was accepted")
            case .failure(let error): #expect((error as? RPCError)?.code == .unauthenticated, "\(error)")
            }
            for client in [nil, "client-rogue"] {
                switch await call(client) {
                case .success: Issue.record("\(client ?? "no certificate") was accepted")
                case .failure(let error): #expect((error as? RPCError)?.code == .unavailable, "\(error)")
                }
            }
        }
    }
}

extension Result where Failure == any Error {
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}
