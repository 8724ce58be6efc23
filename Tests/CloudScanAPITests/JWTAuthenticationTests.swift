import CloudScanAPI
import CloudScanAuth
import CloudScanTestSupport
import Foundation
import JWTKit
import Testing

/// Bearer tokens against the live HTTP server: what is accepted and everything that is not.
@Suite("JWT authentication (live server)")
struct JWTAuthenticationTests {
    let issuer = "https://issuer.test"
    let audience = "cloudscan"
    let secret = "development-secret-of-at-least-32-bytes!"

    func token(
        _ keys: JWTKeyCollection, org: UUID, exp: Date = Date().addingTimeInterval(300), nbf: Date? = nil,
        iss: String? = nil, aud: String? = nil, kid: String? = nil
    ) async throws -> String {
        let claims = JWTAuthenticator.Claims(
            exp: exp, nbf: nbf, iss: iss ?? issuer, aud: aud ?? audience, sub: "gateway-1",
            extra: ["org_id": .string(org.uuidString), "roles": .array([.string("scanner")])])
        return try await keys.sign(claims, kid: kid.map { JWKIdentifier(string: $0) })
    }

    @Test(
        "HS256 and ES256 (JWKS) tokens are accepted; forged, expired, early, wrong-issuer, wrong-audience and alg-none ones get 401"
    )
    func tokens() async throws {
        let ecKey = ES256PrivateKey()
        let parameters = try #require(ecKey.publicKey.parameters)
        let jwks =
            #"{"keys":[{"kty":"EC","crv":"P-256","alg":"ES256","use":"sig","kid":"k1","x":"\#(parameters.x)","y":"\#(parameters.y)"}]}"#
        let authenticator = try await JWTAuthenticator(
            configuration: .init(issuer: issuer, audience: audience, jwksJSON: jwks, hmacSecret: secret))
        let hmac = await JWTKeyCollection().add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        let ec = await JWTKeyCollection().add(ecdsa: ecKey, kid: "k1")
        let forger = await JWTKeyCollection().add(
            hmac: HMACKey(from: "another-secret-that-is-32-bytes-long"), digestAlgorithm: .sha256)
        let otherEC = await JWTKeyCollection().add(ecdsa: ES256PrivateKey(), kid: "k1")

        try await ScanAPITests().withServer(authenticator: authenticator) { server in
            func post(_ token: String?) async throws -> Int {
                var headers: [(String, String)] = []
                if let token { headers.append(("Authorization", "Bearer \(token)")) }
                return try await server.call(
                    "POST", "/api/v1/scans", as: nil, body: ScanAPITests.createBody, headers: headers
                ).status
            }
            let org = server.organization
            #expect(try await post(try await token(hmac, org: org)) == 201)
            #expect(try await post(try await token(ec, org: org, kid: "k1")) == 201)

            #expect(try await post(nil) == 401)
            #expect(try await post("not-a-jwt") == 401)
            #expect(try await post(try await token(forger, org: org)) == 401, "signed with another secret")
            #expect(try await post(try await token(otherEC, org: org, kid: "k1")) == 401, "signed with another EC key")
            #expect(
                try await post(try await token(hmac, org: org, exp: Date().addingTimeInterval(-60))) == 401, "expired")
            #expect(
                try await post(try await token(hmac, org: org, nbf: Date().addingTimeInterval(600))) == 401,
                "not yet valid")
            #expect(try await post(try await token(hmac, org: org, iss: "https://evil.test")) == 401, "wrong issuer")
            #expect(try await post(try await token(hmac, org: org, aud: "someone-else")) == 401, "wrong audience")
            // alg "none": a valid-looking token with no signature.
            let header = Data(#"{"alg":"none","typ":"JWT"}"#.utf8).base64EncodedString()
            let payload = Data(
                #"{"exp":\#(Int(Date().timeIntervalSince1970) + 300),"iss":"\#(issuer)","aud":"\#(audience)","org_id":"\#(org)"}"#
                    .utf8
            ).base64EncodedString()
            #expect(try await post("\(header).\(payload).") == 401, "alg none")
            // A valid token for B cannot read A's scans.
            let created = try await server.call(
                "POST", "/api/v1/scans", as: nil, body: ScanAPITests.createBody,
                headers: [("Authorization", "Bearer \(try await token(hmac, org: org))")])
            let id = try #require(created.json["id"] as? String)
            let asOther = try await server.call(
                "GET", "/api/v1/scans/\(id)", as: nil,
                headers: [("Authorization", "Bearer \(try await token(hmac, org: server.other))")])
            #expect(asOther.status == 404)
        }
    }
}

@Suite("platform admin identities")
struct PlatformAdminIdentityTests {
    @Test("an mTLS URI listed as a platform admin gets the role and no organization; others keep the SPIFFE rule")
    func certificates() async throws {
        let authenticator = ClientCertificateAuthenticator(
            trustDomain: "cloudscan", platformAdminIdentities: ["spiffe://cloudscan/platform/admin"])
        let admin = try await authenticator.authenticate(
            Credentials(
                clientCertificate: ClientCertificate(commonName: "ops", uris: ["spiffe://cloudscan/platform/admin"])))
        #expect(admin.organizationID == Caller.noOrganization && AdminPolicy().isPlatformAdmin(admin))
        #expect(AdminPolicy().isOrganizationAdmin(admin) == false)
        let org = UUID()
        let service = try await authenticator.authenticate(
            Credentials(
                clientCertificate: ClientCertificate(
                    commonName: "gw", uris: ["spiffe://cloudscan/org/\(org.uuidString.lowercased())/svc/gateway"])))
        #expect(service.organizationID == org && AdminPolicy().isPlatformAdmin(service) == false)
        await #expect(throws: AuthenticationError.self) {
            try await authenticator.authenticate(
                Credentials(
                    clientCertificate: ClientCertificate(commonName: "x", uris: ["spiffe://cloudscan/platform/other"])))
        }
    }

    @Test("development headers: roles from X-Cloudscan-Roles; no organization only for a platform admin")
    func development() async throws {
        let authenticator = DevelopmentAuthenticator()
        let admin = try await authenticator.authenticate(Credentials(developmentRoles: "platform-admin"))
        #expect(admin.organizationID == Caller.noOrganization && admin.roles == ["platform-admin"])
        await #expect(throws: AuthenticationError.self) {
            try await authenticator.authenticate(Credentials(developmentRoles: "org-admin"))
        }
        let org = UUID()
        let member = try await authenticator.authenticate(
            Credentials(developmentOrganization: org.uuidString, developmentRoles: "org-admin, reader"))
        #expect(member.organizationID == org && member.roles == ["org-admin", "reader"])
    }
}
