import ArgumentParser
import CloudScanAMQP
import CloudScanAPI
import CloudScanPostgres
import CloudScanService
import Foundation
import Hummingbird
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
    @Flag(help: "Do not run the outbox relay in this process.") var noRelay = false
    @Flag(help: "DEVELOPMENT ONLY: trust the X-Cloudscan-Organization header instead of authenticating.")
    var insecureDevelopmentAuth = false

    func run() async throws {
        let logger = try database.makeLogger(label: "cloudscan.api")
        let parts = try await APIParts(
            database: database.postgresConfiguration(applicationName: "cloudscan-api"),
            broker: try broker.configuration(),
            host: host, port: port, insecureDevelopmentAuth: insecureDevelopmentAuth, relay: !noRelay, logger: logger)
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
        database: PostgresConfiguration, broker: AMQPConfiguration, host: String?, port: Int?,
        insecureDevelopmentAuth: Bool, relay: Bool, logger: Logger
    ) async throws {
        let environment = ProcessInfo.processInfo.environment
        let authenticator: any Authenticator
        if insecureDevelopmentAuth {
            logger.critical(
                "AUTHENTICATION IS DISABLED: callers are trusted to name their organization (X-Cloudscan-Organization). Development only."
            )
            authenticator = DevelopmentAuthenticator()
        } else {
            authenticator = try await Self.jwtAuthenticator(environment)
        }
        let portText = port.map(String.init) ?? environment["HTTP_PORT"] ?? "8080"
        guard let listenPort = Int(portText), (0...65535).contains(listenPort) else {
            throw ValidationError("HTTP_PORT / --port: '\(portText)' is not a port number")
        }
        let client = PostgresClient(configuration: database, logger: logger)
        let api = ScanAPI(
            service: ScanService(client: client, logger: logger), authenticator: authenticator,
            readiness: {
                let postgres = (try? await client.query("SELECT 1")) != nil
                let amqp = (try? await AMQPProbe.serverProperties(broker)) != nil
                return ["postgres": postgres, "broker": amqp]
            })
        let application = Application(
            router: api.router(),
            configuration: .init(address: .hostname(host ?? environment["HTTP_HOST"] ?? "127.0.0.1", port: listenPort)),
            logger: logger)
        var services: [any Service] = [application]
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

    /// JWT settings from the environment; a missing or bad one is named.
    static func jwtAuthenticator(_ environment: [String: String]) async throws -> JWTAuthenticator {
        guard let issuer = environment["JWT_ISSUER"], let audience = environment["JWT_AUDIENCE"] else {
            throw ValidationError(
                "set JWT_ISSUER and JWT_AUDIENCE, and JWT_JWKS_FILE or JWT_HS256_SECRET (or, on a development machine only, pass --insecure-development-auth)"
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
                    hmacSecret: environment["JWT_HS256_SECRET"]))
        } catch let problem as Problem {
            throw ValidationError("JWT configuration: \(problem.detail)")
        } catch {
            throw ValidationError("JWT_JWKS_FILE: not a usable JWKS document (\(error))")
        }
    }
}
