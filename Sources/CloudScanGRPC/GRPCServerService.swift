import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import ServiceLifecycle

/// The gRPC server as a lifecycle service: serves until graceful shutdown, then stops accepting
/// RPCs and lets the running ones finish.
public final class GRPCServerService: Service, Sendable {
    /// TLS for the server. With `clientCAFile` it is mTLS: every connection must present a client
    /// certificate that chains to that CA (the transport has no optional-certificate mode); the
    /// certificate then identifies the caller unless a bearer token is also sent.
    public struct TLS: Sendable {
        public var certificateChainFile: String
        public var privateKeyFile: String
        public var clientCAFile: String?
        public init(certificateChainFile: String, privateKeyFile: String, clientCAFile: String? = nil) {
            self.certificateChainFile = certificateChainFile
            self.privateKeyFile = privateKeyFile
            self.clientCAFile = clientCAFile
        }
    }

    let server: GRPCServer<HTTP2ServerTransport.Posix>
    let logger: Logger

    public init(host: String, port: Int, tls: TLS?, services: [any RegistrableRPCService], logger: Logger) {
        let security: HTTP2ServerTransport.Posix.TransportSecurity
        if let tls {
            let chain: [TLSConfig.CertificateSource] = [.file(path: tls.certificateChainFile, format: .pem)]
            let key: TLSConfig.PrivateKeySource = .file(path: tls.privateKeyFile, format: .pem)
            if let ca = tls.clientCAFile {
                security = .mTLS(certificateChain: chain, privateKey: key) { config in
                    config.trustRoots = .certificates([.file(path: ca, format: .pem)])
                    config.clientCertificateVerification = .noHostnameVerification
                }
            } else {
                security = .tls(certificateChain: chain, privateKey: key)
            }
        } else {
            security = .plaintext
        }
        let transport = HTTP2ServerTransport.Posix(
            address: .ipv4(host: host, port: port), transportSecurity: security,
            config: .defaults { config in
                config.rpc.maxRequestPayloadSize = 1 << 20
            })
        self.server = GRPCServer(transport: transport, services: services)
        self.logger = logger
    }

    /// The bound address (after ``run()`` has started listening).
    public var listeningPort: Int? {
        get async {
            guard let address = try? await server.transport.listeningAddress else { return nil }
            return address.ipv4?.port ?? address.ipv6?.port
        }
    }

    public func run() async throws {
        try await withGracefulShutdownHandler {
            try await server.serve()
        } onGracefulShutdown: {
            self.server.beginGracefulShutdown()
        }
    }
}
