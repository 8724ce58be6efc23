import CloudScanCore
import CloudScanHTTP
import Foundation
import JWTKit
import Logging

/// Bearer JWTs: signature by a key from a JWKS document (RS256/ES256/…) or an HS256 secret
/// (development), then `exp` (required), `nbf`, `iss` and `aud`. The organization and roles come
/// from configurable claims. Every refusal has the same vague detail on purpose.
///
/// A JWKS by URL is fetched at start (a failure there is a configuration error), cached, and
/// fetched again when older than `jwksMaxAge` or when a token names a key id the cache lacks (at
/// most once per `jwksMinimumRefreshInterval`, so forged key ids cannot hammer the issuer). While
/// the issuer is unreachable the last good keys stay in use.
public final class JWTAuthenticator: Authenticator {
    public struct Configuration: Sendable {
        public var issuer: String
        public var audience: String
        /// The claim that holds the caller's organization id.
        public var organizationClaim: String
        /// The claim that holds the caller's roles (an array of strings).
        public var rolesClaim: String
        /// A JWKS document (JSON) with the verification keys.
        public var jwksJSON: String?
        /// Where to fetch the JWKS document (https; http only for loopback tests).
        public var jwksURL: String?
        public var jwksMaxAge: Duration
        public var jwksMinimumRefreshInterval: Duration
        /// A shared HS256 secret, for development.
        public var hmacSecret: String?
        /// A token with this role may name no organization (a platform admin's).
        public var platformAdminRole: String?

        public init(
            issuer: String, audience: String, organizationClaim: String = "org_id", rolesClaim: String = "roles",
            jwksJSON: String? = nil, jwksURL: String? = nil, jwksMaxAge: Duration = .seconds(600),
            jwksMinimumRefreshInterval: Duration = .seconds(30), hmacSecret: String? = nil,
            platformAdminRole: String? = "platform-admin"
        ) {
            self.platformAdminRole = platformAdminRole
            self.issuer = issuer
            self.audience = audience
            self.organizationClaim = organizationClaim
            self.rolesClaim = rolesClaim
            self.jwksJSON = jwksJSON
            self.jwksURL = jwksURL
            self.jwksMaxAge = jwksMaxAge
            self.jwksMinimumRefreshInterval = jwksMinimumRefreshInterval
            self.hmacSecret = hmacSecret
        }
    }

    /// A configuration that cannot work (no key, short secret, unusable JWKS).
    public struct ConfigurationError: Error, CustomStringConvertible {
        public var description: String
    }

    let configuration: Configuration
    let cache: KeyCache
    let logger: Logger

    /// Loads the keys (fetching the JWKS URL once); throws for an unusable configuration.
    public init(configuration: Configuration, http: CurlHTTPClient = .init(), logger: Logger = Logger(label: "jwt"))
        async throws
    {
        if let secret = configuration.hmacSecret, secret.utf8.count < 32 {
            throw ConfigurationError(description: "the HS256 secret needs 32+ bytes")
        }
        guard configuration.jwksJSON != nil || configuration.jwksURL != nil || configuration.hmacSecret != nil else {
            throw ConfigurationError(description: "no JWT verification key configured")
        }
        self.configuration = configuration
        self.logger = logger
        self.cache = KeyCache(configuration: configuration, http: http, logger: logger)
        try await cache.load()
    }

    static let refused = AuthenticationError("a valid bearer token is required")

    /// How many times the JWKS URL was fetched (for tests and metrics).
    public var jwksFetches: Int { get async { await cache.fetches } }

