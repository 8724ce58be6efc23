import CloudScanAPI
import CloudScanAuth
import CloudScanHTTP
import CloudScanService
import CloudScanTestSupport
import Foundation
import Hummingbird
import HummingbirdTLS
import Synchronization
import Testing

/// TLS and optional client certificates on the HTTP server, with libcurl as the outside client.
@Suite("HTTP mTLS (live server)")
struct HTTPMutualTLSTests {
    @Test(
        "over HTTPS: a client certificate names the organization; a bearer token works without one; no credentials or an organization-less certificate → 401; a rogue CA cannot connect"
    )
    func mutualTLS() async throws {
        try await TestDatabase.withSchema("httptls", migrated: true) { db in
            try await TestDatabase.withClient(db.appConfiguration()) { app in
                let (org, _) = try await TestDatabase.seedOrganization(app)
                let pki = try await GRPCMutualTLSTests.PKI.make(organization: org)
                defer { try? FileManager.default.removeItem(at: pki.directory) }
                let api = ScanAPI(
                    service: ScanService(client: app, logger: TestDatabase.logger("svc")),
                    authenticator: ChainedAuthenticator(
                        bearer: try await JWTAuthenticator(
                            configuration: .init(
                                issuer: GRPCTests.issuer, audience: GRPCTests.audience, hmacSecret: GRPCTests.secret)),
                        certificate: ClientCertificateAuthenticator(trustDomain: "cloudscan")),
                    readiness: { [:] })
                let port = Mutex<Int?>(nil)
                let application = Application(
                    router: api.router(),
                    server: try .tls(
                        .http1(),
                        tlsConfiguration: APITLS.configuration(
                            certificateChainFile: pki.path("server.pem"), privateKeyFile: pki.path("server.key"),
                            clientCAFile: pki.path("ca.pem"))),
                    configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                    onServerRunning: { channel in port.withLock { $0 = channel.localAddress?.port } },
                    logger: TestDatabase.logger("https"))
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await application.runService(gracefulShutdownSignals: []) }
                    while port.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(20)) }
                    let url = "https://127.0.0.1:\(port.withLock { $0 }!)/api/v1/scans"
                    func post(_ client: String?, token: String? = nil) async throws -> (Int, [String: Any]) {
                        let http = CurlHTTPClient(
                            configuration: .init(
                                caFile: pki.path("ca.pem"), clientCertificateFile: client.map { pki.path("\($0).pem") },
                                clientKeyFile: client.map { pki.path("\($0).key") }))
                        var headers = [("Content-Type", "application/json")]
                        if let token { headers.append(("Authorization", "Bearer \(token)")) }
                        let response = try await http.perform(
                            .init(
                                method: "POST", url: url, headers: headers,
                                body: Array(
                                    #"{"project":{"external_key":"proj-123"},"scan_types":["sast"],"artifact":{"url":"https://storage.local/t.tar.gz"}}"#
                                        .utf8)))
                        let json = (try? JSONSerialization.jsonObject(with: Data(response.body))) as? [String: Any]
                        return (response.status, json ?? [:])
                    }
                    let (status, json) = try await post("client-a")
                    #expect(status == 201)
                    #expect((json["organization_id"] as? String)?.lowercased() == org.uuidString.lowercased())
                    #expect(try await post(nil, token: try await GRPCTests.token(org)).0 == 201)
                    #expect(try await post(nil).0 == 401)
                    #expect(try await post("client-noorg").0 == 401)
                    await #expect(throws: HTTPClientError.self) { _ = try await post("client-rogue") }
                    group.cancelAll()
                }
            }
        }
    }
}
