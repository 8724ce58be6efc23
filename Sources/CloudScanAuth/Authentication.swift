import Foundation
import X509

/// Who is calling: the organization every query is scoped to, and a subject for the audit trail.
public struct Caller: Sendable, Hashable {
    public var organizationID: UUID
    public var subject: String
    public var roles: [String]

    public init(organizationID: UUID, subject: String, roles: [String] = []) {
        self.organizationID = organizationID
        self.subject = subject
        self.roles = roles
    }
}

/// What a request carries that may identify its caller, whatever the transport (HTTP headers or
/// gRPC metadata, and the TLS session).
public struct Credentials: Sendable {
    /// The `Authorization` header / `authorization` metadata.
    public var authorization: String?
    /// A verified client certificate from mTLS, if the connection had one.
    public var clientCertificate: ClientCertificate?
    /// Development only: `X-Cloudscan-Organization` and `X-Cloudscan-Subject`.
    public var developmentOrganization: String?
    public var developmentSubject: String?

    public init(
        authorization: String? = nil, clientCertificate: ClientCertificate? = nil,
        developmentOrganization: String? = nil, developmentSubject: String? = nil
    ) {
        self.authorization = authorization
        self.clientCertificate = clientCertificate
        self.developmentOrganization = developmentOrganization
        self.developmentSubject = developmentSubject
    }
}

/// The parts of a verified client certificate that identify a service caller.
public struct ClientCertificate: Sendable, Hashable {
    /// The subject's common name.
    public var commonName: String?
    /// URI subject alternative names, e.g. `spiffe://cloudscan/org/<uuid>/svc/<name>`.
    public var uris: [String]

    public init(commonName: String?, uris: [String]) {
        self.commonName = commonName
        self.uris = uris
    }

    /// The CN and URI SANs of a certificate the TLS layer has verified.
    public init(_ certificate: Certificate) {
        var uris: [String] = []
        if let names = try? certificate.extensions.subjectAlternativeNames {
            for name in names {
                if case .uniformResourceIdentifier(let uri) = name { uris.append(uri) }
            }
        }
        let commonName = certificate.subject.flatMap { $0 }.first { $0.type == .RDNAttributeType.commonName }
            .map { "\($0.value)" }
        self.init(commonName: commonName, uris: uris)
    }
}

/// A refused caller. Transports answer 401 / UNAUTHENTICATED with `detail`, which is vague on purpose.
public struct AuthenticationError: Error, Sendable, Hashable, CustomStringConvertible {
    public var detail: String
    public init(_ detail: String) { self.detail = detail }
    public var description: String { "AuthenticationError: \(detail)" }
}

/// Turns credentials into a ``Caller`` or refuses them.
public protocol Authenticator: Sendable {
    func authenticate(_ credentials: Credentials) async throws(AuthenticationError) -> Caller
}

/// DEVELOPMENT ONLY: trusts `X-Cloudscan-Organization` (and `X-Cloudscan-Subject`).
/// `cloudscan api` uses it only with `--insecure-development-auth`, and says so loudly at start.
public struct DevelopmentAuthenticator: Authenticator {
    public init() {}

    public func authenticate(_ credentials: Credentials) async throws(AuthenticationError) -> Caller {
        guard let text = credentials.developmentOrganization, let organization = UUID(uuidString: text) else {
            throw AuthenticationError(
                "development authentication: send X-Cloudscan-Organization with an organization id")
        }
        return Caller(organizationID: organization, subject: credentials.developmentSubject ?? "developer")
    }
}

/// Service callers by client certificate (mTLS): the organization comes from a URI SAN
/// `spiffe://<trust domain>/org/<organization id>/svc/<name>`; the subject is that URI. A
/// certificate without such a SAN is refused. The chain itself is verified by the TLS layer
/// against the configured client CA before this runs.
public struct ClientCertificateAuthenticator: Authenticator {
    public var trustDomain: String

    public init(trustDomain: String) { self.trustDomain = trustDomain }

    public func authenticate(_ credentials: Credentials) async throws(AuthenticationError) -> Caller {
        guard let certificate = credentials.clientCertificate else {
            throw AuthenticationError("a client certificate is required")
        }
        let prefix = "spiffe://\(trustDomain)/org/"
        for uri in certificate.uris where uri.hasPrefix(prefix) {
            let rest = uri.dropFirst(prefix.count).split(separator: "/", omittingEmptySubsequences: false)
            if rest.count >= 1, let organization = UUID(uuidString: String(rest[0])) {
                return Caller(organizationID: organization, subject: uri, roles: ["service"])
            }
        }
        throw AuthenticationError("the client certificate names no organization")
    }
}

/// Tries each authenticator in turn: a bearer token when one is sent, else a client certificate.
public struct ChainedAuthenticator: Authenticator {
    public var bearer: (any Authenticator)?
    public var certificate: (any Authenticator)?

    public init(bearer: (any Authenticator)?, certificate: (any Authenticator)?) {
        self.bearer = bearer
        self.certificate = certificate
    }

    public func authenticate(_ credentials: Credentials) async throws(AuthenticationError) -> Caller {
        if credentials.authorization != nil, let bearer { return try await bearer.authenticate(credentials) }
        if credentials.clientCertificate != nil, let certificate {
            return try await certificate.authenticate(credentials)
        }
        if let bearer { return try await bearer.authenticate(credentials) }
        throw AuthenticationError("a client certificate is required")
    }
}
