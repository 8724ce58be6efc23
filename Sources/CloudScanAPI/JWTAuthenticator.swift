import Foundation
import HTTPTypes
import Hummingbird
import JWTKit

/// Bearer JWTs: signature by a key from a JWKS document (RS256/ES256/…) or an HS256 secret
/// (development), then `exp` (required), `nbf`, `iss` and `aud`. The organization and roles come
/// from configurable claims. Every refusal is 401 with the same vague detail on purpose.
public struct JWTAuthenticator: Authenticator {
    public struct Configuration: Sendable {
        public var issuer: String
        public var audience: String
        /// The claim that holds the caller's organization id.
        public var organizationClaim: String
        /// The claim that holds the caller's roles (an array of strings).
        public var rolesClaim: String
        /// A JWKS document (JSON) with the verification keys.
        public var jwksJSON: String?
        /// A shared HS256 secret, for development.
        public var hmacSecret: String?

        public init(
            issuer: String, audience: String, organizationClaim: String = "org_id", rolesClaim: String = "roles",
            jwksJSON: String? = nil, hmacSecret: String? = nil
        ) {
            self.issuer = issuer
            self.audience = audience
            self.organizationClaim = organizationClaim
            self.rolesClaim = rolesClaim
            self.jwksJSON = jwksJSON
            self.hmacSecret = hmacSecret
        }
    }

    let keys: JWTKeyCollection
    let configuration: Configuration

    /// Loads the keys; throws for an unusable JWKS or no key at all.
    public init(configuration: Configuration) async throws {
        let keys = JWTKeyCollection()
        if let jwks = configuration.jwksJSON { try await keys.add(jwksJSON: jwks) }
        if let secret = configuration.hmacSecret {
            guard secret.utf8.count >= 32 else {
                throw Problem(.internalServerError, title: "Configuration", detail: "the HS256 secret needs 32+ bytes")
            }
            await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        }
        guard configuration.jwksJSON != nil || configuration.hmacSecret != nil else {
            throw Problem(.internalServerError, title: "Configuration", detail: "no JWT verification key configured")
        }
        self.keys = keys
        self.configuration = configuration
    }

    static let refused = Problem(.unauthorized, title: "Unauthenticated", detail: "a valid bearer token is required")

    public func authenticate(_ request: Request) async throws(Problem) -> Caller {
        guard let header = request.headers[.authorization], header.lowercased().hasPrefix("bearer ") else {
            throw Self.refused
        }
        let token = String(header.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        let claims: Claims
        do {
            claims = try await keys.verify(token, as: Claims.self, iteratingKeys: true)
        } catch {
            throw Self.refused
        }
        guard claims.iss?.value == configuration.issuer,
            (try? claims.aud?.verifyIntendedAudience(includes: configuration.audience)) != nil, claims.aud != nil,
            case .string(let orgText)? = claims.extra[configuration.organizationClaim],
            let organization = UUID(uuidString: orgText)
        else { throw Self.refused }
        var roles: [String] = []
        if case .array(let values)? = claims.extra[configuration.rolesClaim] {
            roles = values.compactMap { if case .string(let role) = $0 { role } else { nil } }
        }
        return Caller(organizationID: organization, subject: claims.sub?.value ?? "unknown", roles: roles)
    }

    /// The registered claims plus every other claim, whatever its name.
    public struct Claims: JWTPayload {
        public var exp: ExpirationClaim
        public var nbf: NotBeforeClaim?
        public var iss: IssuerClaim?
        public var aud: AudienceClaim?
        public var sub: SubjectClaim?
        public var extra: [String: JSONValue]

        public init(
            exp: Date, nbf: Date? = nil, iss: String?, aud: String?, sub: String?, extra: [String: JSONValue] = [:]
        ) {
            self.exp = ExpirationClaim(value: exp)
            self.nbf = nbf.map { NotBeforeClaim(value: $0) }
            self.iss = iss.map { IssuerClaim(value: $0) }
            self.aud = aud.map { AudienceClaim(value: [$0]) }
            self.sub = sub.map { SubjectClaim(value: $0) }
            self.extra = extra
        }

        struct Key: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(_ string: String) { stringValue = string }
            init?(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: Key.self)
            exp = try container.decode(ExpirationClaim.self, forKey: Key("exp"))
            nbf = try container.decodeIfPresent(NotBeforeClaim.self, forKey: Key("nbf"))
            iss = try container.decodeIfPresent(IssuerClaim.self, forKey: Key("iss"))
            aud = try container.decodeIfPresent(AudienceClaim.self, forKey: Key("aud"))
            sub = try container.decodeIfPresent(SubjectClaim.self, forKey: Key("sub"))
            var extra: [String: JSONValue] = [:]
            for key in container.allKeys where !["exp", "nbf", "iss", "aud", "sub"].contains(key.stringValue) {
                extra[key.stringValue] = try container.decode(JSONValue.self, forKey: key)
            }
            self.extra = extra
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: Key.self)
            try container.encode(exp, forKey: Key("exp"))
            try container.encodeIfPresent(nbf, forKey: Key("nbf"))
            try container.encodeIfPresent(iss, forKey: Key("iss"))
            try container.encodeIfPresent(aud, forKey: Key("aud"))
            try container.encodeIfPresent(sub, forKey: Key("sub"))
            for (key, value) in extra { try container.encode(value, forKey: Key(key)) }
        }

        public func verify(using algorithm: some JWTAlgorithm) async throws {
            try exp.verifyNotExpired()
            try nbf?.verifyNotBefore()
        }
    }
}

/// Any JSON value (for claims whose names come from configuration).
public enum JSONValue: Codable, Sendable, Hashable {
    case string(String)
    case number(Double)
    case bool(Bool)
    case array([JSONValue])
    case object([String: JSONValue])
    case null

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .string(let value): try container.encode(value)
        case .number(let value): try container.encode(value)
        case .bool(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        case .null: try container.encodeNil()
        }
    }
}
