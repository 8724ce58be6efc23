import Crypto
import Foundation

/// Secrets encrypted at rest (webhook signing secrets): AES-256-GCM under a key from the
/// environment, bound to the row they belong to.
///
/// Keys come as `WEBHOOK_SECRET_KEYS=<id>:<base64 of 32 bytes>[,<id>:<base64>…]`. The first key
/// seals; every listed key opens. A sealed value is `v1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>`,
/// and the context (e.g. the organization and subscription ids) is authenticated with it, so a
/// value copied to another row does not open there. Rotation: put the new key first and keep the
/// old one listed, run `cloudscan admin webhook-secrets reseal` (it re-seals every value under the
/// first key), then drop the old key.
public struct SecretBox: Sendable {
    public struct Failure: Error, Sendable, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    struct Key: Sendable {
        var id: String
        var key: SymmetricKey
    }

    let keys: [Key]

    /// The id of the key that seals.
    public var currentKeyID: String { keys[0].id }

    public init(keys: [(id: String, key: [UInt8])]) throws {
        guard !keys.isEmpty else { throw Failure(message: "at least one key is needed") }
        var seen = Set<String>()
        self.keys = try keys.map { entry in
            guard !entry.id.isEmpty, entry.id.utf8.count <= 32,
                entry.id.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2D }),
                seen.insert(entry.id).inserted
            else { throw Failure(message: "key ids are 1–32 characters of a-z 0-9 -, each once") }
            guard entry.key.count == 32 else { throw Failure(message: "key \(entry.id) is not 32 bytes") }
            return Key(id: entry.id, key: SymmetricKey(data: entry.key))
        }
    }

    /// Parses the `WEBHOOK_SECRET_KEYS` form.
    public static func parse(_ text: String) throws -> SecretBox {
        let entries = try text.split(separator: ",").map { item -> (id: String, key: [UInt8]) in
            let trimmed = item.trimmingCharacters(in: .whitespaces)
            guard let colon = trimmed.firstIndex(of: ":"),
                let data = Data(base64Encoded: String(trimmed[trimmed.index(after: colon)...]))
            else { throw Failure(message: "each key is <id>:<base64 of 32 bytes>") }
            return (String(trimmed[..<colon]), [UInt8](data))
        }
        return try SecretBox(keys: entries)
    }

    /// Encrypts `plaintext` under the current key, bound to `context`.
    public func seal(_ plaintext: String, context: String) throws -> String {
        let key = keys[0]
        let box = try AES.GCM.seal(
            Data(plaintext.utf8), using: key.key, authenticating: Data(Self.associated(key.id, context).utf8))
        guard let combined = box.combined else { throw Failure(message: "sealing failed") }
        return "v1:\(key.id):\(combined.base64EncodedString())"
    }

    /// Whether a stored value is sealed under the current key (else a re-seal is due).
    public func isCurrent(_ stored: String) -> Bool { stored.hasPrefix("v1:\(keys[0].id):") }

    /// Whether a stored value is sealed at all (values written before encryption are not).
    public static func isSealed(_ stored: String) -> Bool { stored.hasPrefix("v1:") }

    /// Decrypts a value sealed for `context` under any listed key.
    public func open(_ stored: String, context: String) throws -> String {
        let parts = stored.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "v1", let data = Data(base64Encoded: String(parts[2])) else {
            throw Failure(message: "not a sealed value")
        }
        guard let key = keys.first(where: { $0.id == parts[1] }) else {
            throw Failure(message: "sealed under key \(parts[1].prefix(32)), which is not configured")
        }
        do {
            let box = try AES.GCM.SealedBox(combined: data)
            let plain = try AES.GCM.open(
                box, using: key.key, authenticating: Data(Self.associated(key.id, context).utf8))
            return String(decoding: plain, as: UTF8.self)
        } catch {
            throw Failure(message: "the sealed value does not open with key \(key.id) for this row")
        }
    }

    static func associated(_ keyID: String, _ context: String) -> String { "cloudscan.secret.v1|\(keyID)|\(context)" }

    /// The context of a webhook subscription's secret.
    public static func webhookContext(organizationID: UUID, subscriptionID: UUID) -> String {
        "webhook|\(organizationID.uuidString.lowercased())|\(subscriptionID.uuidString.lowercased())"
    }

    /// A fixed key for `cloudscan dev` and tests only: never for a deployment.
    public static let development = SecretBox(
        checked: [Key(id: "dev", key: SymmetricKey(data: Array("cloudscan-development-secret-key".utf8)))])

    private init(checked keys: [Key]) { self.keys = keys }
}
