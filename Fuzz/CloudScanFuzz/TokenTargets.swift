import CloudScanAuth
import CloudScanCore
import Crypto
import Foundation

/// Bearer tokens and JWKS documents: verification never traps, and only a token signed with the
/// configured key, with the expected issuer and audience and an organization, gets a caller.
enum TokenTargets {
    static let secret = "fuzz-hs256-secret-0123456789abcdefghijklmnop"
    static let issuer = "https://issuer.fuzz"
    static let audience = "cloudscan"

    static let authenticator: JWTAuthenticator = blocking {
        do {
            return try await JWTAuthenticator(
                configuration: .init(issuer: issuer, audience: audience, hmacSecret: secret))
        } catch {
            Property.fail("cannot configure the authenticator: \(error)")
        }
    }

    static func jwt(_ bytes: [UInt8]) {
        guard let first = bytes.first else { return }
        let text = String(decoding: bytes.dropFirst(), as: UTF8.self)
        if first & 1 == 0 {
            // A token from outside.
            let authenticator = self.authenticator
            let caller = blocking {
                try? await authenticator.authenticate(Credentials(authorization: "Bearer " + text))
            }
            if let caller {
                // Only a genuine signature gets through: re-sign the token's own header and payload.
                let parts = text.split(separator: ".", omittingEmptySubsequences: false)
                Property.check(parts.count == 3, "a token without three parts was accepted")
                let mac = HMAC<SHA256>.authenticationCode(
                    for: Data((parts[0] + "." + parts[1]).utf8), using: SymmetricKey(data: Data(secret.utf8)))
                Property.check(
                    base64URLDecoded(String(parts[2])) == Data(mac), "accepted a token the key did not sign")
                Property.check(
                    caller.organizationID != Caller.noOrganization || caller.roles.contains("platform-admin"),
                    "a caller without an organization")
            }
        } else {
            // A JWKS document from outside (file or URL): loading it never traps.
            _ = blocking {
                (try? await JWTAuthenticator(configuration: .init(issuer: issuer, audience: audience, jwksJSON: text)))
                    != nil
            }
        }
    }

    static func base64URLDecoded(_ text: String) -> Data? {
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        base64 += String(repeating: "=", count: (4 - base64.count % 4) % 4)
        return Data(base64Encoded: base64)
    }
}
