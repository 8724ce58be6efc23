import CloudScanAuth
import HTTPTypes
import Hummingbird

extension Authenticator {
    /// The caller of an HTTP request, or a 401 problem.
    func authenticate(_ request: Request) async throws(Problem) -> Caller {
        let credentials = Credentials(
            authorization: request.headers[.authorization],
            developmentOrganization: request.headers[Self.organizationHeader],
            developmentSubject: request.headers[Self.subjectHeader])
        do {
            return try await authenticate(credentials)
        } catch {
            throw Problem(.unauthorized, title: "Unauthenticated", detail: error.detail)
        }
    }

    private static var organizationHeader: HTTPField.Name { HTTPField.Name("X-Cloudscan-Organization")! }
    private static var subjectHeader: HTTPField.Name { HTTPField.Name("X-Cloudscan-Subject")! }
}
