import Foundation
import HTTPTypes
import Hummingbird

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

/// Turns a request into a ``Caller`` or refuses it with 401.
public protocol Authenticator: Sendable {
    func authenticate(_ request: Request) async throws(Problem) -> Caller
}

/// DEVELOPMENT ONLY: trusts the `X-Cloudscan-Organization` header (and `X-Cloudscan-Subject`).
/// `cloudscan api` uses it only with `--insecure-development-auth`, and says so loudly at start.
public struct DevelopmentAuthenticator: Authenticator {
    public init() {}

    public func authenticate(_ request: Request) async throws(Problem) -> Caller {
        guard let text = request.headers[HTTPField.Name("X-Cloudscan-Organization")!],
            let organization = UUID(uuidString: text)
        else {
            throw Problem(
                .unauthorized, title: "Unauthenticated",
                detail: "development authentication: send X-Cloudscan-Organization with an organization id")
        }
        let subject = request.headers[HTTPField.Name("X-Cloudscan-Subject")!] ?? "developer"
        return Caller(organizationID: organization, subject: subject)
    }
}
