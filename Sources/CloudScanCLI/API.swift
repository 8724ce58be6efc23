import ArgumentParser
import CloudScanAMQP
import CloudScanAPI
import CloudScanAuth
import CloudScanGRPC
import CloudScanMetrics
import CloudScanPostgres
import CloudScanService
import Foundation
import Hummingbird
import HummingbirdTLS
import Logging
import ServiceLifecycle

/// `cloudscan api`: the HTTP ingress, with the outbox relay in the same process by default.
struct API: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "api", abstract: "Serve the scan API over HTTP (and relay the outbox unless --no-relay).")

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var broker: BrokerOptions
    @Option(help: "Listen address (env HTTP_HOST).") var host: String?
    @Option(help: "HTTP port (env HTTP_PORT; default 8080).") var port: Int?
    @Option(help: "gRPC port (env GRPC_PORT; default 9999).") var grpcPort: Int?
    @Flag(help: "Do not run the outbox relay in this process.") var noRelay = false
    @Flag(help: "DEVELOPMENT ONLY: trust the X-Cloudscan-Organization header instead of authenticating.")
    var insecureDevelopmentAuth = false

    func run() async throws {
        let logger = try database.makeLogger(label: "cloudscan.api")
        let parts = try await APIParts(
            database: database.postgresConfiguration(applicationName: "cloudscan-api"),
            broker: try broker.configuration(),
            host: host, port: port, grpcPort: grpcPort, insecureDevelopmentAuth: insecureDevelopmentAuth,
            relay: !noRelay, logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: parts.services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        await parts.close()
    }
}

/// The api role's pieces, built the same way by `cloudscan api` and `cloudscan dev`.
struct APIParts {
    let services: [any Service]
    let close: @Sendable () async -> Void

    init(
        database: PostgresConfiguration, broker: AMQPConfiguration, host: String?, port: Int?, grpcPort: Int?,
        insecureDevelopmentAuth: Bool, relay: Bool, logger: Logger
    ) async throws {
        let environment = FleetSettings.values
        // Who administers: PLATFORM_ADMIN_ROLE (platform-admin) manages organizations, ORG_ADMIN_ROLE
        // (org-admin) its organization's projects; PLATFORM_ADMIN_IDENTITIES lists mTLS URI SANs
        // that are platform admins.
        let policy = AdminPolicy(
            platformAdminRole: environment["PLATFORM_ADMIN_ROLE"] ?? "platform-admin",
            organizationAdminRole: environment["ORG_ADMIN_ROLE"] ?? "org-admin")
        let platformIdentities = Set(
            (environment["PLATFORM_ADMIN_IDENTITIES"] ?? "").split(separator: ",").map {
                $0.trimmingCharacters(in: .whitespaces)
            }.filter { !$0.isEmpty })
        var bearer: any Authenticator
        if insecureDevelopmentAuth {
            logger.critical(
                "AUTHENTICATION IS DISABLED: callers are trusted to name their organization (X-Cloudscan-Organization). Development only."
            )
            bearer = DevelopmentAuthenticator(policy: policy)
        } else {
            bearer = try await Self.jwtAuthenticator(environment, logger: logger)
        }
        let listenHost = host ?? environment["HTTP_HOST"] ?? "127.0.0.1"
        let listenPort = try Self.port(port, environment["HTTP_PORT"], default: 8080, name: "HTTP_PORT / --port")
        let grpcListenPort = try Self.port(
            grpcPort, environment["GRPC_PORT"], default: 9999, name: "GRPC_PORT / --grpc-port")
        // TLS on both servers: TLS_CERT_FILE + TLS_KEY_FILE; TLS_CLIENT_CA_FILE adds mTLS for service
        // callers (SPIFFE URI SAN → organization): required on gRPC, optional on HTTP.
        var tls: GRPCServerService.TLS?
        if let certificate = environment["TLS_CERT_FILE"], let key = environment["TLS_KEY_FILE"] {
            tls = .init(
                certificateChainFile: certificate, privateKeyFile: key, clientCAFile: environment["TLS_CLIENT_CA_FILE"])
        }
        let authenticator: any Authenticator =
            tls?.clientCAFile == nil
            ? bearer
            : ChainedAuthenticator(
                bearer: bearer,
                certificate: ClientCertificateAuthenticator(
                    trustDomain: environment["MTLS_TRUST_DOMAIN"] ?? "cloudscan",
                    platformAdminIdentities: platformIdentities, policy: policy))

        let metrics = ProcessMetrics.shared
        let client = PostgresClient(configuration: database, logger: logger)
        var service = ScanService(client: client, logger: logger)
        service.autoCreateProjectsDefault =
            (environment["AUTO_CREATE_PROJECTS_DEFAULT"] ?? (insecureDevelopmentAuth ? "true" : "false")) == "true"
        service.artifactPolicy = try FleetSettings.artifactPolicy(
            environment, development: insecureDevelopmentAuth, logger: logger)
        service.webhookScreen = try FleetSettings.webhookScreen(environment, development: insecureDevelopmentAuth)
        service.webhookSecrets = try FleetSettings.webhookSecrets(
            environment, development: insecureDevelopmentAuth, logger: logger)
        let readiness: @Sendable () async -> [String: Bool] = {
            let postgres = (try? await client.query("SELECT 1")) != nil
            let amqp = (try? await AMQPProbe.serverProperties(broker)) != nil
            return ["postgres": postgres, "broker": amqp]
        }
        let api = ScanAPI(
            service: service, authenticator: authenticator, metrics: metrics, policy: policy, readiness: readiness)
        let httpConfiguration = ApplicationConfiguration(address: .hostname(listenHost, port: listenPort))
        let application: any Service
        if let tls {
            // TLS on the HTTP port too; with the client CA, certificates are optional there (verified
            // when sent) so bearer-token callers need none.
            application = Application(
                router: api.router(),
                server: try .tls(
                    .http1(),
                    tlsConfiguration: APITLS.configuration(
                        certificateChainFile: tls.certificateChainFile, privateKeyFile: tls.privateKeyFile,
                        clientCAFile: tls.clientCAFile)), configuration: httpConfiguration, logger: logger)
        } else {
            application = Application(router: api.router(), configuration: httpConfiguration, logger: logger)
        }
        let hub = ScanWatchHub(listener: PostgresListener(configuration: database, logger: logger), logger: logger)
        let scanRPCs = ScanGRPCService(
            service: service, authenticator: authenticator, hub: hub, logger: logger,
            observe: { method, code, duration in
                metrics.request(transport: "grpc", route: method, code: code, duration: duration)
                if code == "ok" {
                    if method == "CreateScan" { metrics.scans("queued").increment() }
                    if method == "CancelScan" { metrics.scans("canceled").increment() }
                }
            })
        let grpc = GRPCServerService(
            host: listenHost, port: grpcListenPort, tls: tls,
            services: [
                scanRPCs, WebhookGRPCService(scans: scanRPCs, policy: policy),
                AdminGRPCService(scans: scanRPCs, policy: policy),
                HealthService(readiness: readiness), ReflectionServiceV1(), ReflectionServiceV1Alpha(),
            ], logger: logger)
        logger.info(
            "api listening",
            metadata: [
                "http": "\(listenHost):\(listenPort)", "grpc": "\(listenHost):\(grpcListenPort)",
                "grpc_tls": "\(tls == nil ? "off" : tls?.clientCAFile == nil ? "tls" : "mtls")",
            ])
        var services: [any Service] = [application, hub, grpc]
        var relayParts: RelayParts?
        if relay {
            let parts = RelayParts(database: database, broker: broker, logger: logger)
            services.append(parts.relay)
            relayParts = parts
        }
        self.services = services
        let relayToClose = relayParts
        self.close = {
            await relayToClose?.close()
            await client.shutdown()
        }
    }

