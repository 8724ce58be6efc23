import CloudScanAuth
import CloudScanTestSupport
import Foundation
import JWTKit
import Testing

/// JWKS by URL against a real HTTP server: fetched once, cached, refetched on key rotation
/// (rate-limited) and when stale; an unreachable issuer keeps the last good keys.
@Suite("JWKS by URL (local HTTP server)")
struct JWKSURLTests {
    let issuer = "https://issuer.test"
    let audience = "cloudscan"

    static func jwks(_ key: ES256PrivateKey, kid: String) throws -> String {
        let p = try #require(key.publicKey.parameters)
        return
            #"{"keys":[{"kty":"EC","crv":"P-256","alg":"ES256","use":"sig","kid":"\#(kid)","x":"\#(p.x)","y":"\#(p.y)"}]}"#
    }

    func token(_ key: ES256PrivateKey, kid: String, org: UUID) async throws -> String {
        let keys = await JWTKeyCollection().add(ecdsa: key, kid: JWKIdentifier(string: kid))
        return try await keys.sign(
            JWTAuthenticator.Claims(
                exp: Date().addingTimeInterval(300), iss: issuer, aud: audience, sub: "gw",
                extra: ["org_id": .string(org.uuidString)]),
            kid: JWKIdentifier(string: kid))
    }

    @Test(
        "cached between calls; a new key id triggers one refetch; a forged key id cannot force more; stale keys are refetched; an outage keeps the last good keys"
    )
    func rotation() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("jwks-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("jwks.json")
        let first = ES256PrivateKey()
        let second = ES256PrivateKey()
        try Self.jwks(first, kid: "k1").write(to: file, atomically: true, encoding: .utf8)
        let server = try LocalHTTPServer(serving: directory)
        defer { server.stop() }
        let org = UUID()
        let authenticator = try await JWTAuthenticator(
            configuration: .init(
                issuer: issuer, audience: audience, jwksURL: server.baseURL + "/files/jwks.json",
                jwksMaxAge: .seconds(2), jwksMinimumRefreshInterval: .milliseconds(500)))
        func caller(_ token: String) async -> UUID? {
            try? await authenticator.authenticate(Credentials(authorization: "Bearer \(token)")).organizationID
        }
        #expect(await authenticator.jwksFetches == 1)
        let t1 = try await token(first, kid: "k1", org: org)
        for _ in 0..<5 { #expect(await caller(t1) == org) }
        #expect(await authenticator.jwksFetches == 1, "served from the cache")

        // Rotation: the issuer publishes k2; a k2 token triggers one refetch and is accepted.
        try await Task.sleep(for: .milliseconds(600))
        try Self.jwks(second, kid: "k2").write(to: file, atomically: true, encoding: .utf8)
        let t2 = try await token(second, kid: "k2", org: org)
        #expect(await caller(t2) == org)
        #expect(await authenticator.jwksFetches == 2)
        // From here on, unknown key ids may refetch at most once per minimum interval.
        let windowStart = ContinuousClock.now
        // k1 is gone from the new document: its tokens are refused now (an unknown key id too).
        #expect(await caller(t1) == nil)

        // Unknown key ids in a burst cause at most one fetch per minimum interval.
        let forged = try await token(ES256PrivateKey(), kid: "forged", org: org)
        for _ in 0..<20 { #expect(await caller(forged) == nil) }
        // At most one fetch per started 500 ms interval since the last one (however slow the
        // machine: k1's refusal above counts in the same window).
        let intervals = Int((ContinuousClock.now - windowStart) / .milliseconds(500)) + 1
        #expect(await authenticator.jwksFetches <= 2 + intervals, "forged key ids are rate-limited")

        // Outage: the issuer fails; once stale, a refresh is tried, fails, and k2 still works.
        try "FAIL".write(to: file, atomically: true, encoding: .utf8)
        try await Task.sleep(for: .milliseconds(2_100))
        let before = await authenticator.jwksFetches
        #expect(await caller(t2) == org, "the last good keys stay in use")
        #expect(await authenticator.jwksFetches == before + 1, "a stale cache is refetched")
    }

    @Test("an unreachable JWKS URL at start is a configuration error")
    func unreachable() async throws {
        await #expect(throws: (any Error).self) {
            _ = try await JWTAuthenticator(
                configuration: .init(issuer: issuer, audience: audience, jwksURL: "http://127.0.0.1:9/jwks.json"))
        }
    }
}
