import Crypto
import Foundation

/// The per-attempt credential a runner presents with its findings and status reports: an HMAC
/// (SHA-256) over the scan, its organization and the attempt, keyed by a secret the dispatcher
/// and the writers share (`RUNNER_TOKEN_SECRET`). A runner of one scan cannot mint the token of
/// another scan, organization or attempt; nothing needs storing to check one.
///
/// Form: `v1.<base64url(HMAC-SHA256(key, "v1:<scan>:<organization>:<attempt>"))>`.
public struct RunnerTokenMinter: Sendable {
    private let key: SymmetricKey

    /// `secret` must hold at least 32 bytes.
    public init(secret: String) throws {
        guard secret.utf8.count >= 32 else {
            throw RunnerTokenError("RUNNER_TOKEN_SECRET must be at least 32 bytes")
        }
        key = SymmetricKey(data: Data(secret.utf8))
    }

    public func token(scanID: UUID, organizationID: UUID, attempt: Int) -> String {
        let message = "v1:\(scanID.uuidString.lowercased()):\(organizationID.uuidString.lowercased()):\(attempt)"
        let mac = HMAC<SHA256>.authenticationCode(for: Data(message.utf8), using: key)
        return "v1."
            + Data(mac).base64EncodedString().replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    /// Whether `token` is this attempt's (constant-time comparison).
    public func verify(_ token: String, scanID: UUID, organizationID: UUID, attempt: Int) -> Bool {
        let expected = Array(self.token(scanID: scanID, organizationID: organizationID, attempt: attempt).utf8)
        let given = Array(token.utf8)
        guard expected.count == given.count else { return false }
        var difference: UInt8 = 0
        for (a, b) in zip(expected, given) { difference |= a ^ b }
        return difference == 0
    }
}

public struct RunnerTokenError: Error, CustomStringConvertible, Sendable {
    public var description: String
    init(_ description: String) { self.description = description }
}
