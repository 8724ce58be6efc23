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

    /// The organization of a platform admin who names none: no organization has it, so every
    /// organization-scoped query of such a caller finds nothing.
    public static let noOrganization = UUID(uuid: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
}

/// Who may administer what: platform admins (a JWT role, or an mTLS identity named in the
/// configuration) manage organizations; an organization's admins manage its projects, never
/// another organization's. Role names are configurable (`PLATFORM_ADMIN_ROLE`, `ORG_ADMIN_ROLE`).
public struct AdminPolicy: Sendable, Hashable {
    public var platformAdminRole: String
    public var organizationAdminRole: String

    public init(platformAdminRole: String = "platform-admin", organizationAdminRole: String = "org-admin") {
        self.platformAdminRole = platformAdminRole
        self.organizationAdminRole = organizationAdminRole
    }

    public func isPlatformAdmin(_ caller: Caller) -> Bool { caller.roles.contains(platformAdminRole) }

    /// The caller administers its own organization's projects.
    public func isOrganizationAdmin(_ caller: Caller) -> Bool {
        caller.organizationID != Caller.noOrganization && caller.roles.contains(organizationAdminRole)
    }
}

/// What a request carries that may identify its caller, whatever the transport (HTTP headers or
/// gRPC metadata, and the TLS session).
public struct Credentials: Sendable {
    /// The `Authorization` header / `authorization` metadata.
    public var authorization: String?
    /// A verified client certificate from mTLS, if the connection had one.
    public var clientCertificate: ClientCertificate?
    /// Development only: `X-Cloudscan-Organization`, `X-Cloudscan-Subject`, `X-Cloudscan-Roles`.
    public var developmentOrganization: String?
    public var developmentSubject: String?
    public var developmentRoles: String?

    public init(
        authorization: String? = nil, clientCertificate: ClientCertificate? = nil,
        developmentOrganization: String? = nil, developmentSubject: String? = nil, developmentRoles: String? = nil
    ) {
        self.authorization = authorization
        self.clientCertificate = clientCertificate
        self.developmentOrganization = developmentOrganization
        self.developmentSubject = developmentSubject
        self.developmentRoles = developmentRoles
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

/// DEVELOPMENT ONLY: trusts `X-Cloudscan-Organization` (and `X-Cloudscan-Subject`,
/// `X-Cloudscan-Roles`: comma-separated). Without an organization, only a caller with the
/// platform admin role is accepted. `cloudscan api` uses it only with
/// `--insecure-development-auth`, and says so loudly at start.
public struct DevelopmentAuthenticator: Authenticator {
    public var policy: AdminPolicy
    public init(policy: AdminPolicy = AdminPolicy()) { self.policy = policy }

    public func authenticate(_ credentials: Credentials) async throws(AuthenticationError) -> Caller {
        let roles = (credentials.developmentRoles ?? "").split(separator: ",").map {
            $0.trimmingCharacters(in: .whitespaces)
        }.filter { !$0.isEmpty }
        let subject = credentials.developmentSubject ?? "developer"
        guard let text = credentials.developmentOrganization, let organization = UUID(uuidString: text) else {
            if credentials.developmentOrganization == nil, roles.contains(policy.platformAdminRole) {
                return Caller(organizationID: Caller.noOrganization, subject: subject, roles: roles)
            }
            throw AuthenticationError(
                "development authentication: send X-Cloudscan-Organization with an organization id")
        }
        return Caller(organizationID: organization, subject: subject, roles: roles)
    }
}

/// Service callers by client certificate (mTLS): the organization comes from a URI SAN
/// `spiffe://<trust domain>/org/<organization id>/svc/<name>`; the subject is that URI. A
/// certificate without such a SAN is refused. The chain itself is verified by the TLS layer
/// against the configured client CA before this runs.
public struct ClientCertificateAuthenticator: Authenticator {
    public var trustDomain: String
    /// URI SANs that are platform admins (`PLATFORM_ADMIN_IDENTITIES`), e.g.
    /// `spiffe://cloudscan/platform/admin`: such a caller gets the platform admin role.
    public var platformAdminIdentities: Set<String>
    public var policy: AdminPolicy

    public init(trustDomain: String, platformAdminIdentities: Set<String> = [], policy: AdminPolicy = AdminPolicy()) {
        self.trustDomain = trustDomain
        self.platformAdminIdentities = platformAdminIdentities
        self.policy = policy
    }

    public func authenticate(_ credentials: Credentials) async throws(AuthenticationError) -> Caller {
        guard let certificate = credentials.clientCertificate else {
            throw AuthenticationError("a client certificate is required")
        }
        if let admin = certificate.uris.first(where: { platformAdminIdentities.contains($0) }) {
            return Caller(organizationID: Caller.noOrganization, subject: admin, roles: [policy.platformAdminRole])
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
