import Crypto
import Foundation

/// The signature of a webhook delivery, checkable by any receiver with the subscription's secret
/// and an HMAC-SHA256 implementation:
///
///     X-Cloudscan-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
///
/// The timestamp is signed with the body, so a receiver that refuses old timestamps (say, five
/// minutes) refuses a replayed delivery; it dedupes by `X-Cloudscan-Delivery` within that window.
public enum WebhookSignature {
    public static let header = "X-Cloudscan-Signature"

    public static func sign(secret: String, timestamp: Int, body: [UInt8]) -> String {
        var message = Array("\(timestamp).".utf8)
        message.append(contentsOf: body)
        let mac = HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: Data(secret.utf8)))
        return Data(mac).map { String(format: "%02x", $0) }.joined()
    }

    /// The header's value.
    public static func value(secret: String, timestamp: Int, body: [UInt8]) -> String {
        "t=\(timestamp),v1=\(sign(secret: secret, timestamp: timestamp, body: body))"
    }

    /// A new subscription secret: 32 random bytes, hex (`whsec_…`).
    public static func newSecret() -> String {
        "whsec_"
            + SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) }.map { String(format: "%02x", $0) }
            .joined()
    }
}