    static func port(_ flag: Int?, _ environment: String?, default value: Int, name: String) throws -> Int {
        let text = flag.map(String.init) ?? environment ?? String(value)
        guard let port = Int(text), (0...65535).contains(port) else {
            throw ValidationError("\(name): '\(text)' is not a port number")
        }
        return port
    }

    /// JWT settings from the environment; a missing or bad one is named.
    static func jwtAuthenticator(_ environment: [String: String], logger: Logger) async throws -> JWTAuthenticator {
        guard let issuer = environment["JWT_ISSUER"], let audience = environment["JWT_AUDIENCE"] else {
            throw ValidationError(
                "set JWT_ISSUER and JWT_AUDIENCE, and JWT_JWKS_URL, JWT_JWKS_FILE or JWT_HS256_SECRET (or, on a development machine only, pass --insecure-development-auth)"
            )
        }
        var jwks: String?
        if let path = environment["JWT_JWKS_FILE"] {
            do {
                jwks = try String(contentsOfFile: path, encoding: .utf8)
            } catch {
                throw ValidationError("JWT_JWKS_FILE: cannot read \(path)")
            }
        }
        do {
            return try await JWTAuthenticator(
                configuration: .init(
                    issuer: issuer, audience: audience,
                    organizationClaim: environment["JWT_ORGANIZATION_CLAIM"] ?? "org_id",
                    rolesClaim: environment["JWT_ROLES_CLAIM"] ?? "roles", jwksJSON: jwks,
                    jwksURL: environment["JWT_JWKS_URL"], hmacSecret: environment["JWT_HS256_SECRET"],
                    platformAdminRole: environment["PLATFORM_ADMIN_ROLE"] ?? "platform-admin"),
                logger: logger)
        } catch {
            throw ValidationError("JWT configuration: \(error)")
        }
    }
}