    public func authenticate(_ credentials: Credentials) async throws(AuthenticationError) -> Caller {
        guard let header = credentials.authorization, header.lowercased().hasPrefix("bearer ") else {
            throw Self.refused
        }
        let token = String(header.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        let claims: Claims
        do {
            claims = try await cache.verify(token)
        } catch {
            throw Self.refused
        }
        guard claims.iss?.value == configuration.issuer,
            (try? claims.aud?.verifyIntendedAudience(includes: configuration.audience)) != nil, claims.aud != nil
        else { throw Self.refused }
        var roles: [String] = []
        if case .array(let values)? = claims.extra[configuration.rolesClaim] {
            roles = values.compactMap { if case .string(let role) = $0 { role } else { nil } }
        }
        let subject = claims.sub?.value ?? "unknown"
        guard case .string(let orgText)? = claims.extra[configuration.organizationClaim],
            let organization = UUID(uuidString: orgText)
        else {
            // A platform admin's token may name no organization.
            if claims.extra[configuration.organizationClaim] == nil, let admin = configuration.platformAdminRole,
                roles.contains(admin)
            {
                return Caller(organizationID: Caller.noOrganization, subject: subject, roles: roles)
            }
            throw Self.refused
        }
        return Caller(organizationID: organization, subject: subject, roles: roles)
    }

    /// The verification keys, refreshed from the JWKS URL when stale or missing a key id.
    actor KeyCache {
        let configuration: Configuration
        let http: CurlHTTPClient
        let logger: Logger
        var keys = JWTKeyCollection()
        var knownKeyIDs: Set<String> = []
        var fetchedAt: ContinuousClock.Instant?
        var lastAttempt: ContinuousClock.Instant?
        var refreshing: Task<Void, Never>?
        var fetches = 0

        init(configuration: Configuration, http: CurlHTTPClient, logger: Logger) {
            self.configuration = configuration
            self.http = http
            self.logger = logger
        }

        func load() async throws {
            var remote: String?
            if let url = configuration.jwksURL { remote = try await fetch(url) }
            (keys, knownKeyIDs) = try await Self.collection(configuration, remote: remote)
            fetchedAt = .now
        }

        func verify(_ token: String) async throws -> Claims {
            if let fetchedAt, configuration.jwksURL != nil, ContinuousClock.now - fetchedAt > configuration.jwksMaxAge {
                await refresh()
            }
            do {
                return try await keys.verify(token, as: Claims.self, iteratingKeys: true)
            } catch {
                // An unknown key id may be a rotation: fetch again (rate-limited) and retry once.
                // (jwt-kit falls back to a default key for unknown ids, so the ids are tracked here.)
                guard configuration.jwksURL != nil, let kid = Self.keyID(token), !knownKeyIDs.contains(kid) else {
                    throw error
                }
                if let lastAttempt, ContinuousClock.now - lastAttempt < configuration.jwksMinimumRefreshInterval {
                    throw error
                }
                await refresh()
                return try await keys.verify(token, as: Claims.self, iteratingKeys: true)
            }
        }

        /// One refresh at a time; failures keep the last good keys.
        private func refresh() async {
            if let refreshing { return await refreshing.value }
            let task = Task {
                do {
                    let text = try await self.fetch(configuration.jwksURL!)
                    (self.keys, self.knownKeyIDs) = try await Self.collection(configuration, remote: text)
                    self.fetchedAt = .now
                } catch {
                    logger.warning("JWKS refresh failed; keeping the last good keys", metadata: ["error": "\(error)"])
                }
            }
            refreshing = task
            await task.value
            refreshing = nil
        }

        private func fetch(_ url: String) async throws -> String {
            lastAttempt = .now
            fetches += 1
            let response = try await http.perform(
                HTTPRequest(
                    url: url, headers: [("Accept", "application/json")], timeout: .seconds(10),
                    maximumResponseBytes: 1 << 20))
            guard response.status == 200 else {
                throw ConfigurationError(description: "JWKS \(url) answered \(response.status)")
            }
            return String(decoding: response.body, as: UTF8.self)
        }

        /// The keys of the configured documents, and their key ids.
        private static func collection(_ configuration: Configuration, remote: String?) async throws
            -> (JWTKeyCollection, Set<String>)
        {
            let keys = JWTKeyCollection()
            var ids: Set<String> = []
            do {
                for document in [configuration.jwksJSON, remote].compactMap({ $0 }) {
                    try await keys.add(jwksJSON: document)
                    let json = try JSONSerialization.jsonObject(with: Data(document.utf8)) as? [String: Any]
                    for key in json?["keys"] as? [[String: Any]] ?? [] {
                        if let kid = key["kid"] as? String { ids.insert(kid) }
                    }
                }
            } catch {
                throw ConfigurationError(description: "not a usable JWKS document (\(error))")
            }
            if let secret = configuration.hmacSecret {
                await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
            }
            return (keys, ids)
        }

        /// The `kid` of a token's header, without verifying anything.
        static func keyID(_ token: String) -> String? {
            guard let part = token.split(separator: ".").first else { return nil }
            var base64 = part.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
            while base64.count % 4 != 0 { base64 += "=" }
            guard let data = Data(base64Encoded: base64),
                let header = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
            else { return nil }
            return header["kid"] as? String
        }
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

/// Tokens signed with the HS256 secret (`JWT_HS256_SECRET`): for bootstrap and development
/// (`cloudscan admin token`). Deployments that verify with a JWKS get their tokens from their
/// identity provider instead.
public enum HS256TokenMinter {
    public static func token(
        secret: String, issuer: String, audience: String, subject: String, organizationID: UUID?, roles: [String],
        lifetime: TimeInterval, organizationClaim: String = "org_id", rolesClaim: String = "roles"
    ) async throws -> String {
        guard secret.utf8.count >= 32 else {
            throw JWTAuthenticator.ConfigurationError(description: "JWT_HS256_SECRET: at least 32 bytes")
        }
        let keys = await JWTKeyCollection().add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        var extra: [String: JSONValue] = [rolesClaim: .array(roles.map { .string($0) })]
        if let organizationID { extra[organizationClaim] = .string(organizationID.uuidString.lowercased()) }
        return try await keys.sign(
            JWTAuthenticator.Claims(
                exp: Date().addingTimeInterval(lifetime), nbf: Date().addingTimeInterval(-5), iss: issuer,
                aud: audience,
                sub: subject, extra: extra))
    }
}
