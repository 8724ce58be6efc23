import CloudScanAuth
import CloudScanCore
import HTTPTypes
import Hummingbird
import HummingbirdTLS
import NIOCore
import NIOSSL
import X509

/// The request context of the HTTP API: Hummingbird's core context plus the connection, whose
/// TLS session (when there is one) may carry a verified client certificate.
public struct APIRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.channel = source.channel
    }

    /// The verified client certificate of an mTLS connection, if any.
    func clientCertificate() async -> ClientCertificate? {
        guard let certificate = try? await channel.nioSSL_peerCertificate().get(),
            let bytes = try? certificate.toDERBytes(), let parsed = try? Certificate(derEncoded: bytes)
        else { return nil }
        return ClientCertificate(parsed)
    }
}

extension Authenticator {
    /// The caller of an HTTP request, or a 401 problem.
    func authenticate(_ request: Request, _ context: APIRequestContext) async throws(Problem) -> Caller {
        let credentials = Credentials(
            authorization: request.headers[.authorization],
            clientCertificate: await context.clientCertificate(),
            developmentOrganization: request.headers[Self.organizationHeader],
            developmentSubject: request.headers[Self.subjectHeader],
            developmentRoles: request.headers[Self.rolesHeader])
        do {
            let caller = try await authenticate(credentials)
            LogContext.learn("organization_id", caller.organizationID.uuidString.lowercased())
            LogContext.learn("subject", caller.subject)
            return caller
        } catch {
            throw Problem(.unauthorized, title: "Unauthenticated", detail: error.detail)
        }
    }

    private static var organizationHeader: HTTPField.Name { HTTPField.Name("X-Cloudscan-Organization")! }
    private static var subjectHeader: HTTPField.Name { HTTPField.Name("X-Cloudscan-Subject")! }
    private static var rolesHeader: HTTPField.Name { HTTPField.Name("X-Cloudscan-Roles")! }
}

/// Server TLS for the HTTP API. With a client CA, client certificates are verified when sent
/// (optional: bearer tokens keep working) and identify service callers.
public enum APITLS {
    public static func configuration(certificateChainFile: String, privateKeyFile: String, clientCAFile: String?)
        throws -> TLSConfiguration
    {
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(certificateChainFile).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: privateKeyFile, format: .pem)))
        if let clientCAFile {
            configuration.trustRoots = .file(clientCAFile)
            configuration.certificateVerification = .optionalVerification
        }
        return configuration
    }
}
